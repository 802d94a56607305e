//! Tail sampling policies: their configuration, as in the Collector's `tailsamplingprocessor`,
//! and how each one votes on a whole trace.
//!
//! A policy is a table with `name`, `type` and the type's own keys:
//!
//! ```toml
//! [[processors.tail_sampling.policies]]
//! name = "expensive"
//! type = "numeric_attribute"
//! key = "gen_ai.usage.output_tokens"
//! min_value = 4000
//! ```
//!
//! The type's keys sit next to `name` and `type` (the Collector nests them under a key named
//! after the type; TOML arrays of tables read better flat). Each policy votes
//! [`Vote::Sampled`], [`Vote::NotSampled`] or, for `drop`, [`Vote::Dropped`]; the processor
//! combines the votes (any drop wins, else any sample, else not sampled).

use std::collections::HashSet;
use std::time::Duration;

use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use regex::RegexSet;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use sluice_pipeline::config::{ConfigError, KeyPath, parse_table};
use tokio::time::Instant;

use super::spans::{Attribute, SpanSummary, TraceId};
use crate::otlp_wire::Value;

/// A policy's vote on one trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vote {
    Sampled,
    NotSampled,
    /// Only `drop` votes this: the trace is not sampled, whatever the other policies say.
    Dropped,
}

impl Vote {
    /// The `decision` label of the per-policy metric.
    pub fn label(self) -> &'static str {
        match self {
            Vote::Sampled => "sampled",
            Vote::NotSampled => "not_sampled",
            Vote::Dropped => "dropped",
        }
    }

    /// Every vote, in the order of [`Vote::index`].
    pub const ALL: [Vote; 3] = [Vote::Sampled, Vote::NotSampled, Vote::Dropped];

    /// The vote's position in [`Vote::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

/// A buffered trace as policies see it: what [`super::spans::summarize`] read from it.
pub struct TraceView<'a> {
    pub id: &'a TraceId,
    /// One per span.
    pub spans: &'a [SpanSummary],
    /// The attributes of every span and of their resources.
    pub attributes: &'a [Attribute<'a>],
}

impl TraceView<'_> {
    /// Whether `matches` holds for the value of attribute `key` on any span or on the
    /// resource of any span.
    fn any_attribute(&self, key: &str, matches: impl Fn(&Value<'_>) -> bool) -> bool {
        self.attributes
            .iter()
            .any(|(k, v)| *k == key.as_bytes() && matches(v))
    }

    /// From the earliest start to the latest end of the trace's spans, in nanoseconds.
    fn duration_nanos(&self) -> u64 {
        let start = self.spans.iter().map(|s| s.start).min();
        let end = self.spans.iter().map(|s| s.end).max();
        match (start, end) {
            (Some(start), Some(end)) => end.saturating_sub(start),
            _ => 0,
        }
    }
}

/// A configured policy: its name and its rule.
#[derive(Debug)]
pub struct Policy {
    pub name: String,
    rule: Rule,
}

impl Policy {
    /// The policy's vote on `trace`, `now` being the decision time (for rate limiting).
    pub fn evaluate(&mut self, trace: &TraceView<'_>, now: Instant) -> Vote {
        self.rule.evaluate(trace, now)
    }
}

#[derive(Debug)]
enum Rule {
    AlwaysSample,
    Latency {
        threshold: u64,
        upper: Option<u64>,
    },
    StatusCode {
        codes: Vec<StatusCode>,
    },
    StringAttribute {
        key: String,
        values: StringValues,
        invert: bool,
    },
    NumericAttribute {
        key: String,
        min: Option<f64>,
        max: Option<f64>,
        invert: bool,
    },
    BooleanAttribute {
        key: String,
        value: bool,
        invert: bool,
    },
    Probabilistic {
        /// Hashes at or below this are sampled; `None` samples nothing.
        threshold: Option<u64>,
        salt: String,
    },
    RateLimiting {
        spans_per_second: u64,
        window: Option<(Instant, u64)>,
    },
    SpanCount {
        min: usize,
        max: Option<usize>,
    },
    And(Vec<Policy>),
    Drop(Vec<Policy>),
}

#[derive(Debug)]
enum StringValues {
    Exact(HashSet<String>),
    Regex(RegexSet),
}

impl StringValues {
    fn matches(&self, value: &str) -> bool {
        match self {
            StringValues::Exact(values) => values.contains(value),
            StringValues::Regex(set) => set.is_match(value),
        }
    }
}

fn vote(sampled: bool) -> Vote {
    if sampled {
        Vote::Sampled
    } else {
        Vote::NotSampled
    }
}

impl Rule {
    fn evaluate(&mut self, trace: &TraceView<'_>, now: Instant) -> Vote {
        match self {
            Rule::AlwaysSample => Vote::Sampled,
            Rule::Latency { threshold, upper } => {
                let duration = trace.duration_nanos();
                vote(duration >= *threshold && upper.is_none_or(|upper| duration <= upper))
            }
            Rule::StatusCode { codes } => vote(
                trace
                    .spans
                    .iter()
                    .any(|s| codes.iter().any(|c| *c as i32 == s.code)),
            ),
            Rule::StringAttribute {
                key,
                values,
                invert,
            } => {
                let found = trace.any_attribute(key, |value| match value {
                    Value::String(s) => std::str::from_utf8(s).is_ok_and(|s| values.matches(s)),
                    _ => false,
                });
                vote(found != *invert)
            }
            Rule::NumericAttribute {
                key,
                min,
                max,
                invert,
            } => {
                let found = trace.any_attribute(key, |value| {
                    let number = match value {
                        Value::Int(i) => *i as f64,
                        Value::Double(d) => *d,
                        _ => return false,
                    };
                    min.is_none_or(|min| number >= min) && max.is_none_or(|max| number <= max)
                });
                vote(found != *invert)
            }
            Rule::BooleanAttribute { key, value, invert } => {
                let found = trace.any_attribute(key, |v| matches!(v, Value::Bool(b) if b == value));
                vote(found != *invert)
            }
            Rule::Probabilistic { threshold, salt } => vote(
                threshold.is_some_and(|threshold| fnv1a_64(salt.as_bytes(), trace.id) <= threshold),
            ),
            Rule::RateLimiting {
                spans_per_second,
                window,
            } => {
                let spans = trace.spans.len() as u64;
                let (start, used) = match *window {
                    Some((start, used)) if now.duration_since(start) < Duration::from_secs(1) => {
                        (start, used)
                    }
                    _ => (now, 0),
                };
                let sampled = used + spans <= *spans_per_second;
                *window = Some((start, if sampled { used + spans } else { used }));
                vote(sampled)
            }
            Rule::SpanCount { min, max } => {
                let count = trace.spans.len();
                vote(count >= *min && max.is_none_or(|max| count <= max))
            }
            Rule::And(policies) => {
                // Stops at the first no, as the Collector does: a rate limiter after it keeps
                // its budget.
                vote(
                    policies
                        .iter_mut()
                        .all(|p| p.evaluate(trace, now) == Vote::Sampled),
                )
            }
            Rule::Drop(policies) => {
                if policies
                    .iter_mut()
                    .all(|p| p.evaluate(trace, now) == Vote::Sampled)
                {
                    Vote::Dropped
                } else {
                    Vote::NotSampled
                }
            }
        }
    }
}

/// 64-bit FNV-1a of `salt` followed by `id`: the Collector's `probabilistic` policy hash.
fn fnv1a_64(salt: &[u8], id: &[u8]) -> u64 {
    salt.iter()
        .chain(id)
        .fold(0xcbf2_9ce4_8422_2325u64, |hash, &byte| {
            (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
        })
}

/// The policy types, as written in `type`.
pub const TYPES: &[&str] = &[
    "always_sample",
    "latency",
    "status_code",
    "string_attribute",
    "numeric_attribute",
    "boolean_attribute",
    "probabilistic",
    "rate_limiting",
    "span_count",
    "and",
    "drop",
];

/// The types a sub-policy of `and` or `drop` may have: every type but the composites.
const LEAF_TYPES: &[&str] = &[
    "always_sample",
    "latency",
    "status_code",
    "string_attribute",
    "numeric_attribute",
    "boolean_attribute",
    "probabilistic",
    "rate_limiting",
    "span_count",
];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AlwaysSampleConfig {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LatencyConfig {
    /// Sample traces lasting at least this many milliseconds.
    #[serde(default)]
    threshold_ms: Option<u64>,
    /// The same as a duration (`"1500ms"`, `"2s"`); give one of the two.
    #[serde(default, deserialize_with = "optional_duration")]
    threshold: Option<Duration>,
    /// When set, only traces lasting at most this many milliseconds are sampled.
    #[serde(default)]
    upper_threshold_ms: Option<u64>,
}

fn optional_duration<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Duration>, D::Error> {
    sluice_pipeline::config::duration::deserialize(deserializer).map(Some)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StatusCodeConfig {
    /// The status codes that sample a trace when any of its spans has one.
    status_codes: Vec<StatusCodeName>,
}

#[derive(Deserialize, Clone, Copy)]
enum StatusCodeName {
    #[serde(rename = "ERROR")]
    Error,
    #[serde(rename = "OK")]
    Ok,
    #[serde(rename = "UNSET")]
    Unset,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StringAttributeConfig {
    key: String,
    values: Vec<String>,
    #[serde(default)]
    enabled_regex_matching: bool,
    #[serde(default)]
    invert_match: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NumericAttributeConfig {
    key: String,
    #[serde(default)]
    min_value: Option<f64>,
    #[serde(default)]
    max_value: Option<f64>,
    #[serde(default)]
    invert_match: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BooleanAttributeConfig {
    key: String,
    value: bool,
    #[serde(default)]
    invert_match: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProbabilisticConfig {
    sampling_percentage: f64,
    #[serde(default = "default_hash_salt")]
    hash_salt: String,
}

/// The Collector's default salt, so both sample the same traces by default.
fn default_hash_salt() -> String {
    "default-hash-seed".to_string()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RateLimitingConfig {
    spans_per_second: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SpanCountConfig {
    min_spans: usize,
    #[serde(default)]
    max_spans: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AndConfig {
    and_sub_policy: Vec<toml::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DropConfig {
    drop_sub_policy: Vec<toml::Value>,
}

/// Parses the `policies` array found at `path`. Names must be unique.
pub fn parse_policies(
    path: &KeyPath,
    values: Vec<toml::Value>,
) -> Result<Vec<Policy>, ConfigError> {
    if values.is_empty() {
        return Err(ConfigError::new(
            path.clone(),
            "needs at least one policy ([[...policies]] with name and type)",
        ));
    }
    let mut names = HashSet::new();
    let mut policies = Vec::with_capacity(values.len());
    for (i, value) in values.into_iter().enumerate() {
        let policy_path = path.index(i);
        let policy = parse_policy(&policy_path, value, TYPES, true)?;
        if !names.insert(policy.name.clone()) {
            return Err(ConfigError::new(
                policy_path.key("name"),
                format!("another policy is already named {:?}", policy.name),
            ));
        }
        policies.push(policy);
    }
    Ok(policies)
}

fn parse_policy(
    path: &KeyPath,
    value: toml::Value,
    allowed: &[&str],
    needs_name: bool,
) -> Result<Policy, ConfigError> {
    let toml::Value::Table(mut table) = value else {
        return Err(ConfigError::new(
            path.clone(),
            "a policy is a table with name, type and the type's keys",
        ));
    };
    let type_name = match table.remove("type") {
        Some(toml::Value::String(t)) => t,
        Some(_) => return Err(ConfigError::new(path.key("type"), "must be a string")),
        None => {
            return Err(ConfigError::new(
                path.clone(),
                format!("missing `type`; one of {}", allowed.join(", ")),
            ));
        }
    };
    let name = match table.remove("name") {
        Some(toml::Value::String(n)) if !n.is_empty() => n,
        Some(_) => {
            return Err(ConfigError::new(
                path.key("name"),
                "must be a non-empty string",
            ));
        }
        None if needs_name => {
            return Err(ConfigError::new(
                path.clone(),
                "missing `name`: each policy is named (metrics and record_policy use it)",
            ));
        }
        None => type_name.clone(),
    };
    if !allowed.contains(&type_name.as_str()) {
        let message = if TYPES.contains(&type_name.as_str()) {
            format!(
                "a sub-policy cannot be {type_name:?}; it is one of {}",
                allowed.join(", ")
            )
        } else {
            format!(
                "unknown policy type {type_name:?}; known types: {}",
                allowed.join(", ")
            )
        };
        return Err(ConfigError::new(path.key("type"), message));
    }
    let rule = parse_rule(path, &type_name, table)?;
    Ok(Policy { name, rule })
}

fn parse<T: DeserializeOwned>(path: &KeyPath, table: toml::Table) -> Result<T, ConfigError> {
    parse_table(path, table)
}

fn parse_rule(path: &KeyPath, type_name: &str, table: toml::Table) -> Result<Rule, ConfigError> {
    let error = |key: &str, message: String| ConfigError::new(path.key(key), message);
    Ok(match type_name {
        "always_sample" => {
            let AlwaysSampleConfig {} = parse(path, table)?;
            Rule::AlwaysSample
        }
        "latency" => {
            let c: LatencyConfig = parse(path, table)?;
            let threshold = match (c.threshold_ms, c.threshold) {
                (Some(ms), None) => Duration::from_millis(ms),
                (None, Some(duration)) => duration,
                (Some(_), Some(_)) => {
                    return Err(error(
                        "threshold",
                        "give threshold_ms or threshold, not both".into(),
                    ));
                }
                (None, None) => {
                    return Err(ConfigError::new(
                        path.clone(),
                        "latency needs threshold_ms (milliseconds) or threshold (\"2s\")",
                    ));
                }
            };
            let upper = c.upper_threshold_ms.map(Duration::from_millis);
            if let Some(upper) = upper
                && upper < threshold
            {
                return Err(error(
                    "upper_threshold_ms",
                    format!("{upper:?} is below the threshold {threshold:?}"),
                ));
            }
            Rule::Latency {
                threshold: threshold.as_nanos().min(u128::from(u64::MAX)) as u64,
                upper: upper.map(|u| u.as_nanos().min(u128::from(u64::MAX)) as u64),
            }
        }
        "status_code" => {
            let c: StatusCodeConfig = parse(path, table)?;
            if c.status_codes.is_empty() {
                return Err(error(
                    "status_codes",
                    "needs at least one of ERROR, OK, UNSET".into(),
                ));
            }
            Rule::StatusCode {
                codes: c
                    .status_codes
                    .iter()
                    .map(|c| match c {
                        StatusCodeName::Error => StatusCode::Error,
                        StatusCodeName::Ok => StatusCode::Ok,
                        StatusCodeName::Unset => StatusCode::Unset,
                    })
                    .collect(),
            }
        }
        "string_attribute" => {
            let c: StringAttributeConfig = parse(path, table)?;
            check_key(path, &c.key)?;
            if c.values.is_empty() {
                return Err(error("values", "needs at least one value".into()));
            }
            let values = if c.enabled_regex_matching {
                // Each pattern alone first, so an error names the one that is wrong.
                for (i, pattern) in c.values.iter().enumerate() {
                    if let Err(e) = regex::Regex::new(pattern) {
                        return Err(ConfigError::new(
                            path.key("values").index(i),
                            format!("invalid regular expression {pattern:?}: {e}"),
                        ));
                    }
                }
                StringValues::Regex(
                    RegexSet::new(&c.values).map_err(|e| error("values", e.to_string()))?,
                )
            } else {
                StringValues::Exact(c.values.into_iter().collect())
            };
            Rule::StringAttribute {
                key: c.key,
                values,
                invert: c.invert_match,
            }
        }
        "numeric_attribute" => {
            let c: NumericAttributeConfig = parse(path, table)?;
            check_key(path, &c.key)?;
            if c.min_value.is_none() && c.max_value.is_none() {
                return Err(ConfigError::new(
                    path.clone(),
                    "numeric_attribute needs min_value, max_value or both",
                ));
            }
            for (key, value) in [("min_value", c.min_value), ("max_value", c.max_value)] {
                if value.is_some_and(f64::is_nan) {
                    return Err(error(key, "must be a number".into()));
                }
            }
            if let (Some(min), Some(max)) = (c.min_value, c.max_value)
                && min > max
            {
                return Err(error(
                    "max_value",
                    format!("{max} is below min_value {min}"),
                ));
            }
            Rule::NumericAttribute {
                key: c.key,
                min: c.min_value,
                max: c.max_value,
                invert: c.invert_match,
            }
        }
        "boolean_attribute" => {
            let c: BooleanAttributeConfig = parse(path, table)?;
            check_key(path, &c.key)?;
            Rule::BooleanAttribute {
                key: c.key,
                value: c.value,
                invert: c.invert_match,
            }
        }
        "probabilistic" => {
            let c: ProbabilisticConfig = parse(path, table)?;
            if !(0.0..=100.0).contains(&c.sampling_percentage) {
                return Err(error(
                    "sampling_percentage",
                    format!(
                        "{} is not a percentage from 0 to 100",
                        c.sampling_percentage
                    ),
                ));
            }
            let threshold = if c.sampling_percentage == 0.0 {
                None
            } else {
                // As the Collector: the share of the 64-bit hash space at or below which a
                // trace is sampled.
                Some((c.sampling_percentage / 100.0 * u64::MAX as f64) as u64)
            };
            Rule::Probabilistic {
                threshold,
                salt: c.hash_salt,
            }
        }
        "rate_limiting" => {
            let c: RateLimitingConfig = parse(path, table)?;
            if c.spans_per_second == 0 {
                return Err(error("spans_per_second", "must be greater than 0".into()));
            }
            Rule::RateLimiting {
                spans_per_second: c.spans_per_second,
                window: None,
            }
        }
        "span_count" => {
            let c: SpanCountConfig = parse(path, table)?;
            let max = c.max_spans.filter(|&m| m != 0);
            if let Some(max) = max
                && max < c.min_spans
            {
                return Err(error(
                    "max_spans",
                    format!("{max} is below min_spans {}", c.min_spans),
                ));
            }
            Rule::SpanCount {
                min: c.min_spans,
                max,
            }
        }
        "and" => {
            let c: AndConfig = parse(path, table)?;
            Rule::And(parse_sub_policies(
                &path.key("and_sub_policy"),
                c.and_sub_policy,
            )?)
        }
        "drop" => {
            let c: DropConfig = parse(path, table)?;
            Rule::Drop(parse_sub_policies(
                &path.key("drop_sub_policy"),
                c.drop_sub_policy,
            )?)
        }
        other => unreachable!("type {other:?} was checked against TYPES"),
    })
}

fn check_key(path: &KeyPath, key: &str) -> Result<(), ConfigError> {
    if key.is_empty() {
        return Err(ConfigError::new(path.key("key"), "must not be empty"));
    }
    Ok(())
}

fn parse_sub_policies(
    path: &KeyPath,
    values: Vec<toml::Value>,
) -> Result<Vec<Policy>, ConfigError> {
    if values.is_empty() {
        return Err(ConfigError::new(
            path.clone(),
            "needs at least one sub-policy",
        ));
    }
    values
        .into_iter()
        .enumerate()
        .map(|(i, value)| parse_policy(&path.index(i), value, LEAF_TYPES, false))
        .collect()
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};
    use prost::Message;

    use super::super::spans::{BufferedSpan, split_request, summarize};
    use super::*;

    fn policies(toml: &str) -> Result<Vec<Policy>, ConfigError> {
        let mut table: toml::Table = toml::from_str(toml).expect("test TOML is valid");
        let values = match table.remove("policies") {
            Some(toml::Value::Array(values)) => values,
            _ => Vec::new(),
        };
        parse_policies(&KeyPath::of(&["processors", "ts", "policies"]), values)
    }

    fn policy(toml: &str) -> Policy {
        let toml = format!("[[policies]]\nname = \"p\"\n{toml}");
        let mut policies = policies(&toml).unwrap_or_else(|e| panic!("{toml}: {e}"));
        policies.remove(0)
    }

    fn error(toml: &str) -> ConfigError {
        policies(toml).expect_err(toml)
    }

    fn kv(key: &str, value: any_value::Value) -> KeyValue {
        KeyValue {
            key: key.to_string(),
            value: Some(AnyValue { value: Some(value) }),
            ..Default::default()
        }
    }

    /// A span lasting `start..end` ms, with `attributes` and a status code.
    fn span(start_ms: u64, end_ms: u64, code: StatusCode, attributes: Vec<KeyValue>) -> Span {
        Span {
            start_time_unix_nano: 1_700_000_000_000_000_000 + start_ms * 1_000_000,
            end_time_unix_nano: 1_700_000_000_000_000_000 + end_ms * 1_000_000,
            status: Some(Status {
                code: code as i32,
                ..Default::default()
            }),
            attributes,
            ..Default::default()
        }
    }

    /// The spans as the buffer holds them: encoded, under a resource with `resource`.
    fn trace(spans: Vec<Span>, resource: Vec<KeyValue>) -> Vec<BufferedSpan> {
        let request = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource {
                    attributes: resource,
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    spans,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        split_request(&Bytes::from(request.encode_to_vec()))
            .unwrap()
            .into_iter()
            .map(|(_, span)| span)
            .collect()
    }

    fn vote_on(policy: &mut Policy, spans: &[BufferedSpan]) -> Vote {
        vote_on_id(policy, spans, &[1; 16])
    }

    fn vote_on_id(policy: &mut Policy, spans: &[BufferedSpan], id: &TraceId) -> Vote {
        vote_at(policy, spans, id, Instant::now())
    }

    fn vote_at(policy: &mut Policy, spans: &[BufferedSpan], id: &TraceId, now: Instant) -> Vote {
        let mut summaries = Vec::new();
        let mut attributes = Vec::new();
        summarize(spans, &mut summaries, &mut attributes);
        let view = TraceView {
            id,
            spans: &summaries,
            attributes: &attributes,
        };
        policy.evaluate(&view, now)
    }

    fn plain(start: u64, end: u64) -> Span {
        span(start, end, StatusCode::Unset, vec![])
    }

    use Vote::{Dropped, NotSampled, Sampled};

    #[test]
    fn always_sample_samples_everything() {
        let mut p = policy("type = \"always_sample\"");
        assert_eq!(vote_on(&mut p, &trace(vec![plain(0, 1)], vec![])), Sampled);
    }

    #[test]
    fn latency_measures_from_the_earliest_start_to_the_latest_end() {
        // Neither span lasts 500ms alone; together they span 0..600ms.
        let spans = trace(vec![plain(0, 300), plain(250, 600)], vec![]);
        let mut p = policy("type = \"latency\"\nthreshold_ms = 500");
        assert_eq!(vote_on(&mut p, &spans), Sampled);
        let mut p = policy("type = \"latency\"\nthreshold = \"600ms\"");
        assert_eq!(
            vote_on(&mut p, &spans),
            Sampled,
            "the threshold is inclusive"
        );
        let mut p = policy("type = \"latency\"\nthreshold = \"601ms\"");
        assert_eq!(vote_on(&mut p, &spans), NotSampled);
        let mut p = policy("type = \"latency\"\nthreshold_ms = 100\nupper_threshold_ms = 500");
        assert_eq!(vote_on(&mut p, &spans), NotSampled, "above the upper bound");
    }

    #[test]
    fn status_code_samples_when_any_span_has_a_listed_code() {
        let ok_and_error = trace(
            vec![
                span(0, 1, StatusCode::Ok, vec![]),
                span(0, 1, StatusCode::Error, vec![]),
            ],
            vec![],
        );
        let unset = trace(vec![Span::default()], vec![]);
        let mut errors = policy("type = \"status_code\"\nstatus_codes = [\"ERROR\"]");
        assert_eq!(vote_on(&mut errors, &ok_and_error), Sampled);
        assert_eq!(vote_on(&mut errors, &unset), NotSampled);
        let mut unset_codes = policy("type = \"status_code\"\nstatus_codes = [\"UNSET\", \"OK\"]");
        assert_eq!(
            vote_on(&mut unset_codes, &unset),
            Sampled,
            "no status is UNSET"
        );
        assert_eq!(vote_on(&mut unset_codes, &ok_and_error), Sampled);
    }

    #[test]
    fn string_attribute_matches_values_on_spans_or_their_resource() {
        let s = |v: &str| any_value::Value::StringValue(v.into());
        let on_span = trace(
            vec![span(0, 1, StatusCode::Unset, vec![kv("tenant", s("acme"))])],
            vec![],
        );
        let on_resource = trace(vec![plain(0, 1)], vec![kv("tenant", s("acme"))]);
        let other = trace(
            vec![span(
                0,
                1,
                StatusCode::Unset,
                vec![kv("tenant", s("globex"))],
            )],
            vec![],
        );
        let mut p = policy(
            "type = \"string_attribute\"\nkey = \"tenant\"\nvalues = [\"acme\", \"initech\"]",
        );
        assert_eq!(vote_on(&mut p, &on_span), Sampled);
        assert_eq!(vote_on(&mut p, &on_resource), Sampled);
        assert_eq!(vote_on(&mut p, &other), NotSampled);

        let mut regex = policy(
            "type = \"string_attribute\"\nkey = \"tenant\"\nvalues = [\"^glo\"]\nenabled_regex_matching = true",
        );
        assert_eq!(vote_on(&mut regex, &other), Sampled);
        assert_eq!(vote_on(&mut regex, &on_span), NotSampled);

        let mut inverted = policy(
            "type = \"string_attribute\"\nkey = \"tenant\"\nvalues = [\"acme\"]\ninvert_match = true",
        );
        assert_eq!(vote_on(&mut inverted, &on_span), NotSampled);
        assert_eq!(vote_on(&mut inverted, &other), Sampled);
        assert_eq!(
            vote_on(&mut inverted, &trace(vec![plain(0, 1)], vec![])),
            Sampled,
            "a trace without the key has no matching value"
        );
    }

    #[test]
    fn numeric_attribute_compares_ints_and_doubles_inclusively() {
        let tokens = |n: i64| {
            trace(
                vec![
                    plain(0, 1),
                    span(
                        0,
                        1,
                        StatusCode::Unset,
                        vec![kv(
                            "gen_ai.usage.output_tokens",
                            any_value::Value::IntValue(n),
                        )],
                    ),
                ],
                vec![],
            )
        };
        let cost = |c: f64| {
            trace(
                vec![span(
                    0,
                    1,
                    StatusCode::Unset,
                    vec![kv("gen_ai.usage.cost", any_value::Value::DoubleValue(c))],
                )],
                vec![],
            )
        };
        let mut expensive = policy(
            "type = \"numeric_attribute\"\nkey = \"gen_ai.usage.output_tokens\"\nmin_value = 4000",
        );
        assert_eq!(vote_on(&mut expensive, &tokens(4001)), Sampled);
        assert_eq!(
            vote_on(&mut expensive, &tokens(4000)),
            Sampled,
            "min_value is inclusive"
        );
        assert_eq!(vote_on(&mut expensive, &tokens(3999)), NotSampled);
        let mut costly =
            policy("type = \"numeric_attribute\"\nkey = \"gen_ai.usage.cost\"\nmin_value = 0.10");
        assert_eq!(vote_on(&mut costly, &cost(0.25)), Sampled);
        assert_eq!(vote_on(&mut costly, &cost(0.05)), NotSampled);
        let mut band = policy(
            "type = \"numeric_attribute\"\nkey = \"gen_ai.usage.cost\"\nmin_value = 0\nmax_value = 1",
        );
        assert_eq!(vote_on(&mut band, &cost(1.5)), NotSampled);
        assert_eq!(vote_on(&mut band, &cost(1.0)), Sampled);
        let mut ints_vs_doubles = policy(
            "type = \"numeric_attribute\"\nkey = \"gen_ai.usage.output_tokens\"\nmax_value = 10.5",
        );
        assert_eq!(vote_on(&mut ints_vs_doubles, &tokens(10)), Sampled);
        let mut inverted = policy(
            "type = \"numeric_attribute\"\nkey = \"gen_ai.usage.cost\"\nmin_value = 1\ninvert_match = true",
        );
        assert_eq!(vote_on(&mut inverted, &cost(0.5)), Sampled);
        // A string is not a number.
        let text = trace(
            vec![span(
                0,
                1,
                StatusCode::Unset,
                vec![kv(
                    "gen_ai.usage.cost",
                    any_value::Value::StringValue("5".into()),
                )],
            )],
            vec![],
        );
        assert_eq!(vote_on(&mut costly, &text), NotSampled);
    }

    #[test]
    fn boolean_attribute_matches_the_value() {
        let flagged = |b: bool| {
            trace(
                vec![span(
                    0,
                    1,
                    StatusCode::Unset,
                    vec![kv("retry", any_value::Value::BoolValue(b))],
                )],
                vec![],
            )
        };
        let mut p = policy("type = \"boolean_attribute\"\nkey = \"retry\"\nvalue = true");
        assert_eq!(vote_on(&mut p, &flagged(true)), Sampled);
        assert_eq!(vote_on(&mut p, &flagged(false)), NotSampled);
        let mut inverted = policy(
            "type = \"boolean_attribute\"\nkey = \"retry\"\nvalue = true\ninvert_match = true",
        );
        assert_eq!(vote_on(&mut inverted, &flagged(false)), Sampled);
    }

    #[test]
    fn probabilistic_samples_its_share_by_trace_id_and_salt() {
        let spans = trace(vec![plain(0, 1)], vec![]);
        let ids: Vec<TraceId> = (0u32..20_000)
            .map(|i| {
                let mut id = [0u8; 16];
                id[..4].copy_from_slice(&i.to_le_bytes());
                id[8..12].copy_from_slice(&i.wrapping_mul(0x9e37_79b9).to_le_bytes());
                id
            })
            .collect();
        let mut p = policy("type = \"probabilistic\"\nsampling_percentage = 25");
        let sampled: Vec<bool> = ids
            .iter()
            .map(|id| vote_on_id(&mut p, &spans, id) == Sampled)
            .collect();
        let share = sampled.iter().filter(|s| **s).count();
        assert!((4_500..=5_500).contains(&share), "{share}");
        // The same salt decides the same way again; another salt picks other traces.
        let mut again = policy("type = \"probabilistic\"\nsampling_percentage = 25");
        assert!(
            ids.iter()
                .zip(&sampled)
                .all(|(id, s)| (vote_on_id(&mut again, &spans, id) == Sampled) == *s)
        );
        let mut salted =
            policy("type = \"probabilistic\"\nsampling_percentage = 25\nhash_salt = \"other\"");
        let differ = ids
            .iter()
            .zip(&sampled)
            .filter(|(id, s)| (vote_on_id(&mut salted, &spans, id) == Sampled) != **s)
            .count();
        assert!(differ > 4_000, "{differ}");
        let mut none = policy("type = \"probabilistic\"\nsampling_percentage = 0");
        assert!(
            ids.iter()
                .all(|id| vote_on_id(&mut none, &spans, id) == NotSampled)
        );
        let mut all = policy("type = \"probabilistic\"\nsampling_percentage = 100");
        assert!(
            ids.iter()
                .all(|id| vote_on_id(&mut all, &spans, id) == Sampled)
        );
    }

    #[test]
    fn fnv1a_64_matches_the_reference_vectors() {
        assert_eq!(fnv1a_64(b"", b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a_64(b"a", b""), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a_64(b"foo", b"bar"), 0x8594_4171_f739_67e8);
    }

    #[tokio::test(start_paused = true)]
    async fn rate_limiting_samples_up_to_the_spans_per_second_then_refills() {
        let mut p = policy("type = \"rate_limiting\"\nspans_per_second = 5");
        let three = trace(vec![plain(0, 1), plain(0, 1), plain(0, 1)], vec![]);
        let start = Instant::now();
        let at = |p: &mut Policy, ms: u64| {
            vote_at(p, &three, &[0; 16], start + Duration::from_millis(ms))
        };
        assert_eq!(at(&mut p, 0), Sampled);
        assert_eq!(at(&mut p, 10), NotSampled, "3 + 3 > 5");
        assert_eq!(at(&mut p, 999), NotSampled);
        assert_eq!(at(&mut p, 1000), Sampled, "a new second");
        let two = trace(vec![plain(0, 1), plain(0, 1)], vec![]);
        assert_eq!(
            vote_at(&mut p, &two, &[0; 16], start + Duration::from_millis(1001)),
            Sampled,
            "3 + 2 fits"
        );
    }

    #[test]
    fn span_count_bounds_are_inclusive_and_max_is_optional() {
        let n = |count: usize| trace((0..count).map(|_| plain(0, 1)).collect(), vec![]);
        let mut p = policy("type = \"span_count\"\nmin_spans = 2\nmax_spans = 3");
        assert_eq!(vote_on(&mut p, &n(1)), NotSampled);
        assert_eq!(vote_on(&mut p, &n(2)), Sampled);
        assert_eq!(vote_on(&mut p, &n(3)), Sampled);
        assert_eq!(vote_on(&mut p, &n(4)), NotSampled);
        let mut open = policy("type = \"span_count\"\nmin_spans = 2");
        assert_eq!(vote_on(&mut open, &n(1000)), Sampled);
    }

    #[test]
    fn and_samples_only_when_every_sub_policy_does() {
        let mut p = policy(
            r#"type = "and"
[[policies.and_sub_policy]]
type = "status_code"
status_codes = ["ERROR"]
[[policies.and_sub_policy]]
name = "slow"
type = "latency"
threshold_ms = 100
"#,
        );
        let slow_error = trace(vec![span(0, 200, StatusCode::Error, vec![])], vec![]);
        let fast_error = trace(vec![span(0, 50, StatusCode::Error, vec![])], vec![]);
        let slow_ok = trace(vec![span(0, 200, StatusCode::Ok, vec![])], vec![]);
        assert_eq!(vote_on(&mut p, &slow_error), Sampled);
        assert_eq!(vote_on(&mut p, &fast_error), NotSampled);
        assert_eq!(vote_on(&mut p, &slow_ok), NotSampled);
    }

    #[test]
    fn drop_votes_dropped_only_when_every_sub_policy_samples() {
        let mut p = policy(
            r#"type = "drop"
[[policies.drop_sub_policy]]
type = "string_attribute"
key = "http.route"
values = ["/health"]
"#,
        );
        let health = trace(
            vec![span(
                0,
                1,
                StatusCode::Unset,
                vec![kv(
                    "http.route",
                    any_value::Value::StringValue("/health".into()),
                )],
            )],
            vec![],
        );
        assert_eq!(vote_on(&mut p, &health), Dropped);
        assert_eq!(
            vote_on(&mut p, &trace(vec![plain(0, 1)], vec![])),
            NotSampled
        );
    }

    #[test]
    fn errors_name_the_key_and_list_the_known_types() {
        let e = error("[[policies]]\nname = \"x\"\ntype = \"tail\"");
        assert_eq!(e.path.to_string(), "processors.ts.policies[0].type");
        assert!(
            e.message.contains("unknown policy type \"tail\""),
            "{}",
            e.message
        );
        for t in TYPES {
            assert!(e.message.contains(t), "{}", e.message);
        }

        let e = error(
            "[[policies]]\nname = \"a\"\ntype = \"always_sample\"\n[[policies]]\nname = \"x\"\ntype = \"string_attribute\"\nkey = \"k\"\nvalues = [\"ok\", \"(unclosed\"]\nenabled_regex_matching = true",
        );
        assert_eq!(e.path.to_string(), "processors.ts.policies[1].values[1]");
        assert!(
            e.message
                .contains("invalid regular expression \"(unclosed\""),
            "{}",
            e.message
        );

        for (toml, path) in [
            (
                "[[policies]]\nname = \"x\"\ntype = \"numeric_attribute\"\nkey = \"k\"\nmin_vale = 3",
                "processors.ts.policies[0].min_vale",
            ),
            (
                "[[policies]]\nname = \"x\"\ntype = \"numeric_attribute\"\nkey = \"k\"",
                "processors.ts.policies[0]",
            ),
            (
                "[[policies]]\nname = \"x\"\ntype = \"numeric_attribute\"\nkey = \"k\"\nmin_value = \"4000\"",
                "processors.ts.policies[0].min_value",
            ),
            (
                "[[policies]]\nname = \"x\"\ntype = \"status_code\"\nstatus_codes = [\"FAILED\"]",
                "processors.ts.policies[0].status_codes[0]",
            ),
            (
                "[[policies]]\nname = \"x\"\ntype = \"latency\"",
                "processors.ts.policies[0]",
            ),
            (
                "[[policies]]\nname = \"x\"\ntype = \"latency\"\nthreshold = \"soon\"",
                "processors.ts.policies[0].threshold",
            ),
            (
                "[[policies]]\nname = \"x\"\ntype = \"probabilistic\"\nsampling_percentage = 120",
                "processors.ts.policies[0].sampling_percentage",
            ),
            (
                "[[policies]]\nname = \"x\"\ntype = \"rate_limiting\"\nspans_per_second = 0",
                "processors.ts.policies[0].spans_per_second",
            ),
            (
                "[[policies]]\nname = \"x\"\ntype = \"span_count\"\nmin_spans = 5\nmax_spans = 2",
                "processors.ts.policies[0].max_spans",
            ),
            (
                "[[policies]]\ntype = \"always_sample\"",
                "processors.ts.policies[0]",
            ),
            ("[[policies]]\nname = \"x\"", "processors.ts.policies[0]"),
            (
                "[[policies]]\nname = \"x\"\ntype = \"always_sample\"\n[[policies]]\nname = \"x\"\ntype = \"always_sample\"",
                "processors.ts.policies[1].name",
            ),
            (
                "[[policies]]\nname = \"x\"\ntype = \"and\"\nand_sub_policy = []",
                "processors.ts.policies[0].and_sub_policy",
            ),
            (
                "[[policies]]\nname = \"x\"\ntype = \"and\"\n[[policies.and_sub_policy]]\ntype = \"drop\"",
                "processors.ts.policies[0].and_sub_policy[0].type",
            ),
            (
                "[[policies]]\nname = \"x\"\ntype = \"drop\"\n[[policies.drop_sub_policy]]\ntype = \"boolean_attribute\"\nkey = \"k\"",
                "processors.ts.policies[0].drop_sub_policy[0]",
            ),
            ("policies = []", "processors.ts.policies"),
        ] {
            let e = error(toml);
            assert_eq!(e.path.to_string(), path, "{toml}: {e}");
        }
    }
}
