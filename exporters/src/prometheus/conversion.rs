//! OTLP metrics to Prometheus series, as the OpenTelemetry "Prometheus and OpenMetrics
//! Compatibility" specification describes: names and labels sanitised, units and `_total`
//! appended, resources into `target_info` (and `job`/`instance`), the scope as
//! `otel_scope_name`/`otel_scope_version`, every metric type mapped to a Prometheus type.
//!
//! This module only translates; accumulating deltas, limits and expiry are the store's.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, DataPointFlags, ExponentialHistogramDataPoint, HistogramDataPoint,
    Metric, NumberDataPoint, SummaryDataPoint, exponential_histogram_data_point, metric,
    number_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource;

use super::config::Config;
use super::store::{
    Buckets, ExpHistogram, FamilyDesc, Histogram, Kind, SeriesUpdate, Summary, Temporality, Value,
};

/// The updates of one metric: its family and a series update per data point.
#[derive(Debug)]
pub(crate) struct MetricUpdate {
    pub family: Arc<FamilyDesc>,
    pub series: Vec<SeriesUpdate>,
}

/// Translates OTLP export requests with one exporter's settings.
#[derive(Debug)]
pub(crate) struct Converter {
    namespace: String,
    add_suffixes: bool,
    target_info: bool,
    /// `name="value"` pairs put on every series, rendered once.
    const_labels: Vec<(String, String)>,
    /// Resource attribute keys copied onto series, with their label names.
    resource_to_labels: Vec<(String, String)>,
    /// Per metric name (OTLP or exposed), the label names kept.
    allowlist: HashMap<String, Arc<HashSet<String>>>,
}

impl Converter {
    pub(crate) fn new(config: &Config) -> Converter {
        let mut allowlist = HashMap::new();
        for (metric, labels) in &config.label_allowlist {
            let labels: Arc<HashSet<String>> =
                Arc::new(labels.iter().map(|l| sanitize_label_name(l)).collect());
            allowlist.insert(metric.clone(), labels);
        }
        Converter {
            namespace: config.namespace.clone(),
            add_suffixes: config.add_metric_suffixes,
            target_info: config.target_info,
            const_labels: config
                .const_labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            resource_to_labels: config
                .resource_to_labels
                .iter()
                .map(|k| (k.clone(), sanitize_label_name(k)))
                .collect(),
            allowlist,
        }
    }

    /// Every metric of `request` as updates of the store, `target_info` included.
    pub(crate) fn convert(&self, request: &ExportMetricsServiceRequest) -> Vec<MetricUpdate> {
        let mut updates = Vec::new();
        for resource_metrics in &request.resource_metrics {
            let resource = resource_metrics.resource.as_ref();
            let identity = ResourceIdentity::of(resource);
            if self.target_info
                && let Some(info) = self.target_info_update(resource, &identity)
            {
                updates.push(info);
            }
            for scope_metrics in &resource_metrics.scope_metrics {
                let context =
                    self.context_labels(resource, &identity, scope_metrics.scope.as_ref());
                for metric in &scope_metrics.metrics {
                    if let Some(update) = self.convert_metric(metric, &context) {
                        updates.push(update);
                    }
                }
            }
        }
        updates
    }

    /// The labels every series of one resource and scope carries, in exposition order after
    /// the data point's own: promoted resource attributes, `job`, `instance`, the scope, the
    /// constant labels. Later ones win over earlier ones of the same name.
    fn context_labels(
        &self,
        resource: Option<&Resource>,
        identity: &ResourceIdentity,
        scope: Option<&InstrumentationScope>,
    ) -> Labels {
        let mut labels = Labels::default();
        if let Some(resource) = resource {
            for (key, label) in &self.resource_to_labels {
                if let Some(value) = find_attribute(&resource.attributes, key) {
                    labels.set(label, value);
                }
            }
        }
        identity.add_to(&mut labels);
        if let Some(scope) = scope {
            if !scope.name.is_empty() {
                labels.set("otel_scope_name", scope.name.clone());
            }
            if !scope.version.is_empty() {
                labels.set("otel_scope_version", scope.version.clone());
            }
        }
        for (name, value) in &self.const_labels {
            labels.set(name, value.clone());
        }
        labels
    }

    fn target_info_update(
        &self,
        resource: Option<&Resource>,
        identity: &ResourceIdentity,
    ) -> Option<MetricUpdate> {
        let resource = resource?;
        let mut labels = Labels::default();
        identity.add_to(&mut labels);
        let attributes = resource.attributes.iter().filter(|kv| {
            !matches!(
                kv.key.as_str(),
                "service.name" | "service.namespace" | "service.instance.id"
            )
        });
        for (name, value) in sanitized_attributes(attributes) {
            labels.set_if_absent(&name, value);
        }
        for (name, value) in &self.const_labels {
            labels.set(name, value.clone());
        }
        if labels.is_empty() {
            return None;
        }
        let text = labels.render();
        Some(MetricUpdate {
            family: Arc::new(FamilyDesc {
                name: self.prefixed("target"),
                kind: Kind::Info,
                help: "Target metadata".to_string(),
                unit: String::new(),
                otlp_name: "target_info".to_string(),
                aggregate: false,
                total_suffix: false,
            }),
            series: vec![SeriesUpdate {
                source: hash(&text),
                labels: text,
                value: Value::Number(1.0),
                start: 0,
                time: 0,
                temporality: Temporality::Gauge,
            }],
        })
    }

    fn prefixed(&self, name: &str) -> String {
        if self.namespace.is_empty() {
            name.to_string()
        } else {
            format!("{}_{name}", self.namespace)
        }
    }

    /// The family a metric belongs to, and the attribute allowlist that applies to it.
    fn family(&self, metric: &Metric, kind: Kind, is_otlp_gauge: bool) -> FamilyDesc {
        let mut name = self.prefixed(&sanitize_metric_name(&metric.name));
        let mut unit = String::new();
        if self.add_suffixes {
            if let Some(suffix) = unit_suffix(&metric.unit)
                && !name.ends_with(&format!("_{suffix}"))
            {
                name = format!("{name}_{suffix}");
            }
            if let Some(suffix) = unit_suffix(&metric.unit) {
                unit = suffix;
            }
            if metric.unit == "1" && is_otlp_gauge && !name.ends_with("_ratio") {
                name.push_str("_ratio");
            }
        }
        // A counter's samples are `<name>_total`: a name that has it already is not doubled.
        if kind == Kind::Counter
            && let Some(base) = name.strip_suffix("_total")
        {
            name = base.to_string();
        }
        let help = if metric.description.is_empty() {
            metric.name.clone()
        } else {
            metric.description.clone()
        };
        FamilyDesc {
            aggregate: self.allowlist_for(&metric.name, &name).is_some(),
            name,
            kind,
            help,
            unit,
            otlp_name: metric.name.clone(),
            total_suffix: self.add_suffixes || metric.name.ends_with("_total"),
        }
    }

    fn allowlist_for(&self, otlp_name: &str, name: &str) -> Option<&Arc<HashSet<String>>> {
        self.allowlist
            .get(otlp_name)
            .or_else(|| self.allowlist.get(name))
            .or_else(|| self.allowlist.get(&format!("{name}_total")))
    }

    fn convert_metric(&self, metric: &Metric, context: &Labels) -> Option<MetricUpdate> {
        use metric::Data;
        let data = metric.data.as_ref()?;
        let (kind, is_otlp_gauge) = match data {
            Data::Gauge(_) => (Kind::Gauge, true),
            Data::Sum(sum) if sum.is_monotonic => (Kind::Counter, false),
            Data::Sum(_) => (Kind::Gauge, false),
            Data::Histogram(_) | Data::ExponentialHistogram(_) => (Kind::Histogram, false),
            Data::Summary(_) => (Kind::Summary, false),
        };
        let family = self.family(metric, kind, is_otlp_gauge);
        let allowlist = self.allowlist_for(&metric.name, &family.name).cloned();
        let series_of = |attributes: &[KeyValue]| {
            let all = point_labels(attributes, context);
            let source = hash(&all);
            let labels = match &allowlist {
                Some(keep) => point_labels_kept(attributes, context, keep),
                None => all,
            };
            (labels, source)
        };
        let mut series = Vec::new();
        match data {
            Data::Gauge(gauge) => {
                for point in gauge.data_points.iter().filter(|p| recorded(p.flags)) {
                    let Some(value) = number(point) else { continue };
                    let (labels, source) = series_of(&point.attributes);
                    series.push(SeriesUpdate {
                        labels,
                        source,
                        value: Value::Number(value),
                        start: point.start_time_unix_nano,
                        time: point.time_unix_nano,
                        temporality: Temporality::Gauge,
                    });
                }
            }
            Data::Sum(sum) => {
                let temporality = temporality(sum.aggregation_temporality, sum.is_monotonic);
                for point in sum.data_points.iter().filter(|p| recorded(p.flags)) {
                    let Some(value) = number(point) else { continue };
                    let (labels, source) = series_of(&point.attributes);
                    series.push(SeriesUpdate {
                        labels,
                        source,
                        value: Value::Number(value),
                        start: point.start_time_unix_nano,
                        time: point.time_unix_nano,
                        temporality,
                    });
                }
            }
            Data::Histogram(histogram) => {
                let temporality = temporality(histogram.aggregation_temporality, true);
                for point in histogram.data_points.iter().filter(|p| recorded(p.flags)) {
                    let Some(value) = explicit_histogram(point) else {
                        tracing::debug!(metric = %metric.name, "histogram point with bucket_counts not matching explicit_bounds skipped");
                        continue;
                    };
                    let (labels, source) = series_of(&point.attributes);
                    series.push(SeriesUpdate {
                        labels,
                        source,
                        value,
                        start: point.start_time_unix_nano,
                        time: point.time_unix_nano,
                        temporality,
                    });
                }
            }
            Data::ExponentialHistogram(histogram) => {
                let temporality = temporality(histogram.aggregation_temporality, true);
                for point in histogram.data_points.iter().filter(|p| recorded(p.flags)) {
                    let (labels, source) = series_of(&point.attributes);
                    series.push(SeriesUpdate {
                        labels,
                        source,
                        value: exponential_histogram(point),
                        start: point.start_time_unix_nano,
                        time: point.time_unix_nano,
                        temporality,
                    });
                }
            }
            Data::Summary(summary) => {
                for point in summary.data_points.iter().filter(|p| recorded(p.flags)) {
                    let (labels, source) = series_of(&point.attributes);
                    series.push(SeriesUpdate {
                        labels,
                        source,
                        value: summary_value(point),
                        start: point.start_time_unix_nano,
                        time: point.time_unix_nano,
                        temporality: Temporality::Cumulative { monotonic: true },
                    });
                }
            }
        }
        Some(MetricUpdate {
            family: Arc::new(family),
            series,
        })
    }
}

/// Whether a point carries a value (not flagged "no recorded value").
fn recorded(flags: u32) -> bool {
    flags & DataPointFlags::NoRecordedValueMask as u32 == 0
}

fn temporality(aggregation_temporality: i32, monotonic: bool) -> Temporality {
    if aggregation_temporality == AggregationTemporality::Delta as i32 {
        Temporality::Delta
    } else {
        // Unspecified is invalid OTLP; cumulative is the reading that loses nothing.
        Temporality::Cumulative { monotonic }
    }
}

fn number(point: &NumberDataPoint) -> Option<f64> {
    match point.value? {
        number_data_point::Value::AsDouble(v) => Some(v),
        number_data_point::Value::AsInt(v) => Some(v as f64),
    }
}

fn explicit_histogram(point: &HistogramDataPoint) -> Option<Value> {
    let counts = if point.bucket_counts.is_empty() {
        // Count and sum only: everything is in the +Inf bucket.
        vec![point.count]
    } else if point.bucket_counts.len() == point.explicit_bounds.len() + 1 {
        point.bucket_counts.clone()
    } else {
        return None;
    };
    let bounds = if point.bucket_counts.is_empty() {
        Vec::new()
    } else {
        point.explicit_bounds.clone()
    };
    Some(Value::Histogram(Histogram {
        bounds: bounds.into(),
        counts,
        count: point.count,
        sum: point.sum,
    }))
}

fn exponential_histogram(point: &ExponentialHistogramDataPoint) -> Value {
    let buckets = |b: Option<&exponential_histogram_data_point::Buckets>| match b {
        Some(b) => Buckets {
            offset: b.offset,
            counts: b.bucket_counts.clone(),
        },
        None => Buckets::default(),
    };
    Value::Exponential(ExpHistogram {
        scale: point.scale,
        zero_threshold: point.zero_threshold,
        zero_count: point.zero_count,
        positive: buckets(point.positive.as_ref()),
        negative: buckets(point.negative.as_ref()),
        count: point.count,
        sum: point.sum,
    })
}

fn summary_value(point: &SummaryDataPoint) -> Value {
    Value::Summary(Summary {
        count: point.count,
        sum: point.sum,
        quantiles: point
            .quantile_values
            .iter()
            .map(|q| (q.quantile, q.value))
            .collect(),
    })
}

/// `job` and `instance` of a resource, as the specification derives them.
#[derive(Debug, Default)]
struct ResourceIdentity {
    job: Option<String>,
    instance: Option<String>,
}

impl ResourceIdentity {
    fn of(resource: Option<&Resource>) -> ResourceIdentity {
        let Some(resource) = resource else {
            return ResourceIdentity::default();
        };
        let attribute = |key| find_attribute(&resource.attributes, key);
        let job = match (attribute("service.namespace"), attribute("service.name")) {
            (Some(namespace), Some(name)) => Some(format!("{namespace}/{name}")),
            (None, Some(name)) => Some(name),
            _ => None,
        };
        ResourceIdentity {
            job,
            instance: attribute("service.instance.id"),
        }
    }

    fn add_to(&self, labels: &mut Labels) {
        if let Some(job) = &self.job {
            labels.set("job", job.clone());
        }
        if let Some(instance) = &self.instance {
            labels.set("instance", instance.clone());
        }
    }
}

fn find_attribute(attributes: &[KeyValue], key: &str) -> Option<String> {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| attribute_value(kv.value.as_ref()))
}

/// An ordered set of labels with unique names.
#[derive(Debug, Default, Clone)]
struct Labels(Vec<(String, String)>);

impl Labels {
    fn set(&mut self, name: &str, value: String) {
        match self.0.iter_mut().find(|(n, _)| n == name) {
            Some(existing) => existing.1 = value,
            None => self.0.push((name.to_string(), value)),
        }
    }

    fn set_if_absent(&mut self, name: &str, value: String) {
        if !self.0.iter().any(|(n, _)| n == name) {
            self.0.push((name.to_string(), value));
        }
    }

    fn contains(&self, name: &str) -> bool {
        self.0.iter().any(|(n, _)| n == name)
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn render(&self) -> String {
        let mut out = String::new();
        render_pairs(
            &mut out,
            self.0.iter().map(|(n, v)| (n.as_str(), v.as_str())),
        );
        out
    }
}

/// Appends `name="value"` pairs, comma-separated, values escaped. Empty values are left out:
/// Prometheus treats a label with an empty value as absent.
fn render_pairs<'a>(out: &mut String, pairs: impl Iterator<Item = (&'a str, &'a str)>) {
    for (name, value) in pairs {
        if value.is_empty() {
            continue;
        }
        if !out.is_empty() {
            out.push(',');
        }
        out.push_str(name);
        out.push_str("=\"");
        escape_label_value(out, value);
        out.push('"');
    }
}

/// The label text of a data point: its attributes (sanitised, sorted by label name) then the
/// context labels, which win over an attribute of the same name.
fn point_labels(attributes: &[KeyValue], context: &Labels) -> String {
    let mut out = String::new();
    let own = sanitized_attributes(attributes.iter());
    render_pairs(
        &mut out,
        own.iter()
            .filter(|(name, _)| !context.contains(name))
            .map(|(n, v)| (n.as_str(), v.as_str())),
    );
    render_pairs(
        &mut out,
        context.0.iter().map(|(n, v)| (n.as_str(), v.as_str())),
    );
    out
}

/// [`point_labels`] keeping only the attributes named in `keep`.
fn point_labels_kept(attributes: &[KeyValue], context: &Labels, keep: &HashSet<String>) -> String {
    let mut out = String::new();
    let own = sanitized_attributes(attributes.iter());
    render_pairs(
        &mut out,
        own.iter()
            .filter(|(name, _)| keep.contains(name) && !context.contains(name))
            .map(|(n, v)| (n.as_str(), v.as_str())),
    );
    render_pairs(
        &mut out,
        context.0.iter().map(|(n, v)| (n.as_str(), v.as_str())),
    );
    out
}

/// Attributes as `(label name, value)` sorted by label name. Keys that sanitise to the same
/// name have their values joined with `;` in the order of their original keys, as the
/// specification says.
fn sanitized_attributes<'a>(
    attributes: impl Iterator<Item = &'a KeyValue>,
) -> Vec<(String, String)> {
    let mut by_name: BTreeMap<String, Vec<(&str, String)>> = BTreeMap::new();
    for kv in attributes {
        let Some(value) = attribute_value(kv.value.as_ref()) else {
            continue;
        };
        by_name
            .entry(sanitize_label_name(&kv.key))
            .or_default()
            .push((kv.key.as_str(), value));
    }
    by_name
        .into_iter()
        .map(|(name, mut values)| {
            if values.len() == 1 {
                let (_, value) = values.pop().expect("one value: checked above");
                return (name, value);
            }
            values.sort_by(|a, b| a.0.cmp(b.0));
            let joined: Vec<String> = values.into_iter().map(|(_, v)| v).collect();
            (name, joined.join(";"))
        })
        .collect()
}

/// An attribute's value as label text: strings as they are, numbers and booleans as written,
/// arrays and maps as JSON. `None` for an empty value.
fn attribute_value(value: Option<&AnyValue>) -> Option<String> {
    use any_value::Value;
    Some(match value?.value.as_ref()? {
        Value::StringValue(s) => s.clone(),
        Value::BoolValue(b) => b.to_string(),
        Value::IntValue(i) => i.to_string(),
        Value::DoubleValue(d) => format_float(*d),
        Value::BytesValue(b) => hex::encode(b),
        Value::StringValueStrindex(i) => i.to_string(),
        other @ (Value::ArrayValue(_) | Value::KvlistValue(_)) => json_value(other).to_string(),
    })
}

fn json_value(value: &any_value::Value) -> serde_json::Value {
    use any_value::Value;
    use serde_json::Value as Json;
    match value {
        Value::StringValue(s) => Json::String(s.clone()),
        Value::BoolValue(b) => Json::Bool(*b),
        Value::IntValue(i) => Json::from(*i),
        Value::DoubleValue(d) => Json::from(*d),
        Value::BytesValue(b) => Json::String(hex::encode(b)),
        Value::StringValueStrindex(i) => Json::from(*i),
        Value::ArrayValue(a) => Json::Array(
            a.values
                .iter()
                .map(|v| v.value.as_ref().map_or(Json::Null, json_value))
                .collect(),
        ),
        Value::KvlistValue(l) => Json::Object(
            l.values
                .iter()
                .map(|kv| {
                    let v = kv
                        .value
                        .as_ref()
                        .and_then(|v| v.value.as_ref())
                        .map_or(Json::Null, json_value);
                    (kv.key.clone(), v)
                })
                .collect(),
        ),
    }
}

fn hash(text: &str) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    text.hash(&mut hasher);
    hasher.finish()
}

/// A metric name with every character Prometheus does not allow replaced by `_`, runs of `_`
/// collapsed, and `_` put in front of a leading digit.
pub(crate) fn sanitize_metric_name(name: &str) -> String {
    sanitize(
        name,
        |c| c.is_ascii_alphanumeric() || c == '_' || c == ':',
        "_",
    )
}

/// A label name sanitised like a metric name (without `:`); a leading digit gets `key_` in
/// front and a name starting with `_` gets `key`, since `__` names are Prometheus's own.
pub(crate) fn sanitize_label_name(name: &str) -> String {
    let sanitized = sanitize(name, |c| c.is_ascii_alphanumeric() || c == '_', "key_");
    if sanitized.starts_with('_') {
        format!("key{sanitized}")
    } else {
        sanitized
    }
}

fn sanitize(name: &str, allowed: impl Fn(char) -> bool, digit_prefix: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        let c = if allowed(c) { c } else { '_' };
        if c == '_' && out.ends_with('_') {
            continue;
        }
        out.push(c);
    }
    if out.is_empty() {
        return "_".to_string();
    }
    if out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert_str(0, digit_prefix);
    }
    out
}

/// The name suffix for an OTLP (UCUM) unit: `s` is `seconds`, `By` is `bytes`, `By/s` is
/// `bytes_per_second`; `{…}` annotations are dropped and `1` has none (gauges get `_ratio`).
pub(crate) fn unit_suffix(unit: &str) -> Option<String> {
    // Annotations in braces say what is counted; they are not units.
    let mut stripped = String::new();
    let mut depth = 0usize;
    for c in unit.chars() {
        match c {
            '{' => depth += 1,
            '}' => depth = depth.saturating_sub(1),
            c if depth == 0 => stripped.push(c),
            _ => {}
        }
    }
    let unit = stripped.trim();
    if unit.is_empty() || unit == "1" {
        return None;
    }
    let (main, per) = match unit.split_once('/') {
        Some((main, per)) => (main, Some(per)),
        None => (unit, None),
    };
    let main = if main.is_empty() || main == "1" {
        String::new()
    } else {
        unit_word(main)
    };
    let per = per.filter(|p| !p.is_empty()).map(per_unit_word);
    let suffix = match (main.is_empty(), per) {
        (false, Some(per)) => format!("{main}_per_{per}"),
        (true, Some(per)) => format!("per_{per}"),
        (false, None) => main,
        (true, None) => return None,
    };
    let suffix = sanitize_metric_name(&suffix);
    let suffix = suffix.trim_matches('_');
    (!suffix.is_empty()).then(|| suffix.to_string())
}

fn unit_word(unit: &str) -> String {
    match unit {
        "d" => "days",
        "h" => "hours",
        "min" => "minutes",
        "s" => "seconds",
        "ms" => "milliseconds",
        "us" => "microseconds",
        "ns" => "nanoseconds",
        "By" => "bytes",
        "KiBy" => "kibibytes",
        "MiBy" => "mebibytes",
        "GiBy" => "gibibytes",
        "TiBy" => "tibibytes",
        "KBy" => "kilobytes",
        "MBy" => "megabytes",
        "GBy" => "gigabytes",
        "TBy" => "terabytes",
        "m" => "meters",
        "V" => "volts",
        "A" => "amperes",
        "J" => "joules",
        "W" => "watts",
        "g" => "grams",
        "Cel" => "celsius",
        "Hz" => "hertz",
        "%" => "percent",
        other => return other.to_string(),
    }
    .to_string()
}

fn per_unit_word(unit: &str) -> String {
    match unit {
        "s" => "second",
        "m" => "minute",
        "h" => "hour",
        "d" => "day",
        "w" => "week",
        "mo" => "month",
        "y" => "year",
        other => return unit_word(other),
    }
    .to_string()
}

/// Escapes a label value: backslash, double quote and newline.
pub(crate) fn escape_label_value(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// A float as Go's `strconv.FormatFloat(f, 'g', -1, 64)` writes it, which is what Prometheus
/// client libraries expose: the shortest exact digits, exponent form below 1e-4 and from 1e21.
pub(crate) fn format_float(value: f64) -> String {
    if value.is_nan() {
        return "NaN".to_string();
    }
    if value.is_infinite() {
        return if value > 0.0 { "+Inf" } else { "-Inf" }.to_string();
    }
    if value == 0.0 {
        return if value.is_sign_negative() { "-0" } else { "0" }.to_string();
    }
    // `{:e}` gives the shortest round-tripping digits: "1.048576e6".
    let scientific = format!("{value:e}");
    let (mantissa, exponent) = scientific
        .split_once('e')
        .expect("`{:e}` of a finite float has an exponent");
    let exponent: i32 = exponent.parse().expect("`{:e}` writes an integer exponent");
    if (-4..21).contains(&exponent) {
        // Rust's plain `{}` is the shortest exact decimal without exponent.
        return format!("{value}");
    }
    let sign = if exponent < 0 { '-' } else { '+' };
    format!("{mantissa}e{sign}{:02}", exponent.abs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_are_formatted_as_prometheus_clients_do() {
        assert_eq!(format_float(0.005), "0.005");
        assert_eq!(format_float(1.0), "1");
        assert_eq!(format_float(1048576.0), "1048576");
        assert_eq!(format_float(0.0001), "0.0001");
        assert_eq!(format_float(0.00001), "1e-05");
        assert_eq!(format_float(1e21), "1e+21");
        assert_eq!(format_float(-2.5), "-2.5");
        assert_eq!(format_float(f64::INFINITY), "+Inf");
        assert_eq!(format_float(f64::NEG_INFINITY), "-Inf");
        assert_eq!(format_float(f64::NAN), "NaN");
        assert_eq!(format_float(0.1 + 0.2), "0.30000000000000004");
    }

    #[test]
    fn metric_names_are_sanitised() {
        assert_eq!(
            sanitize_metric_name("gen_ai.client.token.usage"),
            "gen_ai_client_token_usage"
        );
        assert_eq!(sanitize_metric_name("a..b--c"), "a_b_c");
        assert_eq!(sanitize_metric_name("2xx.count"), "_2xx_count");
        assert_eq!(sanitize_metric_name("ns:metric"), "ns:metric");
        assert_eq!(sanitize_metric_name("résumé"), "r_sum_");
    }

    #[test]
    fn label_names_are_sanitised() {
        assert_eq!(
            sanitize_label_name("http.response.status_code"),
            "http_response_status_code"
        );
        assert_eq!(sanitize_label_name("0day"), "key_0day");
        assert_eq!(sanitize_label_name("_private"), "key_private");
        assert_eq!(sanitize_label_name("__name__"), "key_name_");
        assert_eq!(sanitize_label_name("a:b"), "a_b");
    }

    #[test]
    fn units_become_name_suffixes() {
        assert_eq!(unit_suffix("s").as_deref(), Some("seconds"));
        assert_eq!(unit_suffix("ms").as_deref(), Some("milliseconds"));
        assert_eq!(unit_suffix("By").as_deref(), Some("bytes"));
        assert_eq!(unit_suffix("By/s").as_deref(), Some("bytes_per_second"));
        assert_eq!(unit_suffix("{token}"), None);
        assert_eq!(unit_suffix("{request}/s").as_deref(), Some("per_second"));
        assert_eq!(unit_suffix("1"), None);
        assert_eq!(unit_suffix(""), None);
        assert_eq!(unit_suffix("USD").as_deref(), Some("USD"));
        assert_eq!(unit_suffix("%").as_deref(), Some("percent"));
    }

    #[test]
    fn colliding_attribute_names_join_their_values_in_key_order() {
        let attributes = vec![
            crate::test_data::string("b.c", "2"),
            crate::test_data::string("b_c", "1"),
            crate::test_data::string("a", "x\"y\\z\nw"),
        ];
        let labels = point_labels(&attributes, &Labels::default());
        assert_eq!(labels, r#"a="x\"y\\z\nw",b_c="2;1""#);
    }
}
