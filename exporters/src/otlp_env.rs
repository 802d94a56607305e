//! The OpenTelemetry `OTEL_EXPORTER_OTLP_*` environment variables, read as the OpenTelemetry
//! specification (OTLP Exporter Configuration) defines them.
//!
//! Two uses:
//! - an `otlp_grpc` or `otlp_http` exporter that omits `endpoint`, `headers`, `compression` or
//!   `timeout` takes the value from the environment (explicit config always wins);
//! - a pipeline that lists no exporter gets one built from the environment, `otlp_env`, when
//!   an endpoint is set for its signal ([`add_env_exporters`]).
//!
//! The variables are read through a lookup function, so tests pass a map instead of changing
//! the process environment.

use std::collections::BTreeMap;
use std::time::Duration;

use sluice_pipeline::config::KeyPath;
use sluice_pipeline::config::{ComponentKind, Config};
use sluice_pipeline::{ComponentSettings, ConfigError, Signal};

use crate::otlp_common::{Compression, Secret};

/// The id of the exporter built from the environment.
pub const ENV_EXPORTER: &str = "otlp_env";

/// Which OTLP transport the environment asks for (`OTEL_EXPORTER_OTLP_PROTOCOL`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Protocol {
    Grpc,
    HttpProtobuf,
    HttpJson,
}

/// A snapshot of the `OTEL_EXPORTER_OTLP_*` variables. An empty value counts as unset, as the
/// specification says.
#[derive(Debug, Clone, Default)]
pub struct OtlpEnv {
    vars: BTreeMap<String, String>,
}

/// The option names, after `OTEL_EXPORTER_OTLP_` (generic) or `OTEL_EXPORTER_OTLP_<SIGNAL>_`.
const OPTIONS: [&str; 5] = ["ENDPOINT", "HEADERS", "PROTOCOL", "COMPRESSION", "TIMEOUT"];

/// A value and the variable it came from, for messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvValue {
    pub name: String,
    pub value: String,
}

impl OtlpEnv {
    /// The variables of this process.
    pub fn from_process() -> OtlpEnv {
        OtlpEnv::from_lookup(|name| std::env::var(name).ok())
    }

    /// The variables as `lookup` reports them.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> OtlpEnv {
        let mut vars = BTreeMap::new();
        let prefixes = std::iter::once(String::new()).chain(
            Signal::ALL
                .iter()
                .map(|s| format!("{}_", s.as_str().to_ascii_uppercase())),
        );
        for prefix in prefixes {
            for option in OPTIONS {
                let name = format!("OTEL_EXPORTER_OTLP_{prefix}{option}");
                if let Some(value) = lookup(&name).filter(|v| !v.trim().is_empty()) {
                    vars.insert(name, value.trim().to_string());
                }
            }
        }
        OtlpEnv { vars }
    }

    /// The signal-specific variable of `option` if `signal` is given and it is set, else the
    /// generic one.
    fn get(&self, signal: Option<Signal>, option: &str) -> Option<EnvValue> {
        let specific = signal.and_then(|s| {
            let name = format!(
                "OTEL_EXPORTER_OTLP_{}_{option}",
                s.as_str().to_ascii_uppercase()
            );
            self.vars.get(&name).map(|value| EnvValue {
                value: value.clone(),
                name,
            })
        });
        specific.or_else(|| {
            let name = format!("OTEL_EXPORTER_OTLP_{option}");
            self.vars.get(&name).map(|value| EnvValue {
                value: value.clone(),
                name,
            })
        })
    }

    /// The OTLP/HTTP URL of `signal`: `OTEL_EXPORTER_OTLP_<SIGNAL>_ENDPOINT` as it is, else
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` with `/v1/<signal>` appended.
    pub fn http_url(&self, signal: Signal) -> Option<EnvValue> {
        let specific = format!(
            "OTEL_EXPORTER_OTLP_{}_ENDPOINT",
            signal.as_str().to_ascii_uppercase()
        );
        if let Some(url) = self.vars.get(&specific) {
            return Some(EnvValue {
                name: specific,
                value: url.clone(),
            });
        }
        let name = "OTEL_EXPORTER_OTLP_ENDPOINT".to_string();
        let base = self.vars.get(&name)?;
        let url = format!("{}/v1/{}", base.trim_end_matches('/'), signal.as_str());
        Some(EnvValue { name, value: url })
    }

    /// The OTLP/gRPC endpoint of `signal` (or the generic one for `None`), used as it is.
    pub fn grpc_endpoint(&self, signal: Option<Signal>) -> Option<EnvValue> {
        self.get(signal, "ENDPOINT")
    }

    /// Whether any endpoint variable applies to `signal`.
    pub fn has_endpoint(&self, signal: Signal) -> bool {
        self.get(Some(signal), "ENDPOINT").is_some()
    }

    /// The headers: `key1=value1,key2=value2`, values percent-decoded. Messages never
    /// include a value: headers carry credentials.
    pub fn headers(
        &self,
        signal: Option<Signal>,
    ) -> Result<Option<BTreeMap<String, Secret>>, String> {
        let Some(var) = self.get(signal, "HEADERS") else {
            return Ok(None);
        };
        parse_headers(&var.value)
            .map(Some)
            .map_err(|e| format!("{}: {e}", var.name))
    }

    /// The compression: `gzip` or `none`.
    pub fn compression(&self, signal: Option<Signal>) -> Result<Option<Compression>, String> {
        let Some(var) = self.get(signal, "COMPRESSION") else {
            return Ok(None);
        };
        match var.value.to_ascii_lowercase().as_str() {
            "gzip" => Ok(Some(Compression::Gzip)),
            "none" => Ok(Some(Compression::None)),
            other => Err(format!(
                "{}={other:?} is not a compression: use gzip or none",
                var.name
            )),
        }
    }

    /// The timeout, in milliseconds.
    pub fn timeout(&self, signal: Option<Signal>) -> Result<Option<Duration>, String> {
        let Some(var) = self.get(signal, "TIMEOUT") else {
            return Ok(None);
        };
        match var.value.parse::<u64>() {
            Ok(0) => Err(format!("{} must be greater than 0", var.name)),
            Ok(millis) => Ok(Some(Duration::from_millis(millis))),
            Err(_) => Err(format!(
                "{}={:?} is not a number of milliseconds",
                var.name, var.value
            )),
        }
    }

    /// The protocol; `http/protobuf` when unset, the specification's default.
    pub fn protocol(&self, signal: Option<Signal>) -> Result<Protocol, String> {
        let Some(var) = self.get(signal, "PROTOCOL") else {
            return Ok(Protocol::HttpProtobuf);
        };
        match var.value.as_str() {
            "grpc" => Ok(Protocol::Grpc),
            "http/protobuf" => Ok(Protocol::HttpProtobuf),
            "http/json" => Ok(Protocol::HttpJson),
            other => Err(format!(
                "{}={other:?} is not a protocol: use grpc, http/protobuf or http/json",
                var.name
            )),
        }
    }
}

/// Parses the W3C-Baggage-like header list: comma-separated `key=value`, both trimmed, the
/// value percent-decoded.
pub fn parse_headers(text: &str) -> Result<BTreeMap<String, Secret>, String> {
    let mut headers = BTreeMap::new();
    for (index, entry) in text.split(',').enumerate() {
        if entry.trim().is_empty() {
            continue;
        }
        let Some((key, value)) = entry.split_once('=') else {
            return Err(format!(
                "entry {} is not key=value (values are not shown: they may be secrets)",
                index + 1
            ));
        };
        let key = key.trim();
        if key.is_empty() {
            return Err(format!("entry {} has an empty key", index + 1));
        }
        let value = percent_decode(value.trim())
            .ok_or_else(|| format!("the value of {key:?} is not valid percent-encoded UTF-8"))?;
        headers.insert(key.to_string(), Secret::new(value));
    }
    Ok(headers)
}

fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Gives every pipeline that lists no exporter an OTLP exporter built from the environment,
/// when an endpoint variable applies to its signal. Pipelines whose signals resolve to the same
/// settings share one exporter, `otlp_env`; when they differ (a per-signal protocol, gRPC
/// endpoint, headers, compression or timeout), each signal gets its own, `otlp_env_<signal>`.
/// A pipeline left without exporters is reported by the graph, with a hint about the variables.
pub fn add_env_exporters(config: &mut Config, env: &OtlpEnv) -> Result<(), Vec<ConfigError>> {
    let mut errors = Vec::new();
    // (type, settings shared by the group, signals) in pipeline order.
    let mut groups: Vec<(&'static str, toml::Table, Vec<Signal>)> = Vec::new();
    let mut wanting: Vec<(String, Signal)> = Vec::new();
    for pipeline in config.pipelines.values() {
        if !pipeline.exporters.is_empty() || !env.has_endpoint(pipeline.signal) {
            continue;
        }
        let path = KeyPath::of(&["pipelines", &pipeline.name, "exporters"]);
        match exporter_table(env, pipeline.signal) {
            Ok((type_name, table)) => {
                wanting.push((pipeline.name.clone(), pipeline.signal));
                let shared = shared_part(type_name, &table);
                match groups
                    .iter_mut()
                    .find(|(t, s, _)| *t == type_name && shared_part(t, s) == shared)
                {
                    Some((_, group_table, signals)) => {
                        if !signals.contains(&pipeline.signal) {
                            signals.push(pipeline.signal);
                            group_table.extend(table);
                        }
                    }
                    None => groups.push((type_name, table, vec![pipeline.signal])),
                }
            }
            Err(message) => errors.push(ConfigError::new(
                path,
                format!("no exporter is listed and the OTLP environment variables are invalid: {message}"),
            )),
        }
    }
    let single = groups.len() == 1;
    for (type_name, table, signals) in groups {
        let id = if single {
            ENV_EXPORTER.to_string()
        } else {
            let names: Vec<&str> = signals.iter().map(|s| s.as_str()).collect();
            format!("{ENV_EXPORTER}_{}", names.join("_"))
        };
        if config.exporters.contains_key(&id) {
            errors.push(ConfigError::new(
                KeyPath::of(&["exporters", &id]),
                format!(
                    "{id:?} is the name of the exporter built from OTEL_EXPORTER_OTLP_* for the pipelines without exporters; rename this one"
                ),
            ));
            continue;
        }
        tracing::info!(
            exporter = %id,
            r#type = type_name,
            "pipelines without exporters send {} to the OTLP endpoint of the environment",
            signals.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
        );
        config.exporters.insert(
            id.clone(),
            ComponentSettings::new(ComponentKind::Exporter, &id, type_name, table),
        );
        for (name, signal) in &wanting {
            if signals.contains(signal)
                && let Some(pipeline) = config.pipelines.get_mut(name)
            {
                pipeline.exporters.push(id.clone());
            }
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// The exporter type and table the environment defines for `signal`, every value explicit so
/// that exporters serving different signals cannot mix their settings.
fn exporter_table(env: &OtlpEnv, signal: Signal) -> Result<(&'static str, toml::Table), String> {
    let protocol = env.protocol(Some(signal))?;
    let mut table = toml::Table::new();
    let type_name = match protocol {
        Protocol::Grpc => {
            let endpoint = env
                .grpc_endpoint(Some(signal))
                .ok_or("no endpoint variable is set")?;
            table.insert("endpoint".into(), endpoint.value.into());
            "otlp_grpc"
        }
        Protocol::HttpProtobuf | Protocol::HttpJson => {
            let url = env.http_url(signal).ok_or("no endpoint variable is set")?;
            table.insert(format!("{signal}_endpoint"), url.value.into());
            if protocol == Protocol::HttpJson {
                table.insert("encoding".into(), "json".into());
            }
            "otlp_http"
        }
    };
    if let Some(headers) = env.headers(Some(signal))? {
        let headers: toml::Table = headers
            .into_iter()
            .map(|(k, v)| (k, toml::Value::String(v.expose().to_string())))
            .collect();
        table.insert("headers".into(), headers.into());
    }
    if let Some(compression) = env.compression(Some(signal))? {
        let name = match compression {
            Compression::Gzip => "gzip",
            Compression::None => "none",
        };
        table.insert("compression".into(), name.into());
    }
    if let Some(timeout) = env.timeout(Some(signal))? {
        table.insert(
            "timeout".into(),
            format!("{}ms", timeout.as_millis()).into(),
        );
    }
    Ok((type_name, table))
}

/// The part of an env exporter's table that must be equal for signals to share it: all of it,
/// except the per-signal URLs of `otlp_http`.
fn shared_part(type_name: &str, table: &toml::Table) -> toml::Table {
    let mut shared = table.clone();
    if type_name == "otlp_http" {
        for signal in Signal::ALL {
            shared.remove(&format!("{signal}_endpoint"));
        }
    }
    shared
}

#[cfg(test)]
mod tests;
