//! Benchmarks of the sampling processors on spans with 10 attributes, and the memory the
//! tail sampler spends per buffered span.
//!
//! `cargo bench -p sluice-processors --bench sampling`
//!
//! Times are the CPU time of the benchmark's thread (everything runs on one current-thread
//! runtime: `consume`, the tail sampler's release task, the sink), not wall-clock time: the
//! machines these run on are shared, and CPU time is what "spans per second on one core"
//! means.
//!
//! Before the timings, the binary prints the tail sampler's memory: a counting global
//! allocator measures the bytes allocated while 100,000 spans are buffered (the request
//! buffers the spans are sliced from included); less the spans' own encoded size, per span,
//! that is the buffer's overhead.

mod cpu_time;

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use cpu_time::thread_cpu_time;
use criterion::{Criterion, Throughput, criterion_group};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};
use prost::Message;
use sluice_pipeline::config::ComponentKind;
use sluice_pipeline::{
    Batch, ComponentSettings, ConsumeError, Consumer, Processor, ProcessorContext,
    RunningProcessor, Signal, Telemetry,
};
use sluice_processors::probabilistic_sampler::{ProbabilisticSampler, ProbabilisticSamplerConfig};
use sluice_processors::tail_sampling::TailSampling;

/// The system allocator, counting the bytes currently allocated.
struct Counting;

static ALLOCATED: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATED.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: forwarded as is to the system allocator.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        ALLOCATED.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: forwarded as is to the system allocator.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATED.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        // SAFETY: forwarded as is to the system allocator.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocated() -> isize {
    ALLOCATED.load(Ordering::Relaxed)
}

/// Spans per request, as an SDK batch exporter sends them.
const SPANS_PER_REQUEST: usize = 100;
/// Spans per trace: each request carries 10 traces of 10 spans.
const SPANS_PER_TRACE: usize = 10;

fn kv(key: &str, value: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

/// A SplitMix64 step: deterministic ids and attribute values.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Span `i` of trace `trace`, with 10 attributes of an LLM call. One trace in 20 has an
/// error, one in 20 is expensive, one in 20 is slow.
fn span(trace: u64, i: usize) -> Span {
    use any_value::Value::{BoolValue, DoubleValue, IntValue, StringValue};
    let trace_id: Vec<u8> = [mix(trace).to_le_bytes(), mix(!trace).to_le_bytes()].concat();
    let kind = trace % 20;
    let start = 1_700_000_000_000_000_000 + trace * 1_000_000;
    let duration = if kind == 2 {
        5_000_000_000
    } else {
        300_000_000
    };
    Span {
        trace_id,
        span_id: mix(trace * 64 + i as u64).to_le_bytes().to_vec(),
        parent_span_id: if i == 0 {
            Vec::new()
        } else {
            mix(trace * 64).to_le_bytes().to_vec()
        },
        name: if i == 0 {
            "POST /v1/chat/completions".into()
        } else {
            "chat gpt-4o".into()
        },
        kind: 3,
        start_time_unix_nano: start,
        end_time_unix_nano: start + duration,
        attributes: vec![
            kv("gen_ai.system", StringValue("openai".into())),
            kv(
                "gen_ai.request.model",
                StringValue("gpt-4o-2024-08-06".into()),
            ),
            kv("gen_ai.usage.input_tokens", IntValue(1200)),
            kv(
                "gen_ai.usage.output_tokens",
                IntValue(if kind == 1 { 6000 } else { 350 }),
            ),
            kv("gen_ai.usage.cost", DoubleValue(0.0065)),
            kv("http.route", StringValue("/v1/chat/completions".into())),
            kv("http.response.status_code", IntValue(200)),
            kv("user.id", StringValue(format!("user-{}", trace % 1000))),
            kv(
                "session.id",
                StringValue(format!("session-{}", trace % 5000)),
            ),
            kv("gen_ai.request.stream", BoolValue(false)),
        ],
        status: Some(Status {
            code: if kind == 0 && i == SPANS_PER_TRACE - 1 {
                StatusCode::Error as i32
            } else {
                StatusCode::Unset as i32
            },
            message: String::new(),
        }),
        ..Default::default()
    }
}

/// `count` encoded requests; request `r` carries traces `r*10 .. r*10+10`, spans interleaved.
fn requests(count: usize) -> Vec<Bytes> {
    let traces_per_request = (SPANS_PER_REQUEST / SPANS_PER_TRACE) as u64;
    (0..count as u64)
        .map(|r| {
            let spans = (0..SPANS_PER_TRACE)
                .flat_map(|i| {
                    (0..traces_per_request).map(move |t| span(r * traces_per_request + t, i))
                })
                .collect();
            let request = ExportTraceServiceRequest {
                resource_spans: vec![ResourceSpans {
                    resource: Some(Resource {
                        attributes: vec![
                            kv(
                                "service.name",
                                any_value::Value::StringValue("checkout".into()),
                            ),
                            kv(
                                "service.version",
                                any_value::Value::StringValue("1.4.2".into()),
                            ),
                            kv(
                                "deployment.environment.name",
                                any_value::Value::StringValue("prod".into()),
                            ),
                        ],
                        ..Default::default()
                    }),
                    scope_spans: vec![ScopeSpans {
                        scope: Some(InstrumentationScope {
                            name: "sluice.gateway".into(),
                            version: "0.1.0".into(),
                            ..Default::default()
                        }),
                        spans,
                        schema_url: String::new(),
                    }],
                    schema_url: String::new(),
                }],
            };
            Bytes::from(request.encode_to_vec())
        })
        .collect()
}

fn batch(bytes: &Bytes) -> Batch {
    Batch::from_encoded(Signal::Traces, bytes.clone()).expect("the bench's requests are valid")
}

/// Takes every batch and drops it.
struct Sink;

#[async_trait]
impl Consumer for Sink {
    async fn consume(&self, batch: Batch) -> Result<(), ConsumeError> {
        black_box(batch);
        Ok(())
    }
}

fn settings(type_name: &str, toml: &str) -> ComponentSettings {
    ComponentSettings::new(
        ComponentKind::Processor,
        type_name,
        type_name,
        toml::from_str(toml).expect("the bench's TOML is valid"),
    )
}

/// Five policies as a gateway would have them: errors, slow, expensive, a 5% baseline, and
/// health checks dropped.
const TAIL_POLICIES: &str = r#"
[[policies]]
name = "errors"
type = "status_code"
status_codes = ["ERROR"]
[[policies]]
name = "slow"
type = "latency"
threshold_ms = 2000
[[policies]]
name = "expensive"
type = "numeric_attribute"
key = "gen_ai.usage.output_tokens"
min_value = 4000
[[policies]]
name = "baseline"
type = "probabilistic"
sampling_percentage = 5
[[policies]]
name = "no-health"
type = "drop"
[[policies.drop_sub_policy]]
type = "string_attribute"
key = "http.route"
values = ["/health"]
"#;

async fn start_tail(extra: &str) -> Arc<dyn RunningProcessor> {
    let toml = format!("{extra}\n{TAIL_POLICIES}");
    let processor = TailSampling::from_settings(&settings("tail_sampling", &toml))
        .expect("the bench's config is valid");
    Box::new(processor)
        .start(ProcessorContext {
            id: "tail_sampling".into(),
            pipeline: "traces".into(),
            signal: Signal::Traces,
            next: Arc::new(Sink),
            telemetry: Telemetry::new(),
        })
        .await
        .expect("starts")
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a runtime builds")
}

/// Bytes per buffered span: everything the buffer keeps alive, the spans' own encoded size,
/// and the difference.
fn memory_report() {
    const REQUESTS: usize = 1_000;
    let requests = requests(REQUESTS);
    let spans = REQUESTS * SPANS_PER_REQUEST;
    // The span messages' own encoded bytes, as they sit in the requests.
    let own_bytes: usize = requests
        .iter()
        .flat_map(|r| {
            let request = ExportTraceServiceRequest::decode(r.clone()).expect("valid");
            request.resource_spans[0].scope_spans[0]
                .spans
                .iter()
                .map(Message::encoded_len)
                .collect::<Vec<_>>()
        })
        .sum();
    // For comparison: the same spans decoded, each on its own.
    let before = allocated();
    let decoded: Vec<ExportTraceServiceRequest> = requests
        .iter()
        .map(|r| ExportTraceServiceRequest::decode(r.clone()).expect("valid"))
        .collect();
    let decoded_bytes = allocated() - before;
    drop(decoded);

    let rt = runtime();
    rt.block_on(async {
        let processor = start_tail(
            "decision_wait = \"1h\"\nnum_traces = 1000000\nmax_buffered_spans = 1000000\n",
        )
        .await;
        let before = allocated();
        for request in &requests {
            // A fresh buffer per request, as a receiver hands over: the buffer keeps it.
            let bytes = Bytes::copy_from_slice(request);
            let batch = Batch::from_encoded(Signal::Traces, bytes).expect("valid");
            processor.consume(batch).await.expect("taken");
        }
        let buffered = allocated() - before;
        let overhead = (buffered - own_bytes as isize) as f64 / spans as f64;
        println!(
            "tail_sampling memory: {spans} spans in {} traces buffered in {buffered} bytes \
             ({:.0} bytes/span), of which the spans' own encoded bytes {own_bytes} \
             ({:.0} bytes/span): overhead {overhead:.0} bytes per buffered span \
             (the same spans decoded would take {:.0} bytes/span)",
            spans / SPANS_PER_TRACE,
            buffered as f64 / spans as f64,
            own_bytes as f64 / spans as f64,
            decoded_bytes as f64 / spans as f64,
        );
        processor.shutdown().await;
    });
}

fn probabilistic(c: &mut Criterion) {
    let rt = runtime();
    let requests = requests(1);
    let processor = rt.block_on(async {
        let config = ProbabilisticSamplerConfig::from_settings(&settings(
            "probabilistic_sampler",
            "sampling_percentage = 10",
        ))
        .expect("valid");
        Box::new(ProbabilisticSampler::new(config))
            .start(ProcessorContext {
                id: "sample_10".into(),
                pipeline: "traces".into(),
                signal: Signal::Traces,
                next: Arc::new(Sink),
                telemetry: Telemetry::new(),
            })
            .await
            .expect("starts")
    });
    let mut group = c.benchmark_group("probabilistic_sampler");
    group.throughput(Throughput::Elements(SPANS_PER_REQUEST as u64));
    // The receiver checks and counts the request when it makes the batch; that is not the
    // sampler's work, so it is done once here and each iteration takes a (cheap) copy.
    let input = batch(&requests[0]);
    group.bench_function("traces_10_percent_100_span_requests", |b| {
        b.iter_custom(|iterations| {
            let start = thread_cpu_time();
            for _ in 0..iterations {
                rt.block_on(processor.consume(input.clone()))
                    .expect("taken");
            }
            thread_cpu_time() - start
        })
    });
    group.finish();
}

fn tail(c: &mut Criterion) {
    // Each iteration buffers 100 requests (10,000 spans in 1,000 traces) in a fresh processor,
    // then shuts it down: every trace is decided, the sampled ones (about 20%) are encoded
    // and handed on. The whole life of every span, consumed to released.
    const REQUESTS: usize = 100;
    let rt = runtime();
    let requests = requests(REQUESTS);
    let mut group = c.benchmark_group("tail_sampling");
    group.throughput(Throughput::Elements((REQUESTS * SPANS_PER_REQUEST) as u64));
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(10));
    group.bench_function("buffer_decide_release_10k_spans", |b| {
        b.iter_custom(|iterations| {
            rt.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iterations {
                    let batches: Vec<Batch> = requests.iter().map(batch).collect();
                    let processor = start_tail("decision_wait = \"1h\"").await;
                    let start = thread_cpu_time();
                    for batch in batches {
                        processor.consume(batch).await.expect("taken");
                    }
                    processor.shutdown().await;
                    total += thread_cpu_time() - start;
                }
                total
            })
        })
    });
    group.finish();
}

/// For comparison: decoding the same requests with prost and dropping them, the floor under
/// any processor that works on decoded spans.
fn decode(c: &mut Criterion) {
    let requests = requests(100);
    let mut group = c.benchmark_group("reference");
    group.throughput(Throughput::Elements((100 * SPANS_PER_REQUEST) as u64));
    group.bench_function("prost_decode_and_drop_10k_spans", |b| {
        b.iter_custom(|iterations| {
            let start = thread_cpu_time();
            for _ in 0..iterations {
                for request in &requests {
                    black_box(ExportTraceServiceRequest::decode(request.clone()).expect("valid"));
                }
            }
            thread_cpu_time() - start
        })
    });
    group.finish();
}

criterion_group!(benches, probabilistic, tail, decode);

fn main() {
    memory_report();
    benches();
    Criterion::default().configure_from_args().final_summary();
}
