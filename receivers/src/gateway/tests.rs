//! The receiver started through its factory, serving real HTTP requests on a real socket, with
//! recording consumers in place of the pipelines.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::logs::v1::LogRecord;
use opentelemetry_proto::tonic::metrics::v1::{Metric, metric, number_data_point};
use opentelemetry_proto::tonic::trace::v1::{Span, span::SpanKind, status::StatusCode};
use serde_json::{Value, json};
use sluice_pipeline::config::ComponentKind;
use sluice_pipeline::{Consumer, Telemetry};

use super::attributes::test_support::render;
use super::*;

/// Records every batch it takes; refuses them all when `refuse` is set.
#[derive(Default)]
struct Recorder {
    refuse: bool,
    batches: Mutex<Vec<Batch>>,
}

impl Recorder {
    fn requests(&self) -> Vec<Request> {
        std::mem::take(&mut *self.batches.lock().unwrap())
            .into_iter()
            .map(|b| b.into_request().unwrap())
            .collect()
    }
}

#[async_trait]
impl Consumer for Recorder {
    async fn consume(&self, batch: Batch) -> Result<(), ConsumeError> {
        if self.refuse {
            return Err(ConsumeError::Backpressure("queue full".into()));
        }
        self.batches.lock().unwrap().push(batch);
        Ok(())
    }
}

/// A port nobody listens on right now: the receiver only reports its address to the log when
/// started through the factory, so the test chooses it.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

const KEY: &str = "sk-team-a";

fn config(port: u16) -> String {
    format!(
        r#"
listen = "127.0.0.1:{port}"
capture_headers = ["x-team"]

[telemetry]
service_name = "gateway-under-test"
metrics_interval = "1h"

[providers.local]
kind = "mock"

[[routes]]
model = "gpt-4o"
targets = [{{ provider = "local", model = "mock-error-503" }}, {{ provider = "local", model = "mock-large" }}]

[[routes]]
model = "mock-chat"
targets = [{{ provider = "local" }}]

[[routes]]
model = "text-embedding-3-small"
targets = [{{ provider = "local" }}]

[[keys]]
id = "team-a"
key = "{KEY}"
"#
    )
}

fn settings(table: &str) -> ComponentSettings {
    let mut settings = ComponentSettings::new(
        ComponentKind::Receiver,
        "gateway",
        "gateway",
        toml::from_str(table).unwrap(),
    );
    settings.location = KeyPath::of(&["gateway"]);
    settings
}

struct Harness {
    running: Box<dyn Running>,
    base: String,
    telemetry: Telemetry,
    traces: Arc<Recorder>,
    metrics: Arc<Recorder>,
    logs: Arc<Recorder>,
    http: reqwest::Client,
}

impl Harness {
    async fn start(logs: Recorder) -> Harness {
        let port = free_port();
        let receiver = GatewayReceiverFactory
            .build(&settings(&config(port)))
            .unwrap();
        let (traces, metrics, logs) = (
            Arc::new(Recorder::default()),
            Arc::new(Recorder::default()),
            Arc::new(logs),
        );
        let telemetry = Telemetry::new();
        let consumers = SignalConsumers {
            traces: Some(traces.clone()),
            metrics: Some(metrics.clone()),
            logs: Some(logs.clone()),
        };
        let running = receiver
            .start(ReceiverContext {
                id: "gateway".into(),
                consumers,
                telemetry: telemetry.clone(),
            })
            .await
            .unwrap();
        Harness {
            running,
            base: format!("http://127.0.0.1:{port}/v1"),
            telemetry,
            traces,
            metrics,
            logs,
            http: reqwest::Client::new(),
        }
    }

    async fn post(&self, path: &str, key: &str, body: Value) -> reqwest::Response {
        self.http
            .post(format!("{}{path}", self.base))
            .bearer_auth(key)
            .header("x-team", "search")
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    fn spans(&self) -> Vec<Span> {
        self.traces
            .requests()
            .into_iter()
            .flat_map(|r| match r {
                Request::Traces(t) => {
                    let rs = &t.resource_spans[0];
                    assert_eq!(
                        render(&rs.resource.as_ref().unwrap().attributes)["service.name"],
                        "\"gateway-under-test\""
                    );
                    assert_eq!(
                        rs.scope_spans[0].scope.as_ref().unwrap().name,
                        "sluice.gateway"
                    );
                    rs.scope_spans[0].spans.clone()
                }
                other => panic!("not traces: {other:?}"),
            })
            .collect()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn attr(span: &Span, key: &str) -> Option<String> {
    render(&span.attributes).get(key).cloned()
}

#[tokio::test]
async fn requests_through_the_gateway_become_spans_metrics_and_logs() {
    let h = Harness::start(Recorder::default()).await;

    // 1. A chat from a traced caller.
    let caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let response = h
        .http
        .post(format!("{}/chat/completions", h.base))
        .bearer_auth(KEY)
        .header("traceparent", format!("00-{caller_trace}-{caller_span}-01"))
        .header("x-team", "search")
        .json(&json!({
            "model": "mock-chat",
            "messages": [{"role": "user", "content": "Say something about rivers."}],
            "max_tokens": 50,
            "user": "user_12345",
            "session_id": "session_abc",
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let chat: Value = response.json().await.unwrap();
    let chat_usage = chat["usage"].clone();

    // 2. A streamed chat, read to the end.
    let response = h
        .post(
            "/chat/completions",
            KEY,
            json!({
                "model": "mock-chat",
                "messages": [{"role": "user", "content": "Stream me a sentence."}],
                "stream": true,
            }),
        )
        .await;
    assert_eq!(response.status(), 200);
    let stream_text = response.text().await.unwrap();
    assert!(
        stream_text.trim_end().ends_with("data: [DONE]"),
        "{stream_text}"
    );

    // 3. Embeddings.
    let response = h
        .post(
            "/embeddings",
            KEY,
            json!({"model": "text-embedding-3-small", "input": "a river"}),
        )
        .await;
    assert_eq!(response.status(), 200);
    let embeddings: Value = response.json().await.unwrap();

    // 4. A bad key.
    let response = h
        .post(
            "/chat/completions",
            "sk-wrong",
            json!({"model": "mock-chat"}),
        )
        .await;
    assert_eq!(response.status(), 401);

    // 5. A fallback from a failing target to a working one.
    let response = h
        .post(
            "/chat/completions",
            KEY,
            json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "Hello!"}]}),
        )
        .await;
    assert_eq!(response.status(), 200);

    // 6. A misspelt model.
    let response = h
        .post(
            "/chat/completions",
            KEY,
            json!({"model": "gpt-4oo", "messages": [{"role": "user", "content": "Hello!"}]}),
        )
        .await;
    assert_eq!(response.status(), 404);

    h.running.shutdown().await;

    // Traces: SERVER spans in request order, each with its children.
    let spans = h.spans();
    let servers: Vec<&Span> = spans
        .iter()
        .filter(|s| s.kind == SpanKind::Server as i32)
        .collect();
    let statuses: Vec<_> = servers
        .iter()
        .map(|s| {
            (
                s.name.as_str(),
                attr(s, "http.response.status_code").unwrap(),
            )
        })
        .collect();
    assert_eq!(
        statuses,
        [
            ("POST /v1/chat/completions", "200".to_string()),
            ("POST /v1/chat/completions", "200".to_string()),
            ("POST /v1/embeddings", "200".to_string()),
            ("POST /v1/chat/completions", "401".to_string()),
            ("POST /v1/chat/completions", "200".to_string()),
            ("POST /v1/chat/completions", "404".to_string()),
        ]
    );
    let children = |server: &Span| -> Vec<(String, i32)> {
        spans
            .iter()
            .filter(|s| s.parent_span_id == server.span_id)
            .map(|s| {
                assert_eq!(s.trace_id, server.trace_id);
                (s.name.clone(), s.kind)
            })
            .collect()
    };
    let internal = SpanKind::Internal as i32;
    let client = SpanKind::Client as i32;

    let traced = servers[0];
    assert_eq!(hex(&traced.trace_id), caller_trace);
    assert_eq!(hex(&traced.parent_span_id), caller_span);
    assert_eq!(
        children(traced),
        [
            ("provider routing".to_string(), internal),
            ("chat mock-chat".to_string(), client)
        ]
    );
    assert_eq!(attr(traced, "user.id").unwrap(), "\"user_12345\"");
    assert_eq!(attr(traced, "session.id").unwrap(), "\"session_abc\"");
    assert_eq!(attr(traced, "sluice.api_key.id").unwrap(), "\"team-a\"");
    assert_eq!(
        attr(traced, "http.request.header.x-team").unwrap(),
        "[\"search\"]"
    );
    assert_eq!(attr(traced, "gen_ai.request.max_tokens").unwrap(), "50");
    let chat_client = spans
        .iter()
        .find(|s| s.parent_span_id == traced.span_id && s.kind == client)
        .unwrap();
    // Exact token counts: what the client was told is what the spans say.
    for span in [traced, chat_client] {
        assert_eq!(
            attr(span, "gen_ai.usage.input_tokens").unwrap(),
            chat_usage["prompt_tokens"].to_string()
        );
        assert_eq!(
            attr(span, "gen_ai.usage.output_tokens").unwrap(),
            chat_usage["completion_tokens"].to_string()
        );
    }
    assert_eq!(
        attr(chat_client, "openinference.span.kind").unwrap(),
        "\"LLM\""
    );
    assert_eq!(attr(chat_client, "llm.system").unwrap(), "\"mock\"");
    assert_eq!(
        attr(chat_client, "llm.token_count.total").unwrap(),
        chat_usage["total_tokens"].to_string()
    );
    let all_attributes = format!("{spans:?}");
    assert!(
        !all_attributes.contains("rivers"),
        "content is not captured by default"
    );

    let streamed = servers[1];
    assert_eq!(attr(streamed, "gen_ai.request.stream").unwrap(), "true");
    assert!(attr(streamed, "gen_ai.response.time_to_first_chunk").is_some());
    assert!(
        attr(streamed, "gen_ai.usage.output_tokens").is_some(),
        "streams have usage"
    );

    let embedding = servers[2];
    let embedding_client = spans
        .iter()
        .find(|s| s.parent_span_id == embedding.span_id && s.kind == client)
        .unwrap();
    assert_eq!(embedding_client.name, "embeddings text-embedding-3-small");
    assert_eq!(
        attr(embedding_client, "openinference.span.kind").unwrap(),
        "\"EMBEDDING\""
    );
    assert_eq!(
        attr(embedding_client, "gen_ai.usage.input_tokens").unwrap(),
        embeddings["usage"]["prompt_tokens"].to_string()
    );

    let refused = servers[3];
    assert!(children(refused).is_empty());
    assert_eq!(
        refused.status.as_ref().unwrap().code,
        StatusCode::Error as i32
    );
    assert_eq!(attr(refused, "error.type").unwrap(), "\"unauthorized\"");

    let fallback = servers[4];
    assert_eq!(
        children(fallback),
        [
            ("provider routing".to_string(), internal),
            ("chat mock-error-503".to_string(), client),
            ("chat mock-large".to_string(), client),
        ]
    );
    let attempts: Vec<&Span> = spans
        .iter()
        .filter(|s| s.parent_span_id == fallback.span_id && s.kind == client)
        .collect();
    assert_eq!(
        attempts[0].status.as_ref().unwrap().code,
        StatusCode::Error as i32
    );
    assert_eq!(attr(attempts[0], "error.type").unwrap(), "\"503\"");
    assert_eq!(
        attr(attempts[1], "sluice.attempt.fallback").unwrap(),
        "true"
    );
    assert_eq!(fallback.status, None);

    let misspelt = servers[5];
    assert_eq!(
        attr(misspelt, "gen_ai.request.model").unwrap(),
        "\"gpt-4oo\""
    );
    assert_eq!(attr(misspelt, "error.type").unwrap(), "\"model_not_found\"");

    // Logs: one record per request, tied to its SERVER span.
    let records: Vec<LogRecord> = h
        .logs
        .requests()
        .into_iter()
        .flat_map(|r| match r {
            Request::Logs(ExportLogsServiceRequest { resource_logs }) => {
                resource_logs[0].scope_logs[0].log_records.clone()
            }
            other => panic!("not logs: {other:?}"),
        })
        .collect();
    assert_eq!(records.len(), 6);
    for (record, server) in records.iter().zip(&servers) {
        assert_eq!(record.span_id, server.span_id);
        assert_eq!(record.trace_id, server.trace_id);
        assert_eq!(record.event_name, "sluice.gateway.request");
    }
    let body = |r: &LogRecord| super::attributes::test_support::render_value(r.body.as_ref());
    assert!(
        body(&records[3]).starts_with("\"POST /v1/chat/completions 401 "),
        "{}",
        body(&records[3])
    );

    // Metrics: one export, at shutdown (the interval is an hour).
    let metric_requests = h.metrics.requests();
    assert_eq!(metric_requests.len(), 1);
    let Request::Metrics(ExportMetricsServiceRequest { resource_metrics }) = &metric_requests[0]
    else {
        panic!("not metrics")
    };
    let metrics = &resource_metrics[0].scope_metrics[0].metrics;
    let sum = |name: &str| -> BTreeMap<String, i64> {
        let metric: &Metric = metrics.iter().find(|m| m.name == name).unwrap();
        let Some(metric::Data::Sum(sum)) = &metric.data else {
            panic!("{name} is not a sum")
        };
        let mut by_model = BTreeMap::new();
        for point in &sum.data_points {
            let Some(number_data_point::Value::AsInt(value)) = point.value else {
                panic!("not an integer")
            };
            let model = render(&point.attributes)
                .get("gen_ai.request.model")
                .cloned()
                .unwrap_or_default();
            *by_model.entry(model).or_default() += value;
        }
        by_model
    };
    assert_eq!(
        sum("sluice.gateway.requests"),
        BTreeMap::from([
            (String::new(), 1), // the 401: refused before the body was read
            ("\"gpt-4o\"".to_string(), 1),
            ("\"mock-chat\"".to_string(), 2),
            ("\"text-embedding-3-small\"".to_string(), 1),
            ("\"unknown\"".to_string(), 1),
        ])
    );
    assert_eq!(sum("sluice.gateway.fallbacks").values().sum::<i64>(), 1);
    for exported in [format!("{records:?}"), format!("{metric_requests:?}")] {
        assert!(
            !exported.contains("rivers"),
            "content is not captured by default"
        );
    }
    assert!(
        metrics
            .iter()
            .any(|m| m.name == "gen_ai.server.time_to_first_token")
    );

    // Every item was accepted and counted.
    let rendered = h.telemetry.render();
    let span_count = spans.len();
    assert_eq!(span_count, 3 + 3 + 3 + 1 + 4 + 1);
    for (signal, items) in [("traces", span_count), ("logs", 6)] {
        let line = format!(
            "sluice_receiver_accepted_items_total{{receiver=\"gateway\",signal=\"{signal}\",transport=\"gateway\"}} {items}"
        );
        assert!(rendered.contains(&line), "{line} not in\n{rendered}");
    }
}

#[tokio::test]
async fn a_refused_batch_is_dropped_and_counted_without_failing_the_request() {
    let h = Harness::start(Recorder {
        refuse: true,
        ..Recorder::default()
    })
    .await;
    for _ in 0..2 {
        let response = h
            .post(
                "/chat/completions",
                "sk-wrong",
                json!({"model": "mock-chat"}),
            )
            .await;
        assert_eq!(response.status(), 401);
    }
    h.running.shutdown().await;
    let rendered = h.telemetry.render();
    let refused = "sluice_receiver_refused_items_total{receiver=\"gateway\",signal=\"logs\",transport=\"gateway\"} 2";
    assert!(rendered.contains(refused), "{rendered}");
    assert_eq!(h.spans().len(), 2, "traces still flow");
}

#[tokio::test]
async fn without_pipelines_the_gateway_still_serves() {
    let port = free_port();
    let receiver = GatewayReceiverFactory
        .build(&settings(&config(port)))
        .unwrap();
    let running = receiver
        .start(ReceiverContext {
            id: "gateway".into(),
            consumers: SignalConsumers::default(),
            telemetry: Telemetry::new(),
        })
        .await
        .unwrap();
    let response = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}/v1/chat/completions"))
        .bearer_auth(KEY)
        .json(&json!({"model": "mock-chat", "messages": [{"role": "user", "content": "Hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    running.shutdown().await;
}

#[tokio::test]
async fn a_port_in_use_is_a_start_error_naming_the_address() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let receiver = GatewayReceiverFactory
        .build(&settings(&config(port)))
        .unwrap();
    let error = match receiver
        .start(ReceiverContext {
            id: "gateway".into(),
            consumers: SignalConsumers::default(),
            telemetry: Telemetry::new(),
        })
        .await
    {
        Ok(_) => panic!("started on a port in use"),
        Err(error) => error,
    };
    assert_eq!(error.component, "gateway");
    assert!(
        error.message.contains(&format!("127.0.0.1:{port}")),
        "{}",
        error.message
    );
}

#[test]
fn telemetry_defaults_apply_when_the_table_is_absent() {
    let config =
        GatewayTelemetryConfig::from_value(&KeyPath::of(&["gateway", "telemetry"]), None).unwrap();
    assert_eq!(config.service_name, "sluice-gateway");
    assert_eq!(config.metrics_interval, Duration::from_secs(10));
    assert_eq!(config.event_buffer, 4096);
}

#[test]
fn an_unknown_telemetry_key_is_an_error_naming_it() {
    let error = match GatewayReceiverFactory.build(&settings(
        "[telemetry]\nservice_name = \"x\"\nmetrics_intervall = \"5s\"",
    )) {
        Ok(_) => panic!("built with a misspelt key"),
        Err(error) => error,
    };
    assert_eq!(
        error.path.to_string(),
        "gateway.telemetry.metrics_intervall"
    );
}

#[test]
fn an_empty_event_buffer_is_refused() {
    let error = match GatewayReceiverFactory.build(&settings("[telemetry]\nevent_buffer = 0")) {
        Ok(_) => panic!("built with a zero buffer"),
        Err(error) => error,
    };
    assert_eq!(error.path.to_string(), "gateway.telemetry.event_buffer");
}

#[test]
fn several_gateway_errors_report_the_first_and_how_many_more() {
    let table = r#"
        capture_headers = ["bad header"]
        max_request_bytes = 0
        [tracing]
        sampler_arg = 2.0
    "#;
    let error = match GatewayReceiverFactory.build(&settings(table)) {
        Ok(_) => panic!("built an invalid gateway"),
        Err(error) => error,
    };
    assert_eq!(error.path.to_string(), "gateway.tracing.sampler_arg");
    assert!(
        error
            .message
            .ends_with("(and 2 more problems in [gateway])"),
        "{}",
        error.message
    );
}

#[test]
fn the_readme_example_builds() {
    let readme = include_str!("../../README.md");
    let section = readme
        .split("## `gateway`")
        .nth(1)
        .expect("the README has a gateway section");
    let example = section
        .split("```toml")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("the gateway section has a TOML example");
    let file: toml::Table = toml::from_str(example).unwrap();
    let table = file["gateway"].as_table().unwrap().clone();
    let mut settings = settings("");
    settings.table = table.clone();
    GatewayReceiverFactory.build(&settings).unwrap();
    let telemetry = GatewayTelemetryConfig::from_value(
        &KeyPath::of(&["gateway", "telemetry"]),
        table.get("telemetry").cloned(),
    )
    .unwrap();
    assert_eq!(
        telemetry,
        GatewayTelemetryConfig::default(),
        "the example shows the defaults"
    );
}
