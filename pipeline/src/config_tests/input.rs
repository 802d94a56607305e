//! The inputs of a config test: spans, log records and metrics written in TOML, turned into
//! the OTLP batches a receiver would have produced.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{
    AnyValue, ArrayValue, InstrumentationScope, KeyValue, KeyValueList, any_value,
};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, Gauge, Histogram, HistogramDataPoint, Metric, NumberDataPoint,
    ResourceMetrics, ScopeMetrics, Sum, metric, number_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status, span};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::batch::{Batch, Request};
use crate::config::{ConfigError, KeyPath};

/// One `[[tests.input]]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawInput {
    /// The receiver or processor the items enter at: an id, or `receiver/ID`, `processor/ID`.
    pub at: String,
    /// Only into this pipeline, of those the component is in.
    #[serde(default)]
    pub pipeline: Option<String>,
    /// Resource attributes of the items that give none of their own.
    #[serde(default)]
    pub resource: Option<toml::Table>,
    /// Instrumentation scope name of the items that give none of their own.
    #[serde(default)]
    pub scope: Option<String>,
    #[serde(default)]
    pub spans: Vec<RawSpan>,
    #[serde(default)]
    pub logs: Vec<RawLog>,
    #[serde(default)]
    pub metrics: Vec<RawMetric>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
enum SpanKindName {
    Internal,
    Server,
    Client,
    Producer,
    Consumer,
}

/// A span status, as tests write it: `"ok"`, `"error"` or `"unset"` (upper case accepted, as
/// the tail sampler's `status_codes` write them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum StatusName {
    #[serde(alias = "UNSET")]
    Unset,
    #[serde(alias = "OK")]
    Ok,
    #[serde(alias = "ERROR")]
    Error,
}

impl StatusName {
    pub(super) fn code(self) -> i32 {
        match self {
            StatusName::Unset => 0,
            StatusName::Ok => 1,
            StatusName::Error => 2,
        }
    }
}

fn zero() -> Duration {
    Duration::ZERO
}

fn default_span_duration() -> Duration {
    Duration::from_millis(1)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSpan {
    name: String,
    /// 32 hex digits; by default every span of one input is in one trace, its id derived from
    /// the test's name and the input's position (so runs are repeatable).
    #[serde(default)]
    trace_id: Option<String>,
    /// 16 hex digits; derived by default.
    #[serde(default)]
    span_id: Option<String>,
    /// 16 hex digits.
    #[serde(default)]
    parent_span_id: Option<String>,
    /// The name of another span of the same input, whose span id becomes this one's parent.
    #[serde(default)]
    parent: Option<String>,
    #[serde(default)]
    kind: Option<SpanKindName>,
    #[serde(default)]
    status: Option<StatusName>,
    #[serde(default)]
    status_message: Option<String>,
    /// When the span starts, after the test's start.
    #[serde(default = "zero", with = "crate::config::duration")]
    start: Duration,
    #[serde(default = "default_span_duration", with = "crate::config::duration")]
    duration: Duration,
    #[serde(default)]
    attributes: toml::Table,
    #[serde(default)]
    events: Vec<RawEvent>,
    #[serde(default)]
    resource: Option<toml::Table>,
    #[serde(default)]
    scope: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEvent {
    name: String,
    /// When, after the span's start.
    #[serde(default = "zero", with = "crate::config::duration")]
    at: Duration,
    #[serde(default)]
    attributes: toml::Table,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLog {
    #[serde(default)]
    body: Option<toml::Value>,
    /// `trace`, `debug`, `info`, `warn`, `error` or `fatal`.
    #[serde(default)]
    severity: Option<String>,
    #[serde(default)]
    event_name: Option<String>,
    #[serde(default)]
    trace_id: Option<String>,
    #[serde(default)]
    span_id: Option<String>,
    /// When, after the test's start.
    #[serde(default = "zero", with = "crate::config::duration")]
    at: Duration,
    #[serde(default)]
    attributes: toml::Table,
    #[serde(default)]
    resource: Option<toml::Table>,
    #[serde(default)]
    scope: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum MetricType {
    Sum,
    Gauge,
    Histogram,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Temporality {
    Cumulative,
    Delta,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMetric {
    name: String,
    #[serde(rename = "type")]
    metric_type: MetricType,
    #[serde(default)]
    unit: String,
    #[serde(default)]
    description: String,
    /// Sums only; `true` by default.
    #[serde(default)]
    monotonic: Option<bool>,
    /// Sums and histograms; `cumulative` by default.
    #[serde(default)]
    temporality: Option<Temporality>,
    /// Short for `points = [{ value = ... }]`.
    #[serde(default)]
    value: Option<toml::Value>,
    #[serde(default)]
    points: Vec<RawPoint>,
    #[serde(default)]
    resource: Option<toml::Table>,
    #[serde(default)]
    scope: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPoint {
    /// Sums and gauges: an integer or a float.
    #[serde(default)]
    value: Option<toml::Value>,
    #[serde(default)]
    attributes: toml::Table,
    /// Histograms: the number of values (the sum of `bucket_counts` by default).
    #[serde(default)]
    count: Option<u64>,
    #[serde(default)]
    sum: Option<f64>,
    #[serde(default)]
    min: Option<f64>,
    #[serde(default)]
    max: Option<f64>,
    #[serde(default)]
    bounds: Vec<f64>,
    #[serde(default)]
    bucket_counts: Vec<u64>,
}

/// What the items of one input are built with.
pub(super) struct Builder<'a> {
    /// Seeds derived ids: the test's name and the input's position.
    pub seed: &'a str,
    /// Nanoseconds since the epoch that offsets count from.
    pub base: u64,
    pub path: &'a KeyPath,
    pub errors: &'a mut Vec<ConfigError>,
}

/// Now, in nanoseconds since the epoch: what the offsets of a test's items count from.
pub(super) fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

impl Builder<'_> {
    fn derived(&self, what: &str, len: usize) -> Vec<u8> {
        let digest = Sha256::digest(format!("{}\0{what}", self.seed).as_bytes());
        digest[..len].to_vec()
    }

    fn hex_id(&mut self, path: KeyPath, text: &str, len: usize) -> Vec<u8> {
        match hex::decode(text) {
            Ok(bytes) if bytes.len() == len => bytes,
            _ => {
                self.errors.push(ConfigError::new(
                    path,
                    format!("must be {} hex digits, not {text:?}", len * 2),
                ));
                vec![0; len]
            }
        }
    }

    fn attributes(&mut self, path: KeyPath, table: &toml::Table) -> Vec<KeyValue> {
        table
            .iter()
            .map(|(key, value)| KeyValue {
                key: key.clone(),
                value: Some(self.any_value(path.key(key), value)),
                ..Default::default()
            })
            .collect()
    }

    fn any_value(&mut self, path: KeyPath, value: &toml::Value) -> AnyValue {
        let value = match value {
            toml::Value::String(s) => any_value::Value::StringValue(s.clone()),
            toml::Value::Integer(i) => any_value::Value::IntValue(*i),
            toml::Value::Float(f) => any_value::Value::DoubleValue(*f),
            toml::Value::Boolean(b) => any_value::Value::BoolValue(*b),
            toml::Value::Array(values) => any_value::Value::ArrayValue(ArrayValue {
                values: values
                    .iter()
                    .enumerate()
                    .map(|(i, v)| self.any_value(path.index(i), v))
                    .collect(),
            }),
            toml::Value::Table(table) => any_value::Value::KvlistValue(KeyValueList {
                values: self.attributes(path, table),
            }),
            toml::Value::Datetime(_) => {
                self.errors.push(ConfigError::new(
                    path,
                    "a date is not an attribute value; write it as a string",
                ));
                any_value::Value::StringValue(String::new())
            }
        };
        AnyValue { value: Some(value) }
    }

    fn resource(&mut self, path: KeyPath, table: Option<&toml::Table>) -> Resource {
        Resource {
            attributes: table.map(|t| self.attributes(path, t)).unwrap_or_default(),
            ..Default::default()
        }
    }

    /// The traces batch of `spans`, every span in one trace unless it names its own.
    pub(super) fn spans(&mut self, input: &RawInput) -> Option<Batch> {
        if input.spans.is_empty() {
            return None;
        }
        let list = self.path.key("spans");
        let trace_id = self.derived("trace", 16);
        let span_ids: Vec<Vec<u8>> = input
            .spans
            .iter()
            .enumerate()
            .map(|(i, raw)| match &raw.span_id {
                Some(text) => self.hex_id(list.index(i).key("span_id"), text, 8),
                None => self.derived(&format!("span {i}"), 8),
            })
            .collect();
        let mut groups = Groups::default();
        for (i, raw) in input.spans.iter().enumerate() {
            let path = list.index(i);
            let parent_span_id = match (&raw.parent_span_id, &raw.parent) {
                (Some(_), Some(_)) => {
                    self.errors.push(ConfigError::new(
                        path.key("parent"),
                        "give either parent (a span's name) or parent_span_id, not both",
                    ));
                    Vec::new()
                }
                (Some(text), None) => self.hex_id(path.key("parent_span_id"), text, 8),
                (None, Some(name)) => match input.spans.iter().position(|s| &s.name == name) {
                    Some(parent) => span_ids[parent].clone(),
                    None => {
                        self.errors.push(ConfigError::new(
                            path.key("parent"),
                            format!("no span named {name:?} in this input"),
                        ));
                        Vec::new()
                    }
                },
                (None, None) => Vec::new(),
            };
            let start = self.base + nanos(raw.start);
            let span = Span {
                trace_id: match &raw.trace_id {
                    Some(text) => self.hex_id(path.key("trace_id"), text, 16),
                    None => trace_id.clone(),
                },
                span_id: span_ids[i].clone(),
                parent_span_id,
                name: raw.name.clone(),
                kind: match raw.kind.unwrap_or(SpanKindName::Internal) {
                    SpanKindName::Internal => span::SpanKind::Internal,
                    SpanKindName::Server => span::SpanKind::Server,
                    SpanKindName::Client => span::SpanKind::Client,
                    SpanKindName::Producer => span::SpanKind::Producer,
                    SpanKindName::Consumer => span::SpanKind::Consumer,
                } as i32,
                start_time_unix_nano: start,
                end_time_unix_nano: start + nanos(raw.duration),
                attributes: self.attributes(path.key("attributes"), &raw.attributes),
                events: raw
                    .events
                    .iter()
                    .enumerate()
                    .map(|(e, event)| span::Event {
                        time_unix_nano: start + nanos(event.at),
                        name: event.name.clone(),
                        attributes: self.attributes(
                            path.key("events").index(e).key("attributes"),
                            &event.attributes,
                        ),
                        dropped_attributes_count: 0,
                    })
                    .collect(),
                status: match (raw.status, &raw.status_message) {
                    (None, None) => None,
                    (status, message) => Some(Status {
                        code: status.unwrap_or(StatusName::Unset).code(),
                        message: message.clone().unwrap_or_default(),
                    }),
                },
                ..Default::default()
            };
            let resource = self.item_resource(&path, raw.resource.as_ref(), input);
            let scope = raw.scope.as_ref().or(input.scope.as_ref());
            groups.add(resource, scope, span);
        }
        let resource_spans = groups
            .0
            .into_iter()
            .map(|(resource, scope, spans)| ResourceSpans {
                resource: Some(resource),
                scope_spans: vec![ScopeSpans {
                    scope: scope_of(scope),
                    spans,
                    ..Default::default()
                }],
                ..Default::default()
            })
            .collect();
        Some(Batch::from_request(Request::Traces(
            ExportTraceServiceRequest { resource_spans },
        )))
    }

    /// The item's own resource, else the input's.
    fn item_resource(
        &mut self,
        path: &KeyPath,
        own: Option<&toml::Table>,
        input: &RawInput,
    ) -> Resource {
        match own {
            Some(table) => self.resource(path.key("resource"), Some(table)),
            None => self.resource(self.path.key("resource"), input.resource.as_ref()),
        }
    }

    /// The logs batch of `logs`.
    pub(super) fn logs(&mut self, input: &RawInput) -> Option<Batch> {
        if input.logs.is_empty() {
            return None;
        }
        let list = self.path.key("logs");
        let mut groups = Groups::default();
        for (i, raw) in input.logs.iter().enumerate() {
            let path = list.index(i);
            let (severity_number, severity_text) = match &raw.severity {
                None => (0, String::new()),
                Some(text) => match severity_number(text) {
                    Some(number) => (number, text.to_uppercase()),
                    None => {
                        self.errors.push(ConfigError::new(
                            path.key("severity"),
                            format!(
                                "unknown severity {text:?}; expected trace, debug, info, warn, error or fatal"
                            ),
                        ));
                        (0, String::new())
                    }
                },
            };
            let time = self.base + nanos(raw.at);
            let record = LogRecord {
                time_unix_nano: time,
                observed_time_unix_nano: time,
                severity_number,
                severity_text,
                body: raw
                    .body
                    .as_ref()
                    .map(|body| self.any_value(path.key("body"), body)),
                attributes: self.attributes(path.key("attributes"), &raw.attributes),
                trace_id: raw
                    .trace_id
                    .as_ref()
                    .map(|t| self.hex_id(path.key("trace_id"), t, 16))
                    .unwrap_or_default(),
                span_id: raw
                    .span_id
                    .as_ref()
                    .map(|t| self.hex_id(path.key("span_id"), t, 8))
                    .unwrap_or_default(),
                event_name: raw.event_name.clone().unwrap_or_default(),
                ..Default::default()
            };
            let resource = self.item_resource(&path, raw.resource.as_ref(), input);
            let scope = raw.scope.as_ref().or(input.scope.as_ref());
            groups.add(resource, scope, record);
        }
        let resource_logs = groups
            .0
            .into_iter()
            .map(|(resource, scope, log_records)| ResourceLogs {
                resource: Some(resource),
                scope_logs: vec![ScopeLogs {
                    scope: scope_of(scope),
                    log_records,
                    ..Default::default()
                }],
                ..Default::default()
            })
            .collect();
        Some(Batch::from_request(Request::Logs(
            ExportLogsServiceRequest { resource_logs },
        )))
    }

    /// The metrics batch of `metrics`.
    pub(super) fn metrics(&mut self, input: &RawInput) -> Option<Batch> {
        if input.metrics.is_empty() {
            return None;
        }
        let list = self.path.key("metrics");
        let mut groups = Groups::default();
        for (i, raw) in input.metrics.iter().enumerate() {
            let path = list.index(i);
            let metric = self.metric(&path, raw);
            let resource = self.item_resource(&path, raw.resource.as_ref(), input);
            let scope = raw.scope.as_ref().or(input.scope.as_ref());
            groups.add(resource, scope, metric);
        }
        let resource_metrics = groups
            .0
            .into_iter()
            .map(|(resource, scope, metrics)| ResourceMetrics {
                resource: Some(resource),
                scope_metrics: vec![ScopeMetrics {
                    scope: scope_of(scope),
                    metrics,
                    ..Default::default()
                }],
                ..Default::default()
            })
            .collect();
        Some(Batch::from_request(Request::Metrics(
            ExportMetricsServiceRequest { resource_metrics },
        )))
    }

    fn metric(&mut self, path: &KeyPath, raw: &RawMetric) -> Metric {
        let shorthand;
        let points: Vec<(KeyPath, &RawPoint)> = match (&raw.value, raw.points.is_empty()) {
            (Some(value), true) => {
                shorthand = RawPoint {
                    value: Some(value.clone()),
                    ..Default::default()
                };
                vec![(path.clone(), &shorthand)]
            }
            (Some(_), false) => {
                self.errors.push(ConfigError::new(
                    path.key("value"),
                    "give either value (one point) or points, not both",
                ));
                Vec::new()
            }
            (None, true) => {
                self.errors.push(ConfigError::new(
                    path.clone(),
                    "a metric needs points = [{ value = ... }] (or value = ... for one point)",
                ));
                Vec::new()
            }
            (None, false) => raw
                .points
                .iter()
                .enumerate()
                .map(|(i, p)| (path.key("points").index(i), p))
                .collect(),
        };
        if raw.monotonic.is_some() && raw.metric_type != MetricType::Sum {
            self.errors.push(ConfigError::new(
                path.key("monotonic"),
                "only a sum is monotonic or not",
            ));
        }
        if raw.temporality.is_some() && raw.metric_type == MetricType::Gauge {
            self.errors.push(ConfigError::new(
                path.key("temporality"),
                "a gauge has no temporality",
            ));
        }
        let temporality = match raw.temporality.unwrap_or(Temporality::Cumulative) {
            Temporality::Cumulative => AggregationTemporality::Cumulative,
            Temporality::Delta => AggregationTemporality::Delta,
        } as i32;
        // Cumulative points need a start before their time; a minute is as good as any.
        let start = self.base.saturating_sub(60_000_000_000);
        let data = match raw.metric_type {
            MetricType::Sum | MetricType::Gauge => {
                let data_points = points
                    .into_iter()
                    .map(|(point_path, point)| self.number_point(&point_path, point, start))
                    .collect();
                if raw.metric_type == MetricType::Sum {
                    metric::Data::Sum(Sum {
                        data_points,
                        aggregation_temporality: temporality,
                        is_monotonic: raw.monotonic.unwrap_or(true),
                    })
                } else {
                    metric::Data::Gauge(Gauge { data_points })
                }
            }
            MetricType::Histogram => metric::Data::Histogram(Histogram {
                data_points: points
                    .into_iter()
                    .map(|(point_path, point)| self.histogram_point(&point_path, point, start))
                    .collect(),
                aggregation_temporality: temporality,
            }),
        };
        Metric {
            name: raw.name.clone(),
            description: raw.description.clone(),
            unit: raw.unit.clone(),
            data: Some(data),
            ..Default::default()
        }
    }

    fn number_point(&mut self, path: &KeyPath, point: &RawPoint, start: u64) -> NumberDataPoint {
        let histogram_keys = point.count.is_some()
            || point.sum.is_some()
            || point.min.is_some()
            || point.max.is_some()
            || !point.bounds.is_empty()
            || !point.bucket_counts.is_empty();
        if histogram_keys {
            self.errors.push(ConfigError::new(
                path.clone(),
                "count, sum, min, max, bounds and bucket_counts are for histogram points; a sum or gauge point has a value",
            ));
        }
        let value = match &point.value {
            Some(toml::Value::Integer(i)) => number_data_point::Value::AsInt(*i),
            Some(toml::Value::Float(f)) => number_data_point::Value::AsDouble(*f),
            other => {
                self.errors.push(ConfigError::new(
                    path.key("value"),
                    match other {
                        None => "a sum or gauge point needs a value",
                        Some(_) => "must be an integer or a float",
                    },
                ));
                number_data_point::Value::AsInt(0)
            }
        };
        NumberDataPoint {
            attributes: self.attributes(path.key("attributes"), &point.attributes),
            start_time_unix_nano: start,
            time_unix_nano: self.base,
            value: Some(value),
            ..Default::default()
        }
    }

    fn histogram_point(
        &mut self,
        path: &KeyPath,
        point: &RawPoint,
        start: u64,
    ) -> HistogramDataPoint {
        if point.value.is_some() {
            self.errors.push(ConfigError::new(
                path.key("value"),
                "a histogram point has count, sum and bucket_counts, not a value",
            ));
        }
        if !point.bucket_counts.is_empty() && point.bucket_counts.len() != point.bounds.len() + 1 {
            self.errors.push(ConfigError::new(
                path.key("bucket_counts"),
                format!(
                    "needs one count more than bounds ({} bounds, so {} counts)",
                    point.bounds.len(),
                    point.bounds.len() + 1
                ),
            ));
        }
        let count = match point.count {
            Some(count) => count,
            None if !point.bucket_counts.is_empty() => point.bucket_counts.iter().sum(),
            None => {
                self.errors.push(ConfigError::new(
                    path.clone(),
                    "a histogram point needs count or bucket_counts",
                ));
                0
            }
        };
        HistogramDataPoint {
            attributes: self.attributes(path.key("attributes"), &point.attributes),
            start_time_unix_nano: start,
            time_unix_nano: self.base,
            count,
            sum: point.sum,
            bucket_counts: point.bucket_counts.clone(),
            explicit_bounds: point.bounds.clone(),
            min: point.min,
            max: point.max,
            ..Default::default()
        }
    }
}

/// The OpenTelemetry severity number of a severity name.
fn severity_number(text: &str) -> Option<i32> {
    Some(match text.to_ascii_lowercase().as_str() {
        "trace" => 1,
        "debug" => 5,
        "info" => 9,
        "warn" | "warning" => 13,
        "error" => 17,
        "fatal" => 21,
        _ => return None,
    })
}

fn scope_of(name: Option<String>) -> Option<InstrumentationScope> {
    name.map(|name| InstrumentationScope {
        name,
        ..Default::default()
    })
}

/// Items grouped by resource and scope, in the order they first appear.
struct Groups<T>(Vec<(Resource, Option<String>, Vec<T>)>);

impl<T> Default for Groups<T> {
    fn default() -> Self {
        Groups(Vec::new())
    }
}

impl<T> Groups<T> {
    fn add(&mut self, resource: Resource, scope: Option<&String>, item: T) {
        let scope = scope.cloned();
        match self
            .0
            .iter_mut()
            .find(|(r, s, _)| *r == resource && *s == scope)
        {
            Some((_, _, items)) => items.push(item),
            None => self.0.push((resource, scope, vec![item])),
        }
    }
}
