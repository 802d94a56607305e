//! Live taps: watching the data leaving any component of a running pipeline.
//!
//! Every component has a tap point, found by kind and id (`receiver/otlp`,
//! `processor/redaction`, `exporter/tempo`). A tap point costs one relaxed atomic load per
//! batch while nobody watches. A watcher gets copies of batches through a small bounded
//! channel: when it reads too slowly the batches it cannot take are skipped and counted, never
//! waited for, so a slow viewer cannot slow the pipeline.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

use crate::batch::Batch;

/// Batches a watcher may have waiting before further ones are skipped.
const WATCHER_BUFFER: usize = 64;

struct Watcher {
    sender: mpsc::Sender<Batch>,
    skipped: Arc<AtomicU64>,
}

/// Where the batches leaving one component can be watched.
pub struct TapPoint {
    name: String,
    watched: AtomicBool,
    watchers: Mutex<Vec<Watcher>>,
}

impl std::fmt::Debug for TapPoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TapPoint")
            .field("name", &self.name)
            .finish()
    }
}

impl TapPoint {
    fn new(name: String) -> TapPoint {
        TapPoint {
            name,
            watched: AtomicBool::new(false),
            watchers: Mutex::new(Vec::new()),
        }
    }

    /// The point's name, `kind/id`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Offers a copy of `batch` to the watchers, if any. Never waits.
    pub fn offer(&self, batch: &Batch) {
        if !self.watched.load(Ordering::Relaxed) {
            return;
        }
        let mut watchers = self.watchers.lock().unwrap_or_else(|p| p.into_inner());
        watchers.retain(|watcher| match watcher.sender.try_send(batch.clone()) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                watcher
                    .skipped
                    .fetch_add(batch.item_count() as u64, Ordering::Relaxed);
                true
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        });
        self.watched.store(!watchers.is_empty(), Ordering::Relaxed);
    }

    /// Starts watching: the batches leaving the component from now on.
    pub fn watch(&self) -> Watch {
        let (sender, receiver) = mpsc::channel(WATCHER_BUFFER);
        let skipped = Arc::new(AtomicU64::new(0));
        let mut watchers = self.watchers.lock().unwrap_or_else(|p| p.into_inner());
        watchers.push(Watcher {
            sender,
            skipped: Arc::clone(&skipped),
        });
        self.watched.store(true, Ordering::Relaxed);
        Watch { receiver, skipped }
    }
}

/// One viewer's stream of batches from a tap point.
pub struct Watch {
    receiver: mpsc::Receiver<Batch>,
    skipped: Arc<AtomicU64>,
}

impl Watch {
    /// The next batch; `None` when the tap point is gone.
    pub async fn next(&mut self) -> Option<Batch> {
        self.receiver.recv().await
    }

    /// A batch already waiting, without waiting for one: for draining what was offered
    /// before a point in time (`sluice test` drains after the pipeline has shut down).
    pub fn try_next(&mut self) -> Option<Batch> {
        self.receiver.try_recv().ok()
    }

    /// Items skipped since the last call because the viewer was behind.
    pub fn take_skipped(&self) -> u64 {
        self.skipped.swap(0, Ordering::Relaxed)
    }
}

/// Every tap point of the process, by name.
#[derive(Clone, Default)]
pub struct Taps {
    points: Arc<Mutex<BTreeMap<String, Arc<TapPoint>>>>,
}

impl Taps {
    /// The tap point of component `id` of `kind` (`receiver`, `processor`, `exporter`),
    /// created the first time. A processor used in several pipelines has one point.
    pub fn point(&self, kind: &str, id: &str) -> Arc<TapPoint> {
        let name = format!("{kind}/{id}");
        let mut points = self.points.lock().unwrap_or_else(|p| p.into_inner());
        Arc::clone(
            points
                .entry(name.clone())
                .or_insert_with(|| Arc::new(TapPoint::new(name))),
        )
    }

    /// The point a user named: `kind/id`, or an id alone when only one kind has it.
    pub fn find(&self, name: &str) -> Result<Arc<TapPoint>, String> {
        let points = self.points.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(point) = points.get(name) {
            return Ok(Arc::clone(point));
        }
        let matching: Vec<&Arc<TapPoint>> = points
            .iter()
            .filter(|(full, _)| full.split_once('/').is_some_and(|(_, id)| id == name))
            .map(|(_, point)| point)
            .collect();
        match matching.as_slice() {
            [one] => Ok(Arc::clone(one)),
            [] => Err(format!(
                "no component {name:?}; components: {}",
                points.keys().cloned().collect::<Vec<_>>().join(", ")
            )),
            several => Err(format!(
                "{name:?} names several components; say which: {}",
                several
                    .iter()
                    .map(|p| p.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signal::Signal;

    fn batch() -> Batch {
        Batch::empty(Signal::Traces)
    }

    #[tokio::test]
    async fn a_watcher_sees_batches_offered_after_it_started() {
        let taps = Taps::default();
        let point = taps.point("processor", "batch");
        point.offer(&batch());
        let mut watch = taps.find("batch").unwrap().watch();
        point.offer(&batch());
        assert!(watch.next().await.is_some());
        assert!(
            watch.receiver.try_recv().is_err(),
            "the earlier batch is not replayed"
        );
    }

    #[test]
    fn a_slow_watcher_skips_instead_of_blocking_and_a_gone_one_is_dropped() {
        let taps = Taps::default();
        let point = taps.point("exporter", "tempo");
        let watch = point.watch();
        use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
        use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
        let one_span =
            Batch::from_request(crate::batch::Request::Traces(ExportTraceServiceRequest {
                resource_spans: vec![ResourceSpans {
                    scope_spans: vec![ScopeSpans {
                        spans: vec![Span::default()],
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
            }));
        for _ in 0..WATCHER_BUFFER + 3 {
            point.offer(&one_span);
        }
        assert_eq!(watch.take_skipped(), 3);
        assert_eq!(watch.take_skipped(), 0, "taking resets the count");
        drop(watch);
        point.offer(&batch());
        assert!(!point.watched.load(Ordering::Relaxed));
    }

    #[test]
    fn ambiguous_and_unknown_names_are_explained() {
        let taps = Taps::default();
        taps.point("receiver", "otlp");
        taps.point("exporter", "otlp");
        assert!(taps.find("otlp").unwrap_err().contains("receiver/otlp"));
        assert!(taps.find("exporter/otlp").is_ok());
        assert!(taps.find("nope").unwrap_err().contains("no component"));
    }
}
