//! The `tail_sampling` processor: holds the spans of each trace until `decision_wait` has
//! passed since its first span, then decides from the whole trace (its errors, its latency,
//! its attributes) whether to keep it, with the Collector's `tailsamplingprocessor` policies.
//!
//! `consume` files the spans of each request under their trace in the [`Buffer`] (encoded, as
//! they arrived, with their resource and scope: see [`spans`]) and returns: receivers are
//! never held up by the wait. One task
//! per instance decides the traces whose wait is over and sends the sampled ones, as
//! well-formed requests under their original resource and scope, to the next component,
//! retrying while it refuses retryably. Decisions are remembered in a bounded cache, so spans
//! that arrive after their trace was decided follow the decision.

mod buffer;
mod policy;
mod spans;
#[cfg(test)]
mod tests;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use prometheus::IntCounter;
use serde::Deserialize;
use sluice_pipeline::{
    Batch, ComponentSettings, ConfigError, ConsumeError, Consumer, Processor, ProcessorContext,
    ProcessorFactory, Running, RunningProcessor, Signal, StartError, Telemetry,
};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use buffer::POLICY_ATTRIBUTE;
use buffer::{Buffer, Early, Limits, Metrics};
use policy::{Policy, Vote};
use spans::Released;

/// Configuration of the `tail_sampling` processor.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TailSamplingConfig {
    /// How long after a trace's first span it is decided, e.g. `"10s"`. Spans arriving in that
    /// time join the trace; later ones follow the decision (see `decision_cache`).
    #[serde(
        default = "default_decision_wait",
        with = "sluice_pipeline::config::duration"
    )]
    pub decision_wait: Duration,
    /// The most traces buffered at once. When a new trace arrives at the limit, the oldest
    /// buffered trace is decided at once.
    #[serde(default = "default_num_traces")]
    pub num_traces: usize,
    /// The most spans buffered at once. Beyond it the oldest traces are decided at once.
    #[serde(default = "default_max_buffered_spans")]
    pub max_buffered_spans: usize,
    /// A trace reaching this many spans is decided at once, so that one enormous trace
    /// cannot fill the buffer and force every other trace out early. Its later spans follow
    /// the decision. At most `max_buffered_spans`.
    #[serde(default = "default_max_spans_per_trace")]
    pub max_spans_per_trace: usize,
    /// How many decisions are remembered for spans that arrive after their trace was decided.
    #[serde(default)]
    pub decision_cache: DecisionCacheConfig,
    /// Adds `sluice.sampling.policy` (the name of the first policy that sampled the trace) to
    /// every sampled span.
    #[serde(default)]
    pub record_policy: bool,
    /// The policies, as `[[processors.<id>.policies]]` tables with `name`, `type` and the
    /// type's keys. At least one.
    #[serde(default)]
    pub policies: Vec<toml::Value>,
}

fn default_decision_wait() -> Duration {
    Duration::from_secs(30)
}

fn default_num_traces() -> usize {
    50_000
}

fn default_max_buffered_spans() -> usize {
    200_000
}

fn default_max_spans_per_trace() -> usize {
    10_000
}

/// The sizes of the decision cache (`decision_cache = { sampled_size, non_sampled_size }`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecisionCacheConfig {
    /// How many sampled trace ids are remembered (oldest forgotten first). 0 turns it off.
    /// `sampled_cache_size`, the Collector's name, is accepted too.
    #[serde(default = "default_cache_size", alias = "sampled_cache_size")]
    pub sampled_size: usize,
    /// How many not-sampled trace ids are remembered. 0 turns it off.
    /// `non_sampled_cache_size` is accepted too.
    #[serde(default = "default_cache_size", alias = "non_sampled_cache_size")]
    pub non_sampled_size: usize,
}

fn default_cache_size() -> usize {
    100_000
}

impl Default for DecisionCacheConfig {
    fn default() -> Self {
        DecisionCacheConfig {
            sampled_size: default_cache_size(),
            non_sampled_size: default_cache_size(),
        }
    }
}

impl TailSamplingConfig {
    /// Parses and checks the `[processors.<id>]` table, and its policies.
    pub fn from_settings(
        settings: &ComponentSettings,
    ) -> Result<(TailSamplingConfig, Vec<Policy>), ConfigError> {
        let config: TailSamplingConfig = settings.parse()?;
        if config.decision_wait.is_zero() {
            return Err(settings.error("decision_wait", "must be greater than 0"));
        }
        for (key, value) in [
            ("num_traces", config.num_traces),
            ("max_buffered_spans", config.max_buffered_spans),
            ("max_spans_per_trace", config.max_spans_per_trace),
        ] {
            if value == 0 {
                return Err(settings.error(key, "must be greater than 0"));
            }
        }
        if config.max_spans_per_trace > config.max_buffered_spans {
            return Err(settings.error(
                "max_spans_per_trace",
                format!(
                    "{} is more than max_buffered_spans ({})",
                    config.max_spans_per_trace, config.max_buffered_spans
                ),
            ));
        }
        let policies =
            policy::parse_policies(&settings.path().key("policies"), config.policies.clone())?;
        Ok((config, policies))
    }

    fn limits(&self) -> Limits {
        Limits {
            decision_wait: self.decision_wait,
            num_traces: self.num_traces,
            max_buffered_spans: self.max_buffered_spans,
            max_spans_per_trace: self.max_spans_per_trace,
            sampled_cache_size: self.decision_cache.sampled_size,
            non_sampled_cache_size: self.decision_cache.non_sampled_size,
            record_policy: self.record_policy,
        }
    }
}

/// The policy types `type` may name.
pub fn policy_types() -> &'static [&'static str] {
    policy::TYPES
}

/// The release task sends at most this many spans per batch.
const MAX_RELEASE_SPANS: usize = 8192;

/// The shortest time between two releases. Traces are decided at `decision_wait` after their
/// first span, or up to this much later when another release just happened: at high rates
/// the due traces go out together in batches instead of one small batch per trace.
const RELEASE_INTERVAL: Duration = Duration::from_millis(100);

/// The first wait before sending again a batch the next component refused retryably.
const INITIAL_BACKOFF: Duration = Duration::from_millis(5);
/// The longest wait between two attempts.
const MAX_BACKOFF: Duration = Duration::from_millis(100);

/// Builds `tail_sampling` processors.
pub struct TailSamplingFactory;

impl ProcessorFactory for TailSamplingFactory {
    fn type_name(&self) -> &'static str {
        "tail_sampling"
    }

    fn signals(&self) -> &'static [Signal] {
        &[Signal::Traces]
    }

    fn build(&self, settings: &ComponentSettings) -> Result<Box<dyn Processor>, ConfigError> {
        let (config, policies) = TailSamplingConfig::from_settings(settings)?;
        Ok(Box::new(TailSampling {
            limits: config.limits(),
            policies,
        }))
    }
}

/// A `tail_sampling` processor built from config, ready to start in a pipeline.
pub struct TailSampling {
    limits: Limits,
    policies: Vec<Policy>,
}

impl TailSampling {
    /// A processor for `settings`' table: the same checks as the factory.
    pub fn from_settings(settings: &ComponentSettings) -> Result<TailSampling, ConfigError> {
        let (config, policies) = TailSamplingConfig::from_settings(settings)?;
        Ok(TailSampling {
            limits: config.limits(),
            policies,
        })
    }
}

fn metrics(telemetry: &Telemetry, id: &str, policies: &[Policy]) -> Metrics {
    let votes = telemetry.counter_vec(
        "sluice_processor_tail_sampling_policy_decisions_total",
        "Traces each tail sampling policy voted to sample, not sample or drop.",
        &["processor", "policy", "decision"],
    );
    let traces = telemetry.counter_vec(
        "sluice_processor_tail_sampling_traces_total",
        "Traces tail sampling decided, by the decision.",
        &["processor", "decision"],
    );
    let early = telemetry.counter_vec(
        "sluice_processor_tail_sampling_traces_decided_early_total",
        "Traces decided before their decision_wait was over, by why.",
        &["processor", "reason"],
    );
    let late = telemetry.counter_vec(
        "sluice_processor_tail_sampling_late_spans_total",
        "Spans that arrived after their trace was decided and followed the cached decision.",
        &["processor", "decision"],
    );
    let buffered_traces = telemetry.gauge_vec(
        "sluice_processor_tail_sampling_buffered_traces",
        "Traces buffered waiting for their decision.",
        &["processor"],
    );
    let buffered_spans = telemetry.gauge_vec(
        "sluice_processor_tail_sampling_buffered_spans",
        "Spans buffered waiting for their trace's decision.",
        &["processor"],
    );
    Metrics {
        policy_votes: policies
            .iter()
            .map(|p| Vote::ALL.map(|v| votes.with_label_values(&[id, &p.name, v.label()])))
            .collect(),
        traces_sampled: traces.with_label_values(&[id, "sampled"]),
        traces_not_sampled: traces.with_label_values(&[id, "not_sampled"]),
        decided_early: Early::ALL.map(|e| early.with_label_values(&[id, e.label()])),
        late_sampled: late.with_label_values(&[id, "sampled"]),
        late_not_sampled: late.with_label_values(&[id, "not_sampled"]),
        dropped_spans: telemetry.processor_dropped(id, Signal::Traces),
        buffered_traces: buffered_traces.with_label_values(&[id]),
        buffered_spans: buffered_spans.with_label_values(&[id]),
    }
}

#[async_trait]
impl Processor for TailSampling {
    async fn start(
        self: Box<Self>,
        ctx: ProcessorContext,
    ) -> Result<Arc<dyn RunningProcessor>, StartError> {
        let metrics = metrics(&ctx.telemetry, &ctx.id, &self.policies);
        let dropped = metrics.dropped_spans.clone();
        let max_pending = self.limits.max_buffered_spans;
        let shared = Arc::new(Shared {
            buffer: Mutex::new(Buffer::new(self.limits, self.policies, metrics)),
            wake: Notify::new(),
            shutdown: CancellationToken::new(),
            in_flight: AtomicUsize::new(0),
        });
        let task = ReleaseTask {
            shared: shared.clone(),
            next: ctx.next,
            dropped,
            id: ctx.id.clone(),
            pipeline: ctx.pipeline,
        };
        Ok(Arc::new(RunningTailSampling {
            id: ctx.id,
            shared,
            max_pending,
            task: Mutex::new(Some(tokio::spawn(task.run()))),
        }))
    }
}

/// What `consume` and the release task share.
struct Shared {
    buffer: Mutex<Buffer>,
    /// Wakes the release task when a trace arrives at an empty buffer (an earlier deadline
    /// than any it sleeps on) or sampled spans are waiting to be sent.
    wake: Notify,
    shutdown: CancellationToken,
    /// Sampled spans the task has taken and the next component has not yet.
    in_flight: AtomicUsize,
}

impl Shared {
    fn buffer(&self) -> MutexGuard<'_, Buffer> {
        // A panic while holding the lock leaves counts that are at worst slightly off;
        // carrying on beats stopping the pipeline.
        self.buffer.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A `tail_sampling` processor running in one pipeline.
pub struct RunningTailSampling {
    id: String,
    shared: Arc<Shared>,
    /// Sampled spans waiting for the next component beyond which receivers are told to retry.
    max_pending: usize,
    /// The release task; taken and awaited by the first `shutdown`.
    task: Mutex<Option<JoinHandle<()>>>,
}

#[async_trait]
impl Consumer for RunningTailSampling {
    async fn consume(&self, batch: Batch) -> Result<(), ConsumeError> {
        if self.shared.shutdown.is_cancelled() {
            return Err(ConsumeError::ShuttingDown);
        }
        if batch.is_empty() {
            return Ok(());
        }
        {
            let buffer = self.shared.buffer();
            let pending = buffer.released_count() + self.shared.in_flight.load(Ordering::Relaxed);
            if pending >= self.max_pending {
                return Err(ConsumeError::Backpressure(format!(
                    "tail_sampling {}: {pending} sampled spans wait for the next component",
                    self.id
                )));
            }
        }
        if batch.signal() != Signal::Traces {
            return Err(ConsumeError::Rejected(format!(
                "tail_sampling {} takes traces, not {}",
                self.id,
                batch.signal()
            )));
        }
        let spans = spans::split_request(&batch.to_encoded_bytes()).map_err(|error| {
            ConsumeError::Rejected(format!("tail_sampling {}: {error}", self.id))
        })?;
        let wake = {
            let mut buffer = self.shared.buffer();
            let was_idle = buffer.next_deadline().is_none();
            let released_before = buffer.released_count();
            buffer.add(Instant::now(), spans);
            (was_idle && buffer.trace_count() > 0) || buffer.released_count() > released_before
        };
        if wake {
            self.shared.wake.notify_one();
        }
        Ok(())
    }
}

#[async_trait]
impl Running for RunningTailSampling {
    /// Stops taking spans, decides every buffered trace now and sends the sampled ones.
    async fn shutdown(&self) {
        self.shared.shutdown.cancel();
        let task = self
            .task
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(task) = task
            && let Err(error) = task.await
        {
            tracing::error!(processor = %self.id, %error, "tail_sampling release task failed");
        }
    }
}

/// The task of one instance: decides due traces and sends the sampled spans.
struct ReleaseTask {
    shared: Arc<Shared>,
    next: Arc<dyn sluice_pipeline::Consumer>,
    dropped: IntCounter,
    id: String,
    pipeline: String,
}

impl ReleaseTask {
    async fn run(self) {
        let mut last_release: Option<Instant> = None;
        loop {
            let due = {
                let mut buffer = self.shared.buffer();
                if buffer.released_count() > 0 {
                    Some(Instant::now())
                } else {
                    buffer.next_deadline()
                }
            };
            let wake_at = due.map(|due| match last_release {
                Some(last) => due.max(last + RELEASE_INTERVAL),
                None => due,
            });
            tokio::select! {
                biased;
                () = self.shared.shutdown.cancelled() => break,
                () = self.shared.wake.notified() => continue,
                () = tokio::time::sleep_until(wake_at.unwrap_or_else(Instant::now)),
                    if wake_at.is_some() => {}
            }
            let now = Instant::now();
            last_release = Some(now);
            let released = {
                let mut buffer = self.shared.buffer();
                buffer.decide_due(now);
                self.take(&mut buffer)
            };
            self.deliver(released).await;
        }
        let released = {
            let mut buffer = self.shared.buffer();
            buffer.decide_all(Instant::now());
            self.take(&mut buffer)
        };
        self.deliver(released).await;
    }

    fn take(&self, buffer: &mut Buffer) -> Vec<Released> {
        let released = buffer.take_released();
        self.shared
            .in_flight
            .fetch_add(released.len(), Ordering::Relaxed);
        released
    }

    /// Sends `spans` in batches of at most [`MAX_RELEASE_SPANS`].
    async fn deliver(&self, spans: Vec<Released>) {
        let mut spans = spans.into_iter().peekable();
        while spans.peek().is_some() {
            let chunk: Vec<Released> = spans.by_ref().take(MAX_RELEASE_SPANS).collect();
            let count = chunk.len();
            let encoded = Bytes::from(spans::encode_request(chunk));
            match Batch::from_encoded(Signal::Traces, encoded) {
                Ok(batch) => self.send(batch).await,
                Err(error) => {
                    // Built from spans that were well-formed when received: a bug, but one
                    // that must not take the process down.
                    self.dropped.inc_by(count as u64);
                    tracing::error!(processor = %self.id, %error, "dropped a released batch that did not encode");
                }
            }
            self.shared.in_flight.fetch_sub(count, Ordering::Relaxed);
        }
    }

    /// Hands `batch` to the next component, retrying while it refuses retryably, until it is
    /// taken or shutdown allows a last attempt; what is not taken is dropped and counted.
    async fn send(&self, batch: Batch) {
        // Each attempt sends a copy; the batch is encoded, so copies share their bytes.
        let mut backoff = INITIAL_BACKOFF;
        loop {
            let last_attempt = self.shared.shutdown.is_cancelled();
            match self.next.consume(batch.clone()).await {
                Ok(()) => return,
                Err(error) if error.is_retryable() && !last_attempt => {
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = self.shared.shutdown.cancelled() => {}
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
                Err(error) => {
                    let spans = batch.item_count();
                    self.dropped.inc_by(spans as u64);
                    tracing::warn!(
                        processor = %self.id,
                        pipeline = %self.pipeline,
                        spans,
                        %error,
                        "dropped sampled spans the next component did not take"
                    );
                    return;
                }
            }
        }
    }
}
