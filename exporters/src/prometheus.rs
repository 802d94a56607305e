//! The `prometheus` exporter: serves the metrics it receives on `GET /metrics` for Prometheus
//! (or Grafana Alloy, or any OpenMetrics scraper) to pull.
//!
//! Exporting only updates an in-memory store ([`store`]); a scrape renders a snapshot of it
//! ([`exposition`]) in the Prometheus text format 0.0.4, or OpenMetrics 1.0 when asked, gzipped
//! when accepted ([`server`]). OTLP metrics are translated as the OpenTelemetry "Prometheus and
//! OpenMetrics Compatibility" specification says ([`conversion`]). Metrics only.

mod config;
mod conversion;
mod exposition;
mod server;
mod store;

#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use sluice_pipeline::{
    Batch, ComponentSettings, ConfigError, ExportError, Exporter, ExporterContext, ExporterFactory,
    Request, Signal, StartError,
};
use tokio::net::TcpListener;

pub use self::config::Config;
use self::conversion::Converter;
use self::server::{Scraper, Server};
use self::store::{Store, StoreMetrics};

/// Builds `prometheus` exporters.
pub struct PrometheusFactory;

impl ExporterFactory for PrometheusFactory {
    fn type_name(&self) -> &'static str {
        "prometheus"
    }

    fn signals(&self) -> &'static [Signal] {
        &[Signal::Metrics]
    }

    fn build(&self, settings: &ComponentSettings) -> Result<Box<dyn Exporter>, ConfigError> {
        let config: Config = settings.parse()?;
        Ok(Box::new(PrometheusExporter::new(settings, config)?))
    }
}

/// Keeps the latest value of every series and serves them to scrapers.
pub struct PrometheusExporter {
    location: String,
    endpoint: SocketAddr,
    config: Config,
    converter: Converter,
    /// Set by `start`: the store exports write to.
    store: OnceLock<Arc<Store>>,
    server: Mutex<Option<Server>>,
}

impl PrometheusExporter {
    /// Checks the configuration; binds nothing until `start`.
    pub fn new(settings: &ComponentSettings, config: Config) -> Result<Self, ConfigError> {
        let endpoint = config.validate(settings)?;
        Ok(PrometheusExporter {
            location: settings.path().to_string(),
            endpoint,
            converter: Converter::new(&config),
            config,
            store: OnceLock::new(),
            server: Mutex::new(None),
        })
    }

    /// The address the scrape endpoint listens on, once started (the real port when the
    /// endpoint's is 0).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.lock_server().as_ref().map(Server::local_addr)
    }

    fn lock_server(&self) -> std::sync::MutexGuard<'_, Option<Server>> {
        self.server.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The constant labels as exposition text.
    fn const_label_text(&self) -> String {
        let mut text = String::new();
        for (name, value) in &self.config.const_labels {
            if value.is_empty() {
                continue;
            }
            if !text.is_empty() {
                text.push(',');
            }
            text.push_str(name);
            text.push_str("=\"");
            conversion::escape_label_value(&mut text, value);
            text.push('"');
        }
        text
    }
}

/// How often expired series are removed when nobody scrapes: often enough that memory follows
/// the expiration closely, rarely enough to cost nothing.
fn sweep_interval(expiration: Duration) -> Duration {
    (expiration / 4).clamp(Duration::from_secs(1), Duration::from_secs(60))
}

#[async_trait]
impl Exporter for PrometheusExporter {
    async fn start(&mut self, ctx: &ExporterContext) -> Result<(), StartError> {
        let start_error = |message: String| StartError {
            component: self.location.clone(),
            message,
        };
        let listener = TcpListener::bind(self.endpoint).await.map_err(|e| {
            start_error(format!(
                "cannot listen on {} for scrapes: {e}",
                self.endpoint
            ))
        })?;
        let store = Arc::new(Store::new(
            self.config.max_series_per_metric,
            self.config.metric_expiration,
            &self.const_label_text(),
            StoreMetrics::new(&ctx.telemetry, &ctx.id),
        ));
        let scraper = Arc::new(Scraper::new(store.clone(), self.config.enable_open_metrics));
        let server = Server::start(
            listener,
            scraper,
            sweep_interval(self.config.metric_expiration),
        )
        .map_err(|e| start_error(format!("cannot serve on {}: {e}", self.endpoint)))?;
        tracing::info!(exporter = %ctx.id, addr = %server.local_addr(), "serving Prometheus scrapes on /metrics");
        *self.lock_server() = Some(server);
        // `start` runs once per exporter; a second call keeps the first store.
        let _ = self.store.set(store);
        Ok(())
    }

    async fn export(&self, mut batch: Batch) -> Result<(), ExportError> {
        let Some(store) = self.store.get() else {
            return Err(ExportError::permanent("the exporter was not started"));
        };
        let request = batch
            .request()
            .map_err(|e| ExportError::permanent(format!("batch is not valid OTLP: {e}")))?;
        let Request::Metrics(request) = request else {
            return Err(ExportError::permanent(format!(
                "the prometheus exporter takes metrics, not {}",
                request.signal()
            )));
        };
        let now = Instant::now();
        for update in self.converter.convert(request) {
            store.apply(update.family, update.series, now);
        }
        Ok(())
    }

    async fn shutdown(&self) {
        let server = self.lock_server().take();
        if let Some(server) = server {
            server.shutdown().await;
        }
    }
}
