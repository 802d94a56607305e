//! Helpers for the AI gateway's end-to-end tests: a config that runs the gateway in the real
//! binary with its telemetry going through `batch` to test backends, readers for the spans,
//! metrics and log records those backends received, and an OpenAI-compatible upstream on a
//! socket that records what the gateway sent it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use async_openai::Client;
use async_openai::config::OpenAIConfig;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::logs::v1::LogRecord;
use opentelemetry_proto::tonic::metrics::v1::metric::Data;
use opentelemetry_proto::tonic::metrics::v1::{Metric, number_data_point};
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use serde_json::Value;
use tokio::net::TcpListener;

use super::backends::Received;
use super::{Sluice, free_port};

/// The addresses of one deployment: sluice's admin server and the gateway's API.
#[derive(Clone, Copy)]
pub struct Addresses {
    pub admin: SocketAddr,
    pub gateway: SocketAddr,
}

impl Addresses {
    pub fn free() -> Addresses {
        Addresses {
            admin: SocketAddr::from(([127, 0, 0, 1], free_port())),
            gateway: SocketAddr::from(([127, 0, 0, 1], free_port())),
        }
    }

    /// The OpenAI base URL of the gateway, `http://127.0.0.1:PORT/v1`.
    pub fn api_base(&self) -> String {
        format!("http://{}/v1", self.gateway)
    }
}

/// What varies between the gateway deployments of the tests.
pub struct GatewayConfig<'a> {
    /// Extra keys of the `[gateway]` table itself, e.g. `capture_content = "full"`.
    pub gateway_keys: &'a str,
    /// Everything under `[gateway]` in sub-tables: providers, routes, keys, tracing.
    pub gateway_tables: &'a str,
    /// `[exporters.*]` tables.
    pub exporters: &'a str,
    /// The exporters every pipeline sends to.
    pub exporter_names: &'a [&'a str],
}

impl GatewayConfig<'_> {
    /// The whole config: the gateway's traces, metrics and logs through a `batch` with a short
    /// timeout to the exporters, metrics exported every 200ms so tests do not wait long.
    pub fn render(&self, addresses: Addresses) -> String {
        let names = self
            .exporter_names
            .iter()
            .map(|n| format!("\"{n}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let mut config = format!(
            r#"
[service]
admin = "{admin}"

[gateway]
listen = "{gateway}"
{gateway_keys}

[gateway.telemetry]
metrics_interval = "200ms"

{gateway_tables}

[processors.batch]
timeout = "50ms"

{exporters}
"#,
            admin = addresses.admin,
            gateway = addresses.gateway,
            gateway_keys = self.gateway_keys,
            gateway_tables = self.gateway_tables,
            exporters = self.exporters,
        );
        for signal in ["traces", "metrics", "logs"] {
            config.push_str(&format!(
                "\n[pipelines.{signal}]\nreceivers = [\"gateway\"]\nprocessors = [\"batch\"]\nexporters = [{names}]\n"
            ));
        }
        config
    }

    /// Starts the real binary with this config and waits until the gateway listens.
    pub fn start(&self) -> (Sluice, Addresses) {
        let addresses = Addresses::free();
        let sluice = Sluice::start(
            &self.render(addresses),
            addresses.admin,
            &[addresses.gateway],
        );
        (sluice, addresses)
    }
}

/// An `otlp_grpc` exporter table named `name`, uncompressed.
pub fn grpc_exporter(name: &str, url: &str) -> String {
    format!(
        "[exporters.{name}]\ntype = \"otlp_grpc\"\nendpoint = \"{url}\"\ncompression = \"none\"\n"
    )
}

/// The real OpenAI client pointed at the gateway with `key` as its bearer token.
pub fn openai(addresses: Addresses, key: &str) -> Client<OpenAIConfig> {
    Client::with_config(
        OpenAIConfig::new()
            .with_api_base(addresses.api_base())
            .with_api_key(key),
    )
}

// ---- Reading what the backends received -------------------------------------------------

/// Every span received, in arrival order.
pub fn spans(received: &Received) -> Vec<Span> {
    received
        .traces
        .iter()
        .flat_map(|r| &r.resource_spans)
        .flat_map(|r| &r.scope_spans)
        .flat_map(|s| s.spans.iter().cloned())
        .collect()
}

/// Every log record received, in arrival order.
pub fn log_records(received: &Received) -> Vec<LogRecord> {
    received
        .logs
        .iter()
        .flat_map(|r| &r.resource_logs)
        .flat_map(|r| &r.scope_logs)
        .flat_map(|s| s.log_records.iter().cloned())
        .collect()
}

/// The value of attribute `key`, if present.
pub fn attr<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a AnyValue> {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| v.value.as_ref())
}

pub fn str_attr<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a str> {
    match attr(attributes, key) {
        Some(AnyValue::StringValue(s)) => Some(s),
        Some(other) => panic!("{key} is not a string: {other:?}"),
        None => None,
    }
}

pub fn int_attr(attributes: &[KeyValue], key: &str) -> Option<i64> {
    match attr(attributes, key) {
        Some(AnyValue::IntValue(i)) => Some(*i),
        Some(other) => panic!("{key} is not an int: {other:?}"),
        None => None,
    }
}

pub fn bool_attr(attributes: &[KeyValue], key: &str) -> Option<bool> {
    match attr(attributes, key) {
        Some(AnyValue::BoolValue(b)) => Some(*b),
        Some(other) => panic!("{key} is not a bool: {other:?}"),
        None => None,
    }
}

pub fn str_array_attr(attributes: &[KeyValue], key: &str) -> Option<Vec<String>> {
    match attr(attributes, key) {
        Some(AnyValue::ArrayValue(array)) => Some(
            array
                .values
                .iter()
                .map(|v| match &v.value {
                    Some(AnyValue::StringValue(s)) => s.clone(),
                    other => panic!("{key} holds a non-string: {other:?}"),
                })
                .collect(),
        ),
        Some(other) => panic!("{key} is not an array: {other:?}"),
        None => None,
    }
}

/// An attribute value as text, for matching metric series: strings as they are, numbers and
/// booleans in their usual notation.
pub fn render(value: &AnyValue) -> String {
    match value {
        AnyValue::StringValue(s) => s.clone(),
        AnyValue::IntValue(i) => i.to_string(),
        AnyValue::BoolValue(b) => b.to_string(),
        AnyValue::DoubleValue(d) => d.to_string(),
        other => format!("{other:?}"),
    }
}

/// All attributes rendered, to compare a set at once.
pub fn rendered(attributes: &[KeyValue]) -> BTreeMap<String, String> {
    attributes
        .iter()
        .filter_map(|kv| Some((kv.key.clone(), render(kv.value.as_ref()?.value.as_ref()?))))
        .collect()
}

/// The spans of one request: its SERVER span and the spans under it.
#[derive(Debug, Clone)]
pub struct RequestTrace {
    pub server: Span,
    pub routing: Option<Span>,
    pub clients: Vec<Span>,
}

impl RequestTrace {
    /// The request traces among `spans`: one per SERVER span, with the spans whose parent it is.
    pub fn all(spans: &[Span]) -> Vec<RequestTrace> {
        spans
            .iter()
            .filter(|s| s.kind == SpanKind::Server as i32)
            .map(|server| {
                let children: Vec<&Span> = spans
                    .iter()
                    .filter(|s| s.trace_id == server.trace_id && s.parent_span_id == server.span_id)
                    .collect();
                let routing: Vec<&Span> = children
                    .iter()
                    .copied()
                    .filter(|s| s.kind == SpanKind::Internal as i32)
                    .collect();
                assert!(
                    routing.len() <= 1,
                    "more than one routing span: {routing:?}"
                );
                let mut clients: Vec<Span> = children
                    .iter()
                    .filter(|s| s.kind == SpanKind::Client as i32)
                    .map(|s| (*s).clone())
                    .collect();
                clients.sort_by_key(|s| s.start_time_unix_nano);
                assert_eq!(
                    children.len(),
                    routing.len() + clients.len(),
                    "children of the SERVER span other than routing and CLIENT spans: {children:?}"
                );
                RequestTrace {
                    server: server.clone(),
                    routing: routing.first().map(|s| (*s).clone()),
                    clients,
                }
            })
            .collect()
    }

    /// The one request trace among `spans` whose SERVER span matches `pick`.
    pub fn find(spans: &[Span], pick: impl Fn(&Span) -> bool) -> Option<RequestTrace> {
        let mut found: Vec<RequestTrace> = RequestTrace::all(spans)
            .into_iter()
            .filter(|t| pick(&t.server))
            .collect();
        assert!(
            found.len() <= 1,
            "more than one request matches: {found:#?}"
        );
        found.pop()
    }

    /// Every span of the request, SERVER first.
    pub fn every_span(&self) -> Vec<&Span> {
        std::iter::once(&self.server)
            .chain(&self.routing)
            .chain(&self.clients)
            .collect()
    }
}

/// Whether `span`'s status is ERROR.
pub fn is_error(span: &Span) -> bool {
    span.status
        .as_ref()
        .is_some_and(|s| s.code == StatusCode::Error as i32)
}

/// Whether `span`'s status is unset (what an instrumentation leaves on success).
pub fn is_unset(span: &Span) -> bool {
    span.status
        .as_ref()
        .is_none_or(|s| s.code == StatusCode::Unset as i32)
}

/// The most recent export of metric `name`: the gateway's metrics are cumulative, so the last
/// export holds everything recorded until then.
pub fn latest_metric<'a>(received: &'a Received, name: &str) -> Option<&'a Metric> {
    received
        .metrics
        .iter()
        .rev()
        .flat_map(|r| &r.resource_metrics)
        .flat_map(|r| &r.scope_metrics)
        .flat_map(|s| &s.metrics)
        .find(|m| m.name == name)
}

fn matches(attributes: &[KeyValue], filter: &[(&str, &str)]) -> bool {
    filter
        .iter()
        .all(|(key, value)| attr(attributes, key).is_some_and(|v| render(v) == *value))
}

/// The sum of the counter `name`'s series whose attributes include `filter` (0 when absent).
pub fn counter(received: &Received, name: &str, filter: &[(&str, &str)]) -> i64 {
    let Some(metric) = latest_metric(received, name) else {
        return 0;
    };
    let Some(Data::Sum(sum)) = &metric.data else {
        panic!("{name} is not a sum: {metric:?}");
    };
    sum.data_points
        .iter()
        .filter(|p| matches(&p.attributes, filter))
        .map(|p| match p.value {
            Some(number_data_point::Value::AsInt(i)) => i,
            Some(number_data_point::Value::AsDouble(d)) => d as i64,
            None => 0,
        })
        .sum()
}

/// The count and sum of the histogram `name`'s series whose attributes include `filter`.
pub fn histogram(received: &Received, name: &str, filter: &[(&str, &str)]) -> (u64, f64) {
    let Some(metric) = latest_metric(received, name) else {
        return (0, 0.0);
    };
    let Some(Data::Histogram(histogram)) = &metric.data else {
        panic!("{name} is not a histogram: {metric:?}");
    };
    histogram
        .data_points
        .iter()
        .filter(|p| matches(&p.attributes, filter))
        .fold((0, 0.0), |(count, sum), p| {
            (count + p.count, sum + p.sum.unwrap_or(0.0))
        })
}

/// The attribute sets of the series of metric `name`, rendered.
pub fn series(received: &Received, name: &str) -> Vec<BTreeMap<String, String>> {
    let Some(metric) = latest_metric(received, name) else {
        return Vec::new();
    };
    match &metric.data {
        Some(Data::Sum(s)) => s
            .data_points
            .iter()
            .map(|p| rendered(&p.attributes))
            .collect(),
        Some(Data::Histogram(h)) => h
            .data_points
            .iter()
            .map(|p| rendered(&p.attributes))
            .collect(),
        other => panic!("{name}: unexpected data {other:?}"),
    }
}

// ---- An upstream that records what the gateway sent ----------------------------------------

/// A request the upstream received: its headers and JSON body.
pub type Seen = Arc<Mutex<Vec<(http::HeaderMap, Value)>>>;

/// The gateway's mock served over HTTP as an OpenAI-compatible upstream, recording each
/// request before answering it (so by the time the client has its answer, the record is there).
pub struct RecordingUpstream {
    /// `http://127.0.0.1:PORT/v1`, what a provider's `base_url` takes.
    pub base_url: String,
    pub address: SocketAddr,
    pub seen: Seen,
    server: tokio::task::JoinHandle<()>,
}

impl RecordingUpstream {
    pub async fn start() -> RecordingUpstream {
        let seen: Seen = Arc::default();
        let record = seen.clone();
        let router =
            sluice_gateway::mock_router(Default::default()).layer(axum::middleware::from_fn(
                move |request: axum::extract::Request, next: axum::middleware::Next| {
                    let record = record.clone();
                    async move {
                        let (parts, body) = request.into_parts();
                        let bytes = axum::body::to_bytes(body, usize::MAX)
                            .await
                            .unwrap_or_default();
                        let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                        record.lock().unwrap().push((parts.headers.clone(), json));
                        next.run(axum::extract::Request::from_parts(
                            parts,
                            axum::body::Body::from(bytes),
                        ))
                        .await
                    }
                },
            ));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        RecordingUpstream {
            base_url: format!("http://{address}/v1"),
            address,
            seen,
            server,
        }
    }

    /// The requests received so far.
    pub fn requests(&self) -> Vec<(http::HeaderMap, Value)> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for RecordingUpstream {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// Everything a backend decoded, encoded again as protobuf and concatenated: strings are
/// stored as their UTF-8 bytes in protobuf, so searching these bytes finds any text exported.
pub fn reencoded(received: &Received) -> Vec<u8> {
    use prost::Message;
    let mut bytes = Vec::new();
    for request in &received.traces {
        bytes.extend(request.encode_to_vec());
    }
    for request in &received.metrics {
        bytes.extend(request.encode_to_vec());
    }
    for request in &received.logs {
        bytes.extend(request.encode_to_vec());
    }
    bytes
}

/// Whether `needle` occurs in `haystack`.
pub fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle.as_bytes())
}
