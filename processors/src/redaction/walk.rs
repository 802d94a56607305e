//! Applying a [`Redactor`]'s rules to every attribute and string of a decoded request, and
//! adding the summary attributes to the items it changed.
//!
//! The unit of the summary is the item: a span (with its events, links and status message), a
//! log record (with its body) or a metric data point (with its exemplars). Resource attributes
//! are processed by the same rules and get a summary of their own, as in the Collector.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::metric::Data;
use opentelemetry_proto::tonic::resource::v1::Resource;
use sluice_pipeline::Request;

use super::scanner::{Hit, Scanner};
use super::{Action, Redactor, Summary};

/// What redacting one request changed, for the internal metrics.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Tally {
    /// Secrets masked, hashed or dropped an attribute for, by rule (in the order of
    /// [`Redactor::rule_names`]).
    pub masked: Vec<u64>,
    /// Attributes removed because their key is not allowed.
    pub not_allowed: u64,
    /// Attributes (and key-value list entries) removed because their key matched `blocked_keys`.
    pub blocked_key: u64,
    /// Attributes removed for a secret in their value (`action = "drop_attribute"`).
    pub dropped_for_value: u64,
}

/// Summary attribute: how many attributes of the item had a secret masked (or hashed, or were
/// dropped for one).
pub const MASKED_COUNT: &str = "redaction.masked.count";
/// Summary attribute (debug): the keys counted by [`MASKED_COUNT`], sorted, comma-separated.
pub const MASKED_KEYS: &str = "redaction.masked.keys";
/// Summary attribute: how many attributes of the item were removed for their key.
pub const REDACTED_COUNT: &str = "redaction.redacted.count";
/// Summary attribute (debug): the keys counted by [`REDACTED_COUNT`], sorted, comma-separated.
pub const REDACTED_KEYS: &str = "redaction.redacted.keys";

/// The key a log record's body is reported under.
const BODY: &str = "body";

/// What happened to one value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Unchanged,
    /// A secret in it was masked or hashed, or a blocked key removed from a key-value list.
    Changed,
    /// It holds a secret and `action = "drop_attribute"`.
    Drop,
}

/// What was changed in one item, for its summary attributes.
#[derive(Default)]
struct Report {
    masked: i64,
    redacted: i64,
    /// Only filled with `summary = "debug"`.
    masked_keys: Vec<String>,
    redacted_keys: Vec<String>,
}

/// What the key rules say about an attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyRule {
    /// In `ignored_keys`: kept and not scanned.
    Ignored,
    /// Not allowed: removed.
    NotAllowed,
    /// Matches `blocked_keys`: removed.
    Blocked,
    /// Kept, and its value scanned.
    Scan,
}

/// The most keys whose rule one pass remembers. Items of a request mostly share a few dozen
/// keys; the bound keeps a request of endless distinct keys (crafted to collide in the fast,
/// unkeyed hash) from costing more than computing each rule afresh would.
const KEY_CACHE_CAPACITY: usize = 256;

/// One request's redaction: the rules, scratch space reused for every string, the tally.
struct Pass<'a> {
    redactor: &'a Redactor,
    debug: bool,
    hits: Vec<Hit>,
    /// The rule of each key seen so far, when there is a rule to compute (the `allowed_keys`
    /// lookup and the `blocked_keys` set cost far more than finding a key here again).
    key_rules: HashMap<Box<str>, KeyRule, BuildHasherDefault<KeyHasher>>,
    tally: Tally,
}

/// The FxHash mix (as rustc's `FxHasher`): a multiply and a rotate per 8 bytes, several times
/// faster than SipHash on keys of 20 to 40 bytes. Not resistant to crafted collisions, hence
/// [`KEY_CACHE_CAPACITY`].
#[derive(Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
    }

    fn write_u8(&mut self, byte: u8) {
        self.add(u64::from(byte));
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

impl KeyHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

pub(super) fn redact_request(redactor: &Redactor, request: &mut Request) -> Tally {
    let mut pass = Pass {
        redactor,
        debug: redactor.summary == Summary::Debug,
        hits: Vec::new(),
        key_rules: HashMap::default(),
        tally: Tally {
            masked: vec![0; redactor.rule_names().len()],
            ..Tally::default()
        },
    };
    match request {
        Request::Traces(request) => {
            for resource_spans in &mut request.resource_spans {
                pass.resource(resource_spans.resource.as_mut());
                for span in resource_spans
                    .scope_spans
                    .iter_mut()
                    .flat_map(|s| &mut s.spans)
                {
                    let mut report = Report::default();
                    pass.attributes(&mut span.attributes, &mut report);
                    for event in &mut span.events {
                        pass.attributes(&mut event.attributes, &mut report);
                    }
                    for link in &mut span.links {
                        pass.attributes(&mut link.attributes, &mut report);
                    }
                    if let Some(status) = &mut span.status {
                        match pass.string(&mut status.message) {
                            Outcome::Unchanged => {}
                            Outcome::Changed => report.masked("status.message", pass.debug),
                            Outcome::Drop => {
                                status.message.clear();
                                pass.tally.dropped_for_value += 1;
                                report.masked("status.message", pass.debug);
                            }
                        }
                    }
                    pass.summarize(&mut span.attributes, report);
                }
            }
        }
        Request::Logs(request) => {
            for resource_logs in &mut request.resource_logs {
                pass.resource(resource_logs.resource.as_mut());
                for record in resource_logs
                    .scope_logs
                    .iter_mut()
                    .flat_map(|s| &mut s.log_records)
                {
                    let mut report = Report::default();
                    pass.attributes(&mut record.attributes, &mut report);
                    match pass.value(record.body.as_mut()) {
                        Outcome::Unchanged => {}
                        Outcome::Changed => report.masked(BODY, pass.debug),
                        Outcome::Drop => {
                            record.body = None;
                            pass.tally.dropped_for_value += 1;
                            report.masked(BODY, pass.debug);
                        }
                    }
                    pass.summarize(&mut record.attributes, report);
                }
            }
        }
        Request::Metrics(request) => {
            for resource_metrics in &mut request.resource_metrics {
                pass.resource(resource_metrics.resource.as_mut());
                for metric in resource_metrics
                    .scope_metrics
                    .iter_mut()
                    .flat_map(|s| &mut s.metrics)
                {
                    pass.metric_data(metric.data.as_mut());
                }
            }
        }
    }
    pass.tally
}

impl Report {
    fn masked(&mut self, key: &str, debug: bool) {
        self.masked += 1;
        if debug {
            self.masked_keys.push(key.to_string());
        }
    }

    fn redacted(&mut self, key: &str, debug: bool) {
        self.redacted += 1;
        if debug {
            self.redacted_keys.push(key.to_string());
        }
    }
}

impl Pass<'_> {
    fn resource(&mut self, resource: Option<&mut Resource>) {
        if let Some(resource) = resource {
            let mut report = Report::default();
            self.attributes(&mut resource.attributes, &mut report);
            self.summarize(&mut resource.attributes, report);
        }
    }

    fn metric_data(&mut self, data: Option<&mut Data>) {
        // Each kind of data point has its own type with the same two fields.
        macro_rules! points {
            ($points:expr) => {
                for point in $points {
                    let mut report = Report::default();
                    self.attributes(&mut point.attributes, &mut report);
                    for exemplar in &mut point.exemplars {
                        self.attributes(&mut exemplar.filtered_attributes, &mut report);
                    }
                    self.summarize(&mut point.attributes, report);
                }
            };
        }
        match data {
            Some(Data::Gauge(g)) => points!(&mut g.data_points),
            Some(Data::Sum(s)) => points!(&mut s.data_points),
            Some(Data::Histogram(h)) => points!(&mut h.data_points),
            Some(Data::ExponentialHistogram(h)) => points!(&mut h.data_points),
            Some(Data::Summary(s)) => {
                for point in &mut s.data_points {
                    let mut report = Report::default();
                    self.attributes(&mut point.attributes, &mut report);
                    self.summarize(&mut point.attributes, report);
                }
            }
            None => {}
        }
    }

    /// What the key rules say about `key`, from the cache when it was seen before.
    fn key_rule(&mut self, key: &str) -> KeyRule {
        let redactor = self.redactor;
        if redactor.allow_all_keys
            && redactor.ignored_keys.is_empty()
            && redactor.blocked_keys.is_none()
        {
            return KeyRule::Scan;
        }
        if let Some(&rule) = self.key_rules.get(key) {
            return rule;
        }
        let rule = if redactor.ignored_keys.contains(key) {
            KeyRule::Ignored
        } else if !redactor.allow_all_keys && !redactor.allowed_keys.contains(key) {
            KeyRule::NotAllowed
        } else if redactor
            .blocked_keys
            .as_ref()
            .is_some_and(|blocked| blocked.is_match(key))
        {
            KeyRule::Blocked
        } else {
            KeyRule::Scan
        };
        if self.key_rules.len() < KEY_CACHE_CAPACITY {
            self.key_rules.insert(key.into(), rule);
        }
        rule
    }

    /// Applies the key rules, then the value rules, to each attribute.
    fn attributes(&mut self, attributes: &mut Vec<KeyValue>, report: &mut Report) {
        attributes.retain_mut(|attribute| {
            let key = attribute.key.as_str();
            match self.key_rule(key) {
                KeyRule::Ignored => return true,
                KeyRule::NotAllowed => {
                    self.tally.not_allowed += 1;
                    report.redacted(key, self.debug);
                    return false;
                }
                KeyRule::Blocked => {
                    self.tally.blocked_key += 1;
                    report.redacted(key, self.debug);
                    return false;
                }
                KeyRule::Scan => {}
            }
            match self.value(attribute.value.as_mut()) {
                Outcome::Unchanged => true,
                Outcome::Changed => {
                    report.masked(key, self.debug);
                    true
                }
                Outcome::Drop => {
                    self.tally.dropped_for_value += 1;
                    report.masked(key, self.debug);
                    false
                }
            }
        });
    }

    /// Applies the value rules to the strings in `value`, at any depth. Entries of key-value
    /// lists whose key matches `blocked_keys` are removed.
    fn value(&mut self, value: Option<&mut AnyValue>) -> Outcome {
        let Some(value) = value.and_then(|v| v.value.as_mut()) else {
            return Outcome::Unchanged;
        };
        match value {
            Value::StringValue(text) => self.string(text),
            Value::ArrayValue(array) => {
                let mut outcome = Outcome::Unchanged;
                for element in &mut array.values {
                    match self.value(Some(element)) {
                        Outcome::Drop => return Outcome::Drop,
                        Outcome::Changed => outcome = Outcome::Changed,
                        Outcome::Unchanged => {}
                    }
                }
                outcome
            }
            Value::KvlistValue(list) => {
                let mut outcome = Outcome::Unchanged;
                if let Some(blocked) = &self.redactor.blocked_keys {
                    let before = list.values.len();
                    list.values.retain(|entry| !blocked.is_match(&entry.key));
                    let removed = before - list.values.len();
                    if removed > 0 {
                        self.tally.blocked_key += removed as u64;
                        outcome = Outcome::Changed;
                    }
                }
                for entry in &mut list.values {
                    match self.value(entry.value.as_mut()) {
                        Outcome::Drop => return Outcome::Drop,
                        Outcome::Changed => outcome = Outcome::Changed,
                        Outcome::Unchanged => {}
                    }
                }
                outcome
            }
            Value::BoolValue(_) | Value::IntValue(_) | Value::DoubleValue(_) => Outcome::Unchanged,
            Value::BytesValue(_) | Value::StringValueStrindex(_) => Outcome::Unchanged,
        }
    }

    /// Applies the value rules to one string.
    fn string(&mut self, text: &mut String) -> Outcome {
        let redactor = self.redactor;
        if !redactor.scanner.scan(text, &mut self.hits) {
            return Outcome::Unchanged;
        }
        for hit in &self.hits {
            self.tally.masked[hit.rule] += 1;
        }
        if redactor.action == Action::DropAttribute {
            return Outcome::Drop;
        }
        *text = Scanner::replace(text, &self.hits, &redactor.replacement);
        Outcome::Changed
    }

    /// Adds the summary attributes of `report` to `attributes` (replacing ones already there).
    fn summarize(&self, attributes: &mut Vec<KeyValue>, mut report: Report) {
        let summary = self.redactor.summary;
        if summary == Summary::Silent || (report.masked == 0 && report.redacted == 0) {
            return;
        }
        let debug = summary == Summary::Debug;
        if report.masked > 0 {
            set(attributes, MASKED_COUNT, Value::IntValue(report.masked));
            if debug {
                set(
                    attributes,
                    MASKED_KEYS,
                    Value::StringValue(key_list(&mut report.masked_keys)),
                );
            }
        }
        if report.redacted > 0 {
            set(attributes, REDACTED_COUNT, Value::IntValue(report.redacted));
            if debug {
                set(
                    attributes,
                    REDACTED_KEYS,
                    Value::StringValue(key_list(&mut report.redacted_keys)),
                );
            }
        }
    }
}

/// The keys sorted, without repeats, comma-separated (as the Collector writes them).
fn key_list(keys: &mut Vec<String>) -> String {
    keys.sort_unstable();
    keys.dedup();
    keys.join(",")
}

/// Sets attribute `key` to `value`, replacing an attribute of that key if there is one.
fn set(attributes: &mut Vec<KeyValue>, key: &str, value: Value) {
    let value = Some(AnyValue { value: Some(value) });
    match attributes.iter_mut().find(|a| a.key == key) {
        Some(attribute) => attribute.value = value,
        None => attributes.push(KeyValue {
            key: key.to_string(),
            value,
            ..KeyValue::default()
        }),
    }
}
