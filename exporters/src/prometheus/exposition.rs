//! Rendering a snapshot of the store as the Prometheus text format 0.0.4 or OpenMetrics 1.0.

use std::fmt::Write as _;

use super::conversion::format_float;
use super::store::{ExpHistogram, FamilySnapshot, Kind, Snapshot, Value};

/// The exposition formats a scrape can ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    /// Prometheus text format 0.0.4.
    Text,
    /// OpenMetrics 1.0 text.
    OpenMetrics,
}

impl Format {
    /// The `Content-Type` of a response in this format.
    pub(crate) fn content_type(self) -> &'static str {
        match self {
            Format::Text => "text/plain; version=0.0.4; charset=utf-8",
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

/// Renders every family of `snapshot`.
pub(crate) fn render(snapshot: &Snapshot, format: Format) -> String {
    let series: usize = snapshot.families.iter().map(|f| f.series.len()).sum();
    let mut out = String::with_capacity(64 + series * 160);
    for family in &snapshot.families {
        if !family.series.is_empty() {
            render_family(&mut out, family, format);
        }
    }
    if format == Format::OpenMetrics {
        out.push_str("# EOF\n");
    }
    out
}

fn render_family(out: &mut String, family: &FamilySnapshot, format: Format) {
    let desc = &family.desc;
    let name = desc.name.as_str();
    // Writing into a String cannot fail: the `fmt::Result`s below are ignored.
    match format {
        Format::Text => {
            let (type_name, kind) = match desc.kind {
                Kind::Counter if desc.total_suffix => (format!("{name}_total"), "counter"),
                Kind::Counter => (name.to_string(), "counter"),
                Kind::Gauge => (name.to_string(), "gauge"),
                Kind::Info => (format!("{name}_info"), "gauge"),
                Kind::Histogram => (name.to_string(), "histogram"),
                Kind::Summary => (name.to_string(), "summary"),
            };
            let _ = writeln!(out, "# HELP {type_name} {}", escape_help(&desc.help, false));
            let _ = writeln!(out, "# TYPE {type_name} {kind}");
        }
        Format::OpenMetrics => {
            let kind = match desc.kind {
                Kind::Counter => "counter",
                Kind::Gauge => "gauge",
                Kind::Info => "info",
                Kind::Histogram => "histogram",
                Kind::Summary => "summary",
            };
            let _ = writeln!(out, "# TYPE {name} {kind}");
            if !desc.unit.is_empty() && name.ends_with(&format!("_{}", desc.unit)) {
                let _ = writeln!(out, "# UNIT {name} {}", desc.unit);
            }
            let _ = writeln!(out, "# HELP {name} {}", escape_help(&desc.help, true));
        }
    }
    for (labels, value) in &family.series {
        match (desc.kind, value) {
            (Kind::Counter, Value::Number(v)) => {
                let suffix = if desc.total_suffix || format == Format::OpenMetrics {
                    "_total"
                } else {
                    ""
                };
                sample(out, name, suffix, labels, None, *v);
            }
            (Kind::Info, Value::Number(v)) => sample(out, name, "_info", labels, None, *v),
            (_, Value::Number(v)) => sample(out, name, "", labels, None, *v),
            (_, Value::Histogram(h)) => {
                let mut cumulative = 0u64;
                for (bound, count) in h.bounds.iter().zip(&h.counts) {
                    cumulative += count;
                    let le = le_text(*bound, format);
                    sample(
                        out,
                        name,
                        "_bucket",
                        labels,
                        Some(("le", &le)),
                        cumulative as f64,
                    );
                }
                histogram_tail(out, name, labels, h.count, h.sum);
            }
            (_, Value::Exponential(h)) => {
                for (bound, cumulative) in exponential_buckets(h) {
                    let le = le_text(bound, format);
                    sample(
                        out,
                        name,
                        "_bucket",
                        labels,
                        Some(("le", &le)),
                        cumulative as f64,
                    );
                }
                histogram_tail(out, name, labels, h.count, h.sum);
            }
            (_, Value::Summary(s)) => {
                for (quantile, v) in &s.quantiles {
                    let q = le_text(*quantile, format);
                    sample(out, name, "", labels, Some(("quantile", &q)), *v);
                }
                sample(out, name, "_sum", labels, None, s.sum);
                sample(out, name, "_count", labels, None, s.count as f64);
            }
        }
    }
}

/// The `+Inf` bucket, `_sum` (when known) and `_count` of a histogram.
fn histogram_tail(out: &mut String, name: &str, labels: &str, count: u64, sum: Option<f64>) {
    sample(
        out,
        name,
        "_bucket",
        labels,
        Some(("le", "+Inf")),
        count as f64,
    );
    if let Some(sum) = sum {
        sample(out, name, "_sum", labels, None, sum);
    }
    sample(out, name, "_count", labels, None, count as f64);
}

/// The explicit buckets of an exponential histogram as `(upper bound, cumulative count)`,
/// without the `+Inf` bucket: negative buckets from the most negative, the zero bucket, then
/// the positive ones.
pub(crate) fn exponential_buckets(h: &ExpHistogram) -> Vec<(f64, u64)> {
    let mut buckets = Vec::with_capacity(h.negative.counts.len() + h.positive.counts.len() + 1);
    let mut cumulative = 0u64;
    // Negative bucket `i` holds values in [-base^(i+1), -base^i): its upper bound is -base^i.
    for (i, count) in h.negative.counts.iter().enumerate().rev() {
        cumulative += count;
        let index = h.negative.offset + i as i32;
        buckets.push((-h.upper_bound(index - 1), cumulative));
    }
    cumulative += h.zero_count;
    if h.zero_count > 0 || !h.negative.counts.is_empty() || h.zero_threshold > 0.0 {
        buckets.push((h.zero_threshold, cumulative));
    }
    for (i, count) in h.positive.counts.iter().enumerate() {
        cumulative += count;
        buckets.push((h.upper_bound(h.positive.offset + i as i32), cumulative));
    }
    buckets
}

/// A bound as a label value: OpenMetrics wants canonical floats (`1.0`, not `1`).
fn le_text(bound: f64, format: Format) -> String {
    let mut text = format_float(bound);
    if format == Format::OpenMetrics && bound.is_finite() && !text.contains(['.', 'e']) {
        text.push_str(".0");
    }
    text
}

fn sample(
    out: &mut String,
    name: &str,
    suffix: &str,
    labels: &str,
    extra: Option<(&str, &str)>,
    value: f64,
) {
    out.push_str(name);
    out.push_str(suffix);
    match (labels.is_empty(), extra) {
        (true, None) => {}
        (false, None) => {
            out.push('{');
            out.push_str(labels);
            out.push('}');
        }
        (empty, Some((label, extra))) => {
            out.push('{');
            out.push_str(labels);
            if !empty {
                out.push(',');
            }
            let _ = write!(out, "{label}=\"{extra}\"");
            out.push('}');
        }
    }
    out.push(' ');
    if value.fract() == 0.0 && value.abs() < 1e15 {
        let _ = write!(out, "{}", value as i64);
    } else {
        out.push_str(&format_float(value));
    }
    out.push('\n');
}

/// HELP text escaped: backslash and newline, and in OpenMetrics double quotes too.
fn escape_help(help: &str, open_metrics: bool) -> String {
    let mut out = String::with_capacity(help.len());
    for c in help.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '"' if open_metrics => out.push_str("\\\""),
            c => out.push(c),
        }
    }
    out
}
