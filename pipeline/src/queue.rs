//! The bounded queue and workers the core puts in front of every exporter.
//!
//! Each exporter gets its own queue, so a slow or unreachable backend fills only its own
//! queue and never delays the other exporters of a pipeline. The queue is bounded in items
//! (spans, data points, log records), the unit users size backends in.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::Deserialize;
use tokio::sync::Notify;
use tokio::task::JoinSet;

use crate::ack::Acks;
use crate::batch::Batch;
use crate::component::{Consumer, Exporter, ExporterContext};
use crate::disk_queue::{self, DiskQueue, DiskQueueSettings, FsyncPolicy};
use crate::error::{ConsumeError, ExportError, StartError};
use crate::retry::RetrySettings;
use crate::signal::Signal;
use crate::status::ExporterStatus;
use crate::tap::TapPoint;
use crate::telemetry::{ExporterCounters, QueueGauges, Telemetry};

/// What an exporter's queue does when it has no room for a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WhenFull {
    /// Drop the incoming batch and count it in `sluice_exporter_enqueue_failed_items_total`.
    DropNewest,
    /// Refuse the batch, so the pipeline pushes back and receivers answer retryably.
    Block,
}

/// The `queue` table of an exporter.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueSettings {
    /// The most items (spans, data points, log records) waiting to be sent.
    #[serde(default = "default_max_items")]
    pub max_items: usize,
    /// How many batches are sent to the backend at once.
    #[serde(default = "default_consumers")]
    pub consumers: usize,
    /// What happens to a batch that does not fit: `drop_newest` or `block`.
    #[serde(default = "default_when_full")]
    pub when_full: WhenFull,
    /// `memory`, or `disk`: a write-ahead queue that keeps the data through restarts and
    /// crashes and lets it go only once the backend accepted it.
    #[serde(default = "default_queue_type", rename = "type")]
    pub queue_type: String,
    /// Disk queues only: the directory for queue files; each exporter uses a subdirectory
    /// named after it.
    #[serde(default)]
    pub directory: Option<PathBuf>,
    /// Disk queues only: the most bytes the queue's files may take.
    #[serde(default = "disk_queue::default_max_bytes")]
    pub max_bytes: u64,
    /// Disk queues only: `always` (a batch is on stable storage before it is acknowledged)
    /// or `interval`.
    #[serde(default)]
    pub fsync: FsyncPolicy,
    /// Disk queues only: how often data is forced to stable storage with `fsync = "interval"`.
    #[serde(
        default = "disk_queue::default_fsync_interval",
        with = "crate::config::duration"
    )]
    pub fsync_interval: Duration,
    /// Disk queues only: the size of each segment file.
    #[serde(default = "disk_queue::default_segment_bytes")]
    pub segment_bytes: u64,
}

fn default_max_items() -> usize {
    100_000
}

fn default_consumers() -> usize {
    4
}

fn default_when_full() -> WhenFull {
    WhenFull::DropNewest
}

fn default_queue_type() -> String {
    "memory".to_string()
}

impl Default for QueueSettings {
    fn default() -> Self {
        QueueSettings {
            max_items: default_max_items(),
            consumers: default_consumers(),
            when_full: default_when_full(),
            queue_type: default_queue_type(),
            directory: None,
            max_bytes: disk_queue::default_max_bytes(),
            fsync: FsyncPolicy::default(),
            fsync_interval: disk_queue::default_fsync_interval(),
            segment_bytes: disk_queue::default_segment_bytes(),
        }
    }
}

/// What the core handles for every exporter, read from the keys every exporter's table may
/// have: `queue`, `retry` and `enabled`.
#[derive(Debug, Clone)]
pub struct ExporterCore {
    pub queue: QueueSettings,
    pub retry: RetrySettings,
    /// `enabled = false` keeps the exporter configured (and checked) but sends nothing: what
    /// reaches it is counted as discarded.
    pub enabled: bool,
}

impl QueueSettings {
    /// The disk queue settings of exporter `id`, when the queue is on disk.
    pub fn disk(&self, id: &str) -> Option<DiskQueueSettings> {
        let directory = self.directory.as_ref()?;
        (self.queue_type == "disk").then(|| DiskQueueSettings {
            directory: directory.join(id),
            max_bytes: self.max_bytes,
            fsync: self.fsync,
            fsync_interval: self.fsync_interval,
            segment_bytes: self.segment_bytes,
        })
    }
}

impl Default for ExporterCore {
    fn default() -> Self {
        ExporterCore {
            queue: QueueSettings::default(),
            retry: RetrySettings::default(),
            enabled: true,
        }
    }
}

struct State {
    batches: VecDeque<Batch>,
    /// Items waiting in `batches`.
    items: usize,
    /// Items being sent by workers, per signal: what is lost if shutdown abandons them.
    in_flight: [usize; 3],
    closed: bool,
}

/// An exporter behind its queue and workers: the consumer pipelines hand batches to.
pub struct QueuedExporter {
    id: String,
    settings: QueueSettings,
    retry: Mutex<RetrySettings>,
    enabled: AtomicBool,
    status: Arc<ExporterStatus>,
    discarded: [prometheus::IntCounter; 3],
    retried: [prometheus::IntCounter; 3],
    state: Mutex<State>,
    not_empty: Notify,
    /// Swapped by a reload that changes the exporter's own settings (endpoint, auth, ...): the
    /// queue and what it holds stay.
    exporter: std::sync::RwLock<Arc<dyn Exporter>>,
    counters: [ExporterCounters; 3],
    gauges: QueueGauges,
    drop_log: RateLimitedLog,
    failure_log: RateLimitedLog,
    workers: Mutex<JoinSet<()>>,
    /// The write-ahead queue on disk, when `type = "disk"`; the memory queue is unused then.
    disk: Option<DiskQueue>,
    /// Shows what is handed to this exporter.
    tap: Arc<TapPoint>,
}

fn counters_index(signal: Signal) -> usize {
    match signal {
        Signal::Traces => 0,
        Signal::Metrics => 1,
        Signal::Logs => 2,
    }
}

impl QueuedExporter {
    /// Puts `exporter` (of type `type_name`) behind its configured queue and starts its
    /// workers. A disk queue is opened first, recovering what an earlier run left in it.
    pub async fn open(
        id: &str,
        type_name: &str,
        exporter: Arc<dyn Exporter>,
        core: ExporterCore,
        telemetry: &Telemetry,
    ) -> Result<Arc<QueuedExporter>, StartError> {
        let disk = match core.queue.disk(id) {
            Some(settings) => Some(open_disk_queue(id, settings, telemetry).await?),
            None => None,
        };
        Ok(Self::start_with(
            id, type_name, exporter, core, telemetry, disk,
        ))
    }

    /// Puts `exporter` (of type `type_name`) behind a memory queue and starts its workers.
    pub fn start(
        id: &str,
        type_name: &str,
        exporter: Arc<dyn Exporter>,
        core: ExporterCore,
        telemetry: &Telemetry,
    ) -> Arc<QueuedExporter> {
        Self::start_with(id, type_name, exporter, core, telemetry, None)
    }

    fn start_with(
        id: &str,
        type_name: &str,
        exporter: Arc<dyn Exporter>,
        core: ExporterCore,
        telemetry: &Telemetry,
        disk: Option<DiskQueue>,
    ) -> Arc<QueuedExporter> {
        let ExporterCore {
            queue: settings,
            retry,
            enabled,
        } = core;
        let discarded = telemetry.counter_vec(
            "sluice_exporter_discarded_items_total",
            "Items sent to an exporter that is disabled (enabled = false), so not sent anywhere.",
            &["exporter", "signal"],
        );
        let retried = telemetry.counter_vec(
            "sluice_exporter_retried_items_total",
            "Items sent again after a retryable failure (a backend may see some twice).",
            &["exporter", "signal"],
        );
        let gauges = telemetry.exporter_queue(id);
        gauges
            .capacity
            .set(i64::try_from(settings.max_items).unwrap_or(i64::MAX));
        gauges.size.set(0);
        let queue = Arc::new(QueuedExporter {
            id: id.to_string(),
            counters: Signal::ALL.map(|signal| telemetry.exporter(id, signal)),
            gauges,
            state: Mutex::new(State {
                batches: VecDeque::new(),
                items: 0,
                in_flight: [0; 3],
                closed: false,
            }),
            not_empty: Notify::new(),
            exporter: std::sync::RwLock::new(exporter),
            drop_log: RateLimitedLog::new(Duration::from_secs(1)),
            failure_log: RateLimitedLog::new(Duration::from_secs(1)),
            workers: Mutex::new(JoinSet::new()),
            settings,
            retry: Mutex::new(retry),
            enabled: AtomicBool::new(enabled),
            status: telemetry.exporter_status(id, type_name, enabled),
            discarded: Signal::ALL.map(|s| discarded.with_label_values(&[id, s.as_str()])),
            retried: Signal::ALL.map(|s| retried.with_label_values(&[id, s.as_str()])),
            disk,
            tap: telemetry.taps().point("exporter", id),
        });
        queue.publish_disk_size();
        let mut workers = JoinSet::new();
        for _ in 0..queue.settings.consumers.max(1) {
            match &queue.disk {
                Some(disk) => workers.spawn(Arc::clone(&queue).work_from_disk(disk.clone())),
                None => workers.spawn(Arc::clone(&queue).work()),
            };
        }
        *queue.lock_workers() = workers;
        queue
    }

    fn lock_state(&self) -> std::sync::MutexGuard<'_, State> {
        // A worker never panics while holding the lock (no user code runs under it).
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn lock_workers(&self) -> std::sync::MutexGuard<'_, JoinSet<()>> {
        self.workers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn counters(&self, signal: Signal) -> &ExporterCounters {
        &self.counters[counters_index(signal)]
    }

    async fn next_batch(&self) -> Option<Batch> {
        loop {
            let notified = self.not_empty.notified();
            {
                let mut state = self.lock_state();
                if let Some(batch) = state.batches.pop_front() {
                    state.items -= batch.item_count();
                    state.in_flight[counters_index(batch.signal())] += batch.item_count();
                    self.gauges
                        .size
                        .set(i64::try_from(state.items).unwrap_or(i64::MAX));
                    if !state.batches.is_empty() {
                        // Wake another idle worker: one notification may cover several pushes.
                        self.not_empty.notify_one();
                    }
                    return Some(batch);
                }
                if state.closed {
                    return None;
                }
            }
            notified.await;
        }
    }

    async fn work(self: Arc<Self>) {
        while let Some(batch) = self.next_batch().await {
            self.send(batch).await;
        }
    }

    async fn send(&self, batch: Batch) {
        let signal = batch.signal();
        let items = batch.item_count();
        self.deliver(batch).await;
        self.lock_state().in_flight[counters_index(signal)] -= items;
    }

    /// Takes records from the disk queue, sends them, and lets them go from the disk once the
    /// backend accepted them or refused them for good. A record being sent when the process
    /// stops stays on disk and is sent again at the next start.
    async fn work_from_disk(self: Arc<Self>, disk: DiskQueue) {
        while let Some(record) = disk.pop().await {
            match decode_record(&record.payload) {
                Ok(batch) => self.deliver(batch).await,
                Err(error) => {
                    // Checksummed on disk, so this is a record an incompatible version wrote.
                    tracing::error!(
                        exporter = %self.id, record = %record.id, items = record.items, %error,
                        "a disk queue record is not a valid batch; it is dropped"
                    );
                    self.counters(Signal::Traces)
                        .send_failed
                        .inc_by(u64::from(record.items));
                }
            }
            if let Err(error) = disk.ack(record.id) {
                tracing::error!(exporter = %self.id, %error, "cannot mark a record delivered");
            }
            self.publish_disk_size();
        }
    }

    fn publish_disk_size(&self) {
        if let Some(disk) = &self.disk {
            self.gauges
                .size
                .set(i64::try_from(disk.stats().items).unwrap_or(i64::MAX));
        }
    }

    /// Sends `batch` with retries, counts the outcome and settles its acknowledgements.
    async fn deliver(&self, mut batch: Batch) {
        let signal = batch.signal();
        let items = batch.item_count();
        // Failed if this future is dropped before the backend has the data (shutdown aborts
        // workers stuck on a dead backend).
        let acks = UndeliveredAcks(
            Some(batch.take_acks()),
            format!("exporter {} stopped before sending the data", self.id),
        );
        let outcome = self.send_with_retries(batch).await;
        let items = items as u64;
        match outcome {
            Ok(()) => {
                acks.delivered();
                self.counters(signal).sent.inc_by(items);
            }
            Err((error, attempts)) => {
                drop(UndeliveredAcks(
                    acks.take(),
                    format!("exporter {} could not send the data: {error}", self.id),
                ));
                self.counters(signal).send_failed.inc_by(items);
                let kind = match error {
                    ExportError::Retryable { .. } => "retryable",
                    ExportError::Permanent(_) => "permanent",
                };
                if let Some(suppressed) = self.failure_log.should_log() {
                    tracing::error!(
                        exporter = %self.id, %signal, items, kind, attempts, %error,
                        suppressed_since_last = suppressed,
                        "export failed; the batch is dropped"
                    );
                }
            }
        }
    }

    /// Sends `batch`, retrying retryable failures as the `retry` settings allow. On failure,
    /// returns the last error and how many attempts were made.
    async fn send_with_retries(&self, mut batch: Batch) -> Result<(), (ExportError, u32)> {
        // Clones for retries then share the encoded bytes instead of copying decoded data.
        let retry = self.retry.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let exporter = self.exporter();
        if retry.enabled {
            batch.encoded_segments();
        }
        let signal = batch.signal();
        let items = batch.item_count();
        let first_attempt = tokio::time::Instant::now();
        let mut backoff = retry.backoff();
        let mut attempts = 0;
        loop {
            attempts += 1;
            let attempt = if retry.enabled {
                batch.clone()
            } else {
                std::mem::replace(&mut batch, Batch::empty(signal))
            };
            let error = match exporter.export(attempt).await {
                Ok(()) => {
                    self.status.succeeded();
                    return Ok(());
                }
                Err(error) => error,
            };
            self.status.failed(&error.to_string());
            let ExportError::Retryable { throttle, .. } = &error else {
                return Err((error, attempts));
            };
            if !retry.enabled {
                return Err((error, attempts));
            }
            let wait = backoff.next_wait(*throttle);
            if !backoff.may_retry(first_attempt.elapsed(), wait) {
                return Err((error, attempts));
            }
            if let Some(suppressed) = self.failure_log.should_log() {
                tracing::warn!(
                    exporter = %self.id, %signal, items, attempts, retry_in = ?wait, %error, suppressed_since_last = suppressed,
                    "export failed; retrying"
                );
            }
            self.retried[counters_index(signal)].inc_by(items as u64);
            tokio::time::sleep(wait).await;
        }
    }

    fn exporter(&self) -> Arc<dyn Exporter> {
        Arc::clone(&self.exporter.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Sends the next batches with `exporter` instead (a reload changed its settings). The old
    /// exporter is shut down first, so that a new one serving the same port (a scrape
    /// endpoint) can bind it; batches it is sending finish. Queued data is kept.
    pub async fn replace_exporter(
        &self,
        mut exporter: Box<dyn Exporter>,
        ctx: &ExporterContext,
    ) -> Result<(), StartError> {
        self.exporter().shutdown().await;
        exporter.start(ctx).await?;
        *self.exporter.write().unwrap_or_else(|p| p.into_inner()) = Arc::from(exporter);
        Ok(())
    }

    /// Applies reloaded `retry` and `enabled` settings.
    pub fn update(&self, retry: RetrySettings, enabled: bool) {
        *self.retry.lock().unwrap_or_else(|p| p.into_inner()) = retry;
        self.set_enabled(enabled);
    }

    /// The exporter's live status.
    pub fn status(&self) -> &Arc<ExporterStatus> {
        &self.status
    }

    /// Turns sending on or off; the configuration and the queued data are kept.
    pub fn set_enabled(&self, enabled: bool) {
        self.enabled.store(enabled, Ordering::Relaxed);
        self.status.set_enabled(enabled);
    }

    /// Lets the workers finish until `deadline` (they end once the queue is closed and
    /// empty), then aborts those still sending.
    async fn stop_workers(&self, deadline: Instant) {
        let mut workers = std::mem::take(&mut *self.lock_workers());
        let drained = tokio::time::timeout_at(deadline.into(), async {
            while workers.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            workers.abort_all();
            while workers.join_next().await.is_some() {}
        }
    }

    /// Stops taking batches, lets the workers send what is queued until `deadline`, then
    /// counts and logs what could not be sent.
    pub async fn shutdown(&self, deadline: Instant) {
        self.lock_state().closed = true;
        self.not_empty.notify_waiters();
        if let Some(disk) = &self.disk {
            self.shutdown_disk(disk, deadline).await;
            return;
        }
        self.stop_workers(deadline).await;
        let (mut left, abandoned) = {
            let mut state = self.lock_state();
            state.items = 0;
            (
                state.batches.drain(..).collect::<Vec<_>>(),
                std::mem::take(&mut state.in_flight),
            )
        };
        self.gauges.size.set(0);
        for batch in &mut left {
            batch
                .take_acks()
                .fail_now("shut down before the data was sent");
        }
        for signal in Signal::ALL {
            let queued: usize = left
                .iter()
                .filter(|b| b.signal() == signal)
                .map(Batch::item_count)
                .sum();
            let items = queued + abandoned[counters_index(signal)];
            if items > 0 {
                self.counters(signal).send_failed.inc_by(items as u64);
                tracing::error!(
                    exporter = %self.id, %signal, items,
                    "shutdown timeout reached: queued and in-flight items were not sent"
                );
            }
        }
        self.exporter().shutdown().await;
    }
}

impl QueuedExporter {
    /// Stops a disk-queued exporter: new batches are refused, the workers send what they can
    /// until `deadline`, and whatever is left stays on disk for the next start. Nothing is
    /// discarded, whatever the backend's state.
    async fn shutdown_disk(&self, disk: &DiskQueue, deadline: Instant) {
        let closing = disk.clone();
        // Close: no more pushes, and workers stop once the queue has nothing left to hand out.
        let closed = tokio::task::spawn_blocking(move || closing.close()).await;
        if let Ok(Err(error)) = closed {
            tracing::error!(exporter = %self.id, %error, "closing the disk queue failed");
        }
        // Records being sent when the workers are stopped were not acknowledged: they are
        // sent again at the next start.
        self.stop_workers(deadline).await;
        let flushing = disk.clone();
        let flushed = tokio::task::spawn_blocking(move || flushing.flush()).await;
        if let Ok(Err(error)) = flushed {
            tracing::error!(exporter = %self.id, %error, "flushing the disk queue failed");
        }
        let left = disk.stats();
        if left.records > 0 {
            tracing::info!(
                exporter = %self.id, items = left.items, records = left.records,
                bytes = left.bytes,
                "data not yet sent stays in the disk queue for the next start"
            );
        }
        self.exporter().shutdown().await;
    }

    /// Writes `batch` to the disk queue. Once it is written its acknowledgements are
    /// released: the data is safe from here on.
    async fn consume_to_disk(&self, disk: &DiskQueue, batch: Batch) -> Result<(), ConsumeError> {
        let items = batch.item_count();
        let signal = batch.signal();
        if self.lock_state().closed {
            return Err(ConsumeError::ShuttingDown);
        }
        let pending = disk.stats().items;
        let refusal = if pending > 0 && pending + items as u64 > self.settings.max_items as u64 {
            format!(
                "exporter {} disk queue holds {pending} items, max_items is {}",
                self.id, self.settings.max_items
            )
        } else {
            let record = encode_record(&batch);
            match disk.push_async(record, items as u32).await {
                Ok(_) => {
                    self.publish_disk_size();
                    return Ok(());
                }
                Err(error) => format!("exporter {}: {error}", self.id),
            }
        };
        match self.settings.when_full {
            WhenFull::Block => Err(ConsumeError::Backpressure(refusal)),
            WhenFull::DropNewest => {
                let mut batch = batch;
                batch.take_acks().fail_now(&refusal);
                self.counters(signal).enqueue_failed.inc_by(items as u64);
                if let Some(suppressed) = self.drop_log.should_log() {
                    tracing::error!(
                        exporter = %self.id, %signal, items, suppressed_since_last = suppressed,
                        "{refusal}: dropping the batch"
                    );
                }
                Ok(())
            }
        }
    }
}

/// Opens exporter `id`'s disk queue and reports what it recovered.
async fn open_disk_queue(
    id: &str,
    settings: DiskQueueSettings,
    telemetry: &Telemetry,
) -> Result<DiskQueue, StartError> {
    let name = id.to_string();
    let directory = settings.directory.clone();
    let opened = tokio::task::spawn_blocking(move || DiskQueue::open(&name, settings))
        .await
        .map_err(|e| StartError {
            component: format!("exporter {id}"),
            message: format!("opening the disk queue failed: {e}"),
        })?;
    let (disk, report) = opened.map_err(|e| StartError {
        component: format!("exporter {id}"),
        message: e.to_string(),
    })?;
    telemetry
        .counter_vec(
            "sluice_exporter_disk_queue_skipped_records_total",
            "Damaged or cut-off disk queue records skipped when the queue was opened.",
            &["exporter"],
        )
        .with_label_values(&[id])
        .inc_by(report.skipped);
    if report.skipped > 0 {
        tracing::warn!(
            exporter = %id, directory = %directory.display(), skipped = report.skipped,
            skipped_bytes = report.skipped_bytes,
            "damaged records in the disk queue were skipped; every intact record is kept"
        );
    }
    tracing::info!(
        exporter = %id, directory = %directory.display(), items = report.items,
        records = report.records, redelivered = report.redelivered,
        "disk queue opened"
    );
    Ok(disk)
}

/// A disk queue record: the signal's tag, then the batch's protobuf encoding.
fn encode_record(batch: &Batch) -> bytes::Bytes {
    let mut record = Vec::with_capacity(1 + batch.encoded_len());
    record.push(counters_index(batch.signal()) as u8);
    batch.write_encoded(&mut record);
    bytes::Bytes::from(record)
}

/// The batch in a disk queue record written by [`encode_record`].
fn decode_record(record: &bytes::Bytes) -> Result<Batch, String> {
    let signal = match record.first() {
        Some(0) => Signal::Traces,
        Some(1) => Signal::Metrics,
        Some(2) => Signal::Logs,
        other => return Err(format!("unknown signal tag {other:?}")),
    };
    Batch::from_encoded(signal, record.slice(1..)).map_err(|e| e.to_string())
}

#[async_trait]
impl Consumer for QueuedExporter {
    async fn consume(&self, batch: Batch) -> Result<(), ConsumeError> {
        let items = batch.item_count();
        if items == 0 {
            return Ok(());
        }
        let signal = batch.signal();
        if !self.enabled.load(Ordering::Relaxed) {
            self.discarded[counters_index(signal)].inc_by(items as u64);
            return Ok(());
        }
        self.tap.offer(&batch);
        if let Some(disk) = &self.disk {
            return self.consume_to_disk(disk, batch).await;
        }
        {
            let mut state = self.lock_state();
            if state.closed {
                return Err(ConsumeError::ShuttingDown);
            }
            // A batch larger than the whole queue still goes in when the queue is empty, so an
            // oversized batch is sent rather than refused forever.
            let fits = state.items == 0 || state.items + items <= self.settings.max_items;
            if fits {
                state.items += items;
                state.batches.push_back(batch);
                self.gauges
                    .size
                    .set(i64::try_from(state.items).unwrap_or(i64::MAX));
                drop(state);
                self.not_empty.notify_one();
                return Ok(());
            }
        }
        match self.settings.when_full {
            WhenFull::Block => Err(ConsumeError::Backpressure(format!(
                "exporter {} queue is full",
                self.id
            ))),
            WhenFull::DropNewest => {
                let mut batch = batch;
                batch
                    .take_acks()
                    .fail_now(&format!("exporter {} queue is full", self.id));
                self.counters(signal).enqueue_failed.inc_by(items as u64);
                if let Some(suppressed) = self.drop_log.should_log() {
                    tracing::warn!(
                        exporter = %self.id, %signal, items, suppressed_since_last = suppressed,
                        capacity = self.settings.max_items,
                        "exporter queue is full: dropping the batch"
                    );
                }
                Ok(())
            }
        }
    }
}

/// Acknowledgements of data being sent: failed with the reason when dropped, unless
/// [`UndeliveredAcks::delivered`] was called.
struct UndeliveredAcks(Option<Acks>, String);

impl UndeliveredAcks {
    fn delivered(mut self) {
        // Released without a failure mark: delivered.
        self.0.take();
    }

    fn take(mut self) -> Option<Acks> {
        self.0.take()
    }
}

impl Drop for UndeliveredAcks {
    fn drop(&mut self) {
        if let Some(acks) = self.0.take() {
            acks.fail_now(&self.1);
        }
    }
}

/// Limits a repeated log line to one per interval, counting the ones it held back.
struct RateLimitedLog {
    interval: Duration,
    state: Mutex<(Option<Instant>, u64)>,
}

impl RateLimitedLog {
    fn new(interval: Duration) -> RateLimitedLog {
        RateLimitedLog {
            interval,
            state: Mutex::new((None, 0)),
        }
    }

    /// Whether to log now; if so, how many occurrences were not logged since the last one.
    fn should_log(&self) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        match state.0 {
            Some(last) if now.duration_since(last) < self.interval => {
                state.1 += 1;
                None
            }
            _ => {
                let suppressed = state.1;
                *state = (Some(now), 0);
                Some(suppressed)
            }
        }
    }
}

/// Hands each batch to several consumers: a receiver feeding several pipelines, or a
/// pipeline feeding several exporters.
pub struct Fanout {
    consumers: Vec<Arc<dyn Consumer>>,
}

impl Fanout {
    /// A fan-out to `consumers`, or the consumer itself when there is only one.
    pub fn over(mut consumers: Vec<Arc<dyn Consumer>>) -> Arc<dyn Consumer> {
        if consumers.len() == 1 {
            return consumers.remove(0);
        }
        Arc::new(Fanout { consumers })
    }
}

#[async_trait]
impl Consumer for Fanout {
    async fn consume(&self, mut batch: Batch) -> Result<(), ConsumeError> {
        // Encode once here rather than once per consumer: clones of an encoded batch share
        // its bytes.
        batch.encoded_segments();
        let mut first_error = None;
        for consumer in &self.consumers {
            if let Err(error) = consumer.consume(batch.clone()).await {
                first_error.get_or_insert(error);
            }
        }
        // Every consumer was given the batch; a refusal by one is reported so the sender can
        // retry (the others may then see it twice: at-least-once, never lost).
        first_error.map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::Request;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
    use tokio::sync::{Semaphore, mpsc};

    fn spans(n: usize) -> Batch {
        Batch::from_request(Request::Traces(ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans {
                    spans: (0..n)
                        .map(|i| Span {
                            name: format!("s{i}"),
                            ..Default::default()
                        })
                        .collect(),
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }))
    }

    /// An exporter that reports each batch and waits for a permit before returning.
    struct GatedExporter {
        sent: mpsc::UnboundedSender<usize>,
        gate: Arc<Semaphore>,
    }

    #[async_trait]
    impl Exporter for GatedExporter {
        async fn export(&self, batch: Batch) -> Result<(), ExportError> {
            let _permit = self
                .gate
                .acquire()
                .await
                .map_err(|_| ExportError::permanent("closed"))?;
            let _ = self.sent.send(batch.item_count());
            Ok(())
        }
    }

    fn gated(
        telemetry: &Telemetry,
        settings: QueueSettings,
    ) -> (
        Arc<QueuedExporter>,
        mpsc::UnboundedReceiver<usize>,
        Arc<Semaphore>,
    ) {
        let (tx, rx) = mpsc::unbounded_channel();
        let gate = Arc::new(Semaphore::new(0));
        let exporter = Arc::new(GatedExporter {
            sent: tx,
            gate: Arc::clone(&gate),
        });
        (
            QueuedExporter::start(
                "gated",
                "gated",
                exporter,
                ExporterCore {
                    queue: settings,
                    ..ExporterCore::default()
                },
                telemetry,
            ),
            rx,
            gate,
        )
    }

    fn metric(telemetry: &Telemetry, name: &str) -> String {
        telemetry
            .render()
            .lines()
            .filter(|l| l.starts_with(name))
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[tokio::test]
    async fn full_queue_drops_newest_and_counts_it() {
        let telemetry = Telemetry::new();
        let settings = QueueSettings {
            max_items: 10,
            consumers: 1,
            ..Default::default()
        };
        let (queue, mut sent, gate) = gated(&telemetry, settings);
        // The single worker takes the first batch and waits at the gate; 10 more fill the queue.
        queue.consume(spans(4)).await.unwrap();
        queue.consume(spans(6)).await.unwrap();
        queue.consume(spans(4)).await.unwrap();
        // Whether the worker already holds the first batch or not, 14 items never fit in 10.
        queue.consume(spans(3)).await.unwrap();
        gate.add_permits(100);
        let mut total = 0;
        while total < 10 {
            total += sent.recv().await.unwrap();
        }
        let dropped = metric(&telemetry, "sluice_exporter_enqueue_failed_items_total");
        assert!(
            dropped.contains("} 3") || dropped.contains("} 7"),
            "{dropped}"
        );
        queue
            .shutdown(Instant::now() + Duration::from_secs(5))
            .await;
    }

    #[tokio::test]
    async fn full_queue_in_block_mode_pushes_back() {
        let telemetry = Telemetry::new();
        let settings = QueueSettings {
            max_items: 5,
            consumers: 1,
            when_full: WhenFull::Block,
            ..Default::default()
        };
        let (queue, _sent, gate) = gated(&telemetry, settings);
        queue.consume(spans(5)).await.unwrap();
        queue.consume(spans(5)).await.unwrap_or(());
        let refused = queue.consume(spans(5)).await;
        assert!(
            matches!(refused, Err(ConsumeError::Backpressure(_))),
            "{refused:?}"
        );
        gate.add_permits(100);
        queue
            .shutdown(Instant::now() + Duration::from_secs(5))
            .await;
    }

    #[tokio::test]
    async fn shutdown_drains_the_queue_before_returning() {
        let telemetry = Telemetry::new();
        let (queue, mut sent, gate) = gated(&telemetry, QueueSettings::default());
        for _ in 0..5 {
            queue.consume(spans(2)).await.unwrap();
        }
        gate.add_permits(100);
        queue
            .shutdown(Instant::now() + Duration::from_secs(5))
            .await;
        let mut total = 0;
        while let Ok(n) = sent.try_recv() {
            total += n;
        }
        assert_eq!(total, 10);
        assert!(metric(&telemetry, "sluice_exporter_sent_items_total").contains("} 10"));
    }

    #[tokio::test]
    async fn shutdown_timeout_counts_what_was_not_sent() {
        let telemetry = Telemetry::new();
        let settings = QueueSettings {
            consumers: 1,
            ..Default::default()
        };
        let (queue, _sent, _gate) = gated(&telemetry, settings);
        queue.consume(spans(2)).await.unwrap();
        queue.consume(spans(3)).await.unwrap();
        queue
            .shutdown(Instant::now() + Duration::from_millis(50))
            .await;
        // Both the batch abandoned in flight and the one still queued are counted.
        assert!(metric(&telemetry, "sluice_exporter_send_failed_items_total").contains("} 5"));
        assert!(matches!(
            queue.consume(spans(1)).await,
            Err(ConsumeError::ShuttingDown)
        ));
    }

    /// An exporter that answers from a script of results and records when each attempt came.
    struct ScriptedExporter {
        script: Mutex<VecDeque<Result<(), ExportError>>>,
        attempts: Mutex<Vec<tokio::time::Instant>>,
        delivered: mpsc::UnboundedSender<usize>,
    }

    #[async_trait]
    impl Exporter for ScriptedExporter {
        async fn export(&self, batch: Batch) -> Result<(), ExportError> {
            self.attempts
                .lock()
                .unwrap()
                .push(tokio::time::Instant::now());
            let result = self.script.lock().unwrap().pop_front().unwrap_or(Ok(()));
            if result.is_ok() {
                let _ = self.delivered.send(batch.item_count());
            }
            result
        }
    }

    fn scripted(
        telemetry: &Telemetry,
        script: Vec<Result<(), ExportError>>,
        core: ExporterCore,
    ) -> (
        Arc<QueuedExporter>,
        Arc<ScriptedExporter>,
        mpsc::UnboundedReceiver<usize>,
    ) {
        let (tx, rx) = mpsc::unbounded_channel();
        let exporter = Arc::new(ScriptedExporter {
            script: Mutex::new(script.into()),
            attempts: Mutex::new(Vec::new()),
            delivered: tx,
        });
        let queue = QueuedExporter::start(
            "scripted",
            "test",
            Arc::clone(&exporter) as Arc<dyn Exporter>,
            core,
            telemetry,
        );
        (queue, exporter, rx)
    }

    fn exact_retry() -> RetrySettings {
        RetrySettings {
            jitter: 0.0,
            multiplier: 2.0,
            initial_interval: Duration::from_secs(1),
            max_interval: Duration::from_secs(30),
            ..RetrySettings::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn retryable_failures_are_retried_with_growing_waits_until_accepted() {
        let telemetry = Telemetry::new();
        let core = ExporterCore {
            retry: exact_retry(),
            ..ExporterCore::default()
        };
        let script = vec![
            Err(ExportError::retryable("503")),
            Err(ExportError::retryable("503")),
            Ok(()),
        ];
        let (queue, exporter, mut delivered) = scripted(&telemetry, script, core);
        queue.consume(spans(7)).await.unwrap();
        assert_eq!(delivered.recv().await, Some(7));
        let attempts = exporter.attempts.lock().unwrap().clone();
        let gaps: Vec<Duration> = attempts.windows(2).map(|w| w[1] - w[0]).collect();
        assert_eq!(gaps, [Duration::from_secs(1), Duration::from_secs(2)]);
        assert!(metric(&telemetry, "sluice_exporter_sent_items_total").contains("} 7"));
        assert!(metric(&telemetry, "sluice_exporter_retried_items_total").contains("} 14"));
        assert_eq!(
            queue.status().state(),
            crate::status::ExporterState::Connected
        );
        queue
            .shutdown(Instant::now() + Duration::from_secs(5))
            .await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_throttle_longer_than_backoff_is_waited_in_full() {
        let telemetry = Telemetry::new();
        let core = ExporterCore {
            retry: exact_retry(),
            ..ExporterCore::default()
        };
        let script = vec![
            Err(ExportError::Retryable {
                message: "429".into(),
                throttle: Some(Duration::from_secs(2)),
            }),
            Ok(()),
        ];
        let (queue, exporter, mut delivered) = scripted(&telemetry, script, core);
        queue.consume(spans(1)).await.unwrap();
        assert_eq!(delivered.recv().await, Some(1));
        let attempts = exporter.attempts.lock().unwrap().clone();
        assert_eq!(attempts[1] - attempts[0], Duration::from_secs(2));
        queue
            .shutdown(Instant::now() + Duration::from_secs(5))
            .await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_permanent_failure_drops_the_batch_at_once_and_counts_it() {
        let telemetry = Telemetry::new();
        let script = vec![Err(ExportError::permanent("400 bad request")), Ok(())];
        let (queue, exporter, mut delivered) =
            scripted(&telemetry, script, ExporterCore::default());
        queue.consume(spans(3)).await.unwrap();
        queue.consume(spans(4)).await.unwrap();
        // The second batch is delivered; the first was never retried.
        assert_eq!(delivered.recv().await, Some(4));
        assert_eq!(exporter.attempts.lock().unwrap().len(), 2);
        assert!(metric(&telemetry, "sluice_exporter_send_failed_items_total").contains("} 3"));
        let report = queue.status().report();
        assert_eq!(report.last_error.as_deref(), Some("400 bad request"));
        queue
            .shutdown(Instant::now() + Duration::from_secs(5))
            .await;
    }

    #[tokio::test(start_paused = true)]
    async fn retrying_gives_up_at_max_elapsed_time_and_counts_the_loss() {
        let telemetry = Telemetry::new();
        let core = ExporterCore {
            retry: RetrySettings {
                max_elapsed_time: Duration::from_secs(5),
                ..exact_retry()
            },
            ..ExporterCore::default()
        };
        let script = (0..10)
            .map(|_| Err(ExportError::retryable("unavailable")))
            .collect();
        let (queue, exporter, _delivered) = scripted(&telemetry, script, core);
        queue.consume(spans(2)).await.unwrap();
        wait_for_metric(&telemetry, "sluice_exporter_send_failed_items_total", "} 2").await;
        // Waits of 1 s and 2 s fit in 5 s; the next (4 s) would not.
        assert_eq!(exporter.attempts.lock().unwrap().len(), 3);
        assert_eq!(queue.status().report().consecutive_failures, 3);
        queue
            .shutdown(Instant::now() + Duration::from_secs(5))
            .await;
    }

    #[tokio::test]
    async fn a_disabled_exporter_sends_nothing_and_counts_what_it_discarded() {
        let telemetry = Telemetry::new();
        let core = ExporterCore {
            enabled: false,
            ..ExporterCore::default()
        };
        let (queue, exporter, _delivered) = scripted(&telemetry, vec![], core);
        queue.consume(spans(5)).await.unwrap();
        assert!(metric(&telemetry, "sluice_exporter_discarded_items_total").contains("} 5"));
        queue.set_enabled(true);
        queue.consume(spans(1)).await.unwrap();
        queue
            .shutdown(Instant::now() + Duration::from_secs(5))
            .await;
        assert_eq!(exporter.attempts.lock().unwrap().len(), 1);
    }

    async fn wait_for_metric(telemetry: &Telemetry, name: &str, expected: &str) {
        while !metric(telemetry, name).contains(expected) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
