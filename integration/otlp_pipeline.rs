//! End to end: the OpenTelemetry SDK sends traces, metrics and logs over OTLP/gRPC,
//! OTLP/HTTP protobuf and OTLP/HTTP JSON to the real `sluice` binary, which fans out to a
//! gRPC backend and to HTTP backends taking protobuf and JSON. Every backend must receive
//! exactly what the SDK sent.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::backends::{Backend, Received};
use common::{Sluice, free_port};
use opentelemetry::KeyValue;
use opentelemetry::logs::{LogRecord as _, Logger as _, LoggerProvider as _, Severity};
use opentelemetry::metrics::MeterProvider as _;
use opentelemetry::trace::{
    Span as _, SpanKind, TraceContextExt as _, Tracer as _, TracerProvider as _,
};
use opentelemetry_otlp::{Protocol, WithExportConfig as _};
use opentelemetry_proto::tonic::common::v1::KeyValue as ProtoKeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_sdk::Resource;

#[derive(Clone, Copy, Debug)]
enum Transport {
    Grpc,
    HttpProto,
    HttpJson,
}

struct Deployment {
    sluice: Sluice,
    grpc_backend: Backend,
    proto_backend: Backend,
    json_backend: Backend,
    grpc: SocketAddr,
    http: SocketAddr,
}

async fn deploy() -> Deployment {
    let grpc_backend = Backend::grpc().await;
    let proto_backend = Backend::http().await;
    let json_backend = Backend::http().await;
    let (admin, grpc, http) = (
        SocketAddr::from(([127, 0, 0, 1], free_port())),
        SocketAddr::from(([127, 0, 0, 1], free_port())),
        SocketAddr::from(([127, 0, 0, 1], free_port())),
    );
    let config = format!(
        r#"
[service]
admin = "{admin}"

[receivers.otlp]
grpc = "{grpc}"
http = "{http}"

[processors.batch]
timeout = "50ms"

[exporters.tempo]
type = "otlp_grpc"
endpoint = "{grpc_url}"
compression = "gzip"
headers = {{ "x-scope-orgid" = "tenant-1" }}

[exporters.collector]
type = "otlp_http"
endpoint = "{proto_url}"

[exporters.honeycomb]
type = "otlp_http"
endpoint = "{json_url}"
encoding = "json"
compression = "none"

[pipelines.traces]
receivers = ["otlp"]
processors = ["batch"]
exporters = ["tempo", "collector", "honeycomb"]

[pipelines.metrics]
receivers = ["otlp"]
processors = ["batch"]
exporters = ["tempo", "collector", "honeycomb"]

[pipelines.logs]
receivers = ["otlp"]
exporters = ["tempo", "collector", "honeycomb"]
"#,
        grpc_url = grpc_backend.url(),
        proto_url = proto_backend.url(),
        json_url = json_backend.url(),
    );
    let sluice = Sluice::start(&config, admin, &[grpc, http]);
    Deployment {
        sluice,
        grpc_backend,
        proto_backend,
        json_backend,
        grpc,
        http,
    }
}

fn resource() -> Resource {
    Resource::builder()
        .with_service_name("checkout")
        .with_attributes([
            KeyValue::new("deployment.environment.name", "test"),
            KeyValue::new("host.cores", 2),
        ])
        .build()
}

fn span_exporter(transport: Transport, d: &Deployment) -> opentelemetry_otlp::SpanExporter {
    let builder = opentelemetry_otlp::SpanExporter::builder();
    match transport {
        Transport::Grpc => builder
            .with_tonic()
            .with_endpoint(format!("http://{}", d.grpc))
            .build(),
        Transport::HttpProto => builder
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(format!("http://{}/v1/traces", d.http))
            .build(),
        Transport::HttpJson => builder
            .with_http()
            .with_protocol(Protocol::HttpJson)
            .with_endpoint(format!("http://{}/v1/traces", d.http))
            .build(),
    }
    .expect("exporter builds")
}

fn metric_exporter(transport: Transport, d: &Deployment) -> opentelemetry_otlp::MetricExporter {
    let builder = opentelemetry_otlp::MetricExporter::builder();
    match transport {
        Transport::Grpc => builder
            .with_tonic()
            .with_endpoint(format!("http://{}", d.grpc))
            .build(),
        Transport::HttpProto => builder
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(format!("http://{}/v1/metrics", d.http))
            .build(),
        Transport::HttpJson => builder
            .with_http()
            .with_protocol(Protocol::HttpJson)
            .with_endpoint(format!("http://{}/v1/metrics", d.http))
            .build(),
    }
    .expect("exporter builds")
}

fn log_exporter(transport: Transport, d: &Deployment) -> opentelemetry_otlp::LogExporter {
    let builder = opentelemetry_otlp::LogExporter::builder();
    match transport {
        Transport::Grpc => builder
            .with_tonic()
            .with_endpoint(format!("http://{}", d.grpc))
            .build(),
        Transport::HttpProto => builder
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(format!("http://{}/v1/logs", d.http))
            .build(),
        Transport::HttpJson => builder
            .with_http()
            .with_protocol(Protocol::HttpJson)
            .with_endpoint(format!("http://{}/v1/logs", d.http))
            .build(),
    }
    .expect("exporter builds")
}

/// What the SDK was asked to send, to compare with what the backends got.
struct Sent {
    trace_id: Vec<u8>,
    span_ids: Vec<Vec<u8>>,
}

const SPANS: usize = 3;
const LOG_RECORDS: usize = 2;
/// A counter, a histogram and a gauge: one data point each.
const DATA_POINTS: usize = 3;

/// Sends 3 spans, 3 metric data points and 2 log records through the SDK over `transport`.
async fn send_with_sdk(transport: Transport, d: &Deployment) -> Sent {
    let (spans, metrics, logs) = (
        span_exporter(transport, d),
        metric_exporter(transport, d),
        log_exporter(transport, d),
    );
    // The SDK's simple processors block on each export: run them where blocking is allowed.
    let sent = tokio::task::spawn_blocking(move || {
        let tracer_provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
            .with_simple_exporter(spans)
            .with_resource(resource())
            .build();
        let tracer = tracer_provider.tracer_with_scope(
            opentelemetry::InstrumentationScope::builder("sluice.e2e")
                .with_version("1.2.3")
                .build(),
        );
        let mut span_ids = Vec::new();
        let root = tracer
            .span_builder("POST /v1/chat/completions")
            .with_kind(SpanKind::Server)
            .with_attributes([
                KeyValue::new("gen_ai.request.model", "gpt-4o"),
                KeyValue::new("gen_ai.usage.input_tokens", 42),
                KeyValue::new("gen_ai.request.temperature", 0.5),
                KeyValue::new("gen_ai.request.stream", true),
            ])
            .start(&tracer);
        let trace_id = root.span_context().trace_id().to_bytes().to_vec();
        span_ids.push(root.span_context().span_id().to_bytes().to_vec());
        let context = opentelemetry::Context::current_with_span(root);
        for name in ["route", "chat gpt-4o"] {
            let mut child = tracer
                .span_builder(name)
                .with_kind(SpanKind::Client)
                .start_with_context(&tracer, &context);
            child.set_attribute(KeyValue::new("server.address", "api.example.com"));
            child.add_event("first token", vec![KeyValue::new("delay_ms", 12)]);
            span_ids.push(child.span_context().span_id().to_bytes().to_vec());
            child.end();
        }
        context.span().end();
        tracer_provider
            .shutdown()
            .expect("tracer provider shuts down");

        let logger_provider = opentelemetry_sdk::logs::SdkLoggerProvider::builder()
            .with_simple_exporter(logs)
            .with_resource(resource())
            .build();
        let logger = logger_provider.logger("sluice.e2e");
        for (i, body) in ["request accepted", "request finished"]
            .into_iter()
            .enumerate()
        {
            let mut record = logger.create_log_record();
            record.set_body(body.into());
            record.set_severity_number(Severity::Info);
            record.set_severity_text("INFO");
            record.add_attribute("request.index", i as i64);
            logger.emit(record);
        }
        logger_provider
            .shutdown()
            .expect("logger provider shuts down");
        Sent { trace_id, span_ids }
    })
    .await
    .unwrap();

    // The periodic reader exports once, at shutdown, so each data point is sent exactly once.
    let reader =
        opentelemetry_sdk::metrics::periodic_reader_with_async_runtime::PeriodicReader::builder(
            metrics,
            opentelemetry_sdk::runtime::Tokio,
        )
        .with_interval(Duration::from_secs(3600))
        .build();
    let meter_provider = opentelemetry_sdk::metrics::SdkMeterProvider::builder()
        .with_reader(reader)
        .with_resource(resource())
        .build();
    let meter = meter_provider.meter("sluice.e2e");
    let tokens = meter
        .u64_counter("gen_ai.client.token.usage.total")
        .with_unit("{token}")
        .build();
    tokens.add(5, &[KeyValue::new("gen_ai.request.model", "gpt-4o")]);
    tokens.add(2, &[KeyValue::new("gen_ai.request.model", "gpt-4o")]);
    let duration = meter
        .f64_histogram("gen_ai.client.operation.duration")
        .with_unit("s")
        .build();
    duration.record(0.25, &[KeyValue::new("gen_ai.request.model", "gpt-4o")]);
    let in_flight = meter.i64_gauge("requests.in_flight").build();
    in_flight.record(3, &[]);
    tokio::task::spawn_blocking(move || {
        meter_provider
            .shutdown()
            .expect("meter provider shuts down")
    })
    .await
    .unwrap();
    sent
}

fn attr<'a>(attributes: &'a [ProtoKeyValue], key: &str) -> Option<&'a AnyValue> {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref()?.value.as_ref())
}

/// Checks that `received` holds exactly what the SDK sent.
fn assert_matches_sent(backend: &str, received: &Received, sent: &Sent) {
    assert_eq!(received.span_count(), SPANS, "{backend}: span count");
    assert_eq!(
        received.data_point_count(),
        DATA_POINTS,
        "{backend}: data point count"
    );
    assert_eq!(
        received.log_record_count(),
        LOG_RECORDS,
        "{backend}: log record count"
    );

    let mut span_ids = Vec::new();
    for resource_spans in received.traces.iter().flat_map(|r| &r.resource_spans) {
        let resource = resource_spans.resource.as_ref().expect("resource kept");
        assert_eq!(
            attr(&resource.attributes, "service.name"),
            Some(&AnyValue::StringValue("checkout".into())),
            "{backend}"
        );
        assert_eq!(
            attr(&resource.attributes, "host.cores"),
            Some(&AnyValue::IntValue(2)),
            "{backend}"
        );
        for scope_spans in &resource_spans.scope_spans {
            let scope = scope_spans.scope.as_ref().expect("scope kept");
            assert_eq!(
                (scope.name.as_str(), scope.version.as_str()),
                ("sluice.e2e", "1.2.3"),
                "{backend}"
            );
            for span in &scope_spans.spans {
                assert_eq!(
                    span.trace_id, sent.trace_id,
                    "{backend}: trace id of {}",
                    span.name
                );
                span_ids.push(span.span_id.clone());
                if span.name == "POST /v1/chat/completions" {
                    assert!(span.parent_span_id.is_empty(), "{backend}");
                    assert_eq!(
                        attr(&span.attributes, "gen_ai.request.model"),
                        Some(&AnyValue::StringValue("gpt-4o".into()))
                    );
                    assert_eq!(
                        attr(&span.attributes, "gen_ai.usage.input_tokens"),
                        Some(&AnyValue::IntValue(42))
                    );
                    assert_eq!(
                        attr(&span.attributes, "gen_ai.request.temperature"),
                        Some(&AnyValue::DoubleValue(0.5))
                    );
                    assert_eq!(
                        attr(&span.attributes, "gen_ai.request.stream"),
                        Some(&AnyValue::BoolValue(true))
                    );
                } else {
                    assert_eq!(
                        span.parent_span_id, sent.span_ids[0],
                        "{backend}: parent of {}",
                        span.name
                    );
                    assert_eq!(span.events.len(), 1, "{backend}");
                    assert_eq!(
                        attr(&span.events[0].attributes, "delay_ms"),
                        Some(&AnyValue::IntValue(12))
                    );
                }
            }
        }
    }
    span_ids.sort();
    let mut expected = sent.span_ids.clone();
    expected.sort();
    assert_eq!(span_ids, expected, "{backend}: span ids");

    let mut bodies = Vec::new();
    for resource_logs in received.logs.iter().flat_map(|r| &r.resource_logs) {
        let resource = resource_logs.resource.as_ref().expect("resource kept");
        assert_eq!(
            attr(&resource.attributes, "service.name"),
            Some(&AnyValue::StringValue("checkout".into()))
        );
        for record in resource_logs.scope_logs.iter().flat_map(|s| &s.log_records) {
            assert_eq!(record.severity_text, "INFO", "{backend}");
            assert_eq!(record.severity_number, 9, "{backend}");
            bodies.push(record.body.as_ref().and_then(|b| b.value.clone()));
        }
    }
    bodies.sort_by_key(|b| format!("{b:?}"));
    assert_eq!(
        bodies,
        vec![
            Some(AnyValue::StringValue("request accepted".into())),
            Some(AnyValue::StringValue("request finished".into()))
        ],
        "{backend}"
    );

    use opentelemetry_proto::tonic::metrics::v1::{
        metric::Data, number_data_point::Value as Number,
    };
    let metrics: Vec<_> = received
        .metrics
        .iter()
        .flat_map(|r| &r.resource_metrics)
        .flat_map(|r| &r.scope_metrics)
        .flat_map(|s| &s.metrics)
        .collect();
    let find = |name: &str| {
        metrics
            .iter()
            .find(|m| m.name == name)
            .unwrap_or_else(|| panic!("{backend}: metric {name} missing"))
    };
    match &find("gen_ai.client.token.usage.total").data {
        Some(Data::Sum(sum)) => {
            assert!(sum.is_monotonic);
            assert_eq!(
                sum.data_points[0].value,
                Some(Number::AsInt(7)),
                "{backend}"
            );
            assert_eq!(
                attr(&sum.data_points[0].attributes, "gen_ai.request.model"),
                Some(&AnyValue::StringValue("gpt-4o".into()))
            );
        }
        other => panic!("{backend}: token counter arrived as {other:?}"),
    }
    assert_eq!(find("gen_ai.client.token.usage.total").unit, "{token}");
    match &find("gen_ai.client.operation.duration").data {
        Some(Data::Histogram(h)) => {
            assert_eq!(h.data_points[0].count, 1);
            assert_eq!(h.data_points[0].sum, Some(0.25));
            assert!(!h.data_points[0].explicit_bounds.is_empty());
        }
        other => panic!("{backend}: histogram arrived as {other:?}"),
    }
    match &find("requests.in_flight").data {
        Some(Data::Gauge(g)) => assert_eq!(g.data_points[0].value, Some(Number::AsInt(3))),
        other => panic!("{backend}: gauge arrived as {other:?}"),
    }
}

fn complete(r: &Received) -> bool {
    r.span_count() >= SPANS
        && r.data_point_count() >= DATA_POINTS
        && r.log_record_count() >= LOG_RECORDS
}

async fn every_signal_arrives_unchanged_at_every_backend(transport: Transport) {
    let mut d = deploy().await;
    let sent = send_with_sdk(transport, &d).await;
    let grpc = d
        .grpc_backend
        .recorder
        .wait_until("everything at the gRPC backend", complete)
        .await;
    let proto = d
        .proto_backend
        .recorder
        .wait_until("everything at the HTTP protobuf backend", complete)
        .await;
    let json = d
        .json_backend
        .recorder
        .wait_until("everything at the HTTP JSON backend", complete)
        .await;
    assert_matches_sent("grpc backend", &grpc, &sent);
    assert_matches_sent("http protobuf backend", &proto, &sent);
    assert_matches_sent("http json backend", &json, &sent);

    // The gRPC exporter's configured header and compression reached the backend.
    assert!(
        grpc.headers
            .iter()
            .all(|h| h.get("x-scope-orgid").is_some_and(|v| v == "tenant-1"))
    );
    assert!(
        grpc.headers
            .iter()
            .all(|h| h.get("grpc-encoding").is_some_and(|v| v == "gzip"))
    );
    assert!(proto.headers.iter().all(|h| {
        h.get("content-type")
            .is_some_and(|v| v == "application/x-protobuf")
    }));
    assert!(json.headers.iter().all(|h| {
        h.get("content-type")
            .is_some_and(|v| v == "application/json")
    }));

    let transport_label = match transport {
        Transport::Grpc => "grpc",
        _ => "http",
    };
    let metrics = d.sluice.metrics();
    let accepted = |signal: &str| {
        common::metric_value(
            &metrics,
            &format!(
                "sluice_receiver_accepted_items_total{{receiver=\"otlp\",signal=\"{signal}\",transport=\"{transport_label}\"}}"
            ),
        )
    };
    assert_eq!(accepted("traces"), SPANS as f64, "{metrics}");
    assert_eq!(accepted("metrics"), DATA_POINTS as f64, "{metrics}");
    assert_eq!(accepted("logs"), LOG_RECORDS as f64, "{metrics}");
    assert!(d.sluice.is_running());
    assert!(d.sluice.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_traces_metrics_and_logs_arrive_unchanged_at_every_backend() {
    every_signal_arrives_unchanged_at_every_backend(Transport::Grpc).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_protobuf_traces_metrics_and_logs_arrive_unchanged_at_every_backend() {
    every_signal_arrives_unchanged_at_every_backend(Transport::HttpProto).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_json_traces_metrics_and_logs_arrive_unchanged_at_every_backend() {
    every_signal_arrives_unchanged_at_every_backend(Transport::HttpJson).await;
}
