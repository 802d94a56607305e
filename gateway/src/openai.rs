//! Pieces of the OpenAI wire format shared by the gateway and the mock: error bodies and the
//! usage object.

use axum::body::Body;
use http::{HeaderValue, Response, StatusCode, header};
use serde_json::{Value, json};

use crate::event::Usage;

/// An error response in OpenAI's format: `{"error":{"message","type","param","code"}}`.
pub fn error_response(
    status: StatusCode,
    message: &str,
    error_type: &str,
    code: Option<&str>,
) -> Response<Body> {
    let body = json!({
        "error": {
            "message": message,
            "type": error_type,
            "param": null,
            "code": code,
        }
    });
    json_response(status, &body)
}

/// A JSON response.
pub fn json_response(status: StatusCode, body: &Value) -> Response<Body> {
    let mut response = Response::new(Body::from(body.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// The message of an OpenAI error body, if `body` is one.
pub fn error_message(body: &[u8]) -> Option<String> {
    let value: Value = serde_json::from_slice(body).ok()?;
    match &value["error"] {
        Value::String(message) => Some(message.clone()),
        error => error["message"].as_str().map(str::to_string),
    }
}

/// Reads a `usage` object (chat, completions or embeddings) into token counts.
pub fn parse_usage(usage: &Value) -> Option<Usage> {
    if !usage.is_object() {
        return None;
    }
    Some(Usage {
        input_tokens: usage["prompt_tokens"].as_u64(),
        output_tokens: usage["completion_tokens"].as_u64(),
        cached_input_tokens: usage["prompt_tokens_details"]["cached_tokens"].as_u64(),
        reasoning_tokens: usage["completion_tokens_details"]["reasoning_tokens"].as_u64(),
    })
}

/// The text of a message's `content`: a string, or the text parts of an array joined.
pub fn content_text(content: &Value) -> String {
    match content {
        Value::String(text) => text.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|part| part["text"].as_str())
            .collect::<Vec<_>>()
            .join(""),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_details_are_read_when_present() {
        let usage = json!({
            "prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15,
            "prompt_tokens_details": {"cached_tokens": 4},
            "completion_tokens_details": {"reasoning_tokens": 2}
        });
        let usage = parse_usage(&usage).unwrap();
        assert_eq!(usage.input_tokens, Some(10));
        assert_eq!(usage.output_tokens, Some(5));
        assert_eq!(usage.cached_input_tokens, Some(4));
        assert_eq!(usage.reasoning_tokens, Some(2));
        assert!(parse_usage(&Value::Null).is_none());
    }

    #[test]
    fn content_parts_are_joined() {
        let parts = json!([{"type": "text", "text": "a"}, {"type": "image_url"}, {"type": "text", "text": "b"}]);
        assert_eq!(content_text(&parts), "ab");
        assert_eq!(content_text(&json!("x")), "x");
    }

    #[test]
    fn error_messages_are_found_in_both_shapes() {
        assert_eq!(
            error_message(br#"{"error":{"message":"bad","type":"x"}}"#).as_deref(),
            Some("bad")
        );
        assert_eq!(
            error_message(br#"{"error":"flat"}"#).as_deref(),
            Some("flat")
        );
        assert_eq!(error_message(b"<html>"), None);
    }
}
