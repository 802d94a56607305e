//! End to end: the real OpenAI client (`async-openai`) calls the AI gateway inside the real
//! `sluice` binary, whose `gateway` receiver sends the requests' spans, metrics and log records
//! through `batch` to a test OTLP/gRPC backend. For each kind of request (chat, streamed chat,
//! embeddings, fallback, and the refusals 401, 403, 404, 429) the backend must receive the span
//! tree, the attributes, the log record and the metrics, with the token counts the client got.

mod common;

use async_openai::error::OpenAIError;
use async_openai::types::chat::{
    ChatCompletionRequestMessage, ChatCompletionRequestUserMessageArgs,
    ChatCompletionStreamOptions, CompletionUsage, CreateChatCompletionRequestArgs, FinishReason,
};
use async_openai::types::embeddings::CreateEmbeddingRequestArgs;
use common::Sluice;
use common::backends::{Backend, Received};
use common::gateway::{
    Addresses, GatewayConfig, RequestTrace, bool_attr, contains, counter, grpc_exporter, histogram,
    int_attr, is_error, is_unset, log_records, openai, reencoded, rendered, spans, str_array_attr,
    str_attr,
};
use futures_util::StreamExt;
use opentelemetry_proto::tonic::logs::v1::{LogRecord, SeverityNumber};
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;

/// Providers, routes and keys: a plain route, a route whose first target always fails with
/// 503, an embeddings route, and three keys (allowed everything, allowed one model, allowed
/// one request a minute). No `*` route, so other model names have none.
const GATEWAY: &str = r#"
[gateway.providers.local]
kind = "mock"

[[gateway.routes]]
model = "gpt-4o"
targets = [{ provider = "local" }]

[[gateway.routes]]
model = "resilient"
targets = [{ provider = "local", model = "mock-error-503" }, { provider = "local", model = "mock-small" }]

[[gateway.routes]]
model = "text-embedding-3-small"
targets = [{ provider = "local" }]

[[gateway.keys]]
id = "admin"
key = "sk-admin-7f3c9a"

[[gateway.keys]]
id = "restricted"
key = "sk-restricted-51be02"
models = ["gpt-4o"]

[[gateway.keys]]
id = "throttled"
key = "sk-throttled-d04e77"
requests_per_minute = 1
"#;

const ADMIN_KEY: &str = "sk-admin-7f3c9a";
const RESTRICTED_KEY: &str = "sk-restricted-51be02";
const THROTTLED_KEY: &str = "sk-throttled-d04e77";

struct Deployment {
    // Dropped first: the binary stops before the backend does.
    _sluice: Sluice,
    backend: Backend,
    addresses: Addresses,
}

async fn deploy() -> Deployment {
    let backend = Backend::grpc().await;
    let (sluice, addresses) = GatewayConfig {
        gateway_keys: "",
        gateway_tables: GATEWAY,
        exporters: &grpc_exporter("backend", &backend.url()),
        exporter_names: &["backend"],
    }
    .start();
    Deployment {
        _sluice: sluice,
        backend,
        addresses,
    }
}

impl Deployment {
    /// Waits until the backend has `spans` spans, `logs` log records and metrics counting
    /// `requests` requests in total.
    async fn telemetry(&self, spans: usize, logs: usize, requests: i64) -> Received {
        let received = self
            .backend
            .recorder
            .wait_until(
                &format!("{spans} spans, {logs} log records, {requests} requests counted"),
                |r| {
                    r.span_count() >= spans
                        && r.log_record_count() >= logs
                        && counter(r, "sluice.gateway.requests", &[]) >= requests
                },
            )
            .await;
        assert_eq!(
            received.span_count(),
            spans,
            "{:#?}",
            common::gateway::spans(&received)
        );
        assert_eq!(received.log_record_count(), logs);
        assert_eq!(counter(&received, "sluice.gateway.requests", &[]), requests);
        received
    }
}

fn user_message(text: &str) -> ChatCompletionRequestMessage {
    ChatCompletionRequestUserMessageArgs::default()
        .content(text)
        .build()
        .unwrap()
        .into()
}

fn api_error(error: OpenAIError) -> (u16, Option<String>) {
    match error {
        OpenAIError::ApiError(error) => (error.status_code.as_u16(), error.api_error.code),
        other => panic!("expected an API error, got {other:?}"),
    }
}

/// Structure every request trace has: the SERVER span is a root named for the request, every
/// other span is its child in the same trace, within its time range.
fn assert_tree(trace: &RequestTrace, name: &str, client_names: &[&str], routed: bool) {
    let server = &trace.server;
    assert_eq!(server.name, name);
    assert_eq!(server.kind, SpanKind::Server as i32);
    assert!(server.parent_span_id.is_empty(), "no traceparent was sent");
    assert_eq!(server.trace_id.len(), 16);
    assert_eq!(server.span_id.len(), 8);
    assert!(server.start_time_unix_nano > 0);
    assert!(server.start_time_unix_nano <= server.end_time_unix_nano);
    match &trace.routing {
        Some(routing) => {
            assert!(routed, "a refused request has a routing span: {routing:?}");
            assert_eq!(routing.name, "provider routing");
        }
        None => assert!(!routed, "no routing span"),
    }
    let names: Vec<&str> = trace.clients.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, client_names);
    for span in trace.every_span().into_iter().skip(1) {
        assert_eq!(span.trace_id, server.trace_id);
        assert_eq!(span.parent_span_id, server.span_id);
        assert!(
            server.start_time_unix_nano <= span.start_time_unix_nano
                && span.start_time_unix_nano <= span.end_time_unix_nano
                && span.end_time_unix_nano <= server.end_time_unix_nano,
            "{} is outside the SERVER span's time",
            span.name
        );
    }
    if let (Some(routing), Some(first)) = (&trace.routing, trace.clients.first()) {
        assert!(routing.end_time_unix_nano <= first.start_time_unix_nano);
    }
}

/// The token counts of a span or record equal the usage the client was given.
fn assert_usage(
    attributes: &[opentelemetry_proto::tonic::common::v1::KeyValue],
    usage: &CompletionUsage,
) {
    assert_eq!(
        int_attr(attributes, "gen_ai.usage.input_tokens"),
        Some(i64::from(usage.prompt_tokens))
    );
    assert_eq!(
        int_attr(attributes, "gen_ai.usage.output_tokens"),
        Some(i64::from(usage.completion_tokens))
    );
}

/// The OpenInference token counts of the answering CLIENT span equal the client's usage.
fn assert_openinference_usage(span: &Span, usage: &CompletionUsage) {
    let a = &span.attributes;
    assert_eq!(str_attr(a, "openinference.span.kind"), Some("LLM"));
    assert_eq!(
        int_attr(a, "llm.token_count.prompt"),
        Some(i64::from(usage.prompt_tokens))
    );
    assert_eq!(
        int_attr(a, "llm.token_count.completion"),
        Some(i64::from(usage.completion_tokens))
    );
    assert_eq!(
        int_attr(a, "llm.token_count.total"),
        Some(i64::from(usage.total_tokens))
    );
}

/// The request's single log record: event name, severity, the SERVER span's ids and
/// attributes, and a body starting with `body_start`.
fn assert_log(record: &LogRecord, server: &Span, severity: SeverityNumber, body_start: &str) {
    assert_eq!(record.event_name, "sluice.gateway.request");
    assert_eq!(record.severity_number, severity as i32);
    assert_eq!(record.trace_id, server.trace_id);
    assert_eq!(record.span_id, server.span_id);
    assert_eq!(record.flags, 1, "the request was sampled");
    assert_eq!(record.time_unix_nano, server.end_time_unix_nano);
    let body = match record.body.as_ref().and_then(|b| b.value.as_ref()) {
        Some(opentelemetry_proto::tonic::common::v1::any_value::Value::StringValue(s)) => s,
        other => panic!("log body is not a string: {other:?}"),
    };
    assert!(
        body.starts_with(body_start),
        "{body:?} should start with {body_start:?}"
    );
    assert_eq!(rendered(&record.attributes), rendered(&server.attributes));
}

fn metric_count_is(received: &Received, name: &str, filter: &[(&str, &str)], expected: i64) {
    assert_eq!(
        counter(received, name, filter),
        expected,
        "{name} {filter:?}"
    );
}

#[tokio::test]
async fn chat_completion_becomes_a_span_tree_log_record_and_metrics_with_the_clients_usage() {
    let d = deploy().await;
    let request = CreateChatCompletionRequestArgs::default()
        .model("gpt-4o")
        .messages(vec![user_message("Tell me about the estuary at dawn")])
        .max_tokens(100u32)
        .temperature(0.5)
        .top_p(0.9)
        .user("user-7")
        .build()
        .unwrap();
    let answer = openai(d.addresses, ADMIN_KEY)
        .chat()
        .create(request)
        .await
        .unwrap();
    let usage = answer.usage.clone().unwrap();
    assert!(usage.prompt_tokens > 0 && usage.completion_tokens > 0);
    assert_eq!(answer.choices[0].finish_reason, Some(FinishReason::Stop));

    let received = d.telemetry(3, 1, 1).await;
    let trace = RequestTrace::find(&spans(&received), |_| true).unwrap();
    assert_tree(&trace, "POST /v1/chat/completions", &["chat gpt-4o"], true);

    let server = &trace.server;
    let a = &server.attributes;
    assert!(is_unset(server), "{:?}", server.status);
    assert_eq!(str_attr(a, "http.request.method"), Some("POST"));
    assert_eq!(str_attr(a, "url.path"), Some("/v1/chat/completions"));
    assert_eq!(int_attr(a, "http.response.status_code"), Some(200));
    assert_eq!(str_attr(a, "gen_ai.operation.name"), Some("chat"));
    assert_eq!(str_attr(a, "gen_ai.request.model"), Some("gpt-4o"));
    assert_eq!(str_attr(a, "gen_ai.provider.name"), Some("local"));
    assert_eq!(
        str_attr(a, "gen_ai.response.model"),
        Some(answer.model.as_str())
    );
    assert_eq!(str_attr(a, "gen_ai.response.id"), Some(answer.id.as_str()));
    assert_eq!(
        str_array_attr(a, "gen_ai.response.finish_reasons"),
        Some(vec!["stop".to_string()])
    );
    assert_eq!(int_attr(a, "gen_ai.request.max_tokens"), Some(100));
    assert_eq!(
        common::gateway::attr(a, "gen_ai.request.temperature").map(common::gateway::render),
        Some("0.5".to_string())
    );
    assert_eq!(
        common::gateway::attr(a, "gen_ai.request.top_p").map(common::gateway::render),
        Some("0.9".to_string())
    );
    assert_eq!(bool_attr(a, "gen_ai.request.stream"), Some(false));
    assert_eq!(str_attr(a, "sluice.api_key.id"), Some("admin"));
    assert_eq!(str_attr(a, "user.id"), Some("user-7"));
    assert_eq!(int_attr(a, "sluice.attempt.count"), Some(1));
    assert_eq!(str_attr(a, "error.type"), None);
    assert_usage(a, &usage);

    let routing = trace.routing.as_ref().unwrap();
    assert_eq!(routing.kind, SpanKind::Internal as i32);
    assert_eq!(
        str_attr(&routing.attributes, "gen_ai.request.model"),
        Some("gpt-4o")
    );
    assert_eq!(
        str_attr(&routing.attributes, "sluice.route.first_target"),
        Some("local")
    );
    assert_eq!(
        str_attr(&routing.attributes, "sluice.api_key.id"),
        Some("admin")
    );

    let client = &trace.clients[0];
    let c = &client.attributes;
    assert!(is_unset(client));
    assert_eq!(str_attr(c, "gen_ai.operation.name"), Some("chat"));
    assert_eq!(str_attr(c, "gen_ai.provider.name"), Some("local"));
    assert_eq!(str_attr(c, "gen_ai.request.model"), Some("gpt-4o"));
    assert_eq!(str_attr(c, "gen_ai.response.id"), Some(answer.id.as_str()));
    assert_eq!(int_attr(c, "http.response.status_code"), Some(200));
    assert_eq!(bool_attr(c, "sluice.attempt.fallback"), Some(false));
    assert_eq!(str_attr(c, "sluice.api_key.id"), Some("admin"));
    assert_eq!(str_attr(c, "llm.provider"), Some("local"));
    assert_eq!(str_attr(c, "llm.system"), Some("mock"));
    assert_eq!(str_attr(c, "llm.model_name"), Some(answer.model.as_str()));
    assert_eq!(str_attr(c, "error.type"), None);
    assert_eq!(
        str_attr(c, "input.value"),
        None,
        "content is not captured by default"
    );
    assert_usage(c, &usage);
    assert_openinference_usage(client, &usage);

    let logs = log_records(&received);
    assert_log(
        &logs[0],
        server,
        SeverityNumber::Info,
        "POST /v1/chat/completions 200 gpt-4o ",
    );
    let body = format!("{:?}", logs[0].body);
    assert!(
        body.contains(&format!(
            "{}+{} tokens",
            usage.prompt_tokens, usage.completion_tokens
        )),
        "{body}"
    );

    let series = [
        ("gen_ai.operation.name", "chat"),
        ("gen_ai.request.model", "gpt-4o"),
        ("gen_ai.response.model", answer.model.as_str()),
        ("gen_ai.provider.name", "local"),
        ("sluice.api_key.id", "admin"),
        ("http.response.status_code", "200"),
    ];
    metric_count_is(&received, "sluice.gateway.requests", &series, 1);
    metric_count_is(&received, "sluice.gateway.errors", &[], 0);
    let input = [&series[..], &[("gen_ai.token.type", "input")]].concat();
    let output = [&series[..], &[("gen_ai.token.type", "output")]].concat();
    assert_eq!(
        histogram(&received, "gen_ai.client.token.usage", &input),
        (1, f64::from(usage.prompt_tokens))
    );
    assert_eq!(
        histogram(&received, "gen_ai.client.token.usage", &output),
        (1, f64::from(usage.completion_tokens))
    );
    metric_count_is(
        &received,
        "sluice.gateway.tokens",
        &input,
        i64::from(usage.prompt_tokens),
    );
    metric_count_is(
        &received,
        "sluice.gateway.tokens",
        &output,
        i64::from(usage.completion_tokens),
    );
    let (count, seconds) = histogram(&received, "gen_ai.client.operation.duration", &series);
    assert_eq!(count, 1);
    let server_seconds = (server.end_time_unix_nano - server.start_time_unix_nano) as f64 / 1e9;
    assert!(
        seconds > 0.0 && seconds <= server_seconds + 1e-6,
        "{seconds} vs {server_seconds}"
    );
    assert_eq!(
        histogram(&received, "gen_ai.server.time_to_first_token", &[]).0,
        0
    );

    assert!(
        !contains(&reencoded(&received), ADMIN_KEY),
        "the key itself is never exported"
    );
}

/// Streams the chat request and returns the text and the usage of the final chunk, if any.
async fn stream_chat(
    d: &Deployment,
    prompt: &str,
    include_usage: bool,
) -> (String, Option<CompletionUsage>) {
    let mut request = CreateChatCompletionRequestArgs::default();
    request.model("gpt-4o").messages(vec![user_message(prompt)]);
    if include_usage {
        request.stream_options(ChatCompletionStreamOptions {
            include_usage: Some(true),
            include_obfuscation: None,
        });
    }
    let mut stream = openai(d.addresses, ADMIN_KEY)
        .chat()
        .create_stream(request.build().unwrap())
        .await
        .unwrap();
    let (mut text, mut usage) = (String::new(), None);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        if let Some(u) = chunk.usage {
            assert!(usage.is_none(), "one usage chunk");
            usage = Some(u);
        }
        if let Some(content) = chunk.choices.first().and_then(|c| c.delta.content.as_ref()) {
            text.push_str(content);
        }
    }
    (text, usage)
}

/// The stream-specific assertions: flag, time to first chunk, and the stream metrics.
fn assert_stream_telemetry(trace: &RequestTrace, usage: &CompletionUsage) {
    let server = &trace.server;
    assert_eq!(
        bool_attr(&server.attributes, "gen_ai.request.stream"),
        Some(true)
    );
    assert_usage(&server.attributes, usage);
    let client = &trace.clients[0];
    assert_eq!(
        bool_attr(&client.attributes, "gen_ai.request.stream"),
        Some(true)
    );
    assert_usage(&client.attributes, usage);
    assert_openinference_usage(client, usage);
    let server_seconds = (server.end_time_unix_nano - server.start_time_unix_nano) as f64 / 1e9;
    for span in [server, client] {
        match common::gateway::attr(&span.attributes, "gen_ai.response.time_to_first_chunk") {
            Some(opentelemetry_proto::tonic::common::v1::any_value::Value::DoubleValue(t)) => {
                assert!(*t > 0.0 && *t <= server_seconds, "{t}")
            }
            other => panic!("time to first chunk on {}: {other:?}", span.name),
        }
    }
}

#[tokio::test]
async fn streamed_chat_reports_the_usage_of_its_final_chunk() {
    let d = deploy().await;
    let (text, usage) = stream_chat(&d, "Describe a heron in the reeds", true).await;
    let usage = usage.expect("the client asked for usage, so the last chunk has it");
    assert!(!text.is_empty());

    let received = d.telemetry(3, 1, 1).await;
    let trace = RequestTrace::find(&spans(&received), |_| true).unwrap();
    assert_tree(&trace, "POST /v1/chat/completions", &["chat gpt-4o"], true);
    assert!(is_unset(&trace.server));
    assert_stream_telemetry(&trace, &usage);
    assert_log(
        &log_records(&received)[0],
        &trace.server,
        SeverityNumber::Info,
        "POST /v1/chat/completions 200 gpt-4o ",
    );

    let input = [
        ("gen_ai.token.type", "input"),
        ("sluice.api_key.id", "admin"),
    ];
    let output = [
        ("gen_ai.token.type", "output"),
        ("sluice.api_key.id", "admin"),
    ];
    assert_eq!(
        histogram(&received, "gen_ai.client.token.usage", &input),
        (1, f64::from(usage.prompt_tokens))
    );
    assert_eq!(
        histogram(&received, "gen_ai.client.token.usage", &output),
        (1, f64::from(usage.completion_tokens))
    );
    assert_eq!(
        histogram(&received, "gen_ai.server.time_to_first_token", &[]).0,
        1
    );
    assert_eq!(
        histogram(&received, "gen_ai.server.time_per_output_token", &[]).0,
        1
    );
}

#[tokio::test]
async fn streamed_chat_without_usage_still_reports_the_tokens_an_unstreamed_request_gets() {
    let d = deploy().await;
    let prompt = "Describe the tide coming in over the flats";
    // The mock is deterministic: the same prompt unstreamed gets the same answer and usage.
    let request = CreateChatCompletionRequestArgs::default()
        .model("gpt-4o")
        .messages(vec![user_message(prompt)])
        .build()
        .unwrap();
    let plain = openai(d.addresses, ADMIN_KEY)
        .chat()
        .create(request)
        .await
        .unwrap();
    let usage = plain.usage.unwrap();

    let (text, streamed_usage) = stream_chat(&d, prompt, false).await;
    assert_eq!(
        streamed_usage, None,
        "the client did not ask for usage and gets none"
    );
    assert_eq!(
        Some(text.as_str()),
        plain.choices[0].message.content.as_deref()
    );

    let received = d.telemetry(6, 2, 2).await;
    let spans = spans(&received);
    let streamed = RequestTrace::find(&spans, |s| {
        bool_attr(&s.attributes, "gen_ai.request.stream") == Some(true)
    })
    .unwrap();
    assert_tree(
        &streamed,
        "POST /v1/chat/completions",
        &["chat gpt-4o"],
        true,
    );
    assert_stream_telemetry(&streamed, &usage);
    let record = log_records(&received)
        .into_iter()
        .find(|r| r.span_id == streamed.server.span_id)
        .expect("the streamed request's log record");
    assert_log(
        &record,
        &streamed.server,
        SeverityNumber::Info,
        "POST /v1/chat/completions 200",
    );

    // Both requests, the same usage each.
    let input = [("gen_ai.token.type", "input")];
    let output = [("gen_ai.token.type", "output")];
    assert_eq!(
        histogram(&received, "gen_ai.client.token.usage", &input),
        (2, 2.0 * f64::from(usage.prompt_tokens))
    );
    assert_eq!(
        histogram(&received, "gen_ai.client.token.usage", &output),
        (2, 2.0 * f64::from(usage.completion_tokens))
    );
    metric_count_is(
        &received,
        "sluice.gateway.tokens",
        &output,
        2 * i64::from(usage.completion_tokens),
    );
}

#[tokio::test]
async fn embeddings_are_an_embedding_span_with_the_input_tokens_the_client_got() {
    let d = deploy().await;
    let request = CreateEmbeddingRequestArgs::default()
        .model("text-embedding-3-small")
        .input(vec!["salt marsh", "mudflat at low tide"])
        .build()
        .unwrap();
    let answer = openai(d.addresses, ADMIN_KEY)
        .embeddings()
        .create(request)
        .await
        .unwrap();
    assert_eq!(answer.data.len(), 2);
    let prompt_tokens = i64::from(answer.usage.prompt_tokens);
    assert!(prompt_tokens > 0);

    let received = d.telemetry(3, 1, 1).await;
    let trace = RequestTrace::find(&spans(&received), |_| true).unwrap();
    assert_tree(
        &trace,
        "POST /v1/embeddings",
        &["embeddings text-embedding-3-small"],
        true,
    );
    let a = &trace.server.attributes;
    assert!(is_unset(&trace.server));
    assert_eq!(str_attr(a, "gen_ai.operation.name"), Some("embeddings"));
    assert_eq!(int_attr(a, "http.response.status_code"), Some(200));
    assert_eq!(
        int_attr(a, "gen_ai.usage.input_tokens"),
        Some(prompt_tokens)
    );
    assert_eq!(
        bool_attr(a, "gen_ai.request.stream"),
        None,
        "embeddings do not stream"
    );
    let c = &trace.clients[0].attributes;
    assert_eq!(str_attr(c, "openinference.span.kind"), Some("EMBEDDING"));
    assert_eq!(
        str_attr(c, "embedding.model_name"),
        Some(answer.model.as_str())
    );
    assert_eq!(
        int_attr(c, "gen_ai.usage.input_tokens"),
        Some(prompt_tokens)
    );
    assert_eq!(int_attr(c, "llm.token_count.prompt"), Some(prompt_tokens));
    assert_log(
        &log_records(&received)[0],
        &trace.server,
        SeverityNumber::Info,
        "POST /v1/embeddings 200 text-embedding-3-small ",
    );

    let input = [
        ("gen_ai.operation.name", "embeddings"),
        ("gen_ai.token.type", "input"),
    ];
    assert_eq!(
        histogram(&received, "gen_ai.client.token.usage", &input),
        (1, prompt_tokens as f64)
    );
    assert_eq!(
        histogram(
            &received,
            "gen_ai.client.token.usage",
            &[("gen_ai.token.type", "output")]
        )
        .0,
        0
    );
    metric_count_is(
        &received,
        "sluice.gateway.requests",
        &[
            ("gen_ai.operation.name", "embeddings"),
            ("http.response.status_code", "200"),
        ],
        1,
    );
}

#[tokio::test]
async fn a_failing_first_target_falls_back_and_both_attempts_are_client_spans() {
    let d = deploy().await;
    let request = CreateChatCompletionRequestArgs::default()
        .model("resilient")
        .messages(vec![user_message("Is the bridge open?")])
        .build()
        .unwrap();
    let answer = openai(d.addresses, ADMIN_KEY)
        .chat()
        .create(request)
        .await
        .unwrap();
    assert_eq!(answer.model, "mock-small", "the fallback target answered");
    let usage = answer.usage.unwrap();

    let received = d.telemetry(4, 1, 1).await;
    let trace = RequestTrace::find(&spans(&received), |_| true).unwrap();
    assert_tree(
        &trace,
        "POST /v1/chat/completions",
        &["chat mock-error-503", "chat mock-small"],
        true,
    );
    let server = &trace.server;
    assert!(is_unset(server), "the client got its answer");
    assert_eq!(
        int_attr(&server.attributes, "http.response.status_code"),
        Some(200)
    );
    assert_eq!(
        int_attr(&server.attributes, "sluice.attempt.count"),
        Some(2)
    );
    assert_eq!(
        str_attr(&server.attributes, "gen_ai.request.model"),
        Some("resilient")
    );
    assert_eq!(
        str_attr(&server.attributes, "gen_ai.response.model"),
        Some("mock-small")
    );
    assert_eq!(str_attr(&server.attributes, "error.type"), None);
    assert_usage(&server.attributes, &usage);
    assert_eq!(
        str_attr(
            &trace.routing.as_ref().unwrap().attributes,
            "sluice.route.first_target"
        ),
        Some("local")
    );

    let (failed, answered) = (&trace.clients[0], &trace.clients[1]);
    assert!(is_error(failed));
    assert_eq!(str_attr(&failed.attributes, "error.type"), Some("503"));
    assert_eq!(
        int_attr(&failed.attributes, "http.response.status_code"),
        Some(503)
    );
    assert_eq!(
        str_attr(&failed.attributes, "gen_ai.request.model"),
        Some("mock-error-503")
    );
    assert_eq!(
        bool_attr(&failed.attributes, "sluice.attempt.fallback"),
        Some(false)
    );
    assert_eq!(
        int_attr(&failed.attributes, "gen_ai.usage.input_tokens"),
        None
    );
    assert!(failed.end_time_unix_nano <= answered.start_time_unix_nano);

    assert!(is_unset(answered));
    assert_eq!(str_attr(&answered.attributes, "error.type"), None);
    assert_eq!(
        int_attr(&answered.attributes, "http.response.status_code"),
        Some(200)
    );
    assert_eq!(
        bool_attr(&answered.attributes, "sluice.attempt.fallback"),
        Some(true)
    );
    assert_usage(&answered.attributes, &usage);
    assert_openinference_usage(answered, &usage);

    assert_log(
        &log_records(&received)[0],
        server,
        SeverityNumber::Info,
        "POST /v1/chat/completions 200 resilient ",
    );
    metric_count_is(
        &received,
        "sluice.gateway.fallbacks",
        &[("gen_ai.request.model", "resilient")],
        1,
    );
    metric_count_is(&received, "sluice.gateway.errors", &[], 0);
    metric_count_is(
        &received,
        "sluice.gateway.requests",
        &[
            ("http.response.status_code", "200"),
            ("gen_ai.request.model", "resilient"),
        ],
        1,
    );
    assert_eq!(
        histogram(
            &received,
            "gen_ai.client.token.usage",
            &[("gen_ai.token.type", "output")]
        ),
        (1, f64::from(usage.completion_tokens))
    );
}

/// The refusals: only a SERVER span, with ERROR status, `error.type` and the status code; a
/// WARN log record; the request counted by status and error type.
fn assert_refusal(
    received: &Received,
    status: u16,
    error_type: &str,
    key_id: &str,
) -> RequestTrace {
    let trace = RequestTrace::find(&spans(received), |s| {
        int_attr(&s.attributes, "http.response.status_code") == Some(i64::from(status))
    })
    .unwrap_or_else(|| panic!("no SERVER span with status {status}"));
    assert_tree(&trace, "POST /v1/chat/completions", &[], false);
    let a = &trace.server.attributes;
    assert!(is_error(&trace.server), "{:?}", trace.server.status);
    assert_eq!(str_attr(a, "error.type"), Some(error_type));
    assert_eq!(str_attr(a, "sluice.api_key.id"), Some(key_id));
    assert_eq!(
        int_attr(a, "sluice.attempt.count"),
        None,
        "no upstream attempt"
    );
    assert_eq!(int_attr(a, "gen_ai.usage.input_tokens"), None);
    let record = log_records(received)
        .into_iter()
        .find(|r| r.span_id == trace.server.span_id)
        .expect("the refused request's log record");
    assert_log(
        &record,
        &trace.server,
        SeverityNumber::Warn,
        &format!("POST /v1/chat/completions {status}"),
    );
    let status = status.to_string();
    let refused = [
        ("http.response.status_code", status.as_str()),
        ("error.type", error_type),
        ("sluice.api_key.id", key_id),
    ];
    metric_count_is(received, "sluice.gateway.requests", &refused, 1);
    metric_count_is(received, "sluice.gateway.errors", &refused, 1);
    trace
}

#[tokio::test]
async fn an_unknown_model_is_a_404_with_an_error_span_log_and_metrics() {
    let d = deploy().await;
    let request = CreateChatCompletionRequestArgs::default()
        .model("gpt-7-nonexistent")
        .messages(vec![user_message("hello")])
        .build()
        .unwrap();
    let error = openai(d.addresses, ADMIN_KEY)
        .chat()
        .create(request)
        .await
        .unwrap_err();
    assert_eq!(api_error(error), (404, Some("model_not_found".to_string())));

    let received = d.telemetry(1, 1, 1).await;
    let trace = assert_refusal(&received, 404, "model_not_found", "admin");
    assert_eq!(
        str_attr(&trace.server.attributes, "gen_ai.request.model"),
        Some("gpt-7-nonexistent"),
        "spans keep the name asked for"
    );
    // Metrics do not make a series per misspelt name.
    metric_count_is(
        &received,
        "sluice.gateway.requests",
        &[("gen_ai.request.model", "unknown")],
        1,
    );
    metric_count_is(
        &received,
        "sluice.gateway.requests",
        &[("gen_ai.request.model", "gpt-7-nonexistent")],
        0,
    );
}

#[tokio::test]
async fn a_bad_key_is_a_401_whose_telemetry_never_shows_the_key() {
    let d = deploy().await;
    let wrong_key = "sk-wrong-9d1e0c44";
    let request = CreateChatCompletionRequestArgs::default()
        .model("gpt-4o")
        .messages(vec![user_message("hello")])
        .build()
        .unwrap();
    let error = openai(d.addresses, wrong_key)
        .chat()
        .create(request)
        .await
        .unwrap_err();
    assert_eq!(api_error(error), (401, Some("unauthorized".to_string())));

    let received = d.telemetry(1, 1, 1).await;
    let trace = assert_refusal(
        &received,
        401,
        "unauthorized",
        sluice_gateway::UNAUTHENTICATED,
    );
    assert_eq!(
        str_attr(&trace.server.attributes, "gen_ai.request.model"),
        None,
        "the body of an unauthenticated request is not read"
    );
    assert!(!contains(&reencoded(&received), wrong_key));
}

#[tokio::test]
async fn a_model_outside_the_keys_list_is_a_403_counted_as_policy_denied() {
    let d = deploy().await;
    let client = openai(d.addresses, RESTRICTED_KEY);
    let chat = |model: &str| {
        CreateChatCompletionRequestArgs::default()
            .model(model)
            .messages(vec![user_message("hello")])
            .build()
            .unwrap()
    };
    // The key works for its model...
    client.chat().create(chat("gpt-4o")).await.unwrap();
    // ...and not for another routed one.
    let error = client.chat().create(chat("resilient")).await.unwrap_err();
    assert_eq!(api_error(error), (403, Some("forbidden".to_string())));

    let received = d.telemetry(4, 2, 2).await;
    let trace = assert_refusal(&received, 403, "forbidden", "restricted");
    assert_eq!(
        str_attr(&trace.server.attributes, "gen_ai.request.model"),
        Some("resilient")
    );
    metric_count_is(
        &received,
        "sluice.gateway.policy_denied",
        &[
            ("sluice.api_key.id", "restricted"),
            ("gen_ai.request.model", "resilient"),
        ],
        1,
    );
    metric_count_is(&received, "sluice.gateway.policy_denied", &[], 1);
    metric_count_is(
        &received,
        "sluice.gateway.requests",
        &[
            ("sluice.api_key.id", "restricted"),
            ("http.response.status_code", "200"),
        ],
        1,
    );
    metric_count_is(&received, "sluice.gateway.rate_limited", &[], 0);
}

#[tokio::test]
async fn a_key_over_its_rate_is_a_429_counted_as_rate_limited() {
    let d = deploy().await;
    // A plain HTTP client here, not async-openai: async-openai retries a 429 by itself (up to
    // 3 times, waiting the `Retry-After` the gateway sends, about a minute each), so the test
    // would take minutes and never see the 429.
    let http = reqwest::Client::new();
    let send = || {
        http.post(format!("{}/chat/completions", d.addresses.api_base()))
            .bearer_auth(THROTTLED_KEY)
            .json(&serde_json::json!({
                "model": "gpt-4o",
                "messages": [{"role": "user", "content": "hello"}],
            }))
            .send()
    };
    let first = send().await.unwrap();
    assert_eq!(first.status(), 200);
    let second = send().await.unwrap();
    assert_eq!(second.status(), 429);
    let retry_after: u64 = second.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry_after >= 1, "{retry_after}");
    let body: serde_json::Value = second.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limit_exceeded");

    let received = d.telemetry(4, 2, 2).await;
    assert_refusal(&received, 429, "rate_limited", "throttled");
    metric_count_is(
        &received,
        "sluice.gateway.rate_limited",
        &[("sluice.api_key.id", "throttled")],
        1,
    );
    metric_count_is(&received, "sluice.gateway.policy_denied", &[], 0);
    metric_count_is(
        &received,
        "sluice.gateway.requests",
        &[
            ("sluice.api_key.id", "throttled"),
            ("http.response.status_code", "200"),
        ],
        1,
    );
}
