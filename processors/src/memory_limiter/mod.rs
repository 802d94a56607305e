//! The `memory_limiter` processor: refuses data while the process's resident memory is above
//! a soft limit, so receivers tell their clients to retry (HTTP 503, gRPC UNAVAILABLE) and
//! the gateway drops and counts its telemetry, instead of the process growing until it is
//! killed.
//!
//! Limits are on the whole process's resident set size (RSS), read by one sampler task the
//! process shares (see [`sampler`]). The hard limit is `limit_mib`, the soft limit
//! `limit_mib - spike_limit_mib`: the spike allowance is the memory that may still arrive
//! between two checks. Above the soft limit every batch is refused; above the hard limit the
//! allocator is also asked to hand back memory it holds but no longer uses (the Collector
//! runs its garbage collector there). It belongs first in a pipeline, so that refused data
//! costs nothing downstream.

pub mod sampler;

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use prometheus::{IntCounter, IntGauge};
use serde::Deserialize;
use sluice_pipeline::{
    Batch, ComponentSettings, ConfigError, ConsumeError, Consumer, Processor, ProcessorContext,
    ProcessorFactory, Running, RunningProcessor, Signal, StartError, Telemetry,
};

use sampler::{ProcessMemory, Sampler};

const MIB: u64 = 1 << 20;

/// Configuration of the `memory_limiter` processor (`[processors.memory_limiter]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryLimiterConfig {
    /// How often the resident memory is read, e.g. `"1s"`. Shorter reacts sooner to a fast
    /// flood; the process shares one reader, at the shortest interval of its limiters.
    #[serde(
        default = "default_check_interval",
        with = "sluice_pipeline::config::duration"
    )]
    pub check_interval: Duration,
    /// The hard limit on the process's resident memory, in MiB. Required.
    pub limit_mib: u64,
    /// How much memory may arrive between two checks, in MiB: data is refused above
    /// `limit_mib - spike_limit_mib`. Defaults to 20% of `limit_mib`; must be less than it.
    #[serde(default)]
    pub spike_limit_mib: Option<u64>,
}

fn default_check_interval() -> Duration {
    Duration::from_secs(1)
}

/// The default spike allowance: 20% of the limit, as the Collector's.
fn default_spike_limit_mib(limit_mib: u64) -> u64 {
    limit_mib / 5
}

impl MemoryLimiterConfig {
    /// Parses and checks the `[processors.<id>]` table.
    pub fn from_settings(settings: &ComponentSettings) -> Result<MemoryLimiterConfig, ConfigError> {
        let config: MemoryLimiterConfig = settings.parse()?;
        if !ProcessMemory::SUPPORTED {
            return Err(ConfigError::new(
                settings.path(),
                "memory_limiter reads the resident memory from /proc/self/statm, which only \
                 Linux has; remove it from the pipelines on this system",
            ));
        }
        if config.limit_mib == 0 {
            return Err(settings.error("limit_mib", "must be greater than 0"));
        }
        if config.limit_mib > u64::MAX / MIB {
            return Err(settings.error("limit_mib", "is larger than any memory"));
        }
        if config.check_interval.is_zero() {
            return Err(settings.error("check_interval", "must be greater than 0"));
        }
        if let Some(spike) = config.spike_limit_mib
            && spike >= config.limit_mib
        {
            return Err(settings.error(
                "spike_limit_mib",
                format!(
                    "{spike} leaves no room under limit_mib ({}): it must be less",
                    config.limit_mib
                ),
            ));
        }
        Ok(config)
    }

    /// The limits in bytes.
    pub fn limits(&self) -> Limits {
        let spike = self
            .spike_limit_mib
            .unwrap_or_else(|| default_spike_limit_mib(self.limit_mib));
        Limits {
            soft: (self.limit_mib - spike) * MIB,
            hard: self.limit_mib * MIB,
        }
    }
}

/// Resident memory limits, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Above this, data is refused.
    pub soft: u64,
    /// Above this, memory is also released where the allocator allows.
    pub hard: u64,
}

/// Where a limiter stands, as the `sluice_memory_limiter_state` gauge reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum State {
    /// At or below the soft limit: data passes.
    Normal = 0,
    /// Above the soft limit: data is refused.
    Soft = 1,
    /// Above the hard limit: data is refused and memory released.
    Hard = 2,
}

impl State {
    fn from_u8(value: u8) -> State {
        match value {
            0 => State::Normal,
            1 => State::Soft,
            _ => State::Hard,
        }
    }
}

/// The part of a limiter the sampler updates and the processor reads.
pub(crate) struct Limiter {
    id: String,
    pipeline: String,
    limits: Limits,
    interval: Duration,
    state: AtomicU8,
    /// The reading the state was decided on, for the refusal message.
    rss: AtomicU64,
    state_gauge: IntGauge,
    rss_gauge: IntGauge,
}

impl Limiter {
    /// Takes a reading; returns the state it puts the limiter in, logging changes.
    fn observe(&self, rss: u64) -> State {
        self.rss.store(rss, Ordering::Relaxed);
        self.rss_gauge.set(i64::try_from(rss).unwrap_or(i64::MAX));
        let state = if rss > self.limits.hard {
            State::Hard
        } else if rss > self.limits.soft {
            State::Soft
        } else {
            State::Normal
        };
        let previous = State::from_u8(self.state.swap(state as u8, Ordering::Relaxed));
        self.state_gauge.set(i64::from(state as u8));
        if state != previous {
            let (rss_mib, soft_mib, hard_mib) =
                (rss / MIB, self.limits.soft / MIB, self.limits.hard / MIB);
            let (id, pipeline) = (&self.id, &self.pipeline);
            match state {
                State::Normal => tracing::info!(
                    processor = %id, %pipeline, rss_mib, soft_mib,
                    "memory back under the soft limit: accepting data again"
                ),
                State::Soft => tracing::warn!(
                    processor = %id, %pipeline, rss_mib, soft_mib,
                    "memory above the soft limit: refusing data until it falls"
                ),
                State::Hard => tracing::warn!(
                    processor = %id, %pipeline, rss_mib, hard_mib,
                    "memory above the hard limit: refusing data and releasing memory"
                ),
            }
        }
        state
    }

    fn state(&self) -> State {
        State::from_u8(self.state.load(Ordering::Relaxed))
    }
}

/// Builds `memory_limiter` processors.
pub struct MemoryLimiterFactory;

impl ProcessorFactory for MemoryLimiterFactory {
    fn type_name(&self) -> &'static str {
        "memory_limiter"
    }

    fn signals(&self) -> &'static [Signal] {
        &Signal::ALL
    }

    fn build(&self, settings: &ComponentSettings) -> Result<Box<dyn Processor>, ConfigError> {
        Ok(Box::new(MemoryLimiterProcessor {
            config: MemoryLimiterConfig::from_settings(settings)?,
            sampler: None,
        }))
    }
}

/// A `memory_limiter` built from config, ready to start in a pipeline.
pub struct MemoryLimiterProcessor {
    config: MemoryLimiterConfig,
    /// The sampler to register with; the process's own when `None`.
    sampler: Option<Arc<Sampler>>,
}

impl MemoryLimiterProcessor {
    /// A limiter for `config` reading memory from `sampler` (tests inject their own memory).
    pub fn with_sampler(config: MemoryLimiterConfig, sampler: Arc<Sampler>) -> Self {
        MemoryLimiterProcessor {
            config,
            sampler: Some(sampler),
        }
    }
}

fn gauges(telemetry: &Telemetry, id: &str, limits: Limits) -> (IntGauge, IntGauge) {
    let limit = telemetry.gauge_vec(
        "sluice_memory_limiter_limit_bytes",
        "The memory limiter's limits on resident memory: soft (refuse data above) and hard.",
        &["processor", "limit"],
    );
    limit
        .with_label_values(&[id, "soft"])
        .set(i64::try_from(limits.soft).unwrap_or(i64::MAX));
    limit
        .with_label_values(&[id, "hard"])
        .set(i64::try_from(limits.hard).unwrap_or(i64::MAX));
    let state = telemetry
        .gauge_vec(
            "sluice_memory_limiter_state",
            "Where the memory limiter stands: 0 accepting, 1 above the soft limit (refusing), \
             2 above the hard limit (refusing, releasing memory).",
            &["processor"],
        )
        .with_label_values(&[id]);
    let rss = telemetry
        .gauge_vec(
            "sluice_memory_limiter_rss_bytes",
            "The process's resident memory at the memory limiter's last check.",
            &[],
        )
        .with_label_values(&[] as &[&str]);
    (state, rss)
}

#[async_trait]
impl Processor for MemoryLimiterProcessor {
    async fn start(
        self: Box<Self>,
        ctx: ProcessorContext,
    ) -> Result<Arc<dyn RunningProcessor>, StartError> {
        let limits = self.config.limits();
        let (state_gauge, rss_gauge) = gauges(&ctx.telemetry, &ctx.id, limits);
        let limiter = Arc::new(Limiter {
            id: ctx.id.clone(),
            pipeline: ctx.pipeline.clone(),
            limits,
            interval: self.config.check_interval,
            state: AtomicU8::new(State::Normal as u8),
            rss: AtomicU64::new(0),
            state_gauge,
            rss_gauge,
        });
        let sampler = self.sampler.unwrap_or_else(Sampler::process);
        sampler.register(&limiter);
        let refused = ctx
            .telemetry
            .counter_vec(
                "sluice_memory_limiter_refused_items_total",
                "Items (spans, data points, log records) the memory limiter refused because \
                 memory was above the soft limit.",
                &["processor", "signal"],
            )
            .with_label_values(&[&ctx.id, ctx.signal.as_str()]);
        Ok(Arc::new(RunningMemoryLimiter {
            limiter,
            sampler: Mutex::new(Some(sampler)),
            next: ctx.next,
            refused,
            stopped: AtomicBool::new(false),
        }))
    }
}

/// A `memory_limiter` running in one pipeline.
pub struct RunningMemoryLimiter {
    limiter: Arc<Limiter>,
    /// Taken by the first `shutdown`.
    sampler: Mutex<Option<Arc<Sampler>>>,
    next: Arc<dyn Consumer>,
    refused: IntCounter,
    stopped: AtomicBool,
}

#[async_trait]
impl Consumer for RunningMemoryLimiter {
    async fn consume(&self, batch: Batch) -> Result<(), ConsumeError> {
        if self.stopped.load(Ordering::Relaxed) {
            return Err(ConsumeError::ShuttingDown);
        }
        if self.limiter.state() == State::Normal {
            return self.next.consume(batch).await;
        }
        self.refused.inc_by(batch.item_count() as u64);
        let limiter = &self.limiter;
        Err(ConsumeError::Backpressure(format!(
            "memory_limiter {}: resident memory {} MiB is above the soft limit of {} MiB",
            limiter.id,
            limiter.rss.load(Ordering::Relaxed) / MIB,
            limiter.limits.soft / MIB,
        )))
    }
}

#[async_trait]
impl Running for RunningMemoryLimiter {
    /// Stops taking data and leaves the sampler, stopping it if this was its last limiter.
    async fn shutdown(&self) {
        self.stopped.store(true, Ordering::Relaxed);
        let sampler = self
            .sampler
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(sampler) = sampler {
            sampler.unregister(&self.limiter);
            Sampler::release_handle(sampler).await;
        }
    }
}

#[cfg(test)]
mod tests;
