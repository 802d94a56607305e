//! Export requests with every field set to a non-default value, for the exporters' tests: a
//! field an encoder forgets or mangles shows up as a difference after a round trip.

use opentelemetry_proto::tonic::collector::{
    logs::v1::ExportLogsServiceRequest, metrics::v1::ExportMetricsServiceRequest,
    trace::v1::ExportTraceServiceRequest,
};
use opentelemetry_proto::tonic::common::v1::{
    AnyValue, ArrayValue, EntityRef, InstrumentationScope, KeyValue, KeyValueList, any_value,
};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::metrics::v1::{
    Exemplar, ExponentialHistogram, ExponentialHistogramDataPoint, Gauge, Histogram,
    HistogramDataPoint, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum, Summary,
    SummaryDataPoint, exemplar, exponential_histogram_data_point::Buckets, metric,
    number_data_point, summary_data_point::ValueAtQuantile,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    ResourceSpans, ScopeSpans, Span, Status, span::Event, span::Link,
};

pub const TRACE_ID: [u8; 16] = [
    0x5b, 0x8e, 0xff, 0xf7, 0x98, 0x03, 0x81, 0x03, 0xd2, 0x69, 0xb6, 0x33, 0x81, 0x3f, 0xc6, 0x0c,
];
pub const SPAN_ID: [u8; 8] = [0xee, 0xe1, 0x9b, 0x7e, 0xc3, 0xc1, 0xb1, 0x74];
pub const PARENT_SPAN_ID: [u8; 8] = [0xee, 0xe1, 0x9b, 0x7e, 0xc3, 0xc1, 0xb1, 0x73];
/// 2024-01-01T00:00:00Z in nanoseconds: above 2^53, so a JSON encoder that writes it as a
/// double loses digits.
pub const START: u64 = 1_704_067_200_000_000_123;
pub const END: u64 = START + 1_500_000;

pub fn string(key: &str, value: &str) -> KeyValue {
    kv(key, any_value::Value::StringValue(value.to_string()))
}

pub fn kv(key: &str, value: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

/// One attribute of every AnyValue kind, including an int64 too large for a double.
pub fn every_kind_of_attribute() -> Vec<KeyValue> {
    use any_value::Value;
    vec![
        string("str", "value"),
        kv("bool", Value::BoolValue(true)),
        kv("int", Value::IntValue(-9_007_199_254_740_993)),
        kv("double", Value::DoubleValue(2.5)),
        kv("bytes", Value::BytesValue(vec![0, 1, 2, 0xff])),
        kv(
            "array",
            Value::ArrayValue(ArrayValue {
                values: vec![
                    AnyValue {
                        value: Some(Value::StringValue("a".into())),
                    },
                    AnyValue {
                        value: Some(Value::IntValue(7)),
                    },
                ],
            }),
        ),
        kv(
            "map",
            Value::KvlistValue(KeyValueList {
                values: vec![string("inner", "x")],
            }),
        ),
    ]
}

pub fn resource() -> Resource {
    Resource {
        attributes: vec![
            string("service.name", "checkout"),
            string("host.name", "h1"),
        ],
        dropped_attributes_count: 1,
        entity_refs: vec![EntityRef {
            schema_url: "https://opentelemetry.io/schemas/1.30.0".into(),
            r#type: "service".into(),
            id_keys: vec!["service.name".into()],
            description_keys: vec!["host.name".into()],
        }],
    }
}

pub fn scope() -> InstrumentationScope {
    InstrumentationScope {
        name: "sluice.test".into(),
        version: "1.2.3".into(),
        attributes: vec![string("scope.attr", "s")],
        dropped_attributes_count: 2,
    }
}

pub fn span() -> Span {
    Span {
        trace_id: TRACE_ID.to_vec(),
        span_id: SPAN_ID.to_vec(),
        trace_state: "vendor=x".into(),
        parent_span_id: PARENT_SPAN_ID.to_vec(),
        flags: 0x301,
        name: "GET /cart".into(),
        kind: 2,
        start_time_unix_nano: START,
        end_time_unix_nano: END,
        attributes: every_kind_of_attribute(),
        dropped_attributes_count: 3,
        events: vec![Event {
            time_unix_nano: START + 1,
            name: "exception".into(),
            attributes: vec![string("exception.message", "boom")],
            dropped_attributes_count: 4,
        }],
        dropped_events_count: 5,
        links: vec![Link {
            trace_id: TRACE_ID.iter().rev().copied().collect(),
            span_id: SPAN_ID.iter().rev().copied().collect(),
            trace_state: "other=y".into(),
            attributes: vec![string("link.attr", "l")],
            dropped_attributes_count: 6,
            flags: 0x100,
        }],
        dropped_links_count: 7,
        status: Some(Status {
            message: "upstream failed".into(),
            code: 2,
        }),
    }
}

pub fn traces_request() -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(resource()),
            scope_spans: vec![ScopeSpans {
                scope: Some(scope()),
                spans: vec![span()],
                schema_url: "https://opentelemetry.io/schemas/1.29.0".into(),
            }],
            schema_url: "https://opentelemetry.io/schemas/1.28.0".into(),
        }],
    }
}

fn exemplar(value: exemplar::Value) -> Exemplar {
    Exemplar {
        filtered_attributes: vec![string("exemplar.attr", "e")],
        time_unix_nano: START + 2,
        span_id: SPAN_ID.to_vec(),
        trace_id: TRACE_ID.to_vec(),
        value: Some(value),
    }
}

fn metric(name: &str, data: metric::Data) -> Metric {
    Metric {
        name: name.into(),
        description: format!("{name} description"),
        unit: "ms".into(),
        metadata: vec![string("metadata.attr", "m")],
        data: Some(data),
    }
}

/// A metric of every data kind, with values JSON cannot write as plain numbers (NaN,
/// infinities, int64 beyond 2^53).
pub fn metrics() -> Vec<Metric> {
    let number_point = |value| NumberDataPoint {
        attributes: vec![string("point.attr", "p")],
        start_time_unix_nano: START,
        time_unix_nano: END,
        value: Some(value),
        exemplars: vec![
            exemplar(exemplar::Value::AsDouble(0.25)),
            exemplar(exemplar::Value::AsInt(-9_007_199_254_740_993)),
        ],
        flags: 1,
    };
    vec![
        metric(
            "gauge.double",
            metric::Data::Gauge(Gauge {
                data_points: vec![
                    number_point(number_data_point::Value::AsDouble(1.5)),
                    number_point(number_data_point::Value::AsDouble(f64::NAN)),
                    number_point(number_data_point::Value::AsDouble(f64::NEG_INFINITY)),
                ],
            }),
        ),
        metric(
            "sum.int",
            metric::Data::Sum(Sum {
                data_points: vec![number_point(number_data_point::Value::AsInt(
                    9_007_199_254_740_993,
                ))],
                aggregation_temporality: 1,
                is_monotonic: true,
            }),
        ),
        metric(
            "histogram",
            metric::Data::Histogram(Histogram {
                data_points: vec![HistogramDataPoint {
                    attributes: vec![string("point.attr", "h")],
                    start_time_unix_nano: START,
                    time_unix_nano: END,
                    count: 9_007_199_254_740_993,
                    sum: Some(12.5),
                    bucket_counts: vec![1, 9_007_199_254_740_992, 0],
                    explicit_bounds: vec![f64::NEG_INFINITY, 10.0],
                    exemplars: vec![exemplar(exemplar::Value::AsDouble(3.0))],
                    flags: 1,
                    min: Some(f64::NEG_INFINITY),
                    max: Some(f64::INFINITY),
                }],
                aggregation_temporality: 2,
            }),
        ),
        metric(
            "exponential_histogram",
            metric::Data::ExponentialHistogram(ExponentialHistogram {
                data_points: vec![ExponentialHistogramDataPoint {
                    attributes: vec![string("point.attr", "x")],
                    start_time_unix_nano: START,
                    time_unix_nano: END,
                    count: 6,
                    sum: Some(f64::NAN),
                    scale: -3,
                    zero_count: 1,
                    positive: Some(Buckets {
                        offset: -2,
                        bucket_counts: vec![1, 2],
                    }),
                    negative: Some(Buckets {
                        offset: 4,
                        bucket_counts: vec![2],
                    }),
                    flags: 1,
                    exemplars: vec![exemplar(exemplar::Value::AsInt(5))],
                    min: Some(-1.0),
                    max: Some(7.0),
                    zero_threshold: 1e-9,
                }],
                aggregation_temporality: 1,
            }),
        ),
        metric(
            "summary",
            metric::Data::Summary(Summary {
                data_points: vec![SummaryDataPoint {
                    attributes: vec![string("point.attr", "s")],
                    start_time_unix_nano: START,
                    time_unix_nano: END,
                    count: 3,
                    sum: f64::INFINITY,
                    quantile_values: vec![
                        ValueAtQuantile {
                            quantile: 0.5,
                            value: 2.0,
                        },
                        ValueAtQuantile {
                            quantile: 1.0,
                            value: f64::NAN,
                        },
                    ],
                    flags: 1,
                }],
            }),
        ),
    ]
}

pub fn metrics_request() -> ExportMetricsServiceRequest {
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(resource()),
            scope_metrics: vec![ScopeMetrics {
                scope: Some(scope()),
                metrics: metrics(),
                schema_url: "https://opentelemetry.io/schemas/1.29.0".into(),
            }],
            schema_url: "https://opentelemetry.io/schemas/1.28.0".into(),
        }],
    }
}

pub fn log_record() -> LogRecord {
    LogRecord {
        time_unix_nano: START,
        observed_time_unix_nano: END,
        severity_number: 17,
        severity_text: "ERROR".into(),
        body: Some(AnyValue {
            value: Some(any_value::Value::StringValue("payment declined".into())),
        }),
        attributes: every_kind_of_attribute(),
        dropped_attributes_count: 8,
        flags: 1,
        trace_id: TRACE_ID.to_vec(),
        span_id: SPAN_ID.to_vec(),
        event_name: "payment.declined".into(),
    }
}

pub fn logs_request() -> ExportLogsServiceRequest {
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(resource()),
            scope_logs: vec![ScopeLogs {
                scope: Some(scope()),
                log_records: vec![log_record()],
                schema_url: "https://opentelemetry.io/schemas/1.29.0".into(),
            }],
            schema_url: "https://opentelemetry.io/schemas/1.28.0".into(),
        }],
    }
}

/// A component table as the config loader hands it to a factory.
pub fn settings(type_name: &str, toml_text: &str) -> sluice_pipeline::ComponentSettings {
    sluice_pipeline::ComponentSettings::new(
        sluice_pipeline::config::ComponentKind::Exporter,
        "test",
        type_name,
        toml::from_str(toml_text).expect("test config is valid TOML"),
    )
}
