//! The `otlp` receiver: OTLP/gRPC and OTLP/HTTP (protobuf and JSON) for traces, metrics and logs.
//!
//! Protobuf requests are never decoded here: the received bytes become the batch (checked and
//! counted by [`Batch::from_encoded`]), so pass-through costs one validation walk. JSON requests
//! are decoded into the OTLP types (see [`json`]).

mod grpc;
mod http;
mod json;
mod status;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use async_trait::async_trait;
use serde::Deserialize;
use sluice_pipeline::telemetry::ReceiverCounters;
use sluice_pipeline::{
    Batch, ComponentSettings, ConfigError, ConsumeError, Receiver, ReceiverContext,
    ReceiverFactory, Running, Signal, SignalConsumers, StartError, Telemetry,
};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use self::status::Failure;

/// Configuration of the `otlp` receiver (`[receivers.otlp]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OtlpConfig {
    /// Address to serve OTLP/gRPC on, e.g. `"127.0.0.1:4317"`. Omit it to disable gRPC.
    #[serde(default, deserialize_with = "socket_addr::deserialize")]
    pub grpc: Option<SocketAddr>,
    /// Address to serve OTLP/HTTP on (`/v1/traces`, `/v1/metrics`, `/v1/logs`), e.g.
    /// `"127.0.0.1:4318"`. Omit it to disable HTTP.
    #[serde(default, deserialize_with = "socket_addr::deserialize")]
    pub http: Option<SocketAddr>,
    /// The largest request body accepted, in bytes, both as received and after decompression
    /// (so a small gzip body that inflates past it is refused too). Larger requests get HTTP 413
    /// or gRPC RESOURCE_EXHAUSTED.
    #[serde(default = "default_max_request_body_size")]
    pub max_request_body_size: usize,
}

/// 20 MiB: room for large batches, small enough that a burst of them cannot exhaust memory.
fn default_max_request_body_size() -> usize {
    20 * 1024 * 1024
}

mod socket_addr {
    use std::net::SocketAddr;

    use serde::{Deserialize, Deserializer};

    /// Parses `"host-ip:port"`, with a message showing the expected form.
    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<SocketAddr>, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map(Some).map_err(|_| {
            serde::de::Error::custom(format!(
                "invalid address {text:?}: write an IP address and port, e.g. \"127.0.0.1:4317\" \
                 or \"0.0.0.0:4317\""
            ))
        })
    }
}

impl OtlpConfig {
    /// Parses and checks the `[receivers.<id>]` table.
    pub fn from_settings(settings: &ComponentSettings) -> Result<OtlpConfig, ConfigError> {
        let config: OtlpConfig = settings.parse()?;
        if config.grpc.is_none() && config.http.is_none() {
            return Err(ConfigError::new(
                settings.path(),
                "no transport enabled: set `grpc` and/or `http` to an address to listen on",
            ));
        }
        if config.max_request_body_size == 0 {
            return Err(settings.error("max_request_body_size", "must be greater than 0"));
        }
        if let (Some(grpc), Some(http)) = (config.grpc, config.http)
            && grpc == http
            && grpc.port() != 0
        {
            return Err(settings.error(
                "http",
                format!("the same address {http} as `grpc`: each transport needs its own port"),
            ));
        }
        Ok(config)
    }
}

/// Builds `otlp` receivers.
pub struct OtlpReceiverFactory;

impl ReceiverFactory for OtlpReceiverFactory {
    fn type_name(&self) -> &'static str {
        "otlp"
    }

    fn signals(&self) -> &'static [Signal] {
        &Signal::ALL
    }

    fn build(&self, settings: &ComponentSettings) -> Result<Box<dyn Receiver>, ConfigError> {
        Ok(Box::new(OtlpReceiver::new(OtlpConfig::from_settings(
            settings,
        )?)))
    }
}

/// An `otlp` receiver built from config, not yet listening.
pub struct OtlpReceiver {
    config: OtlpConfig,
}

impl OtlpReceiver {
    /// A receiver for `config`; nothing is bound until [`OtlpReceiver::serve`].
    pub fn new(config: OtlpConfig) -> OtlpReceiver {
        OtlpReceiver { config }
    }

    /// Binds the configured listeners and starts serving; returns once both are listening.
    pub async fn serve(self, ctx: ReceiverContext) -> Result<RunningOtlp, StartError> {
        let id = ctx.id.clone();
        let start_error = |transport: &str, addr: SocketAddr, e: std::io::Error| StartError {
            component: format!("receivers.{id}"),
            message: format!("cannot listen for OTLP/{transport} on {addr}: {e}"),
        };
        // Bind both before serving either, so a failure leaves nothing running.
        let grpc_listener = match self.config.grpc {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|e| start_error("gRPC", addr, e))?,
            ),
            None => None,
        };
        let http_listener = match self.config.http {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|e| start_error("HTTP", addr, e))?,
            ),
            None => None,
        };

        let shared = Arc::new(Shared::new(ctx, self.config.max_request_body_size));
        let stop = CancellationToken::new();
        let mut tasks = Vec::new();
        let mut grpc_addr = None;
        let mut http_addr = None;

        if let Some(listener) = grpc_listener {
            let addr = local_addr(&listener, &shared.id, "gRPC")?;
            grpc_addr = Some(addr);
            tasks.push(grpc::spawn(listener, shared.clone(), stop.clone()));
            tracing::info!(receiver = %shared.id, %addr, "OTLP/gRPC receiver listening");
        }
        if let Some(listener) = http_listener {
            let addr = local_addr(&listener, &shared.id, "HTTP")?;
            http_addr = Some(addr);
            tasks.push(http::spawn(listener, shared.clone(), stop.clone()));
            tracing::info!(receiver = %shared.id, %addr, "OTLP/HTTP receiver listening");
        }

        Ok(RunningOtlp {
            grpc_addr,
            http_addr,
            stop,
            tasks: tokio::sync::Mutex::new(tasks),
        })
    }
}

fn local_addr(listener: &TcpListener, id: &str, transport: &str) -> Result<SocketAddr, StartError> {
    listener.local_addr().map_err(|e| StartError {
        component: format!("receivers.{id}"),
        message: format!("cannot read the OTLP/{transport} listening address: {e}"),
    })
}

#[async_trait]
impl Receiver for OtlpReceiver {
    async fn start(self: Box<Self>, ctx: ReceiverContext) -> Result<Box<dyn Running>, StartError> {
        Ok(Box::new(self.serve(ctx).await?))
    }
}

/// A listening `otlp` receiver.
pub struct RunningOtlp {
    grpc_addr: Option<SocketAddr>,
    http_addr: Option<SocketAddr>,
    stop: CancellationToken,
    tasks: tokio::sync::Mutex<Vec<JoinHandle<()>>>,
}

impl RunningOtlp {
    /// The address OTLP/gRPC is served on, if enabled (the actual port when configured with 0).
    pub fn grpc_addr(&self) -> Option<SocketAddr> {
        self.grpc_addr
    }

    /// The address OTLP/HTTP is served on, if enabled (the actual port when configured with 0).
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }
}

#[async_trait]
impl Running for RunningOtlp {
    /// Stops accepting connections and waits for the requests in flight to be answered.
    async fn shutdown(&self) {
        self.stop.cancel();
        let tasks = std::mem::take(&mut *self.tasks.lock().await);
        for task in tasks {
            if let Err(e) = task.await {
                tracing::error!("OTLP receiver server task failed: {e}");
            }
        }
    }
}

/// The two transports, as named in the `transport` label of the receiver metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transport {
    Grpc,
    Http,
}

impl Transport {
    fn as_str(self) -> &'static str {
        match self {
            Transport::Grpc => "grpc",
            Transport::Http => "http",
        }
    }
}

/// What both transports share: where data goes, how it is counted, the limits.
pub(crate) struct Shared {
    id: String,
    consumers: SignalConsumers,
    /// Counters by transport then signal, looked up once here instead of per request.
    counters: [[ReceiverCounters; 3]; 2],
    max_request_body_size: usize,
    refusal_log: RateLimit,
}

impl Shared {
    fn new(ctx: ReceiverContext, max_request_body_size: usize) -> Shared {
        let counters_for = |telemetry: &Telemetry, transport: Transport| {
            Signal::ALL.map(|signal| telemetry.receiver(&ctx.id, transport.as_str(), signal))
        };
        Shared {
            counters: [
                counters_for(&ctx.telemetry, Transport::Grpc),
                counters_for(&ctx.telemetry, Transport::Http),
            ],
            id: ctx.id,
            consumers: ctx.consumers,
            max_request_body_size,
            refusal_log: RateLimit::new(),
        }
    }

    fn counters(&self, transport: Transport, signal: Signal) -> &ReceiverCounters {
        let t = match transport {
            Transport::Grpc => 0,
            Transport::Http => 1,
        };
        let s = match signal {
            Signal::Traces => 0,
            Signal::Metrics => 1,
            Signal::Logs => 2,
        };
        &self.counters[t][s]
    }

    /// Fails unless some pipeline takes `signal`; checked before reading a request body.
    pub(crate) fn check_consumer(&self, signal: Signal) -> Result<(), Failure> {
        match self.consumers.get(signal) {
            Some(_) => Ok(()),
            None => Err(Failure::NoPipeline {
                receiver: self.id.clone(),
                signal,
            }),
        }
    }

    /// Hands a batch to the pipeline, counting its items as accepted or refused.
    pub(crate) async fn deliver(&self, transport: Transport, batch: Batch) -> Result<(), Failure> {
        let signal = batch.signal();
        let Some(consumer) = self.consumers.get(signal) else {
            return Err(Failure::NoPipeline {
                receiver: self.id.clone(),
                signal,
            });
        };
        let items = batch.item_count();
        // An export with nothing in it (resources without spans, say) carries nothing to deliver.
        if items == 0 {
            return Ok(());
        }
        let counters = self.counters(transport, signal);
        match consumer.consume(batch).await {
            Ok(()) => {
                counters.accepted.inc_by(items as u64);
                Ok(())
            }
            Err(error) => {
                counters.refused.inc_by(items as u64);
                self.log_refusal(transport, signal, items, &error);
                Err(Failure::Refused(error))
            }
        }
    }

    fn log_refusal(
        &self,
        transport: Transport,
        signal: Signal,
        items: usize,
        error: &ConsumeError,
    ) {
        // Under backpressure every request is refused; one line a second says as much.
        if let Some(suppressed) = self.refusal_log.allow() {
            tracing::warn!(
                receiver = %self.id,
                transport = transport.as_str(),
                %signal,
                items,
                suppressed,
                "refused {} {}: {error}",
                items,
                signal.item_noun(),
            );
        }
    }

    /// Logs a request that could not be taken at all (malformed, too large, wrong type).
    pub(crate) fn log_bad_request(&self, transport: Transport, failure: &Failure) {
        tracing::debug!(
            receiver = %self.id,
            transport = transport.as_str(),
            "bad OTLP request: {}",
            failure.message()
        );
    }
}

/// Lets one event through per second, counting the ones held back in between.
struct RateLimit {
    origin: Instant,
    /// Milliseconds since `origin` when an event was last let through, plus one (0: never).
    last: AtomicU64,
    suppressed: AtomicU64,
}

impl RateLimit {
    fn new() -> RateLimit {
        RateLimit {
            origin: Instant::now(),
            last: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(events held back since the last one let through)` if this one may go through.
    fn allow(&self) -> Option<u64> {
        let now = self.origin.elapsed().as_millis() as u64 + 1;
        let last = self.last.load(Ordering::Relaxed);
        // Another thread may have stored a later time than ours: that counts as recent.
        if last != 0 && now.saturating_sub(last) < 1000 {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        if self
            .last
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(self.suppressed.swap(0, Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests;
