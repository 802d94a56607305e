//! The receive hot path: validating and counting an encoded OTLP traces request with the wire
//! walker, against decoding it with prost. Throughput is in spans.
//!
//! Run with `cargo bench -p sluice-pipeline --bench wire` (add `-- --quick` for a short run).

use std::hint::black_box;

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{
    AnyValue, InstrumentationScope, KeyValue, any_value::Value,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status, span};
use prost::Message;
use sluice_pipeline::{Batch, Signal, wire};

const SPANS: usize = 500;

fn attribute(key: &str, value: Value) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

/// A span of about 480 bytes with 10 attributes: 5 strings, 3 ints, a double and a bool.
fn span(i: usize) -> Span {
    let id = i as u64;
    Span {
        trace_id: [id.to_le_bytes(), (id * 7).to_le_bytes()].concat(),
        span_id: (id * 13).to_le_bytes().to_vec(),
        parent_span_id: (id * 17).to_le_bytes().to_vec(),
        name: format!("chat gpt-4o-mini {}", i % 10),
        kind: span::SpanKind::Client as i32,
        start_time_unix_nano: 1_700_000_000_000_000_000 + id * 1_000,
        end_time_unix_nano: 1_700_000_000_000_000_000 + id * 1_000 + 250_000_000,
        attributes: vec![
            attribute("gen_ai.system", Value::StringValue("openai".into())),
            attribute(
                "gen_ai.request.model",
                Value::StringValue("gpt-4o-mini".into()),
            ),
            attribute("http.request.method", Value::StringValue("POST".into())),
            attribute(
                "url.full",
                Value::StringValue(format!("https://api.example.com/v1/chat/completions?r={i}")),
            ),
            attribute(
                "gen_ai.response.id",
                Value::StringValue(format!("chatcmpl-{:024x}", id * 0x9e37_79b9)),
            ),
            attribute(
                "gen_ai.usage.input_tokens",
                Value::IntValue(1_200 + i as i64),
            ),
            attribute(
                "gen_ai.usage.output_tokens",
                Value::IntValue(300 + i as i64),
            ),
            attribute("http.response.status_code", Value::IntValue(200)),
            attribute("gen_ai.request.temperature", Value::DoubleValue(0.7)),
            attribute(
                "gen_ai.request.stream",
                Value::BoolValue(i.is_multiple_of(2)),
            ),
        ],
        status: Some(Status {
            code: 1,
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn request() -> ExportTraceServiceRequest {
    let resource_attributes = [
        ("service.name", "llm-gateway"),
        ("service.version", "1.42.0"),
        ("service.namespace", "ai-platform"),
        ("deployment.environment", "production"),
        ("host.name", "gateway-7f9c6d5b8-x2k4p"),
        ("k8s.pod.name", "gateway-7f9c6d5b8-x2k4p"),
        ("k8s.namespace.name", "ai"),
        ("cloud.region", "eu-west-1"),
        ("telemetry.sdk.language", "rust"),
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
                    name: "sluice-bench".into(),
                    version: "0.1.0".into(),
                    ..Default::default()
                }),
                spans: (0..SPANS).map(span).collect(),
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

fn bench(c: &mut Criterion) {
    let bytes = Bytes::from(request().encode_to_vec());
    eprintln!(
        "request: {SPANS} spans, {} bytes ({} bytes per span)",
        bytes.len(),
        bytes.len() / SPANS
    );
    let mut group = c.benchmark_group("traces_500_spans");
    group.throughput(Throughput::Elements(SPANS as u64));
    group.bench_function("wire_validate_and_count", |b| {
        b.iter(|| wire::validate_and_count(Signal::Traces, black_box(&bytes)))
    });
    group.bench_function("prost_decode", |b| {
        b.iter(|| ExportTraceServiceRequest::decode(black_box(&bytes[..])))
    });
    // Four requests merged, cut in the middle of the third: three slices and one entry
    // decoded and re-encoded. Throughput counts the spans of the merged batch.
    group.throughput(Throughput::Elements(4 * SPANS as u64));
    let mut merged = Batch::empty(Signal::Traces);
    for _ in 0..4 {
        merged.append(Batch::from_encoded(Signal::Traces, bytes.clone()).expect("valid request"));
    }
    group.bench_function("split_to_mid_entry_of_4_requests", |b| {
        b.iter(|| {
            let mut batch = merged.clone();
            let head = batch.split_to(black_box(2 * SPANS + SPANS / 2));
            (head, batch)
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
