//! The gateway on a real socket, driven by real HTTP clients (async-openai and reqwest).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_openai::Client;
use async_openai::config::OpenAIConfig;
use async_openai::error::OpenAIError;
use async_openai::types::chat::{
    ChatCompletionRequestUserMessageArgs, CreateChatCompletionRequestArgs,
};
use async_openai::types::embeddings::CreateEmbeddingRequestArgs;
use futures_util::StreamExt;
use serde_json::{Value, json};
use sluice_gateway::config::MockConfig;
use sluice_gateway::event::{Operation, ProviderKind};
use sluice_gateway::{Gateway, GatewayConfig, RequestEvent, RunningGateway, mock_router};
use sluice_pipeline::Telemetry;
use sluice_pipeline::config::KeyPath;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

struct Harness {
    gateway: Option<RunningGateway>,
    events: mpsc::Receiver<RequestEvent>,
    base: String,
    telemetry: Telemetry,
}

impl Harness {
    async fn start(config: &str) -> Harness {
        Harness::with_capacity(config, 64).await
    }

    async fn with_capacity(config: &str, capacity: usize) -> Harness {
        let table: toml::Table = toml::from_str(config).unwrap();
        let config = GatewayConfig::from_table(&KeyPath::of(&["gateway"]), table).unwrap();
        let (sender, events) = mpsc::channel(capacity);
        let telemetry = Telemetry::new();
        let gateway = Gateway::new(config, sender, telemetry.clone()).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let gateway = gateway.serve(listener).unwrap();
        let base = format!("http://{}/v1", gateway.local_addr());
        Harness {
            gateway: Some(gateway),
            events,
            base,
            telemetry,
        }
    }

    fn openai(&self, key: &str) -> Client<OpenAIConfig> {
        Client::with_config(
            OpenAIConfig::new()
                .with_api_base(&self.base)
                .with_api_key(key),
        )
    }

    async fn event(&mut self) -> RequestEvent {
        tokio::time::timeout(Duration::from_secs(10), self.events.recv())
            .await
            .expect("an event within 10s")
            .expect("the gateway is running")
    }

    async fn post(&self, path: &str, key: Option<&str>, body: Value) -> reqwest::Response {
        let mut request = reqwest::Client::new()
            .post(format!("{}{path}", self.base))
            .json(&body);
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        request.send().await.unwrap()
    }
}

const MOCK_ONLY: &str = r#"
    [providers.local]
    kind = "mock"
    [[routes]]
    model = "gpt-4o"
    targets = [{ provider = "local", model = "mock-large" }]
    [[routes]]
    model = "embed"
    targets = [{ provider = "local" }]
"#;

fn user_message(text: &str) -> async_openai::types::chat::ChatCompletionRequestMessage {
    ChatCompletionRequestUserMessageArgs::default()
        .content(text)
        .build()
        .unwrap()
        .into()
}

fn api_status(error: OpenAIError) -> (u16, Option<String>) {
    match error {
        OpenAIError::ApiError(error) => (error.status_code.as_u16(), error.api_error.code),
        other => panic!("expected an API error, got {other:?}"),
    }
}

#[tokio::test]
async fn chat_completion_is_answered_and_its_event_has_the_exact_usage() {
    let mut harness = Harness::start(MOCK_ONLY).await;
    let request = CreateChatCompletionRequestArgs::default()
        .model("gpt-4o")
        .messages(vec![user_message("Say something about rivers")])
        .max_tokens(100u32)
        .temperature(0.5)
        .build()
        .unwrap();
    let answer = harness
        .openai("sk-test")
        .chat()
        .create(request)
        .await
        .unwrap();
    let usage = answer.usage.unwrap();
    assert!(
        !answer.choices[0]
            .message
            .content
            .as_deref()
            .unwrap()
            .is_empty()
    );
    assert_eq!(answer.model, "mock-large");

    let event = harness.event().await;
    assert_eq!(event.operation, Operation::Chat);
    assert_eq!(event.status_code, 200);
    assert_eq!(event.error, None);
    assert_eq!(event.requested_model.as_deref(), Some("gpt-4o"));
    assert_eq!(event.response_model.as_deref(), Some("mock-large"));
    assert_eq!(event.response_id.as_deref(), Some(answer.id.as_str()));
    assert_eq!(
        event.usage.input_tokens,
        Some(u64::from(usage.prompt_tokens))
    );
    assert_eq!(
        event.usage.output_tokens,
        Some(u64::from(usage.completion_tokens))
    );
    assert_eq!(event.finish_reasons, ["stop"]);
    assert_eq!(event.parameters.max_tokens, Some(100));
    assert_eq!(event.parameters.temperature, Some(0.5));
    assert!(!event.stream);
    assert_eq!(event.attempts.len(), 1);
    let attempt = &event.attempts[0];
    assert_eq!(attempt.provider.name, "local");
    assert_eq!(attempt.provider.kind, ProviderKind::Mock);
    assert_eq!(attempt.model, "mock-large");
    assert_eq!(attempt.status_code, Some(200));
    assert!(!attempt.fallback);
    // No keys configured: the token is known by a short hash, never by itself.
    assert_eq!(event.key_id.len(), 12);
    assert!(!serde_json::to_string(&event).unwrap().contains("sk-test"));
    let t = &event.timings;
    let routed = t.routing_done_unix_nano.unwrap();
    assert!(t.start_unix_nano <= routed && routed <= attempt.start_unix_nano);
    assert!(attempt.start_unix_nano <= attempt.end_unix_nano);
    assert!(attempt.end_unix_nano <= t.end_unix_nano);
    // The content is not captured by default.
    assert!(event.content.is_none());
    harness.gateway.take().unwrap().shutdown().await.unwrap();
}

#[tokio::test]
async fn streamed_chat_hides_the_usage_chunk_it_asked_for_and_still_counts_tokens() {
    let mut harness = Harness::start(MOCK_ONLY).await;
    let prompt = "Tell me about streams";
    // The same prompt unstreamed gives the figures the stream must report.
    let plain = harness
        .post(
            "/chat/completions",
            None,
            json!({"model": "gpt-4o", "messages": [{"role": "user", "content": prompt}]}),
        )
        .await
        .json::<Value>()
        .await
        .unwrap();
    harness.event().await;

    let request = CreateChatCompletionRequestArgs::default()
        .model("gpt-4o")
        .messages(vec![user_message(prompt)])
        .build()
        .unwrap();
    let mut stream = harness
        .openai("sk-test")
        .chat()
        .create_stream(request)
        .await
        .unwrap();
    let mut text = String::new();
    let mut chunks = 0;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        chunks += 1;
        assert!(chunk.usage.is_none(), "the client did not ask for usage");
        assert!(!chunk.choices.is_empty(), "no usage-only chunk");
        if let Some(content) = &chunk.choices[0].delta.content {
            text.push_str(content);
        }
    }
    assert!(chunks > 3, "{chunks} chunks");
    assert_eq!(
        text,
        plain["choices"][0]["message"]["content"].as_str().unwrap()
    );

    let event = harness.event().await;
    assert!(event.stream);
    assert_eq!(event.status_code, 200);
    assert_eq!(
        event.usage.input_tokens,
        plain["usage"]["prompt_tokens"].as_u64()
    );
    assert_eq!(
        event.usage.output_tokens,
        plain["usage"]["completion_tokens"].as_u64()
    );
    assert_eq!(event.finish_reasons, ["stop"]);
    assert!(event.response_id.unwrap().starts_with("chatcmpl-"));
    let first = event.timings.first_chunk_unix_nano.unwrap();
    let last = event.timings.last_chunk_unix_nano.unwrap();
    assert!(event.attempts[0].start_unix_nano <= first && first <= last);
    assert!(last <= event.timings.end_unix_nano);
}

#[tokio::test]
async fn streamed_chat_keeps_the_usage_chunk_when_the_client_asked() {
    let mut harness = Harness::start(MOCK_ONLY).await;
    let response = harness
        .post(
            "/chat/completions",
            None,
            json!({"model": "gpt-4o", "stream": true, "stream_options": {"include_usage": true},
                   "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
    assert_eq!(
        response.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    let text = response.text().await.unwrap();
    let usage_chunks: Vec<Value> = text
        .split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str::<Value>(d).unwrap())
        .filter(|c| c["choices"].as_array().unwrap().is_empty())
        .collect();
    assert_eq!(usage_chunks.len(), 1, "{text}");
    assert!(text.ends_with("data: [DONE]\n\n"));
    let event = harness.event().await;
    assert_eq!(
        event.usage.output_tokens,
        usage_chunks[0]["usage"]["completion_tokens"].as_u64()
    );

    // Without include_usage, the raw stream has no usage-only chunk either.
    let text = harness
        .post(
            "/chat/completions",
            None,
            json!({"model": "gpt-4o", "stream": true, "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await
        .text()
        .await
        .unwrap();
    assert!(!text.contains("\"choices\":[]"), "{text}");
    assert!(text.ends_with("data: [DONE]\n\n"));
    assert!(harness.event().await.usage.output_tokens.unwrap() > 0);
}

#[tokio::test]
async fn embeddings_and_text_completions_and_models_are_served() {
    let mut harness = Harness::start(MOCK_ONLY).await;
    let request = CreateEmbeddingRequestArgs::default()
        .model("embed")
        .input(vec!["one text", "another text"])
        .build()
        .unwrap();
    let answer = harness
        .openai("k")
        .embeddings()
        .create(request)
        .await
        .unwrap();
    assert_eq!(answer.data.len(), 2);
    assert_eq!(answer.data[0].embedding.len(), 1536);
    let event = harness.event().await;
    assert_eq!(event.operation, Operation::Embeddings);
    assert_eq!(
        event.usage.input_tokens,
        Some(u64::from(answer.usage.prompt_tokens))
    );
    assert_eq!(event.usage.output_tokens, None);

    let answer: Value = harness
        .post(
            "/completions",
            None,
            json!({"model": "gpt-4o", "prompt": "Once upon", "max_tokens": 3}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(answer["choices"][0]["finish_reason"], "length");
    let event = harness.event().await;
    assert_eq!(event.operation, Operation::TextCompletion);
    assert_eq!(event.usage.output_tokens, Some(3));
    assert_eq!(event.finish_reasons, ["length"]);
    assert_eq!(event.key_id, sluice_gateway::ANONYMOUS);

    let models = harness.openai("k").models().list().await.unwrap();
    let ids: Vec<&str> = models.data.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(ids, ["gpt-4o", "embed"]);
    assert_eq!(harness.event().await.operation, Operation::Models);
}

#[tokio::test]
async fn an_unknown_model_is_404_model_not_found() {
    let mut harness = Harness::start(MOCK_ONLY).await;
    let request = CreateChatCompletionRequestArgs::default()
        .model("gpt-9")
        .messages(vec![user_message("hi")])
        .build()
        .unwrap();
    let error = harness
        .openai("k")
        .chat()
        .create(request)
        .await
        .unwrap_err();
    assert_eq!(api_status(error), (404, Some("model_not_found".into())));
    let event = harness.event().await;
    assert_eq!(event.status_code, 404);
    assert_eq!(event.error.unwrap().error_type, "model_not_found");
    assert!(event.attempts.is_empty());
    assert!(event.timings.routing_done_unix_nano.is_none());
}

const WITH_KEYS: &str = r#"
    [providers.local]
    kind = "mock"
    [[routes]]
    model = "gpt-4o"
    targets = [{ provider = "local" }]
    [[routes]]
    model = "gpt-4o-mini"
    targets = [{ provider = "local" }]
    [[keys]]
    id = "team-a"
    key = "key-a"
    models = ["gpt-4o"]
    [[keys]]
    id = "team-b"
    key = "key-b"
    requests_per_minute = 1
"#;

fn chat(model: &str) -> async_openai::types::chat::CreateChatCompletionRequest {
    CreateChatCompletionRequestArgs::default()
        .model(model)
        .messages(vec![user_message("hi")])
        .build()
        .unwrap()
}

#[tokio::test]
async fn a_bad_or_missing_key_is_401_and_reported() {
    let mut harness = Harness::start(WITH_KEYS).await;
    let error = harness
        .openai("nope")
        .chat()
        .create(chat("gpt-4o"))
        .await
        .unwrap_err();
    assert_eq!(api_status(error), (401, Some("unauthorized".into())));
    let event = harness.event().await;
    assert_eq!(event.status_code, 401);
    assert_eq!(event.error.unwrap().error_type, "unauthorized");
    assert_eq!(event.key_id, "unauthenticated");

    let response = harness
        .post("/chat/completions", None, json!({"model": "gpt-4o"}))
        .await;
    assert_eq!(response.status(), 401);
    let body: Value = response.json().await.unwrap();
    assert!(body["error"]["message"].is_string());
    assert_eq!(harness.event().await.status_code, 401);

    harness
        .openai("key-a")
        .chat()
        .create(chat("gpt-4o"))
        .await
        .unwrap();
    assert_eq!(harness.event().await.key_id, "team-a");
}

#[tokio::test]
async fn a_model_outside_the_keys_allow_list_is_403() {
    let mut harness = Harness::start(WITH_KEYS).await;
    let error = harness
        .openai("key-a")
        .chat()
        .create(chat("gpt-4o-mini"))
        .await
        .unwrap_err();
    assert_eq!(api_status(error), (403, Some("forbidden".into())));
    let event = harness.event().await;
    assert_eq!(event.key_id, "team-a");
    assert_eq!(event.error.unwrap().error_type, "forbidden");
    // The key's model list is what /v1/models shows it.
    let models = harness.openai("key-a").models().list().await.unwrap();
    assert_eq!(models.data.len(), 1);
}

#[tokio::test]
async fn a_key_over_its_rate_gets_429_with_retry_after() {
    let mut harness = Harness::start(WITH_KEYS).await;
    harness
        .openai("key-b")
        .chat()
        .create(chat("gpt-4o"))
        .await
        .unwrap();
    assert_eq!(harness.event().await.status_code, 200);
    // reqwest rather than async-openai here: async-openai backs off and retries 429s by
    // itself until the minute is over.
    let response = harness
        .post(
            "/chat/completions",
            Some("key-b"),
            json!({"model": "gpt-4o"}),
        )
        .await;
    assert_eq!(response.status(), 429);
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((59..=60).contains(&retry_after), "{retry_after}");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limit_exceeded");
    let event = harness.event().await;
    assert_eq!(event.key_id, "team-b");
    assert_eq!(event.status_code, 429);
    assert_eq!(event.error.unwrap().error_type, "rate_limited");
    // Other keys are not affected.
    harness
        .openai("key-a")
        .chat()
        .create(chat("gpt-4o"))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_failing_target_falls_back_to_the_next_and_both_attempts_are_recorded() {
    let mut harness = Harness::start(
        r#"
        [providers.flaky]
        kind = "mock"
        [providers.slow]
        kind = "mock"
        timeout = "50ms"
        [providers.good]
        kind = "mock"
        [[routes]]
        model = "gpt-4o"
        targets = [{ provider = "flaky", model = "mock-error-503" }, { provider = "good", model = "mock" }]
        [[routes]]
        model = "slow"
        targets = [{ provider = "slow", model = "mock-timeout" }, { provider = "flaky", model = "mock-error-429" }, { provider = "good" }]
        "#,
    )
    .await;
    let answer = harness
        .openai("k")
        .chat()
        .create(chat("gpt-4o"))
        .await
        .unwrap();
    assert_eq!(answer.model, "mock");
    let event = harness.event().await;
    assert_eq!(event.status_code, 200);
    assert_eq!(event.attempts.len(), 2);
    let (first, second) = (&event.attempts[0], &event.attempts[1]);
    assert_eq!(
        (first.provider.name.as_str(), first.status_code),
        ("flaky", Some(503))
    );
    assert_eq!(first.error_type.as_deref(), Some("503"));
    assert!(first.error_message.as_deref().unwrap().contains("503"));
    assert!(!first.fallback);
    assert_eq!(
        (second.provider.name.as_str(), second.status_code),
        ("good", Some(200))
    );
    assert!(second.fallback && second.error_type.is_none());
    assert!(first.end_unix_nano <= second.start_unix_nano);
    assert_ne!(first.span_id, second.span_id);
    assert_eq!(event.provider.unwrap().name, "good");

    harness
        .openai("k")
        .chat()
        .create(chat("slow"))
        .await
        .unwrap();
    let event = harness.event().await;
    let errors: Vec<Option<&str>> = event
        .attempts
        .iter()
        .map(|a| a.error_type.as_deref())
        .collect();
    assert_eq!(errors, [Some("timeout"), Some("429"), None]);
    assert_eq!(event.attempts[0].status_code, None);
}

#[tokio::test]
async fn an_upstream_400_goes_back_to_the_client_without_fallback() {
    let mut harness = Harness::start(
        r#"
        [providers.local]
        kind = "mock"
        [[routes]]
        model = "gpt-4o"
        targets = [{ provider = "local", model = "mock-error-400" }, { provider = "local", model = "mock" }]
        [[routes]]
        model = "down"
        targets = [{ provider = "local", model = "mock-error-503" }]
        "#,
    )
    .await;
    let error = harness
        .openai("k")
        .chat()
        .create(chat("gpt-4o"))
        .await
        .unwrap_err();
    assert_eq!(api_status(error).0, 400);
    let event = harness.event().await;
    assert_eq!(event.status_code, 400);
    assert_eq!(event.attempts.len(), 1);
    assert_eq!(event.error.unwrap().error_type, "400");

    // When every target fails, the last failure is what the client sees.
    let error = harness
        .openai("k")
        .chat()
        .create(chat("down"))
        .await
        .unwrap_err();
    assert_eq!(api_status(error).0, 503);
    assert_eq!(harness.event().await.error.unwrap().error_type, "503");
}

/// An OpenAI-compatible upstream on a socket (the mock over HTTP) that records what it got.
async fn recording_upstream() -> (String, Arc<Mutex<Vec<(http::HeaderMap, Value)>>>) {
    let seen: Arc<Mutex<Vec<(http::HeaderMap, Value)>>> = Arc::default();
    let record = seen.clone();
    let router = mock_router(MockConfig::default()).layer(axum::middleware::from_fn(
        move |request: axum::extract::Request, next: axum::middleware::Next| {
            let record = record.clone();
            async move {
                let (parts, body) = request.into_parts();
                let bytes = axum::body::to_bytes(body, usize::MAX).await.unwrap();
                let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                record.lock().unwrap().push((parts.headers.clone(), json));
                let request =
                    axum::extract::Request::from_parts(parts, axum::body::Body::from(bytes));
                next.run(request).await
            }
        },
    ));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    (format!("http://{address}/v1"), seen)
}

#[tokio::test]
async fn trace_context_and_openrouter_fields_reach_the_event_not_the_upstream() {
    let (upstream, seen) = recording_upstream().await;
    let mut harness = Harness::start(&format!(
        r#"
        capture_headers = ["x-team"]
        [providers.remote]
        kind = "openai"
        base_url = "{upstream}"
        api_key = "sk-upstream"
        [[routes]]
        model = "*"
        targets = [{{ provider = "remote", model = "mock" }}]
        "#
    ))
    .await;
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let response = reqwest::Client::new()
        .post(format!("{}/chat/completions", harness.base))
        .header("traceparent", traceparent)
        .header("tracestate", "vendor=1")
        .header("x-team", "search")
        .json(&json!({
            "model": "anything",
            "messages": [{"role": "user", "content": "hi"}],
            "user": "user_12345",
            "session_id": "session_abc",
            "trace": {"trace_name": "Chat Handler", "generation_name": "Generate", "environment": "staging"},
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers().contains_key("x-request-id"));

    let event = harness.event().await;
    let (headers, body) = seen.lock().unwrap()[0].clone();
    let sent = headers["traceparent"].to_str().unwrap();
    let attempt = &event.attempts[0];
    assert_eq!(
        sent,
        format!(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-{}-01",
            sluice_gateway::trace::encode_hex(&attempt.span_id)
        )
    );
    assert_eq!(headers["tracestate"], "vendor=1");
    assert_eq!(headers["authorization"], "Bearer sk-upstream");
    assert!(
        body.get("trace").is_none() && body.get("session_id").is_none(),
        "{body}"
    );
    assert_eq!(body["user"], "user_12345");
    assert_eq!(body["model"], "mock");

    assert_eq!(
        sluice_gateway::trace::encode_hex(&event.trace.trace_id),
        "4bf92f3577b34da6a3ce929d0e0e4736"
    );
    assert_eq!(
        event
            .trace
            .parent_span_id
            .map(|id| sluice_gateway::trace::encode_hex(&id))
            .as_deref(),
        Some("00f067aa0ba902b7")
    );
    assert!(event.sampled);
    assert!(event.inbound_trace.unwrap().sampled);
    assert_eq!(event.user_id.as_deref(), Some("user_12345"));
    assert_eq!(event.session_id.as_deref(), Some("session_abc"));
    let metadata = event.trace_metadata.unwrap();
    assert_eq!(metadata.trace_name.as_deref(), Some("Chat Handler"));
    assert_eq!(metadata.generation_name.as_deref(), Some("Generate"));
    assert_eq!(metadata.metadata["environment"], "staging");
    assert_eq!(
        event.headers,
        [("x-team".to_string(), "search".to_string())]
    );
    assert_eq!(attempt.provider.kind, ProviderKind::Openai);
    assert_eq!(attempt.server_address.as_deref(), Some("127.0.0.1"));
    assert!(attempt.server_port.is_some());
    assert!(!event.parameters.other.contains_key("trace"));

    // An unsampled parent is honoured by the default parent-based sampler.
    reqwest::Client::new()
        .post(format!("{}/chat/completions", harness.base))
        .header("traceparent", traceparent.replace("-01", "-00"))
        .json(&json!({"model": "x", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert!(!harness.event().await.sampled);
    let (headers, _) = seen.lock().unwrap()[1].clone();
    assert!(headers["traceparent"].to_str().unwrap().ends_with("-00"));
}

#[tokio::test]
async fn streams_through_an_openai_upstream_are_proxied_and_counted() {
    let (upstream, seen) = recording_upstream().await;
    let mut harness = Harness::start(&format!(
        r#"
        [providers.remote]
        kind = "openai"
        base_url = "{upstream}/"
        [[routes]]
        model = "*"
        targets = [{{ provider = "remote" }}]
        "#
    ))
    .await;
    let mut stream = harness
        .openai("k")
        .chat()
        .create_stream(chat("mock"))
        .await
        .unwrap();
    let mut chunks = 0;
    while let Some(chunk) = stream.next().await {
        assert!(!chunk.unwrap().choices.is_empty());
        chunks += 1;
    }
    assert!(chunks > 3);
    let event = harness.event().await;
    assert!(event.usage.output_tokens.unwrap() > 0);
    let (_, body) = seen.lock().unwrap()[0].clone();
    assert_eq!(body["stream_options"]["include_usage"], true);
}

#[tokio::test]
async fn content_is_in_the_event_only_when_capture_is_full() {
    let secret = "zebra-unicorn-4711";
    for (capture, expected) in [("off", false), ("full", true)] {
        let mut harness =
            Harness::start(&format!("capture_content = \"{capture}\"\n{MOCK_ONLY}")).await;
        harness
            .post(
                "/chat/completions",
                None,
                json!({"model": "gpt-4o", "messages": [{"role": "user", "content": secret}]}),
            )
            .await;
        let event = harness.event().await;
        let text = serde_json::to_string(&event).unwrap();
        assert_eq!(text.contains(secret), expected, "{capture}: {text}");
        if expected {
            let content = event.content.unwrap();
            assert_eq!(content.input_messages[0].role, "user");
            assert_eq!(content.input_messages[0].content, secret);
            assert!(!content.output_messages[0].content.is_empty());
        }
        // Streams capture the concatenated deltas.
        harness
            .post(
                "/chat/completions",
                None,
                json!({"model": "gpt-4o", "stream": true, "messages": [{"role": "user", "content": secret}]}),
            )
            .await
            .text()
            .await
            .unwrap();
        let event = harness.event().await;
        assert_eq!(event.content.is_some(), expected);
        if let Some(content) = event.content {
            assert!(content.output_messages[0].content.contains(' '));
        }
    }
}

#[tokio::test]
async fn a_full_event_channel_drops_and_counts_without_failing_requests() {
    let mut harness = Harness::with_capacity(MOCK_ONLY, 1).await;
    for _ in 0..3 {
        let response = harness
            .post(
                "/chat/completions",
                None,
                json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}),
            )
            .await;
        assert_eq!(response.status(), 200);
    }
    let metrics = harness.telemetry.render();
    assert!(
        metrics.contains("sluice_gateway_events_dropped_total 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("sluice_gateway_requests_in_flight 0"),
        "{metrics}"
    );
    assert_eq!(harness.event().await.status_code, 200);
}

#[tokio::test]
async fn shutdown_lets_an_open_stream_finish() {
    let mut harness = Harness::start(
        r#"
        [providers.local]
        kind = "mock"
        stream_chunk_delay = "20ms"
        [[routes]]
        model = "*"
        targets = [{ provider = "local" }]
        "#,
    )
    .await;
    let response = harness
        .post(
            "/chat/completions",
            None,
            json!({"model": "mock", "stream": true, "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
    let mut body = response.bytes_stream();
    let first = body.next().await.unwrap().unwrap();
    assert!(first.starts_with(b"data: "));
    let shutdown = tokio::spawn(harness.gateway.take().unwrap().shutdown());
    let mut rest = Vec::new();
    while let Some(chunk) = body.next().await {
        rest.extend_from_slice(&chunk.unwrap());
    }
    assert!(rest.ends_with(b"data: [DONE]\n\n"));
    shutdown.await.unwrap().unwrap();
    let event = harness.event().await;
    assert_eq!(event.error, None);
    assert!(event.usage.output_tokens.is_some());
}

#[tokio::test]
async fn every_refusal_still_emits_one_event() {
    let mut harness = Harness::start(MOCK_ONLY).await;
    let client = reqwest::Client::new();
    let bad_json = client
        .post(format!("{}/chat/completions", harness.base))
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(bad_json.status(), 400);
    assert_eq!(
        harness.event().await.error.unwrap().error_type,
        "invalid_request"
    );
    let wrong_method = client
        .get(format!("{}/chat/completions", harness.base))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_method.status(), 405);
    assert_eq!(harness.event().await.status_code, 405);
    let unknown = client
        .get(format!("{}/nope", harness.base))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);
    let event = harness.event().await;
    assert_eq!(event.operation, Operation::Other);
    assert_eq!(event.http_path, "/v1/nope");
}
