use super::*;
use crate::test_data;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans};

fn render(request: Request, verbosity: Verbosity) -> String {
    let mut out = Vec::new();
    write_request(&mut out, &request, verbosity).unwrap();
    String::from_utf8(out).unwrap()
}

fn traces() -> Request {
    Request::Traces(test_data::traces_request())
}

fn metrics() -> Request {
    Request::Metrics(test_data::metrics_request())
}

fn logs() -> Request {
    Request::Logs(test_data::logs_request())
}

#[test]
fn basic_prints_one_summary_line_per_batch() {
    assert_eq!(
        render(traces(), Verbosity::Basic),
        "traces: resources=1 spans=1\n"
    );
    assert_eq!(
        render(metrics(), Verbosity::Basic),
        "metrics: resources=1 metrics=5 data_points=7\n"
    );
    assert_eq!(
        render(logs(), Verbosity::Basic),
        "logs: resources=1 log_records=1\n"
    );
}

#[test]
fn normal_prints_one_line_per_span() {
    assert_eq!(
        render(traces(), Verbosity::Normal),
        "span \"GET /cart\" trace_id=5b8efff798038103d269b633813fc60c span_id=eee19b7ec3c1b174 \
         duration=1.5ms status=ERROR \"upstream failed\" {str=\"value\", bool=true, \
         int=-9007199254740993, double=2.5, bytes=0x000102ff, array=[\"a\", 7], map={inner=\"x\"}}\n"
    );
}

#[test]
fn normal_prints_one_line_per_data_point() {
    let text = render(metrics(), Verbosity::Normal);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines,
        [
            "metric \"gauge.double\" gauge value=1.5 {point.attr=\"p\"}",
            "metric \"gauge.double\" gauge value=NaN {point.attr=\"p\"}",
            "metric \"gauge.double\" gauge value=-inf {point.attr=\"p\"}",
            "metric \"sum.int\" sum value=9007199254740993 {point.attr=\"p\"}",
            "metric \"histogram\" histogram count=9007199254740993 sum=12.5 min=-inf max=inf {point.attr=\"h\"}",
            "metric \"exponential_histogram\" exponential_histogram count=6 sum=NaN scale=-3 {point.attr=\"x\"}",
            "metric \"summary\" summary count=3 sum=inf {point.attr=\"s\"}",
        ]
    );
}

#[test]
fn normal_prints_one_line_per_log_record() {
    let text = render(logs(), Verbosity::Normal);
    assert_eq!(text.lines().count(), 1);
    assert!(
        text.starts_with(
            "log severity=ERROR(17) body=\"payment declined\" \
             trace_id=5b8efff798038103d269b633813fc60c span_id=eee19b7ec3c1b174 {str=\"value\""
        ),
        "{text}"
    );
}

#[test]
fn normal_escapes_newlines_so_one_item_stays_one_line() {
    let mut request = test_data::traces_request();
    request.resource_spans[0].scope_spans[0].spans[0].name = "two\nlines".into();
    let text = render(Request::Traces(request), Verbosity::Normal);
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(text.starts_with("span \"two\\nlines\""), "{text}");
}

#[test]
fn detailed_prints_resource_scope_and_every_span_field() {
    let text = render(traces(), Verbosity::Detailed);
    let lines: Vec<&str> = text.lines().collect();
    for expected in [
        "ResourceSpans #0",
        "Resource SchemaURL: https://opentelemetry.io/schemas/1.28.0",
        "     -> service.name: Str(checkout)",
        "Resource dropped attributes: 1",
        "ScopeSpans SchemaURL: https://opentelemetry.io/schemas/1.29.0",
        "InstrumentationScope sluice.test 1.2.3",
        "     -> scope.attr: Str(s)",
        "Span #0",
        "    Trace ID       : 5b8efff798038103d269b633813fc60c",
        "    Parent ID      : eee19b7ec3c1b173",
        "    ID             : eee19b7ec3c1b174",
        "    Name           : GET /cart",
        "    Kind           : SERVER",
        "    TraceState     : vendor=x",
        "    Start time     : 2024-01-01T00:00:00.000000123Z",
        "    End time       : 2024-01-01T00:00:00.001500123Z",
        "    Status code    : ERROR",
        "    Status message : upstream failed",
        "     -> int: Int(-9007199254740993)",
        "     -> bytes: Bytes(000102ff)",
        "     -> array: Slice([\"a\", 7])",
        "     -> map: Map({inner=\"x\"})",
        "SpanEvent #0",
        "     -> Name: exception",
        "          -> exception.message: Str(boom)",
        "SpanLink #0",
        "     -> Trace ID: 0cc63f8133b669d203810398f7ff8e5b",
        "          -> link.attr: Str(l)",
        "Dropped links: 7",
    ] {
        assert!(lines.contains(&expected), "missing {expected:?} in\n{text}");
    }
}

#[test]
fn detailed_prints_every_kind_of_metric() {
    let text = render(metrics(), Verbosity::Detailed);
    let lines: Vec<&str> = text.lines().collect();
    for expected in [
        "Metric #0",
        "     -> Name: gauge.double",
        "     -> DataType: Gauge",
        "Value: NaN",
        "Exemplar #1",
        "     -> Value: -9007199254740993",
        "     -> DataType: Sum",
        "     -> IsMonotonic: true",
        "     -> AggregationTemporality: Delta",
        "     -> DataType: Histogram",
        "ExplicitBounds #0: -inf",
        "Buckets #1, Count: 9007199254740992",
        "     -> DataType: ExponentialHistogram",
        "Positive offset: -2, bucket counts: [1, 2]",
        "     -> DataType: Summary",
        "QuantileValue #1: Quantile 1, Value NaN",
    ] {
        assert!(lines.contains(&expected), "missing {expected:?} in\n{text}");
    }
}

#[test]
fn detailed_prints_every_log_record_field() {
    let text = render(logs(), Verbosity::Detailed);
    let lines: Vec<&str> = text.lines().collect();
    for expected in [
        "ResourceLog #0",
        "LogRecord #0",
        "ObservedTimestamp: 2024-01-01T00:00:00.001500123Z",
        "Timestamp: 2024-01-01T00:00:00.000000123Z",
        "SeverityText: ERROR",
        "SeverityNumber: 17",
        "EventName: payment.declined",
        "Body: Str(payment declined)",
        "     -> bool: Bool(true)",
        "Trace ID: 5b8efff798038103d269b633813fc60c",
        "Span ID: eee19b7ec3c1b174",
        "Flags: 1",
    ] {
        assert!(lines.contains(&expected), "missing {expected:?} in\n{text}");
    }
}

#[test]
fn missing_fields_print_as_unset_instead_of_failing() {
    let request = Request::Traces(
        opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans {
                    spans: vec![Span::default()],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        },
    );
    let text = render(request.clone(), Verbosity::Normal);
    assert_eq!(
        text,
        "span \"\" trace_id= span_id= duration=0ns status=UNSET\n"
    );
    let text = render(request, Verbosity::Detailed);
    assert!(text.contains("    Start time     : unset\n"), "{text}");
}

#[test]
fn verbosity_defaults_to_normal_and_rejects_unknown_levels() {
    let config: Config = test_data::settings("debug", "").parse().unwrap();
    assert_eq!(config.verbosity, Verbosity::Normal);
    let error = DebugFactory
        .build(&test_data::settings("debug", "verbosity = \"loud\""))
        .err()
        .unwrap();
    assert_eq!(error.path.to_string(), "exporters.test.verbosity");
}

#[tokio::test]
async fn export_prints_without_error() {
    let exporter = DebugFactory
        .build(&test_data::settings("debug", "verbosity = \"basic\""))
        .unwrap();
    exporter.export(Batch::from_request(logs())).await.unwrap();
}
