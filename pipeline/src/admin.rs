//! The admin server, on loopback by default: liveness, Sluice's own metrics, and `/status`, a
//! JSON account of what the process runs and how each exporter's backend is doing.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use axum::Router;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::error::StartError;
use crate::signal::Signal;
use crate::status::ExporterStatusReport;
use crate::telemetry::Telemetry;

/// What the process runs: the facts `/status` reports besides the live counters.
#[derive(Clone)]
pub struct ServiceInfo {
    inner: Arc<Mutex<LoadedConfig>>,
    started: Instant,
    started_at: SystemTime,
}

#[derive(Clone, Serialize)]
struct LoadedConfig {
    path: PathBuf,
    /// SHA-256 of the config file's text, so two instances can be compared at a glance.
    sha256: String,
    loaded_at: String,
    /// Why the last reload was refused, if it was.
    last_reload_error: Option<String>,
}

impl ServiceInfo {
    /// The info of a process that loaded `text` from `path` just now.
    pub fn new(path: PathBuf, text: &[u8]) -> ServiceInfo {
        let now = SystemTime::now();
        ServiceInfo {
            inner: Arc::new(Mutex::new(LoadedConfig {
                path,
                sha256: sha256_hex(text),
                loaded_at: humantime::format_rfc3339_seconds(now).to_string(),
                last_reload_error: None,
            })),
            started: Instant::now(),
            started_at: now,
        }
    }

    fn loaded(&self) -> LoadedConfig {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

fn sha256_hex(text: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(text))
}

#[derive(Serialize)]
struct StatusReport {
    version: &'static str,
    started_at: String,
    uptime_seconds: u64,
    config: LoadedConfig,
    exporters: BTreeMap<String, ExporterReport>,
}

#[derive(Serialize)]
struct ExporterReport {
    #[serde(flatten)]
    status: ExporterStatusReport,
    queue: QueueReport,
    /// Items the backend accepted.
    sent: u64,
    /// Items dropped after failed sends.
    failed: u64,
    /// Items dropped because the queue was full, or discarded while disabled.
    dropped: u64,
}

#[derive(Serialize)]
struct QueueReport {
    size: i64,
    capacity: i64,
}

fn status_report(telemetry: &Telemetry, info: &ServiceInfo) -> StatusReport {
    let exporters = telemetry
        .status()
        .exporters()
        .into_iter()
        .map(|(id, status)| {
            let counters = Signal::ALL.map(|signal| telemetry.exporter(&id, signal));
            let discarded = telemetry.counter_vec(
                "sluice_exporter_discarded_items_total",
                "Items sent to an exporter that is disabled (enabled = false), so not sent anywhere.",
                &["exporter", "signal"],
            );
            let queue = telemetry.exporter_queue(&id);
            let report = ExporterReport {
                status,
                queue: QueueReport {
                    size: queue.size.get(),
                    capacity: queue.capacity.get(),
                },
                sent: counters.iter().map(|c| c.sent.get()).sum(),
                failed: counters.iter().map(|c| c.send_failed.get()).sum(),
                dropped: counters.iter().map(|c| c.enqueue_failed.get()).sum::<u64>()
                    + Signal::ALL
                        .iter()
                        .map(|s| discarded.with_label_values(&[&id, s.as_str()]).get())
                        .sum::<u64>(),
            };
            (id, report)
        })
        .collect();
    StatusReport {
        version: env!("CARGO_PKG_VERSION"),
        started_at: humantime::format_rfc3339_seconds(info.started_at).to_string(),
        uptime_seconds: info.started.elapsed().as_secs(),
        config: info.loaded(),
        exporters,
    }
}

/// A running admin server.
pub struct AdminServer {
    address: SocketAddr,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl AdminServer {
    /// Binds `address` and serves `/healthz`, `/metrics` and `/status`.
    pub async fn start(
        address: SocketAddr,
        telemetry: Telemetry,
        info: ServiceInfo,
    ) -> Result<AdminServer, StartError> {
        let listener = TcpListener::bind(address).await.map_err(|e| StartError {
            component: "service.admin".to_string(),
            message: format!("cannot listen on {address}: {e}"),
        })?;
        let address = listener.local_addr().unwrap_or(address);
        let status_telemetry = telemetry.clone();
        let router =
            Router::new()
                .route("/healthz", get(|| async { "ok\n" }))
                .route(
                    "/status",
                    get(move || {
                        let report = status_report(&status_telemetry, &info);
                        let body = serde_json::to_string_pretty(&report)
                            .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
                        async move {
                            ([(CONTENT_TYPE, "application/json")], body + "\n").into_response()
                        }
                    }),
                )
                .route(
                    "/metrics",
                    get(move || {
                        let body = telemetry.render();
                        async move {
                            (
                                [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
                                body,
                            )
                                .into_response()
                        }
                    }),
                );
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            let served = axum::serve(listener, router)
                .with_graceful_shutdown(async move { stopped.cancelled().await })
                .await;
            if let Err(e) = served {
                tracing::error!(error = %e, "admin server failed");
            }
        });
        tracing::info!(%address, "admin server listening (/healthz, /metrics, /status)");
        Ok(AdminServer {
            address,
            stop,
            task,
        })
    }

    /// The address it listens on.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Stops serving.
    pub async fn shutdown(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}
