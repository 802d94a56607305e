//! End to end: the `cost`, `resource` and `memory_limiter` processors in the running binary.
//!
//! - `cost`: chats through the gateway (the mock provider reports cached and reasoning tokens)
//!   give spans with the exact cost of the usage the client saw, and the `gen_ai.client.cost`
//!   metric with the gateway's dimensions; OpenInference spans over OTLP are priced too, and a
//!   model outside the price table gets nothing and is counted.
//! - `resource`: detectors (the sluice process's pid, host name, instance id and environment)
//!   and explicit actions on the resources of OTLP traces and metrics.
//! - `memory_limiter`: a flood of OTLP into a pipeline whose exporter never answers gets
//!   retryable refusals (HTTP 503, gRPC UNAVAILABLE) while the process's resident memory,
//!   read from /proc, stays under the hard limit.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_openai::types::chat::{
    ChatCompletionRequestUserMessageArgs, CompletionUsage, CreateChatCompletionRequestArgs,
};
use common::backends::{Backend, Received};
use common::gateway::{Addresses, latest_metric, openai, rendered, spans};
use common::{Sluice, free_port};
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::{
    Gauge, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, metric::Data, number_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prost::Message;

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn kv(key: &str, value: Value) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

fn s(key: &str, value: &str) -> KeyValue {
    kv(key, Value::StringValue(value.to_string()))
}

fn int(key: &str, value: i64) -> KeyValue {
    kv(key, Value::IntValue(value))
}

fn get<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a Value> {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref()?.value.as_ref())
}

fn double(attributes: &[KeyValue], key: &str) -> Option<f64> {
    match get(attributes, key)? {
        Value::DoubleValue(d) => Some(*d),
        other => panic!("{key} is not a double: {other:?}"),
    }
}

/// `(gen_ai.usage.cost, llm.cost.prompt, llm.cost.completion, llm.cost.total)`.
fn costs(attributes: &[KeyValue]) -> Option<(f64, f64, f64, f64)> {
    Some((
        double(attributes, "gen_ai.usage.cost")?,
        double(attributes, "llm.cost.prompt")?,
        double(attributes, "llm.cost.completion")?,
        double(attributes, "llm.cost.total")?,
    ))
}

/// Posts an OTLP/HTTP protobuf request; the response status.
async fn post(http: SocketAddr, signal: &str, body: Vec<u8>) -> reqwest::StatusCode {
    reqwest::Client::new()
        .post(format!("http://{http}/v1/{signal}"))
        .header("content-type", "application/x-protobuf")
        .body(body)
        .send()
        .await
        .expect("the receiver answers")
        .status()
}

fn traces(resource: Vec<KeyValue>, spans: Vec<Span>) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: resource,
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

fn span(name: &str, attributes: Vec<KeyValue>) -> Span {
    Span {
        trace_id: vec![7; 16],
        span_id: vec![1, 2, 3, 4, 5, 6, 7, 8],
        name: name.to_string(),
        kind: SpanKind::Client as i32,
        start_time_unix_nano: 1_700_000_000_000_000_000,
        end_time_unix_nano: 1_700_000_001_000_000_000,
        attributes,
        ..Default::default()
    }
}

// ---- cost ------------------------------------------------------------------------------------

const GATEWAY: &str = r#"
[gateway.providers.local]
kind = "mock"

[[gateway.routes]]
model = "o3-mini"
targets = [{ provider = "local", model = "mock-reasoning-small" }]

[[gateway.routes]]
model = "cheap"
targets = [{ provider = "local", model = "mock-small" }]

[[gateway.keys]]
id = "team-a"
key = "sk-team-a-4f2c9e"
"#;

/// o3-mini's prices for the model the mock answers as; the requested alias has a price of its
/// own that must not be used (the response model names what was billed); mock-small has none.
const PRICES: &str = r#"
[processors.cost]
[[processors.cost.models]]
model = "mock-reasoning-*"
input = 1.10
output = 4.40
cache_read = 0.55

[[processors.cost.models]]
model = "o3-mini"
input = 100
output = 100
"#;

/// A chat the mock answers with a known usage: a 8000-character prompt is 2000 tokens of
/// which 896 cached; 3 words of answer at 4 reasoning tokens each is 15 output tokens of
/// which 12 reasoning.
fn reasoning_chat(model: &str) -> async_openai::types::chat::CreateChatCompletionRequest {
    CreateChatCompletionRequestArgs::default()
        .model(model)
        .max_completion_tokens(3u32)
        .messages(vec![
            ChatCompletionRequestUserMessageArgs::default()
                .content("x".repeat(8000))
                .build()
                .unwrap()
                .into(),
        ])
        .build()
        .unwrap()
}

fn usage_tuple(usage: &CompletionUsage) -> (u32, u32, Option<u32>, Option<u32>) {
    (
        usage.prompt_tokens,
        usage.completion_tokens,
        usage
            .prompt_tokens_details
            .as_ref()
            .and_then(|d| d.cached_tokens),
        usage
            .completion_tokens_details
            .as_ref()
            .and_then(|d| d.reasoning_tokens),
    )
}

/// The points of the latest `gen_ai.client.cost` export: rendered attributes and value.
fn cost_points(received: &Received) -> Vec<(BTreeMap<String, String>, f64)> {
    let Some(metric) = latest_metric(received, "gen_ai.client.cost") else {
        return Vec::new();
    };
    assert_eq!(metric.unit, "USD");
    let Some(Data::Sum(sum)) = &metric.data else {
        panic!("gen_ai.client.cost is not a sum: {metric:?}");
    };
    assert!(sum.is_monotonic);
    sum.data_points
        .iter()
        .map(|p| {
            let value = match p.value {
                Some(number_data_point::Value::AsDouble(d)) => d,
                other => panic!("not a double: {other:?}"),
            };
            (rendered(&p.attributes), value)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cost_prices_gateway_spans_and_derives_the_cost_metric_exactly() {
    let backend = Backend::grpc().await;
    let addresses = Addresses::free();
    let config = format!(
        r#"
[service]
admin = "{admin}"

[gateway]
listen = "{gateway}"

[gateway.telemetry]
metrics_interval = "200ms"

{GATEWAY}
{PRICES}
[processors.batch]
timeout = "50ms"

[exporters.backend]
type = "otlp_grpc"
endpoint = "{backend}"
compression = "none"

[pipelines.traces]
receivers = ["gateway"]
processors = ["cost", "batch"]
exporters = ["backend"]

[pipelines.metrics]
receivers = ["gateway"]
processors = ["cost", "batch"]
exporters = ["backend"]
"#,
        admin = addresses.admin,
        gateway = addresses.gateway,
        backend = backend.url(),
    );
    let sluice = Sluice::start(&config, addresses.admin, &[addresses.gateway]);
    let client = openai(addresses, "sk-team-a-4f2c9e");

    for _ in 0..2 {
        let answer = client
            .chat()
            .create(reasoning_chat("o3-mini"))
            .await
            .unwrap();
        assert_eq!(
            usage_tuple(answer.usage.as_ref().unwrap()),
            (2000, 15, Some(896), Some(12)),
            "the usage the figures below are worked out from"
        );
    }
    client.chat().create(reasoning_chat("cheap")).await.unwrap();

    // Three requests of three spans each (SERVER, routing, CLIENT).
    let received = backend
        .recorder
        .wait_until("the spans of three requests", |r| r.span_count() >= 9)
        .await;
    let spans = spans(&received);
    let model_of = |span: &Span| match get(&span.attributes, "gen_ai.response.model") {
        Some(Value::StringValue(m)) => m.clone(),
        _ => String::new(),
    };
    let with_usage: Vec<&Span> = spans
        .iter()
        .filter(|s| get(&s.attributes, "gen_ai.usage.input_tokens").is_some())
        .collect();
    assert_eq!(
        with_usage.len(),
        6,
        "SERVER and CLIENT span of each request"
    );
    for span in with_usage {
        let costs = costs(&span.attributes);
        if model_of(span) == "mock-reasoning-small" {
            // (2000 − 896) × 1.10 + 896 × 0.55 = 1707.2 µ$; (15 − 12) × 4.40 + 12 × 4.40 = 66 µ$
            assert_eq!(
                costs,
                Some((0.0017732, 0.0017072, 0.000066, 0.0017732)),
                "{}",
                span.name
            );
        } else {
            assert_eq!(model_of(span), "mock-small");
            assert_eq!(costs, None, "an unpriced model gets no cost: {}", span.name);
        }
    }
    for span in spans
        .iter()
        .filter(|s| get(&s.attributes, "gen_ai.usage.input_tokens").is_none())
    {
        assert_eq!(costs(&span.attributes), None, "{} has no usage", span.name);
    }

    // The metric: cumulative over both o3-mini requests, with the gateway's dimensions.
    let received = backend
        .recorder
        .wait_until("gen_ai.client.cost for both requests", |r| {
            cost_points(r).iter().any(|(_, v)| *v == 0.0035464)
        })
        .await;
    let points = cost_points(&received);
    assert_eq!(points.len(), 1, "mock-small has no price: {points:?}");
    let expected: BTreeMap<String, String> = [
        ("gen_ai.operation.name", "chat"),
        ("gen_ai.request.model", "o3-mini"),
        ("gen_ai.response.model", "mock-reasoning-small"),
        ("gen_ai.provider.name", "local"),
        ("sluice.api_key.id", "team-a"),
        ("http.response.status_code", "200"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    // (4000 − 1792) × 1.10 + 1792 × 0.55 + 30 × 4.40 = 3546.4 µ$
    assert_eq!(points[0], (expected, 0.0035464));
    // The token metric it was derived from is still exported.
    assert!(latest_metric(&received, "sluice.gateway.tokens").is_some());

    let metrics = sluice.metrics();
    assert!(
        common::metric_value(
            &metrics,
            "sluice_cost_priced_items_total{processor=\"cost\",signal=\"traces\"}"
        ) == 4.0,
        "{metrics}"
    );
    assert!(
        common::metric_value(&metrics, "sluice_cost_unpriced_total{model=\"mock-small\"}") >= 2.0,
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cost_prices_openinference_spans_received_over_otlp() {
    let backend = Backend::grpc().await;
    let (admin, http) = (local(free_port()), local(free_port()));
    let config = format!(
        r#"
[service]
admin = "{admin}"

[receivers.otlp]
http = "{http}"

[processors.cost]
[[processors.cost.models]]
model = "claude-3-7-sonnet*"
input = 3.00
output = 15.00
cache_read = 0.30
cache_write = 3.75

[exporters.backend]
type = "otlp_grpc"
endpoint = "{backend}"
compression = "none"

[pipelines.traces]
receivers = ["otlp"]
processors = ["cost"]
exporters = ["backend"]
"#,
        backend = backend.url(),
    );
    let sluice = Sluice::start(&config, admin, &[http]);
    let request = traces(
        vec![s("service.name", "agent")],
        vec![
            span(
                "claude",
                vec![
                    s("openinference.span.kind", "LLM"),
                    s("llm.model_name", "claude-3-7-sonnet-20250219"),
                    int("llm.token_count.prompt", 10000),
                    int("llm.token_count.completion", 1000),
                    int("llm.token_count.prompt_details.cache_read", 6000),
                    int("llm.token_count.prompt_details.cache_write", 2000),
                ],
            ),
            span(
                "llama",
                vec![
                    s("llm.model_name", "llama-3.1-8b"),
                    int("llm.token_count.prompt", 10),
                ],
            ),
        ],
    );
    assert_eq!(
        post(http, "traces", request.encode_to_vec()).await,
        reqwest::StatusCode::OK
    );
    let received = backend
        .recorder
        .wait_until("the two spans", |r| r.span_count() == 2)
        .await;
    let spans = spans(&received);
    // 2000 × 3 + 6000 × 0.30 + 2000 × 3.75 = 15300 µ$; 1000 × 15 = 15000 µ$
    assert_eq!(
        costs(&spans[0].attributes),
        Some((0.0303, 0.0153, 0.015, 0.0303))
    );
    assert_eq!(costs(&spans[1].attributes), None);
    assert_eq!(
        sluice.metric("sluice_cost_unpriced_total{model=\"llama-3.1-8b\"}"),
        1.0
    );
}

// ---- resource --------------------------------------------------------------------------------

fn resource_attributes(received: &Received) -> Vec<BTreeMap<String, String>> {
    let traces = received
        .traces
        .iter()
        .flat_map(|r| &r.resource_spans)
        .map(|rs| rendered(&rs.resource.as_ref().unwrap().attributes));
    let metrics = received
        .metrics
        .iter()
        .flat_map(|r| &r.resource_metrics)
        .map(|rm| rendered(&rm.resource.as_ref().unwrap().attributes));
    traces.chain(metrics).collect()
}

fn gauge_request(resource: Vec<KeyValue>) -> ExportMetricsServiceRequest {
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(Resource {
                attributes: resource,
                ..Default::default()
            }),
            scope_metrics: vec![ScopeMetrics {
                metrics: vec![Metric {
                    name: "queue.depth".to_string(),
                    data: Some(Data::Gauge(Gauge {
                        data_points: vec![NumberDataPoint {
                            time_unix_nano: 1_700_000_000_000_000_000,
                            value: Some(number_data_point::Value::AsInt(3)),
                            ..Default::default()
                        }],
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resource_detectors_and_actions_apply_to_traces_and_metrics() {
    let backend = Backend::grpc().await;
    let (admin, http) = (local(free_port()), local(free_port()));
    let config = format!(
        r#"
[service]
admin = "{admin}"

[receivers.otlp]
http = "{http}"

[processors.resource]
detectors = ["env", "host", "process", "service_instance"]
deployment_environment = "prod"
attributes = [
  {{ key = "cloud.region", value = "eu-west-1", action = "upsert" }},
  {{ key = "team", from_attribute = "k8s.namespace.name", action = "insert" }},
  {{ key = "build", value = 1042, action = "update" }},
  {{ key = "internal.token", action = "delete" }},
]

[exporters.backend]
type = "otlp_grpc"
endpoint = "{backend}"
compression = "none"

[pipelines.traces]
receivers = ["otlp"]
processors = ["resource"]
exporters = ["backend"]

[pipelines.metrics]
receivers = ["otlp"]
processors = ["resource"]
exporters = ["backend"]
"#,
        backend = backend.url(),
    );
    let sluice = Sluice::start_with_env(
        &config,
        admin,
        &[http],
        &[
            (
                "OTEL_RESOURCE_ATTRIBUTES",
                "owner=data%20platform, service.name=ignored ,cost.center=cc%2F42",
            ),
            ("OTEL_SERVICE_NAME", "sluice-edge"),
        ],
    );

    // An application that describes itself, and a bare source.
    let app = vec![
        s("service.name", "checkout"),
        s("host.name", "app-7"),
        s("k8s.namespace.name", "payments"),
        s("build", "old"),
        s("internal.token", "t0ps3cret"),
    ];
    for resource in [app.clone(), vec![]] {
        let request = traces(resource, vec![span("GET /", vec![])]);
        assert_eq!(
            post(http, "traces", request.encode_to_vec()).await,
            reqwest::StatusCode::OK
        );
    }
    assert_eq!(
        post(http, "metrics", gauge_request(app).encode_to_vec()).await,
        reqwest::StatusCode::OK
    );
    let received = backend
        .recorder
        .wait_until("two span requests and one metrics request", |r| {
            r.span_count() == 2 && r.data_point_count() == 1
        })
        .await;
    let resources = resource_attributes(&received);
    let (app_traces, bare, app_metrics) = match resources.as_slice() {
        [a, b, c] if a.contains_key("k8s.namespace.name") => (a, b, c),
        [b, a, c] => (a, b, c),
        other => panic!("three resources expected: {other:?}"),
    };

    let pid = sluice.pid().to_string();
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .expect("Linux reports the host name")
        .trim()
        .to_string();
    let instance = bare
        .get("service.instance.id")
        .expect("the bare resource gets an instance id")
        .clone();
    let expected = |pairs: &[(&str, String)]| -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    };
    let text = |v: &str| v.to_string();
    // The application's own attributes are kept; detectors only fill in what is missing.
    let app_expected = expected(&[
        ("service.name", text("checkout")),
        ("host.name", text("app-7")),
        ("k8s.namespace.name", text("payments")),
        ("build", "1042".to_string()),
        ("deployment.environment.name", text("prod")),
        ("owner", text("data platform")),
        ("cost.center", text("cc/42")),
        ("process.pid", pid.clone()),
        ("service.instance.id", text(&instance)),
        ("cloud.region", text("eu-west-1")),
        ("team", text("payments")),
    ]);
    assert_eq!(app_traces, &app_expected);
    assert_eq!(app_metrics, &app_expected, "metrics get the same");
    assert_eq!(
        bare,
        &expected(&[
            ("deployment.environment.name", text("prod")),
            ("service.name", text("sluice-edge")),
            ("owner", text("data platform")),
            ("cost.center", text("cc/42")),
            ("host.name", text(&host)),
            ("process.pid", pid),
            ("service.instance.id", text(&instance)),
            ("cloud.region", text("eu-west-1")),
        ])
    );
    // A UUID v4.
    assert_eq!(instance.len(), 36);
    assert_eq!(&instance[14..15], "4", "{instance}");
    assert_eq!(
        sluice.metric(
            "sluice_resource_changed_items_total{processor=\"resource\",signal=\"traces\"}"
        ),
        2.0
    );
}

// ---- memory_limiter --------------------------------------------------------------------------

/// A ~512 KiB OTLP request: 1000 spans with a 500-byte attribute each.
fn bulky_request() -> Vec<u8> {
    let payload = "p".repeat(500);
    let spans = (0..1000u64)
        .map(|i| Span {
            span_id: i.to_be_bytes().to_vec(),
            ..span("bulk", vec![s("payload", &payload)])
        })
        .collect();
    traces(vec![s("service.name", "flood")], spans).encode_to_vec()
}

/// The resident memory of the binary sitting idle, measured by starting it with a limiter
/// whose limits cannot be reached.
async fn idle_resident_bytes() -> u64 {
    let (admin, http) = (local(free_port()), local(free_port()));
    let config = format!(
        r#"
[service]
admin = "{admin}"
[receivers.otlp]
http = "{http}"
[processors.memory_limiter]
limit_mib = 100000
[exporters.debug]
verbosity = "basic"
[pipelines.traces]
receivers = ["otlp"]
processors = ["memory_limiter"]
exporters = ["debug"]
"#
    );
    let sluice = Sluice::start(&config, admin, &[http]);
    // Let start-up settle (thread stacks, the first metrics render).
    sluice.metrics();
    tokio::time::sleep(Duration::from_millis(300)).await;
    sluice.resident_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_limiter_refuses_a_flood_retryably_and_keeps_rss_under_the_hard_limit() {
    const MIB: u64 = 1 << 20;
    let idle = idle_resident_bytes().await;
    // Room for 32 MiB of data over the idle process before refusing, 32 more of spike
    // allowance: the flood below is 640 MiB, ten times the limit.
    let limit_mib = idle / MIB + 64;
    let spike_mib = 32;
    let hard = limit_mib * MIB;

    let hung = Backend::unresponsive().await;
    let (admin, http, grpc) = (local(free_port()), local(free_port()), local(free_port()));
    let config = format!(
        r#"
[service]
admin = "{admin}"

[receivers.otlp]
http = "{http}"
grpc = "{grpc}"

[processors.memory_limiter]
check_interval = "10ms"
limit_mib = {limit_mib}
spike_limit_mib = {spike_mib}

# A backend that never answers and a queue that would take everything: without the limiter
# the process would hold the whole flood.
[exporters.hung]
type = "otlp_http"
endpoint = "{hung}"
compression = "none"
timeout = "10m"
queue = {{ max_items = 100000000, consumers = 1 }}

[pipelines.traces]
receivers = ["otlp"]
processors = ["memory_limiter"]
exporters = ["hung"]
"#,
        hung = hung.url(),
    );
    let sluice = Sluice::start(&config, admin, &[http, grpc]);

    // Read the process's RSS from /proc every millisecond while the flood runs.
    let pid = sluice.pid();
    let peak = Arc::new(AtomicU64::new(0));
    let flooding = Arc::new(AtomicBool::new(true));
    let watcher = {
        let (peak, flooding) = (Arc::clone(&peak), Arc::clone(&flooding));
        std::thread::spawn(move || {
            while flooding.load(Ordering::SeqCst) {
                if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status"))
                    && let Some(kib) = status
                        .lines()
                        .find_map(|l| l.strip_prefix("VmRSS:"))
                        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                {
                    peak.fetch_max(kib * 1024, Ordering::SeqCst);
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        })
    };

    // 4 senders × 320 requests × 512 KiB = 640 MiB, as fast as the receiver takes them.
    let body = bytes::Bytes::from(bulky_request());
    let started = Instant::now();
    let senders: Vec<_> = (0..4)
        .map(|_| {
            let body = body.clone();
            tokio::spawn(async move {
                let client = reqwest::Client::new();
                let (mut ok, mut unavailable) = (0u32, 0u32);
                for _ in 0..320 {
                    let response = client
                        .post(format!("http://{http}/v1/traces"))
                        .header("content-type", "application/x-protobuf")
                        .body(body.clone())
                        .send()
                        .await
                        .expect("the receiver answers");
                    match response.status() {
                        reqwest::StatusCode::OK => ok += 1,
                        reqwest::StatusCode::SERVICE_UNAVAILABLE => {
                            assert!(
                                response.headers().contains_key("retry-after"),
                                "a 503 says when to retry"
                            );
                            unavailable += 1;
                        }
                        other => panic!("unexpected status {other}"),
                    }
                }
                (ok, unavailable)
            })
        })
        .collect();
    let (mut ok, mut unavailable) = (0, 0);
    for sender in senders {
        let (o, u) = sender.await.unwrap();
        ok += o;
        unavailable += u;
    }
    let flood_time = started.elapsed();

    // While refusing, gRPC clients get UNAVAILABLE, which they retry.
    let mut client = TraceServiceClient::connect(format!("http://{grpc}"))
        .await
        .unwrap();
    let status = client
        .export(traces(vec![], vec![span("late", vec![])]))
        .await
        .expect_err("still above the soft limit: the queue holds what was accepted");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");

    flooding.store(false, Ordering::SeqCst);
    watcher.join().unwrap();
    let peak = peak.load(Ordering::SeqCst);
    eprintln!(
        "idle {} MiB, limit {limit_mib} MiB (soft {}), peak {} MiB; {ok} requests accepted, \
         {unavailable} refused in {flood_time:?}",
        idle / MIB,
        limit_mib - spike_mib,
        peak / MIB,
    );
    assert!(ok > 0, "data was accepted until the soft limit");
    assert!(
        unavailable > ok,
        "most of a flood ten times the limit is refused ({ok} accepted)"
    );
    assert!(
        peak < hard,
        "resident memory peaked at {} MiB, over the {limit_mib} MiB hard limit",
        peak / MIB
    );
    let metrics = sluice.metrics();
    let refused = common::metric_value(
        &metrics,
        "sluice_memory_limiter_refused_items_total{processor=\"memory_limiter\",signal=\"traces\"}",
    );
    assert_eq!(
        refused,
        f64::from(unavailable) * 1000.0 + 1.0,
        "every refused span is counted, the gRPC one included"
    );
    assert!(
        common::metric_value(&metrics, "sluice_receiver_refused_items_total") >= refused,
        "{metrics}"
    );
    assert!(common::metric_value(&metrics, "sluice_memory_limiter_state") >= 1.0);
    assert!(
        common::metric_value(&metrics, "sluice_memory_limiter_rss_bytes")
            > (limit_mib - spike_mib) as f64 * MIB as f64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_answers_while_the_limiter_refuses_and_counts_the_dropped_telemetry() {
    let backend = Backend::grpc().await;
    let addresses = Addresses::free();
    // A limit below any process's memory: the limiter refuses from its first batch.
    let config = format!(
        r#"
[service]
admin = "{admin}"

[gateway]
listen = "{gateway}"

{GATEWAY}
[processors.memory_limiter]
check_interval = "50ms"
limit_mib = 1

[exporters.backend]
type = "otlp_grpc"
endpoint = "{backend}"

[pipelines.traces]
receivers = ["gateway"]
processors = ["memory_limiter"]
exporters = ["backend"]
"#,
        admin = addresses.admin,
        gateway = addresses.gateway,
        backend = backend.url(),
    );
    let sluice = Sluice::start(&config, addresses.admin, &[addresses.gateway]);
    let answer = openai(addresses, "sk-team-a-4f2c9e")
        .chat()
        .create(reasoning_chat("o3-mini"))
        .await
        .expect("the gateway answers its clients whatever happens to its telemetry");
    assert!(answer.usage.is_some());

    let refused = "sluice_receiver_refused_items_total{receiver=\"gateway\"";
    common::wait_for("the gateway to count its refused spans", || {
        sluice.metric(refused) >= 3.0
    });
    assert_eq!(
        sluice.metric(
            "sluice_memory_limiter_refused_items_total{processor=\"memory_limiter\",signal=\"traces\"}"
        ),
        sluice.metric(refused),
        "what the limiter refused is what the gateway dropped"
    );
    assert_eq!(sluice.metric("sluice_memory_limiter_state"), 2.0);
    assert_eq!(backend.recorder.snapshot().span_count(), 0);
}
