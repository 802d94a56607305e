//! Throughput of the `cost`, `resource` and `memory_limiter` processors on decoded batches of
//! 10-attribute spans.
//!
//! `cargo bench -p sluice-processors --bench enrichment`. Each iteration processes a fresh
//! 1000-span batch decoded from protobuf (decoding is outside the measurement); throughput is
//! reported in spans. The memory limiter, which never decodes, gets the same spans encoded.
//!
//! Time is the benchmark thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`), not wall time: the
//! machines are shared, and time spent waiting for a core is not time the processor needs.
//! Throughputs are therefore spans per second of one core.

mod cpu_time;

use std::sync::Arc;

use async_trait::async_trait;
use cpu_time::ThreadCpuTime;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use sluice_pipeline::config::ComponentKind;
use sluice_pipeline::{
    Batch, ComponentSettings, ConsumeError, Consumer, ProcessorContext, ProcessorFactory, Request,
    Signal, Telemetry,
};
use sluice_processors::cost::{CostConfig, Pricer};
use sluice_processors::memory_limiter::MemoryLimiterFactory;
use sluice_processors::resource::{Plan, ResourceConfig, detectors};

/// Spans per batch: what an SDK's batch span processor sends at once.
const SPANS: usize = 1000;

fn kv(key: &str, value: Value) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue { value: Some(value) }),
        ..KeyValue::default()
    }
}

fn s(key: &str, value: &str) -> KeyValue {
    kv(key, Value::StringValue(value.to_string()))
}

fn int(key: &str, value: i64) -> KeyValue {
    kv(key, Value::IntValue(value))
}

/// A gateway CLIENT span of a chat with usage: 10 attributes, token counts included.
fn ai_span(i: usize) -> Span {
    let model = ["gpt-4o-2024-08-06", "gpt-4o-mini-2024-07-18", "o3-mini"][i % 3];
    span(
        i,
        vec![
            s("gen_ai.operation.name", "chat"),
            s("gen_ai.provider.name", "openai"),
            s("gen_ai.request.model", "gpt-4o"),
            s("gen_ai.response.model", model),
            s(
                "gen_ai.response.id",
                "chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT",
            ),
            int("gen_ai.usage.input_tokens", 2000 + i as i64),
            int("gen_ai.usage.output_tokens", 64),
            int("gen_ai.usage.cache_read.input_tokens", 1024),
            int("gen_ai.usage.reasoning.output_tokens", 12),
            s("server.address", "api.openai.com"),
        ],
    )
}

/// An HTTP server span: 10 attributes, nothing for the cost processor.
fn http_span(i: usize) -> Span {
    span(
        i,
        vec![
            s("http.request.method", "GET"),
            s("url.path", "/api/orders"),
            s("url.scheme", "https"),
            int("http.response.status_code", 200),
            s("server.address", "shop.example.com"),
            int("server.port", 443),
            s("client.address", "10.1.2.3"),
            s("user_agent.original", "Mozilla/5.0"),
            s("network.protocol.version", "1.1"),
            s("http.route", "/api/orders"),
        ],
    )
}

fn span(i: usize, attributes: Vec<KeyValue>) -> Span {
    Span {
        trace_id: vec![1; 16],
        span_id: (i as u64).to_be_bytes().to_vec(),
        name: "chat gpt-4o".into(),
        kind: 3,
        start_time_unix_nano: 1_700_000_000_000_000_000 + i as u64,
        end_time_unix_nano: 1_700_000_000_500_000_000 + i as u64,
        attributes,
        ..Span::default()
    }
}

fn resource() -> Option<Resource> {
    Some(Resource {
        attributes: vec![
            s("service.name", "chat-api"),
            s("telemetry.sdk.language", "rust"),
        ],
        ..Resource::default()
    })
}

/// The protobuf encoding of [`batch`]: benchmarks decode a copy for each iteration, so that
/// the processor gets what the pipeline gives it (vectors grown by decoding, with the spare
/// capacity that leaves), not clones trimmed to size.
fn encoded(make: fn(usize) -> Span, per_resource: usize) -> Vec<u8> {
    let Request::Traces(request) = batch(make, per_resource) else {
        unreachable!("a traces batch")
    };
    prost::Message::encode_to_vec(&request)
}

fn decoded(encoded: &[u8]) -> Request {
    Request::Traces(prost::Message::decode(encoded).expect("the bench's own encoding"))
}

/// `SPANS` spans made by `make`, `per_resource` to a resource entry.
fn batch(make: fn(usize) -> Span, per_resource: usize) -> Request {
    let spans: Vec<Span> = (0..SPANS).map(make).collect();
    Request::Traces(ExportTraceServiceRequest {
        resource_spans: spans
            .chunks(per_resource)
            .map(|chunk| ResourceSpans {
                resource: resource(),
                scope_spans: vec![ScopeSpans {
                    spans: chunk.to_vec(),
                    ..ScopeSpans::default()
                }],
                ..ResourceSpans::default()
            })
            .collect(),
    })
}

fn settings(type_name: &str, toml: &str) -> ComponentSettings {
    ComponentSettings::new(
        ComponentKind::Processor,
        type_name,
        type_name,
        toml::from_str(toml).expect("bench TOML is valid"),
    )
}

const PRICES: &str = r#"
[[models]]
model = "gpt-4o*"
input = 2.50
output = 10.00
cache_read = 1.25

[[models]]
model = "gpt-4o-mini*"
input = 0.15
output = 0.60
cache_read = 0.075

[[models]]
model = "o3-mini"
input = 1.10
output = 4.40
cache_read = 0.55

[[models]]
model = "claude-*"
input = 3
output = 15
"#;

fn cost(c: &mut Criterion<ThreadCpuTime>) {
    let config = CostConfig::from_settings(&settings("cost", PRICES)).expect("valid prices");
    let pricer = Pricer::new(
        Arc::new(config.table()),
        &Telemetry::new(),
        "cost",
        Signal::Traces,
    );
    let mut group = c.benchmark_group("cost");
    group.throughput(Throughput::Elements(SPANS as u64));
    for (name, request) in [
        ("gen_ai_spans", encoded(ai_span, SPANS)),
        ("spans_without_usage", encoded(http_span, SPANS)),
    ] {
        group.bench_function(name, |b| {
            b.iter_batched(
                || decoded(&request),
                |mut request| {
                    pricer.process(&mut request);
                    request
                },
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

fn resource_processor(c: &mut Criterion<ThreadCpuTime>) {
    let config = ResourceConfig::from_settings(&settings(
        "resource",
        r#"
detectors = ["env", "host", "process", "service_instance"]
deployment_environment = "prod"
attributes = [
  { key = "cloud.region", value = "eu-west-1", action = "upsert" },
  { key = "team", from_attribute = "service.name", action = "insert" },
  { key = "telemetry.sdk.language", action = "delete" },
]
"#,
    ))
    .expect("valid config");
    let plan = Plan::new(&config, &detectors::process_env).expect("the detectors run");
    let mut group = c.benchmark_group("resource");
    group.throughput(Throughput::Elements(SPANS as u64));
    for (name, request) in [
        // What SDKs send: one resource for the whole batch.
        ("one_resource_per_batch", encoded(ai_span, SPANS)),
        // The worst case: every span with a resource of its own.
        ("one_resource_per_span", encoded(ai_span, 1)),
    ] {
        group.bench_function(name, |b| {
            b.iter_batched(
                || decoded(&request),
                |mut request| {
                    plan.apply_request(&mut request);
                    request
                },
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

/// The component after the limiter: takes everything.
struct Sink;

#[async_trait]
impl Consumer for Sink {
    async fn consume(&self, _batch: Batch) -> Result<(), ConsumeError> {
        Ok(())
    }
}

fn memory_limiter(c: &mut Criterion<ThreadCpuTime>) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    // A limit far above the machine's memory: the limiter accepts, which is its common case.
    let limiter = runtime.block_on(async {
        MemoryLimiterFactory
            .build(&settings("memory_limiter", "limit_mib = 1000000"))
            .expect("valid config")
            .start(ProcessorContext {
                id: "memory_limiter".to_string(),
                pipeline: "traces".to_string(),
                signal: Signal::Traces,
                next: Arc::new(Sink),
                telemetry: Telemetry::new(),
            })
            .await
            .expect("starts")
    });
    // The limiter never looks inside a batch. It gets the same 10-attribute spans, encoded
    // as receivers hand them over, so that freeing the batch after the (discarding) next
    // component is a reference count, not the measurement.
    let encoded = bytes::Bytes::from(encoded(ai_span, SPANS));
    let mut group = c.benchmark_group("memory_limiter");
    group.throughput(Throughput::Elements(SPANS as u64));
    group.bench_function("accepting", |b| {
        b.iter_batched(
            || Batch::from_encoded(Signal::Traces, encoded.clone()).expect("valid OTLP"),
            |batch| runtime.block_on(limiter.consume(batch)),
            BatchSize::SmallInput,
        )
    });
    group.finish();
    runtime.block_on(limiter.shutdown());
}

criterion_group! {
    name = benches;
    config = Criterion::default().with_measurement(ThreadCpuTime);
    targets = cost, resource_processor, memory_limiter
}
criterion_main!(benches);
