//! The admin server, on loopback by default: liveness and readiness, Sluice's own metrics,
//! `/status` (a JSON account of what runs and how it is doing), `POST /reload` and `/tap`
//! (the data leaving any component, live). With `service.admin_token` set, everything but the
//! probes (`/healthz`, `/readyz`) needs it as a bearer token.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::Router;
use axum::body::Body;
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::error::StartError;
use crate::signal::Signal;
use crate::status::ExporterStatusReport;
use crate::tap_render::{TapFilter, TapFormat, render_items};
use crate::telemetry::Telemetry;

/// What the process runs: the facts `/status` reports besides the live counters.
#[derive(Clone)]
pub struct ServiceInfo {
    inner: Arc<Mutex<LoadedConfig>>,
    ready: Arc<AtomicBool>,
    admin_token: Arc<Mutex<Option<String>>>,
    started: Instant,
    started_at: SystemTime,
}

#[derive(Clone, Serialize)]
struct LoadedConfig {
    path: PathBuf,
    /// SHA-256 of the config file's text, so two instances can be compared at a glance.
    sha256: String,
    loaded_at: String,
    /// Why the last reload was refused, if it was; cleared by a successful one.
    last_reload_error: Option<String>,
    last_reload_error_time: Option<String>,
    /// The pipelines of the loaded config.
    pipelines: BTreeMap<String, PipelineShape>,
}

/// A pipeline as configured: what `/status` shows for it.
#[derive(Clone, Debug, Serialize)]
pub struct PipelineShape {
    pub signal: Signal,
    pub receivers: Vec<String>,
    pub processors: Vec<String>,
    pub exporters: Vec<String>,
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
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
                last_reload_error_time: None,
                pipelines: BTreeMap::new(),
            })),
            ready: Arc::new(AtomicBool::new(false)),
            admin_token: Arc::new(Mutex::new(None)),
            started: Instant::now(),
            started_at: now,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LoadedConfig> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn loaded(&self) -> LoadedConfig {
        self.lock().clone()
    }

    /// Records a successfully loaded (or reloaded) config.
    pub fn loaded_config(
        &self,
        path: PathBuf,
        text: &[u8],
        pipelines: BTreeMap<String, PipelineShape>,
    ) {
        let mut loaded = self.lock();
        loaded.path = path;
        loaded.sha256 = sha256_hex(text);
        loaded.loaded_at = now_rfc3339();
        loaded.last_reload_error = None;
        loaded.last_reload_error_time = None;
        loaded.pipelines = pipelines;
    }

    /// Records why a reload was refused; the running config stays as it was.
    pub fn reload_failed(&self, error: &str) {
        let mut loaded = self.lock();
        loaded.last_reload_error = Some(error.to_string());
        loaded.last_reload_error_time = Some(now_rfc3339());
    }

    /// Marks every receiver listening and every pipeline built (`/readyz` answers 200), or not.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    /// Sets the bearer token the admin endpoints require (`None`: no token).
    pub fn set_admin_token(&self, token: Option<String>) {
        *self.admin_token.lock().unwrap_or_else(|p| p.into_inner()) = token;
    }

    fn authorized(&self, headers: &HeaderMap) -> bool {
        let token = self.admin_token.lock().unwrap_or_else(|p| p.into_inner());
        let Some(token) = token.as_deref() else {
            return true;
        };
        headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|given| constant_time_eq(given.as_bytes(), token.as_bytes()))
    }
}

/// Compares without returning early, so response timing says nothing about the token.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn sha256_hex(text: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(text))
}

/// A request to reload the config, answered with what changed or why it was refused.
pub struct ReloadRequest {
    pub reply: oneshot::Sender<Result<String, String>>,
}

#[derive(Serialize)]
struct StatusReport {
    version: &'static str,
    started_at: String,
    uptime_seconds: u64,
    ready: bool,
    config: LoadedConfig,
    receivers: BTreeMap<String, CounterReport>,
    processors: BTreeMap<String, CounterReport>,
    exporters: BTreeMap<String, ExporterReport>,
    /// Every internal gauge (`name{labels}`): tail-sampling buffers, series counts, requests
    /// in flight, queue sizes.
    gauges: BTreeMap<String, f64>,
}

#[derive(Serialize, Default)]
struct CounterReport {
    #[serde(skip_serializing_if = "Option::is_none")]
    accepted: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    refused: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dropped: Option<u64>,
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

/// Sums counter `name` by the value of its label `by`.
fn counter_sums(
    families: &[prometheus::proto::MetricFamily],
    name: &str,
    by: &str,
) -> BTreeMap<String, u64> {
    let mut sums = BTreeMap::new();
    for family in families.iter().filter(|f| f.name() == name) {
        for metric in family.get_metric() {
            let Some(label) = metric.get_label().iter().find(|l| l.name() == by) else {
                continue;
            };
            *sums.entry(label.value().to_string()).or_default() +=
                metric.get_counter().get_value() as u64;
        }
    }
    sums
}

fn gauges(families: &[prometheus::proto::MetricFamily]) -> BTreeMap<String, f64> {
    let mut gauges = BTreeMap::new();
    for family in families
        .iter()
        .filter(|f| f.get_field_type() == prometheus::proto::MetricType::GAUGE)
    {
        for metric in family.get_metric() {
            let labels: Vec<String> = metric
                .get_label()
                .iter()
                .map(|l| format!("{}=\"{}\"", l.name(), l.value()))
                .collect();
            gauges.insert(
                format!("{}{{{}}}", family.name(), labels.join(",")),
                metric.get_gauge().get_value(),
            );
        }
    }
    gauges
}

fn status_report(telemetry: &Telemetry, info: &ServiceInfo) -> StatusReport {
    let families = telemetry.registry().gather();
    let mut receivers: BTreeMap<String, CounterReport> = BTreeMap::new();
    for (id, accepted) in counter_sums(
        &families,
        "sluice_receiver_accepted_items_total",
        "receiver",
    ) {
        receivers.entry(id).or_default().accepted = Some(accepted);
    }
    for (id, refused) in counter_sums(&families, "sluice_receiver_refused_items_total", "receiver")
    {
        receivers.entry(id).or_default().refused = Some(refused);
    }
    let processors = counter_sums(
        &families,
        "sluice_processor_dropped_items_total",
        "processor",
    )
    .into_iter()
    .map(|(id, dropped)| {
        (
            id,
            CounterReport {
                dropped: Some(dropped),
                ..CounterReport::default()
            },
        )
    })
    .collect();
    let discarded = counter_sums(
        &families,
        "sluice_exporter_discarded_items_total",
        "exporter",
    );
    let exporters = telemetry
        .status()
        .exporters()
        .into_iter()
        .map(|(id, status)| {
            let counters = Signal::ALL.map(|signal| telemetry.exporter(&id, signal));
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
                    + discarded.get(&id).copied().unwrap_or(0),
            };
            (id, report)
        })
        .collect();
    StatusReport {
        version: env!("CARGO_PKG_VERSION"),
        started_at: humantime::format_rfc3339_seconds(info.started_at).to_string(),
        uptime_seconds: info.started.elapsed().as_secs(),
        ready: info.ready.load(Ordering::Relaxed),
        config: info.loaded(),
        receivers,
        processors,
        exporters,
        gauges: gauges(&families),
    }
}

/// The value of query parameter `name` in `uri`, percent-decoded.
fn query_param(uri: &Uri, name: &str) -> Option<String> {
    uri.query()?.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (key == name).then(|| percent_decode(value))
    })
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match u8::from_str_radix(&text[i + 1..i + 3], 16) {
                Ok(byte) => {
                    out.push(byte);
                    i += 2;
                }
                Err(_) => out.push(b'%'),
            },
            byte => out.push(byte),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn plain(status: StatusCode, text: String) -> Response {
    (status, [(CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response()
}

fn unauthorized() -> Response {
    plain(
        StatusCode::UNAUTHORIZED,
        "this admin endpoint needs Authorization: Bearer <service.admin_token>\n".to_string(),
    )
}

/// Streams what leaves a component: `?component=NAME&format=json|text&limit=N&where=K=V&rate=N`.
fn tap(telemetry: &Telemetry, uri: &Uri, stop: CancellationToken) -> Response {
    let Some(component) = query_param(uri, "component") else {
        return plain(
            StatusCode::BAD_REQUEST,
            "name the component: /tap?component=NAME\n".to_string(),
        );
    };
    let point = match telemetry.taps().find(&component) {
        Ok(point) => point,
        Err(message) => return plain(StatusCode::NOT_FOUND, message + "\n"),
    };
    let format = match query_param(uri, "format").as_deref() {
        None | Some("json") => TapFormat::Json,
        Some("text") => TapFormat::Text,
        Some(other) => {
            return plain(
                StatusCode::BAD_REQUEST,
                format!("unknown format {other:?}: use json or text\n"),
            );
        }
    };
    let filter = match query_param(uri, "where") {
        None => None,
        Some(condition) => match TapFilter::parse(&condition) {
            Ok(filter) => Some(filter),
            Err(message) => return plain(StatusCode::BAD_REQUEST, message + "\n"),
        },
    };
    let numeric = |name: &str, default: u64| -> Result<u64, String> {
        match query_param(uri, name) {
            None => Ok(default),
            Some(text) => text
                .parse()
                .map_err(|_| format!("{name} must be a whole number, not {text:?}\n")),
        }
    };
    let (limit, rate) = match (numeric("limit", 0), numeric("rate", 100)) {
        (Ok(limit), Ok(rate)) => (limit, rate.max(1)),
        (Err(message), _) | (_, Err(message)) => {
            return plain(StatusCode::BAD_REQUEST, message);
        }
    };
    let (lines, body) = mpsc::channel::<Bytes>(16);
    let name = point.name().to_string();
    let mut watch = point.watch();
    tokio::spawn(async move {
        let mut sent = 0u64;
        let mut skipped = 0u64;
        // A token bucket refilled every second: at most `rate` items per second go out.
        let mut budget = rate;
        let mut refill = tokio::time::interval(Duration::from_secs(1));
        refill.tick().await;
        loop {
            let batch = tokio::select! {
                batch = watch.next() => match batch {
                    Some(batch) => batch,
                    None => return,
                },
                _ = refill.tick() => {
                    budget = rate;
                    skipped += watch.take_skipped();
                    if skipped > 0 {
                        let note = match format {
                            TapFormat::Json => format!("{{\"skipped\":{skipped}}}\n"),
                            TapFormat::Text => format!("# skipped {skipped} items (viewer behind or over the rate)\n"),
                        };
                        skipped = 0;
                        if lines.send(Bytes::from(note)).await.is_err() {
                            return;
                        }
                    }
                    continue;
                }
                _ = lines.closed() => return,
                // The admin server is stopping: end the stream so shutdown need not wait for
                // a viewer that would never hang up.
                _ = stop.cancelled() => return,
            };
            for line in render_items(&name, batch, format, filter.as_ref()) {
                if budget == 0 {
                    skipped += 1;
                    continue;
                }
                budget -= 1;
                if lines.send(Bytes::from(line)).await.is_err() {
                    return;
                }
                sent += 1;
                if limit > 0 && sent >= limit {
                    return;
                }
            }
        }
    });
    let stream = futures_util::stream::unfold(body, |mut body| async move {
        let line = body.recv().await?;
        Some((Ok::<Bytes, Infallible>(line), body))
    });
    let content_type = match format {
        TapFormat::Json => "application/x-ndjson",
        TapFormat::Text => "text/plain; charset=utf-8",
    };
    ([(CONTENT_TYPE, content_type)], Body::from_stream(stream)).into_response()
}

/// A running admin server.
pub struct AdminServer {
    address: SocketAddr,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl AdminServer {
    /// Binds `address` and serves the admin API; reload requests go to `reload`.
    pub async fn start(
        address: SocketAddr,
        telemetry: Telemetry,
        info: ServiceInfo,
        reload: mpsc::Sender<ReloadRequest>,
    ) -> Result<AdminServer, StartError> {
        let listener = TcpListener::bind(address).await.map_err(|e| StartError {
            component: "service.admin".to_string(),
            message: format!("cannot listen on {address}: {e}"),
        })?;
        let address = listener.local_addr().unwrap_or(address);
        let stop = CancellationToken::new();
        let router = router(telemetry, info, reload, stop.clone());
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            let served = axum::serve(listener, router)
                .with_graceful_shutdown(async move { stopped.cancelled().await })
                .await;
            if let Err(e) = served {
                tracing::error!(error = %e, "admin server failed");
            }
        });
        tracing::info!(
            %address,
            "admin server listening (/healthz, /readyz, /status, /metrics, /reload, /tap)"
        );
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

fn router(
    telemetry: Telemetry,
    info: ServiceInfo,
    reload: mpsc::Sender<ReloadRequest>,
    stop: CancellationToken,
) -> Router {
    let ready = info.clone();
    let status = (telemetry.clone(), info.clone());
    let metrics = (telemetry.clone(), info.clone());
    let taps = (telemetry, info.clone());
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let ready = ready.ready.load(Ordering::Relaxed);
                async move {
                    if ready {
                        plain(StatusCode::OK, "ready\n".to_string())
                    } else {
                        plain(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "not ready: pipelines are starting or stopping\n".to_string(),
                        )
                    }
                }
            }),
        )
        .route(
            "/status",
            get(move |headers: HeaderMap| {
                let (telemetry, info) = status.clone();
                async move {
                    if !info.authorized(&headers) {
                        return unauthorized();
                    }
                    let report = status_report(&telemetry, &info);
                    let body = serde_json::to_string_pretty(&report)
                        .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
                    ([(CONTENT_TYPE, "application/json")], body + "\n").into_response()
                }
            }),
        )
        .route(
            "/metrics",
            get(move |headers: HeaderMap| {
                let (telemetry, info) = metrics.clone();
                async move {
                    if !info.authorized(&headers) {
                        return unauthorized();
                    }
                    (
                        [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
                        telemetry.render(),
                    )
                        .into_response()
                }
            }),
        )
        .route(
            "/reload",
            post(move |headers: HeaderMap| {
                let reload = reload.clone();
                let authorized = info.authorized(&headers);
                async move {
                    if !authorized {
                        return unauthorized();
                    }
                    let (reply, answer) = oneshot::channel();
                    if reload.send(ReloadRequest { reply }).await.is_err() {
                        return plain(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "sluice is shutting down\n".to_string(),
                        );
                    }
                    match answer.await {
                        Ok(Ok(summary)) => plain(StatusCode::OK, summary + "\n"),
                        Ok(Err(error)) => plain(StatusCode::BAD_REQUEST, error + "\n"),
                        Err(_) => plain(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "sluice is shutting down\n".to_string(),
                        ),
                    }
                }
            }),
        )
        .route(
            "/tap",
            get(move |headers: HeaderMap, uri: Uri| {
                let (telemetry, info) = taps.clone();
                let stop = stop.clone();
                async move {
                    if !info.authorized(&headers) {
                        return unauthorized();
                    }
                    tap(&telemetry, &uri, stop)
                }
            }),
        )
}
