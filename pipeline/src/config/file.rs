//! The configuration file: its sections and how they are read.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::{
    ComponentKind, ComponentSettings, ConfigError, ConfigErrors, KeyPath, SourceMap, expand_env,
    parse_value,
};
use crate::signal::Signal;

/// The `[service]` table: process-wide settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    /// Address of the admin server (`/healthz`, `/metrics`). Loopback by default; `""` disables it.
    #[serde(
        default = "default_admin",
        deserialize_with = "deserialize_optional_addr"
    )]
    pub admin: Option<SocketAddr>,
    /// How long shutdown may take to flush batches and drain exporter queues.
    #[serde(default = "default_shutdown_timeout", with = "super::duration")]
    pub shutdown_timeout: Duration,
    /// When set, every admin endpoint except `/healthz` and `/readyz` (which probes call)
    /// requires `Authorization: Bearer <admin_token>`.
    #[serde(default)]
    pub admin_token: Option<String>,
}

fn default_admin() -> Option<SocketAddr> {
    Some(SocketAddr::from(([127, 0, 0, 1], 13133)))
}

fn default_shutdown_timeout() -> Duration {
    Duration::from_secs(10)
}

fn deserialize_optional_addr<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<SocketAddr>, D::Error> {
    let text = String::deserialize(deserializer)?;
    if text.is_empty() {
        return Ok(None);
    }
    text.parse().map(Some).map_err(|_| {
        serde::de::Error::custom(format!(
            "invalid address {text:?}: write host:port, e.g. \"127.0.0.1:13133\""
        ))
    })
}

impl Default for ServiceConfig {
    fn default() -> Self {
        ServiceConfig {
            admin: default_admin(),
            shutdown_timeout: default_shutdown_timeout(),
            admin_token: None,
        }
    }
}

/// One `[pipelines.NAME]` table: receivers feed processors in order, then every exporter.
#[derive(Debug, Clone)]
pub struct PipelineConfig {
    pub name: String,
    pub signal: Signal,
    pub receivers: Vec<String>,
    pub processors: Vec<String>,
    pub exporters: Vec<String>,
    /// Whether receivers answer their clients only once every exporter of the pipeline has
    /// sent the data or written it to its disk queue.
    pub acknowledgements: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPipeline {
    signal: Option<String>,
    #[serde(default)]
    receivers: Vec<String>,
    #[serde(default)]
    processors: Vec<String>,
    #[serde(default)]
    exporters: Vec<String>,
    #[serde(default)]
    acknowledgements: bool,
}

/// A loaded configuration file. Component tables are checked when the graph is built from it.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it was read from.
    pub file: PathBuf,
    pub service: ServiceConfig,
    pub receivers: BTreeMap<String, ComponentSettings>,
    pub processors: BTreeMap<String, ComponentSettings>,
    pub exporters: BTreeMap<String, ComponentSettings>,
    pub pipelines: BTreeMap<String, PipelineConfig>,
    /// Receivers defined by a top-level table of their own (`[gateway]`) rather than under
    /// `[receivers]`; they are also in `receivers`, with the table's name as id and type.
    pub sections: Vec<String>,
    /// The `[[tests]]` tables, `sluice test`'s config unit tests: their syntax is checked on
    /// loading, and `run` ignores them (see [`crate::config_tests`]).
    pub tests: Vec<toml::Value>,
    /// The expanded text, to place later errors on their lines.
    text: String,
}

impl Config {
    /// The component definitions of one kind.
    pub fn components(&self, kind: ComponentKind) -> &BTreeMap<String, ComponentSettings> {
        match kind {
            ComponentKind::Receiver => &self.receivers,
            ComponentKind::Processor => &self.processors,
            ComponentKind::Exporter => &self.exporters,
        }
    }

    /// Places errors found after loading (by component factories or the graph) on their lines.
    pub fn locate(&self, mut errors: Vec<ConfigError>) -> ConfigErrors {
        let map = SourceMap::new(&self.text);
        for error in &mut errors {
            if error.line.is_none() {
                error.line = map.line_of(&error.path);
            }
        }
        ConfigErrors {
            file: self.file.clone(),
            errors,
        }
    }
}

/// Reads, expands and parses a configuration file.
pub fn load(file: &Path) -> Result<Config, ConfigErrors> {
    let text = std::fs::read_to_string(file).map_err(|e| ConfigErrors {
        file: file.to_path_buf(),
        errors: vec![ConfigError::new(
            KeyPath::root(),
            format!("cannot read the file: {e}"),
        )],
    })?;
    load_str(file, &text, |name| std::env::var(name).ok())
}

/// Parses configuration `text` as if read from `file`, expanding variables with `env`.
pub fn load_str(
    file: &Path,
    text: &str,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Config, ConfigErrors> {
    let fail = |errors| ConfigErrors {
        file: file.to_path_buf(),
        errors,
    };
    let expanded = expand_env(text, env).map_err(fail)?;
    let root: toml::Table = toml::from_str(&expanded).map_err(|e| {
        let line = e
            .span()
            .map(|span| SourceMap::new(&expanded).line_at(span.start));
        fail(vec![ConfigError {
            path: KeyPath::root(),
            message: e.message().trim().to_string(),
            line,
        }])
    })?;
    let mut config = Config {
        file: file.to_path_buf(),
        service: ServiceConfig::default(),
        receivers: BTreeMap::new(),
        processors: BTreeMap::new(),
        exporters: BTreeMap::new(),
        pipelines: BTreeMap::new(),
        sections: Vec::new(),
        tests: Vec::new(),
        text: expanded,
    };
    let mut errors = Vec::new();
    let mut sections = Vec::new();
    for (key, value) in root {
        let path = KeyPath::of(&[&key]);
        match key.as_str() {
            "service" => match parse_value(&path, value) {
                Ok(service) => config.service = service,
                Err(e) => errors.push(e),
            },
            "receivers" | "processors" | "exporters" => {
                let kind = match key.as_str() {
                    "receivers" => ComponentKind::Receiver,
                    "processors" => ComponentKind::Processor,
                    _ => ComponentKind::Exporter,
                };
                let components = read_components(kind, value, &mut errors);
                match kind {
                    ComponentKind::Receiver => config.receivers = components,
                    ComponentKind::Processor => config.processors = components,
                    ComponentKind::Exporter => config.exporters = components,
                }
            }
            "pipelines" => config.pipelines = read_pipelines(value, &mut errors),
            "tests" => config.tests = crate::config_tests::check_tables(value, &mut errors),
            // Another table may configure a component with a section of its own, such as
            // `[gateway]`; the graph checks that one exists.
            _ => match value {
                toml::Value::Table(table) => {
                    let mut settings = ComponentSettings::new(ComponentKind::Receiver, &key, &key, table);
                    settings.location = path;
                    sections.push(settings);
                }
                _ => errors.push(ConfigError::new(
                    path,
                    "unknown key; expected the sections service, receivers, processors, exporters and pipelines",
                )),
            },
        }
    }
    for settings in sections {
        if config.receivers.contains_key(&settings.id) {
            errors.push(ConfigError::new(
                KeyPath::of(&["receivers", &settings.id]),
                format!(
                    "{0:?} is configured by its own [{0}] section; remove this table",
                    settings.id
                ),
            ));
            continue;
        }
        config.sections.push(settings.id.clone());
        config.receivers.insert(settings.id.clone(), settings);
    }
    if errors.is_empty() {
        Ok(config)
    } else {
        Err(config.locate(errors))
    }
}

fn read_components(
    kind: ComponentKind,
    section: toml::Value,
    errors: &mut Vec<ConfigError>,
) -> BTreeMap<String, ComponentSettings> {
    let section_path = KeyPath::of(&[kind.section()]);
    let toml::Value::Table(section) = section else {
        errors.push(ConfigError::new(
            section_path,
            format!("must be a table of {} definitions", kind.noun()),
        ));
        return BTreeMap::new();
    };
    let mut components = BTreeMap::new();
    for (id, value) in section {
        let path = section_path.key(&id);
        let toml::Value::Table(mut table) = value else {
            errors.push(ConfigError::new(
                path,
                format!("a {} definition must be a table", kind.noun()),
            ));
            continue;
        };
        let type_name = match table.remove("type") {
            None => id.clone(),
            Some(toml::Value::String(type_name)) => type_name,
            Some(_) => {
                errors.push(ConfigError::new(path.key("type"), "must be a string"));
                continue;
            }
        };
        components.insert(
            id.clone(),
            ComponentSettings::new(kind, &id, &type_name, table),
        );
    }
    components
}

fn read_pipelines(
    section: toml::Value,
    errors: &mut Vec<ConfigError>,
) -> BTreeMap<String, PipelineConfig> {
    let section_path = KeyPath::of(&["pipelines"]);
    let toml::Value::Table(section) = section else {
        errors.push(ConfigError::new(
            section_path,
            "must be a table of pipeline definitions",
        ));
        return BTreeMap::new();
    };
    let mut pipelines = BTreeMap::new();
    for (name, value) in section {
        let path = section_path.key(&name);
        let raw: RawPipeline = match parse_value(&path, value) {
            Ok(raw) => raw,
            Err(e) => {
                errors.push(e);
                continue;
            }
        };
        let signal = match raw.signal.as_deref() {
            Some(signal) => Signal::from_name(signal).ok_or_else(|| {
                ConfigError::new(path.key("signal"), format!("unknown signal {signal:?}; expected traces, metrics or logs"))
            }),
            None => Signal::from_name(&name).ok_or_else(|| {
                ConfigError::new(
                    path.clone(),
                    "a pipeline not named traces, metrics or logs needs `signal = \"traces\" | \"metrics\" | \"logs\"`",
                )
            }),
        };
        let signal = match signal {
            Ok(signal) => signal,
            Err(e) => {
                errors.push(e);
                continue;
            }
        };
        // Empty `receivers` and `exporters` are reported by the graph, together: the binary may
        // first give a pipeline without exporters one from OTEL_EXPORTER_OTLP_*.
        pipelines.insert(
            name.clone(),
            PipelineConfig {
                name,
                signal,
                receivers: raw.receivers,
                processors: raw.processors,
                exporters: raw.exporters,
                acknowledgements: raw.acknowledgements,
            },
        );
    }
    pipelines
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_text(text: &str) -> Result<Config, ConfigErrors> {
        load_str(Path::new("test.toml"), text, |name| {
            (name == "TENANT").then(|| "acme".to_string())
        })
    }

    #[test]
    fn type_defaults_to_the_table_name_and_signal_to_the_pipeline_name() {
        let config = load_text(
            "[receivers.otlp]\n[exporters.tempo]\ntype = \"otlp_grpc\"\n[pipelines.traces]\nreceivers = [\"otlp\"]\nexporters = [\"tempo\"]\n",
        )
        .unwrap();
        assert_eq!(config.receivers["otlp"].type_name, "otlp");
        assert_eq!(config.exporters["tempo"].type_name, "otlp_grpc");
        assert!(!config.exporters["tempo"].table.contains_key("type"));
        assert_eq!(config.pipelines["traces"].signal, Signal::Traces);
    }

    #[test]
    fn errors_name_file_line_and_key_path() {
        let errors = load_text("[service]\nadmin = \"127.0.0.1:1\"\nshutdown_timout = \"1s\"\n")
            .unwrap_err();
        assert_eq!(
            errors
                .to_string()
                .lines()
                .next()
                .unwrap()
                .split(": unknown field")
                .next()
                .unwrap(),
            "test.toml:3: service.shutdown_timout"
        );
    }

    #[test]
    fn pipeline_without_receivers_or_exporters_loads_for_the_graph_to_check() {
        let config = load_text("[pipelines.traces]\n").unwrap();
        assert!(config.pipelines["traces"].exporters.is_empty());
    }

    #[test]
    fn custom_pipeline_names_need_a_signal() {
        let errors =
            load_text("[pipelines.llm]\nreceivers = [\"a\"]\nexporters = [\"b\"]\n").unwrap_err();
        assert!(
            errors
                .to_string()
                .contains("test.toml:1: pipelines.llm: a pipeline not named"),
            "{errors}"
        );
    }

    #[test]
    fn syntax_errors_carry_their_line() {
        let errors = load_text("[service]\nadmin = \n").unwrap_err();
        assert_eq!(errors.errors[0].line, Some(2), "{errors}");
    }
}
