//! `throughput`: drives OTLP/gRPC through a `sluice` process into a counting sink and prints
//! one JSON line of figures, then a summary line. See BENCHMARKS.md.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use sluice_bench::load::Pace;
use sluice_bench::run::{self, Options};
use sluice_bench::sluice::Compression;

/// The release binary, relative to this crate's directory in the workspace.
const DEFAULT_SLUICE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/release/sluice");

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Mode {
    /// Send as fast as sluice answers, from --concurrency slots.
    Full,
    /// Send --rate spans per second on a fixed schedule.
    Rate,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum CompressionArg {
    None,
    Gzip,
}

/// Throughput of sluice's OTLP/gRPC pass-through (otlp receiver, batch, otlp_grpc exporter).
#[derive(Parser, Debug)]
#[command(name = "throughput")]
struct Args {
    /// The sluice binary to measure (a release build).
    #[arg(long, value_name = "PATH", default_value = DEFAULT_SLUICE)]
    sluice: PathBuf,
    /// Full speed, or paced to --rate.
    #[arg(long, value_enum, default_value_t = Mode::Full)]
    mode: Mode,
    /// Spans per second in rate mode.
    #[arg(long, value_name = "SPANS_PER_S", default_value_t = 10_000)]
    rate: u64,
    /// Length of the measured load phase, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 20.0)]
    duration: f64,
    /// Load before measuring, in seconds, so connections and buffers are warm.
    #[arg(long, value_name = "SECS", default_value_t = 3.0)]
    warmup: f64,
    /// Compression of sluice's exporter towards the sink.
    #[arg(long, value_enum, default_value_t = CompressionArg::None)]
    compression: CompressionArg,
    /// Requests in flight at once, each on its own connection.
    #[arg(long, value_name = "N", default_value_t = 4)]
    concurrency: usize,
    /// Spans in each request.
    #[arg(long, value_name = "N", default_value_t = 500)]
    spans_per_request: usize,
    /// Different pre-encoded requests sent in rotation.
    #[arg(long, value_name = "N", default_value_t = 16)]
    distinct: usize,
    /// The exporter queue's max_items (default: sluice's default), to see RSS follow it.
    #[arg(long, value_name = "N")]
    queue_max_items: Option<usize>,
}

fn seconds(value: f64, flag: &str) -> Result<Duration, String> {
    Duration::try_from_secs_f64(value)
        .map_err(|_| format!("--{flag} {value}: expected a non-negative number of seconds"))
}

fn options(args: Args) -> Result<Options, String> {
    let counts = [args.concurrency, args.spans_per_request, args.distinct];
    if counts.contains(&0) || args.queue_max_items == Some(0) {
        return Err(
            "--concurrency, --spans-per-request, --distinct and --queue-max-items \
                    must be at least 1"
                .to_string(),
        );
    }
    if matches!(args.mode, Mode::Rate) && args.rate == 0 {
        return Err("--rate must be at least 1".to_string());
    }
    Ok(Options {
        sluice: args.sluice,
        pace: match args.mode {
            Mode::Full => Pace::FullSpeed,
            Mode::Rate => Pace::SpansPerSecond(args.rate),
        },
        duration: seconds(args.duration, "duration")?,
        warmup: seconds(args.warmup, "warmup")?,
        compression: match args.compression {
            CompressionArg::None => Compression::None,
            CompressionArg::Gzip => Compression::Gzip,
        },
        concurrency: args.concurrency,
        spans_per_request: args.spans_per_request,
        distinct_requests: args.distinct,
        queue_max_items: args.queue_max_items,
    })
}

#[tokio::main]
async fn main() -> ExitCode {
    let options = match options(Args::parse()) {
        Ok(options) => options,
        Err(message) => {
            eprintln!("throughput: {message}");
            return ExitCode::from(2);
        }
    };
    match run::run(&options).await {
        Ok(report) => {
            match serde_json::to_string(&report) {
                Ok(line) => println!("{line}"),
                Err(error) => eprintln!("throughput: cannot format the report: {error}"),
            }
            println!("{}", report.summary());
            if report.complete() && report.errors == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(error) => {
            eprintln!("throughput: {error}");
            ExitCode::FAILURE
        }
    }
}
