//! Sluice's own metrics, served in Prometheus text format on the admin address.

use std::sync::Arc;

use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

use crate::signal::Signal;

/// The process's internal metrics. Cheap to clone; every component gets one.
#[derive(Clone)]
pub struct Telemetry {
    inner: Arc<Metrics>,
}

struct Metrics {
    registry: Registry,
    receiver_accepted: IntCounterVec,
    receiver_refused: IntCounterVec,
    exporter_sent: IntCounterVec,
    exporter_send_failed: IntCounterVec,
    exporter_enqueue_failed: IntCounterVec,
    exporter_queue_size: IntGaugeVec,
    exporter_queue_capacity: IntGaugeVec,
    processor_dropped: IntCounterVec,
    processor_batches: IntCounterVec,
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let vec = IntCounterVec::new(Opts::new(name, help), labels)
        .expect("metric names and labels are static and valid");
    registry
        .register(Box::new(vec.clone()))
        .expect("each metric is registered once");
    vec
}

fn gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let vec = IntGaugeVec::new(Opts::new(name, help), labels)
        .expect("metric names and labels are static and valid");
    registry
        .register(Box::new(vec.clone()))
        .expect("each metric is registered once");
    vec
}

impl Default for Telemetry {
    fn default() -> Self {
        Telemetry::new()
    }
}

impl Telemetry {
    /// A fresh set of metrics in its own registry.
    pub fn new() -> Telemetry {
        let registry = Registry::new();
        let r = &registry;
        let recv = &["receiver", "transport", "signal"];
        let exp = &["exporter", "signal"];
        let metrics = Metrics {
            receiver_accepted: counter_vec(
                r,
                "sluice_receiver_accepted_items_total",
                "Items (spans, data points, log records) a receiver accepted into the pipeline.",
                recv,
            ),
            receiver_refused: counter_vec(
                r,
                "sluice_receiver_refused_items_total",
                "Items a receiver refused: malformed, or the pipeline could not take them.",
                recv,
            ),
            exporter_sent: counter_vec(
                r,
                "sluice_exporter_sent_items_total",
                "Items an exporter's backend accepted.",
                exp,
            ),
            exporter_send_failed: counter_vec(
                r,
                "sluice_exporter_send_failed_items_total",
                "Items an exporter failed to send and dropped.",
                exp,
            ),
            exporter_enqueue_failed: counter_vec(
                r,
                "sluice_exporter_enqueue_failed_items_total",
                "Items dropped because an exporter's queue was full.",
                exp,
            ),
            exporter_queue_size: gauge_vec(
                r,
                "sluice_exporter_queue_size",
                "Items waiting in an exporter's queue.",
                &["exporter"],
            ),
            exporter_queue_capacity: gauge_vec(
                r,
                "sluice_exporter_queue_capacity",
                "The most items an exporter's queue holds.",
                &["exporter"],
            ),
            processor_dropped: counter_vec(
                r,
                "sluice_processor_dropped_items_total",
                "Items a processor dropped.",
                &["processor", "signal"],
            ),
            processor_batches: counter_vec(
                r,
                "sluice_processor_batch_batches_sent_total",
                "Batches the batch processor sent, by what triggered them.",
                &["processor", "signal", "trigger"],
            ),
            registry,
        };
        Telemetry {
            inner: Arc::new(metrics),
        }
    }

    /// The registry, for components that register metrics of their own.
    pub fn registry(&self) -> &Registry {
        &self.inner.registry
    }

    /// Renders every metric in the Prometheus text exposition format.
    pub fn render(&self) -> String {
        let encoder = prometheus::TextEncoder::new();
        encoder
            .encode_to_string(&self.inner.registry.gather())
            .unwrap_or_else(|e| format!("# error encoding metrics: {e}\n"))
    }

    /// The counters of one receiver transport for one signal.
    pub fn receiver(&self, receiver: &str, transport: &str, signal: Signal) -> ReceiverCounters {
        let labels = [receiver, transport, signal.as_str()];
        ReceiverCounters {
            accepted: self.inner.receiver_accepted.with_label_values(&labels),
            refused: self.inner.receiver_refused.with_label_values(&labels),
        }
    }

    /// The counters of one exporter for one signal.
    pub fn exporter(&self, exporter: &str, signal: Signal) -> ExporterCounters {
        let labels = [exporter, signal.as_str()];
        ExporterCounters {
            sent: self.inner.exporter_sent.with_label_values(&labels),
            send_failed: self.inner.exporter_send_failed.with_label_values(&labels),
            enqueue_failed: self
                .inner
                .exporter_enqueue_failed
                .with_label_values(&labels),
        }
    }

    /// The gauges of one exporter's queue.
    pub fn exporter_queue(&self, exporter: &str) -> QueueGauges {
        QueueGauges {
            size: self
                .inner
                .exporter_queue_size
                .with_label_values(&[exporter]),
            capacity: self
                .inner
                .exporter_queue_capacity
                .with_label_values(&[exporter]),
        }
    }

    /// The counter of items a processor dropped for one signal.
    pub fn processor_dropped(&self, processor: &str, signal: Signal) -> IntCounter {
        self.inner
            .processor_dropped
            .with_label_values(&[processor, signal.as_str()])
    }

    /// The counter of batches the batch processor sent for a trigger (`size`, `timeout`, `shutdown`).
    pub fn processor_batches(&self, processor: &str, signal: Signal, trigger: &str) -> IntCounter {
        self.inner
            .processor_batches
            .with_label_values(&[processor, signal.as_str(), trigger])
    }
}

/// A receiver's counters for one transport and signal.
#[derive(Clone)]
pub struct ReceiverCounters {
    pub accepted: IntCounter,
    pub refused: IntCounter,
}

/// An exporter's counters for one signal.
#[derive(Clone)]
pub struct ExporterCounters {
    pub sent: IntCounter,
    pub send_failed: IntCounter,
    pub enqueue_failed: IntCounter,
}

/// An exporter queue's gauges.
#[derive(Clone)]
pub struct QueueGauges {
    pub size: IntGauge,
    pub capacity: IntGauge,
}
