//! The `sluice` binary: parses the command line and wires the component crates into the
//! pipeline core. All behaviour lives in the crates; this file only connects them.

mod admin_client;
mod serve;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::ExitCode;
use std::task::Poll;
use std::time::Duration;

use clap::{Parser, Subcommand};
use sluice_exporters::otlp_env::{self, OtlpEnv};
use sluice_pipeline::config::{self, Config, ConfigErrors};
use sluice_pipeline::graph::{self, Plan};
use sluice_pipeline::{Registry, Signal};

/// The configuration `sluice run` uses when no file is given.
const QUICKSTART: &str = include_str!("../configs/quickstart.toml");
const QUICKSTART_NAME: &str = "configs/quickstart.toml (built in)";

#[derive(Parser)]
#[command(
    name = "sluice",
    version,
    about = "A telemetry pipeline for AI traffic"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs the pipelines of a configuration until SIGINT or SIGTERM.
    Run {
        /// The TOML configuration; without it, the built-in quickstart configuration.
        #[arg(short, long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Reload the configuration whenever the file changes (SIGHUP and `sluice reload`
        /// reload it in any case).
        #[arg(long)]
        watch: bool,
    },
    /// Checks a configuration and lists every error, starting nothing.
    Validate {
        /// The TOML configuration to check.
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Runs the config's unit tests, its `[[tests]]` tables (and those of the `--tests`
    /// files): inputs inserted at a component, expectations on what comes out of another.
    /// Starts no receiver and sends nothing. Exits 1 when a test fails, 2 on config errors.
    Test {
        /// The TOML configuration under test.
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
        /// More files of `[[tests]]` tables to run against it.
        #[arg(long, value_name = "FILE", num_args = 1..)]
        tests: Vec<PathBuf>,
    },
    /// Tests every enabled exporter's backend with a minimal export and prints one line per
    /// exporter: reachable and accepted, or why not. Exits non-zero when any fails.
    Check {
        /// The TOML configuration whose exporters to test.
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
        /// How long each exporter's test may take, e.g. "10s" or "500ms".
        #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
        timeout: Duration,
    },
    /// Shows what a running sluice is doing: a table per pipeline with each component's
    /// counters, exporter states and queue fill (or the admin API's JSON with --json).
    Status(admin_client::StatusArgs),
    /// Streams the items leaving a component of a running sluice, until --limit or Ctrl-C.
    Tap(admin_client::TapArgs),
    /// Asks a running sluice to reload its configuration file, and prints what changed.
    Reload(admin_client::ReloadArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    match cli.command {
        Command::Validate { config } => validate(&config),
        Command::Check { config, timeout } => check(&config, timeout),
        Command::Test { config, tests } => test(&config, &tests),
        Command::Run { config, watch } => run(config, watch),
        Command::Status(args) => admin_client::status(args),
        Command::Tap(args) => admin_client::tap(args),
        Command::Reload(args) => admin_client::reload(args),
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SLUICE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Logs go to stderr: stdout belongs to the debug exporter. Colour only for a terminal, so
    // log files and collectors get plain text.
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
}

fn registry() -> Registry {
    let mut registry = Registry::new();
    sluice_receivers::register(&mut registry);
    sluice_processors::register(&mut registry);
    sluice_exporters::register(&mut registry);
    registry
}

/// Loads and checks a configuration, printing its warnings.
fn load_and_plan(file: Option<&Path>, registry: &Registry) -> Result<(Config, Plan), ConfigErrors> {
    let mut config = match file {
        Some(file) => config::load(file)?,
        None => config::load_str(Path::new(QUICKSTART_NAME), QUICKSTART, |name| {
            std::env::var(name).ok()
        })?,
    };
    otlp_env::add_env_exporters(&mut config, &OtlpEnv::from_process())
        .map_err(|errors| config.locate(errors))?;
    let plan = graph::plan(&config, registry).map_err(|errors| config.locate(errors))?;
    let located = config.locate(
        plan.warnings
            .iter()
            .map(|w| sluice_pipeline::ConfigError::new(w.path.clone(), w.message.clone()))
            .collect(),
    );
    for warning in located.errors {
        let line = warning.line.map(|l| format!(":{l}")).unwrap_or_default();
        tracing::warn!(
            "{}{line}: {}: {}",
            config.file.display(),
            warning.path,
            warning.message
        );
    }
    Ok((config, plan))
}

fn validate(file: &Path) -> ExitCode {
    match load_and_plan(Some(file), &registry()) {
        Ok(_) => {
            println!("{}: configuration is valid", file.display());
            ExitCode::SUCCESS
        }
        Err(errors) => {
            eprintln!("{errors}");
            eprintln!("{}: {} error(s)", file.display(), errors.errors.len());
            ExitCode::from(2)
        }
    }
}

/// `sluice test`: loads and plans like `validate`, then runs every config test in turn.
fn test(file: &Path, extra: &[PathBuf]) -> ExitCode {
    let registry = registry();
    let config = match load_and_plan(Some(file), &registry) {
        Ok((config, _)) => config,
        Err(errors) => {
            eprintln!("{errors}");
            eprintln!("{}: {} error(s)", file.display(), errors.errors.len());
            return ExitCode::from(2);
        }
    };
    let suite = match sluice_pipeline::config_tests::Suite::load(&config, extra) {
        Ok(suite) => suite,
        Err(files) => {
            for errors in &files {
                eprintln!("{errors}");
            }
            let count: usize = files.iter().map(|e| e.errors.len()).sum();
            eprintln!("{count} error(s) in the tests");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("\nrunning {} test(s) from {}", suite.len(), file.display());
    let summary = runtime.block_on(suite.run(&config, &registry, |outcome| println!("{outcome}")));
    print!("{summary}");
    if summary.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Parses "10s", "500ms" or a plain number of seconds.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let invalid = || format!("{text:?} is not a duration: write e.g. \"10s\" or \"500ms\"");
    let (number, unit) = match text.strip_suffix("ms") {
        Some(number) => (number, 1),
        None => (text.strip_suffix('s').unwrap_or(text), 1000),
    };
    let amount: u64 = number.trim().parse().map_err(|_| invalid())?;
    match amount.checked_mul(unit) {
        Some(0) | None => Err(invalid()),
        Some(millis) => Ok(Duration::from_millis(millis)),
    }
}

/// One exporter's check: `None` when it is disabled, else its line's text.
type ExporterCheck<'a> = Pin<Box<dyn Future<Output = Option<Result<String, String>>> + 'a>>;

/// `sluice check`: loads and plans like `validate`, then tests every enabled exporter at once.
fn check(file: &Path, timeout: Duration) -> ExitCode {
    let plan = match load_and_plan(Some(file), &registry()) {
        Ok((_, plan)) => plan,
        Err(errors) => {
            eprintln!("{errors}");
            eprintln!("{}: {} error(s)", file.display(), errors.errors.len());
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let exporters = plan.exporters();
    let width = exporters.iter().map(|e| e.id.len()).max().unwrap_or(0);
    let checks = exporters
        .iter()
        .map(|e| -> ExporterCheck<'_> {
            Box::pin(async move {
                if !e.enabled {
                    return None;
                }
                Some(check_exporter(e.exporter, &e.signals, timeout).await)
            })
        })
        .collect();
    let results = runtime.block_on(join_all(checks));
    let mut failed = 0;
    for (exporter, result) in exporters.iter().zip(results) {
        let id = &exporter.id;
        match result {
            None => println!("skip {id:<width$}  disabled (enabled = false)"),
            Some(Ok(message)) => println!("ok   {id:<width$}  {message}"),
            Some(Err(message)) => {
                failed += 1;
                println!("FAIL {id:<width$}  {message}");
            }
        }
    }
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        eprintln!("{failed} exporter(s) failed the check");
        ExitCode::FAILURE
    }
}

/// Checks each signal the exporter is used for, in turn; the first failure is the answer.
async fn check_exporter(
    exporter: &dyn sluice_pipeline::Exporter,
    signals: &[Signal],
    timeout: Duration,
) -> Result<String, String> {
    let mut accepted = None;
    for &signal in signals {
        match tokio::time::timeout(timeout, exporter.check(signal)).await {
            Ok(Ok(message)) => {
                accepted.get_or_insert(message);
            }
            Ok(Err(error)) => return Err(error.to_string()),
            Err(_) => {
                return Err(format!(
                    "no answer within {} ms (--timeout)",
                    timeout.as_millis()
                ));
            }
        }
    }
    Ok(accepted.unwrap_or_else(|| "not used by any pipeline".to_string()))
}

/// Runs `futures` concurrently on the current task and returns their outputs in order. The
/// checks borrow the plan, so they cannot be spawned as tasks.
async fn join_all<'a, T>(futures: Vec<Pin<Box<dyn Future<Output = T> + 'a>>>) -> Vec<T> {
    let mut pending: Vec<Option<Pin<Box<dyn Future<Output = T> + 'a>>>> =
        futures.into_iter().map(Some).collect();
    let mut done: Vec<Option<T>> = pending.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        for (slot, output) in pending.iter_mut().zip(done.iter_mut()) {
            if let Some(future) = slot
                && let Poll::Ready(value) = future.as_mut().poll(cx)
            {
                *output = Some(value);
                *slot = None;
            }
        }
        if pending.iter().all(Option::is_none) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await;
    done.into_iter().flatten().collect()
}

fn run(file: Option<PathBuf>, watch: bool) -> ExitCode {
    let registry = registry();
    serve::run(
        Box::new(move || load_and_plan(file.as_deref(), &registry)),
        watch,
        config_text,
    )
}

/// The text of the config file at `path` (the built-in quickstart when that is what ran), for
/// the hash `/status` shows.
fn config_text(path: &Path) -> Vec<u8> {
    if path == Path::new(QUICKSTART_NAME) {
        return QUICKSTART.as_bytes().to_vec();
    }
    std::fs::read(path).unwrap_or_default()
}
