//! End to end: W3C trace context through the gateway in the real binary. A client's
//! `traceparent` parents the SERVER span, the upstream (an OpenAI-compatible server on a
//! socket) receives a `traceparent` in the same trace naming the CLIENT span, and the
//! `parentbased_traceidratio` sampler with ratio 0 drops unsampled requests' spans (not their
//! log records or metrics) while keeping those of sampled callers.

mod common;

use async_openai::Client;
use async_openai::config::OpenAIConfig;
use async_openai::types::chat::{
    ChatCompletionRequestUserMessageArgs, CreateChatCompletionRequestArgs,
};
use common::backends::Backend;
use common::gateway::{
    Addresses, GatewayConfig, RecordingUpstream, RequestTrace, counter, grpc_exporter, int_attr,
    log_records, spans, str_attr,
};

const CALLER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

fn gateway_tables(upstream: &RecordingUpstream, tracing: &str) -> String {
    format!(
        r#"
{tracing}

[gateway.providers.upstream]
kind = "openai"
base_url = "{base_url}"
api_key = "sk-upstream-secret"

[[gateway.routes]]
model = "gpt-4o"
targets = [{{ provider = "upstream" }}]
"#,
        base_url = upstream.base_url
    )
}

/// The OpenAI client with extra headers sent on every request.
fn openai_with_headers(addresses: Addresses, headers: &[(&str, &str)]) -> Client<OpenAIConfig> {
    let mut config = OpenAIConfig::new()
        .with_api_base(addresses.api_base())
        .with_api_key("sk-caller");
    for (name, value) in headers {
        config = config
            .with_header(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                *value,
            )
            .unwrap();
    }
    Client::with_config(config)
}

async fn chat(client: &Client<OpenAIConfig>, prompt: &str) {
    let request = CreateChatCompletionRequestArgs::default()
        .model("gpt-4o")
        .messages(vec![
            ChatCompletionRequestUserMessageArgs::default()
                .content(prompt)
                .build()
                .unwrap()
                .into(),
        ])
        .build()
        .unwrap();
    client.chat().create(request).await.unwrap();
}

/// The parts of a `traceparent`: version, trace id, parent id, flags.
fn traceparent_parts(value: &http::HeaderValue) -> [String; 4] {
    let parts: Vec<String> = value
        .to_str()
        .unwrap()
        .split('-')
        .map(String::from)
        .collect();
    parts.try_into().expect("four dash-separated fields")
}

#[tokio::test]
async fn a_client_traceparent_parents_the_server_span_and_the_upstream_continues_the_trace() {
    let upstream = RecordingUpstream::start().await;
    let backend = Backend::grpc().await;
    let (_sluice, addresses) = GatewayConfig {
        gateway_keys: "",
        gateway_tables: &gateway_tables(&upstream, ""),
        exporters: &grpc_exporter("backend", &backend.url()),
        exporter_names: &["backend"],
    }
    .start();

    let traceparent = format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01");
    let client = openai_with_headers(
        addresses,
        &[
            ("traceparent", &traceparent),
            ("tracestate", "congo=t61rcWkgMzE"),
        ],
    );
    chat(&client, "Where does the river meet the sea?").await;

    let received = backend
        .recorder
        .wait_until("the request's spans and log record", |r| {
            r.span_count() >= 3 && r.log_record_count() >= 1
        })
        .await;
    let trace = RequestTrace::find(&spans(&received), |_| true).unwrap();
    let server = &trace.server;
    assert_eq!(hex(&server.trace_id), CALLER_TRACE, "the caller's trace");
    assert_eq!(
        hex(&server.parent_span_id),
        CALLER_SPAN,
        "a child of the caller's span"
    );
    assert_eq!(server.trace_state, "congo=t61rcWkgMzE");
    assert_eq!(
        server.flags & 0x300,
        0x300,
        "the parent is known to be remote"
    );
    assert_eq!(trace.clients.len(), 1);
    let client_span = &trace.clients[0];
    assert_eq!(client_span.trace_id, server.trace_id);
    assert_eq!(
        str_attr(&client_span.attributes, "gen_ai.provider.name"),
        Some("upstream")
    );
    assert_eq!(
        str_attr(&client_span.attributes, "llm.system"),
        Some("openai")
    );
    assert_eq!(
        str_attr(&client_span.attributes, "server.address"),
        Some("127.0.0.1")
    );
    assert_eq!(
        int_attr(&client_span.attributes, "server.port"),
        Some(i64::from(upstream.address.port()))
    );
    let record = &log_records(&received)[0];
    assert_eq!(record.trace_id, server.trace_id);
    assert_eq!(record.span_id, server.span_id);

    let requests = upstream.requests();
    assert_eq!(requests.len(), 1);
    let headers = &requests[0].0;
    let [version, trace_id, parent_id, flags] = traceparent_parts(&headers["traceparent"]);
    assert_eq!(version, "00");
    assert_eq!(
        trace_id, CALLER_TRACE,
        "the upstream continues the caller's trace"
    );
    assert_eq!(
        parent_id,
        hex(&client_span.span_id),
        "under the attempt's CLIENT span"
    );
    assert_eq!(flags, "01");
    assert_eq!(headers["tracestate"], "congo=t61rcWkgMzE");
    assert_eq!(headers["authorization"], "Bearer sk-upstream-secret");
}

#[tokio::test]
async fn ratio_zero_drops_unsampled_requests_spans_but_keeps_sampled_children_and_all_logs() {
    let upstream = RecordingUpstream::start().await;
    let backend = Backend::grpc().await;
    let tracing = "[gateway.tracing]\nsampler = \"parentbased_traceidratio\"\nsampler_arg = 0.0";
    let (_sluice, addresses) = GatewayConfig {
        gateway_keys: "",
        gateway_tables: &gateway_tables(&upstream, tracing),
        exporters: &grpc_exporter("backend", &backend.url()),
        exporter_names: &["backend"],
    }
    .start();

    // A root request (no traceparent): the ratio, 0, decides.
    chat(&openai_with_headers(addresses, &[]), "unsampled root").await;
    // A caller that did not sample: the parent decides.
    let unsampled_parent = format!("00-{CALLER_TRACE}-{CALLER_SPAN}-00");
    chat(
        &openai_with_headers(addresses, &[("traceparent", &unsampled_parent)]),
        "unsampled child",
    )
    .await;
    // A caller that sampled, sent last so its spans come after anything the others made.
    let sampled_trace = "0af7651916cd43dd8448eb211c80319c";
    let sampled_parent = format!("00-{sampled_trace}-b7ad6b7169203331-01");
    chat(
        &openai_with_headers(addresses, &[("traceparent", &sampled_parent)]),
        "sampled child",
    )
    .await;

    let received = backend
        .recorder
        .wait_until(
            "3 log records, 3 requests counted, the sampled request's spans",
            |r| {
                r.log_record_count() >= 3
                    && counter(r, "sluice.gateway.requests", &[]) >= 3
                    && r.span_count() >= 3
            },
        )
        .await;
    let spans = spans(&received);
    assert_eq!(
        spans.len(),
        3,
        "only the sampled request has spans: {spans:#?}"
    );
    assert!(spans.iter().all(|s| hex(&s.trace_id) == sampled_trace));
    let trace = RequestTrace::find(&spans, |_| true).unwrap();
    assert_eq!(hex(&trace.server.parent_span_id), "b7ad6b7169203331");
    assert_eq!(trace.clients.len(), 1);

    // Every request has its log record, flagged sampled or not, and is counted.
    let records = log_records(&received);
    assert_eq!(records.len(), 3);
    let flags: Vec<(String, u32)> = records
        .iter()
        .map(|r| (hex(&r.trace_id), r.flags))
        .collect();
    assert_eq!(
        flags.iter().filter(|(_, f)| *f == 0).count(),
        2,
        "{flags:?}"
    );
    assert!(flags.contains(&(sampled_trace.to_string(), 1)), "{flags:?}");
    assert!(flags.contains(&(CALLER_TRACE.to_string(), 0)), "{flags:?}");
    assert_eq!(
        counter(
            &received,
            "sluice.gateway.requests",
            &[("http.response.status_code", "200")]
        ),
        3
    );

    // The upstream is told which requests were sampled.
    let sent: Vec<[String; 4]> = upstream
        .requests()
        .iter()
        .map(|(headers, _)| traceparent_parts(&headers["traceparent"]))
        .collect();
    assert_eq!(sent.len(), 3);
    assert_eq!(sent[0][3], "00");
    assert_eq!(sent[1][1], CALLER_TRACE);
    assert_eq!(sent[1][3], "00");
    assert_eq!(sent[2][1], sampled_trace);
    assert_eq!(sent[2][2], hex(&trace.clients[0].span_id));
    assert_eq!(sent[2][3], "01");
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
