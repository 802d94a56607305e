//! Throughput of the `redaction` and `attributes` processors on decoded batches of
//! 10-attribute gen_ai spans, one in ten carrying secrets in its prompt.
//!
//! `cargo bench -p sluice-processors --bench redaction`. Each iteration processes a fresh copy
//! of the batch (copying is outside the measurement); throughput is reported in spans per
//! second of the benchmark thread's CPU time, which is what "per core" means and what stays
//! meaningful on a shared machine where wall time includes waiting for the CPU.

mod cpu_time;

use cpu_time::ThreadCpuTime;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use sluice_pipeline::config::ComponentKind;
use sluice_pipeline::{ComponentSettings, Request};
use sluice_processors::attributes::AttributesConfig;
use sluice_processors::redaction::RedactionConfig;

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

/// A chat span as the gateway records it with content capture on: 10 attributes, two of them
/// the JSON prompt and completion. Every tenth span's prompt carries secrets.
fn span(i: usize) -> Span {
    let question = if i.is_multiple_of(10) {
        "My key is sk-proj-Ab3dEfGhIjKlMnOpQrStUvWxYz0123456789 and my mail alice@example.com, \
         why does the API answer 401?"
    } else {
        "Summarise the attached quarterly report in three bullet points for the board, \
         keeping the numbers exact."
    };
    let input = format!(
        r#"[{{"role":"system","parts":[{{"type":"text","content":"You are a careful assistant. Answer briefly and cite the figures you use."}}]}},{{"role":"user","parts":[{{"type":"text","content":"{question} (request {i})"}}]}}]"#
    );
    let output = r#"[{"role":"assistant","parts":[{"type":"text","content":"Revenue grew 12% to 4.2M; costs fell 3%; the outlook for Q3 is unchanged."}],"finish_reason":"stop"}]"#;
    Span {
        trace_id: vec![1; 16],
        span_id: (i as u64).to_be_bytes().to_vec(),
        name: "chat gpt-4o".into(),
        kind: 3,
        start_time_unix_nano: 1_700_000_000_000_000_000 + i as u64,
        end_time_unix_nano: 1_700_000_000_500_000_000 + i as u64,
        attributes: vec![
            s("gen_ai.operation.name", "chat"),
            s("gen_ai.provider.name", "openai"),
            s("gen_ai.request.model", "gpt-4o"),
            s("gen_ai.response.model", "gpt-4o-2024-08-06"),
            s(
                "gen_ai.response.id",
                "chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT",
            ),
            kv("gen_ai.usage.input_tokens", Value::IntValue(812)),
            kv("gen_ai.usage.output_tokens", Value::IntValue(64)),
            s("server.address", "api.openai.com"),
            s("gen_ai.input.messages", &input),
            s("gen_ai.output.messages", output),
        ],
        ..Span::default()
    }
}

fn batch() -> Request {
    Request::Traces(ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![
                    s("service.name", "chat-api"),
                    s("deployment.environment.name", "prod"),
                ],
                ..Resource::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans: (0..SPANS).map(span).collect(),
                ..ScopeSpans::default()
            }],
            ..ResourceSpans::default()
        }],
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

const REDACTION_CONFIGS: [(&str, &str); 4] = [
    // The cost of walking the batch with no rule to apply, for comparison.
    ("no_rules", "allow_all_keys = true\ndetectors = []"),
    (
        // The issue's example.
        "issue_example_mask",
        r#"
        allow_all_keys = true
        blocked_values = ["sk-[A-Za-z0-9_-]{20,}", "AKIA[0-9A-Z]{16}"]
        detectors = ["api_key", "aws_key", "jwt", "email", "credit_card", "ip"]
        action = "mask"
        summary = "info"
        "#,
    ),
    (
        "all_detectors_hash",
        r#"
        allow_all_keys = true
        action = "hash"
        hash_key = "a-32-byte-secret-for-benchmarks!"
        summary = "debug"
        "#,
    ),
    (
        "allowed_keys_all_detectors",
        r#"
        allowed_keys = ["gen_ai.operation.name", "gen_ai.provider.name", "gen_ai.request.model",
            "gen_ai.response.model", "gen_ai.usage.input_tokens", "gen_ai.usage.output_tokens",
            "server.address", "gen_ai.input.messages", "gen_ai.output.messages",
            "service.name", "deployment.environment.name"]
        blocked_keys = ["(?i)password|secret"]
        summary = "info"
        "#,
    ),
];

fn redaction(c: &mut Criterion<ThreadCpuTime>) {
    let input = batch();
    let mut group = c.benchmark_group("redaction");
    group.throughput(Throughput::Elements(SPANS as u64));
    for (name, toml) in REDACTION_CONFIGS {
        let redactor = RedactionConfig::from_settings(&settings("redaction", toml))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        group.bench_function(name, |b| {
            b.iter_batched_ref(
                || input.clone(),
                |request| redactor.redact(request),
                BatchSize::LargeInput,
            )
        });
    }
    group.finish();
}

/// Typical enrichment: insert from the resource, hash a user id, extract from the response
/// id, convert a token count, on chat spans only.
const ATTRIBUTES_CONFIG: &str = r#"
[[actions]]
key = "deployment.environment.name"
action = "insert"
from_resource_attribute = "deployment.environment.name"
[[actions]]
key = "gen_ai.provider.name"
action = "hash"
[[actions]]
key = "gen_ai.response.id"
action = "extract"
pattern = "^(?P<gen_ai.response.id_prefix>[a-z]+)-"
[[actions]]
key = "gen_ai.usage.output_tokens"
action = "convert"
converted_type = "double"
[include]
match_type = "regexp"
span_names = ["^chat "]
"#;

/// Everyday enrichment without hashing or regex captures: insert from the resource, upsert a
/// literal, rename, delete, convert, on chat spans only.
const ATTRIBUTES_TYPICAL_CONFIG: &str = r#"
[[actions]]
key = "deployment.environment.name"
action = "insert"
from_resource_attribute = "deployment.environment.name"
[[actions]]
key = "team"
action = "upsert"
value = "assistants"
[[actions]]
key = "server.address"
action = "rename"
new_key = "net.peer.name"
[[actions]]
key = "gen_ai.response.id"
action = "delete"
[[actions]]
key = "gen_ai.usage.output_tokens"
action = "convert"
converted_type = "double"
[include]
match_type = "regexp"
span_names = ["^chat "]
"#;

fn attributes(c: &mut Criterion<ThreadCpuTime>) {
    let input = batch();
    let mut group = c.benchmark_group("attributes");
    group.throughput(Throughput::Elements(SPANS as u64));
    for (name, toml) in [
        ("insert_hash_extract_convert", ATTRIBUTES_CONFIG),
        (
            "insert_upsert_rename_delete_convert",
            ATTRIBUTES_TYPICAL_CONFIG,
        ),
    ] {
        let attributes = AttributesConfig::from_settings(&settings("attributes", toml))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        group.bench_function(name, |b| {
            b.iter_batched_ref(
                || input.clone(),
                |request| attributes.apply(request),
                BatchSize::LargeInput,
            )
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().with_measurement(ThreadCpuTime);
    targets = redaction, attributes
}
criterion_main!(benches);
