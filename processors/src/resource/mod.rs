//! The `resource` processor: inserts, updates, upserts and deletes resource attributes, with
//! optional detectors describing the Sluice process and `deployment.environment.name` from
//! config.
//!
//! Order of application on each resource: `deployment_environment`, then the detectors in the
//! order listed (both only insert: an attribute the data already has is never overridden, and
//! an earlier source wins over a later one), then the `attributes` actions in the order listed.

pub mod detectors;

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prometheus::IntCounter;
use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};
use sluice_pipeline::{
    Batch, ComponentSettings, ConfigError, ConsumeError, Consumer, Processor, ProcessorContext,
    ProcessorFactory, Request, Running, RunningProcessor, Signal, StartError,
};

use detectors::{DetectError, Detected, Detector};

/// Configuration of the `resource` processor (`[processors.resource]`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceConfig {
    /// Detectors to run, in order: `host` (`host.name`), `process` (`process.pid`),
    /// `service_instance` (`service.instance.id`, a UUID v4 made once per Sluice process),
    /// `env` (`OTEL_RESOURCE_ATTRIBUTES` and `OTEL_SERVICE_NAME` from Sluice's environment).
    /// They describe Sluice itself and only insert: attributes the data has are kept.
    #[serde(default)]
    pub detectors: Vec<Detector>,
    /// Inserted as `deployment.environment.name` (before the detectors) unless the resource
    /// already has one.
    #[serde(default)]
    pub deployment_environment: Option<String>,
    /// Actions on resource attributes, applied in order after the detectors.
    #[serde(default)]
    pub attributes: Vec<AttributeAction>,
}

/// One action on a resource attribute, as the Collector's resource processor writes it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttributeAction {
    /// The attribute the action is about.
    pub key: String,
    /// `insert` (only if absent), `update` (only if present), `upsert` (either), `delete`.
    pub action: Action,
    /// The value to write: a string, integer, float or boolean. Exactly one of `value` and
    /// `from_attribute` for insert, update and upsert; neither for delete.
    #[serde(default)]
    pub value: Option<ConfigValue>,
    /// Write the value of this other resource attribute instead (nothing happens when the
    /// resource does not have it).
    #[serde(default)]
    pub from_attribute: Option<String>,
}

/// What an [`AttributeAction`] does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Insert,
    Update,
    Upsert,
    Delete,
}

/// A scalar attribute value written in the config.
#[derive(Debug, Clone, PartialEq)]
pub enum ConfigValue {
    Str(String),
    Int(i64),
    Double(f64),
    Bool(bool),
}

impl ConfigValue {
    fn to_any_value(&self) -> AnyValue {
        use any_value::Value;
        AnyValue {
            value: Some(match self {
                ConfigValue::Str(s) => Value::StringValue(s.clone()),
                ConfigValue::Int(i) => Value::IntValue(*i),
                ConfigValue::Double(d) => Value::DoubleValue(*d),
                ConfigValue::Bool(b) => Value::BoolValue(*b),
            }),
        }
    }
}

impl<'de> Deserialize<'de> for ConfigValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ScalarVisitor;
        impl Visitor<'_> for ScalarVisitor {
            type Value = ConfigValue;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string, integer, float or boolean")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ConfigValue, E> {
                Ok(ConfigValue::Str(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ConfigValue, E> {
                Ok(ConfigValue::Int(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ConfigValue, E> {
                i64::try_from(v)
                    .map(ConfigValue::Int)
                    .map_err(|_| E::custom(format!("{v} is too large for an integer attribute")))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<ConfigValue, E> {
                Ok(ConfigValue::Double(v))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<ConfigValue, E> {
                Ok(ConfigValue::Bool(v))
            }
        }
        deserializer.deserialize_any(ScalarVisitor)
    }
}

impl ResourceConfig {
    /// Parses and checks the `[processors.<id>]` table.
    pub fn from_settings(settings: &ComponentSettings) -> Result<ResourceConfig, ConfigError> {
        let config: ResourceConfig = settings.parse()?;
        for (i, action) in config.attributes.iter().enumerate() {
            let path = settings.path().key("attributes").index(i);
            if action.key.is_empty() {
                return Err(ConfigError::new(path.key("key"), "must not be empty"));
            }
            let sources =
                usize::from(action.value.is_some()) + usize::from(action.from_attribute.is_some());
            match (action.action, sources) {
                (Action::Delete, 0) => {}
                (Action::Delete, _) => {
                    return Err(ConfigError::new(
                        path,
                        "delete takes no `value` or `from_attribute`",
                    ));
                }
                (_, 1) => {}
                (action, _) => {
                    return Err(ConfigError::new(
                        path,
                        format!(
                            "{} needs exactly one of `value` and `from_attribute`",
                            action.name()
                        ),
                    ));
                }
            }
        }
        if config.deployment_environment.as_deref() == Some("") {
            return Err(settings.error("deployment_environment", "must not be empty"));
        }
        Ok(config)
    }
}

impl Action {
    fn name(self) -> &'static str {
        match self {
            Action::Insert => "insert",
            Action::Update => "update",
            Action::Upsert => "upsert",
            Action::Delete => "delete",
        }
    }
}

/// Where an action's value comes from.
#[derive(Debug, Clone, PartialEq)]
enum Source {
    Value(AnyValue),
    Attribute(String),
}

/// One step of the plan applied to every resource.
#[derive(Debug, Clone, PartialEq)]
enum Step {
    /// Set the value if the key is absent (detectors, `deployment_environment`, `insert`).
    Insert(String, Source),
    Update(String, Source),
    Upsert(String, Source),
    Delete(String),
}

/// The steps a `resource` processor applies to each resource, worked out from config (and
/// the detectors run) once.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan(Vec<Step>);

impl Plan {
    /// Runs the detectors of `config`, reading the environment through `var`.
    pub fn new(
        config: &ResourceConfig,
        var: &dyn Fn(&'static str) -> Result<Option<String>, DetectError>,
    ) -> Result<Plan, DetectError> {
        let mut steps = Vec::new();
        if let Some(environment) = &config.deployment_environment {
            steps.push(Step::Insert(
                "deployment.environment.name".to_string(),
                Source::Value(ConfigValue::Str(environment.clone()).to_any_value()),
            ));
        }
        for detector in &config.detectors {
            for (key, value) in detector.detect(var)? {
                let value = match value {
                    Detected::Str(s) => ConfigValue::Str(s),
                    Detected::Int(i) => ConfigValue::Int(i),
                };
                steps.push(Step::Insert(key, Source::Value(value.to_any_value())));
            }
        }
        for action in &config.attributes {
            let key = action.key.clone();
            let source = match (&action.value, &action.from_attribute) {
                (Some(value), _) => Source::Value(value.to_any_value()),
                (None, Some(from)) => Source::Attribute(from.clone()),
                // Only delete has neither (the config checks it).
                (None, None) => {
                    steps.push(Step::Delete(key));
                    continue;
                }
            };
            steps.push(match action.action {
                Action::Insert => Step::Insert(key, source),
                Action::Update => Step::Update(key, source),
                Action::Upsert => Step::Upsert(key, source),
                Action::Delete => Step::Delete(key),
            });
        }
        Ok(Plan(steps))
    }

    /// Applies the plan to `resource`; whether anything changed.
    pub fn apply(&self, resource: &mut Resource) -> bool {
        let attributes = &mut resource.attributes;
        let mut changed = false;
        for step in &self.0 {
            let position =
                |key: &str, attributes: &[KeyValue]| attributes.iter().position(|kv| kv.key == key);
            let resolve = |source: &Source, attributes: &[KeyValue]| match source {
                Source::Value(value) => Some(value.clone()),
                Source::Attribute(from) => attributes
                    .iter()
                    .find(|kv| kv.key == *from)
                    .and_then(|kv| kv.value.clone()),
            };
            match step {
                Step::Insert(key, source) => {
                    if position(key, attributes).is_none()
                        && let Some(value) = resolve(source, attributes)
                    {
                        attributes.push(KeyValue {
                            key: key.clone(),
                            value: Some(value),
                            ..Default::default()
                        });
                        changed = true;
                    }
                }
                Step::Update(key, source) => {
                    if let Some(at) = position(key, attributes)
                        && let Some(value) = resolve(source, attributes)
                    {
                        changed |= attributes[at].value.as_ref() != Some(&value);
                        attributes[at].value = Some(value);
                    }
                }
                Step::Upsert(key, source) => {
                    if let Some(value) = resolve(source, attributes) {
                        match position(key, attributes) {
                            Some(at) => {
                                changed |= attributes[at].value.as_ref() != Some(&value);
                                attributes[at].value = Some(value);
                            }
                            None => {
                                attributes.push(KeyValue {
                                    key: key.clone(),
                                    value: Some(value),
                                    ..Default::default()
                                });
                                changed = true;
                            }
                        }
                    }
                }
                Step::Delete(key) => {
                    let before = attributes.len();
                    attributes.retain(|kv| kv.key != *key);
                    changed |= attributes.len() != before;
                }
            }
        }
        changed
    }

    /// Applies the plan to every resource of `request`; the number of items (spans, data
    /// points, log records) whose resource changed.
    pub fn apply_request(&self, request: &mut Request) -> u64 {
        let mut changed_items = 0;
        let mut apply = |resource: &mut Option<Resource>, items: usize| {
            if self.apply(resource.get_or_insert_with(Resource::default)) {
                changed_items += items as u64;
            }
        };
        match request {
            Request::Traces(r) => {
                for rs in &mut r.resource_spans {
                    let items = rs.scope_spans.iter().map(|s| s.spans.len()).sum();
                    apply(&mut rs.resource, items);
                }
            }
            Request::Metrics(r) => {
                for rm in &mut r.resource_metrics {
                    let items = rm
                        .scope_metrics
                        .iter()
                        .flat_map(|s| &s.metrics)
                        .map(sluice_pipeline::batch::metric_data_point_count)
                        .sum();
                    apply(&mut rm.resource, items);
                }
            }
            Request::Logs(r) => {
                for rl in &mut r.resource_logs {
                    let items = rl.scope_logs.iter().map(|s| s.log_records.len()).sum();
                    apply(&mut rl.resource, items);
                }
            }
        }
        changed_items
    }
}

/// Builds `resource` processors.
pub struct ResourceProcessorFactory;

impl ProcessorFactory for ResourceProcessorFactory {
    fn type_name(&self) -> &'static str {
        "resource"
    }

    fn signals(&self) -> &'static [Signal] {
        &Signal::ALL
    }

    fn build(&self, settings: &ComponentSettings) -> Result<Box<dyn Processor>, ConfigError> {
        let config = ResourceConfig::from_settings(settings)?;
        let plan = Plan::new(&config, &detectors::process_env)
            .map_err(|error| settings.error("detectors", error.to_string()))?;
        Ok(Box::new(ResourceProcessor {
            plan: Arc::new(plan),
        }))
    }
}

/// A `resource` processor built from config, ready to start in a pipeline.
pub struct ResourceProcessor {
    plan: Arc<Plan>,
}

#[async_trait]
impl Processor for ResourceProcessor {
    async fn start(
        self: Box<Self>,
        ctx: ProcessorContext,
    ) -> Result<Arc<dyn RunningProcessor>, StartError> {
        let changed = ctx
            .telemetry
            .counter_vec(
                "sluice_resource_changed_items_total",
                "Items (spans, data points, log records) whose resource the resource processor \
                 changed.",
                &["processor", "signal"],
            )
            .with_label_values(&[&ctx.id, ctx.signal.as_str()]);
        Ok(Arc::new(RunningResource {
            id: ctx.id,
            plan: self.plan,
            next: ctx.next,
            changed,
        }))
    }
}

/// A `resource` processor running in one pipeline.
pub struct RunningResource {
    id: String,
    plan: Arc<Plan>,
    next: Arc<dyn Consumer>,
    changed: IntCounter,
}

#[async_trait]
impl Consumer for RunningResource {
    async fn consume(&self, mut batch: Batch) -> Result<(), ConsumeError> {
        if !batch.is_empty() && !self.plan.0.is_empty() {
            let changed = batch
                .modify(|request| self.plan.apply_request(request))
                .map_err(|error| {
                    ConsumeError::Rejected(format!("resource processor {}: {error}", self.id))
                })?;
            self.changed.inc_by(changed);
        }
        self.next.consume(batch).await
    }
}

#[async_trait]
impl Running for RunningResource {
    /// Holds nothing: every batch is passed on as it is changed.
    async fn shutdown(&self) {}
}

#[cfg(test)]
mod tests;
