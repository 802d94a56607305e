//! `gateway_latency`: the latency Sluice's AI gateway adds to a request, with its telemetry on.
//!
//! Serves the gateway's mock provider over HTTP in this process (no latency of its own, so only
//! overheads show), starts a `sluice` release binary whose gateway routes every model to that
//! mock as an `openai`-kind provider, with the `gateway` receiver's traces, metrics and logs
//! going through `batch` and an `otlp_grpc` exporter to a counting OTLP sink in this process.
//! It then sends the same small non-streaming chat request at fixed rates (open loop: request
//! `i` is due at `start + i / rate`, whether or not earlier ones were answered) to the mock
//! directly and through the gateway, and prints p50 and p99 of each and the difference.
//! BENCHMARKS.md at the workspace root has the command and the results.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::{Parser, ValueEnum};
use http::{Method, Request, Uri, header};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use sluice_bench::procfs;
use sluice_bench::sluice::{SluiceProcess, free_local_addr};
use sluice_gateway::config::MockConfig;
use tokio::runtime::Handle;
use tokio::sync::mpsc;

/// The release binary, relative to this crate's directory in the workspace.
const DEFAULT_SLUICE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/release/sluice");

/// A request that takes longer than this counts as an error (the mock answers at once).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// The request every run sends: a small chat completion, the same each time.
const CHAT_REQUEST: &str = r#"{"model":"gpt-4o-mini","messages":[{"role":"system","content":"You are terse."},{"role":"user","content":"Name a river in one word."}],"max_tokens":16,"temperature":0.2}"#;

/// The latency the AI gateway adds, against calling the mock provider directly.
#[derive(Parser, Debug)]
#[command(name = "gateway_latency")]
struct Args {
    /// The sluice binary to measure (a release build).
    #[arg(long, value_name = "PATH", default_value = DEFAULT_SLUICE)]
    sluice: PathBuf,
    /// Request rates to measure, in requests per second to each target, comma-separated.
    #[arg(
        long,
        value_name = "RPS,...",
        value_delimiter = ',',
        default_value = "1000,5000"
    )]
    rates: Vec<u32>,
    /// Seconds measured in each run.
    #[arg(long, value_name = "SECS", default_value_t = 10.0)]
    duration: f64,
    /// Seconds of the same load before each run, not recorded (connections, caches).
    #[arg(long, value_name = "SECS", default_value_t = 2.0)]
    warmup: f64,
    /// Runs per rate; the summary gives the median of the runs.
    #[arg(long, value_name = "N", default_value_t = 3)]
    repeat: usize,
    /// `interleaved`: requests to the mock and to the gateway alternate on one schedule (each
    /// at the rate), so both meet the same machine noise. `sequential`: the mock, then the
    /// gateway, each in its own run.
    #[arg(long, value_enum, default_value_t = Order::Interleaved)]
    order: Order,
    /// Compression of sluice's otlp_grpc exporter towards the sink (gzip is its default).
    #[arg(long, value_enum, default_value_t = Compression::Gzip)]
    compression: Compression,
    /// `off` runs the gateway with no pipelines (its events are dropped unconverted), to
    /// tell the proxy's own overhead from the telemetry's.
    #[arg(long, value_enum, default_value_t = Switch::On)]
    telemetry: Switch,
}

#[derive(Clone, Copy, Debug, PartialEq, ValueEnum)]
enum Order {
    Interleaved,
    Sequential,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Compression {
    Gzip,
    None,
}

#[derive(Clone, Copy, Debug, PartialEq, ValueEnum)]
enum Switch {
    On,
    Off,
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// One request's outcome.
struct Sample {
    /// From handing the request to the client to having the whole response body.
    latency: Duration,
    /// How late the request was sent after its due time (the load tool's own delay).
    lag: Duration,
    ok: bool,
    finished: Instant,
}

/// The figures of one run.
struct RunStats {
    requests: usize,
    errors: usize,
    achieved_rps: f64,
    p50: Duration,
    p99: Duration,
    p999: Duration,
    max: Duration,
    lag_p99: Duration,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// Sends `rate` requests per second to each of `targets` for `duration`, on one open-loop
/// schedule where the targets take turns, and returns the figures of each target.
///
/// A dedicated OS thread keeps the schedule (sleeping to each due time; tokio's timer has a
/// 1 ms resolution, which would send 5 requests at once every millisecond at 5,000/s) and
/// hands each request to the client's runtime.
async fn run(client: &HttpClient, targets: &[Uri], rate: u32, duration: Duration) -> Vec<RunStats> {
    let per_target = (f64::from(rate) * duration.as_secs_f64()).round() as usize;
    let total = per_target * targets.len();
    let interval = Duration::from_secs_f64(1.0 / (f64::from(rate) * targets.len() as f64));
    let (sender, mut samples) = mpsc::unbounded_channel::<(usize, Sample)>();
    let handle = Handle::current();
    let (client, uris) = (client.clone(), targets.to_vec());
    let start = Instant::now() + Duration::from_millis(5);
    let dispatcher = std::thread::spawn(move || {
        let body = Bytes::from_static(CHAT_REQUEST.as_bytes());
        for i in 0..total {
            let due = start + interval.mul_f64(i as f64);
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            let target = i % uris.len();
            let request = Request::builder()
                .method(Method::POST)
                .uri(uris[target].clone())
                .header(header::CONTENT_TYPE, "application/json")
                .header(header::AUTHORIZATION, "Bearer sk-bench")
                .body(Full::new(body.clone()))
                .expect("a POST with a valid URI and static headers builds");
            let (client, sender) = (client.clone(), sender.clone());
            handle.spawn(async move {
                let sent = Instant::now();
                let outcome = tokio::time::timeout(REQUEST_TIMEOUT, async {
                    let response = client.request(request).await.ok()?;
                    let ok = response.status() == http::StatusCode::OK;
                    let body = response.into_body().collect().await.ok()?;
                    Some(ok && !body.to_bytes().is_empty())
                })
                .await;
                let finished = Instant::now();
                let sample = Sample {
                    latency: finished - sent,
                    lag: sent.saturating_duration_since(due),
                    ok: matches!(outcome, Ok(Some(true))),
                    finished,
                };
                let _ = sender.send((target, sample));
            });
        }
    });
    let mut by_target: Vec<Vec<Sample>> = targets
        .iter()
        .map(|_| Vec::with_capacity(per_target))
        .collect();
    for _ in 0..total {
        let Some((target, sample)) = samples.recv().await else {
            break;
        };
        by_target[target].push(sample);
    }
    let _ = tokio::task::spawn_blocking(move || dispatcher.join()).await;
    by_target
        .into_iter()
        .map(|samples| stats(samples, start))
        .collect()
}

fn stats(samples: Vec<Sample>, start: Instant) -> RunStats {
    let requests = samples.len();
    let mut latencies: Vec<Duration> = samples.iter().filter(|s| s.ok).map(|s| s.latency).collect();
    let mut lags: Vec<Duration> = samples.iter().map(|s| s.lag).collect();
    let last = samples.iter().map(|s| s.finished).max().unwrap_or(start);
    latencies.sort_unstable();
    lags.sort_unstable();
    RunStats {
        requests,
        errors: requests - latencies.len(),
        achieved_rps: latencies.len() as f64 / last.duration_since(start).as_secs_f64().max(1e-9),
        p50: percentile(&latencies, 0.50),
        p99: percentile(&latencies, 0.99),
        p999: percentile(&latencies, 0.999),
        max: latencies.last().copied().unwrap_or_default(),
        lag_p99: percentile(&lags, 0.99),
    }
}

/// Clock ticks the hypervisor gave to other guests while this machine's CPUs wanted to run
/// (the `steal` column of `/proc/stat`): on a shared virtual machine, the noise under every
/// figure. `None` where there is no `/proc/stat`.
fn steal_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let cpu = stat.lines().next()?.strip_prefix("cpu ")?;
    cpu.split_whitespace().nth(7)?.parse().ok()
}

/// The mock provider over HTTP on its own thread and runtime, so that serving it does not
/// queue behind the load generator's tasks.
fn start_mock() -> std::io::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let address = listener.local_addr()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::spawn(move || {
        runtime.block_on(async move {
            use axum::serve::ListenerExt;
            let listener = match tokio::net::TcpListener::from_std(listener) {
                Ok(listener) => listener.tap_io(|tcp| {
                    let _ = tcp.set_nodelay(true);
                }),
                Err(error) => return eprintln!("mock: {error}"),
            };
            let router = sluice_gateway::mock_router(MockConfig::default());
            if let Err(error) = axum::serve(listener, router).await {
                eprintln!("mock: {error}");
            }
        })
    });
    Ok(address)
}

/// What the OTLP sink received: proof that the telemetry was on and kept up.
#[derive(Default)]
struct SinkCounts {
    trace_exports: AtomicU64,
    log_exports: AtomicU64,
    metric_exports: AtomicU64,
    bytes: AtomicU64,
}

/// The empty `Export*ServiceResponse` as one uncompressed gRPC message: flag 0, length 0.
const EMPTY_GRPC_MESSAGE: &[u8] = &[0, 0, 0, 0, 0];

/// The OTLP/gRPC sink on its own thread and runtime. It reads each request and answers OK
/// without decoding or decompressing it: it shares the machine with sluice and the load, and
/// a decoding sink's CPU bursts (a whole batch decoded at once every 200 ms) would show up
/// in the latencies of both paths.
fn start_sink() -> std::io::Result<(SocketAddr, Arc<SinkCounts>)> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let address = listener.local_addr()?;
    let counts = Arc::new(SinkCounts::default());
    let shared = counts.clone();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::spawn(move || {
        runtime.block_on(async move {
            let listener = match tokio::net::TcpListener::from_std(listener) {
                Ok(listener) => listener,
                Err(error) => return eprintln!("sink: {error}"),
            };
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let counts = shared.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        sink_export(counts.clone(), request)
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .http2_only()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        })
    });
    Ok((address, counts))
}

type SinkBody = http_body_util::combinators::WithTrailers<
    Full<Bytes>,
    std::future::Ready<Option<Result<http::HeaderMap, std::convert::Infallible>>>,
>;

async fn sink_export(
    counts: Arc<SinkCounts>,
    request: Request<hyper::body::Incoming>,
) -> Result<http::Response<SinkBody>, std::convert::Infallible> {
    let counter = match request.uri().path() {
        "/opentelemetry.proto.collector.trace.v1.TraceService/Export" => &counts.trace_exports,
        "/opentelemetry.proto.collector.logs.v1.LogsService/Export" => &counts.log_exports,
        "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export" => &counts.metric_exports,
        _ => &counts.bytes,
    };
    let size = match request.into_body().collect().await {
        Ok(body) => body.to_bytes().len(),
        Err(_) => 0,
    };
    counter.fetch_add(1, Ordering::Relaxed);
    counts.bytes.fetch_add(size as u64, Ordering::Relaxed);
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
    let body = Full::new(Bytes::from_static(EMPTY_GRPC_MESSAGE))
        .with_trailers(std::future::ready(Some(Ok(trailers))));
    let mut response = http::Response::new(body);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/grpc"),
    );
    Ok(response)
}

fn sluice_config(
    admin: SocketAddr,
    gateway: SocketAddr,
    mock: SocketAddr,
    sink: SocketAddr,
    compression: Compression,
    telemetry: bool,
) -> String {
    let compression = match compression {
        Compression::Gzip => "gzip",
        Compression::None => "none",
    };
    let mut config = format!(
        r#"
[service]
admin = "{admin}"

[gateway]
listen = "{gateway}"
capture_content = "off"

[gateway.providers.mock]
kind = "openai"
base_url = "http://{mock}/v1"
api_key = "sk-upstream"
timeout = "10s"

[[gateway.routes]]
model = "*"
targets = [{{ provider = "mock" }}]
"#
    );
    if !telemetry {
        return config;
    }
    config.push_str(&format!(
        r#"
[processors.batch]

[exporters.sink]
type = "otlp_grpc"
endpoint = "http://{sink}"
compression = "{compression}"
"#
    ));
    for signal in ["traces", "metrics", "logs"] {
        config.push_str(&format!(
            "\n[pipelines.{signal}]\nreceivers = [\"gateway\"]\nprocessors = [\"batch\"]\nexporters = [\"sink\"]\n"
        ));
    }
    config
}

/// A blocking GET of sluice's admin `/metrics`, summing the series starting with `series`.
fn admin_metric(admin: SocketAddr, series: &str) -> Option<f64> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(admin).ok()?;
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    Some(
        text.lines()
            .filter(|line| line.starts_with(series))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum(),
    )
}

fn micros(d: Duration) -> String {
    format!("{:.0}", d.as_secs_f64() * 1e6)
}

fn print_run(rate: u32, repetition: usize, target: &str, s: &RunStats, steal: f64, cpu: f64) {
    println!(
        "{rate:>6} {repetition:>3} {target:<7} {:>8} {:>8} {:>8} {:>8} {:>8} {:>6} {:>9.0} {:>8} {steal:>6.1} {cpu:>7.0}",
        micros(s.p50),
        micros(s.p99),
        micros(s.p999),
        micros(s.max),
        s.requests,
        s.errors,
        s.achieved_rps,
        micros(s.lag_p99),
    );
}

async fn measure(args: &Args) -> Result<(), String> {
    let mock = start_mock().map_err(|e| format!("starting the mock: {e}"))?;
    let (sink, counts) = start_sink().map_err(|e| format!("starting the sink: {e}"))?;
    let (admin, gateway) = (
        free_local_addr().map_err(|e| e.to_string())?,
        free_local_addr().map_err(|e| e.to_string())?,
    );
    let config = sluice_config(
        admin,
        gateway,
        mock,
        sink,
        args.compression,
        args.telemetry == Switch::On,
    );
    let mut sluice = SluiceProcess::start(&args.sluice, &config).map_err(|e| e.to_string())?;
    sluice
        .wait_for_port(gateway, Duration::from_secs(30))
        .await
        .map_err(|e| e.to_string())?;

    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: HttpClient = Client::builder(TokioExecutor::new()).build(connector);
    let direct: Uri = format!("http://{mock}/v1/chat/completions")
        .parse()
        .map_err(|e| format!("{e}"))?;
    let via: Uri = format!("http://{gateway}/v1/chat/completions")
        .parse()
        .map_err(|e| format!("{e}"))?;

    // Both paths must give the same answer, or the comparison means nothing.
    let mut answers = Vec::new();
    for uri in [&direct, &via] {
        let request = Request::post(uri.clone())
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::AUTHORIZATION, "Bearer sk-bench")
            .body(Full::new(Bytes::from_static(CHAT_REQUEST.as_bytes())))
            .map_err(|e| e.to_string())?;
        let response = client
            .request(request)
            .await
            .map_err(|e| format!("{uri}: {e}"))?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("{uri}: {e}"))?
            .to_bytes();
        let json: serde_json::Value =
            serde_json::from_slice(&body).map_err(|e| format!("{uri}: {e}"))?;
        if status != http::StatusCode::OK {
            return Err(format!("{uri} answered {status}: {json}"));
        }
        answers.push((json["choices"].clone(), json["usage"].clone()));
    }
    if answers[0] != answers[1] {
        return Err(format!("direct and via the gateway differ: {:?}", answers));
    }

    let pid = sluice.pid();
    let ticks = procfs::clock_ticks_per_second().unwrap_or(100) as f64;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let duration = Duration::from_secs_f64(args.duration);
    let warmup = Duration::from_secs_f64(args.warmup);
    println!(
        "gateway_latency: {cores} cores, {} runs of {} s after {} s warm-up per rate, {:?} order, telemetry {:?}, exporter compression {:?}",
        args.repeat, args.duration, args.warmup, args.order, args.telemetry, args.compression
    );
    println!(
        "latencies in microseconds; lag = how late the load tool sent (its own delay); steal = CPU time the hypervisor took"
    );
    println!(
        "{:>6} {:>3} {:<7} {:>8} {:>8} {:>8} {:>8} {:>8} {:>6} {:>9} {:>8} {:>6} {:>7}",
        "rps",
        "run",
        "target",
        "p50",
        "p99",
        "p99.9",
        "max",
        "requests",
        "errors",
        "achieved",
        "lag_p99",
        "steal%",
        "sluice%"
    );
    let mut summary = Vec::new();
    let mut via_requests = 1u64;
    for &rate in &args.rates {
        let mut runs = Vec::new();
        for repetition in 1..=args.repeat {
            let phases: Vec<Vec<Uri>> = match args.order {
                Order::Interleaved => vec![vec![direct.clone(), via.clone()]],
                Order::Sequential => vec![vec![direct.clone()], vec![via.clone()]],
            };
            let mut figures = Vec::new();
            for targets in phases {
                if !warmup.is_zero() {
                    run(&client, &targets, rate, warmup).await;
                }
                let (cpu_before, steal_before) = (procfs::cpu_ticks(pid).ok(), steal_ticks());
                let stats = run(&client, &targets, rate, duration).await;
                let cpu = procfs::cpu_ticks(pid)
                    .ok()
                    .zip(cpu_before)
                    .map_or(f64::NAN, |(a, b)| {
                        (a - b) as f64 / ticks / args.duration * 100.0
                    });
                let steal = steal_ticks().zip(steal_before).map_or(f64::NAN, |(a, b)| {
                    (a - b) as f64 / ticks / (args.duration * cores as f64) * 100.0
                });
                for (uri, s) in targets.iter().zip(stats) {
                    let target = if *uri == via { "gateway" } else { "direct" };
                    if target == "gateway" {
                        via_requests += (f64::from(rate) * (args.duration + args.warmup)) as u64;
                    }
                    print_run(rate, repetition, target, &s, steal, cpu);
                    figures.push(s);
                }
            }
            let [d, v]: [RunStats; 2] = figures
                .try_into()
                .map_err(|_| "a run without both targets".to_string())?;
            runs.push((d, v));
        }
        summary.push((rate, runs));
    }

    println!();
    println!(
        "added by the gateway (via - direct), microseconds, median of {} runs (each run's figure in brackets):",
        args.repeat
    );
    println!(
        "{:>6} {:>10} {:>10} {:>10} {:>10} {:>10}  p99 added per run",
        "rps", "direct p50", "via p50", "p50 added", "direct p99", "via p99"
    );
    for (rate, runs) in &summary {
        let median = |f: &dyn Fn(&(RunStats, RunStats)) -> f64| -> f64 {
            let mut values: Vec<f64> = runs.iter().map(f).collect();
            values.sort_by(f64::total_cmp);
            values[values.len() / 2]
        };
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        let per_run: Vec<String> = runs
            .iter()
            .map(|(d, v)| format!("{:+.0}", us(v.p99) - us(d.p99)))
            .collect();
        println!(
            "{rate:>6} {:>10.0} {:>10.0} {:>+10.0} {:>10.0} {:>10.0}  median {:+.0} [{}]; errors {}",
            median(&|(d, _)| us(d.p50)),
            median(&|(_, v)| us(v.p50)),
            median(&|(d, v)| us(v.p50) - us(d.p50)),
            median(&|(d, _)| us(d.p99)),
            median(&|(_, v)| us(v.p99)),
            median(&|(d, v)| us(v.p99) - us(d.p99)),
            per_run.join(", "),
            runs.iter().map(|(d, v)| d.errors + v.errors).sum::<usize>(),
        );
    }

    // Let the last batches reach the sink: until nothing new arrived for half a second
    // (more than the batch processor's 200 ms), at most 5 s.
    let waited = Instant::now();
    let mut seen = u64::MAX;
    while args.telemetry == Switch::On
        && counts.bytes.load(Ordering::Relaxed) != seen
        && waited.elapsed() < Duration::from_secs(5)
    {
        seen = counts.bytes.load(Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    println!();
    println!(
        "telemetry: {via_requests} requests through the gateway; the sink got {} trace, {} log and {} metric exports ({:.1} MB as sent); events dropped by the gateway: {}; items refused by the pipeline: {}",
        counts.trace_exports.load(Ordering::Relaxed),
        counts.log_exports.load(Ordering::Relaxed),
        counts.metric_exports.load(Ordering::Relaxed),
        counts.bytes.load(Ordering::Relaxed) as f64 / 1e6,
        admin_metric(admin, "sluice_gateway_events_dropped_total").unwrap_or(f64::NAN),
        admin_metric(admin, "sluice_receiver_refused_items_total").unwrap_or(f64::NAN),
    );
    if let Some(status) = sluice.exited() {
        return Err(format!(
            "sluice exited during the run ({status}):\n{}",
            sluice.log()
        ));
    }
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.rates.is_empty() || args.rates.contains(&0) || args.duration <= 0.0 {
        eprintln!("gateway_latency: --rates must be positive and --duration more than 0");
        return ExitCode::from(2);
    }
    // Two workers: the load generator's responses are parsed while the dispatcher thread
    // keeps the schedule.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("gateway_latency: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(measure(&args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("gateway_latency: {error}");
            ExitCode::FAILURE
        }
    }
}
