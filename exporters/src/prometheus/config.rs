//! The `prometheus` exporter's configuration and its checks.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;
use sluice_pipeline::{ComponentSettings, ConfigError};

/// Configuration of a `prometheus` exporter.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The address the scrape endpoint listens on, as `"host:port"` with an IP address.
    /// Prometheus scrapes `GET /metrics` there.
    #[serde(default = "default_endpoint")]
    pub endpoint: String,
    /// A prefix put before every metric name, joined with `_` (`"ai"` makes
    /// `ai_gen_ai_client_token_usage`). Empty: no prefix.
    #[serde(default)]
    pub namespace: String,
    /// Labels added to every series, e.g. `{ region = "eu-1" }`. They win over a data point's
    /// attribute of the same name.
    #[serde(default)]
    pub const_labels: BTreeMap<String, String>,
    /// Series not updated for this long are no longer exposed (and their memory is freed).
    #[serde(
        default = "default_metric_expiration",
        with = "sluice_pipeline::config::duration"
    )]
    pub metric_expiration: Duration,
    /// Resource attributes copied onto every series as labels (`service.name` becomes
    /// `service_name`). Every resource attribute is in `target_info` whether copied or not.
    #[serde(default)]
    pub resource_to_labels: Vec<String>,
    /// The most series one metric exposes. Data points of new label sets past it are added to
    /// the metric's one overflow series, labelled `otel_metric_overflow="true"`, and counted in
    /// `sluice_prometheus_series_dropped_total`.
    #[serde(default = "default_max_series_per_metric")]
    pub max_series_per_metric: usize,
    /// Per metric, the only data point attributes kept as labels. Keys are metric names, either
    /// as in OTLP (`"gen_ai.client.token.usage"`) or as exposed (`"gen_ai_client_token_usage"`,
    /// with or without a counter's `_total`); values are attribute names, either form too.
    /// Series that differ only in dropped attributes are added together (gauges keep the
    /// latest value); an empty list folds the metric into one series per resource.
    #[serde(default)]
    pub label_allowlist: BTreeMap<String, Vec<String>>,
    /// Append the unit (`_seconds`, `_bytes`, `_ratio` for gauges of unit `1`) and, on counters,
    /// `_total` to metric names, as the OpenTelemetry compatibility specification says. `false`
    /// exposes the sanitised OTLP names as they are.
    #[serde(default = "default_true")]
    pub add_metric_suffixes: bool,
    /// Answer in OpenMetrics 1.0 text when the scraper's `Accept` header asks for it
    /// (Prometheus does). `false`: always the Prometheus text format 0.0.4.
    #[serde(default = "default_true")]
    pub enable_open_metrics: bool,
    /// Expose each resource's attributes as a `target_info` series (value 1), with `job` and
    /// `instance` from `service.namespace`/`service.name` and `service.instance.id`.
    #[serde(default = "default_true")]
    pub target_info: bool,
}

fn default_endpoint() -> String {
    "127.0.0.1:9464".to_string()
}

fn default_metric_expiration() -> Duration {
    Duration::from_secs(5 * 60)
}

/// The OpenTelemetry SDKs' default cardinality limit, and the gateway's.
fn default_max_series_per_metric() -> usize {
    2000
}

fn default_true() -> bool {
    true
}

/// Whether `name` is a valid Prometheus label name that is not reserved (`__` prefix).
pub(crate) fn is_valid_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    let Some(first) = chars.next() else {
        return false;
    };
    (first.is_ascii_alphabetic() || first == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with("__")
}

impl Config {
    /// Checks the values serde cannot; returns the listen address.
    pub(crate) fn validate(&self, settings: &ComponentSettings) -> Result<SocketAddr, ConfigError> {
        let endpoint: SocketAddr = self.endpoint.parse().map_err(|_| {
            settings.error(
                "endpoint",
                format!(
                    "{:?} is not an IP address and port, e.g. \"127.0.0.1:9464\"",
                    self.endpoint
                ),
            )
        })?;
        if !self.namespace.is_empty() && !is_valid_label_name(&self.namespace) {
            return Err(settings.error(
                "namespace",
                format!(
                    "{:?} is not a valid metric name prefix (letters, digits and _, not starting with a digit)",
                    self.namespace
                ),
            ));
        }
        for name in self.const_labels.keys() {
            if !is_valid_label_name(name) {
                return Err(settings.error(
                    "const_labels",
                    format!(
                        "{name:?} is not a valid label name (letters, digits and _, not starting with a digit or __)"
                    ),
                ));
            }
            if matches!(name.as_str(), "le" | "quantile" | "otel_metric_overflow") {
                return Err(settings.error(
                    "const_labels",
                    format!("{name:?} is a label the exposition format uses itself"),
                ));
            }
        }
        if self.metric_expiration.is_zero() {
            return Err(settings.error("metric_expiration", "must be more than 0"));
        }
        if self.max_series_per_metric == 0 {
            return Err(settings.error("max_series_per_metric", "must be at least 1"));
        }
        Ok(endpoint)
    }
}
