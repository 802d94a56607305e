//! The trace requests the benchmark sends: built and encoded once, before any load runs.
//!
//! The spans look like LLM-gateway traffic: 10 attributes each (5 string, 3 int, 1 double,
//! 1 bool) with `gen_ai.*`, `http.*` and `server.address` keys, random trace and span ids,
//! traces of 1 to 8 spans, and one resource with 9 attributes per request. That comes to
//! about 480 bytes per span encoded, so 500 spans make a request of about 240 KB.

use bytes::Bytes;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};
use prost::Message;

/// One pre-encoded `ExportTraceServiceRequest` and how many spans it holds.
#[derive(Clone, Debug)]
pub struct EncodedRequest {
    /// The protobuf encoding of the request, without gRPC framing.
    pub body: Bytes,
    pub spans: u64,
}

const MODELS: [&str; 6] = [
    "gpt-4o-mini-2024-07-18",
    "gpt-4.1-2025-04-14",
    "claude-sonnet-4-20250514",
    "claude-3-5-haiku-20241022",
    "gemini-2.5-flash",
    "llama-3.3-70b-instruct",
];
const SERVERS: [&str; 4] = [
    "api.openai.com",
    "api.anthropic.com",
    "generativelanguage.googleapis.com",
    "inference.internal.example.net",
];
const OPERATIONS: [&str; 3] = ["chat", "embeddings", "text_completion"];
const METHODS: [&str; 2] = ["POST", "GET"];
const STATUS_CODES: [i64; 5] = [200, 200, 200, 429, 500];
const ALPHANUMERIC: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";

/// Builds `distinct` different requests of `spans_per_request` spans each and encodes them.
pub fn build_requests(
    distinct: usize,
    spans_per_request: usize,
    rng: &mut fastrand::Rng,
) -> Vec<EncodedRequest> {
    (0..distinct)
        .map(|index| {
            let request = build_request(index, spans_per_request, rng);
            EncodedRequest {
                body: Bytes::from(request.encode_to_vec()),
                spans: spans_per_request as u64,
            }
        })
        .collect()
}

/// One request: a resource, a scope, and `spans` spans grouped into traces of 1 to 8 spans.
pub fn build_request(
    index: usize,
    spans: usize,
    rng: &mut fastrand::Rng,
) -> ExportTraceServiceRequest {
    let mut out = Vec::with_capacity(spans);
    // A fixed base time keeps the encoded sizes identical from run to run.
    let base_ns: u64 = 1_750_000_000_000_000_000;
    while out.len() < spans {
        let trace_len = rng.usize(1..=8).min(spans - out.len());
        let trace_id = rng.u128(..).to_be_bytes().to_vec();
        let root_id = rng.u64(..).to_be_bytes().to_vec();
        let start = base_ns + rng.u64(0..60_000_000_000);
        for position in 0..trace_len {
            let (span_id, parent) = if position == 0 {
                (root_id.clone(), Vec::new())
            } else {
                (rng.u64(..).to_be_bytes().to_vec(), root_id.clone())
            };
            out.push(span(
                trace_id.clone(),
                span_id,
                parent,
                start,
                position,
                rng,
            ));
        }
    }
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(resource(index)),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "sluice-bench".to_string(),
                    version: "0.1.0".to_string(),
                    attributes: Vec::new(),
                    dropped_attributes_count: 0,
                }),
                spans: out,
                schema_url: String::new(),
            }],
            schema_url: "https://opentelemetry.io/schemas/1.34.0".to_string(),
        }],
    }
}

fn resource(index: usize) -> Resource {
    Resource {
        attributes: vec![
            string("service.name", &format!("llm-gateway-{}", index % 4)),
            string("service.version", "2.14.3"),
            string("service.namespace", "ai-platform"),
            string(
                "service.instance.id",
                &format!("7f3c9e2a-51b8-4d0e-9a6f-{index:012x}"),
            ),
            string("deployment.environment.name", "production"),
            string(
                "host.name",
                &format!("gateway-{}.eu-west-1.internal", index % 8),
            ),
            string("telemetry.sdk.name", "opentelemetry"),
            string("telemetry.sdk.language", "rust"),
            string("telemetry.sdk.version", "0.33.1"),
        ],
        dropped_attributes_count: 0,
        entity_refs: Vec::new(),
    }
}

fn span(
    trace_id: Vec<u8>,
    span_id: Vec<u8>,
    parent_span_id: Vec<u8>,
    trace_start: u64,
    position: usize,
    rng: &mut fastrand::Rng,
) -> Span {
    let start = trace_start + position as u64 * 1_000_000;
    let model = MODELS[rng.usize(..MODELS.len())];
    let status_code = STATUS_CODES[rng.usize(..STATUS_CODES.len())];
    let operation = OPERATIONS[rng.usize(..OPERATIONS.len())];
    let response_id: String = (0..16)
        .map(|_| ALPHANUMERIC[rng.usize(..ALPHANUMERIC.len())] as char)
        .collect();
    Span {
        trace_id,
        span_id,
        trace_state: String::new(),
        parent_span_id,
        flags: 1,
        name: format!("{operation} {model}"),
        kind: if position == 0 {
            SpanKind::Server
        } else {
            SpanKind::Client
        } as i32,
        start_time_unix_nano: start,
        end_time_unix_nano: start + rng.u64(5_000_000..20_000_000_000),
        attributes: vec![
            string("gen_ai.operation.name", operation),
            string("gen_ai.request.model", model),
            string("gen_ai.response.id", &response_id),
            string("server.address", SERVERS[rng.usize(..SERVERS.len())]),
            string("http.request.method", METHODS[rng.usize(..METHODS.len())]),
            int("gen_ai.usage.input_tokens", rng.i64(1..32_000)),
            int("gen_ai.usage.output_tokens", rng.i64(1..4_000)),
            int("http.response.status_code", status_code),
            double(
                "gen_ai.request.temperature",
                f64::from(rng.u8(0..=20)) / 10.0,
            ),
            boolean("gen_ai.request.stream", rng.bool()),
        ],
        dropped_attributes_count: 0,
        events: Vec::new(),
        dropped_events_count: 0,
        links: Vec::new(),
        dropped_links_count: 0,
        status: Some(Status {
            message: String::new(),
            code: if status_code >= 500 {
                StatusCode::Error
            } else {
                StatusCode::Unset
            } as i32,
        }),
    }
}

fn attribute(key: &str, value: Value) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue { value: Some(value) }),
        key_strindex: 0,
    }
}

fn string(key: &str, value: &str) -> KeyValue {
    attribute(key, Value::StringValue(value.to_string()))
}

fn int(key: &str, value: i64) -> KeyValue {
    attribute(key, Value::IntValue(value))
}

fn double(key: &str, value: f64) -> KeyValue {
    attribute(key, Value::DoubleValue(value))
}

fn boolean(key: &str, value: bool) -> KeyValue {
    attribute(key, Value::BoolValue(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_carry_ten_attributes_of_the_documented_types() {
        let request = build_request(0, 50, &mut fastrand::Rng::with_seed(7));
        let resource_spans = &request.resource_spans[0];
        assert_eq!(
            resource_spans.resource.as_ref().map(|r| r.attributes.len()),
            Some(9)
        );
        let spans = &resource_spans.scope_spans[0].spans;
        assert_eq!(spans.len(), 50);
        for span in spans {
            let kinds: Vec<&str> = span
                .attributes
                .iter()
                .map(
                    |kv| match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                        Some(Value::StringValue(_)) => "string",
                        Some(Value::IntValue(_)) => "int",
                        Some(Value::DoubleValue(_)) => "double",
                        Some(Value::BoolValue(_)) => "bool",
                        _ => "other",
                    },
                )
                .collect();
            let count = |kind: &str| kinds.iter().filter(|k| **k == kind).count();
            assert_eq!(
                (
                    count("string"),
                    count("int"),
                    count("double"),
                    count("bool")
                ),
                (5, 3, 1, 1)
            );
            assert_eq!(span.trace_id.len(), 16);
            assert_eq!(span.span_id.len(), 8);
        }
    }

    #[test]
    fn a_span_encodes_to_about_480_bytes() {
        let requests = build_requests(4, 500, &mut fastrand::Rng::with_seed(11));
        for request in &requests {
            let per_span = request.body.len() as f64 / request.spans as f64;
            assert!(
                (460.0..=500.0).contains(&per_span),
                "{per_span} bytes per span"
            );
        }
    }

    #[test]
    fn traces_hold_one_to_eight_spans_with_children_pointing_at_the_root() {
        let request = build_request(0, 500, &mut fastrand::Rng::with_seed(3));
        let spans = &request.resource_spans[0].scope_spans[0].spans;
        let mut index = 0;
        while index < spans.len() {
            let root = &spans[index];
            assert!(root.parent_span_id.is_empty());
            let children = spans[index + 1..]
                .iter()
                .take_while(|s| s.trace_id == root.trace_id)
                .inspect(|child| assert_eq!(child.parent_span_id, root.span_id))
                .count();
            assert!(children < 8, "a trace of {} spans", children + 1);
            index += children + 1;
        }
    }
}
