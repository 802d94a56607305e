//! The built-in mock provider: deterministic OpenAI-compatible answers, offline.
//!
//! The same [`MockProvider`] answers in-process for `kind = "mock"` providers and over HTTP
//! through [`mock_router`], so a benchmark can call the mock directly and through the gateway
//! and compare like with like.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::routing::{get, post};
use http::{HeaderValue, Response, StatusCode, header};
use serde_json::{Value, json};

use crate::config::MockConfig;
use crate::event::Operation;
use crate::openai::{content_text, error_response, json_response};

/// The words completions are made of.
const WORDS: &[&str] = &[
    "the", "gateway", "routes", "each", "request", "to", "a", "model", "and", "records", "every",
    "token", "it", "sees", "while", "streams", "flow", "through", "sluice", "quietly", "with",
    "care", "for", "latency", "spans", "metrics", "logs", "traces", "answer", "quickly",
];

/// Prompts of at least this many tokens report part of their input as cached, as OpenAI does
/// from 1,024 tokens on.
const CACHE_THRESHOLD_TOKENS: u64 = 1024;

/// Reasoning tokens the `mock-reasoning*` models report per output word.
const REASONING_TOKENS_PER_WORD: u64 = 4;

/// The most choices (`n`) the mock produces.
const MAX_CHOICES: u64 = 8;

/// The deterministic mock provider.
#[derive(Debug)]
pub struct MockProvider {
    config: MockConfig,
    /// How many failure draws were made: the position in the seeded sequence.
    draws: AtomicU64,
}

impl MockProvider {
    /// A mock answering as `config` says.
    pub fn new(config: MockConfig) -> MockProvider {
        MockProvider {
            config,
            draws: AtomicU64::new(0),
        }
    }

    /// How long the gateway waits for this mock.
    pub fn timeout(&self) -> Duration {
        self.config.timeout
    }

    /// Answers one request to `operation` whose JSON body is `body`.
    pub async fn respond(&self, operation: Operation, body: &Value) -> Response<Body> {
        let model = body["model"].as_str().unwrap_or_default();
        if model == "mock-timeout" {
            return std::future::pending().await;
        }
        if !self.config.latency.is_zero() {
            tokio::time::sleep(self.config.latency).await;
        }
        if let Some(status) = model
            .strip_prefix("mock-error-")
            .and_then(|s| s.parse::<u16>().ok())
            .and_then(|s| StatusCode::from_u16(s).ok())
            .filter(|s| s.is_client_error() || s.is_server_error())
        {
            return injected_error(status);
        }
        if self.config.failure_rate > 0.0 && self.draw_failure() {
            return injected_error(StatusCode::SERVICE_UNAVAILABLE);
        }
        if operation != Operation::Models && model.is_empty() {
            return invalid("you must provide a model parameter", "model");
        }
        match operation {
            Operation::Chat => self.chat(model, body),
            Operation::TextCompletion => self.text_completion(model, body),
            Operation::Embeddings => self.embeddings(model, body),
            Operation::Models => json_response(StatusCode::OK, &models()),
            Operation::Other => error_response(
                StatusCode::NOT_FOUND,
                "unknown endpoint",
                "invalid_request_error",
                Some("not_found"),
            ),
        }
    }

    fn draw_failure(&self) -> bool {
        let n = self.draws.fetch_add(1, Ordering::Relaxed);
        let x = splitmix64(
            self.config
                .seed
                .wrapping_add(n.wrapping_mul(0x9e37_79b9_7f4a_7c15)),
        );
        // 53 random bits as a float in [0, 1).
        ((x >> 11) as f64 / (1u64 << 53) as f64) < self.config.failure_rate
    }

    fn chat(&self, model: &str, body: &Value) -> Response<Body> {
        let Some(messages) = body["messages"].as_array() else {
            return invalid("'messages' is a required property", "messages");
        };
        let prompt: String = messages
            .iter()
            .map(|m| content_text(&m["content"]))
            .collect::<Vec<_>>()
            .join("\n");
        let plan = Plan::new(model, &prompt, body);
        let created = unix_seconds();
        if body["stream"].as_bool() == Some(true) {
            let mut events = Vec::new();
            for (index, choice) in plan.choices.iter().enumerate() {
                let mut deltas = vec![json!({"role": "assistant", "content": ""})];
                for (i, word) in choice.words.iter().enumerate() {
                    let text = if i == 0 {
                        word.to_string()
                    } else {
                        format!(" {word}")
                    };
                    deltas.push(json!({"content": text}));
                }
                for delta in deltas {
                    events.push(json!({"index": index, "delta": delta, "finish_reason": null}));
                }
                events.push(
                    json!({"index": index, "delta": {}, "finish_reason": choice.finish_reason}),
                );
            }
            let chunks = events
                .into_iter()
                .map(|choice| {
                    json!({
                        "id": plan.id("chatcmpl"), "object": "chat.completion.chunk",
                        "created": created, "model": model, "choices": [choice],
                    })
                })
                .collect();
            return self.stream(chunks, &plan, body, "chatcmpl", "chat.completion.chunk");
        }
        let choices: Vec<Value> = plan
            .choices
            .iter()
            .enumerate()
            .map(|(index, choice)| {
                json!({
                    "index": index,
                    "message": {"role": "assistant", "content": choice.text(), "refusal": null},
                    "logprobs": null,
                    "finish_reason": choice.finish_reason,
                })
            })
            .collect();
        json_response(
            StatusCode::OK,
            &json!({
                "id": plan.id("chatcmpl"), "object": "chat.completion", "created": created,
                "model": model, "choices": choices, "usage": plan.usage(),
            }),
        )
    }

    fn text_completion(&self, model: &str, body: &Value) -> Response<Body> {
        let prompt = match &body["prompt"] {
            Value::String(text) => text.clone(),
            Value::Array(items) => items
                .iter()
                .map(|item| {
                    item.as_str()
                        .map_or_else(|| item.to_string(), str::to_string)
                })
                .collect::<Vec<_>>()
                .join("\n"),
            _ => return invalid("'prompt' is a required property", "prompt"),
        };
        let plan = Plan::new(model, &prompt, body);
        let created = unix_seconds();
        if body["stream"].as_bool() == Some(true) {
            let mut chunks = Vec::new();
            for (index, choice) in plan.choices.iter().enumerate() {
                for (i, word) in choice.words.iter().enumerate() {
                    let text = if i == 0 {
                        word.to_string()
                    } else {
                        format!(" {word}")
                    };
                    chunks.push(json!({
                        "id": plan.id("cmpl"), "object": "text_completion", "created": created,
                        "model": model,
                        "choices": [{"index": index, "text": text, "logprobs": null, "finish_reason": null}],
                    }));
                }
                chunks.push(json!({
                    "id": plan.id("cmpl"), "object": "text_completion", "created": created,
                    "model": model,
                    "choices": [{"index": index, "text": "", "logprobs": null, "finish_reason": choice.finish_reason}],
                }));
            }
            return self.stream(chunks, &plan, body, "cmpl", "text_completion");
        }
        let choices: Vec<Value> = plan
            .choices
            .iter()
            .enumerate()
            .map(|(index, choice)| {
                json!({"index": index, "text": choice.text(), "logprobs": null, "finish_reason": choice.finish_reason})
            })
            .collect();
        json_response(
            StatusCode::OK,
            &json!({
                "id": plan.id("cmpl"), "object": "text_completion", "created": created,
                "model": model, "choices": choices, "usage": plan.usage(),
            }),
        )
    }

    /// A server-sent event stream of `chunks`, then the usage chunk when the request asked
    /// for it, then `[DONE]`.
    fn stream(
        &self,
        mut chunks: Vec<Value>,
        plan: &Plan,
        body: &Value,
        id_prefix: &str,
        object: &str,
    ) -> Response<Body> {
        let include_usage = body["stream_options"]["include_usage"].as_bool() == Some(true);
        if include_usage {
            for chunk in &mut chunks {
                chunk["usage"] = Value::Null;
            }
            chunks.push(json!({
                "id": plan.id(id_prefix), "object": object, "created": unix_seconds(),
                "model": body["model"], "choices": [], "usage": plan.usage(),
            }));
        }
        let mut events: Vec<Bytes> = chunks
            .into_iter()
            .map(|chunk| Bytes::from(format!("data: {chunk}\n\n")))
            .collect();
        events.push(Bytes::from_static(b"data: [DONE]\n\n"));
        let delay = self.config.stream_chunk_delay;
        let stream = futures_util::stream::unfold(
            (events.into_iter(), true),
            move |(mut events, first)| async move {
                let event = events.next()?;
                if !first && !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                Some((Ok::<_, Infallible>(event), (events, false)))
            },
        );
        let mut response = Response::new(Body::from_stream(stream));
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        response
    }

    fn embeddings(&self, model: &str, body: &Value) -> Response<Body> {
        let inputs: Vec<String> = match &body["input"] {
            Value::String(text) => vec![text.clone()],
            Value::Array(items) if items.iter().all(Value::is_number) && !items.is_empty() => {
                vec![Value::Array(items.clone()).to_string()]
            }
            Value::Array(items) if !items.is_empty() => items
                .iter()
                .map(|item| {
                    item.as_str()
                        .map_or_else(|| item.to_string(), str::to_string)
                })
                .collect(),
            _ => return invalid("'input' is a required property", "input"),
        };
        let dimensions = body["dimensions"]
            .as_u64()
            .and_then(|d| usize::try_from(d).ok())
            .filter(|d| (1..=65536).contains(d))
            .unwrap_or(self.config.embedding_dimensions);
        let base64 = body["encoding_format"].as_str() == Some("base64");
        let data: Vec<Value> = inputs
            .iter()
            .enumerate()
            .map(|(index, input)| {
                let vector = embedding(input, dimensions);
                let embedding = if base64 {
                    let bytes: Vec<u8> = vector.iter().flat_map(|x| x.to_le_bytes()).collect();
                    Value::String(encode_base64(&bytes))
                } else {
                    json!(vector)
                };
                json!({"object": "embedding", "index": index, "embedding": embedding})
            })
            .collect();
        let tokens: u64 = inputs.iter().map(|i| estimate_tokens(i)).sum();
        json_response(
            StatusCode::OK,
            &json!({
                "object": "list", "data": data, "model": model,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }),
        )
    }
}

/// What a completion request produces: one word list per choice and the usage figures.
struct Plan {
    seed: u64,
    prompt_tokens: u64,
    choices: Vec<Choice>,
    reasoning: bool,
}

struct Choice {
    words: Vec<&'static str>,
    finish_reason: &'static str,
}

impl Choice {
    fn text(&self) -> String {
        self.words.join(" ")
    }
}

impl Plan {
    fn new(model: &str, prompt: &str, body: &Value) -> Plan {
        let seed = fnv1a(prompt.as_bytes()) ^ fnv1a(model.as_bytes()).rotate_left(17);
        let limit = body["max_completion_tokens"]
            .as_u64()
            .or_else(|| body["max_tokens"].as_u64());
        let n = body["n"].as_u64().unwrap_or(1).clamp(1, MAX_CHOICES);
        let choices = (0..n)
            .map(|index| {
                let mut state = seed.wrapping_add(index);
                let length = 8 + splitmix64(state) % 17;
                let (length, finish_reason) = match limit {
                    Some(limit) if limit < length => (limit, "length"),
                    _ => (length, "stop"),
                };
                let words = (0..length)
                    .map(|_| {
                        state = splitmix64(state);
                        WORDS[(state % WORDS.len() as u64) as usize]
                    })
                    .collect();
                Choice {
                    words,
                    finish_reason,
                }
            })
            .collect();
        Plan {
            seed,
            prompt_tokens: estimate_tokens(prompt),
            choices,
            reasoning: model.starts_with("mock-reasoning"),
        }
    }

    fn id(&self, prefix: &str) -> String {
        format!("{prefix}-mock{:016x}", self.seed)
    }

    fn usage(&self) -> Value {
        let words: u64 = self.choices.iter().map(|c| c.words.len() as u64).sum();
        let reasoning = if self.reasoning {
            words * REASONING_TOKENS_PER_WORD
        } else {
            0
        };
        let cached = if self.prompt_tokens >= CACHE_THRESHOLD_TOKENS {
            // OpenAI caches prefixes in 128-token steps; say half the prompt was a hit.
            self.prompt_tokens / 2 / 128 * 128
        } else {
            0
        };
        // Like OpenAI, completion_tokens includes the reasoning tokens.
        let completion = words + reasoning;
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": self.prompt_tokens + completion,
            "prompt_tokens_details": {"cached_tokens": cached},
            "completion_tokens_details": {"reasoning_tokens": reasoning},
        })
    }
}

/// About four characters per token, as OpenAI's rule of thumb; at least one.
fn estimate_tokens(text: &str) -> u64 {
    (text.chars().count() as u64).div_ceil(4).max(1)
}

/// A deterministic unit vector for `input`.
fn embedding(input: &str, dimensions: usize) -> Vec<f32> {
    let mut state = fnv1a(input.as_bytes());
    let mut vector: Vec<f32> = (0..dimensions)
        .map(|_| {
            state = splitmix64(state);
            ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect();
    let norm = vector.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        for x in &mut vector {
            *x /= norm;
        }
    }
    vector
}

fn injected_error(status: StatusCode) -> Response<Body> {
    let (error_type, code) = match status.as_u16() {
        401 => ("invalid_request_error", "invalid_api_key"),
        403 => ("invalid_request_error", "forbidden"),
        404 => ("invalid_request_error", "model_not_found"),
        429 => ("requests", "rate_limit_exceeded"),
        400..=499 => ("invalid_request_error", "mock_error"),
        _ => ("server_error", "mock_error"),
    };
    let message = format!("mock provider: injected {status}");
    let mut response = error_response(status, &message, error_type, Some(code));
    if status == StatusCode::TOO_MANY_REQUESTS {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    response
}

fn invalid(message: &str, param: &str) -> Response<Body> {
    json_response(
        StatusCode::BAD_REQUEST,
        &json!({"error": {"message": message, "type": "invalid_request_error", "param": param, "code": null}}),
    )
}

fn models() -> Value {
    let ids = [
        "mock",
        "mock-large",
        "mock-reasoning",
        "mock-error-429",
        "mock-error-503",
        "mock-timeout",
    ];
    json!({
        "object": "list",
        "data": ids.iter().map(|id| json!({"id": id, "object": "model", "created": 0, "owned_by": "sluice-mock"})).collect::<Vec<_>>(),
    })
}

fn unix_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn encode_base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut text = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                text.push(ALPHABET[((n >> shift) & 63) as usize] as char);
            } else {
                text.push('=');
            }
        }
    }
    text
}

/// The mock served over HTTP: `/v1/chat/completions`, `/v1/completions`, `/v1/embeddings`
/// and `/v1/models`, answering exactly as the in-process mock does.
pub fn mock_router(config: MockConfig) -> Router {
    let mock = Arc::new(MockProvider::new(config));
    Router::new()
        .route("/v1/chat/completions", post(serve_chat))
        .route("/v1/completions", post(serve_completions))
        .route("/v1/embeddings", post(serve_embeddings))
        .route("/v1/models", get(serve_models))
        .with_state(mock)
}

async fn serve(mock: &MockProvider, operation: Operation, body: Bytes) -> Response<Body> {
    match serde_json::from_slice::<Value>(&body) {
        Ok(body) if body.is_object() => mock.respond(operation, &body).await,
        _ => invalid("the body must be a JSON object", "body"),
    }
}

async fn serve_chat(State(mock): State<Arc<MockProvider>>, body: Bytes) -> Response<Body> {
    serve(&mock, Operation::Chat, body).await
}

async fn serve_completions(State(mock): State<Arc<MockProvider>>, body: Bytes) -> Response<Body> {
    serve(&mock, Operation::TextCompletion, body).await
}

async fn serve_embeddings(State(mock): State<Arc<MockProvider>>, body: Bytes) -> Response<Body> {
    serve(&mock, Operation::Embeddings, body).await
}

async fn serve_models(State(mock): State<Arc<MockProvider>>) -> Response<Body> {
    mock.respond(Operation::Models, &json!({})).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn call(mock: &MockProvider, operation: Operation, body: Value) -> (StatusCode, Value) {
        let response = mock.respond(operation, &body).await;
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    #[tokio::test]
    async fn completions_are_deterministic_and_usage_matches_the_words() {
        let mock = MockProvider::new(MockConfig::default());
        let body =
            json!({"model": "mock", "messages": [{"role": "user", "content": "hello there"}]});
        let (status, first) = call(&mock, Operation::Chat, body.clone()).await;
        assert_eq!(status, StatusCode::OK);
        let (_, second) = call(&mock, Operation::Chat, body).await;
        assert_eq!(first["choices"], second["choices"]);
        let text = first["choices"][0]["message"]["content"].as_str().unwrap();
        let words = text.split(' ').count() as u64;
        assert_eq!(first["usage"]["completion_tokens"], words);
        assert_eq!(first["usage"]["prompt_tokens"], 3); // 11 chars / 4, rounded up
        assert_eq!(first["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
    }

    #[tokio::test]
    async fn long_prompts_report_cached_tokens_and_reasoning_models_reasoning_tokens() {
        let mock = MockProvider::new(MockConfig::default());
        let prompt = "x".repeat(8000);
        let body = json!({"model": "mock-reasoning-small", "messages": [{"role": "user", "content": prompt}], "max_tokens": 3});
        let (_, answer) = call(&mock, Operation::Chat, body).await;
        assert_eq!(answer["usage"]["prompt_tokens"], 2000);
        assert_eq!(
            answer["usage"]["prompt_tokens_details"]["cached_tokens"],
            896
        );
        assert_eq!(answer["choices"][0]["finish_reason"], "length");
        assert_eq!(
            answer["usage"]["completion_tokens_details"]["reasoning_tokens"],
            12
        );
        assert_eq!(answer["usage"]["completion_tokens"], 15);
    }

    #[tokio::test]
    async fn error_models_answer_their_status_in_openai_format() {
        let mock = MockProvider::new(MockConfig::default());
        for status in [400u16, 429, 503] {
            let body = json!({"model": format!("mock-error-{status}"), "messages": []});
            let (got, answer) = call(&mock, Operation::Chat, body).await;
            assert_eq!(got.as_u16(), status);
            assert!(
                answer["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains(&status.to_string())
            );
        }
    }

    #[tokio::test]
    async fn the_failure_rate_is_reproducible_from_the_seed() {
        let config = MockConfig {
            failure_rate: 0.3,
            seed: 7,
            ..MockConfig::default()
        };
        let body = json!({"model": "mock", "input": "x"});
        let mut runs = Vec::new();
        for _ in 0..2 {
            let mock = MockProvider::new(config.clone());
            let mut statuses = Vec::new();
            for _ in 0..200 {
                statuses.push(call(&mock, Operation::Embeddings, body.clone()).await.0);
            }
            runs.push(statuses);
        }
        assert_eq!(runs[0], runs[1]);
        let failures = runs[0]
            .iter()
            .filter(|s| **s == StatusCode::SERVICE_UNAVAILABLE)
            .count();
        assert!((30..90).contains(&failures), "{failures}");
    }

    #[tokio::test]
    async fn embeddings_have_the_configured_dimension_and_unit_length() {
        let mock = MockProvider::new(MockConfig {
            embedding_dimensions: 16,
            ..MockConfig::default()
        });
        let body = json!({"model": "mock-embed", "input": ["a", "b"]});
        let (_, answer) = call(&mock, Operation::Embeddings, body).await;
        let vector: Vec<f64> =
            serde_json::from_value(answer["data"][1]["embedding"].clone()).unwrap();
        assert_eq!(vector.len(), 16);
        let norm: f64 = vector.iter().map(|x| x * x).sum::<f64>().sqrt();
        assert!((norm - 1.0).abs() < 1e-3, "{norm}");
        assert_eq!(answer["usage"]["prompt_tokens"], 2);
    }

    #[test]
    fn base64_matches_the_standard_alphabet_and_padding() {
        assert_eq!(encode_base64(b""), "");
        assert_eq!(encode_base64(b"f"), "Zg==");
        assert_eq!(encode_base64(b"fo"), "Zm8=");
        assert_eq!(encode_base64(b"foo"), "Zm9v");
        assert_eq!(encode_base64(b"foobar"), "Zm9vYmFy");
    }
}
