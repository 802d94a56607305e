//! The `gateway` receiver: runs Sluice's AI gateway (an OpenAI-compatible proxy, the
//! `sluice-gateway` crate) and turns its per-request events into spans, metrics and log
//! records for the pipelines that name it.
//!
//! It is configured by the top-level `[gateway]` table. The gateway answers clients and puts
//! one [`RequestEvent`] per request on a bounded channel without ever waiting; a converter task
//! drains the channel, builds a traces batch and a logs batch from whatever is waiting
//! ([`traces`], [`logs`]), aggregates metrics ([`metrics`]) and exports them every
//! `metrics_interval`. A batch the pipeline refuses is dropped and counted: telemetry never
//! slows the gateway down.

mod attributes;
mod logs;
mod metrics;
mod traces;

#[cfg(test)]
mod fixtures;
#[cfg(test)]
mod tests;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use async_trait::async_trait;
use opentelemetry_proto::tonic::common::v1::InstrumentationScope;
use opentelemetry_proto::tonic::resource::v1::Resource;
use serde::Deserialize;
use sluice_gateway::event::now_unix_nano;
use sluice_gateway::{Gateway, GatewayConfig, RequestEvent, RunningGateway};
use sluice_pipeline::config::{KeyPath, parse_value};
use sluice_pipeline::telemetry::ReceiverCounters;
use sluice_pipeline::{
    Batch, ComponentSettings, ConfigError, ConsumeError, Receiver, ReceiverContext,
    ReceiverFactory, Request, Running, Signal, SignalConsumers, StartError,
};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use self::attributes::Attributes;

/// The instrumentation scope of everything the receiver produces.
pub const SCOPE_NAME: &str = "sluice.gateway";

/// The most events turned into one traces batch and one logs batch.
const MAX_EVENTS_PER_BATCH: usize = 512;

/// The `transport` label of the receiver's accepted/refused counters.
const TRANSPORT: &str = "gateway";

/// `[gateway.telemetry]`: how the receiver reports what the gateway does. The rest of the
/// `[gateway]` table is the gateway's own configuration (see the `sluice-gateway` README).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayTelemetryConfig {
    /// The `service.name` of the resource of every span, metric and log record.
    #[serde(default = "default_service_name")]
    pub service_name: String,
    /// How often the aggregated metrics are exported (they are also exported at shutdown).
    #[serde(
        default = "default_metrics_interval",
        with = "sluice_pipeline::config::duration"
    )]
    pub metrics_interval: Duration,
    /// How many request events may wait between the gateway and the converter. The gateway
    /// never waits for room: when the converter falls this far behind (a pipeline much slower
    /// than the traffic), further events are dropped and counted in
    /// `sluice_gateway_events_dropped_total` while requests are answered as usual. Each waiting
    /// event holds its request's details (and content, when captured), so this bounds memory.
    #[serde(default = "default_event_buffer")]
    pub event_buffer: usize,
}

fn default_service_name() -> String {
    "sluice-gateway".to_string()
}

fn default_metrics_interval() -> Duration {
    Duration::from_secs(10)
}

/// A few seconds of traffic at several thousand requests per second.
fn default_event_buffer() -> usize {
    4096
}

impl Default for GatewayTelemetryConfig {
    fn default() -> Self {
        GatewayTelemetryConfig {
            service_name: default_service_name(),
            metrics_interval: default_metrics_interval(),
            event_buffer: default_event_buffer(),
        }
    }
}

impl GatewayTelemetryConfig {
    /// Parses the `telemetry` table found at `path` (defaults when `None`) and checks it.
    pub fn from_value(
        path: &KeyPath,
        value: Option<toml::Value>,
    ) -> Result<GatewayTelemetryConfig, ConfigError> {
        let config: GatewayTelemetryConfig = match value {
            Some(value) => parse_value(path, value)?,
            None => GatewayTelemetryConfig::default(),
        };
        if config.service_name.is_empty() {
            return Err(ConfigError::new(
                path.key("service_name"),
                "must not be empty",
            ));
        }
        if config.metrics_interval.is_zero() {
            return Err(ConfigError::new(
                path.key("metrics_interval"),
                "must be more than 0",
            ));
        }
        if config.event_buffer == 0 {
            return Err(ConfigError::new(
                path.key("event_buffer"),
                "must be at least 1",
            ));
        }
        Ok(config)
    }
}

/// Builds the `gateway` receiver from the `[gateway]` section.
pub struct GatewayReceiverFactory;

impl ReceiverFactory for GatewayReceiverFactory {
    fn type_name(&self) -> &'static str {
        "gateway"
    }

    fn signals(&self) -> &'static [Signal] {
        &Signal::ALL
    }

    fn build(&self, settings: &ComponentSettings) -> Result<Box<dyn Receiver>, ConfigError> {
        let path = settings.path();
        let mut table = settings.table.clone();
        let telemetry =
            GatewayTelemetryConfig::from_value(&path.key("telemetry"), table.remove("telemetry"))?;
        let gateway =
            GatewayConfig::from_table(&path, table).map_err(|errors| first_of(&path, errors))?;
        Ok(Box::new(GatewayReceiver {
            location: path.to_string(),
            gateway,
            telemetry,
        }))
    }

    fn is_section(&self) -> bool {
        true
    }
}

/// The first of several errors, saying how many more there are (the factory reports one).
fn first_of(path: &KeyPath, mut errors: Vec<ConfigError>) -> ConfigError {
    if errors.is_empty() {
        return ConfigError::new(path.clone(), "invalid gateway configuration");
    }
    let more = errors.len() - 1;
    let mut first = errors.swap_remove(0);
    if more > 0 {
        let noun = if more == 1 { "problem" } else { "problems" };
        first.message = format!("{} (and {more} more {noun} in [gateway])", first.message);
    }
    first
}

/// A `gateway` receiver built from config, not yet serving.
pub struct GatewayReceiver {
    /// Where it is configured (`gateway`), for start errors.
    location: String,
    gateway: GatewayConfig,
    telemetry: GatewayTelemetryConfig,
}

impl GatewayReceiver {
    /// Starts the gateway on its `listen` address and the converter feeding the pipelines.
    pub async fn serve(self, ctx: ReceiverContext) -> Result<RunningGatewayReceiver, StartError> {
        let start_error = |message: String| StartError {
            component: self.location.clone(),
            message,
        };
        let started_at = now_unix_nano();
        let routed_models = self
            .gateway
            .routes
            .iter()
            .map(|r| r.model.clone())
            .filter(|m| m != "*")
            .collect();
        let listen = self.gateway.listen;
        let (events, receiver) = mpsc::channel(self.telemetry.event_buffer);
        let gateway = Gateway::new(self.gateway, events, ctx.telemetry.clone())
            .map_err(|e| start_error(e.to_string()))?;
        let in_flight = gateway.requests_in_flight();
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|e| start_error(format!("cannot listen on {listen}: {e}")))?;
        let gateway = gateway
            .serve(listener)
            .map_err(|e| start_error(format!("cannot serve on {listen}: {e}")))?;
        let local_addr = gateway.local_addr();
        tracing::info!(receiver = %ctx.id, addr = %local_addr, "AI gateway listening");

        let stop = CancellationToken::new();
        let mut converter =
            Converter::new(ctx, &self.telemetry.service_name, started_at, routed_models);
        converter.in_flight = Some(Box::new(in_flight));
        let task =
            tokio::spawn(converter.run(receiver, self.telemetry.metrics_interval, stop.clone()));
        Ok(RunningGatewayReceiver {
            local_addr,
            state: tokio::sync::Mutex::new(Some((gateway, task))),
            stop,
        })
    }
}

#[async_trait]
impl Receiver for GatewayReceiver {
    async fn start(self: Box<Self>, ctx: ReceiverContext) -> Result<Box<dyn Running>, StartError> {
        Ok(Box::new(self.serve(ctx).await?))
    }
}

/// A serving `gateway` receiver.
pub struct RunningGatewayReceiver {
    local_addr: SocketAddr,
    /// The gateway and the converter task, until shutdown takes them.
    state: tokio::sync::Mutex<Option<(RunningGateway, JoinHandle<()>)>>,
    stop: CancellationToken,
}

impl RunningGatewayReceiver {
    /// The address the gateway listens on (the actual port when configured with 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }
}

#[async_trait]
impl Running for RunningGatewayReceiver {
    /// Stops the gateway (requests in flight, streams included, finish and emit their events),
    /// then converts every event still waiting, exports the metrics one last time and hands
    /// it all to the pipelines before returning.
    async fn shutdown(&self) {
        let Some((gateway, task)) = self.state.lock().await.take() else {
            return;
        };
        if let Err(e) = gateway.shutdown().await {
            tracing::error!("AI gateway did not stop cleanly: {e}");
        }
        self.stop.cancel();
        if let Err(e) = task.await {
            tracing::error!("gateway receiver's converter task failed: {e}");
        }
    }
}

/// Turns events into batches and hands them to the pipelines.
struct Converter {
    id: String,
    consumers: SignalConsumers,
    /// Accepted/refused counters, by signal in [`Signal::ALL`] order.
    counters: [ReceiverCounters; 3],
    resource: Resource,
    scope: InstrumentationScope,
    /// `None` when no metrics pipeline takes the receiver's data: nothing to aggregate.
    metrics: Option<metrics::Aggregator>,
    /// Reads the gateway's requests in flight, reported with the metrics.
    in_flight: Option<Box<dyn Fn() -> i64 + Send + Sync>>,
    refusal_log: RefusalLog,
}

impl Converter {
    fn new(
        ctx: ReceiverContext,
        service_name: &str,
        started_at: u64,
        routed_models: HashSet<String>,
    ) -> Converter {
        let version = env!("CARGO_PKG_VERSION");
        let mut resource_attrs = Attributes::new();
        resource_attrs
            .str("service.name", service_name)
            .str("service.version", version);
        let metrics = ctx
            .consumers
            .get(Signal::Metrics)
            .map(|_| metrics::Aggregator::new(started_at, routed_models));
        Converter {
            counters: Signal::ALL.map(|s| ctx.telemetry.receiver(&ctx.id, TRANSPORT, s)),
            id: ctx.id,
            consumers: ctx.consumers,
            resource: Resource {
                attributes: resource_attrs.into_vec(),
                ..Default::default()
            },
            scope: InstrumentationScope {
                name: SCOPE_NAME.to_string(),
                version: version.to_string(),
                ..Default::default()
            },
            metrics,
            in_flight: None,
            refusal_log: RefusalLog::default(),
        }
    }

    async fn run(
        mut self,
        mut events: mpsc::Receiver<RequestEvent>,
        metrics_interval: Duration,
        stop: CancellationToken,
    ) {
        let mut ticker =
            tokio::time::interval_at(Instant::now() + metrics_interval, metrics_interval);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut batch = Vec::with_capacity(MAX_EVENTS_PER_BATCH);
        loop {
            tokio::select! {
                received = events.recv_many(&mut batch, MAX_EVENTS_PER_BATCH) => {
                    if received == 0 {
                        break;
                    }
                    self.convert(&mut batch).await;
                }
                _ = ticker.tick() => self.export_metrics().await,
                _ = stop.cancelled() => break,
            }
        }
        // The gateway has stopped: what is in the channel now is all there will be.
        while let Ok(event) = events.try_recv() {
            batch.push(event);
            if batch.len() == MAX_EVENTS_PER_BATCH {
                self.convert(&mut batch).await;
            }
        }
        self.convert(&mut batch).await;
        self.export_metrics().await;
    }

    /// Converts and delivers `events`, leaving the vector empty.
    async fn convert(&mut self, events: &mut Vec<RequestEvent>) {
        if events.is_empty() {
            return;
        }
        if let Some(aggregator) = &mut self.metrics {
            for event in events.iter() {
                aggregator.record(event);
            }
        }
        if self.consumers.traces.is_some()
            && let Some(request) = traces::export_request(events, &self.resource, &self.scope)
        {
            self.deliver(Request::Traces(request)).await;
        }
        if self.consumers.logs.is_some()
            && let Some(request) =
                logs::export_request(events, now_unix_nano(), &self.resource, &self.scope)
        {
            self.deliver(Request::Logs(request)).await;
        }
        events.clear();
    }

    async fn export_metrics(&mut self) {
        let Some(aggregator) = &mut self.metrics else {
            return;
        };
        if let Some(in_flight) = &self.in_flight {
            aggregator.set_active_requests(in_flight());
        }
        if let Some(request) =
            aggregator.export_request(now_unix_nano(), &self.resource, &self.scope)
        {
            self.deliver(Request::Metrics(request)).await;
        }
    }

    /// Hands a batch to the pipeline, counting its items as accepted or refused.
    async fn deliver(&mut self, request: Request) {
        let signal = request.signal();
        let Some(consumer) = self.consumers.get(signal) else {
            return;
        };
        let batch = Batch::from_request(request);
        let items = batch.item_count();
        let counters = &self.counters[signal_index(signal)];
        match consumer.consume(batch).await {
            Ok(()) => counters.accepted.inc_by(items as u64),
            Err(error) => {
                counters.refused.inc_by(items as u64);
                self.log_refusal(signal, items, &error);
            }
        }
    }

    fn log_refusal(&mut self, signal: Signal, items: usize, error: &ConsumeError) {
        // Under backpressure every batch is refused; one line a second says as much.
        if let Some(suppressed) = self.refusal_log.allow(Instant::now()) {
            tracing::warn!(
                receiver = %self.id,
                %signal,
                items,
                suppressed,
                "dropped {items} gateway {}: {error}",
                signal.item_noun(),
            );
        }
    }
}

/// The position of `signal` in [`Signal::ALL`].
fn signal_index(signal: Signal) -> usize {
    match signal {
        Signal::Traces => 0,
        Signal::Metrics => 1,
        Signal::Logs => 2,
    }
}

/// Lets one refusal warning through per second, counting the ones held back in between.
#[derive(Default)]
struct RefusalLog {
    last: Option<Instant>,
    suppressed: u64,
}

impl RefusalLog {
    /// `Some(warnings held back since the last one)` if this one may be logged.
    fn allow(&mut self, now: Instant) -> Option<u64> {
        if self
            .last
            .is_some_and(|last| now.duration_since(last) < Duration::from_secs(1))
        {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }
}
