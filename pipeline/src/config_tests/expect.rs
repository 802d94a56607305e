//! The assertions of a config test: what must (or must not) come out of a component.

use std::fmt::Write as _;

use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::metric::Data;
use regex::Regex;
use serde::Deserialize;

use super::input::StatusName;
use crate::batch::Request;
use crate::config::{ConfigError, KeyPath};

/// One `[[tests.expect]]` table as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawExpect {
    /// The component whose output is checked: an id, or `receiver/ID`, `processor/ID`,
    /// `exporter/ID` (for an exporter, what reaches it).
    pub from: String,
    /// Only the items matching this are counted and checked.
    #[serde(default, rename = "where")]
    selector: Option<RawSelector>,
    count: Option<usize>,
    dropped: Option<bool>,
    #[serde(default)]
    attributes: toml::Table,
    #[serde(default)]
    resource: toml::Table,
    #[serde(default)]
    name: Option<toml::Value>,
    #[serde(default)]
    body: Option<toml::Value>,
    #[serde(default)]
    status: Option<StatusName>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSelector {
    #[serde(default)]
    name: Option<toml::Value>,
    #[serde(default)]
    attributes: toml::Table,
    #[serde(default)]
    resource: toml::Table,
}

/// A check on one value: `{ equals = V }` (or `V` alone), `{ matches = "regex" }`,
/// `{ absent = true }`, `{ present = true }`.
#[derive(Debug, Clone)]
pub(super) enum Matcher {
    Equals(toml::Value),
    Matches(Regex),
    Absent,
    Present,
}

const MATCHER_SHAPES: &str = "write a value, { equals = VALUE }, { matches = \"regex\" }, { absent = true } or { present = true }";

impl Matcher {
    fn parse(path: KeyPath, value: &toml::Value, errors: &mut Vec<ConfigError>) -> Option<Matcher> {
        let toml::Value::Table(table) = value else {
            if let toml::Value::Datetime(_) = value {
                errors.push(ConfigError::new(
                    path,
                    "a date is not an attribute value; write it as a string",
                ));
                return None;
            }
            return Some(Matcher::Equals(value.clone()));
        };
        let mut entries = table.iter();
        let (Some((key, argument)), None) = (entries.next(), entries.next()) else {
            errors.push(ConfigError::new(path, MATCHER_SHAPES));
            return None;
        };
        let at = path.key(key);
        match (key.as_str(), argument) {
            ("equals", toml::Value::Datetime(_)) => {
                errors.push(ConfigError::new(
                    at,
                    "a date is not an attribute value; write it as a string",
                ));
                None
            }
            ("equals", value) => Some(Matcher::Equals(value.clone())),
            ("matches", toml::Value::String(pattern)) => match Regex::new(pattern) {
                Ok(regex) => Some(Matcher::Matches(regex)),
                Err(e) => {
                    errors.push(ConfigError::new(
                        at,
                        format!("invalid regular expression: {e}"),
                    ));
                    None
                }
            },
            ("matches", _) => {
                errors.push(ConfigError::new(
                    at,
                    "must be a regular expression (a string)",
                ));
                None
            }
            ("absent", toml::Value::Boolean(true)) => Some(Matcher::Absent),
            ("present", toml::Value::Boolean(true)) => Some(Matcher::Present),
            ("absent" | "present", _) => {
                errors.push(ConfigError::new(at, "must be true"));
                None
            }
            _ => {
                errors.push(ConfigError::new(
                    at,
                    format!("unknown check; {MATCHER_SHAPES}"),
                ));
                None
            }
        }
    }

    /// Whether `value` passes; if not, what it is instead, said for a message.
    fn check(&self, value: Option<&AnyValue>) -> Result<(), String> {
        let actual = value.and_then(|v| v.value.as_ref());
        match (self, actual) {
            (Matcher::Absent, None) | (Matcher::Present, Some(_)) => Ok(()),
            (Matcher::Absent, Some(v)) => Err(format!("is {}, expected it absent", show(v))),
            (Matcher::Present, None) => Err("is absent, expected it present".to_string()),
            (Matcher::Equals(expected), None) => {
                Err(format!("is absent, expected {}", show_toml(expected)))
            }
            (Matcher::Equals(expected), Some(v)) if equals(expected, v) => Ok(()),
            (Matcher::Equals(expected), Some(v)) => {
                Err(format!("is {}, expected {}", show(v), show_toml(expected)))
            }
            (Matcher::Matches(regex), None) => {
                Err(format!("is absent, expected a match of /{regex}/"))
            }
            (Matcher::Matches(regex), Some(v)) if regex.is_match(&text(v)) => Ok(()),
            (Matcher::Matches(regex), Some(v)) => {
                Err(format!("is {}, which does not match /{regex}/", show(v)))
            }
        }
    }

    fn describe(&self) -> String {
        match self {
            Matcher::Equals(v) => format!("= {}", show_toml(v)),
            Matcher::Matches(regex) => format!("~ /{regex}/"),
            Matcher::Absent => "absent".to_string(),
            Matcher::Present => "present".to_string(),
        }
    }
}

fn equals(expected: &toml::Value, actual: &any_value::Value) -> bool {
    use any_value::Value as V;
    match (expected, actual) {
        (toml::Value::String(e), V::StringValue(a)) => e == a,
        (toml::Value::Boolean(e), V::BoolValue(a)) => e == a,
        (toml::Value::Integer(e), V::IntValue(a)) => e == a,
        // Integers and floats compare as numbers: `equals = 1` matches a double 1.0.
        (toml::Value::Integer(e), V::DoubleValue(a)) => (*e as f64) == *a,
        (toml::Value::Float(e), V::DoubleValue(a)) => e == a,
        (toml::Value::Float(e), V::IntValue(a)) => *e == (*a as f64),
        (toml::Value::Array(e), V::ArrayValue(a)) => {
            e.len() == a.values.len()
                && e.iter()
                    .zip(&a.values)
                    .all(|(e, a)| a.value.as_ref().is_some_and(|a| equals(e, a)))
        }
        _ => false,
    }
}

/// A value as a message shows it: strings quoted.
fn show(value: &any_value::Value) -> String {
    use any_value::Value as V;
    match value {
        V::StringValue(s) => format!("{s:?}"),
        V::BoolValue(b) => b.to_string(),
        V::IntValue(i) => i.to_string(),
        V::DoubleValue(d) => format!("{d:?}"),
        V::ArrayValue(a) => format!(
            "[{}]",
            a.values
                .iter()
                .map(|v| v.value.as_ref().map(show).unwrap_or_default())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        V::KvlistValue(list) => format!(
            "{{{}}}",
            list.values
                .iter()
                .map(|kv| format!(
                    "{} = {}",
                    kv.key,
                    kv.value
                        .as_ref()
                        .and_then(|v| v.value.as_ref())
                        .map(show)
                        .unwrap_or_default()
                ))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        V::BytesValue(b) => format!("0x{}", hex::encode(b)),
        V::StringValueStrindex(i) => format!("(string #{i} of the dictionary)"),
    }
}

fn show_toml(value: &toml::Value) -> String {
    match value {
        toml::Value::String(s) => format!("{s:?}"),
        toml::Value::Float(f) => format!("{f:?}"),
        toml::Value::Array(values) => format!(
            "[{}]",
            values.iter().map(show_toml).collect::<Vec<_>>().join(", ")
        ),
        other => other.to_string(),
    }
}

/// The text a regular expression is matched against: a string as it is, anything else as
/// written in a message.
fn text(value: &any_value::Value) -> String {
    match value {
        any_value::Value::StringValue(s) => s.clone(),
        other => show(other),
    }
}

/// Which items an expectation is about.
#[derive(Debug, Default)]
struct Selector {
    name: Option<Matcher>,
    attributes: Vec<(String, Matcher)>,
    resource: Vec<(String, Matcher)>,
}

impl Selector {
    fn selects(&self, item: &Item<'_>) -> bool {
        self.name
            .as_ref()
            .is_none_or(|m| m.check(Some(&string_value(&item.name))).is_ok())
            && self
                .attributes
                .iter()
                .all(|(key, m)| m.check(find(item.attributes, key)).is_ok())
            && self
                .resource
                .iter()
                .all(|(key, m)| m.check(find(item.resource, key)).is_ok())
    }

    fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(name) = &self.name {
            parts.push(format!("name {}", name.describe()));
        }
        for (key, m) in &self.attributes {
            parts.push(format!("{key} {}", m.describe()));
        }
        for (key, m) in &self.resource {
            parts.push(format!("resource {key} {}", m.describe()));
        }
        parts.join(", ")
    }
}

fn string_value(text: &str) -> AnyValue {
    AnyValue {
        value: Some(any_value::Value::StringValue(text.to_string())),
    }
}

fn find<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a AnyValue> {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
}

fn matchers(
    path: &KeyPath,
    table: &toml::Table,
    errors: &mut Vec<ConfigError>,
) -> Vec<(String, Matcher)> {
    table
        .iter()
        .filter_map(|(key, value)| {
            Matcher::parse(path.key(key), value, errors).map(|m| (key.clone(), m))
        })
        .collect()
}

/// How many items must come out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Count {
    Exactly(usize),
    /// `dropped = false`: at least one.
    Some,
}

/// A checked `[[tests.expect]]`.
#[derive(Debug)]
pub(super) struct Expectation {
    /// Where it is, for messages: `tests[0].expect[1]`.
    pub path: KeyPath,
    pub from: String,
    selector: Selector,
    count: Option<Count>,
    attributes: Vec<(String, Matcher)>,
    resource: Vec<(String, Matcher)>,
    name: Option<Matcher>,
    body: Option<Matcher>,
    status: Option<StatusName>,
}

/// At most this many failing items are described per expectation.
const SHOWN_FAILURES: usize = 5;

impl Expectation {
    pub(super) fn parse(
        path: KeyPath,
        raw: RawExpect,
        errors: &mut Vec<ConfigError>,
    ) -> Expectation {
        let selector = match &raw.selector {
            None => Selector::default(),
            Some(selector) => {
                let at = path.key("where");
                let selector = Selector {
                    name: selector
                        .name
                        .as_ref()
                        .and_then(|n| Matcher::parse(at.key("name"), n, errors)),
                    attributes: matchers(&at.key("attributes"), &selector.attributes, errors),
                    resource: matchers(&at.key("resource"), &selector.resource, errors),
                };
                if selector.name.is_none()
                    && selector.attributes.is_empty()
                    && selector.resource.is_empty()
                {
                    errors.push(ConfigError::new(
                        at,
                        "selects nothing; give name, attributes or resource",
                    ));
                }
                selector
            }
        };
        let count = match (raw.count, raw.dropped) {
            (Some(_), Some(_)) => {
                errors.push(ConfigError::new(
                    path.key("dropped"),
                    "give either count or dropped, not both",
                ));
                None
            }
            (Some(n), None) => Some(Count::Exactly(n)),
            (None, Some(true)) => Some(Count::Exactly(0)),
            (None, Some(false)) => Some(Count::Some),
            (None, None) => None,
        };
        let expectation = Expectation {
            attributes: matchers(&path.key("attributes"), &raw.attributes, errors),
            resource: matchers(&path.key("resource"), &raw.resource, errors),
            name: raw
                .name
                .as_ref()
                .and_then(|n| Matcher::parse(path.key("name"), n, errors)),
            body: raw
                .body
                .as_ref()
                .and_then(|b| Matcher::parse(path.key("body"), b, errors)),
            status: raw.status,
            path,
            from: raw.from,
            selector,
            count,
        };
        let has_item_checks = expectation.has_item_checks();
        if count == Some(Count::Exactly(0)) && has_item_checks {
            errors.push(ConfigError::new(
                expectation.path.clone(),
                "expects no items and checks their content; drop one of the two",
            ));
        }
        if count.is_none() && !has_item_checks {
            errors.push(ConfigError::new(
                expectation.path.clone(),
                "checks nothing; give count, dropped, attributes, resource, name, body or status",
            ));
        }
        expectation
    }

    fn has_item_checks(&self) -> bool {
        !self.attributes.is_empty()
            || !self.resource.is_empty()
            || self.name.is_some()
            || self.body.is_some()
            || self.status.is_some()
    }

    /// What the expectation is about, for messages: `exporter/tempo (where name = "x")`.
    fn subject(&self, tap: &str) -> String {
        let selector = self.selector.describe();
        if selector.is_empty() {
            format!("from {tap}")
        } else {
            format!("from {tap} where {selector}")
        }
    }

    /// Checks the items that came out of `tap`; returns what failed.
    pub(super) fn evaluate(&self, tap: &str, items: &[Item<'_>]) -> Vec<String> {
        let selected: Vec<&Item<'_>> = items.iter().filter(|i| self.selector.selects(i)).collect();
        let subject = self.subject(tap);
        let mut failures = Vec::new();
        match self.count {
            Some(Count::Exactly(0)) if !selected.is_empty() => failures.push(format!(
                "{subject}: expected nothing, got {}",
                listing(&selected)
            )),
            Some(Count::Exactly(n)) if selected.len() != n => failures.push(format!(
                "{subject}: expected {n} item{}, got {}",
                if n == 1 { "" } else { "s" },
                if selected.is_empty() {
                    "none".to_string()
                } else {
                    listing(&selected)
                }
            )),
            Some(Count::Some) if selected.is_empty() => {
                failures.push(format!("{subject}: expected items, got none"))
            }
            _ => {}
        }
        if !self.has_item_checks() {
            return failures;
        }
        if selected.is_empty() {
            if failures.is_empty() {
                failures.push(format!("{subject}: nothing came out to check"));
            }
            return failures;
        }
        let mut problems = Vec::new();
        for item in &selected {
            let label = item.label();
            if let Some(m) = &self.name
                && let Err(why) = m.check(Some(&string_value(&item.name)))
            {
                problems.push(format!("{label}: name {why}"));
            }
            for (key, m) in &self.attributes {
                if let Err(why) = m.check(find(item.attributes, key)) {
                    problems.push(format!("{label}: attribute {key:?} {why}"));
                }
            }
            for (key, m) in &self.resource {
                if let Err(why) = m.check(find(item.resource, key)) {
                    problems.push(format!("{label}: resource attribute {key:?} {why}"));
                }
            }
            if let Some(m) = &self.body {
                match item.body {
                    Some(body) => {
                        if let Err(why) = m.check(Some(body)) {
                            problems.push(format!("{label}: body {why}"));
                        }
                    }
                    None if item.kind == "log record" => {
                        if let Err(why) = m.check(None) {
                            problems.push(format!("{label}: body {why}"));
                        }
                    }
                    None => problems.push(format!("{label}: has no body to check")),
                }
            }
            if let Some(status) = self.status {
                match item.status {
                    Some(code) if code == status.code() => {}
                    Some(code) => problems.push(format!(
                        "{label}: status is {}, expected {}",
                        status_name(code),
                        status_name(status.code())
                    )),
                    None => problems.push(format!("{label}: has no status to check")),
                }
            }
        }
        let total = problems.len();
        for problem in problems.into_iter().take(SHOWN_FAILURES) {
            failures.push(format!("{subject}: {problem}"));
        }
        if total > SHOWN_FAILURES {
            failures.push(format!(
                "{subject}: ... and {} more",
                total - SHOWN_FAILURES
            ));
        }
        failures
    }
}

fn status_name(code: i32) -> &'static str {
    match code {
        1 => "ok",
        2 => "error",
        _ => "unset",
    }
}

/// Up to a few items by name, for messages: `2 items: span "a", span "b"`.
fn listing(items: &[&Item<'_>]) -> String {
    let mut text = format!(
        "{} item{}",
        items.len(),
        if items.len() == 1 { "" } else { "s" }
    );
    for (i, item) in items.iter().take(SHOWN_FAILURES).enumerate() {
        let _ = write!(text, "{}{}", if i == 0 { ": " } else { ", " }, item.label());
    }
    if items.len() > SHOWN_FAILURES {
        let _ = write!(text, ", ...");
    }
    text
}

/// One span, log record or metric data point, as expectations see it.
#[derive(Debug)]
pub(super) struct Item<'a> {
    /// `span`, `log record` or `data point`.
    kind: &'static str,
    /// A span's or metric's name; a log record's event name, else its body's text.
    name: String,
    attributes: &'a [KeyValue],
    resource: &'a [KeyValue],
    body: Option<&'a AnyValue>,
    /// A span's status code (unset when it has none).
    status: Option<i32>,
}

impl Item<'_> {
    fn label(&self) -> String {
        format!("{} {:?}", self.kind, self.name)
    }
}

/// Every item of `requests`, in order.
pub(super) fn items(requests: &[Request]) -> Vec<Item<'_>> {
    let mut items = Vec::new();
    for request in requests {
        match request {
            Request::Traces(traces) => {
                for rs in &traces.resource_spans {
                    let resource = rs
                        .resource
                        .as_ref()
                        .map(|r| &r.attributes[..])
                        .unwrap_or(&[]);
                    for span in rs.scope_spans.iter().flat_map(|s| &s.spans) {
                        items.push(Item {
                            kind: "span",
                            name: span.name.clone(),
                            attributes: &span.attributes,
                            resource,
                            body: None,
                            status: Some(span.status.as_ref().map_or(0, |s| s.code)),
                        });
                    }
                }
            }
            Request::Logs(logs) => {
                for rl in &logs.resource_logs {
                    let resource = rl
                        .resource
                        .as_ref()
                        .map(|r| &r.attributes[..])
                        .unwrap_or(&[]);
                    for record in rl.scope_logs.iter().flat_map(|s| &s.log_records) {
                        let name = if record.event_name.is_empty() {
                            record
                                .body
                                .as_ref()
                                .and_then(|b| b.value.as_ref())
                                .map(text)
                                .unwrap_or_default()
                        } else {
                            record.event_name.clone()
                        };
                        items.push(Item {
                            kind: "log record",
                            name,
                            attributes: &record.attributes,
                            resource,
                            body: record.body.as_ref(),
                            status: None,
                        });
                    }
                }
            }
            Request::Metrics(metrics) => {
                for rm in &metrics.resource_metrics {
                    let resource = rm
                        .resource
                        .as_ref()
                        .map(|r| &r.attributes[..])
                        .unwrap_or(&[]);
                    for metric in rm.scope_metrics.iter().flat_map(|s| &s.metrics) {
                        let points: Vec<&[KeyValue]> = match &metric.data {
                            Some(Data::Gauge(g)) => {
                                g.data_points.iter().map(|p| &p.attributes[..]).collect()
                            }
                            Some(Data::Sum(s)) => {
                                s.data_points.iter().map(|p| &p.attributes[..]).collect()
                            }
                            Some(Data::Histogram(h)) => {
                                h.data_points.iter().map(|p| &p.attributes[..]).collect()
                            }
                            Some(Data::ExponentialHistogram(h)) => {
                                h.data_points.iter().map(|p| &p.attributes[..]).collect()
                            }
                            Some(Data::Summary(s)) => {
                                s.data_points.iter().map(|p| &p.attributes[..]).collect()
                            }
                            None => Vec::new(),
                        };
                        for attributes in points {
                            items.push(Item {
                                kind: "data point of",
                                name: metric.name.clone(),
                                attributes,
                                resource,
                                body: None,
                                status: None,
                            });
                        }
                    }
                }
            }
        }
    }
    items
}
