//! OTLP/JSON request decoding.
//!
//! Traces and logs decode with opentelemetry-proto's serde support, then have their ids checked.
//! Metrics do not: that serde support silently loses metric data on some inputs (a data point
//! or a metric's data is flattened into an `Option`, and serde turns any error inside a
//! flattened `Option` into `None`, so `"asDouble": "NaN"` or `"explicitBounds": ["Infinity"]`
//! decode "successfully" with the value or the whole metric's data missing; upstream
//! opentelemetry-rust #3527). Metrics are therefore decoded here, field by field, following the
//! proto3 JSON mapping: whatever it allows is decoded exactly, anything else is an error, never
//! a quiet loss. Resources, scopes and attributes, which that serde support does decode
//! faithfully (failing loudly when it cannot), still go through it.

use std::fmt;

use opentelemetry_proto::tonic::collector::{
    logs::v1::ExportLogsServiceRequest, metrics::v1::ExportMetricsServiceRequest,
    trace::v1::ExportTraceServiceRequest,
};
use opentelemetry_proto::tonic::common::v1::{InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, Exemplar, ExponentialHistogram, ExponentialHistogramDataPoint, Gauge,
    Histogram, HistogramDataPoint, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum,
    Summary, SummaryDataPoint, exemplar, exponential_histogram_data_point::Buckets, metric,
    number_data_point, summary_data_point::ValueAtQuantile,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use serde::Deserialize;
use serde_json::{Map, Value};
use sluice_pipeline::{Request, Signal};

const TRACE_ID_LEN: usize = 16;
const SPAN_ID_LEN: usize = 8;

/// Decodes an OTLP/JSON export request of `signal`; the error says what is wrong and where.
pub(crate) fn decode(signal: Signal, body: &[u8]) -> Result<Request> {
    let malformed = |e: &dyn fmt::Display| format!("malformed OTLP/JSON {signal} request: {e}");
    match signal {
        Signal::Traces => {
            let request: ExportTraceServiceRequest =
                serde_json::from_slice(body).map_err(|e| malformed(&e))?;
            check_trace_ids(&request).map_err(|e| malformed(&e))?;
            Ok(Request::Traces(request))
        }
        Signal::Logs => {
            let request: ExportLogsServiceRequest =
                serde_json::from_slice(body).map_err(|e| malformed(&e))?;
            check_log_ids(&request).map_err(|e| malformed(&e))?;
            Ok(Request::Logs(request))
        }
        Signal::Metrics => {
            let value: Value = serde_json::from_slice(body).map_err(|e| malformed(&e))?;
            let request = metrics_request(&value, &Path::Root).map_err(|e| malformed(&e))?;
            Ok(Request::Metrics(request))
        }
    }
}

/// An id must have its exact length, or be empty (unset).
fn check_id(id: &[u8], len: usize, path: impl FnOnce() -> String) -> Result<()> {
    if id.is_empty() || id.len() == len {
        Ok(())
    } else {
        Err(format!(
            "{}: an id of {} bytes, expected {len} bytes ({} hex digits)",
            path(),
            id.len(),
            len * 2
        ))
    }
}

fn check_trace_ids(request: &ExportTraceServiceRequest) -> Result<()> {
    for (r, resource) in request.resource_spans.iter().enumerate() {
        for (s, scope) in resource.scope_spans.iter().enumerate() {
            for (i, span) in scope.spans.iter().enumerate() {
                let at =
                    |field: &str| format!("resourceSpans[{r}].scopeSpans[{s}].spans[{i}].{field}");
                check_id(&span.trace_id, TRACE_ID_LEN, || at("traceId"))?;
                check_id(&span.span_id, SPAN_ID_LEN, || at("spanId"))?;
                check_id(&span.parent_span_id, SPAN_ID_LEN, || at("parentSpanId"))?;
                for (l, link) in span.links.iter().enumerate() {
                    check_id(&link.trace_id, TRACE_ID_LEN, || {
                        at(&format!("links[{l}].traceId"))
                    })?;
                    check_id(&link.span_id, SPAN_ID_LEN, || {
                        at(&format!("links[{l}].spanId"))
                    })?;
                }
            }
        }
    }
    Ok(())
}

fn check_log_ids(request: &ExportLogsServiceRequest) -> Result<()> {
    for (r, resource) in request.resource_logs.iter().enumerate() {
        for (s, scope) in resource.scope_logs.iter().enumerate() {
            for (i, record) in scope.log_records.iter().enumerate() {
                let at = |field: &str| {
                    format!("resourceLogs[{r}].scopeLogs[{s}].logRecords[{i}].{field}")
                };
                check_id(&record.trace_id, TRACE_ID_LEN, || at("traceId"))?;
                check_id(&record.span_id, SPAN_ID_LEN, || at("spanId"))?;
            }
        }
    }
    Ok(())
}

/// Where a value is in the request, for error messages: `resourceMetrics[0].scopeMetrics[1]`.
enum Path<'a> {
    Root,
    Key(&'a Path<'a>, &'a str),
    Index(&'a Path<'a>, usize),
}

impl<'a> Path<'a> {
    fn key(&'a self, key: &'a str) -> Path<'a> {
        Path::Key(self, key)
    }

    fn index(&'a self, index: usize) -> Path<'a> {
        Path::Index(self, index)
    }

    fn error(&self, message: impl fmt::Display) -> String {
        match self {
            Path::Root => message.to_string(),
            path => format!("{path}: {message}"),
        }
    }
}

impl fmt::Display for Path<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Path::Root => Ok(()),
            Path::Key(Path::Root, key) => write!(f, "{key}"),
            Path::Key(parent, key) => write!(f, "{parent}.{key}"),
            Path::Index(parent, index) => write!(f, "{parent}[{index}]"),
        }
    }
}

type Result<T> = std::result::Result<T, String>;

/// A JSON object being decoded, with its path.
struct Object<'v, 'p> {
    map: &'v Map<String, Value>,
    path: &'p Path<'p>,
}

impl<'v, 'p> Object<'v, 'p> {
    /// The object at `path`. `null` stands for the empty message, as in the proto3 mapping.
    fn new(value: &'v Value, path: &'p Path<'p>) -> Result<Object<'v, 'p>> {
        static EMPTY: std::sync::LazyLock<Map<String, Value>> = std::sync::LazyLock::new(Map::new);
        match value {
            Value::Object(map) => Ok(Object { map, path }),
            Value::Null => Ok(Object { map: &EMPTY, path }),
            other => Err(path.error(format!("expected an object, found {}", kind(other)))),
        }
    }

    /// A field's value; an absent field and a `null` one both mean the default value.
    fn get(&self, key: &str) -> Option<&'v Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    /// Decodes a field with `decode`, or returns the default when it is absent or null.
    fn field<T: Default>(
        &self,
        key: &str,
        decode: impl FnOnce(&'v Value, &Path<'_>) -> Result<T>,
    ) -> Result<T> {
        match self.get(key) {
            Some(value) => decode(value, &self.path.key(key)),
            None => Ok(T::default()),
        }
    }

    /// Decodes an optional field (a message, or a scalar declared `optional`).
    fn optional<T>(
        &self,
        key: &str,
        decode: impl FnOnce(&'v Value, &Path<'_>) -> Result<T>,
    ) -> Result<Option<T>> {
        match self.get(key) {
            Some(value) => decode(value, &self.path.key(key)).map(Some),
            None => Ok(None),
        }
    }

    /// Decodes a repeated field; each element is decoded with `decode`.
    fn repeated<T>(
        &self,
        key: &str,
        decode: impl Fn(&'v Value, &Path<'_>) -> Result<T>,
    ) -> Result<Vec<T>> {
        let Some(value) = self.get(key) else {
            return Ok(Vec::new());
        };
        let path = self.path.key(key);
        let Value::Array(items) = value else {
            return Err(path.error(format!("expected an array, found {}", kind(value))));
        };
        items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                let path = path.index(i);
                if item.is_null() {
                    return Err(path.error("null is not allowed in an array"));
                }
                decode(item, &path)
            })
            .collect()
    }

    /// Which member of a oneof is set, from `keys`. Setting two, or setting one to `null`
    /// (which would leave the data point or metric without its value), is an error.
    fn oneof(&self, keys: &[&'static str]) -> Result<Option<(&'static str, &'v Value)>> {
        let mut found = None;
        for &key in keys {
            match self.map.get(key) {
                None => {}
                Some(Value::Null) => {
                    return Err(self.path.key(key).error("null where a value is required"));
                }
                Some(value) => {
                    if let Some((other, _)) = found {
                        return Err(self
                            .path
                            .error(format!("both {other} and {key} are set; only one may be")));
                    }
                    found = Some((key, value));
                }
            }
        }
        Ok(found)
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn string(value: &Value, path: &Path<'_>) -> Result<String> {
    match value {
        Value::String(s) => Ok(s.clone()),
        other => Err(path.error(format!("expected a string, found {}", kind(other)))),
    }
}

fn boolean(value: &Value, path: &Path<'_>) -> Result<bool> {
    match value {
        Value::Bool(b) => Ok(*b),
        other => Err(path.error(format!("expected true or false, found {}", kind(other)))),
    }
}

/// An integer field of any width: a JSON number or a string holding a decimal integer.
fn integer<T>(value: &Value, path: &Path<'_>) -> Result<T>
where
    T: TryFrom<i64> + TryFrom<u64> + std::str::FromStr,
{
    let out_of_range = || path.error(format!("{value} is out of range"));
    match value {
        Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                T::try_from(u).map_err(|_| out_of_range())
            } else if let Some(i) = n.as_i64() {
                T::try_from(i).map_err(|_| out_of_range())
            } else {
                // A number with a fraction or exponent is an integer only if it is integral.
                let f = n.as_f64().unwrap_or(f64::NAN);
                if f.fract() != 0.0 || !f.is_finite() {
                    return Err(path.error(format!("expected an integer, found {n}")));
                }
                // `as` saturates, so check the range first (2^64 and -2^63 are exact in f64).
                if !(-9_223_372_036_854_775_808.0..18_446_744_073_709_551_616.0).contains(&f) {
                    return Err(out_of_range());
                }
                if f < 0.0 {
                    T::try_from(f as i64).map_err(|_| out_of_range())
                } else {
                    T::try_from(f as u64).map_err(|_| out_of_range())
                }
            }
        }
        Value::String(s) => s.trim().parse().map_err(|_| {
            path.error(format!(
                "expected an integer, found the string {s:?} which is not one in range"
            ))
        }),
        other => Err(path.error(format!("expected an integer, found {}", kind(other)))),
    }
}

/// A double: a JSON number, one of the strings `"NaN"`, `"Infinity"`, `"-Infinity"`, or a
/// string holding a decimal number, as the proto3 JSON mapping allows.
fn double(value: &Value, path: &Path<'_>) -> Result<f64> {
    match value {
        Value::Number(n) => n
            .as_f64()
            .ok_or_else(|| path.error(format!("{n} is not a double"))),
        Value::String(s) => match s.as_str() {
            "NaN" => Ok(f64::NAN),
            "Infinity" => Ok(f64::INFINITY),
            "-Infinity" => Ok(f64::NEG_INFINITY),
            // Rust also parses "inf" and "nan", which JSON does not allow: only digits here.
            text if !text.is_empty()
                && text.bytes().all(|b| {
                    b.is_ascii_digit() || matches!(b, b'-' | b'+' | b'.' | b'e' | b'E')
                }) =>
            {
                text.parse()
                    .map_err(|_| path.error(format!("{text:?} is not a number")))
            }
            text => Err(path.error(format!(
                "expected a number or \"NaN\", \"Infinity\", \"-Infinity\", found {text:?}"
            ))),
        },
        other => Err(path.error(format!("expected a number, found {}", kind(other)))),
    }
}

/// An id in lower- or upper-case hex, `len` bytes long or empty.
fn hex_id(len: usize) -> impl Fn(&Value, &Path<'_>) -> Result<Vec<u8>> {
    move |value, path| {
        let text = string(value, path)?;
        let bytes =
            hex::decode(&text).map_err(|e| path.error(format!("invalid hex id {text:?}: {e}")))?;
        check_id(&bytes, len, || path.to_string())?;
        Ok(bytes)
    }
}

/// An enum given as its integer value or its name.
fn aggregation_temporality(value: &Value, path: &Path<'_>) -> Result<i32> {
    match value {
        Value::String(name)
            if !name
                .trim()
                .starts_with(|c: char| c.is_ascii_digit() || c == '-') =>
        {
            AggregationTemporality::from_str_name(name)
                .map(|t| t as i32)
                .ok_or_else(|| path.error(format!("unknown aggregation temporality {name:?}")))
        }
        _ => integer(value, path),
    }
}

/// Messages that opentelemetry-proto's serde support decodes faithfully.
fn serde_message<T: for<'de> Deserialize<'de>>(value: &Value, path: &Path<'_>) -> Result<T> {
    T::deserialize(value).map_err(|e| path.error(e))
}

fn attributes(value: &Value, path: &Path<'_>) -> Result<Vec<KeyValue>> {
    serde_message(value, path)
}

fn metrics_request(value: &Value, path: &Path<'_>) -> Result<ExportMetricsServiceRequest> {
    if !value.is_object() {
        return Err(path.error(format!("expected a JSON object, found {}", kind(value))));
    }
    let o = Object::new(value, path)?;
    Ok(ExportMetricsServiceRequest {
        resource_metrics: o.repeated("resourceMetrics", resource_metrics)?,
    })
}

fn resource_metrics(value: &Value, path: &Path<'_>) -> Result<ResourceMetrics> {
    let o = Object::new(value, path)?;
    Ok(ResourceMetrics {
        resource: o.optional("resource", serde_message::<Resource>)?,
        scope_metrics: o.repeated("scopeMetrics", scope_metrics)?,
        schema_url: o.field("schemaUrl", string)?,
    })
}

fn scope_metrics(value: &Value, path: &Path<'_>) -> Result<ScopeMetrics> {
    let o = Object::new(value, path)?;
    Ok(ScopeMetrics {
        scope: o.optional("scope", serde_message::<InstrumentationScope>)?,
        metrics: o.repeated("metrics", metric)?,
        schema_url: o.field("schemaUrl", string)?,
    })
}

fn metric(value: &Value, path: &Path<'_>) -> Result<Metric> {
    let o = Object::new(value, path)?;
    let data = match o.oneof(&[
        "gauge",
        "sum",
        "histogram",
        "exponentialHistogram",
        "summary",
    ])? {
        None => None,
        Some((key, value)) => {
            let path = path.key(key);
            let d = Object::new(value, &path)?;
            Some(match key {
                "gauge" => metric::Data::Gauge(Gauge {
                    data_points: d.repeated("dataPoints", number_data_point)?,
                }),
                "sum" => metric::Data::Sum(Sum {
                    data_points: d.repeated("dataPoints", number_data_point)?,
                    aggregation_temporality: d
                        .field("aggregationTemporality", aggregation_temporality)?,
                    is_monotonic: d.field("isMonotonic", boolean)?,
                }),
                "histogram" => metric::Data::Histogram(Histogram {
                    data_points: d.repeated("dataPoints", histogram_data_point)?,
                    aggregation_temporality: d
                        .field("aggregationTemporality", aggregation_temporality)?,
                }),
                "exponentialHistogram" => {
                    metric::Data::ExponentialHistogram(ExponentialHistogram {
                        data_points: d.repeated("dataPoints", exponential_histogram_data_point)?,
                        aggregation_temporality: d
                            .field("aggregationTemporality", aggregation_temporality)?,
                    })
                }
                _ => metric::Data::Summary(Summary {
                    data_points: d.repeated("dataPoints", summary_data_point)?,
                }),
            })
        }
    };
    Ok(Metric {
        name: o.field("name", string)?,
        description: o.field("description", string)?,
        unit: o.field("unit", string)?,
        metadata: o.field("metadata", attributes)?,
        data,
    })
}

fn number_data_point(value: &Value, path: &Path<'_>) -> Result<NumberDataPoint> {
    let o = Object::new(value, path)?;
    let value = match o.oneof(&["asDouble", "asInt"])? {
        None => None,
        Some(("asDouble", v)) => Some(number_data_point::Value::AsDouble(double(
            v,
            &path.key("asDouble"),
        )?)),
        Some((key, v)) => Some(number_data_point::Value::AsInt(integer(v, &path.key(key))?)),
    };
    Ok(NumberDataPoint {
        attributes: o.field("attributes", attributes)?,
        start_time_unix_nano: o.field("startTimeUnixNano", integer)?,
        time_unix_nano: o.field("timeUnixNano", integer)?,
        exemplars: o.repeated("exemplars", exemplar)?,
        flags: o.field("flags", integer)?,
        value,
    })
}

fn histogram_data_point(value: &Value, path: &Path<'_>) -> Result<HistogramDataPoint> {
    let o = Object::new(value, path)?;
    Ok(HistogramDataPoint {
        attributes: o.field("attributes", attributes)?,
        start_time_unix_nano: o.field("startTimeUnixNano", integer)?,
        time_unix_nano: o.field("timeUnixNano", integer)?,
        count: o.field("count", integer)?,
        sum: o.optional("sum", double)?,
        bucket_counts: o.repeated("bucketCounts", integer)?,
        explicit_bounds: o.repeated("explicitBounds", double)?,
        exemplars: o.repeated("exemplars", exemplar)?,
        flags: o.field("flags", integer)?,
        min: o.optional("min", double)?,
        max: o.optional("max", double)?,
    })
}

fn exponential_histogram_data_point(
    value: &Value,
    path: &Path<'_>,
) -> Result<ExponentialHistogramDataPoint> {
    let o = Object::new(value, path)?;
    Ok(ExponentialHistogramDataPoint {
        attributes: o.field("attributes", attributes)?,
        start_time_unix_nano: o.field("startTimeUnixNano", integer)?,
        time_unix_nano: o.field("timeUnixNano", integer)?,
        count: o.field("count", integer)?,
        sum: o.optional("sum", double)?,
        scale: o.field("scale", integer)?,
        zero_count: o.field("zeroCount", integer)?,
        positive: o.optional("positive", buckets)?,
        negative: o.optional("negative", buckets)?,
        flags: o.field("flags", integer)?,
        exemplars: o.repeated("exemplars", exemplar)?,
        min: o.optional("min", double)?,
        max: o.optional("max", double)?,
        zero_threshold: o.field("zeroThreshold", double)?,
    })
}

fn buckets(value: &Value, path: &Path<'_>) -> Result<Buckets> {
    let o = Object::new(value, path)?;
    Ok(Buckets {
        offset: o.field("offset", integer)?,
        bucket_counts: o.repeated("bucketCounts", integer)?,
    })
}

fn summary_data_point(value: &Value, path: &Path<'_>) -> Result<SummaryDataPoint> {
    let o = Object::new(value, path)?;
    Ok(SummaryDataPoint {
        attributes: o.field("attributes", attributes)?,
        start_time_unix_nano: o.field("startTimeUnixNano", integer)?,
        time_unix_nano: o.field("timeUnixNano", integer)?,
        count: o.field("count", integer)?,
        sum: o.field("sum", double)?,
        quantile_values: o.repeated("quantileValues", |value, path| {
            let q = Object::new(value, path)?;
            Ok(ValueAtQuantile {
                quantile: q.field("quantile", double)?,
                value: q.field("value", double)?,
            })
        })?,
        flags: o.field("flags", integer)?,
    })
}

fn exemplar(value: &Value, path: &Path<'_>) -> Result<Exemplar> {
    let o = Object::new(value, path)?;
    let value = match o.oneof(&["asDouble", "asInt"])? {
        None => None,
        Some(("asDouble", v)) => Some(exemplar::Value::AsDouble(double(v, &path.key("asDouble"))?)),
        Some((key, v)) => Some(exemplar::Value::AsInt(integer(v, &path.key(key))?)),
    };
    Ok(Exemplar {
        filtered_attributes: o.field("filteredAttributes", attributes)?,
        time_unix_nano: o.field("timeUnixNano", integer)?,
        span_id: o.field("spanId", hex_id(SPAN_ID_LEN))?,
        trace_id: o.field("traceId", hex_id(TRACE_ID_LEN))?,
        value,
    })
}

#[cfg(test)]
mod tests;
