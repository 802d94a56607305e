//! The pipeline graph: checking a config against the registry.
//!
//! [`plan`] builds every component from its table and checks the references between them,
//! starting nothing: it is what `sluice validate` runs, and it reports every error it finds.
//! [`crate::service::Service`] runs a plan.

use std::collections::BTreeSet;

use crate::component::{Exporter, Processor, Receiver, Registry};
use crate::config::{ComponentKind, ComponentSettings, Config, ConfigError, KeyPath, parse_value};
use crate::queue::{ExporterCore, QueueSettings};
use crate::signal::Signal;

/// A warning about a config that is valid but probably not what was meant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigWarning {
    pub path: KeyPath,
    pub message: String,
}

pub(crate) struct PlannedExporter {
    pub(crate) id: String,
    pub(crate) type_name: String,
    /// Its table as configured, core keys included: a reload compares it with the running one.
    pub(crate) settings: ComponentSettings,
    pub(crate) exporter: Box<dyn Exporter>,
    pub(crate) core: ExporterCore,
}

pub(crate) struct PlannedProcessor {
    pub(crate) id: String,
    pub(crate) settings: ComponentSettings,
    pub(crate) processor: Box<dyn Processor>,
}

pub(crate) struct PlannedPipeline {
    pub(crate) name: String,
    pub(crate) signal: Signal,
    pub(crate) acknowledgements: bool,
    pub(crate) processors: Vec<PlannedProcessor>,
    pub(crate) exporters: Vec<String>,
}

pub(crate) struct PlannedReceiver {
    pub(crate) id: String,
    pub(crate) settings: ComponentSettings,
    pub(crate) receiver: Box<dyn Receiver>,
    /// The pipelines it feeds.
    pub(crate) pipelines: Vec<String>,
}

/// A checked configuration: every component built, every reference resolved.
pub struct Plan {
    pub(crate) exporters: Vec<PlannedExporter>,
    pub(crate) pipelines: Vec<PlannedPipeline>,
    pub(crate) receivers: Vec<PlannedReceiver>,
    /// Valid but suspicious parts of the config, such as components no pipeline uses.
    pub warnings: Vec<ConfigWarning>,
}

/// An exporter of a plan, as `sluice check` tests it.
pub struct CheckedExporter<'a> {
    pub id: &'a str,
    pub type_name: &'a str,
    pub exporter: &'a dyn Exporter,
    /// `false` for `enabled = false`: configured but sending nothing.
    pub enabled: bool,
    /// The signals of the pipelines that use it, in pipeline order.
    pub signals: Vec<Signal>,
}

impl Plan {
    /// Every exporter the plan built, in config order, with the signals it is used for.
    pub fn exporters(&self) -> Vec<CheckedExporter<'_>> {
        self.exporters
            .iter()
            .map(|planned| {
                let mut signals = Vec::new();
                for pipeline in &self.pipelines {
                    if pipeline.exporters.contains(&planned.id)
                        && !signals.contains(&pipeline.signal)
                    {
                        signals.push(pipeline.signal);
                    }
                }
                CheckedExporter {
                    id: &planned.id,
                    type_name: &planned.type_name,
                    exporter: &*planned.exporter,
                    enabled: planned.core.enabled,
                    signals,
                }
            })
            .collect()
    }
}

/// What `sluice test` puts in place of every exporter: it sends nothing and succeeds.
struct Discarding;

#[async_trait::async_trait]
impl Exporter for Discarding {
    async fn export(&self, _: crate::batch::Batch) -> Result<(), crate::error::ExportError> {
        Ok(())
    }
}

impl Plan {
    /// The plan as `sluice test` runs it: no receiver (the test hands data to the pipelines
    /// itself), and every exporter replaced by one that sends nothing, behind a memory queue,
    /// so a test opens no port, reaches no backend and writes no disk queue.
    pub fn for_tests(mut self) -> Plan {
        for planned in &mut self.exporters {
            planned.exporter = Box::new(Discarding);
            planned.core.queue = QueueSettings::default();
        }
        self.receivers.clear();
        self
    }
}

/// The keys the core reads from every exporter's table before the exporter sees it.
pub(crate) const EXPORTER_CORE_KEYS: [&str; 3] = ["queue", "retry", "enabled"];

/// Builds every component `config` uses and checks how they are wired, collecting every error.
pub fn plan(config: &Config, registry: &Registry) -> Result<Plan, Vec<ConfigError>> {
    let mut errors = Vec::new();
    let mut warnings = Vec::new();

    let mut used = check_references(config, registry, &mut errors);
    // A section's receiver is a service in its own right and runs without pipelines.
    for section in &config.sections {
        used.insert((ComponentKind::Receiver, section.clone()));
    }
    for kind in [
        ComponentKind::Receiver,
        ComponentKind::Processor,
        ComponentKind::Exporter,
    ] {
        for id in config.components(kind).keys() {
            if !used.contains(&(kind, id.clone())) {
                warnings.push(ConfigWarning {
                    path: KeyPath::of(&[kind.section(), id]),
                    message: format!("{} {id:?} is defined but no pipeline uses it", kind.noun()),
                });
            }
        }
    }

    let mut exporters = Vec::new();
    for (id, configured) in &config.exporters {
        if !used.contains(&(ComponentKind::Exporter, id.clone())) {
            continue;
        }
        let Some(factory) = registry.exporter(&configured.type_name) else {
            continue;
        };
        let (core, settings) = match split_exporter_core_keys(configured) {
            Ok(split) => split,
            Err(e) => {
                errors.push(e);
                continue;
            }
        };
        match factory.build(&settings) {
            Ok(exporter) => exporters.push(PlannedExporter {
                id: id.clone(),
                type_name: settings.type_name.clone(),
                settings: configured.clone(),
                exporter,
                core,
            }),
            Err(e) => errors.push(e),
        }
    }

    let mut pipelines = Vec::new();
    for pipeline in config.pipelines.values() {
        let mut processors = Vec::new();
        for id in &pipeline.processors {
            let Some(settings) = config.processors.get(id) else {
                continue;
            };
            let Some(factory) = registry.processor(&settings.type_name) else {
                continue;
            };
            match factory.build(settings) {
                Ok(processor) => processors.push(PlannedProcessor {
                    id: id.clone(),
                    settings: settings.clone(),
                    processor,
                }),
                // A processor used by several pipelines would report the same error each time.
                Err(e) if errors.contains(&e) => {}
                Err(e) => errors.push(e),
            }
        }
        pipelines.push(PlannedPipeline {
            name: pipeline.name.clone(),
            signal: pipeline.signal,
            acknowledgements: pipeline.acknowledgements,
            processors,
            exporters: pipeline.exporters.clone(),
        });
    }

    let mut receivers = Vec::new();
    for (id, settings) in &config.receivers {
        if !used.contains(&(ComponentKind::Receiver, id.clone())) {
            continue;
        }
        let Some(factory) = registry.receiver(&settings.type_name) else {
            continue;
        };
        match factory.build(settings) {
            Ok(receiver) => {
                let feeds = config
                    .pipelines
                    .values()
                    .filter(|p| p.receivers.contains(id))
                    .map(|p| p.name.clone())
                    .collect();
                receivers.push(PlannedReceiver {
                    id: id.clone(),
                    settings: settings.clone(),
                    receiver,
                    pipelines: feeds,
                });
            }
            Err(e) => errors.push(e),
        }
    }

    if errors.is_empty() {
        Ok(Plan {
            exporters,
            pipelines,
            receivers,
            warnings,
        })
    } else {
        Err(errors)
    }
}

/// Checks component types and every pipeline's references; returns the components in use.
fn check_references(
    config: &Config,
    registry: &Registry,
    errors: &mut Vec<ConfigError>,
) -> BTreeSet<(ComponentKind, String)> {
    for section in &config.sections {
        if !registry.receiver(section).is_some_and(|f| f.is_section()) {
            let mut expected = vec![
                "service",
                "receivers",
                "processors",
                "exporters",
                "pipelines",
            ];
            expected.extend(registry.section_names());
            errors.push(ConfigError::new(
                KeyPath::of(&[section]),
                format!("unknown section; expected one of: {}", expected.join(", ")),
            ));
        }
    }
    for kind in [
        ComponentKind::Receiver,
        ComponentKind::Processor,
        ComponentKind::Exporter,
    ] {
        for settings in config.components(kind).values() {
            let is_section =
                kind == ComponentKind::Receiver && config.sections.contains(&settings.id);
            if is_section {
                continue;
            }
            if component_signals(registry, settings).is_none() {
                let path = if settings.type_name == settings.id {
                    settings.path()
                } else {
                    settings.path().key("type")
                };
                let known = registry.type_names(kind).join(", ");
                errors.push(ConfigError::new(
                    path,
                    format!(
                        "unknown {} type {:?}; known types: {known}",
                        kind.noun(),
                        settings.type_name
                    ),
                ));
            }
        }
    }

    let mut used = BTreeSet::new();
    for pipeline in config.pipelines.values() {
        let path = KeyPath::of(&["pipelines", &pipeline.name]);
        // Checked here rather than when the file is read: the binary first gives pipelines
        // without exporters one from OTEL_EXPORTER_OTLP_* when the environment sets it.
        if pipeline.receivers.is_empty() {
            errors.push(ConfigError::new(
                path.key("receivers"),
                "a pipeline needs at least one receiver",
            ));
        }
        if pipeline.exporters.is_empty() {
            errors.push(ConfigError::new(
                path.key("exporters"),
                "a pipeline needs at least one exporter (or set OTEL_EXPORTER_OTLP_ENDPOINT to send to an OTLP endpoint)",
            ));
        }
        let lists = [
            (ComponentKind::Receiver, "receivers", &pipeline.receivers),
            (ComponentKind::Processor, "processors", &pipeline.processors),
            (ComponentKind::Exporter, "exporters", &pipeline.exporters),
        ];
        for (kind, key, ids) in lists {
            let mut seen = BTreeSet::new();
            for (index, id) in ids.iter().enumerate() {
                let at = path.key(key).index(index);
                if !seen.insert(id) {
                    errors.push(ConfigError::new(
                        at,
                        format!("{} {id:?} is listed twice", kind.noun()),
                    ));
                    continue;
                }
                let Some(settings) = config.components(kind).get(id) else {
                    errors.push(ConfigError::new(
                        at,
                        format!(
                            "{} {id:?} is not defined (add a [{}.{id}] table)",
                            kind.noun(),
                            kind.section()
                        ),
                    ));
                    continue;
                };
                used.insert((kind, id.clone()));
                if let Some(signals) = component_signals(registry, settings)
                    && !signals.contains(&pipeline.signal)
                {
                    errors.push(ConfigError::new(
                        at,
                        format!(
                            "{} {id:?} (type {}) does not support {}; it supports {}",
                            kind.noun(),
                            settings.type_name,
                            pipeline.signal,
                            signals
                                .iter()
                                .map(|s| s.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    ));
                }
            }
        }
    }
    used
}

fn component_signals(
    registry: &Registry,
    settings: &ComponentSettings,
) -> Option<&'static [Signal]> {
    match settings.kind {
        ComponentKind::Receiver => registry.receiver(&settings.type_name).map(|f| f.signals()),
        ComponentKind::Processor => registry.processor(&settings.type_name).map(|f| f.signals()),
        ComponentKind::Exporter => registry.exporter(&settings.type_name).map(|f| f.signals()),
    }
}

/// Takes the keys every exporter has (`queue`, `retry`, `enabled`) out of its table.
fn split_exporter_core_keys(
    settings: &ComponentSettings,
) -> Result<(ExporterCore, ComponentSettings), ConfigError> {
    let mut rest = settings.clone();
    let mut core = ExporterCore::default();
    for key in EXPORTER_CORE_KEYS {
        let Some(value) = rest.table.remove(key) else {
            continue;
        };
        let path = settings.path().key(key);
        match key {
            "queue" => core.queue = parse_value(&path, value)?,
            "retry" => core.retry = parse_value(&path, value)?,
            _ => core.enabled = parse_value(&path, value)?,
        }
    }
    check_queue(settings, &core.queue)?;
    if let Some((key, message)) = core.retry.problem() {
        return Err(ConfigError::new(
            settings.path().key("retry").key(key),
            message,
        ));
    }
    Ok((core, rest))
}

fn check_queue(settings: &ComponentSettings, queue: &QueueSettings) -> Result<(), ConfigError> {
    match queue.queue_type.as_str() {
        "memory" => {}
        "disk" => {
            let Some(disk) = queue.disk(&settings.id) else {
                return Err(ConfigError::new(
                    settings.path().key("queue").key("directory"),
                    "a disk queue needs a directory",
                ));
            };
            if let Some(error) = disk
                .validate(&settings.path().key("queue"))
                .into_iter()
                .next()
            {
                return Err(error);
            }
        }
        other => {
            return Err(ConfigError::new(
                settings.path().key("queue").key("type"),
                format!("unknown queue type {other:?}; expected \"memory\" or \"disk\""),
            ));
        }
    }
    if queue.max_items == 0 {
        return Err(ConfigError::new(
            settings.path().key("queue").key("max_items"),
            "must be at least 1",
        ));
    }
    if queue.consumers == 0 {
        return Err(ConfigError::new(
            settings.path().key("queue").key("consumers"),
            "must be at least 1",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use async_trait::async_trait;
    use serde::Deserialize;

    use std::sync::Arc;

    use super::*;
    use crate::batch::Batch;
    use crate::component::{
        ExporterFactory, ProcessorContext, ProcessorFactory, ReceiverContext, ReceiverFactory,
        Running, RunningProcessor,
    };
    use crate::config::load_str;
    use crate::error::ExportError;
    use crate::error::StartError;

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct FakeConfig {
        #[serde(default)]
        endpoint: Option<String>,
    }

    struct FakeReceiver;
    #[async_trait]
    impl Receiver for FakeReceiver {
        async fn start(
            self: Box<Self>,
            _: ReceiverContext,
        ) -> Result<Box<dyn Running>, StartError> {
            unreachable!("planning starts nothing")
        }
    }
    struct FakeReceivers;
    impl ReceiverFactory for FakeReceivers {
        fn type_name(&self) -> &'static str {
            "fake_in"
        }
        fn signals(&self) -> &'static [Signal] {
            &Signal::ALL
        }
        fn build(&self, settings: &ComponentSettings) -> Result<Box<dyn Receiver>, ConfigError> {
            settings.parse::<FakeConfig>()?;
            Ok(Box::new(FakeReceiver))
        }
    }

    /// A receiver configured by its own top-level section, like the gateway.
    struct FakeSection;
    impl ReceiverFactory for FakeSection {
        fn type_name(&self) -> &'static str {
            "portal"
        }
        fn signals(&self) -> &'static [Signal] {
            &Signal::ALL
        }
        fn build(&self, settings: &ComponentSettings) -> Result<Box<dyn Receiver>, ConfigError> {
            settings.parse::<FakeConfig>()?;
            Ok(Box::new(FakeReceiver))
        }
        fn is_section(&self) -> bool {
            true
        }
    }

    struct FakeProcessor;
    #[async_trait]
    impl Processor for FakeProcessor {
        async fn start(
            self: Box<Self>,
            _: ProcessorContext,
        ) -> Result<Arc<dyn RunningProcessor>, StartError> {
            unreachable!("planning starts nothing")
        }
    }
    struct FakeProcessors;
    impl ProcessorFactory for FakeProcessors {
        fn type_name(&self) -> &'static str {
            "fake_proc"
        }
        fn signals(&self) -> &'static [Signal] {
            &Signal::ALL
        }
        fn build(&self, settings: &ComponentSettings) -> Result<Box<dyn Processor>, ConfigError> {
            settings.parse::<FakeConfig>()?;
            Ok(Box::new(FakeProcessor))
        }
    }

    struct FakeExporter;
    #[async_trait]
    impl Exporter for FakeExporter {
        async fn export(&self, _: Batch) -> Result<(), ExportError> {
            Ok(())
        }
    }
    /// An exporter that only takes metrics, like a Prometheus endpoint.
    struct MetricsOnlyExporters;
    impl ExporterFactory for MetricsOnlyExporters {
        fn type_name(&self) -> &'static str {
            "metrics_only"
        }
        fn signals(&self) -> &'static [Signal] {
            &[Signal::Metrics]
        }
        fn build(&self, settings: &ComponentSettings) -> Result<Box<dyn Exporter>, ConfigError> {
            settings.parse::<FakeConfig>()?;
            Ok(Box::new(FakeExporter))
        }
    }

    fn registry() -> Registry {
        let mut registry = Registry::new();
        registry.add_receiver(FakeReceivers);
        registry.add_receiver(FakeSection);
        registry.add_processor(FakeProcessors);
        registry.add_exporter(MetricsOnlyExporters);
        registry
    }

    /// Plans `text` and returns its errors as `sluice validate` prints them.
    fn plan_errors(text: &str) -> Vec<String> {
        let config = load_str(Path::new("pipes.toml"), text, |_| None).expect("loads");
        match plan(&config, &registry()) {
            Ok(_) => Vec::new(),
            Err(errors) => config
                .locate(errors)
                .to_string()
                .lines()
                .map(str::to_string)
                .collect(),
        }
    }

    const BASE: &str = r#"[receivers.in]
type = "fake_in"

[processors.p]
type = "fake_proc"

[exporters.prom]
type = "metrics_only"
"#;

    #[test]
    fn a_valid_graph_plans_without_errors() {
        let text = format!(
            "{BASE}\n[pipelines.metrics]\nreceivers = [\"in\"]\nprocessors = [\"p\"]\nexporters = [\"prom\"]\n"
        );
        assert_eq!(plan_errors(&text), Vec::<String>::new());
    }

    #[test]
    fn reference_to_an_undefined_component_names_its_list_entry() {
        let text = format!(
            "{BASE}\n[pipelines.metrics]\nreceivers = [\"in\"]\nexporters = [\"prom\", \"tempo\"]\n"
        );
        assert_eq!(
            plan_errors(&text),
            vec![
                "pipes.toml:12: pipelines.metrics.exporters[1]: exporter \"tempo\" is not defined (add a [exporters.tempo] table)"
            ]
        );
    }

    #[test]
    fn component_in_a_pipeline_of_a_signal_it_does_not_support_is_an_error() {
        let text =
            format!("{BASE}\n[pipelines.traces]\nreceivers = [\"in\"]\nexporters = [\"prom\"]\n");
        assert_eq!(
            plan_errors(&text),
            vec![
                "pipes.toml:12: pipelines.traces.exporters[0]: exporter \"prom\" (type metrics_only) does not support traces; it supports metrics"
            ]
        );
    }

    #[test]
    fn unknown_keys_in_a_component_table_name_the_key() {
        let text = format!(
            "{BASE}endpiont = \"x\"\n\n[pipelines.metrics]\nreceivers = [\"in\"]\nexporters = [\"prom\"]\n"
        );
        let errors = plan_errors(&text);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0]
                .starts_with("pipes.toml:9: exporters.prom.endpiont: unknown field `endpiont`"),
            "{errors:?}"
        );
    }

    #[test]
    fn unknown_component_type_lists_the_known_ones() {
        let text = "[receivers.in]\ntype = \"fake_in\"\n[exporters.x]\ntype = \"zipkin\"\n[pipelines.metrics]\nreceivers = [\"in\"]\nexporters = [\"x\"]\n";
        assert_eq!(
            plan_errors(text),
            vec![
                "pipes.toml:4: exporters.x.type: unknown exporter type \"zipkin\"; known types: metrics_only"
            ]
        );
    }

    #[test]
    fn every_error_is_reported_not_just_the_first() {
        let text = format!(
            "{BASE}\n[pipelines.metrics]\nreceivers = [\"nope\"]\nprocessors = [\"p\", \"p\"]\nexporters = [\"prom\"]\n\n[pipelines.traces]\nreceivers = [\"in\"]\nexporters = [\"prom\"]\n"
        );
        let errors = plan_errors(&text);
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(
            errors[0].contains("pipelines.metrics.receivers[0]: receiver \"nope\" is not defined")
        );
        assert!(
            errors[1].contains("pipelines.metrics.processors[1]: processor \"p\" is listed twice")
        );
        assert!(errors[2].contains("pipelines.traces.exporters[0]: exporter \"prom\" (type metrics_only) does not support traces"));
    }

    #[test]
    fn unused_components_are_warnings() {
        let text =
            format!("{BASE}\n[pipelines.metrics]\nreceivers = [\"in\"]\nexporters = [\"prom\"]\n");
        let config = load_str(Path::new("pipes.toml"), &text, |_| None).unwrap();
        let plan = plan(&config, &registry()).unwrap();
        assert_eq!(plan.warnings.len(), 1);
        assert_eq!(plan.warnings[0].path.to_string(), "processors.p");
    }

    #[test]
    fn exporter_queue_settings_are_checked_by_the_core() {
        let text = format!(
            "{BASE}queue = {{ max_items = 0 }}\n\n[pipelines.metrics]\nreceivers = [\"in\"]\nexporters = [\"prom\"]\n"
        );
        assert_eq!(
            plan_errors(&text),
            vec!["pipes.toml:9: exporters.prom.queue.max_items: must be at least 1"]
        );
    }

    #[test]
    fn a_disk_queue_needs_a_directory_and_sane_settings() {
        let pipeline = "\n[pipelines.metrics]\nreceivers = [\"in\"]\nexporters = [\"prom\"]\n";
        let text = format!("{BASE}queue = {{ type = \"disk\" }}\n{pipeline}");
        assert_eq!(
            plan_errors(&text),
            vec!["pipes.toml:9: exporters.prom.queue.directory: a disk queue needs a directory"]
        );
        let text = format!(
            "{BASE}queue = {{ type = \"disk\", directory = \"/tmp/q\", fsync_interval = \"0s\" }}\n{pipeline}"
        );
        assert_eq!(
            plan_errors(&text),
            vec!["pipes.toml:9: exporters.prom.queue.fsync_interval: must be longer than zero"]
        );
        let text = format!("{BASE}retry = {{ multiplier = 0.5 }}\n{pipeline}");
        assert_eq!(
            plan_errors(&text),
            vec!["pipes.toml:9: exporters.prom.retry.multiplier: 0.5 must be at least 1"]
        );
    }

    #[test]
    fn a_section_defines_a_receiver_that_pipelines_name_and_that_runs_unused() {
        let with_pipeline = format!(
            "{BASE}\n[portal]\nendpoint = \"x\"\n\n[pipelines.metrics]\nreceivers = [\"portal\"]\nexporters = [\"prom\"]\n"
        );
        let config = load_str(Path::new("pipes.toml"), &with_pipeline, |_| None).unwrap();
        let planned = plan(&config, &registry()).unwrap();
        assert!(
            planned
                .receivers
                .iter()
                .any(|r| r.id == "portal" && r.pipelines == ["metrics"])
        );

        let unused = format!(
            "{BASE}\n[portal]\n\n[pipelines.metrics]\nreceivers = [\"in\"]\nexporters = [\"prom\"]\n"
        );
        let config = load_str(Path::new("pipes.toml"), &unused, |_| None).unwrap();
        let planned = plan(&config, &registry()).unwrap();
        assert!(
            planned
                .receivers
                .iter()
                .any(|r| r.id == "portal" && r.pipelines.is_empty())
        );
        assert!(
            planned
                .warnings
                .iter()
                .all(|w| w.path.to_string() != "portal")
        );
    }

    #[test]
    fn errors_in_a_section_name_the_section_keys() {
        let text = format!(
            "{BASE}\n[portal]\nendpiont = \"x\"\n\n[pipelines.metrics]\nreceivers = [\"portal\"]\nexporters = [\"prom\"]\n"
        );
        assert_eq!(plan_errors(&text).len(), 1);
        assert!(
            plan_errors(&text)[0].starts_with("pipes.toml:11: portal.endpiont: unknown field"),
            "{:?}",
            plan_errors(&text)
        );
    }

    #[test]
    fn an_unknown_top_level_table_is_an_error_listing_the_sections() {
        let text = format!(
            "{BASE}\n[gatway]\n\n[pipelines.metrics]\nreceivers = [\"in\"]\nexporters = [\"prom\"]\n"
        );
        assert_eq!(
            plan_errors(&text),
            vec![
                "pipes.toml:10: gatway: unknown section; expected one of: service, receivers, processors, exporters, pipelines, portal"
            ]
        );
    }
}
