//! Request events to spans: per sampled request a SERVER span, an INTERNAL routing span and
//! one CLIENT span per upstream attempt.
//!
//! ```text
//! SERVER  "POST /v1/chat/completions"  (trace.trace_name)       parent: the caller's span
//! ├── INTERNAL "provider routing"        (trace.span_name)
//! ├── CLIENT "chat gpt-4o"               (trace.generation_name) first attempt
//! └── CLIENT "chat mock-large"                                   fallback attempt
//! ```
//!
//! The CLIENT spans are children of the SERVER span, not of the routing span: routing ends
//! before the first attempt starts, and a child outside its parent's time range draws as a
//! broken waterfall in every trace viewer. It is also what the gateway put in the `traceparent`
//! it sent upstream, so the upstream's own spans hang under the attempt that called them.

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::InstrumentationScope;
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    ResourceSpans, ScopeSpans, Span, Status, span::SpanKind, status::StatusCode,
};
use sluice_gateway::event::{Attempt, Operation, RequestEvent};

use super::attributes::{self, Attributes};

/// W3C trace flags: the spans exist because the request was sampled.
const SAMPLED: u32 = 0x01;
/// OTLP span flags: whether the parent is remote is known (bit 8) and it is (bit 9).
const HAS_IS_REMOTE: u32 = 0x100;
const IS_REMOTE: u32 = 0x200;

/// The default name of the routing span.
pub(crate) const ROUTING_SPAN_NAME: &str = "provider routing";

/// The spans of a batch of events, in one resource and scope; `None` when no event was sampled.
pub(crate) fn export_request(
    events: &[RequestEvent],
    resource: &Resource,
    scope: &InstrumentationScope,
) -> Option<ExportTraceServiceRequest> {
    let spans: Vec<Span> = events.iter().flat_map(spans).collect();
    if spans.is_empty() {
        return None;
    }
    Some(ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(resource.clone()),
            scope_spans: vec![ScopeSpans {
                scope: Some(scope.clone()),
                spans,
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    })
}

/// The spans of one request; none when the sampler dropped it.
pub(crate) fn spans(event: &RequestEvent) -> Vec<Span> {
    if !event.sampled {
        return Vec::new();
    }
    let mut spans = Vec::with_capacity(2 + event.attempts.len());
    spans.push(server_span(event));
    if let Some(routing_done) = event.timings.routing_done_unix_nano {
        spans.push(routing_span(event, routing_done));
    }
    let answering = attributes::answering_attempt(event);
    for (i, attempt) in event.attempts.iter().enumerate() {
        spans.push(client_span(event, attempt, answering == Some(i)));
    }
    spans
}

/// The SERVER span's name: `trace.trace_name`, else `{method} {path}`. Unknown paths (404)
/// are named by the method alone, as the HTTP conventions say, so that scanners probing random
/// paths do not create a span name per path.
pub(crate) fn server_span_name(event: &RequestEvent) -> String {
    if let Some(name) = event
        .trace_metadata
        .as_ref()
        .and_then(|m| m.trace_name.clone())
    {
        return name;
    }
    match event.operation {
        Operation::Other => event.http_method.clone(),
        _ => format!("{} {}", event.http_method, event.http_path),
    }
}

fn child_of_server(event: &RequestEvent, span_id: [u8; 8], name: String, kind: SpanKind) -> Span {
    Span {
        trace_id: event.trace.trace_id.to_vec(),
        span_id: span_id.to_vec(),
        trace_state: event.trace.tracestate.clone().unwrap_or_default(),
        parent_span_id: event.trace.server_span_id.to_vec(),
        flags: SAMPLED | HAS_IS_REMOTE,
        name,
        kind: kind as i32,
        ..Default::default()
    }
}

fn server_span(event: &RequestEvent) -> Span {
    let (parent_span_id, flags) = match event.trace.parent_span_id {
        // Whether it came in a traceparent or in the body's trace.parent_span_id, the parent is
        // the caller's span, in another process.
        Some(parent) => (parent.to_vec(), SAMPLED | HAS_IS_REMOTE | IS_REMOTE),
        None => (Vec::new(), SAMPLED | HAS_IS_REMOTE),
    };
    let status = match &event.error {
        _ if event.status_code < 400 => None,
        Some(error) => Some(error_status(&error.message)),
        None => Some(error_status("")),
    };
    Span {
        trace_id: event.trace.trace_id.to_vec(),
        span_id: event.trace.server_span_id.to_vec(),
        trace_state: event.trace.tracestate.clone().unwrap_or_default(),
        parent_span_id,
        flags,
        name: server_span_name(event),
        kind: SpanKind::Server as i32,
        start_time_unix_nano: event.timings.start_unix_nano,
        end_time_unix_nano: event.timings.end_unix_nano,
        attributes: attributes::request(event).into_vec(),
        status,
        ..Default::default()
    }
}

fn routing_span(event: &RequestEvent, routing_done: u64) -> Span {
    let name = event
        .trace_metadata
        .as_ref()
        .and_then(|m| m.span_name.clone())
        .unwrap_or_else(|| ROUTING_SPAN_NAME.to_string());
    let mut attrs = Attributes::new();
    attrs
        .str("gen_ai.operation.name", event.operation.as_str())
        .opt_str("gen_ai.request.model", event.requested_model.as_deref());
    if let Some(first) = event.attempts.first() {
        attrs.str("sluice.route.first_target", &first.provider.name);
    }
    attributes::context(&mut attrs, event);
    Span {
        start_time_unix_nano: event.timings.start_unix_nano,
        end_time_unix_nano: routing_done,
        attributes: attrs.into_vec(),
        ..child_of_server(event, event.trace.routing_span_id, name, SpanKind::Internal)
    }
}

/// The CLIENT span's name: `trace.generation_name`, else `{gen_ai.operation.name} {model}`.
pub(crate) fn client_span_name(event: &RequestEvent, attempt: &Attempt) -> String {
    event
        .trace_metadata
        .as_ref()
        .and_then(|m| m.generation_name.clone())
        .unwrap_or_else(|| format!("{} {}", event.operation.as_str(), attempt.model))
}

fn client_span(event: &RequestEvent, attempt: &Attempt, answering: bool) -> Span {
    let mut attrs = Attributes::new();
    attrs
        .str("gen_ai.operation.name", event.operation.as_str())
        .str("gen_ai.provider.name", &attempt.provider.name)
        .str("gen_ai.request.model", &attempt.model);
    attributes::request_parameters(&mut attrs, event);
    if answering {
        attributes::response(&mut attrs, event);
        attrs.opt_double(
            "gen_ai.response.time_to_first_chunk",
            attributes::time_to_first_chunk(event, attempt.start_unix_nano),
        );
    }
    attrs
        .opt_str("server.address", attempt.server_address.as_deref())
        .opt_uint("server.port", attempt.server_port.map(u64::from))
        .opt_uint(
            "http.response.status_code",
            attempt.status_code.map(u64::from),
        )
        .bool("sluice.attempt.fallback", attempt.fallback);
    attributes::context(&mut attrs, event);
    attrs.opt_str("error.type", attempt.error_type.as_deref());
    openinference(&mut attrs, event, attempt, answering);

    let status = attempt
        .error_type
        .as_ref()
        .map(|_| error_status(attempt.error_message.as_deref().unwrap_or_default()));
    Span {
        start_time_unix_nano: attempt.start_unix_nano,
        end_time_unix_nano: attempt.end_unix_nano,
        attributes: attrs.into_vec(),
        status,
        ..child_of_server(
            event,
            attempt.span_id,
            client_span_name(event, attempt),
            SpanKind::Client,
        )
    }
}

/// The OpenInference attributes of a CLIENT span, and the content when it was captured.
fn openinference(attrs: &mut Attributes, event: &RequestEvent, attempt: &Attempt, answering: bool) {
    let embeddings = event.operation == Operation::Embeddings;
    let model = match (answering, &event.response_model) {
        (true, Some(model)) => model.as_str(),
        _ => attempt.model.as_str(),
    };
    attrs
        .str(
            "openinference.span.kind",
            if embeddings { "EMBEDDING" } else { "LLM" },
        )
        .str("llm.model_name", model)
        .str("llm.provider", &attempt.provider.name)
        .str("llm.system", attempt.provider.kind.as_str())
        .str(
            "llm.invocation_parameters",
            attributes::invocation_parameters(event),
        );
    if embeddings {
        attrs.str("embedding.model_name", model);
    }
    if answering {
        let usage = &event.usage;
        attrs
            .opt_uint("llm.token_count.prompt", usage.input_tokens)
            .opt_uint("llm.token_count.completion", usage.output_tokens);
        if usage.input_tokens.is_some() || usage.output_tokens.is_some() {
            let total = usage
                .input_tokens
                .unwrap_or(0)
                .saturating_add(usage.output_tokens.unwrap_or(0));
            attrs.opt_uint("llm.token_count.total", Some(total));
        }
        attrs
            .opt_uint(
                "llm.token_count.prompt_details.cache_read",
                usage.cached_input_tokens,
            )
            .opt_uint(
                "llm.token_count.completion_details.reasoning",
                usage.reasoning_tokens,
            );
    }

    let Some(content) = &event.content else {
        return;
    };
    // Every attempt was sent the same input; only the answering one has an output.
    attributes::input_value(attrs, event.operation, content);
    let inputs = attributes::input_messages(event.operation, content);
    for (i, message) in inputs.iter().enumerate() {
        attrs
            .str(
                format!("llm.input_messages.{i}.message.role"),
                &message.role,
            )
            .str(
                format!("llm.input_messages.{i}.message.content"),
                &message.content,
            );
    }
    attributes::genai_input_messages(attrs, &inputs);
    if embeddings {
        for (i, text) in content.embedding_input.iter().enumerate() {
            attrs.str(format!("embedding.embeddings.{i}.embedding.text"), text);
        }
    }
    if answering {
        attributes::output_value(attrs, content);
        for (i, message) in content.output_messages.iter().enumerate() {
            attrs
                .str(
                    format!("llm.output_messages.{i}.message.role"),
                    &message.role,
                )
                .str(
                    format!("llm.output_messages.{i}.message.content"),
                    &message.content,
                );
        }
        attributes::genai_output_messages(attrs, &content.output_messages, &event.finish_reasons);
    }
}

fn error_status(message: &str) -> Status {
    Status {
        message: message.to_string(),
        code: StatusCode::Error as i32,
    }
}

#[cfg(test)]
mod tests {
    use super::super::attributes::test_support::{expect, render};
    use super::super::fixtures;
    use super::*;

    /// A rendered string attribute holding JSON, parsed (key order is not part of the format).
    fn json_attribute(rendered: &str) -> serde_json::Value {
        serde_json::from_str(&serde_json::from_str::<String>(rendered).unwrap()).unwrap()
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// `(name, kind, span id, parent span id)` of each span, for comparing trees.
    fn tree(spans: &[Span]) -> Vec<(String, SpanKind, String, String)> {
        spans
            .iter()
            .map(|s| {
                (
                    s.name.clone(),
                    SpanKind::try_from(s.kind).unwrap(),
                    hex(&s.span_id),
                    hex(&s.parent_span_id),
                )
            })
            .collect()
    }

    fn node(
        name: &str,
        kind: SpanKind,
        id: &str,
        parent: &str,
    ) -> (String, SpanKind, String, String) {
        (name.into(), kind, id.into(), parent.into())
    }

    #[test]
    fn streamed_chat_becomes_server_routing_and_client_spans_with_genai_attributes() {
        let event = fixtures::streamed_chat();
        let spans = spans(&event);
        assert_eq!(
            tree(&spans),
            vec![
                node(
                    "POST /v1/chat/completions",
                    SpanKind::Server,
                    "5e5e5e5e5e5e5e5e",
                    "ca11e2ca11e2ca11"
                ),
                node(
                    "provider routing",
                    SpanKind::Internal,
                    "2020202020202020",
                    "5e5e5e5e5e5e5e5e"
                ),
                node(
                    "chat gpt-4o",
                    SpanKind::Client,
                    "a1a1a1a1a1a1a1a1",
                    "5e5e5e5e5e5e5e5e"
                ),
            ]
        );
        for span in &spans {
            assert_eq!(hex(&span.trace_id), "0af7651916cd43dd8448eb211c80319c");
            assert_eq!(span.trace_state, "vendor=x");
            assert_eq!(
                span.status, None,
                "{}: success leaves the status unset",
                span.name
            );
        }
        let [server, routing, client] = &spans[..] else {
            unreachable!()
        };
        assert_eq!(server.flags, SAMPLED | HAS_IS_REMOTE | IS_REMOTE);
        assert_eq!(client.flags, SAMPLED | HAS_IS_REMOTE);
        assert_eq!(
            (server.start_time_unix_nano, server.end_time_unix_nano),
            (fixtures::T0, fixtures::T0 + 900_000_000)
        );
        assert_eq!(
            (routing.start_time_unix_nano, routing.end_time_unix_nano),
            (fixtures::T0, fixtures::T0 + 1_000_000)
        );
        assert_eq!(
            (client.start_time_unix_nano, client.end_time_unix_nano),
            (fixtures::T0 + 2_000_000, fixtures::T0 + 880_000_000)
        );

        assert_eq!(
            render(&server.attributes),
            expect(&[
                ("http.request.method", "\"POST\""),
                ("url.path", "\"/v1/chat/completions\""),
                ("http.response.status_code", "200"),
                ("gen_ai.operation.name", "\"chat\""),
                ("gen_ai.request.model", "\"gpt-4o\""),
                ("gen_ai.provider.name", "\"openai\""),
                ("gen_ai.request.max_tokens", "100"),
                ("gen_ai.request.temperature", "0.5"),
                ("gen_ai.request.stream", "true"),
                ("gen_ai.response.model", "\"gpt-4o-2024-08-06\""),
                ("gen_ai.response.id", "\"chatcmpl-1\""),
                ("gen_ai.response.finish_reasons", "[\"stop\"]"),
                ("gen_ai.usage.input_tokens", "12"),
                ("gen_ai.usage.output_tokens", "40"),
                ("gen_ai.usage.cache_read.input_tokens", "0"),
                ("gen_ai.response.time_to_first_chunk", "0.2"),
                ("sluice.attempt.count", "1"),
                ("sluice.request.id", "\"req-chat\""),
                ("sluice.api_key.id", "\"team-a\""),
                ("user.id", "\"user_12345\""),
                ("session.id", "\"session_abc\""),
                ("trace.metadata.environment", "\"staging\""),
                ("http.request.header.x-team", "[\"search\", \"ads\"]"),
            ])
        );
        assert_eq!(
            render(&routing.attributes),
            expect(&[
                ("gen_ai.operation.name", "\"chat\""),
                ("gen_ai.request.model", "\"gpt-4o\""),
                ("sluice.route.first_target", "\"openai\""),
                ("sluice.request.id", "\"req-chat\""),
                ("sluice.api_key.id", "\"team-a\""),
                ("user.id", "\"user_12345\""),
                ("session.id", "\"session_abc\""),
                ("trace.metadata.environment", "\"staging\""),
            ])
        );
        let mut client_attrs = render(&client.attributes);
        let parameters = client_attrs.remove("llm.invocation_parameters").unwrap();
        assert_eq!(
            json_attribute(&parameters),
            serde_json::json!({"max_tokens": 100, "temperature": 0.5, "stream": true, "seed": 7})
        );
        assert_eq!(
            client_attrs,
            expect(&[
                ("gen_ai.operation.name", "\"chat\""),
                ("gen_ai.provider.name", "\"openai\""),
                ("gen_ai.request.model", "\"gpt-4o\""),
                ("gen_ai.request.max_tokens", "100"),
                ("gen_ai.request.temperature", "0.5"),
                ("gen_ai.request.stream", "true"),
                ("gen_ai.response.model", "\"gpt-4o-2024-08-06\""),
                ("gen_ai.response.id", "\"chatcmpl-1\""),
                ("gen_ai.response.finish_reasons", "[\"stop\"]"),
                ("gen_ai.usage.input_tokens", "12"),
                ("gen_ai.usage.output_tokens", "40"),
                ("gen_ai.usage.cache_read.input_tokens", "0"),
                ("gen_ai.response.time_to_first_chunk", "0.198"),
                ("server.address", "\"api.openai.com\""),
                ("server.port", "443"),
                ("http.response.status_code", "200"),
                ("sluice.attempt.fallback", "false"),
                ("sluice.request.id", "\"req-chat\""),
                ("sluice.api_key.id", "\"team-a\""),
                ("user.id", "\"user_12345\""),
                ("session.id", "\"session_abc\""),
                ("trace.metadata.environment", "\"staging\""),
                ("openinference.span.kind", "\"LLM\""),
                ("llm.model_name", "\"gpt-4o-2024-08-06\""),
                ("llm.provider", "\"openai\""),
                ("llm.system", "\"openai\""),
                ("llm.token_count.prompt", "12"),
                ("llm.token_count.completion", "40"),
                ("llm.token_count.total", "52"),
                ("llm.token_count.prompt_details.cache_read", "0"),
            ])
        );
    }

    #[test]
    fn captured_content_is_on_the_client_span_only() {
        let mut event = fixtures::streamed_chat();
        event.content = Some(fixtures::chat_content());
        let spans = spans(&event);
        let client = render(&spans[2].attributes);
        assert_eq!(client["llm.input_messages.0.message.role"], "\"system\"");
        assert_eq!(client["llm.input_messages.1.message.role"], "\"user\"");
        assert_eq!(
            client["llm.input_messages.1.message.content"],
            format!("{:?}", fixtures::SECRET_PROMPT)
        );
        assert_eq!(
            client["llm.output_messages.0.message.role"],
            "\"assistant\""
        );
        assert_eq!(client["llm.output_messages.0.message.content"], "\"Blue.\"");
        assert_eq!(client["input.mime_type"], "\"application/json\"");
        assert_eq!(
            json_attribute(&client["output.value"]),
            serde_json::json!([{"role": "assistant", "content": "Blue."}])
        );
        assert_eq!(
            json_attribute(&client["gen_ai.output.messages"]),
            serde_json::json!([{
                "role": "assistant",
                "parts": [{"type": "text", "content": "Blue."}],
                "finish_reason": "stop",
            }])
        );
        assert!(client["input.value"].contains(fixtures::SECRET_PROMPT));
        assert!(client["gen_ai.input.messages"].contains(fixtures::SECRET_PROMPT));
        for span in &spans[..2] {
            let text = format!("{:?}", span.attributes);
            assert!(!text.contains(fixtures::SECRET_PROMPT), "{}", span.name);
        }
    }

    #[test]
    fn content_is_absent_when_not_captured() {
        let event = fixtures::streamed_chat();
        assert!(event.content.is_none());
        for span in spans(&event) {
            for kv in &span.attributes {
                assert!(
                    !kv.key.starts_with("input.")
                        && !kv.key.starts_with("output.")
                        && !kv.key.starts_with("llm.input_messages")
                        && !kv.key.starts_with("llm.output_messages")
                        && !kv.key.starts_with("gen_ai.input")
                        && !kv.key.starts_with("gen_ai.output"),
                    "{} on {}",
                    kv.key,
                    span.name
                );
            }
        }
    }

    #[test]
    fn embeddings_are_an_embedding_span_without_output_tokens() {
        let event = fixtures::embeddings();
        let spans = spans(&event);
        assert_eq!(
            tree(&spans),
            vec![
                node(
                    "POST /v1/embeddings",
                    SpanKind::Server,
                    "5e5e5e5e5e5e5e5e",
                    ""
                ),
                node(
                    "provider routing",
                    SpanKind::Internal,
                    "2020202020202020",
                    "5e5e5e5e5e5e5e5e"
                ),
                node(
                    "embeddings text-embedding-3-small",
                    SpanKind::Client,
                    "a1a1a1a1a1a1a1a1",
                    "5e5e5e5e5e5e5e5e"
                ),
            ]
        );
        assert_eq!(spans[0].flags, SAMPLED | HAS_IS_REMOTE, "a root span");
        assert_eq!(
            render(&spans[2].attributes),
            expect(&[
                ("gen_ai.operation.name", "\"embeddings\""),
                ("gen_ai.provider.name", "\"local\""),
                ("gen_ai.request.model", "\"text-embedding-3-small\""),
                ("gen_ai.response.model", "\"text-embedding-3-small\""),
                ("gen_ai.usage.input_tokens", "8"),
                ("http.response.status_code", "200"),
                ("sluice.attempt.fallback", "false"),
                ("sluice.request.id", "\"req-emb\""),
                ("sluice.api_key.id", "\"team-a\""),
                ("openinference.span.kind", "\"EMBEDDING\""),
                ("llm.model_name", "\"text-embedding-3-small\""),
                ("llm.provider", "\"local\""),
                ("llm.system", "\"mock\""),
                (
                    "llm.invocation_parameters",
                    "\"{\\\"encoding_format\\\":\\\"float\\\"}\""
                ),
                ("embedding.model_name", "\"text-embedding-3-small\""),
                ("llm.token_count.prompt", "8"),
                ("llm.token_count.total", "8"),
            ])
        );
    }

    #[test]
    fn an_unauthorized_request_is_one_error_server_span() {
        let event = fixtures::unauthorized();
        let spans = spans(&event);
        assert_eq!(
            tree(&spans),
            vec![node(
                "POST /v1/chat/completions",
                SpanKind::Server,
                "5e5e5e5e5e5e5e5e",
                ""
            )]
        );
        assert_eq!(
            spans[0].status,
            Some(Status {
                message: "Incorrect or missing API key".into(),
                code: StatusCode::Error as i32
            })
        );
        assert_eq!(
            render(&spans[0].attributes),
            expect(&[
                ("http.request.method", "\"POST\""),
                ("url.path", "\"/v1/chat/completions\""),
                ("http.response.status_code", "401"),
                ("gen_ai.operation.name", "\"chat\""),
                ("sluice.request.id", "\"req-401\""),
                ("sluice.api_key.id", "\"unauthenticated\""),
                ("error.type", "\"unauthorized\""),
            ])
        );
    }

    #[test]
    fn a_fallback_is_a_failed_client_span_then_the_answering_one() {
        let event = fixtures::fallback();
        let spans = spans(&event);
        assert_eq!(
            tree(&spans),
            vec![
                node(
                    "POST /v1/chat/completions",
                    SpanKind::Server,
                    "5e5e5e5e5e5e5e5e",
                    ""
                ),
                node(
                    "provider routing",
                    SpanKind::Internal,
                    "2020202020202020",
                    "5e5e5e5e5e5e5e5e"
                ),
                node(
                    "chat gpt-4o",
                    SpanKind::Client,
                    "a1a1a1a1a1a1a1a1",
                    "5e5e5e5e5e5e5e5e"
                ),
                node(
                    "chat mock-large",
                    SpanKind::Client,
                    "a2a2a2a2a2a2a2a2",
                    "5e5e5e5e5e5e5e5e"
                ),
            ]
        );
        assert_eq!(spans[0].status, None, "the client got an answer");
        assert_eq!(
            spans[2].status,
            Some(Status {
                message: "upstream overloaded".into(),
                code: StatusCode::Error as i32
            })
        );
        assert_eq!(spans[3].status, None);
        let failed = render(&spans[2].attributes);
        assert_eq!(failed["error.type"], "\"503\"");
        assert_eq!(failed["http.response.status_code"], "503");
        assert_eq!(failed["sluice.attempt.fallback"], "false");
        assert_eq!(failed["llm.model_name"], "\"gpt-4o\"");
        for key in [
            "gen_ai.usage.input_tokens",
            "gen_ai.response.model",
            "llm.token_count.total",
        ] {
            assert!(!failed.contains_key(key), "{key} on the failed attempt");
        }
        let answering = render(&spans[3].attributes);
        assert_eq!(answering["sluice.attempt.fallback"], "true");
        assert_eq!(answering["gen_ai.provider.name"], "\"local\"");
        assert_eq!(answering["gen_ai.request.model"], "\"mock-large\"");
        assert_eq!(answering["gen_ai.usage.output_tokens"], "9");
        assert!(!answering.contains_key("error.type"));
        let server = render(&spans[0].attributes);
        assert_eq!(server["sluice.attempt.count"], "2");
        assert_eq!(server["gen_ai.provider.name"], "\"local\"");
        assert_eq!(server["gen_ai.request.model"], "\"gpt-4o\"");
    }

    #[test]
    fn trace_metadata_names_override_span_names() {
        let mut event = fixtures::fallback();
        let metadata = event.trace_metadata.get_or_insert_default();
        metadata.trace_name = Some("Chat Handler".into());
        metadata.span_name = Some("Pick model".into());
        metadata.generation_name = Some("Generate Response".into());
        let names: Vec<_> = spans(&event).into_iter().map(|s| s.name).collect();
        assert_eq!(
            names,
            [
                "Chat Handler",
                "Pick model",
                "Generate Response",
                "Generate Response"
            ]
        );
    }

    #[test]
    fn unsampled_requests_have_no_spans_and_unknown_paths_are_named_by_method() {
        let mut event = fixtures::unauthorized();
        event.sampled = false;
        assert!(spans(&event).is_empty());
        assert!(
            export_request(
                &[event],
                &Resource::default(),
                &InstrumentationScope::default()
            )
            .is_none()
        );

        let mut event = fixtures::unauthorized();
        event.operation = Operation::Other;
        event.http_path = "/wp-admin/install.php".into();
        assert_eq!(server_span_name(&event), "POST");
    }

    #[test]
    fn a_server_error_with_no_message_is_still_an_error() {
        let mut event = fixtures::fallback();
        event.status_code = 502;
        event.error = None;
        assert_eq!(spans(&event)[0].status, Some(error_status("")));
    }
}
