//! End to end: what the gateway exports about prompts. With `capture_content = "off"` a
//! distinctive string sent in every kind of request (chat, streamed chat, text completion,
//! embeddings, a fallback, a refusal) is nowhere in what leaves Sluice: not in the raw bytes
//! of OTLP/HTTP protobuf and JSON exports, not in what an OTLP/gRPC backend decoded, not on the
//! debug exporter's stdout. With `full` the same requests put it on the CLIENT spans, which
//! also shows that the searches find it when it is there.

mod common;

use async_openai::types::chat::{
    ChatCompletionRequestMessage, ChatCompletionRequestSystemMessageArgs,
    ChatCompletionRequestUserMessageArgs, CreateChatCompletionRequestArgs,
};
use async_openai::types::completions::CreateCompletionRequestArgs;
use async_openai::types::embeddings::CreateEmbeddingRequestArgs;
use common::Sluice;
use common::backends::{Backend, Received};
use common::gateway::{
    Addresses, GatewayConfig, RequestTrace, contains, counter, grpc_exporter, openai, reencoded,
    spans, str_attr,
};
use futures_util::StreamExt;
use opentelemetry_proto::tonic::trace::v1::Span;

/// The prompt text that must not leak.
const SECRET: &str = "zebra-quartz-4242";

const GATEWAY: &str = r#"
[gateway.providers.local]
kind = "mock"

[[gateway.routes]]
model = "gpt-4o"
targets = [{ provider = "local" }]

[[gateway.routes]]
model = "gpt-3.5-turbo-instruct"
targets = [{ provider = "local" }]

[[gateway.routes]]
model = "resilient"
targets = [{ provider = "local", model = "mock-error-503" }, { provider = "local", model = "mock-small" }]

[[gateway.routes]]
model = "text-embedding-3-small"
targets = [{ provider = "local" }]
"#;

/// Spans, log records and requests the requests of [`send_every_kind_of_request`] make:
/// chat 3, stream 3, text completion 3, embeddings 3, fallback 4, unknown model 1.
const SPANS: usize = 17;
const REQUESTS: usize = 6;

struct Deployment {
    sluice: Sluice,
    grpc: Backend,
    proto: Backend,
    json: Backend,
    addresses: Addresses,
}

async fn deploy(capture_content: &str) -> Deployment {
    let grpc = Backend::grpc().await;
    let proto = Backend::http().await;
    let json = Backend::http().await;
    // Uncompressed so the raw bodies are the bytes to search.
    let exporters = format!(
        r#"{grpc_table}
[exporters.proto]
type = "otlp_http"
endpoint = "{proto_url}"
compression = "none"

[exporters.json]
type = "otlp_http"
endpoint = "{json_url}"
encoding = "json"
compression = "none"

[exporters.debug]
verbosity = "detailed"
"#,
        grpc_table = grpc_exporter("grpc", &grpc.url()),
        proto_url = proto.url(),
        json_url = json.url(),
    );
    let (sluice, addresses) = GatewayConfig {
        gateway_keys: &format!("capture_content = \"{capture_content}\""),
        gateway_tables: GATEWAY,
        exporters: &exporters,
        exporter_names: &["grpc", "proto", "json", "debug"],
    }
    .start();
    Deployment {
        sluice,
        grpc,
        proto,
        json,
        addresses,
    }
}

fn user_message(text: &str) -> ChatCompletionRequestMessage {
    ChatCompletionRequestUserMessageArgs::default()
        .content(text)
        .build()
        .unwrap()
        .into()
}

fn chat(model: &str) -> CreateChatCompletionRequestArgs {
    let mut request = CreateChatCompletionRequestArgs::default();
    request.model(model).messages(vec![
        ChatCompletionRequestSystemMessageArgs::default()
            .content(format!("You guard the passphrase {SECRET}."))
            .build()
            .unwrap()
            .into(),
        user_message(&format!("Repeat after me: {SECRET}")),
    ]);
    request
}

/// One request of each kind, each carrying [`SECRET`] in its content.
async fn send_every_kind_of_request(addresses: Addresses) {
    let client = openai(addresses, "sk-anything");
    client
        .chat()
        .create(chat("gpt-4o").build().unwrap())
        .await
        .unwrap();
    let mut stream = client
        .chat()
        .create_stream(chat("gpt-4o").build().unwrap())
        .await
        .unwrap();
    while let Some(chunk) = stream.next().await {
        chunk.unwrap();
    }
    client
        .completions()
        .create(
            CreateCompletionRequestArgs::default()
                .model("gpt-3.5-turbo-instruct")
                .prompt(format!("Complete: {SECRET}"))
                .build()
                .unwrap(),
        )
        .await
        .unwrap();
    client
        .embeddings()
        .create(
            CreateEmbeddingRequestArgs::default()
                .model("text-embedding-3-small")
                .input(vec![SECRET.to_string(), format!("{SECRET} again")])
                .build()
                .unwrap(),
        )
        .await
        .unwrap();
    client
        .chat()
        .create(chat("resilient").build().unwrap())
        .await
        .unwrap();
    // Refused after the body was read (there is no route for it).
    client
        .chat()
        .create(chat("no-such-model").build().unwrap())
        .await
        .unwrap_err();
}

impl Deployment {
    /// Waits until every exporter has passed on everything the requests produced: each
    /// backend has all spans, log records and the metrics of every request, and the debug
    /// exporter has printed the spans, log records and a metrics export.
    async fn everything_exported(&self) -> [Received; 3] {
        let all_there = |r: &Received| {
            r.span_count() >= SPANS
                && r.log_record_count() >= REQUESTS
                && counter(r, "sluice.gateway.requests", &[]) >= REQUESTS as i64
        };
        let grpc = self.grpc.recorder.wait_until("grpc: all", all_there).await;
        let proto = self
            .proto
            .recorder
            .wait_until("proto: all", all_there)
            .await;
        let json = self.json.recorder.wait_until("json: all", all_there).await;
        for received in [&grpc, &proto, &json] {
            assert_eq!(received.span_count(), SPANS);
            assert_eq!(received.log_record_count(), REQUESTS);
        }
        common::wait_for("the debug exporter's output", || {
            let text = self.sluice.stdout.text();
            let lines = |prefix: &str| text.lines().filter(|l| l.starts_with(prefix)).count();
            lines("Span #") >= SPANS
                && lines("LogRecord #") >= REQUESTS
                && text.contains("Name: sluice.gateway.requests")
        });
        [grpc, proto, json]
    }
}

/// What each way of looking at the exports shows, as bytes to search.
fn exported_bytes(d: &Deployment, [grpc, proto, json]: &[Received; 3]) -> Vec<(String, Vec<u8>)> {
    let mut views = vec![
        ("grpc backend, re-encoded".to_string(), reencoded(grpc)),
        (
            "debug exporter stdout".to_string(),
            d.sluice.stdout.text().into_bytes(),
        ),
    ];
    for (name, received) in [("proto", proto), ("json", json)] {
        for (i, body) in received.raw_bodies.iter().enumerate() {
            views.push((format!("{name} backend, raw body {i}"), body.to_vec()));
        }
        assert!(
            received
                .headers
                .iter()
                .all(|h| h.get("content-encoding").is_none()),
            "bodies are uncompressed, so the raw bytes are the text"
        );
    }
    views
}

fn client_spans(received: &Received) -> Vec<Span> {
    RequestTrace::all(&spans(received))
        .into_iter()
        .flat_map(|t| t.clients)
        .collect()
}

#[tokio::test]
async fn with_capture_off_a_prompt_is_in_no_exported_byte() {
    let d = deploy("off").await;
    send_every_kind_of_request(d.addresses).await;
    let received = d.everything_exported().await;

    let views = exported_bytes(&d, &received);
    assert!(
        views.len() > 6,
        "every export was searched: {}",
        views.len()
    );
    for (view, bytes) in &views {
        assert!(!contains(bytes, SECRET), "{SECRET} found in the {view}");
        // Nor any part of it long enough to be the prompt.
        assert!(
            !contains(bytes, "zebra-quartz"),
            "prompt prefix found in the {view}"
        );
    }
    // The requests did produce telemetry with content-free attributes.
    let clients = client_spans(&received[0]);
    assert_eq!(clients.len(), 6);
    for span in &clients {
        assert_eq!(str_attr(&span.attributes, "input.value"), None);
        assert_eq!(str_attr(&span.attributes, "output.value"), None);
    }
}

#[tokio::test]
async fn with_capture_full_the_prompt_is_on_the_client_spans() {
    let d = deploy("full").await;
    send_every_kind_of_request(d.addresses).await;
    let received = d.everything_exported().await;

    let chat_spans: Vec<Span> = client_spans(&received[0])
        .into_iter()
        .filter(|s| s.name == "chat gpt-4o" || s.name == "chat mock-small")
        .collect();
    assert_eq!(
        chat_spans.len(),
        3,
        "chat, stream, and the fallback's answer"
    );
    for span in &chat_spans {
        let a = &span.attributes;
        let input = str_attr(a, "input.value").expect("input.value");
        assert!(input.contains(SECRET), "{input}");
        assert_eq!(
            str_attr(a, "llm.input_messages.0.message.role"),
            Some("system")
        );
        assert_eq!(
            str_attr(a, "llm.input_messages.0.message.content"),
            Some(format!("You guard the passphrase {SECRET}.").as_str())
        );
        assert_eq!(
            str_attr(a, "llm.input_messages.1.message.role"),
            Some("user")
        );
        assert_eq!(
            str_attr(a, "llm.input_messages.1.message.content"),
            Some(format!("Repeat after me: {SECRET}").as_str())
        );
        assert!(str_attr(a, "output.value").is_some_and(|o| !o.is_empty()));
    }
    let embedding = client_spans(&received[0])
        .into_iter()
        .find(|s| s.name == "embeddings text-embedding-3-small")
        .unwrap();
    assert_eq!(
        str_attr(
            &embedding.attributes,
            "embedding.embeddings.0.embedding.text"
        ),
        Some(SECRET)
    );

    // The same searches as with capture off find it, on every transport.
    for (view, bytes) in exported_bytes(&d, &received)
        .iter()
        .filter(|(view, _)| !view.contains("raw body"))
    {
        assert!(contains(bytes, SECRET), "{SECRET} missing from the {view}");
    }
    for (name, r) in [("proto", &received[1]), ("json", &received[2])] {
        assert!(
            r.raw_bodies.iter().any(|b| contains(b, SECRET)),
            "{SECRET} missing from every {name} body"
        );
    }
    // Content is on CLIENT spans (and log records) only: never on the SERVER or routing
    // spans, never in metrics.
    for trace in RequestTrace::all(&spans(&received[0])) {
        for span in std::iter::once(&trace.server).chain(&trace.routing) {
            let text = format!("{:?}", span.attributes);
            assert!(!text.contains(SECRET), "{}: {text}", span.name);
        }
    }
    let metrics_only = Received {
        metrics: received[0].metrics.clone(),
        ..Default::default()
    };
    assert!(!contains(&reencoded(&metrics_only), SECRET));
}
