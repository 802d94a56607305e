//! The `attributes` processor: inserts, updates, deletes, hashes, extracts, converts and
//! renames attributes of spans, log records and metric data points, in the shape of the
//! OpenTelemetry Collector's attributes processor (`[[processors.NAME.actions]]` with `key`,
//! `action`, `value`, ...). `include` and `exclude` decide which items the actions apply to.

use std::collections::HashSet;
use std::sync::Arc;

use async_trait::async_trait;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::metric::Data;
use prometheus::IntCounter;
use regex::{Regex, RegexSet};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use sluice_pipeline::config::KeyPath;
use sluice_pipeline::{
    Batch, ComponentSettings, ConfigError, ConsumeError, Consumer, Processor, ProcessorContext,
    ProcessorFactory, Request, Running, RunningProcessor, Signal, StartError,
};

/// Configuration of the `attributes` processor (`[processors.attributes]`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttributesConfig {
    /// The actions, applied in order to the attributes of each item
    /// (`[[processors.NAME.actions]]`). At least one.
    pub actions: Vec<ActionConfig>,
    /// When set, the actions apply only to items matching it.
    #[serde(default)]
    pub include: Option<MatchConfig>,
    /// When set, the actions skip items matching it (also when they match `include`).
    #[serde(default)]
    pub exclude: Option<MatchConfig>,
}

/// One action (`[[processors.NAME.actions]]`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionConfig {
    /// The attribute the action is about (for `delete` and `hash`, `pattern` may be given
    /// instead).
    #[serde(default)]
    pub key: Option<String>,
    /// `insert`, `update`, `upsert`, `delete`, `hash`, `extract`, `convert` or `rename`.
    pub action: ActionKind,
    /// The value `insert`, `update` and `upsert` set: a string, integer, float or boolean.
    #[serde(default)]
    pub value: Option<Literal>,
    /// Take the value of `insert`, `update` and `upsert` from this attribute of the same item.
    #[serde(default)]
    pub from_attribute: Option<String>,
    /// Take the value of `insert`, `update` and `upsert` from this attribute of the item's
    /// resource.
    #[serde(default)]
    pub from_resource_attribute: Option<String>,
    /// A regular expression: on keys for `delete` and `hash` (every matching attribute), on
    /// the value of `key` for `extract` (its named groups become attributes).
    #[serde(default)]
    pub pattern: Option<String>,
    /// The type `convert` converts to: `int`, `double`, `string` or `bool`.
    #[serde(default)]
    pub converted_type: Option<ConvertedType>,
    /// The key `rename` gives the attribute.
    #[serde(default)]
    pub new_key: Option<String>,
}

/// What an action does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionKind {
    /// Adds the attribute when it is absent.
    Insert,
    /// Changes the attribute when it is present.
    Update,
    /// Adds or changes the attribute.
    Upsert,
    /// Removes the attribute `key`, or every attribute whose key matches `pattern`.
    Delete,
    /// Replaces the value with its SHA-256 in hex, as the Collector does.
    Hash,
    /// Adds the named groups of `pattern` matched on the value of `key` as attributes.
    Extract,
    /// Converts the value to `converted_type`.
    Convert,
    /// Moves the value of `key` to `new_key`.
    Rename,
}

impl ActionKind {
    /// The name in config and metric labels.
    pub fn name(self) -> &'static str {
        match self {
            ActionKind::Insert => "insert",
            ActionKind::Update => "update",
            ActionKind::Upsert => "upsert",
            ActionKind::Delete => "delete",
            ActionKind::Hash => "hash",
            ActionKind::Extract => "extract",
            ActionKind::Convert => "convert",
            ActionKind::Rename => "rename",
        }
    }
}

/// The types `convert` converts to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConvertedType {
    Int,
    Double,
    String,
    Bool,
}

/// A literal value in config.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum Literal {
    Bool(bool),
    Int(i64),
    Double(f64),
    String(String),
}

impl Literal {
    fn to_value(&self) -> Value {
        match self {
            Literal::Bool(b) => Value::BoolValue(*b),
            Literal::Int(i) => Value::IntValue(*i),
            Literal::Double(d) => Value::DoubleValue(*d),
            Literal::String(s) => Value::StringValue(s.clone()),
        }
    }
}

/// Which items `include` or `exclude` select. Every property given must match (a list
/// property matches when any of its entries does; `attributes` and `resources` match when all
/// of their entries do).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatchConfig {
    /// How names and values are compared: `strict` (equal) or `regexp` (the regular expression
    /// matches somewhere in the text; anchor it with `^...$` for a whole match).
    #[serde(default)]
    pub match_type: MatchType,
    /// The item's service: the resource attribute `service.name`.
    #[serde(default)]
    pub services: Vec<String>,
    /// Span names (traces only).
    #[serde(default)]
    pub span_names: Vec<String>,
    /// Attributes the item must have, with the given value if one is given.
    #[serde(default)]
    pub attributes: Vec<AttributeMatch>,
    /// Resource attributes the item's resource must have, with the given value if given.
    #[serde(default)]
    pub resources: Vec<AttributeMatch>,
}

/// How a filter compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MatchType {
    #[default]
    Strict,
    Regexp,
}

/// One attribute a filter asks for.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttributeMatch {
    /// The attribute's key.
    pub key: String,
    /// Its value (with `regexp`, a regular expression matched on the value as text). Without
    /// it, having the attribute is enough.
    #[serde(default)]
    pub value: Option<Literal>,
}

// ---- Compiled form --------------------------------------------------------------------------

/// Which attributes an action is about.
#[derive(Debug)]
enum Keys {
    Key(String),
    Pattern(Regex),
    /// Either.
    Both(String, Regex),
}

impl Keys {
    fn matches(&self, key: &str) -> bool {
        match self {
            Keys::Key(k) => k == key,
            Keys::Pattern(p) => p.is_match(key),
            Keys::Both(k, p) => k == key || p.is_match(key),
        }
    }
}

#[derive(Debug)]
enum Source {
    Literal(Value),
    Attribute(String),
    Resource(String),
}

#[derive(Debug)]
enum Op {
    Set {
        key: String,
        source: Source,
        insert: bool,
        update: bool,
    },
    Delete(Keys),
    Hash(Keys),
    Extract {
        key: String,
        pattern: Regex,
        /// The named groups: index and name, looked up once at build time.
        groups: Vec<(usize, String)>,
    },
    Convert {
        key: String,
        to: ConvertedType,
    },
    Rename {
        key: String,
        new_key: String,
    },
}

/// A compiled name filter.
#[derive(Debug)]
enum Names {
    Strict(HashSet<String>),
    Regexp(RegexSet),
}

impl Names {
    fn matches(&self, name: &str) -> bool {
        match self {
            Names::Strict(names) => names.contains(name),
            Names::Regexp(set) => set.is_match(name),
        }
    }
}

#[derive(Debug)]
enum ValueMatch {
    Any,
    Equal(Value),
    Regexp(Regex),
}

#[derive(Debug)]
struct Filter {
    services: Option<Names>,
    span_names: Option<Names>,
    attributes: Vec<(String, ValueMatch)>,
    resources: Vec<(String, ValueMatch)>,
}

/// What an item looks like to a filter.
struct Item<'a> {
    span_name: Option<&'a str>,
    attributes: &'a [KeyValue],
    resource: &'a [KeyValue],
}

impl Filter {
    fn matches(&self, item: &Item) -> bool {
        if let Some(services) = &self.services {
            match get(item.resource, "service.name") {
                Some(Value::StringValue(service)) if services.matches(service) => {}
                _ => return false,
            }
        }
        if let Some(span_names) = &self.span_names
            && !item.span_name.is_some_and(|name| span_names.matches(name))
        {
            return false;
        }
        let all = |wanted: &[(String, ValueMatch)], attributes: &[KeyValue]| {
            wanted
                .iter()
                .all(|(key, value)| match get(attributes, key) {
                    None => false,
                    Some(actual) => match value {
                        ValueMatch::Any => true,
                        ValueMatch::Equal(expected) => actual == expected,
                        ValueMatch::Regexp(regex) => {
                            as_text(actual).is_some_and(|text| regex.is_match(&text))
                        }
                    },
                })
        };
        all(&self.attributes, item.attributes) && all(&self.resources, item.resource)
    }
}

/// The compiled actions and filters of one `attributes` processor.
#[derive(Debug)]
pub struct Attributes {
    ops: Vec<Op>,
    include: Option<Filter>,
    exclude: Option<Filter>,
}

/// How many attributes each action changed, in the order of the configured actions.
pub type Changes = Vec<u64>;

impl AttributesConfig {
    /// Parses and checks the `[processors.<id>]` table, compiling every pattern.
    pub fn from_settings(settings: &ComponentSettings) -> Result<Attributes, ConfigError> {
        let config: AttributesConfig = settings.parse()?;
        let path = settings.path();
        if config.actions.is_empty() {
            return Err(settings.error("actions", "give at least one action"));
        }
        let ops = config
            .actions
            .iter()
            .enumerate()
            .map(|(i, action)| compile_action(&path.key("actions").index(i), action))
            .collect::<Result<_, _>>()?;
        let filter = |name: &str, config: &Option<MatchConfig>| {
            config
                .as_ref()
                .map(|c| compile_filter(&path.key(name), c))
                .transpose()
        };
        Ok(Attributes {
            ops,
            include: filter("include", &config.include)?,
            exclude: filter("exclude", &config.exclude)?,
        })
    }
}

fn compile_regex(path: &KeyPath, source: &str) -> Result<Regex, ConfigError> {
    Regex::new(source)
        .map_err(|e| ConfigError::new(path.clone(), format!("invalid regular expression: {e}")))
}

fn compile_action(path: &KeyPath, action: &ActionConfig) -> Result<Op, ConfigError> {
    let kind = action.action;
    let name = kind.name();
    let unused = |field: &str, given: bool| {
        if given {
            Err(ConfigError::new(
                path.key(field),
                format!("is not used by action = \"{name}\""),
            ))
        } else {
            Ok(())
        }
    };
    let required = |field: &str, value: &Option<String>| {
        value.clone().ok_or_else(|| {
            ConfigError::new(
                path.key(field),
                format!("action = \"{name}\" needs `{field}`"),
            )
        })
    };
    let sources = [
        ("value", action.value.is_some()),
        ("from_attribute", action.from_attribute.is_some()),
        (
            "from_resource_attribute",
            action.from_resource_attribute.is_some(),
        ),
    ];
    let is_set = matches!(
        kind,
        ActionKind::Insert | ActionKind::Update | ActionKind::Upsert
    );
    if !is_set {
        for (field, given) in sources {
            unused(field, given)?;
        }
    }
    if !matches!(
        kind,
        ActionKind::Delete | ActionKind::Hash | ActionKind::Extract
    ) {
        unused("pattern", action.pattern.is_some())?;
    }
    if kind != ActionKind::Convert {
        unused("converted_type", action.converted_type.is_some())?;
    }
    if kind != ActionKind::Rename {
        unused("new_key", action.new_key.is_some())?;
    }
    Ok(match kind {
        ActionKind::Insert | ActionKind::Update | ActionKind::Upsert => {
            let key = required("key", &action.key)?;
            let given: Vec<&str> = sources
                .iter()
                .filter(|(_, given)| *given)
                .map(|(field, _)| *field)
                .collect();
            let source = match (
                &action.value,
                &action.from_attribute,
                &action.from_resource_attribute,
            ) {
                _ if given.len() > 1 => {
                    return Err(ConfigError::new(
                        path.key(given[1]),
                        format!("give only one of {}", given.join(", ")),
                    ));
                }
                (Some(value), _, _) => Source::Literal(value.to_value()),
                (_, Some(attribute), _) => Source::Attribute(attribute.clone()),
                (_, _, Some(attribute)) => Source::Resource(attribute.clone()),
                (None, None, None) => {
                    return Err(ConfigError::new(
                        path.clone(),
                        format!(
                            "action = \"{name}\" needs one of `value`, `from_attribute`, \
                             `from_resource_attribute`"
                        ),
                    ));
                }
            };
            Op::Set {
                key,
                source,
                insert: kind != ActionKind::Update,
                update: kind != ActionKind::Insert,
            }
        }
        ActionKind::Delete | ActionKind::Hash => {
            let pattern = action
                .pattern
                .as_deref()
                .map(|p| compile_regex(&path.key("pattern"), p))
                .transpose()?;
            let keys = match (action.key.clone(), pattern) {
                (Some(key), None) => Keys::Key(key),
                (None, Some(pattern)) => Keys::Pattern(pattern),
                (Some(key), Some(pattern)) => Keys::Both(key, pattern),
                (None, None) => {
                    return Err(ConfigError::new(
                        path.clone(),
                        format!("action = \"{name}\" needs `key` or `pattern`"),
                    ));
                }
            };
            if kind == ActionKind::Delete {
                Op::Delete(keys)
            } else {
                Op::Hash(keys)
            }
        }
        ActionKind::Extract => {
            let key = required("key", &action.key)?;
            let source = required("pattern", &action.pattern)?;
            let pattern = compile_regex(&path.key("pattern"), &source)?;
            if pattern.capture_names().flatten().next().is_none() {
                return Err(ConfigError::new(
                    path.key("pattern"),
                    "has no named group: write `(?P<new_key>...)` for each attribute to extract",
                ));
            }
            let groups = pattern
                .capture_names()
                .enumerate()
                .filter_map(|(index, name)| Some((index, name?.to_string())))
                .collect();
            Op::Extract {
                key,
                pattern,
                groups,
            }
        }
        ActionKind::Convert => Op::Convert {
            key: required("key", &action.key)?,
            to: action.converted_type.ok_or_else(|| {
                ConfigError::new(
                    path.key("converted_type"),
                    "action = \"convert\" needs `converted_type`: int, double, string or bool",
                )
            })?,
        },
        ActionKind::Rename => Op::Rename {
            key: required("key", &action.key)?,
            new_key: required("new_key", &action.new_key)?,
        },
    })
}

fn compile_filter(path: &KeyPath, config: &MatchConfig) -> Result<Filter, ConfigError> {
    let names = |field: &str, list: &[String]| -> Result<Option<Names>, ConfigError> {
        if list.is_empty() {
            return Ok(None);
        }
        Ok(Some(match config.match_type {
            MatchType::Strict => Names::Strict(list.iter().cloned().collect()),
            MatchType::Regexp => {
                for (i, source) in list.iter().enumerate() {
                    compile_regex(&path.key(field).index(i), source)?;
                }
                Names::Regexp(
                    RegexSet::new(list)
                        .map_err(|e| ConfigError::new(path.key(field), e.to_string()))?,
                )
            }
        }))
    };
    let attributes =
        |field: &str, list: &[AttributeMatch]| -> Result<Vec<(String, ValueMatch)>, ConfigError> {
            list.iter()
                .enumerate()
                .map(|(i, wanted)| {
                    let value = match (&wanted.value, config.match_type) {
                        (None, _) => ValueMatch::Any,
                        (Some(value), MatchType::Strict) => ValueMatch::Equal(value.to_value()),
                        (Some(Literal::String(source)), MatchType::Regexp) => ValueMatch::Regexp(
                            compile_regex(&path.key(field).index(i).key("value"), source)?,
                        ),
                        (Some(_), MatchType::Regexp) => {
                            return Err(ConfigError::new(
                                path.key(field).index(i).key("value"),
                                "with match_type = \"regexp\" the value is a regular expression \
                             (a string)",
                            ));
                        }
                    };
                    Ok((wanted.key.clone(), value))
                })
                .collect()
        };
    if config.services.is_empty()
        && config.span_names.is_empty()
        && config.attributes.is_empty()
        && config.resources.is_empty()
    {
        return Err(ConfigError::new(
            path.clone(),
            "give at least one of services, span_names, attributes, resources",
        ));
    }
    Ok(Filter {
        services: names("services", &config.services)?,
        span_names: names("span_names", &config.span_names)?,
        attributes: attributes("attributes", &config.attributes)?,
        resources: attributes("resources", &config.resources)?,
    })
}

// ---- Applying -------------------------------------------------------------------------------

fn get<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a Value> {
    attributes
        .iter()
        .find(|a| a.key == key)
        .and_then(|a| a.value.as_ref()?.value.as_ref())
}

/// Sets `key` to `value`, replacing the attribute of that key if there is one.
fn upsert(attributes: &mut Vec<KeyValue>, key: &str, value: Value) {
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

/// A scalar value as text (for `regexp` filters and conversions to string).
fn as_text(value: &Value) -> Option<String> {
    match value {
        Value::StringValue(s) => Some(s.clone()),
        Value::IntValue(i) => Some(i.to_string()),
        Value::DoubleValue(d) => Some(d.to_string()),
        Value::BoolValue(b) => Some(b.to_string()),
        _ => None,
    }
}

/// SHA-256 of the value's bytes, as the Collector's attributes processor: a string's UTF-8,
/// an integer's or double's 8 little-endian bytes, a boolean's one byte. Other values (arrays,
/// maps) are left as they are.
fn sha256(value: &Value) -> Option<[u8; 32]> {
    let digest = match value {
        Value::StringValue(s) => Sha256::digest(s.as_bytes()),
        Value::BytesValue(b) => Sha256::digest(b),
        Value::BoolValue(b) => Sha256::digest([u8::from(*b)]),
        Value::IntValue(i) => Sha256::digest(i.to_le_bytes()),
        Value::DoubleValue(d) => Sha256::digest(d.to_bits().to_le_bytes()),
        _ => return None,
    };
    Some(digest.into())
}

/// Replaces `value` with the lowercase hex of `digest`, reusing a string value's buffer.
/// (`hex::encode` collects `char`s one by one and cost as much as a one-block SHA-256.)
fn set_hex(value: &mut Value, digest: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = match std::mem::replace(value, Value::BoolValue(false)) {
        Value::StringValue(mut text) => {
            text.clear();
            text
        }
        _ => String::with_capacity(digest.len() * 2),
    };
    for &byte in digest {
        text.push(char::from(DIGITS[usize::from(byte >> 4)]));
        text.push(char::from(DIGITS[usize::from(byte & 0xf)]));
    }
    *value = Value::StringValue(text);
}

/// `value` converted to `to`, or `None` when it cannot be (the attribute is then left alone).
fn convert(value: &Value, to: ConvertedType) -> Option<Value> {
    Some(match (to, value) {
        (ConvertedType::Int, Value::IntValue(i)) => Value::IntValue(*i),
        (ConvertedType::Int, Value::StringValue(s)) => Value::IntValue(s.trim().parse().ok()?),
        (ConvertedType::Int, Value::DoubleValue(d)) => {
            // `as` saturates; out of range or NaN is not a conversion.
            if !d.is_finite() || d.abs() >= 9.223_372_036_854_776e18 {
                return None;
            }
            Value::IntValue(d.trunc() as i64)
        }
        (ConvertedType::Int, Value::BoolValue(b)) => Value::IntValue(i64::from(*b)),
        (ConvertedType::Double, Value::DoubleValue(d)) => Value::DoubleValue(*d),
        (ConvertedType::Double, Value::StringValue(s)) => {
            Value::DoubleValue(s.trim().parse().ok()?)
        }
        (ConvertedType::Double, Value::IntValue(i)) => Value::DoubleValue(*i as f64),
        (ConvertedType::Double, Value::BoolValue(b)) => {
            Value::DoubleValue(if *b { 1.0 } else { 0.0 })
        }
        (ConvertedType::String, v) => Value::StringValue(as_text(v)?),
        (ConvertedType::Bool, Value::BoolValue(b)) => Value::BoolValue(*b),
        (ConvertedType::Bool, Value::StringValue(s)) => Value::BoolValue(parse_bool(s.trim())?),
        (ConvertedType::Bool, Value::IntValue(i)) => Value::BoolValue(*i != 0),
        (ConvertedType::Bool, Value::DoubleValue(d)) => Value::BoolValue(*d != 0.0),
        _ => return None,
    })
}

/// The booleans Go's `strconv.ParseBool` (and so the Collector) accepts.
fn parse_bool(text: &str) -> Option<bool> {
    match text {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

impl Attributes {
    /// Whether `span_names` filters are configured (they only apply to traces).
    fn filters_span_names(&self) -> bool {
        [&self.include, &self.exclude]
            .into_iter()
            .flatten()
            .any(|f| f.span_names.is_some())
    }

    fn selects(&self, item: &Item) -> bool {
        self.include.as_ref().is_none_or(|f| f.matches(item))
            && !self.exclude.as_ref().is_some_and(|f| f.matches(item))
    }

    /// Applies the actions to every selected item of `request`; returns how many attributes
    /// each action changed.
    pub fn apply(&self, request: &mut Request) -> Changes {
        let mut changes = vec![0; self.ops.len()];
        match request {
            Request::Traces(request) => {
                for rs in &mut request.resource_spans {
                    let resource = rs.resource.as_ref().map_or(&[][..], |r| &r.attributes);
                    for span in rs.scope_spans.iter_mut().flat_map(|s| &mut s.spans) {
                        let item = Item {
                            span_name: Some(&span.name),
                            attributes: &span.attributes,
                            resource,
                        };
                        if self.selects(&item) {
                            self.apply_to(&mut span.attributes, resource, &mut changes);
                        }
                    }
                }
            }
            Request::Logs(request) => {
                for rl in &mut request.resource_logs {
                    let resource = rl.resource.as_ref().map_or(&[][..], |r| &r.attributes);
                    for record in rl.scope_logs.iter_mut().flat_map(|s| &mut s.log_records) {
                        let item = Item {
                            span_name: None,
                            attributes: &record.attributes,
                            resource,
                        };
                        if self.selects(&item) {
                            self.apply_to(&mut record.attributes, resource, &mut changes);
                        }
                    }
                }
            }
            Request::Metrics(request) => {
                for rm in &mut request.resource_metrics {
                    let resource = rm.resource.as_ref().map_or(&[][..], |r| &r.attributes);
                    for metric in rm.scope_metrics.iter_mut().flat_map(|s| &mut s.metrics) {
                        macro_rules! points {
                            ($points:expr) => {
                                for point in $points {
                                    let item = Item {
                                        span_name: None,
                                        attributes: &point.attributes,
                                        resource,
                                    };
                                    if self.selects(&item) {
                                        self.apply_to(
                                            &mut point.attributes,
                                            resource,
                                            &mut changes,
                                        );
                                    }
                                }
                            };
                        }
                        match &mut metric.data {
                            Some(Data::Gauge(g)) => points!(&mut g.data_points),
                            Some(Data::Sum(s)) => points!(&mut s.data_points),
                            Some(Data::Histogram(h)) => points!(&mut h.data_points),
                            Some(Data::ExponentialHistogram(h)) => points!(&mut h.data_points),
                            Some(Data::Summary(s)) => points!(&mut s.data_points),
                            None => {}
                        }
                    }
                }
            }
        }
        changes
    }

    /// Applies every action, in order, to one item's attributes.
    fn apply_to(
        &self,
        attributes: &mut Vec<KeyValue>,
        resource: &[KeyValue],
        changes: &mut Changes,
    ) {
        for (op, changed) in self.ops.iter().zip(changes.iter_mut()) {
            *changed += apply_op(op, attributes, resource);
        }
    }
}

/// Applies one action; returns how many attributes it changed.
fn apply_op(op: &Op, attributes: &mut Vec<KeyValue>, resource: &[KeyValue]) -> u64 {
    match op {
        Op::Set {
            key,
            source,
            insert,
            update,
        } => {
            let present = attributes.iter().any(|a| &a.key == key);
            if (present && !update) || (!present && !insert) {
                return 0;
            }
            let value = match source {
                Source::Literal(value) => Some(value.clone()),
                Source::Attribute(from) => get(attributes, from).cloned(),
                Source::Resource(from) => get(resource, from).cloned(),
            };
            match value {
                Some(value) => {
                    upsert(attributes, key, value);
                    1
                }
                None => 0,
            }
        }
        Op::Delete(keys) => {
            let before = attributes.len();
            attributes.retain(|a| !keys.matches(&a.key));
            (before - attributes.len()) as u64
        }
        Op::Hash(keys) => {
            let mut changed = 0;
            for attribute in attributes.iter_mut().filter(|a| keys.matches(&a.key)) {
                if let Some(value) = attribute.value.as_mut().and_then(|v| v.value.as_mut())
                    && let Some(digest) = sha256(value)
                {
                    set_hex(value, &digest);
                    changed += 1;
                }
            }
            changed
        }
        Op::Extract {
            key,
            pattern,
            groups,
        } => {
            let Some(Value::StringValue(text)) = get(attributes, key) else {
                return 0;
            };
            let Some(captures) = pattern.captures(text) else {
                return 0;
            };
            // Owned, as the text is borrowed from the attributes the values go into.
            let extracted: Vec<(&str, String)> = groups
                .iter()
                .filter_map(|(index, name)| {
                    Some((name.as_str(), captures.get(*index)?.as_str().to_string()))
                })
                .collect();
            let count = extracted.len() as u64;
            for (name, value) in extracted {
                upsert(attributes, name, Value::StringValue(value));
            }
            count
        }
        Op::Convert { key, to } => {
            let Some(value) = attributes
                .iter_mut()
                .find(|a| &a.key == key)
                .and_then(|a| a.value.as_mut()?.value.as_mut())
            else {
                return 0;
            };
            match convert(value, *to) {
                Some(converted) if converted != *value => {
                    *value = converted;
                    1
                }
                _ => 0,
            }
        }
        Op::Rename { key, new_key } => {
            let Some(index) = attributes.iter().position(|a| &a.key == key) else {
                return 0;
            };
            if key == new_key {
                return 0;
            }
            let moved = attributes.remove(index);
            attributes.retain(|a| &a.key != new_key);
            attributes.push(KeyValue {
                key: new_key.clone(),
                ..moved
            });
            1
        }
    }
}

// ---- The processor --------------------------------------------------------------------------

/// Builds `attributes` processors.
pub struct AttributesProcessorFactory;

impl ProcessorFactory for AttributesProcessorFactory {
    fn type_name(&self) -> &'static str {
        "attributes"
    }

    fn signals(&self) -> &'static [Signal] {
        &Signal::ALL
    }

    fn build(&self, settings: &ComponentSettings) -> Result<Box<dyn Processor>, ConfigError> {
        let config: AttributesConfig = settings.parse()?;
        let kinds = config.actions.iter().map(|a| a.action).collect();
        Ok(Box::new(AttributesProcessor {
            attributes: Arc::new(AttributesConfig::from_settings(settings)?),
            kinds,
        }))
    }
}

/// An `attributes` processor built from config, ready to start in a pipeline.
pub struct AttributesProcessor {
    attributes: Arc<Attributes>,
    /// The kind of each action, for the metric labels.
    kinds: Vec<ActionKind>,
}

#[async_trait]
impl Processor for AttributesProcessor {
    async fn start(
        self: Box<Self>,
        ctx: ProcessorContext,
    ) -> Result<Arc<dyn RunningProcessor>, StartError> {
        if ctx.signal != Signal::Traces && self.attributes.filters_span_names() {
            return Err(StartError {
                component: format!("processors.{}", ctx.id),
                message: format!(
                    "span_names filters only apply to traces, and pipeline {} carries {}",
                    ctx.pipeline, ctx.signal
                ),
            });
        }
        let changed = ctx.telemetry.counter_vec(
            "sluice_processor_attributes_changed_total",
            "Attributes the attributes processor inserted, updated, deleted, hashed, extracted, \
             converted or renamed, by action.",
            &["processor", "signal", "action"],
        );
        let counters = self
            .kinds
            .iter()
            .map(|kind| changed.with_label_values(&[&ctx.id, ctx.signal.as_str(), kind.name()]))
            .collect();
        Ok(Arc::new(RunningAttributes {
            attributes: self.attributes,
            next: ctx.next,
            counters,
        }))
    }
}

/// An `attributes` processor running in one pipeline; it works in the caller's task.
pub struct RunningAttributes {
    attributes: Arc<Attributes>,
    next: Arc<dyn Consumer>,
    /// By action, in the configured order.
    counters: Vec<IntCounter>,
}

#[async_trait]
impl Consumer for RunningAttributes {
    async fn consume(&self, mut batch: Batch) -> Result<(), ConsumeError> {
        if !batch.is_empty() {
            let changes = batch
                .modify(|request| self.attributes.apply(request))
                .map_err(|e| ConsumeError::Rejected(format!("cannot decode the batch: {e}")))?;
            for (counter, count) in self.counters.iter().zip(changes) {
                if count > 0 {
                    counter.inc_by(count);
                }
            }
        }
        self.next.consume(batch).await
    }
}

#[async_trait]
impl Running for RunningAttributes {
    async fn shutdown(&self) {}
}

#[cfg(test)]
mod tests;
