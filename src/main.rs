//! The `sluice` binary: parses the command line and wires the component crates into the
//! pipeline core. All behaviour lives in the crates; this file only connects them.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, Subcommand};
use sluice_pipeline::admin::{AdminServer, ServiceInfo};
use sluice_pipeline::config::{self, Config, ConfigErrors};
use sluice_pipeline::graph::{self, Plan};
use sluice_pipeline::service::Service;
use sluice_pipeline::{Registry, Telemetry};

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
    },
    /// Checks a configuration and lists every error, starting nothing.
    Validate {
        /// The TOML configuration to check.
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    match cli.command {
        Command::Validate { config } => validate(&config),
        Command::Run { config } => run(config.as_deref()),
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
    let config = match file {
        Some(file) => config::load(file)?,
        None => config::load_str(Path::new(QUICKSTART_NAME), QUICKSTART, |name| {
            std::env::var(name).ok()
        })?,
    };
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

fn run(file: Option<&Path>) -> ExitCode {
    let (config, plan) = match load_and_plan(file, &registry()) {
        Ok(loaded) => loaded,
        Err(errors) => {
            eprintln!("{errors}");
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
    runtime.block_on(serve(config, plan))
}

async fn serve(config: Config, plan: Plan) -> ExitCode {
    let telemetry = Telemetry::new();
    let info = ServiceInfo::new(config.file.clone(), &config_text(&config.file));
    let admin = match config.service.admin {
        Some(address) => match AdminServer::start(address, telemetry.clone(), info).await {
            Ok(admin) => Some(admin),
            Err(e) => {
                tracing::error!("{e}");
                return ExitCode::FAILURE;
            }
        },
        None => None,
    };
    let service = match Service::start(plan, &telemetry).await {
        Ok(service) => service,
        Err(e) => {
            tracing::error!("cannot start: {e}");
            if let Some(admin) = admin {
                admin.shutdown().await;
            }
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(config = %config.file.display(), "sluice is running");
    let signal = wait_for_shutdown_signal().await;
    tracing::info!(signal, timeout = ?config.service.shutdown_timeout, "shutting down");
    service
        .shutdown(Instant::now() + config.service.shutdown_timeout)
        .await;
    if let Some(admin) = admin {
        admin.shutdown().await;
    }
    tracing::info!("stopped");
    ExitCode::SUCCESS
}

/// The text of the config file at `path` (the built-in quickstart when that is what ran), for
/// the hash `/status` shows.
fn config_text(path: &Path) -> Vec<u8> {
    if path == Path::new(QUICKSTART_NAME) {
        return QUICKSTART.as_bytes().to_vec();
    }
    std::fs::read(path).unwrap_or_default()
}

/// Waits for SIGINT or SIGTERM and returns its name.
async fn wait_for_shutdown_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut interrupt), Ok(mut terminate)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        tracing::error!("cannot listen for SIGINT/SIGTERM; stop the process with SIGKILL");
        return std::future::pending::<&'static str>().await;
    };
    tokio::select! {
        _ = interrupt.recv() => "SIGINT",
        _ = terminate.recv() => "SIGTERM",
    }
}
