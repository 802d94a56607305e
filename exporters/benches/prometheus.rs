//! What the `prometheus` exporter costs: exporting into its store, and scrapes of 10,000 and
//! 100,000 series over a real socket (time and response size, plain and gzip), and how long
//! an export waits while scrapes run back to back.
//!
//! `cargo bench -p sluice-exporters --bench prometheus` (add `-- quick` for one size).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, Histogram, HistogramDataPoint, Metric, NumberDataPoint,
    ResourceMetrics, ScopeMetrics, Sum, metric, number_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use sluice_exporters::prometheus::{Config, PrometheusExporter};
use sluice_pipeline::config::ComponentKind;
use sluice_pipeline::{Batch, ComponentSettings, Exporter, ExporterContext, Request, Telemetry};

const T0: u64 = 1_700_000_000_000_000_000;
const DURATION_BOUNDS: &[f64] = &[
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
];

fn string(key: &str, value: String) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value)),
        }),
        ..Default::default()
    }
}

/// The gateway's dimensions for label set `i`: 50 models, keys, a few status codes.
fn dims(i: usize) -> Vec<KeyValue> {
    vec![
        string("gen_ai.operation.name", "chat".into()),
        string("gen_ai.request.model", format!("model-{}", i % 50)),
        string("gen_ai.provider.name", "openai".into()),
        string("sluice.api_key.id", format!("key-{}", i / 50)),
        string(
            "http.response.status_code",
            ["200", "429", "500", "503"][i % 4].into(),
        ),
    ]
}

fn request(metrics: Vec<Metric>) -> ExportMetricsServiceRequest {
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(Resource {
                attributes: vec![
                    string("service.name", "sluice-gateway".into()),
                    string("service.version", "0.1.0".into()),
                ],
                ..Default::default()
            }),
            scope_metrics: vec![ScopeMetrics {
                scope: Some(InstrumentationScope {
                    name: "sluice.gateway".into(),
                    version: "0.1.0".into(),
                    ..Default::default()
                }),
                metrics,
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    }
}

/// A counter with `series` label sets.
fn counters(series: usize, round: u64) -> Metric {
    Metric {
        name: "sluice.gateway.requests".into(),
        unit: "{request}".into(),
        description: "Requests the gateway answered.".into(),
        data: Some(metric::Data::Sum(Sum {
            data_points: (0..series)
                .map(|i| NumberDataPoint {
                    attributes: dims(i),
                    start_time_unix_nano: T0,
                    time_unix_nano: T0 + round,
                    value: Some(number_data_point::Value::AsInt((i as i64) + round as i64)),
                    ..Default::default()
                })
                .collect(),
            aggregation_temporality: AggregationTemporality::Cumulative as i32,
            is_monotonic: true,
        })),
        ..Default::default()
    }
}

/// A histogram with `label_sets` label sets (each is 17 series: 15 buckets, sum, count).
fn histograms(label_sets: usize, round: u64) -> Metric {
    Metric {
        name: "gen_ai.client.operation.duration".into(),
        unit: "s".into(),
        description: "GenAI operation duration.".into(),
        data: Some(metric::Data::Histogram(Histogram {
            data_points: (0..label_sets)
                .map(|i| HistogramDataPoint {
                    attributes: dims(i),
                    start_time_unix_nano: T0,
                    time_unix_nano: T0 + round,
                    count: 15 * (round + 1),
                    sum: Some(12.5 * (round + 1) as f64),
                    bucket_counts: vec![round + 1; 15],
                    explicit_bounds: DURATION_BOUNDS.to_vec(),
                    ..Default::default()
                })
                .collect(),
            aggregation_temporality: AggregationTemporality::Cumulative as i32,
        })),
        ..Default::default()
    }
}

fn batch(metrics: Vec<Metric>) -> Batch {
    Batch::from_request(Request::Metrics(request(metrics)))
}

/// A GET of /metrics: (time to the last byte, body size).
fn scrape(addr: SocketAddr, gzip: bool) -> (Duration, usize) {
    let started = Instant::now();
    let mut stream = TcpStream::connect(addr).expect("the exporter listens");
    let encoding = if gzip {
        "Accept-Encoding: gzip\r\n"
    } else {
        ""
    };
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{encoding}\r\n"
    )
    .expect("request written");
    let mut response = Vec::new();
    stream.read_to_end(&mut response).expect("response read");
    let elapsed = started.elapsed();
    let head = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a complete response");
    (elapsed, response.len() - head - 4)
}

fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    values[values.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

async fn start() -> (PrometheusExporter, SocketAddr) {
    let settings = ComponentSettings::new(
        ComponentKind::Exporter,
        "prometheus",
        "prometheus",
        toml::from_str("endpoint = \"127.0.0.1:0\"\nmax_series_per_metric = 1000000")
            .expect("valid TOML"),
    );
    let config: Config = settings.parse().expect("a valid config");
    let mut exporter = PrometheusExporter::new(&settings, config).expect("a valid config");
    let ctx = ExporterContext {
        id: "prometheus".into(),
        telemetry: Telemetry::new(),
    };
    exporter.start(&ctx).await.expect("binds 127.0.0.1:0");
    let addr = exporter.local_addr().expect("started");
    (exporter, addr)
}

/// One scenario: `metric(label_sets, round)` is the whole export; `series` what it exposes.
async fn scenario(name: &str, label_sets: usize, series: usize, metric: fn(usize, u64) -> Metric) {
    let make = |round| metric(label_sets, round);
    let (exporter, addr) = start().await;
    let exporter = Arc::new(exporter);

    let first = make(0);
    let started = Instant::now();
    exporter.export(batch(vec![first])).await.expect("export");
    let create = started.elapsed();
    let mut updates = Vec::new();
    for round in 1..=3 {
        let metric = make(round);
        let started = Instant::now();
        exporter.export(batch(vec![metric])).await.expect("export");
        updates.push(started.elapsed());
    }

    // Uncached scrapes: an export between them changes the store.
    let (mut plain, mut gzipped, mut cached) = (Vec::new(), Vec::new(), Vec::new());
    let (mut plain_size, mut gzip_size) = (0, 0);
    for round in 4..9 {
        exporter
            .export(batch(vec![make(round)]))
            .await
            .expect("export");
        let (time, size) = tokio::task::spawn_blocking(move || scrape(addr, false))
            .await
            .expect("scrape");
        plain.push(time);
        plain_size = size;
        let (time, _) = tokio::task::spawn_blocking(move || scrape(addr, false))
            .await
            .expect("scrape");
        cached.push(time);
        exporter
            .export(batch(vec![make(round + 100)]))
            .await
            .expect("export");
        let (time, size) = tokio::task::spawn_blocking(move || scrape(addr, true))
            .await
            .expect("scrape");
        gzipped.push(time);
        gzip_size = size;
    }

    // Exports of one data point of the same metric (so the same store shard as the scrape
    // copies) while another thread scrapes back to back.
    let stop = Arc::new(AtomicBool::new(false));
    let scraper = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut scrapes = 0;
            while !stop.load(Ordering::Relaxed) {
                scrape(addr, false);
                scrapes += 1;
            }
            scrapes
        })
    };
    let mut waits = Vec::new();
    let small = |round: u64| metric(1, round);
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut round = 1000;
    while Instant::now() < deadline {
        round += 1;
        let started = Instant::now();
        exporter
            .export(batch(vec![small(round)]))
            .await
            .expect("export");
        waits.push(started.elapsed());
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let scrapes = scraper.join().expect("the scraper thread");
    waits.sort();
    let p99 = waits[waits.len() * 99 / 100];
    let max = waits[waits.len() - 1];

    println!(
        "| {name} | {series} | {} | {} | {} ({:.1} MB) | {} | {} ({:.2} MB) | {} / {} ({} exports, {scrapes} scrapes) |",
        ms(create),
        ms(median(updates)),
        ms(median(plain)),
        plain_size as f64 / 1e6,
        ms(median(cached)),
        ms(median(gzipped)),
        gzip_size as f64 / 1e6,
        ms(p99),
        ms(max),
        waits.len(),
    );
    exporter.shutdown().await;
}

fn main() {
    let quick = std::env::args().any(|a| a == "quick");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(async {
        println!(
            "| metric | series | first export | update export | scrape (text) | scrape (cached) | scrape (gzip) | 1-point export during scrapes p99 / max |"
        );
        println!("|---|---|---|---|---|---|---|---|");
        scenario("counter", 10_000, 10_000, counters).await;
        if quick {
            return;
        }
        scenario("counter", 100_000, 100_000, counters).await;
        // 600 label sets of 17 series each: about 10,000 series; 6,000: about 100,000.
        scenario("histogram", 600, 600 * 17, histograms).await;
        scenario("histogram", 6_000, 6_000 * 17, histograms).await;
    });
}
