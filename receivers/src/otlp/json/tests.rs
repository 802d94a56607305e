use opentelemetry_proto::tonic::common::v1::{AnyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::metric::Data;
use opentelemetry_proto::tonic::metrics::v1::number_data_point::Value as NumberValue;
use serde_json::json;

use super::*;

fn decode_metrics(body: &Value) -> Result<ExportMetricsServiceRequest> {
    match decode(Signal::Metrics, body.to_string().as_bytes())? {
        Request::Metrics(request) => Ok(request),
        other => panic!("decoded {other:?} as metrics"),
    }
}

/// A metrics request holding one metric with the given body.
fn one_metric(metric: Value) -> Value {
    json!({
        "resourceMetrics": [{
            "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "svc"}}]},
            "scopeMetrics": [{"scope": {"name": "lib", "version": "1.0"}, "metrics": [metric]}]
        }]
    })
}

fn the_metric(request: &ExportMetricsServiceRequest) -> &Metric {
    &request.resource_metrics[0].scope_metrics[0].metrics[0]
}

fn gauge_point(request: &ExportMetricsServiceRequest) -> &NumberDataPoint {
    match &the_metric(request).data {
        Some(Data::Gauge(g)) => &g.data_points[0],
        other => panic!("expected a gauge, got {other:?}"),
    }
}

fn histogram_point(request: &ExportMetricsServiceRequest) -> &HistogramDataPoint {
    match &the_metric(request).data {
        Some(Data::Histogram(h)) => &h.data_points[0],
        other => panic!("expected a histogram, got {other:?}"),
    }
}

fn gauge_with(point: Value) -> Value {
    one_metric(json!({"name": "g", "gauge": {"dataPoints": [point]}}))
}

#[test]
fn nan_as_double_arrives_as_nan() {
    let request = decode_metrics(&gauge_with(json!({"asDouble": "NaN"}))).unwrap();
    match gauge_point(&request).value {
        Some(NumberValue::AsDouble(v)) => assert!(v.is_nan(), "{v}"),
        other => panic!("value lost: {other:?}"),
    }
}

#[test]
fn infinities_as_double_arrive_as_infinities() {
    for (text, expected) in [
        ("Infinity", f64::INFINITY),
        ("-Infinity", f64::NEG_INFINITY),
    ] {
        let request = decode_metrics(&gauge_with(json!({"asDouble": text}))).unwrap();
        assert_eq!(
            gauge_point(&request).value,
            Some(NumberValue::AsDouble(expected))
        );
    }
}

#[test]
fn numeric_string_as_double_is_decoded_as_its_number() {
    let request = decode_metrics(&gauge_with(json!({"asDouble": "1.5"}))).unwrap();
    assert_eq!(
        gauge_point(&request).value,
        Some(NumberValue::AsDouble(1.5))
    );
}

#[test]
fn as_int_may_be_a_number_or_a_string() {
    for value in [json!(-42), json!("-42")] {
        let request = decode_metrics(&gauge_with(json!({"asInt": value}))).unwrap();
        assert_eq!(gauge_point(&request).value, Some(NumberValue::AsInt(-42)));
    }
}

#[test]
fn null_as_double_is_rejected_not_dropped() {
    let error = decode_metrics(&gauge_with(json!({"asDouble": null}))).unwrap_err();
    assert!(error.contains("asDouble"), "{error}");
    assert!(error.contains("null"), "{error}");
}

#[test]
fn null_metric_data_is_rejected() {
    let error = decode_metrics(&one_metric(json!({"name": "g", "gauge": null}))).unwrap_err();
    assert!(error.contains("metrics[0].gauge"), "{error}");
}

#[test]
fn garbage_double_is_rejected_with_its_path() {
    for garbage in [
        json!("abc"),
        json!("inf"),
        json!("nan"),
        json!(true),
        json!({}),
    ] {
        let error = decode_metrics(&gauge_with(json!({"asDouble": garbage}))).unwrap_err();
        assert!(
            error.contains(
                "resourceMetrics[0].scopeMetrics[0].metrics[0].gauge.dataPoints[0].asDouble"
            ),
            "{error}"
        );
    }
}

#[test]
fn histogram_bounds_accept_infinity_and_numeric_strings() {
    let request = decode_metrics(&one_metric(json!({
        "name": "h",
        "histogram": {
            "aggregationTemporality": 2,
            "dataPoints": [{
                "startTimeUnixNano": "1000",
                "timeUnixNano": 2000,
                "count": "6",
                "sum": "NaN",
                "bucketCounts": ["1", 2, "3"],
                "explicitBounds": ["1.5", "Infinity"],
                "min": "-Infinity",
                "max": 7
            }]
        }
    })))
    .unwrap();
    let point = histogram_point(&request);
    assert_eq!(point.start_time_unix_nano, 1000);
    assert_eq!(point.time_unix_nano, 2000);
    assert_eq!(point.count, 6);
    assert!(point.sum.unwrap().is_nan());
    assert_eq!(point.bucket_counts, vec![1, 2, 3]);
    assert_eq!(point.explicit_bounds, vec![1.5, f64::INFINITY]);
    assert_eq!(point.min, Some(f64::NEG_INFINITY));
    assert_eq!(point.max, Some(7.0));
    match &the_metric(&request).data {
        Some(Data::Histogram(h)) => assert_eq!(h.aggregation_temporality, 2),
        other => panic!("{other:?}"),
    }
}

#[test]
fn null_inside_an_array_is_rejected() {
    let error = decode_metrics(&one_metric(json!({
        "name": "h",
        "histogram": {"dataPoints": [{"bucketCounts": [1, 2], "explicitBounds": [null]}]}
    })))
    .unwrap_err();
    assert!(error.contains("explicitBounds[0]"), "{error}");
}

#[test]
fn null_plain_fields_mean_their_default_as_in_proto3_json() {
    let request = decode_metrics(&gauge_with(
        json!({"timeUnixNano": null, "attributes": null, "asInt": "5"}),
    ))
    .unwrap();
    let point = gauge_point(&request);
    assert_eq!(point.time_unix_nano, 0);
    assert_eq!(point.value, Some(NumberValue::AsInt(5)));
}

#[test]
fn integers_out_of_range_or_fractional_are_rejected() {
    for (field, value) in [
        ("flags", json!(-1)),
        ("flags", json!(4294967296u64)),
        ("timeUnixNano", json!(1.5)),
        ("timeUnixNano", json!(1e30)),
        ("timeUnixNano", json!(-1.0)),
        ("timeUnixNano", json!("12abc")),
    ] {
        let mut point = json!({"asInt": 1});
        point[field] = value;
        let error = decode_metrics(&gauge_with(point)).unwrap_err();
        assert!(error.contains(field), "{field}: {error}");
    }
}

#[test]
fn two_values_in_one_data_point_are_rejected() {
    let error = decode_metrics(&gauge_with(json!({"asInt": 1, "asDouble": 2.0}))).unwrap_err();
    assert!(error.contains("only one"), "{error}");
}

#[test]
fn integral_numbers_with_exponents_are_integers_and_huge_ones_out_of_range() {
    let request = decode_metrics(&gauge_with(json!({"asInt": 1e3, "timeUnixNano": 2e18}))).unwrap();
    let point = gauge_point(&request);
    assert_eq!(point.value, Some(NumberValue::AsInt(1000)));
    assert_eq!(point.time_unix_nano, 2_000_000_000_000_000_000);
    let error = decode_metrics(&gauge_with(json!({"asInt": -1e30}))).unwrap_err();
    assert!(error.contains("out of range"), "{error}");
}

#[test]
fn every_metric_type_decodes_with_its_fields() {
    let request = decode_metrics(&json!({
        "resourceMetrics": [{
            "schemaUrl": "https://schema/1",
            "scopeMetrics": [{
                "schemaUrl": "https://schema/2",
                "metrics": [
                    {"name": "sum", "unit": "By", "description": "d",
                     "metadata": [{"key": "m", "value": {"boolValue": true}}],
                     "sum": {"aggregationTemporality": "AGGREGATION_TEMPORALITY_DELTA",
                             "isMonotonic": true,
                             "dataPoints": [{"asDouble": 2.5, "flags": 1,
                                             "attributes": [{"key": "k", "value": {"intValue": "7"}}],
                                             "exemplars": [{"asInt": "3", "timeUnixNano": "9",
                                                            "traceId": "5b8efff798038103d269b633813fc60c",
                                                            "spanId": "EEE19B7EC3C1B174",
                                                            "filteredAttributes": [{"key": "f", "value": {"doubleValue": 0.5}}]}]}]}},
                    {"name": "exp", "exponentialHistogram": {"aggregationTemporality": 1,
                        "dataPoints": [{"count": 3, "scale": -2, "zeroCount": "1", "zeroThreshold": "0.001",
                                        "positive": {"offset": -1, "bucketCounts": ["1", 1]},
                                        "negative": {}}]}},
                    {"name": "summary", "summary": {"dataPoints": [{"count": "2", "sum": "Infinity",
                        "quantileValues": [{"quantile": 0.5, "value": "NaN"}, {"quantile": 1, "value": 3}]}]}},
                    {"name": "no-data", "unknownField": {"ignored": [1, 2]}}
                ]
            }]
        }]
    }))
    .unwrap();
    let rm = &request.resource_metrics[0];
    assert_eq!(rm.schema_url, "https://schema/1");
    assert_eq!(rm.scope_metrics[0].schema_url, "https://schema/2");
    let metrics = &rm.scope_metrics[0].metrics;
    assert_eq!(metrics.len(), 4);

    let Some(Data::Sum(sum)) = &metrics[0].data else {
        panic!("{:?}", metrics[0])
    };
    assert_eq!(
        (metrics[0].unit.as_str(), metrics[0].description.as_str()),
        ("By", "d")
    );
    assert_eq!(metrics[0].metadata[0].key, "m");
    assert_eq!(
        sum.aggregation_temporality,
        AggregationTemporality::Delta as i32
    );
    assert!(sum.is_monotonic);
    let point = &sum.data_points[0];
    assert_eq!(point.value, Some(NumberValue::AsDouble(2.5)));
    assert_eq!(point.flags, 1);
    assert_eq!(
        point.attributes[0].value,
        Some(AnyValue {
            value: Some(any_value::Value::IntValue(7))
        })
    );
    let exemplar = &point.exemplars[0];
    assert_eq!(exemplar.value, Some(exemplar::Value::AsInt(3)));
    assert_eq!(exemplar.time_unix_nano, 9);
    assert_eq!(
        exemplar.trace_id,
        hex::decode("5b8efff798038103d269b633813fc60c").unwrap()
    );
    assert_eq!(exemplar.span_id, hex::decode("eee19b7ec3c1b174").unwrap());
    assert_eq!(exemplar.filtered_attributes[0].key, "f");

    let Some(Data::ExponentialHistogram(exp)) = &metrics[1].data else {
        panic!("{:?}", metrics[1])
    };
    let point = &exp.data_points[0];
    assert_eq!((point.count, point.scale, point.zero_count), (3, -2, 1));
    assert_eq!(point.zero_threshold, 0.001);
    assert_eq!(
        point.positive,
        Some(Buckets {
            offset: -1,
            bucket_counts: vec![1, 1]
        })
    );
    assert_eq!(point.negative, Some(Buckets::default()));

    let Some(Data::Summary(summary)) = &metrics[2].data else {
        panic!("{:?}", metrics[2])
    };
    let point = &summary.data_points[0];
    assert_eq!((point.count, point.sum), (2, f64::INFINITY));
    assert!(point.quantile_values[0].value.is_nan());
    assert_eq!(point.quantile_values[1].value, 3.0);

    assert_eq!(metrics[3].name, "no-data");
    assert_eq!(metrics[3].data, None);
}

#[test]
fn metrics_decode_the_same_as_the_protobuf_they_describe() {
    // What opentelemetry-proto's serde support decodes correctly must decode identically here.
    let body = gauge_with(json!({
        "attributes": [{"key": "a", "value": {"arrayValue": {"values": [{"stringValue": "x"}]}}}],
        "startTimeUnixNano": "1", "timeUnixNano": "2", "asDouble": 0.25
    }));
    let ours = decode_metrics(&body).unwrap();
    let upstream: ExportMetricsServiceRequest = serde_json::from_value(body).unwrap();
    assert_eq!(ours, upstream);
}

#[test]
fn invalid_exemplar_id_is_rejected() {
    let error = decode_metrics(&gauge_with(
        json!({"asInt": 1, "exemplars": [{"asInt": 1, "spanId": "xyz"}]}),
    ))
    .unwrap_err();
    assert!(error.contains("exemplars[0].spanId"), "{error}");
}

#[test]
fn metrics_body_that_is_not_an_object_is_rejected() {
    for body in ["[]", "null", "\"x\"", "{", ""] {
        assert!(decode(Signal::Metrics, body.as_bytes()).is_err(), "{body}");
    }
}

#[test]
fn trace_ids_are_decoded_from_hex() {
    let body = json!({"resourceSpans": [{"scopeSpans": [{"spans": [{
        "traceId": "5B8EFFF798038103D269B633813FC60C",
        "spanId": "eee19b7ec3c1b174",
        "parentSpanId": "",
        "name": "op", "kind": 2,
        "startTimeUnixNano": "1544712660000000000", "endTimeUnixNano": 1544712661000000000u64,
        "links": [{"traceId": "5b8efff798038103d269b633813fc60c", "spanId": "eee19b7ec3c1b173"}],
        "unknownField": 1
    }]}]}]});
    let Request::Traces(request) = decode(Signal::Traces, body.to_string().as_bytes()).unwrap()
    else {
        panic!("not traces")
    };
    let span = &request.resource_spans[0].scope_spans[0].spans[0];
    assert_eq!(
        span.trace_id,
        hex::decode("5b8efff798038103d269b633813fc60c").unwrap()
    );
    assert_eq!(span.span_id, hex::decode("eee19b7ec3c1b174").unwrap());
    assert!(span.parent_span_id.is_empty());
    assert_eq!(span.kind, 2);
    assert_eq!(span.start_time_unix_nano, 1544712660000000000);
    assert_eq!(span.end_time_unix_nano, 1544712661000000000);
    assert_eq!(
        span.links[0].span_id,
        hex::decode("eee19b7ec3c1b173").unwrap()
    );
}

#[test]
fn invalid_or_wrong_length_trace_ids_are_rejected() {
    for (field, id) in [
        ("traceId", "not-hex-at-all-not-hex-at-all-xx"),
        ("traceId", "5b8e"),
        ("spanId", "eee19b7ec3c1b17"),
    ] {
        let body = json!({"resourceSpans": [{"scopeSpans": [{"spans": [{field: id}]}]}]});
        let error = decode(Signal::Traces, body.to_string().as_bytes()).unwrap_err();
        assert!(error.contains("traces"), "{error}");
    }
}

#[test]
fn log_ids_and_body_are_decoded() {
    let body = json!({"resourceLogs": [{"scopeLogs": [{"logRecords": [{
        "timeUnixNano": "5", "severityNumber": 9, "severityText": "INFO",
        "body": {"stringValue": "hello"},
        "traceId": "5b8efff798038103d269b633813fc60c", "spanId": "eee19b7ec3c1b174"
    }]}]}]});
    let Request::Logs(request) = decode(Signal::Logs, body.to_string().as_bytes()).unwrap() else {
        panic!("not logs")
    };
    let record = &request.resource_logs[0].scope_logs[0].log_records[0];
    assert_eq!(record.time_unix_nano, 5);
    assert_eq!(record.severity_number, 9);
    assert_eq!(
        record.body,
        Some(AnyValue {
            value: Some(any_value::Value::StringValue("hello".into()))
        })
    );
    assert_eq!(record.span_id, hex::decode("eee19b7ec3c1b174").unwrap());

    let bad = json!({"resourceLogs": [{"scopeLogs": [{"logRecords": [{"spanId": "12"}]}]}]});
    let error = decode(Signal::Logs, bad.to_string().as_bytes()).unwrap_err();
    assert!(error.contains("logRecords[0].spanId"), "{error}");
}

#[test]
fn upstream_serde_still_drops_nan_values_so_metrics_need_our_decoder() {
    // If this starts failing, opentelemetry-proto fixed #3527 and metrics could use its serde.
    let body = gauge_with(json!({"asDouble": "NaN"}));
    let upstream: ExportMetricsServiceRequest = serde_json::from_value(body).unwrap();
    assert_eq!(gauge_point(&upstream).value, None);
}
