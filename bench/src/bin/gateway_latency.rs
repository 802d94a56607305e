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
use clap::Parser;
use http::{Method, Request, Uri, header};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::{
    LogsService, LogsServiceServer,
};
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
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
    /// Request rates to measure, in requests per second, comma-separated.
    #[arg(
        long,
        value_name = "RPS,...",
        value_delimiter = ',',
        default_value = "1000,5000"
    )]
    rates: Vec<u32>,
    /// Seconds measured at each rate, for each of direct and via the gateway.
    #[arg(long, value_name = "SECS", default_value_t = 10.0)]
    duration: f64,
    /// Seconds of the same load before each measurement, not recorded (connections, caches).
    #[arg(long, value_name = "SECS", default_value_t = 2.0)]
    warmup: f64,
    /// Compression of sluice's otlp_grpc exporter towards the sink (`gzip` is its default).
    #[arg(long, value_name = "gzip|none", default_value = "gzip")]
    compression: String,
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

/// Sends `rate` requests per second for `duration` to `uri` on an open-loop schedule.
///
/// A dedicated OS thread keeps the schedule (sleeping to each due time; tokio's timer has a
/// 1 ms resolution, which would send 5 requests at once every millisecond at 5,000/s) and
/// hands each request to the client's runtime.
async fn run(client: &HttpClient, uri: &Uri, rate: u32, duration: Duration) -> RunStats {
    let total = (f64::from(rate) * duration.as_secs_f64()).round() as usize;
    let interval = Duration::from_secs_f64(1.0 / f64::from(rate));
    let (sender, mut samples) = mpsc::unbounded_channel::<Sample>();
    let handle = Handle::current();
    let (client, uri) = (client.clone(), uri.clone());
    let start = Instant::now() + Duration::from_millis(5);
    let dispatcher = std::thread::spawn(move || {
        let body = Bytes::from_static(CHAT_REQUEST.as_bytes());
        for i in 0..total {
            let due = start + interval * i as u32;
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            let request = Request::builder()
                .method(Method::POST)
                .uri(uri.clone())
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
                let _ = sender.send(Sample {
                    latency: finished - sent,
                    lag: sent.saturating_duration_since(due),
                    ok: matches!(outcome, Ok(Some(true))),
                    finished,
                });
            });
        }
    });
    let mut latencies = Vec::with_capacity(total);
    let mut lags = Vec::with_capacity(total);
    let (mut errors, mut last) = (0, start);
    for _ in 0..total {
        let Some(sample) = samples.recv().await else {
            break;
        };
        if sample.ok {
            latencies.push(sample.latency);
        } else {
            errors += 1;
        }
        lags.push(sample.lag);
        last = last.max(sample.finished);
    }
    let _ = tokio::task::spawn_blocking(move || dispatcher.join()).await;
    latencies.sort_unstable();
    lags.sort_unstable();
    RunStats {
        requests: total,
        errors,
        achieved_rps: latencies.len() as f64 / last.duration_since(start).as_secs_f64(),
        p50: percentile(&latencies, 0.50),
        p99: percentile(&latencies, 0.99),
        p999: percentile(&latencies, 0.999),
        max: latencies.last().copied().unwrap_or_default(),
        lag_p99: percentile(&lags, 0.99),
    }
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
    spans: AtomicU64,
    log_records: AtomicU64,
    metric_exports: AtomicU64,
}

#[derive(Clone)]
struct Sink(Arc<SinkCounts>);

#[tonic::async_trait]
impl TraceService for Sink {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let spans: usize = request
            .get_ref()
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .map(|s| s.spans.len())
            .sum();
        self.0.spans.fetch_add(spans as u64, Ordering::Relaxed);
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl LogsService for Sink {
    async fn export(
        &self,
        request: tonic::Request<ExportLogsServiceRequest>,
    ) -> Result<tonic::Response<ExportLogsServiceResponse>, tonic::Status> {
        let records: usize = request
            .get_ref()
            .resource_logs
            .iter()
            .flat_map(|r| &r.scope_logs)
            .map(|s| s.log_records.len())
            .sum();
        self.0
            .log_records
            .fetch_add(records as u64, Ordering::Relaxed);
        Ok(tonic::Response::new(ExportLogsServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl MetricsService for Sink {
    async fn export(
        &self,
        _request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        self.0.metric_exports.fetch_add(1, Ordering::Relaxed);
        Ok(tonic::Response::new(ExportMetricsServiceResponse::default()))
    }
}

/// The OTLP/gRPC sink on its own thread and runtime.
fn start_sink() -> std::io::Result<(SocketAddr, Arc<SinkCounts>)> {
    use tonic::codec::CompressionEncoding::Gzip;
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let address = listener.local_addr()?;
    let counts = Arc::new(SinkCounts::default());
    let sink = Sink(counts.clone());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::spawn(move || {
        runtime.block_on(async move {
            let listener = match tokio::net::TcpListener::from_std(listener) {
                Ok(listener) => listener,
                Err(error) => return eprintln!("sink: {error}"),
            };
            let result = tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(sink.clone()).accept_compressed(Gzip))
                .add_service(MetricsServiceServer::new(sink.clone()).accept_compressed(Gzip))
                .add_service(LogsServiceServer::new(sink).accept_compressed(Gzip))
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
                .await;
            if let Err(error) = result {
                eprintln!("sink: {error}");
            }
        })
    });
    Ok((address, counts))
}

fn sluice_config(
    admin: SocketAddr,
    gateway: SocketAddr,
    mock: SocketAddr,
    sink: SocketAddr,
    compression: &str,
) -> String {
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

[processors.batch]

[exporters.sink]
type = "otlp_grpc"
endpoint = "http://{sink}"
compression = "{compression}"
"#
    );
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

fn added(via: Duration, direct: Duration) -> String {
    format!("{:+.0}", (via.as_secs_f64() - direct.as_secs_f64()) * 1e6)
}

fn print_run(rate: u32, target: &str, s: &RunStats) {
    println!(
        "{rate:>6} {target:<7} {:>8} {:>8} {:>8} {:>8} {:>8} {:>6} {:>9.0} {:>8}",
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
    let config = sluice_config(admin, gateway, mock, sink, &args.compression);
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
    let duration = Duration::from_secs_f64(args.duration);
    let warmup = Duration::from_secs_f64(args.warmup);
    println!(
        "gateway_latency: {} cores, {} s per run after {} s warm-up, exporter compression {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        args.duration,
        args.warmup,
        args.compression
    );
    println!("latencies in microseconds; lag = how late the load tool sent (its own delay)");
    println!(
        "{:>6} {:<7} {:>8} {:>8} {:>8} {:>8} {:>8} {:>6} {:>9} {:>8}",
        "rps", "target", "p50", "p99", "p99.9", "max", "requests", "errors", "achieved", "lag_p99"
    );
    let mut summary = Vec::new();
    for &rate in &args.rates {
        if !warmup.is_zero() {
            run(&client, &direct, rate, warmup).await;
        }
        let d = run(&client, &direct, rate, duration).await;
        print_run(rate, "direct", &d);
        if !warmup.is_zero() {
            run(&client, &via, rate, warmup).await;
        }
        let cpu_before = procfs::cpu_ticks(pid).unwrap_or(0);
        let v = run(&client, &via, rate, duration).await;
        let cpu = (procfs::cpu_ticks(pid).unwrap_or(0) - cpu_before) as f64 / ticks;
        print_run(rate, "gateway", &v);
        summary.push((rate, d, v, cpu / args.duration * 100.0));
    }

    println!();
    println!("added by the gateway (via - direct), microseconds:");
    println!(
        "{:>6} {:>10} {:>10} {:>12} {:>14}",
        "rps", "p50 added", "p99 added", "sluice CPU %", "errors d/v"
    );
    for (rate, d, v, cpu) in &summary {
        println!(
            "{rate:>6} {:>10} {:>10} {:>12.0} {:>14}",
            added(v.p50, d.p50),
            added(v.p99, d.p99),
            cpu,
            format!("{}/{}", d.errors, v.errors),
        );
    }

    // Let the last batches and a metrics export reach the sink before reading its counts.
    let via_requests: u64 = 1
        + summary
            .iter()
            .map(|(_, _, v, _)| v.requests as u64)
            .sum::<u64>()
        + args
            .rates
            .iter()
            .map(|&r| (f64::from(r) * args.warmup).round() as u64)
            .sum::<u64>();
    let waited = Instant::now();
    while counts.log_records.load(Ordering::Relaxed) < via_requests
        && waited.elapsed() < Duration::from_secs(5)
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!();
    println!(
        "telemetry: {via_requests} requests through the gateway; the sink got {} spans, {} log records, {} metric exports; events dropped by the gateway: {}; items refused by the pipeline: {}",
        counts.spans.load(Ordering::Relaxed),
        counts.log_records.load(Ordering::Relaxed),
        counts.metric_exports.load(Ordering::Relaxed),
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
