//! Disk queue throughput: encoded OTLP batches of 100 spans (10 attributes each) pushed,
//! handed out and acknowledged, with `fsync = "always"` against `"interval"`. Each case reports
//! spans per second and the bytes written to the queue's files per second (lz4-compressed
//! records plus their delivery marks).
//!
//! Run with `cargo bench -p sluice-pipeline --bench disk_queue` (add `-- --quick` for a short
//! run). The queue lives in a temporary directory: set `TMPDIR` to put it on the disk to
//! measure (a tmpfs makes fsync free).

use std::hint::black_box;
use std::io::Write;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{
    AnyValue, InstrumentationScope, KeyValue, any_value::Value,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status, span};
use prost::Message;
use sluice_pipeline::disk_queue::{DiskQueue, DiskQueueSettings, FsyncPolicy};

const SPANS: usize = 100;
const PRODUCERS: u64 = 4;
/// Two 16-byte delivery marks per record: handed out, then acknowledged.
const MARKS_PER_RECORD: u64 = 32;

/// Trace and span ids are random in real traffic, and lz4 cannot shrink them.
struct Ids(u64);

impl Ids {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn attribute(key: &str, value: Value) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

/// A gateway CLIENT span with 10 attributes: 5 strings, 3 ints, a double and a bool.
fn span(i: usize, ids: &mut Ids) -> Span {
    let start = 1_700_000_000_000_000_000 + ids.next() % 1_000_000_000_000;
    Span {
        trace_id: [ids.next().to_le_bytes(), ids.next().to_le_bytes()].concat(),
        span_id: ids.next().to_le_bytes().to_vec(),
        parent_span_id: ids.next().to_le_bytes().to_vec(),
        name: format!("chat gpt-4o-mini {}", i % 10),
        kind: span::SpanKind::Client as i32,
        start_time_unix_nano: start,
        end_time_unix_nano: start + 200_000_000 + ids.next() % 2_000_000_000,
        attributes: vec![
            attribute("gen_ai.system", Value::StringValue("openai".into())),
            attribute(
                "gen_ai.request.model",
                Value::StringValue("gpt-4o-mini".into()),
            ),
            attribute("http.request.method", Value::StringValue("POST".into())),
            attribute(
                "url.full",
                Value::StringValue("https://api.openai.com/v1/chat/completions".into()),
            ),
            attribute(
                "gen_ai.response.id",
                Value::StringValue(format!("chatcmpl-{:016x}", ids.next())),
            ),
            attribute(
                "gen_ai.usage.input_tokens",
                Value::IntValue((ids.next() % 4000) as i64),
            ),
            attribute(
                "gen_ai.usage.output_tokens",
                Value::IntValue((ids.next() % 1000) as i64),
            ),
            attribute("http.response.status_code", Value::IntValue(200)),
            attribute("gen_ai.request.temperature", Value::DoubleValue(0.7)),
            attribute(
                "gen_ai.request.stream",
                Value::BoolValue(i.is_multiple_of(3)),
            ),
        ],
        status: Some(Status {
            code: 1,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// One export batch as the core stores it: an encoded OTLP traces request.
fn batch() -> Vec<u8> {
    let mut ids = Ids(0x2545_f491_4f6c_dd1d);
    let resource_attributes = [
        ("service.name", "llm-gateway"),
        ("service.version", "1.42.0"),
        ("deployment.environment", "production"),
        ("host.name", "gateway-7f9c6d5b8-x2k4p"),
        ("cloud.region", "eu-west-1"),
    ];
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: resource_attributes
                    .iter()
                    .map(|(k, v)| attribute(k, Value::StringValue((*v).into())))
                    .collect(),
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "sluice-gateway".into(),
                    version: "0.1.0".into(),
                    ..Default::default()
                }),
                spans: (0..SPANS).map(|i| span(i, &mut ids)).collect(),
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
    .encode_to_vec()
}

fn open(directory: &std::path::Path, fsync: FsyncPolicy) -> DiskQueue {
    let mut settings = DiskQueueSettings::new(directory);
    settings.fsync = fsync;
    // Room for a push-only sample's backlog.
    settings.max_bytes = 16 * 1024 * 1024 * 1024;
    DiskQueue::open("bench", settings)
        .expect("open the bench queue")
        .0
}

fn drain(queue: &DiskQueue) {
    while let Some(record) = queue.try_pop() {
        queue.ack(record.id).expect("a record just handed out");
    }
}

/// The bytes one batch takes in a segment: what the queue writes for it.
fn record_bytes(payload: &[u8]) -> u64 {
    let directory = tempfile::tempdir().expect("a temporary directory");
    let queue = open(directory.path(), FsyncPolicy::Interval);
    let before = queue.stats().bytes;
    queue.push(payload, SPANS as u32).expect("push");
    queue.stats().bytes - before
}

fn bench(c: &mut Criterion) {
    let payload = batch();
    let record = record_bytes(&payload);
    eprintln!(
        "batch: {SPANS} spans, {} bytes encoded, {record} bytes on disk (lz4 {:.2}x)",
        payload.len(),
        payload.len() as f64 / record as f64,
    );
    let policies = [
        ("interval", FsyncPolicy::Interval),
        ("always", FsyncPolicy::Always),
    ];

    // A healthy backend: every batch is handed out and acknowledged right after its push, so
    // the queue stays short and its segments are deleted as they fill.
    let mut group = c.benchmark_group("disk_queue_push_pop_ack");
    group.throughput(Throughput::ElementsAndBytes {
        elements: SPANS as u64,
        bytes: record + MARKS_PER_RECORD,
    });
    for (name, fsync) in policies {
        let directory = tempfile::tempdir().expect("a temporary directory");
        let queue = open(directory.path(), fsync);
        group.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter(|| {
                queue.push(black_box(&payload), SPANS as u32).expect("push");
                let record = queue.try_pop().expect("the record just pushed");
                queue.ack(record.id).expect("ack");
            })
        });
    }
    // The same through the async API the exporter queue uses: push_async and pop run the file
    // I/O on tokio's blocking pool.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let shared = Bytes::from(payload.clone());
    for (name, fsync) in policies {
        let directory = tempfile::tempdir().expect("a temporary directory");
        let queue = open(directory.path(), fsync);
        group.bench_function(BenchmarkId::new("async", name), |b| {
            b.iter_custom(|iters| {
                runtime.block_on(async {
                    let start = Instant::now();
                    for _ in 0..iters {
                        queue
                            .push_async(shared.clone(), SPANS as u32)
                            .await
                            .expect("push");
                        let record = queue.pop().await.expect("the record just pushed");
                        queue.ack(record.id).expect("ack");
                    }
                    start.elapsed()
                })
            })
        });
    }
    group.finish();

    // A backend down: batches only pile up on disk (drained between samples, untimed).
    let mut group = c.benchmark_group("disk_queue_push_backlog");
    group.throughput(Throughput::ElementsAndBytes {
        elements: SPANS as u64,
        bytes: record,
    });
    for (name, fsync) in policies {
        let directory = tempfile::tempdir().expect("a temporary directory");
        let queue = open(directory.path(), fsync);
        group.bench_function(BenchmarkId::new("1_producer", name), |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                for _ in 0..iters {
                    queue.push(black_box(&payload), SPANS as u32).expect("push");
                }
                let elapsed = start.elapsed();
                drain(&queue);
                elapsed
            })
        });
    }
    // Several receivers' batches arriving at once: concurrent pushes share each fsync.
    for (name, fsync) in policies {
        let directory = tempfile::tempdir().expect("a temporary directory");
        let queue = open(directory.path(), fsync);
        group.bench_function(BenchmarkId::new("4_producers", name), |b| {
            b.iter_custom(|iters| {
                let each = iters.div_ceil(PRODUCERS);
                let start = Instant::now();
                std::thread::scope(|scope| {
                    for _ in 0..PRODUCERS {
                        scope.spawn(|| {
                            for _ in 0..each {
                                queue.push(&payload, SPANS as u32).expect("push");
                            }
                        });
                    }
                });
                let elapsed = start.elapsed();
                drain(&queue);
                // Report the time per push actually made.
                elapsed.mul_f64(iters as f64 / (each * PRODUCERS) as f64)
            })
        });
    }
    group.finish();

    // The floor under `always`: appending a record's bytes to a plain file and fdatasync, no
    // queue. On a shared disk this moves with the other tenants' writes; compare within a run.
    let mut group = c.benchmark_group("disk_baseline");
    group.throughput(Throughput::ElementsAndBytes {
        elements: SPANS as u64,
        bytes: record,
    });
    let directory = tempfile::tempdir().expect("a temporary directory");
    let mut file = std::fs::File::create(directory.path().join("baseline")).expect("create");
    let bytes = vec![0x5a; record as usize];
    group.bench_function("append_and_fdatasync", |b| {
        b.iter(|| {
            file.write_all(&bytes).expect("write");
            file.sync_data().expect("fdatasync");
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(6));
    targets = bench
}
criterion_main!(benches);
