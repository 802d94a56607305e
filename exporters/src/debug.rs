//! The `debug` exporter: prints batches to stdout, for seeing what flows through a pipeline.
//!
//! Three levels of detail, as the OpenTelemetry Collector's debug exporter: `basic` prints one
//! summary line per batch, `normal` one line per span, data point or log record, `detailed`
//! every field and attribute, resource and scope included. A batch is formatted into a buffer
//! and written under one lock of stdout, so batches from concurrent workers never interleave.

use std::fmt::Write as _;
use std::io::{self, Write};
use std::time::{Duration, UNIX_EPOCH};

use async_trait::async_trait;
use opentelemetry_proto::tonic::collector::{
    logs::v1::ExportLogsServiceRequest, metrics::v1::ExportMetricsServiceRequest,
    trace::v1::ExportTraceServiceRequest,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::logs::v1::LogRecord;
use opentelemetry_proto::tonic::metrics::v1::{
    Exemplar, Metric, NumberDataPoint, exemplar, metric, number_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{Span, span::SpanKind, status::StatusCode};
use serde::Deserialize;
use sluice_pipeline::{
    Batch, ComponentSettings, ConfigError, ExportError, Exporter, ExporterFactory, Request, Signal,
};

/// Configuration of a `debug` exporter.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// How much to print: `"basic"` (a line per batch), `"normal"` (a line per span, data
    /// point or log record) or `"detailed"` (every field and attribute).
    #[serde(default = "default_verbosity")]
    pub verbosity: Verbosity,
}

/// How much the debug exporter prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verbosity {
    Basic,
    Normal,
    Detailed,
}

fn default_verbosity() -> Verbosity {
    Verbosity::Normal
}

/// Builds `debug` exporters.
pub struct DebugFactory;

impl ExporterFactory for DebugFactory {
    fn type_name(&self) -> &'static str {
        "debug"
    }

    fn signals(&self) -> &'static [Signal] {
        &Signal::ALL
    }

    fn build(&self, settings: &ComponentSettings) -> Result<Box<dyn Exporter>, ConfigError> {
        let config: Config = settings.parse()?;
        Ok(Box::new(DebugExporter {
            verbosity: config.verbosity,
        }))
    }
}

/// Prints every batch to stdout.
pub struct DebugExporter {
    verbosity: Verbosity,
}

#[async_trait]
impl Exporter for DebugExporter {
    async fn export(&self, mut batch: Batch) -> Result<(), ExportError> {
        let request = batch
            .request()
            .map_err(|e| ExportError::permanent(format!("batch is not valid OTLP: {e}")))?;
        let mut text = String::new();
        format_request(&mut text, request, self.verbosity);
        // A closed stdout (the output piped into `head`) is an error to report, not a panic.
        let mut stdout = io::stdout().lock();
        stdout
            .write_all(text.as_bytes())
            .and_then(|()| stdout.flush())
            .map_err(|e| ExportError::permanent(format!("writing to stdout: {e}")))
    }
}

/// Writes `request` to `out` at the given verbosity.
pub fn write_request(
    out: &mut impl Write,
    request: &Request,
    verbosity: Verbosity,
) -> io::Result<()> {
    let mut text = String::new();
    format_request(&mut text, request, verbosity);
    out.write_all(text.as_bytes())
}

// Formatting into a String cannot fail, so the `fmt::Result`s of `writeln!` below are ignored.

fn format_request(out: &mut String, request: &Request, verbosity: Verbosity) {
    match verbosity {
        Verbosity::Basic => basic(out, request),
        Verbosity::Normal => match request {
            Request::Traces(r) => normal_traces(out, r),
            Request::Metrics(r) => normal_metrics(out, r),
            Request::Logs(r) => normal_logs(out, r),
        },
        Verbosity::Detailed => match request {
            Request::Traces(r) => detailed_traces(out, r),
            Request::Metrics(r) => detailed_metrics(out, r),
            Request::Logs(r) => detailed_logs(out, r),
        },
    }
}

fn basic(out: &mut String, request: &Request) {
    let (resources, extra) = match request {
        Request::Traces(r) => (r.resource_spans.len(), String::new()),
        Request::Metrics(r) => {
            let metrics: usize = r
                .resource_metrics
                .iter()
                .flat_map(|rm| &rm.scope_metrics)
                .map(|sm| sm.metrics.len())
                .sum();
            (r.resource_metrics.len(), format!(" metrics={metrics}"))
        }
        Request::Logs(r) => (r.resource_logs.len(), String::new()),
    };
    let signal = request.signal();
    let _ = writeln!(
        out,
        "{signal}: resources={resources}{extra} {}={}",
        signal.item_noun().replace(' ', "_"),
        request.item_count()
    );
}

/// Nanoseconds since the epoch as an RFC 3339 timestamp; 0 (unset) stays visible as such.
fn timestamp(nanos: u64) -> String {
    if nanos == 0 {
        return "unset".to_string();
    }
    let time = UNIX_EPOCH + Duration::from_nanos(nanos);
    humantime::format_rfc3339_nanos(time).to_string()
}

fn duration(start: u64, end: u64) -> String {
    match end.checked_sub(start) {
        Some(nanos) => format!("{:?}", Duration::from_nanos(nanos)),
        None => "negative".to_string(),
    }
}

/// A value as the Collector's debug exporter prints it: `Str(x)`, `Int(1)`, `Map({...})`.
fn typed_value(value: Option<&AnyValue>) -> String {
    use any_value::Value;
    match value.and_then(|v| v.value.as_ref()) {
        None => "Empty()".to_string(),
        Some(Value::StringValue(s)) => format!("Str({})", s.escape_debug()),
        Some(Value::BoolValue(b)) => format!("Bool({b})"),
        Some(Value::IntValue(i)) => format!("Int({i})"),
        Some(Value::DoubleValue(d)) => format!("Double({d})"),
        Some(Value::BytesValue(b)) => format!("Bytes({})", hex::encode(b)),
        Some(Value::StringValueStrindex(i)) => format!("StrIndex({i})"),
        Some(Value::ArrayValue(_)) | Some(Value::KvlistValue(_)) => {
            let inner = plain_value(value);
            let kind = if matches!(
                value.and_then(|v| v.value.as_ref()),
                Some(Value::ArrayValue(_))
            ) {
                "Slice"
            } else {
                "Map"
            };
            format!("{kind}({inner})")
        }
    }
}

/// A value in a compact JSON-like form, strings quoted and escaped.
fn plain_value(value: Option<&AnyValue>) -> String {
    use any_value::Value;
    match value.and_then(|v| v.value.as_ref()) {
        None => "null".to_string(),
        Some(Value::StringValue(s)) => format!("{s:?}"),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        Some(Value::BytesValue(b)) => format!("0x{}", hex::encode(b)),
        Some(Value::StringValueStrindex(i)) => format!("strindex:{i}"),
        Some(Value::ArrayValue(a)) => {
            let items: Vec<String> = a.values.iter().map(|v| plain_value(Some(v))).collect();
            format!("[{}]", items.join(", "))
        }
        Some(Value::KvlistValue(kv)) => format!("{{{}}}", inline_attributes(&kv.values)),
    }
}

/// Attributes on one line: `key=value, key=value`.
fn inline_attributes(attributes: &[KeyValue]) -> String {
    let items: Vec<String> = attributes
        .iter()
        .map(|kv| {
            format!(
                "{}={}",
                kv.key.escape_debug(),
                plain_value(kv.value.as_ref())
            )
        })
        .collect();
    items.join(", ")
}

fn attributes_suffix(attributes: &[KeyValue]) -> String {
    if attributes.is_empty() {
        String::new()
    } else {
        format!(" {{{}}}", inline_attributes(attributes))
    }
}

fn span_kind(kind: i32) -> String {
    match SpanKind::try_from(kind) {
        Ok(kind) => kind
            .as_str_name()
            .trim_start_matches("SPAN_KIND_")
            .to_string(),
        Err(_) => format!("Unknown({kind})"),
    }
}

fn status_code(code: i32) -> String {
    match StatusCode::try_from(code) {
        Ok(code) => code
            .as_str_name()
            .trim_start_matches("STATUS_CODE_")
            .to_string(),
        Err(_) => format!("Unknown({code})"),
    }
}

fn normal_traces(out: &mut String, request: &ExportTraceServiceRequest) {
    for span in request
        .resource_spans
        .iter()
        .flat_map(|rs| &rs.scope_spans)
        .flat_map(|ss| &ss.spans)
    {
        let status = span.status.as_ref();
        let mut status_text = status_code(status.map_or(0, |s| s.code));
        if let Some(message) = status.map(|s| &s.message).filter(|m| !m.is_empty()) {
            let _ = write!(status_text, " {message:?}");
        }
        let _ = writeln!(
            out,
            "span {:?} trace_id={} span_id={} duration={} status={status_text}{}",
            span.name,
            hex::encode(&span.trace_id),
            hex::encode(&span.span_id),
            duration(span.start_time_unix_nano, span.end_time_unix_nano),
            attributes_suffix(&span.attributes),
        );
    }
}

fn number_value(value: Option<&number_data_point::Value>) -> String {
    match value {
        Some(number_data_point::Value::AsDouble(d)) => d.to_string(),
        Some(number_data_point::Value::AsInt(i)) => i.to_string(),
        None => "none".to_string(),
    }
}

fn optional(value: Option<f64>) -> String {
    value.map_or_else(|| "none".to_string(), |v| v.to_string())
}

fn normal_metrics(out: &mut String, request: &ExportMetricsServiceRequest) {
    for metric in request
        .resource_metrics
        .iter()
        .flat_map(|rm| &rm.scope_metrics)
        .flat_map(|sm| &sm.metrics)
    {
        let name = &metric.name;
        match &metric.data {
            Some(metric::Data::Gauge(g)) => number_lines(out, name, "gauge", &g.data_points),
            Some(metric::Data::Sum(s)) => number_lines(out, name, "sum", &s.data_points),
            Some(metric::Data::Histogram(h)) => {
                for p in &h.data_points {
                    let _ = writeln!(
                        out,
                        "metric {name:?} histogram count={} sum={} min={} max={}{}",
                        p.count,
                        optional(p.sum),
                        optional(p.min),
                        optional(p.max),
                        attributes_suffix(&p.attributes),
                    );
                }
            }
            Some(metric::Data::ExponentialHistogram(h)) => {
                for p in &h.data_points {
                    let _ = writeln!(
                        out,
                        "metric {name:?} exponential_histogram count={} sum={} scale={}{}",
                        p.count,
                        optional(p.sum),
                        p.scale,
                        attributes_suffix(&p.attributes),
                    );
                }
            }
            Some(metric::Data::Summary(s)) => {
                for p in &s.data_points {
                    let _ = writeln!(
                        out,
                        "metric {name:?} summary count={} sum={}{}",
                        p.count,
                        p.sum,
                        attributes_suffix(&p.attributes),
                    );
                }
            }
            None => {
                let _ = writeln!(out, "metric {name:?} no data");
            }
        }
    }
}

fn number_lines(out: &mut String, name: &str, kind: &str, points: &[NumberDataPoint]) {
    for p in points {
        let _ = writeln!(
            out,
            "metric {name:?} {kind} value={}{}",
            number_value(p.value.as_ref()),
            attributes_suffix(&p.attributes),
        );
    }
}

fn severity(record: &LogRecord) -> String {
    match (record.severity_text.is_empty(), record.severity_number) {
        (true, 0) => "unset".to_string(),
        (true, n) => format!("({n})"),
        (false, n) => format!("{}({n})", record.severity_text.escape_debug()),
    }
}

fn normal_logs(out: &mut String, request: &ExportLogsServiceRequest) {
    for record in request
        .resource_logs
        .iter()
        .flat_map(|rl| &rl.scope_logs)
        .flat_map(|sl| &sl.log_records)
    {
        let _ = write!(
            out,
            "log severity={} body={}",
            severity(record),
            plain_value(record.body.as_ref())
        );
        if !record.trace_id.is_empty() {
            let _ = write!(
                out,
                " trace_id={} span_id={}",
                hex::encode(&record.trace_id),
                hex::encode(&record.span_id)
            );
        }
        let _ = writeln!(out, "{}", attributes_suffix(&record.attributes));
    }
}

/// One `-> key: Type(value)` line per attribute, indented by `indent` spaces.
fn attribute_lines(out: &mut String, indent: usize, attributes: &[KeyValue]) {
    for kv in attributes {
        let _ = writeln!(
            out,
            "{:indent$}-> {}: {}",
            "",
            kv.key.escape_debug(),
            typed_value(kv.value.as_ref())
        );
    }
}

fn detailed_resource(
    out: &mut String,
    kind: &str,
    index: usize,
    resource: Option<&Resource>,
    schema_url: &str,
) {
    let _ = writeln!(out, "{kind} #{index}");
    let _ = writeln!(out, "Resource SchemaURL: {schema_url}");
    if let Some(resource) = resource {
        if !resource.attributes.is_empty() {
            let _ = writeln!(out, "Resource attributes:");
            attribute_lines(out, 5, &resource.attributes);
        }
        if resource.dropped_attributes_count > 0 {
            let _ = writeln!(
                out,
                "Resource dropped attributes: {}",
                resource.dropped_attributes_count
            );
        }
        for entity in &resource.entity_refs {
            let _ = writeln!(
                out,
                "Resource entity: type={} id_keys={:?} description_keys={:?} schema_url={}",
                entity.r#type, entity.id_keys, entity.description_keys, entity.schema_url
            );
        }
    }
}

fn detailed_scope(
    out: &mut String,
    kind: &str,
    index: usize,
    scope: Option<&InstrumentationScope>,
    schema_url: &str,
) {
    let _ = writeln!(out, "{kind} #{index}");
    let _ = writeln!(out, "{kind} SchemaURL: {schema_url}");
    if let Some(scope) = scope {
        let _ = writeln!(out, "InstrumentationScope {} {}", scope.name, scope.version);
        if !scope.attributes.is_empty() {
            let _ = writeln!(out, "InstrumentationScope attributes:");
            attribute_lines(out, 5, &scope.attributes);
        }
        if scope.dropped_attributes_count > 0 {
            let _ = writeln!(
                out,
                "InstrumentationScope dropped attributes: {}",
                scope.dropped_attributes_count
            );
        }
    }
}

fn detailed_traces(out: &mut String, request: &ExportTraceServiceRequest) {
    for (i, rs) in request.resource_spans.iter().enumerate() {
        detailed_resource(
            out,
            "ResourceSpans",
            i,
            rs.resource.as_ref(),
            &rs.schema_url,
        );
        for (j, ss) in rs.scope_spans.iter().enumerate() {
            detailed_scope(out, "ScopeSpans", j, ss.scope.as_ref(), &ss.schema_url);
            for (k, span) in ss.spans.iter().enumerate() {
                detailed_span(out, k, span);
            }
        }
    }
}

fn detailed_span(out: &mut String, index: usize, span: &Span) {
    let field = |out: &mut String, name: &str, value: &dyn std::fmt::Display| {
        let _ = writeln!(out, "    {name:<15}: {value}");
    };
    let _ = writeln!(out, "Span #{index}");
    field(out, "Trace ID", &hex::encode(&span.trace_id));
    field(out, "Parent ID", &hex::encode(&span.parent_span_id));
    field(out, "ID", &hex::encode(&span.span_id));
    field(out, "Name", &span.name.escape_debug());
    field(out, "Kind", &span_kind(span.kind));
    field(out, "TraceState", &span.trace_state);
    field(out, "Flags", &format_args!("{:#x}", span.flags));
    field(out, "Start time", &timestamp(span.start_time_unix_nano));
    field(out, "End time", &timestamp(span.end_time_unix_nano));
    field(
        out,
        "Duration",
        &duration(span.start_time_unix_nano, span.end_time_unix_nano),
    );
    let status = span.status.as_ref();
    field(
        out,
        "Status code",
        &status_code(status.map_or(0, |s| s.code)),
    );
    field(
        out,
        "Status message",
        &status.map_or("", |s| s.message.as_str()).escape_debug(),
    );
    if !span.attributes.is_empty() {
        let _ = writeln!(out, "Attributes:");
        attribute_lines(out, 5, &span.attributes);
    }
    if span.dropped_attributes_count > 0 {
        let _ = writeln!(out, "Dropped attributes: {}", span.dropped_attributes_count);
    }
    if !span.events.is_empty() {
        let _ = writeln!(out, "Events:");
    }
    for (i, event) in span.events.iter().enumerate() {
        let _ = writeln!(out, "SpanEvent #{i}");
        let _ = writeln!(out, "     -> Name: {}", event.name.escape_debug());
        let _ = writeln!(
            out,
            "     -> Timestamp: {}",
            timestamp(event.time_unix_nano)
        );
        let _ = writeln!(
            out,
            "     -> DroppedAttributesCount: {}",
            event.dropped_attributes_count
        );
        if !event.attributes.is_empty() {
            let _ = writeln!(out, "     -> Attributes::");
            attribute_lines(out, 10, &event.attributes);
        }
    }
    if span.dropped_events_count > 0 {
        let _ = writeln!(out, "Dropped events: {}", span.dropped_events_count);
    }
    if !span.links.is_empty() {
        let _ = writeln!(out, "Links:");
    }
    for (i, link) in span.links.iter().enumerate() {
        let _ = writeln!(out, "SpanLink #{i}");
        let _ = writeln!(out, "     -> Trace ID: {}", hex::encode(&link.trace_id));
        let _ = writeln!(out, "     -> ID: {}", hex::encode(&link.span_id));
        let _ = writeln!(out, "     -> TraceState: {}", link.trace_state);
        let _ = writeln!(out, "     -> Flags: {:#x}", link.flags);
        let _ = writeln!(
            out,
            "     -> DroppedAttributesCount: {}",
            link.dropped_attributes_count
        );
        if !link.attributes.is_empty() {
            let _ = writeln!(out, "     -> Attributes::");
            attribute_lines(out, 10, &link.attributes);
        }
    }
    if span.dropped_links_count > 0 {
        let _ = writeln!(out, "Dropped links: {}", span.dropped_links_count);
    }
}

fn detailed_metrics(out: &mut String, request: &ExportMetricsServiceRequest) {
    for (i, rm) in request.resource_metrics.iter().enumerate() {
        detailed_resource(
            out,
            "ResourceMetrics",
            i,
            rm.resource.as_ref(),
            &rm.schema_url,
        );
        for (j, sm) in rm.scope_metrics.iter().enumerate() {
            detailed_scope(out, "ScopeMetrics", j, sm.scope.as_ref(), &sm.schema_url);
            for (k, metric) in sm.metrics.iter().enumerate() {
                detailed_metric(out, k, metric);
            }
        }
    }
}

fn temporality(value: i32) -> &'static str {
    match value {
        1 => "Delta",
        2 => "Cumulative",
        _ => "Unspecified",
    }
}

fn detailed_metric(out: &mut String, index: usize, metric: &Metric) {
    let _ = writeln!(out, "Metric #{index}");
    let _ = writeln!(out, "Descriptor:");
    let _ = writeln!(out, "     -> Name: {}", metric.name.escape_debug());
    let _ = writeln!(
        out,
        "     -> Description: {}",
        metric.description.escape_debug()
    );
    let _ = writeln!(out, "     -> Unit: {}", metric.unit.escape_debug());
    if !metric.metadata.is_empty() {
        let _ = writeln!(out, "     -> Metadata:");
        attribute_lines(out, 10, &metric.metadata);
    }
    let point_header =
        |out: &mut String, kind: &str, i: usize, attributes: &[KeyValue], start: u64, time: u64| {
            let _ = writeln!(out, "{kind} #{i}");
            if !attributes.is_empty() {
                let _ = writeln!(out, "Data point attributes:");
                attribute_lines(out, 5, attributes);
            }
            let _ = writeln!(out, "StartTimestamp: {}", timestamp(start));
            let _ = writeln!(out, "Timestamp: {}", timestamp(time));
        };
    match &metric.data {
        Some(metric::Data::Gauge(g)) => {
            let _ = writeln!(out, "     -> DataType: Gauge");
            for (i, p) in g.data_points.iter().enumerate() {
                point_header(
                    out,
                    "NumberDataPoints",
                    i,
                    &p.attributes,
                    p.start_time_unix_nano,
                    p.time_unix_nano,
                );
                let _ = writeln!(out, "Value: {}", number_value(p.value.as_ref()));
                let _ = writeln!(out, "Flags: {}", p.flags);
                exemplar_lines(out, &p.exemplars);
            }
        }
        Some(metric::Data::Sum(s)) => {
            let _ = writeln!(out, "     -> DataType: Sum");
            let _ = writeln!(out, "     -> IsMonotonic: {}", s.is_monotonic);
            let _ = writeln!(
                out,
                "     -> AggregationTemporality: {}",
                temporality(s.aggregation_temporality)
            );
            for (i, p) in s.data_points.iter().enumerate() {
                point_header(
                    out,
                    "NumberDataPoints",
                    i,
                    &p.attributes,
                    p.start_time_unix_nano,
                    p.time_unix_nano,
                );
                let _ = writeln!(out, "Value: {}", number_value(p.value.as_ref()));
                let _ = writeln!(out, "Flags: {}", p.flags);
                exemplar_lines(out, &p.exemplars);
            }
        }
        Some(metric::Data::Histogram(h)) => {
            let _ = writeln!(out, "     -> DataType: Histogram");
            let _ = writeln!(
                out,
                "     -> AggregationTemporality: {}",
                temporality(h.aggregation_temporality)
            );
            for (i, p) in h.data_points.iter().enumerate() {
                point_header(
                    out,
                    "HistogramDataPoints",
                    i,
                    &p.attributes,
                    p.start_time_unix_nano,
                    p.time_unix_nano,
                );
                let _ = writeln!(out, "Count: {}", p.count);
                let _ = writeln!(out, "Sum: {}", optional(p.sum));
                let _ = writeln!(out, "Min: {}", optional(p.min));
                let _ = writeln!(out, "Max: {}", optional(p.max));
                for (k, bound) in p.explicit_bounds.iter().enumerate() {
                    let _ = writeln!(out, "ExplicitBounds #{k}: {bound}");
                }
                for (k, count) in p.bucket_counts.iter().enumerate() {
                    let _ = writeln!(out, "Buckets #{k}, Count: {count}");
                }
                let _ = writeln!(out, "Flags: {}", p.flags);
                exemplar_lines(out, &p.exemplars);
            }
        }
        Some(metric::Data::ExponentialHistogram(h)) => {
            let _ = writeln!(out, "     -> DataType: ExponentialHistogram");
            let _ = writeln!(
                out,
                "     -> AggregationTemporality: {}",
                temporality(h.aggregation_temporality)
            );
            for (i, p) in h.data_points.iter().enumerate() {
                point_header(
                    out,
                    "ExponentialHistogramDataPoints",
                    i,
                    &p.attributes,
                    p.start_time_unix_nano,
                    p.time_unix_nano,
                );
                let _ = writeln!(out, "Count: {}", p.count);
                let _ = writeln!(out, "Sum: {}", optional(p.sum));
                let _ = writeln!(out, "Min: {}", optional(p.min));
                let _ = writeln!(out, "Max: {}", optional(p.max));
                let _ = writeln!(out, "Scale: {}", p.scale);
                let _ = writeln!(out, "ZeroCount: {}", p.zero_count);
                let _ = writeln!(out, "ZeroThreshold: {}", p.zero_threshold);
                for (name, buckets) in [("Positive", &p.positive), ("Negative", &p.negative)] {
                    if let Some(b) = buckets {
                        let _ = writeln!(
                            out,
                            "{name} offset: {}, bucket counts: {:?}",
                            b.offset, b.bucket_counts
                        );
                    }
                }
                let _ = writeln!(out, "Flags: {}", p.flags);
                exemplar_lines(out, &p.exemplars);
            }
        }
        Some(metric::Data::Summary(s)) => {
            let _ = writeln!(out, "     -> DataType: Summary");
            for (i, p) in s.data_points.iter().enumerate() {
                point_header(
                    out,
                    "SummaryDataPoints",
                    i,
                    &p.attributes,
                    p.start_time_unix_nano,
                    p.time_unix_nano,
                );
                let _ = writeln!(out, "Count: {}", p.count);
                let _ = writeln!(out, "Sum: {}", p.sum);
                for (k, q) in p.quantile_values.iter().enumerate() {
                    let _ = writeln!(
                        out,
                        "QuantileValue #{k}: Quantile {}, Value {}",
                        q.quantile, q.value
                    );
                }
                let _ = writeln!(out, "Flags: {}", p.flags);
            }
        }
        None => {
            let _ = writeln!(out, "     -> DataType: Empty");
        }
    }
}

fn exemplar_lines(out: &mut String, exemplars: &[Exemplar]) {
    if exemplars.is_empty() {
        return;
    }
    let _ = writeln!(out, "Exemplars:");
    for (i, e) in exemplars.iter().enumerate() {
        let value = match e.value {
            Some(exemplar::Value::AsDouble(d)) => d.to_string(),
            Some(exemplar::Value::AsInt(i)) => i.to_string(),
            None => "none".to_string(),
        };
        let _ = writeln!(out, "Exemplar #{i}");
        let _ = writeln!(out, "     -> Trace ID: {}", hex::encode(&e.trace_id));
        let _ = writeln!(out, "     -> Span ID: {}", hex::encode(&e.span_id));
        let _ = writeln!(out, "     -> Timestamp: {}", timestamp(e.time_unix_nano));
        let _ = writeln!(out, "     -> Value: {value}");
        if !e.filtered_attributes.is_empty() {
            let _ = writeln!(out, "     -> FilteredAttributes:");
            attribute_lines(out, 10, &e.filtered_attributes);
        }
    }
}

fn detailed_logs(out: &mut String, request: &ExportLogsServiceRequest) {
    for (i, rl) in request.resource_logs.iter().enumerate() {
        detailed_resource(out, "ResourceLog", i, rl.resource.as_ref(), &rl.schema_url);
        for (j, sl) in rl.scope_logs.iter().enumerate() {
            detailed_scope(out, "ScopeLogs", j, sl.scope.as_ref(), &sl.schema_url);
            for (k, record) in sl.log_records.iter().enumerate() {
                let _ = writeln!(out, "LogRecord #{k}");
                let _ = writeln!(
                    out,
                    "ObservedTimestamp: {}",
                    timestamp(record.observed_time_unix_nano)
                );
                let _ = writeln!(out, "Timestamp: {}", timestamp(record.time_unix_nano));
                let _ = writeln!(out, "SeverityText: {}", record.severity_text.escape_debug());
                let _ = writeln!(out, "SeverityNumber: {}", record.severity_number);
                let _ = writeln!(out, "EventName: {}", record.event_name.escape_debug());
                let _ = writeln!(out, "Body: {}", typed_value(record.body.as_ref()));
                if !record.attributes.is_empty() {
                    let _ = writeln!(out, "Attributes:");
                    attribute_lines(out, 5, &record.attributes);
                }
                if record.dropped_attributes_count > 0 {
                    let _ = writeln!(
                        out,
                        "Dropped attributes: {}",
                        record.dropped_attributes_count
                    );
                }
                let _ = writeln!(out, "Trace ID: {}", hex::encode(&record.trace_id));
                let _ = writeln!(out, "Span ID: {}", hex::encode(&record.span_id));
                let _ = writeln!(out, "Flags: {}", record.flags);
            }
        }
    }
}

#[cfg(test)]
mod tests;
