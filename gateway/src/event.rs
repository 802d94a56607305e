//! The raw request event: everything the gateway learned about one request, as plain data.
//!
//! The gateway emits exactly one [`RequestEvent`] per request it answers, refused ones
//! included. It knows nothing about OTLP: the `gateway` receiver builds the span tree, the
//! metrics and the log record from these fields. Times are Unix nanoseconds (OTLP's unit), ids
//! are raw bytes (OTLP's encoding); `Serialize` renders ids as hex for debugging.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// The current time in nanoseconds since the Unix epoch, as stored in events.
pub fn now_unix_nano() -> u64 {
    unix_nano(SystemTime::now())
}

/// `time` in nanoseconds since the Unix epoch; 0 for times before it (a clock set to 1969).
pub fn unix_nano(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// One request through the gateway, from the first byte read to the last byte written.
#[derive(Debug, Clone, Serialize)]
pub struct RequestEvent {
    /// The gateway's id for the request (also sent back as the `x-request-id` header).
    pub request_id: String,
    /// What the client asked for: chat, text completion, embeddings or the model list.
    pub operation: Operation,
    /// The HTTP method of the client's request (`POST`).
    pub http_method: String,
    /// The path of the client's request (`/v1/chat/completions`).
    pub http_path: String,
    /// When things happened.
    pub timings: Timings,
    /// The `model` field of the client's request; `None` when the body had none (or for
    /// `GET /v1/models`).
    pub requested_model: Option<String>,
    /// The `model` the upstream reported in its response (`gen_ai.response.model`); `None`
    /// when no upstream answered successfully.
    pub response_model: Option<String>,
    /// The provider that produced the answer the client got (the last attempt's), when any
    /// attempt was made.
    pub provider: Option<ProviderRef>,
    /// Every upstream attempt in order; the first is the route's first target, the others are
    /// fallbacks. Empty for refused requests and for `GET /v1/models`.
    pub attempts: Vec<Attempt>,
    /// The id of the client's API key: the `id` of a configured `[[gateway.keys]]`, a short
    /// hash of the bearer token when no keys are configured, or `anonymous` when the request
    /// carried none. Never the key itself.
    pub key_id: String,
    /// The HTTP status code the client received.
    pub status_code: u16,
    /// Why the request failed; `None` when the client got a 2xx answer.
    pub error: Option<EventError>,
    /// Token counts, as reported by the upstream (for streams: its final usage chunk).
    pub usage: Usage,
    /// Whether the client asked for a stream (`"stream": true`).
    pub stream: bool,
    /// The finish reason of each choice, in choice order (`stop`, `length`...).
    pub finish_reasons: Vec<String>,
    /// The `id` of the upstream's response (`chatcmpl-...`).
    pub response_id: Option<String>,
    /// The request parameters that shape generation.
    pub parameters: RequestParameters,
    /// The trace this request's spans belong to and the span ids the gateway chose.
    pub trace: TraceIds,
    /// The W3C trace context the client sent (`traceparent`, `tracestate`), if any valid one.
    pub inbound_trace: Option<InboundTraceContext>,
    /// The sampler's decision: when false, the receiver should record no spans for this
    /// request (metrics and logs are still produced).
    pub sampled: bool,
    /// The body's `user` field (`user.id`).
    pub user_id: Option<String>,
    /// The body's `session_id` field (`session.id`), removed before the request went upstream.
    pub session_id: Option<String>,
    /// The body's OpenRouter-style `trace` object, removed before the request went upstream.
    pub trace_metadata: Option<TraceMetadata>,
    /// The request headers named in `capture_headers` that were present, lower-cased names in
    /// the configured order; a header sent several times appears once per value.
    pub headers: Vec<(String, String)>,
    /// Prompts and completions; `Some` only when `capture_content = "full"`.
    pub content: Option<Content>,
}

/// The kind of request, named as in `gen_ai.operation.name`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Operation {
    /// `POST /v1/chat/completions`.
    Chat,
    /// `POST /v1/completions`.
    TextCompletion,
    /// `POST /v1/embeddings`.
    Embeddings,
    /// `GET /v1/models`: answered by the gateway itself.
    Models,
    /// Any other path (answered 404).
    Other,
}

impl Operation {
    /// The `gen_ai.operation.name` value (`chat`, `text_completion`, `embeddings`), or the
    /// gateway's own name for the others (`models`, `other`).
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Chat => "chat",
            Operation::TextCompletion => "text_completion",
            Operation::Embeddings => "embeddings",
            Operation::Models => "models",
            Operation::Other => "other",
        }
    }
}

/// When each phase of the request happened, in Unix nanoseconds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Timings {
    /// The request's headers were read (start of the SERVER span).
    pub start_unix_nano: u64,
    /// Authentication, rate limiting and route selection were done (end of the routing span);
    /// `None` when the request was refused before routing.
    pub routing_done_unix_nano: Option<u64>,
    /// The response head (non-streaming) or the first SSE event (streaming) from the
    /// upstream that answered; for streams, the basis of time to first token.
    pub first_chunk_unix_nano: Option<u64>,
    /// The last SSE event of a stream (or the end of a non-streaming body).
    pub last_chunk_unix_nano: Option<u64>,
    /// The last byte of the response was handed to the client (end of the SERVER span).
    pub end_unix_nano: u64,
}

/// Which provider handled an attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProviderRef {
    /// The provider's name: its table name in `[gateway.providers.NAME]`.
    pub name: String,
    /// The provider's kind.
    pub kind: ProviderKind,
}

/// The kinds of provider the gateway can call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProviderKind {
    /// Any OpenAI-compatible HTTP API.
    Openai,
    /// The built-in deterministic mock, run in-process.
    Mock,
}

impl ProviderKind {
    /// The kind's name as written in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::Openai => "openai",
            ProviderKind::Mock => "mock",
        }
    }
}

/// One call to an upstream provider (one CLIENT span).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Attempt {
    /// The provider called.
    pub provider: ProviderRef,
    /// The model name sent upstream (the target's `model`, or the requested model).
    pub model: String,
    /// The upstream's host (`server.address`); `None` for the in-process mock.
    pub server_address: Option<String>,
    /// The upstream's port (`server.port`); `None` for the in-process mock.
    pub server_port: Option<u16>,
    /// The span id of this attempt's CLIENT span, also sent upstream in `traceparent`.
    #[serde(serialize_with = "hex_bytes")]
    pub span_id: [u8; 8],
    /// The attempt began (request about to be sent).
    pub start_unix_nano: u64,
    /// The attempt ended: the whole response was read (for a stream, its last event), or the
    /// attempt failed.
    pub end_unix_nano: u64,
    /// The upstream's HTTP status; `None` when no response came (connection error, timeout).
    pub status_code: Option<u16>,
    /// Why the attempt failed (see [`EventError::error_type`]); `None` when it succeeded.
    pub error_type: Option<String>,
    /// The upstream's error message or the transport error, for humans.
    pub error_message: Option<String>,
    /// Whether this attempt was a fallback (not the route's first target).
    pub fallback: bool,
}

/// Why a request failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EventError {
    /// A low-cardinality class for `error.type`. Refusals by the gateway: `unauthorized`
    /// (401), `forbidden` (403), `rate_limited` (429), `model_not_found` (404),
    /// `invalid_request` (400: the body was not valid JSON or lacked `model`), `not_found`
    /// (unknown path). Upstream failures: `timeout`, `connection_error`, `stream_error` (the
    /// stream broke after it began), or the upstream's HTTP status code as a string (`"503"`,
    /// `"400"`), as the HTTP semantic conventions do.
    pub error_type: String,
    /// A message for humans: the one the client received.
    pub message: String,
}

/// Token counts; each is `None` when the upstream did not report it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Usage {
    /// `usage.prompt_tokens` (`gen_ai.usage.input_tokens`).
    pub input_tokens: Option<u64>,
    /// `usage.completion_tokens` (`gen_ai.usage.output_tokens`); `None` for embeddings.
    pub output_tokens: Option<u64>,
    /// `usage.prompt_tokens_details.cached_tokens` (`gen_ai.usage.cache_read.input_tokens`).
    pub cached_input_tokens: Option<u64>,
    /// `usage.completion_tokens_details.reasoning_tokens`
    /// (`gen_ai.usage.reasoning.output_tokens`).
    pub reasoning_tokens: Option<u64>,
}

/// Generation parameters from the request body.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RequestParameters {
    /// `max_completion_tokens`, else `max_tokens`.
    pub max_tokens: Option<u64>,
    /// `temperature`.
    pub temperature: Option<f64>,
    /// `top_p`.
    pub top_p: Option<f64>,
    /// Every other body field except the model, the content (`messages`, `prompt`, `input`),
    /// `stream`, `user`, `session_id` and `trace`: `frequency_penalty`, `seed`, `n`, `stop`,
    /// `tools`... (for `llm.invocation_parameters`).
    pub other: serde_json::Map<String, serde_json::Value>,
}

/// The trace the gateway's spans belong to, and the ids it chose for them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TraceIds {
    /// The trace id: the inbound `traceparent`'s, else one derived from the body's
    /// `trace.trace_id`, else a fresh random one.
    #[serde(serialize_with = "hex_bytes")]
    pub trace_id: [u8; 16],
    /// The parent of the SERVER span: the inbound `traceparent`'s span id, else the body's
    /// `trace.parent_span_id` (when 16 hex digits), else `None` (a root span).
    #[serde(serialize_with = "hex_opt_bytes")]
    pub parent_span_id: Option<[u8; 8]>,
    /// The SERVER span's id ("Gateway request").
    #[serde(serialize_with = "hex_bytes")]
    pub server_span_id: [u8; 8],
    /// The INTERNAL routing span's id, child of the SERVER span. The attempts' CLIENT spans
    /// ([`Attempt::span_id`]) are children of the SERVER span too.
    #[serde(serialize_with = "hex_bytes")]
    pub routing_span_id: [u8; 8],
    /// The inbound `tracestate`, to copy onto the spans.
    pub tracestate: Option<String>,
}

/// A valid W3C trace context received from the client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InboundTraceContext {
    /// The `traceparent`'s trace id.
    #[serde(serialize_with = "hex_bytes")]
    pub trace_id: [u8; 16],
    /// The `traceparent`'s parent id: the caller's span.
    #[serde(serialize_with = "hex_bytes")]
    pub parent_span_id: [u8; 8],
    /// The `traceparent`'s sampled flag.
    pub sampled: bool,
    /// The `tracestate` header, if sent.
    pub tracestate: Option<String>,
}

/// The OpenRouter-style `trace` object of the request body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TraceMetadata {
    /// `trace.trace_id`: groups several requests into one trace (any string).
    pub trace_id: Option<String>,
    /// `trace.trace_name`: a name for the root (SERVER) span.
    pub trace_name: Option<String>,
    /// `trace.span_name`: a name for the intermediate (routing) span.
    pub span_name: Option<String>,
    /// `trace.generation_name`: a name for the LLM generation (CLIENT) spans.
    pub generation_name: Option<String>,
    /// `trace.parent_span_id`: the span to attach the SERVER span to.
    pub parent_span_id: Option<String>,
    /// Every other key of `trace` (`trace.metadata.<key>`); non-string values as JSON text.
    pub metadata: BTreeMap<String, String>,
}

/// Prompts and completions, captured only with `capture_content = "full"`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Content {
    /// Chat: the request's `messages`.
    pub input_messages: Vec<Message>,
    /// Text completion: the `prompt` (one entry per prompt when it was an array).
    pub prompt: Vec<String>,
    /// Embeddings: the `input` texts (token arrays rendered as JSON text).
    pub embedding_input: Vec<String>,
    /// Chat and text completion: one `assistant` message per choice, in choice order (for
    /// streams, the concatenated deltas).
    pub output_messages: Vec<Message>,
}

/// One chat message, flattened to text.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Message {
    /// `system`, `user`, `assistant`, `tool`...
    pub role: String,
    /// The text; content parts are joined, non-text parts are left out, tool calls are
    /// rendered as JSON text.
    pub content: String,
}

fn hex_bytes<S: serde::Serializer, const N: usize>(
    bytes: &[u8; N],
    serializer: S,
) -> Result<S::Ok, S::Error> {
    let mut text = String::with_capacity(N * 2);
    for byte in bytes {
        text.push_str(&format!("{byte:02x}"));
    }
    serializer.serialize_str(&text)
}

fn hex_opt_bytes<S: serde::Serializer, const N: usize>(
    bytes: &Option<[u8; N]>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match bytes {
        Some(bytes) => hex_bytes(bytes, serializer),
        None => serializer.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_serialize_as_hex_for_debugging() {
        let ids = TraceIds {
            trace_id: [0xab; 16],
            parent_span_id: None,
            server_span_id: [1, 2, 3, 4, 5, 6, 7, 8],
            routing_span_id: [0; 8],
            tracestate: None,
        };
        let json = serde_json::to_value(&ids).unwrap();
        assert_eq!(json["trace_id"], "abababababababababababababababab");
        assert_eq!(json["server_span_id"], "0102030405060708");
        assert!(json["parent_span_id"].is_null());
    }

    #[test]
    fn times_before_the_epoch_become_zero() {
        let before = UNIX_EPOCH - std::time::Duration::from_secs(1);
        assert_eq!(unix_nano(before), 0);
        assert_eq!(
            unix_nano(UNIX_EPOCH + std::time::Duration::from_nanos(5)),
            5
        );
    }
}
