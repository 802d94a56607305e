//! Configuration: the TOML file users write, its errors, and the pieces components parse.
//!
//! Loading goes: read the file, expand `${VAR}` references, parse TOML, split it into the
//! service settings, the component tables and the pipelines. Components parse their own table
//! (see [`ComponentSettings::parse`]); the graph checks the references between them. Every
//! error carries the key path it is about, and [`load`] turns paths into file and line.

mod env;
mod file;
mod source_map;

pub use env::expand_env;
pub use file::{Config, PipelineConfig, ServiceConfig, load, load_str};
pub use source_map::SourceMap;

use std::fmt;
use std::path::PathBuf;

use serde::de::DeserializeOwned;

/// The three kinds of component, as named by their config section.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ComponentKind {
    Receiver,
    Processor,
    Exporter,
}

impl ComponentKind {
    /// The config section that defines components of this kind.
    pub fn section(self) -> &'static str {
        match self {
            ComponentKind::Receiver => "receivers",
            ComponentKind::Processor => "processors",
            ComponentKind::Exporter => "exporters",
        }
    }

    /// The singular noun, for messages.
    pub fn noun(self) -> &'static str {
        match self {
            ComponentKind::Receiver => "receiver",
            ComponentKind::Processor => "processor",
            ComponentKind::Exporter => "exporter",
        }
    }
}

/// One step of a key path: a table key or an array index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathSegment {
    Key(String),
    Index(usize),
}

/// Where in the config a value is: `exporters.tempo.endpoint`, `pipelines.traces.exporters[2]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyPath(pub Vec<PathSegment>);

impl KeyPath {
    /// The path of the top of the file.
    pub fn root() -> KeyPath {
        KeyPath(Vec::new())
    }

    /// A path of table keys.
    pub fn of(keys: &[&str]) -> KeyPath {
        KeyPath(
            keys.iter()
                .map(|k| PathSegment::Key((*k).to_string()))
                .collect(),
        )
    }

    /// This path with a key appended.
    pub fn key(&self, key: &str) -> KeyPath {
        let mut path = self.clone();
        path.0.push(PathSegment::Key(key.to_string()));
        path
    }

    /// This path with an array index appended.
    pub fn index(&self, index: usize) -> KeyPath {
        let mut path = self.clone();
        path.0.push(PathSegment::Index(index));
        path
    }

    /// This path followed by a path parsed from serde_path_to_error's rendering (`a.b[0].c`).
    fn join_serde_path(&self, rendered: &str) -> KeyPath {
        let mut path = self.clone();
        if rendered == "." {
            return path;
        }
        for part in rendered.split('.') {
            let (key, indices) = match part.find('[') {
                Some(i) => (&part[..i], &part[i..]),
                None => (part, ""),
            };
            if !key.is_empty() && key != "?" {
                path.0.push(PathSegment::Key(key.to_string()));
            }
            for index in indices.split(['[', ']']).filter(|s| !s.is_empty()) {
                if let Ok(i) = index.parse() {
                    path.0.push(PathSegment::Index(i));
                }
            }
        }
        path
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, segment) in self.0.iter().enumerate() {
            match segment {
                PathSegment::Key(key) if i == 0 => write!(f, "{key}")?,
                PathSegment::Key(key) => write!(f, ".{key}")?,
                PathSegment::Index(index) => write!(f, "[{index}]")?,
            }
        }
        Ok(())
    }
}

/// A problem with one value of the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The key the problem is about.
    pub path: KeyPath,
    pub message: String,
    /// The line, when known; [`load`] fills it in from the key path.
    pub line: Option<usize>,
}

impl ConfigError {
    /// An error about the value at `path`.
    pub fn new(path: KeyPath, message: impl Into<String>) -> ConfigError {
        ConfigError {
            path,
            message: message.into(),
            line: None,
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(line) = self.line {
            write!(f, "line {line}: ")?;
        }
        if self.path.0.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Every error found in one configuration file.
#[derive(Debug, Clone)]
pub struct ConfigErrors {
    pub file: PathBuf,
    pub errors: Vec<ConfigError>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.errors.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}:", self.file.display())?;
            if let Some(line) = error.line {
                write!(f, "{line}:")?;
            }
            if error.path.0.is_empty() {
                write!(f, " {}", error.message)?;
            } else {
                write!(f, " {}: {}", error.path, error.message)?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// A component's table from the config: what its factory builds it from.
#[derive(Debug, Clone)]
pub struct ComponentSettings {
    pub kind: ComponentKind,
    /// The component's id: its table name (`tempo` in `[exporters.tempo]`).
    pub id: String,
    /// Its type: the `type` key, or the id when `type` is omitted.
    pub type_name: String,
    /// The table without its `type` key.
    pub table: toml::Table,
    /// Where the table is in the file: `exporters.tempo`, or `gateway` for a component
    /// defined by a top-level section.
    pub location: KeyPath,
}

impl ComponentSettings {
    /// Whether `other` configures the component the same way (same type, same table): a
    /// reload keeps such a component running as it is.
    pub fn same_as(&self, other: &ComponentSettings) -> bool {
        self.type_name == other.type_name && self.table == other.table
    }

    /// The settings of the component `[<kind's section>.<id>]`.
    pub fn new(
        kind: ComponentKind,
        id: &str,
        type_name: &str,
        table: toml::Table,
    ) -> ComponentSettings {
        ComponentSettings {
            kind,
            id: id.to_string(),
            type_name: type_name.to_string(),
            table,
            location: KeyPath::of(&[kind.section(), id]),
        }
    }

    /// The key path of the component's table.
    pub fn path(&self) -> KeyPath {
        self.location.clone()
    }

    /// An error about one key of the component's table.
    pub fn error(&self, key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::new(self.path().key(key), message)
    }

    /// Deserializes the table into a component's config struct. Errors name the offending key.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, ConfigError> {
        parse_table(&self.path(), self.table.clone())
    }
}

/// Deserializes `table`, found at `path`, reporting errors with their full key path.
pub fn parse_table<T: DeserializeOwned>(
    path: &KeyPath,
    table: toml::Table,
) -> Result<T, ConfigError> {
    parse_value(path, toml::Value::Table(table))
}

/// Deserializes `value`, found at `path`, reporting errors with their full key path.
pub fn parse_value<T: DeserializeOwned>(
    path: &KeyPath,
    value: toml::Value,
) -> Result<T, ConfigError> {
    serde_path_to_error::deserialize(value).map_err(|error| {
        let mut path = path.join_serde_path(&error.path().to_string());
        let message = error.inner().message().to_string();
        // serde reports an unknown key at its parent; name the key itself.
        if let Some(unknown) = message
            .strip_prefix("unknown field `")
            .and_then(|m| m.split('`').next())
            && path.0.last() != Some(&PathSegment::Key(unknown.to_string()))
        {
            path = path.key(unknown);
        }
        ConfigError::new(path, message)
    })
}

/// Deserializes durations written as `"200ms"`, `"10s"`, `"1m30s"`.
pub mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    /// Deserializes a human-readable duration.
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(deserializer)?;
        humantime::parse_duration(&text).map_err(|e| {
            serde::de::Error::custom(format!(
                "invalid duration {text:?} ({e}); write e.g. \"200ms\", \"10s\", \"1m\""
            ))
        })
    }

    /// Serializes a duration in the same human-readable form.
    pub fn serialize<S: Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&humantime::format_duration(*duration).to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Example {
        endpoint: String,
        #[serde(default)]
        nested: Vec<Inner>,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        port: u16,
    }

    #[test]
    fn unknown_key_error_names_the_key_itself() {
        let table: toml::Table = toml::from_str("endpoint = \"x\"\nendpiont = \"y\"").unwrap();
        let error =
            parse_table::<Example>(&KeyPath::of(&["exporters", "tempo"]), table).unwrap_err();
        assert_eq!(error.path.to_string(), "exporters.tempo.endpiont");
        assert!(
            error.message.contains("unknown field `endpiont`"),
            "{}",
            error.message
        );
    }

    #[test]
    fn nested_type_error_names_the_array_index_and_key() {
        let table: toml::Table =
            toml::from_str("endpoint = \"x\"\nnested = [{ port = 1 }, { port = \"no\" }]").unwrap();
        let error = parse_table::<Example>(&KeyPath::of(&["receivers", "r"]), table).unwrap_err();
        assert_eq!(error.path.to_string(), "receivers.r.nested[1].port");
    }

    #[test]
    fn missing_key_error_names_the_table() {
        let table: toml::Table = toml::from_str("").unwrap();
        let error =
            parse_table::<Example>(&KeyPath::of(&["exporters", "tempo"]), table).unwrap_err();
        assert_eq!(error.path.to_string(), "exporters.tempo");
        assert!(
            error.message.contains("missing field `endpoint`"),
            "{}",
            error.message
        );
    }
}
