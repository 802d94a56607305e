//! The attributes the gateway's spans and log records share, and the helpers that build them.
//!
//! Names follow the OpenTelemetry semantic conventions (GenAI, HTTP, server, error, user,
//! session) and, on the CLIENT spans, OpenInference. The few without a convention are under
//! `sluice.`.

use std::collections::BTreeMap;

use opentelemetry_proto::tonic::common::v1::{AnyValue, ArrayValue, KeyValue, any_value::Value};
use serde_json::json;
use sluice_gateway::event::{Content, Message, Operation, RequestEvent};

/// A list of attributes under construction; `None` values are left out.
#[derive(Debug, Default)]
pub(crate) struct Attributes(pub(crate) Vec<KeyValue>);

impl Attributes {
    pub(crate) fn new() -> Attributes {
        Attributes(Vec::new())
    }

    fn push(&mut self, key: impl Into<String>, value: Value) -> &mut Self {
        self.0.push(KeyValue {
            key: key.into(),
            value: Some(AnyValue { value: Some(value) }),
            ..Default::default()
        });
        self
    }

    pub(crate) fn str(&mut self, key: impl Into<String>, value: impl Into<String>) -> &mut Self {
        self.push(key, Value::StringValue(value.into()))
    }

    pub(crate) fn opt_str(&mut self, key: &str, value: Option<&str>) -> &mut Self {
        if let Some(value) = value {
            self.str(key, value);
        }
        self
    }

    pub(crate) fn int(&mut self, key: &str, value: i64) -> &mut Self {
        self.push(key, Value::IntValue(value))
    }

    pub(crate) fn opt_uint(&mut self, key: &str, value: Option<u64>) -> &mut Self {
        if let Some(value) = value {
            self.int(key, saturating_i64(value));
        }
        self
    }

    pub(crate) fn double(&mut self, key: &str, value: f64) -> &mut Self {
        self.push(key, Value::DoubleValue(value))
    }

    pub(crate) fn opt_double(&mut self, key: &str, value: Option<f64>) -> &mut Self {
        if let Some(value) = value {
            self.double(key, value);
        }
        self
    }

    pub(crate) fn bool(&mut self, key: &str, value: bool) -> &mut Self {
        self.push(key, Value::BoolValue(value))
    }

    pub(crate) fn str_array(
        &mut self,
        key: impl Into<String>,
        values: impl IntoIterator<Item = String>,
    ) -> &mut Self {
        let values = values
            .into_iter()
            .map(|v| AnyValue {
                value: Some(Value::StringValue(v)),
            })
            .collect();
        self.push(key, Value::ArrayValue(ArrayValue { values }))
    }

    pub(crate) fn into_vec(self) -> Vec<KeyValue> {
        self.0
    }
}

/// OTLP integers are signed; counts past `i64::MAX` do not happen, but must not wrap.
pub(crate) fn saturating_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// Nanoseconds between two event times, in seconds; 0 when the clock went backwards.
pub(crate) fn seconds_between(start_unix_nano: u64, end_unix_nano: u64) -> f64 {
    end_unix_nano.saturating_sub(start_unix_nano) as f64 / 1e9
}

/// Whether the operation is one of the GenAI operations that generate text (and can stream).
pub(crate) fn generates_text(operation: Operation) -> bool {
    matches!(operation, Operation::Chat | Operation::TextCompletion)
}

/// Whether the request's body was read: requests refused before (401, 429, 413, a body that
/// is not JSON) have no parameters, and their `stream` flag is unknown rather than false.
pub(crate) fn body_was_read(event: &RequestEvent) -> bool {
    event.requested_model.is_some()
}

/// Whether the operation calls a model at all (what the GenAI metrics measure).
pub(crate) fn is_genai(operation: Operation) -> bool {
    matches!(
        operation,
        Operation::Chat | Operation::TextCompletion | Operation::Embeddings
    )
}

/// The attempt that produced the answer the client got: the last one, if it did not fail.
pub(crate) fn answering_attempt(event: &RequestEvent) -> Option<usize> {
    let last = event.attempts.len().checked_sub(1)?;
    event.attempts[last].error_type.is_none().then_some(last)
}

/// Time to first chunk of a stream, in seconds from `since`; `None` for unstreamed requests.
pub(crate) fn time_to_first_chunk(event: &RequestEvent, since_unix_nano: u64) -> Option<f64> {
    if !event.stream {
        return None;
    }
    event
        .timings
        .first_chunk_unix_nano
        .map(|first| seconds_between(since_unix_nano, first))
}

/// Attributes that tie a span or record to the request and its caller: on every span and on
/// the log record, so that a query on any of them finds the others.
pub(crate) fn context(attrs: &mut Attributes, event: &RequestEvent) {
    attrs
        .str("sluice.request.id", &event.request_id)
        .str("sluice.api_key.id", &event.key_id)
        .opt_str("user.id", event.user_id.as_deref())
        .opt_str("session.id", event.session_id.as_deref());
    if let Some(metadata) = &event.trace_metadata {
        for (key, value) in &metadata.metadata {
            attrs.str(format!("trace.metadata.{key}"), value);
        }
    }
}

/// The generation parameters of the request (`gen_ai.request.*`).
pub(crate) fn request_parameters(attrs: &mut Attributes, event: &RequestEvent) {
    let parameters = &event.parameters;
    attrs
        .opt_uint("gen_ai.request.max_tokens", parameters.max_tokens)
        .opt_double("gen_ai.request.temperature", parameters.temperature)
        .opt_double("gen_ai.request.top_p", parameters.top_p);
    if generates_text(event.operation) && body_was_read(event) {
        attrs.bool("gen_ai.request.stream", event.stream);
    }
}

/// What the upstream answered: response id and model, finish reasons, token usage.
pub(crate) fn response(attrs: &mut Attributes, event: &RequestEvent) {
    attrs
        .opt_str("gen_ai.response.model", event.response_model.as_deref())
        .opt_str("gen_ai.response.id", event.response_id.as_deref());
    if !event.finish_reasons.is_empty() {
        attrs.str_array(
            "gen_ai.response.finish_reasons",
            event.finish_reasons.iter().cloned(),
        );
    }
    let usage = &event.usage;
    attrs
        .opt_uint("gen_ai.usage.input_tokens", usage.input_tokens)
        .opt_uint("gen_ai.usage.output_tokens", usage.output_tokens)
        .opt_uint(
            "gen_ai.usage.cache_read.input_tokens",
            usage.cached_input_tokens,
        )
        .opt_uint(
            "gen_ai.usage.reasoning.output_tokens",
            usage.reasoning_tokens,
        );
}

/// The request as a whole, as the client saw it: the SERVER span's attributes and the log
/// record's (which adds the content when captured).
pub(crate) fn request(event: &RequestEvent) -> Attributes {
    let mut attrs = Attributes::new();
    attrs
        .str("http.request.method", &event.http_method)
        .str("url.path", &event.http_path)
        .int("http.response.status_code", i64::from(event.status_code))
        .str("gen_ai.operation.name", event.operation.as_str())
        .opt_str("gen_ai.request.model", event.requested_model.as_deref())
        .opt_str(
            "gen_ai.provider.name",
            event.provider.as_ref().map(|p| p.name.as_str()),
        );
    request_parameters(&mut attrs, event);
    response(&mut attrs, event);
    attrs.opt_double(
        "gen_ai.response.time_to_first_chunk",
        time_to_first_chunk(event, event.timings.start_unix_nano),
    );
    if !event.attempts.is_empty() {
        attrs.int(
            "sluice.attempt.count",
            saturating_i64(event.attempts.len() as u64),
        );
    }
    context(&mut attrs, event);
    headers(&mut attrs, &event.headers);
    attrs.opt_str(
        "error.type",
        event.error.as_ref().map(|e| e.error_type.as_str()),
    );
    attrs
}

/// Captured request headers, one string array per header name as the HTTP conventions have it.
fn headers(attrs: &mut Attributes, headers: &[(String, String)]) {
    // The event lists names in configured order; keep it, grouping repeated headers.
    let mut order = Vec::new();
    let mut values: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for (name, value) in headers {
        let entry = values.entry(name.as_str()).or_default();
        if entry.is_empty() {
            order.push(name.as_str());
        }
        entry.push(value.clone());
    }
    for name in order {
        let values = values.remove(name).unwrap_or_default();
        attrs.str_array(format!("http.request.header.{name}"), values);
    }
}

/// The messages the model was given: chat messages, or each prompt as a user message.
pub(crate) fn input_messages(operation: Operation, content: &Content) -> Vec<Message> {
    match operation {
        Operation::TextCompletion => content
            .prompt
            .iter()
            .map(|prompt| Message {
                role: "user".to_string(),
                content: prompt.clone(),
            })
            .collect(),
        _ => content.input_messages.clone(),
    }
}

fn messages_json(messages: &[Message]) -> String {
    let list: Vec<_> = messages
        .iter()
        .map(|m| json!({"role": m.role, "content": m.content}))
        .collect();
    serde_json::Value::Array(list).to_string()
}

/// `input.value` and `input.mime_type`: the messages (or embedding inputs) as JSON.
pub(crate) fn input_value(attrs: &mut Attributes, operation: Operation, content: &Content) {
    let value = match operation {
        Operation::Embeddings if !content.embedding_input.is_empty() => {
            serde_json::Value::from(content.embedding_input.clone()).to_string()
        }
        Operation::Embeddings => return,
        _ => {
            let messages = input_messages(operation, content);
            if messages.is_empty() {
                return;
            }
            messages_json(&messages)
        }
    };
    attrs
        .str("input.value", value)
        .str("input.mime_type", "application/json");
}

/// `output.value` and `output.mime_type`: the answer's messages as JSON.
pub(crate) fn output_value(attrs: &mut Attributes, content: &Content) {
    if content.output_messages.is_empty() {
        return;
    }
    attrs
        .str("output.value", messages_json(&content.output_messages))
        .str("output.mime_type", "application/json");
}

/// `gen_ai.input.messages`: the semantic conventions' JSON form (role and text parts).
pub(crate) fn genai_input_messages(attrs: &mut Attributes, messages: &[Message]) {
    if messages.is_empty() {
        return;
    }
    let list: Vec<_> = messages
        .iter()
        .map(|m| json!({"role": m.role, "parts": [{"type": "text", "content": m.content}]}))
        .collect();
    attrs.str(
        "gen_ai.input.messages",
        serde_json::Value::Array(list).to_string(),
    );
}

/// `gen_ai.output.messages`: as above, with each choice's finish reason.
pub(crate) fn genai_output_messages(
    attrs: &mut Attributes,
    messages: &[Message],
    finish_reasons: &[String],
) {
    if messages.is_empty() {
        return;
    }
    let list: Vec<_> = messages
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let mut message =
                json!({"role": m.role, "parts": [{"type": "text", "content": m.content}]});
            if let Some(reason) = finish_reasons.get(i) {
                message["finish_reason"] = json!(reason);
            }
            message
        })
        .collect();
    attrs.str(
        "gen_ai.output.messages",
        serde_json::Value::Array(list).to_string(),
    );
}

/// `llm.invocation_parameters`: every generation parameter as a JSON object, never content.
pub(crate) fn invocation_parameters(event: &RequestEvent) -> String {
    let parameters = &event.parameters;
    let mut object = serde_json::Map::new();
    if let Some(max_tokens) = parameters.max_tokens {
        object.insert("max_tokens".into(), json!(max_tokens));
    }
    if let Some(temperature) = parameters.temperature {
        object.insert("temperature".into(), json!(temperature));
    }
    if let Some(top_p) = parameters.top_p {
        object.insert("top_p".into(), json!(top_p));
    }
    if generates_text(event.operation) && body_was_read(event) {
        object.insert("stream".into(), json!(event.stream));
    }
    for (key, value) in &parameters.other {
        object.insert(key.clone(), value.clone());
    }
    serde_json::Value::Object(object).to_string()
}

#[cfg(test)]
pub(crate) mod test_support {
    //! Reading attributes back in tests.

    use super::*;

    /// The attributes as `key -> value` with values rendered as JSON-ish text, for exact
    /// comparisons that read well in a failing assertion.
    pub(crate) fn render(attributes: &[KeyValue]) -> BTreeMap<String, String> {
        let mut map = BTreeMap::new();
        for kv in attributes {
            let previous = map.insert(kv.key.clone(), render_value(kv.value.as_ref()));
            assert!(previous.is_none(), "attribute {} set twice", kv.key);
        }
        map
    }

    pub(crate) fn render_value(value: Option<&AnyValue>) -> String {
        match value.and_then(|v| v.value.as_ref()) {
            Some(Value::StringValue(s)) => format!("{s:?}"),
            Some(Value::IntValue(i)) => i.to_string(),
            Some(Value::DoubleValue(d)) => format!("{d:?}"),
            Some(Value::BoolValue(b)) => b.to_string(),
            Some(Value::ArrayValue(a)) => format!(
                "[{}]",
                a.values
                    .iter()
                    .map(|v| render_value(Some(v)))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            other => format!("{other:?}"),
        }
    }

    /// `[(key, rendered value)]` literal into a map, for the expected side.
    pub(crate) fn expect(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }
}
