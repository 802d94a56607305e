//! Sluice's own metrics, served in Prometheus text format on the admin address.

use std::any::Any;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use prometheus::core::Collector;
use prometheus::{
    CounterVec, GaugeVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

use crate::signal::Signal;
use crate::status::{ExporterStatus, StatusBoard};
use crate::tap::Taps;

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
    /// Metrics components registered by name, so that a component built once per pipeline (or
    /// again on reload) gets the metric registered the first time instead of a duplicate error.
    by_name: Mutex<HashMap<String, Box<dyn Any + Send + Sync>>>,
    status: StatusBoard,
    taps: Taps,
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
            by_name: Mutex::new(HashMap::new()),
            status: StatusBoard::default(),
            taps: Taps::default(),
        };
        Telemetry {
            inner: Arc::new(metrics),
        }
    }

    /// The registry, for components that register metrics of their own.
    pub fn registry(&self) -> &Registry {
        &self.inner.registry
    }

    /// The metric called `name`, made by `make` and registered the first time it is asked for.
    ///
    /// # Panics
    /// When `name` was registered before as a different type, or `make` returns a metric whose
    /// name clashes with one of the core's: both are programming errors.
    pub fn metric<M>(&self, name: &str, make: impl FnOnce() -> M) -> M
    where
        M: Collector + Clone + Send + Sync + 'static,
    {
        let mut by_name = self
            .inner
            .by_name
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(existing) = by_name.get(name) {
            return existing
                .downcast_ref::<M>()
                .unwrap_or_else(|| panic!("metric {name} registered with another type"))
                .clone();
        }
        let metric = make();
        self.inner
            .registry
            .register(Box::new(metric.clone()))
            .unwrap_or_else(|e| panic!("registering metric {name}: {e}"));
        by_name.insert(name.to_owned(), Box::new(metric.clone()));
        metric
    }

    /// An integer counter with labels, registered on first use (see [`Telemetry::metric`]).
    pub fn counter_vec(&self, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
        self.metric(name, || {
            IntCounterVec::new(Opts::new(name, help), labels)
                .unwrap_or_else(|e| panic!("metric {name}: {e}"))
        })
    }

    /// A floating-point counter with labels (amounts such as cost), registered on first use.
    pub fn float_counter_vec(&self, name: &str, help: &str, labels: &[&str]) -> CounterVec {
        self.metric(name, || {
            CounterVec::new(Opts::new(name, help), labels)
                .unwrap_or_else(|e| panic!("metric {name}: {e}"))
        })
    }

    /// An integer gauge with labels, registered on first use.
    pub fn gauge_vec(&self, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
        self.metric(name, || {
            IntGaugeVec::new(Opts::new(name, help), labels)
                .unwrap_or_else(|e| panic!("metric {name}: {e}"))
        })
    }

    /// A floating-point gauge with labels, registered on first use.
    pub fn float_gauge_vec(&self, name: &str, help: &str, labels: &[&str]) -> GaugeVec {
        self.metric(name, || {
            GaugeVec::new(Opts::new(name, help), labels)
                .unwrap_or_else(|e| panic!("metric {name}: {e}"))
        })
    }

    /// Every component's tap point.
    pub fn taps(&self) -> &Taps {
        &self.inner.taps
    }

    /// Every exporter's live status.
    pub fn status(&self) -> &StatusBoard {
        &self.inner.status
    }

    /// The live status of exporter `id`, published as `sluice_exporter_up{exporter}` (1 when
    /// the last export succeeded) and `sluice_exporter_state{exporter, state}`.
    pub fn exporter_status(&self, id: &str, type_name: &str, enabled: bool) -> Arc<ExporterStatus> {
        let up = self.gauge_vec(
            "sluice_exporter_up",
            "1 when the exporter's last export succeeded, 0 when it failed, is disabled or has sent nothing yet.",
            &["exporter"],
        );
        let state = self.gauge_vec(
            "sluice_exporter_state",
            "1 for the exporter's current state: connected, disconnected (disabled or nothing sent yet) or error.",
            &["exporter", "state"],
        );
        self.inner
            .status
            .exporter(id, type_name, enabled, (up, state))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_metric_asked_for_twice_is_registered_once_and_shared() {
        let telemetry = Telemetry::new();
        let first = telemetry.counter_vec("sluice_test_things_total", "Things.", &["kind"]);
        let second = telemetry.counter_vec("sluice_test_things_total", "Things.", &["kind"]);
        first.with_label_values(&["a"]).inc();
        second.with_label_values(&["a"]).inc();
        assert!(
            telemetry
                .render()
                .contains("sluice_test_things_total{kind=\"a\"} 2")
        );
    }
}
