//! A write-ahead queue on disk: records survive restarts and crashes, and leave the disk only
//! once acknowledged.
//!
//! One queue serves one exporter. Producers [`push`](DiskQueue::push) opaque payloads (the
//! core stores one encoded batch per record) with their item count; consumers
//! [`pop`](DiskQueue::pop) them in push order, then [`ack`](DiskQueue::ack) each once the
//! backend accepted it (or refused it for good), or [`nack`](DiskQueue::nack) it to have it
//! handed out again. Acknowledgements may come in any order.
//!
//! # Guarantees
//!
//! - **At least once.** A record is delivered until it is acknowledged. After a restart every
//!   record not acknowledged is handed out again, in push order, including those that were
//!   being sent when the process stopped: the backend may see those twice, and
//!   [`RecoveryReport::redelivered`] counts them.
//! - **Durability.** With `fsync = "always"`, [`push`](DiskQueue::push) returns once the record
//!   is on stable storage. With `fsync = "interval"` (the default) a push returns once the
//!   record is written to the operating system, which keeps it through a crash of the process
//!   (SIGKILL, panic, OOM kill); a power loss or kernel crash can lose the pushes of the last
//!   `fsync_interval`. Acknowledgements are flushed every `fsync_interval` under either policy:
//!   losing one only means its record is delivered again. [`close`](DiskQueue::close) and
//!   dropping the last handle flush everything.
//! - **Nothing is discarded on shutdown.** Records still queued or in flight stay on disk for
//!   the next start, whatever the backend's state.
//! - **Damage is skipped, never fatal.** At start-up a record whose checksum fails, or that a
//!   crash cut short, is skipped, counted in [`RecoveryReport::skipped`] and logged with the
//!   file and offset; every intact record around it is delivered. A damaged tail is cut off
//!   the file so it is reported once.
//! - **Bounded.** A push that would take the queue's files (segments and marks) past
//!   `max_bytes` fails with [`DiskQueueError::QueueFull`], a full disk with
//!   [`DiskQueueError::DiskFull`], and the caller counts the batch as dropped. Delivery marks
//!   written after a push can exceed the bound by 32 bytes per queued record. A single record
//!   larger than `max_bytes` is always refused.
//! - **One process per directory.** Nothing stops two processes from opening the same
//!   directory; they would corrupt each other's queue. The core gives each exporter its own
//!   subdirectory.
//!
//! # On disk
//!
//! The directory holds numbered segment files (`00000000000000000001.seg`, ...), appended to
//! and never rewritten, and beside each a marks file (`....ack`) recording what became of its
//! records. Each start appends to a new segment; a segment moves on to the next once it holds
//! `segment_bytes`. A segment and its marks file are deleted once every record in it is
//! acknowledged and it is no longer being written. Integers are little-endian.
//!
//! - Segment: the 6 bytes `SLQSEG`, a u16 format version (1), then records.
//! - Record: a 24-byte header, `SLQR` (the marker that lets the reader find the next record
//!   after damage), u32 stored length, u32 CRC-32 of everything after it in the header plus
//!   the stored payload, u32 flags (bit 0: lz4), u32 item count, u32 payload length; then the
//!   payload, as an lz4 block when that is smaller, else as it is.
//! - Marks entry: u64 offset of the record in its segment, u32 mark (1 handed out,
//!   2 acknowledged, 3 given back), u32 CRC-32 of the first 12 bytes. An acknowledgement is
//!   final; a record whose last mark is "handed out" was in flight when the process stopped.
//!
//! A record costs about 50 bytes of memory while it waits (its position in an index).
//!
//! # Use from async code
//!
//! [`push`](DiskQueue::push) does blocking file I/O (and with `fsync = "always"` waits for the
//! disk), so async callers use [`push_async`](DiskQueue::push_async), which runs it on tokio's
//! blocking pool. [`pop`](DiskQueue::pop) is async and reads records on the blocking pool.
//! [`ack`](DiskQueue::ack) and [`nack`](DiskQueue::nack) write 16 bytes without waiting for the
//! disk and may be called from async code directly. Handles are cheap to clone and share one
//! queue; concurrent producers share each fsync (group commit).

mod format;
mod recovery;
#[cfg(all(test, unix))]
mod tests;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::config::{ConfigError, KeyPath};
pub use format::MAX_PAYLOAD_BYTES;
use format::{MARK_LEN, Mark, QueueFile, SEGMENT_HEADER_LEN};

/// When pushed records are forced to stable storage.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FsyncPolicy {
    /// Before every push returns: nothing acknowledged is lost even on power loss, at the cost
    /// of one disk flush per push (shared by concurrent pushes).
    Always,
    /// At most every `fsync_interval`, in the background: a process crash loses nothing, a
    /// power loss up to one interval of pushes.
    #[default]
    Interval,
}

/// The settings of one disk queue.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DiskQueueSettings {
    /// The directory holding this queue's files, created if missing. One queue per directory.
    pub directory: PathBuf,
    /// The most bytes the queue's files may take on disk; pushes beyond it are refused.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: u64,
    /// When pushes reach stable storage: `"always"` (before each push returns) or `"interval"`
    /// (every `fsync_interval`).
    #[serde(default)]
    pub fsync: FsyncPolicy,
    /// How often written data and acknowledgements are flushed to stable storage.
    #[serde(default = "default_fsync_interval", with = "crate::config::duration")]
    pub fsync_interval: Duration,
    /// The size at which a segment file is finished and the next one started. Space is given
    /// back a whole segment at a time, once all its records are acknowledged.
    #[serde(default = "default_segment_bytes")]
    pub segment_bytes: u64,
}

/// 1 GiB.
pub fn default_max_bytes() -> u64 {
    1024 * 1024 * 1024
}

/// One second.
pub fn default_fsync_interval() -> Duration {
    Duration::from_secs(1)
}

/// 8 MiB.
pub fn default_segment_bytes() -> u64 {
    8 * 1024 * 1024
}

const MIN_SEGMENT_BYTES: u64 = 4096;
const MAX_SEGMENT_BYTES: u64 = 1024 * 1024 * 1024;

impl DiskQueueSettings {
    /// The default settings for a queue in `directory`.
    pub fn new(directory: impl Into<PathBuf>) -> DiskQueueSettings {
        DiskQueueSettings {
            directory: directory.into(),
            max_bytes: default_max_bytes(),
            fsync: FsyncPolicy::default(),
            fsync_interval: default_fsync_interval(),
            segment_bytes: default_segment_bytes(),
        }
    }

    /// The problems with these settings, each naming its key under `path`.
    pub fn validate(&self, path: &KeyPath) -> Vec<ConfigError> {
        let mut errors = Vec::new();
        if self.directory.as_os_str().is_empty() {
            errors.push(ConfigError::new(
                path.key("directory"),
                "must name a directory",
            ));
        }
        if self.max_bytes < MIN_SEGMENT_BYTES {
            errors.push(ConfigError::new(
                path.key("max_bytes"),
                format!("must be at least {MIN_SEGMENT_BYTES} bytes"),
            ));
        }
        if !(MIN_SEGMENT_BYTES..=MAX_SEGMENT_BYTES).contains(&self.segment_bytes) {
            errors.push(ConfigError::new(
                path.key("segment_bytes"),
                format!("must be between {MIN_SEGMENT_BYTES} bytes and 1 GiB"),
            ));
        }
        if self.fsync_interval.is_zero() {
            errors.push(ConfigError::new(
                path.key("fsync_interval"),
                "must be longer than zero",
            ));
        }
        errors
    }
}

/// Where a record is: its segment and its byte offset there. Stable across restarts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RecordId {
    segment: u64,
    offset: u64,
}

impl fmt::Display for RecordId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.segment, self.offset)
    }
}

/// A record handed out by [`DiskQueue::pop`]: deliver it, then ack or nack its id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub id: RecordId,
    /// The item count given to [`DiskQueue::push`].
    pub items: u32,
    pub payload: Bytes,
}

/// What [`DiskQueue::open`] found in the directory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Records waiting for delivery.
    pub records: u64,
    /// Items in those records.
    pub items: u64,
    /// Of those records, the ones that were in flight when the queue last stopped, without an
    /// acknowledgement: the backend may receive them twice.
    pub redelivered: u64,
    /// Damaged or cut-off records skipped (a damaged region counts as one).
    pub skipped: u64,
    /// Bytes in skipped records.
    pub skipped_bytes: u64,
    /// Bytes of queue files kept on disk.
    pub bytes: u64,
    /// Segment files kept.
    pub segments: u64,
}

/// The queue's size now, for gauges.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Records not yet acknowledged, in flight included.
    pub records: u64,
    /// Items in those records.
    pub items: u64,
    /// Records handed out and neither acknowledged nor given back.
    pub in_flight: u64,
    /// Bytes of the queue's files on disk.
    pub bytes: u64,
    pub segments: u64,
    /// Records dropped since opening because they could no longer be read back.
    pub unreadable: u64,
}

/// Why a disk queue operation failed.
#[derive(Debug, thiserror::Error)]
pub enum DiskQueueError {
    #[error(
        "disk queue {queue} is full: {used} of max_bytes {max_bytes} in use, a record of {record} bytes does not fit"
    )]
    QueueFull {
        queue: String,
        used: u64,
        max_bytes: u64,
        record: u64,
    },
    #[error("disk queue {queue}: no space left on the device writing {}", path.display())]
    DiskFull {
        queue: String,
        path: PathBuf,
        source: io::Error,
    },
    #[error("disk queue {queue}: cannot {action} {}: {source}", path.display())]
    Io {
        queue: String,
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error(
        "a payload of {bytes} bytes is larger than the disk queue's limit of {MAX_PAYLOAD_BYTES}"
    )]
    RecordTooLarge { bytes: usize },
    #[error("disk queue {queue} is closed")]
    Closed { queue: String },
    #[error("record {0} is not handed out")]
    UnknownRecord(RecordId),
    #[error(
        "disk queue {queue}: {} was written by a newer version of Sluice (format {version}); refusing to touch it",
        path.display()
    )]
    NewerFormat {
        queue: String,
        path: PathBuf,
        version: u16,
    },
    #[error("invalid disk queue settings: {0}")]
    InvalidSettings(String),
}

/// A write-ahead queue in a directory. Cheap to clone: clones share the queue.
#[derive(Clone)]
pub struct DiskQueue {
    shared: Arc<Shared>,
}

impl fmt::Debug for DiskQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DiskQueue")
            .field("name", &self.shared.name)
            .field("directory", &self.shared.settings.directory)
            .finish_non_exhaustive()
    }
}

struct Shared {
    name: String,
    settings: DiskQueueSettings,
    /// Appends to the current segment. Lock order: `sync`, then `writer`, then `state`.
    writer: Mutex<Writer>,
    state: Mutex<State>,
    /// How many pushes are known to be on stable storage.
    sync: Mutex<u64>,
    not_empty: Notify,
    flusher: Mutex<Option<Flusher>>,
}

struct Writer {
    segment: u64,
    file: Arc<File>,
    len: u64,
    /// Pushes written since opening, across segments.
    pushed: u64,
    /// A failed write may have left part of a frame that could not be cut off: the next push
    /// starts a new segment rather than append after it.
    damaged: bool,
    buffer: Vec<u8>,
}

struct State {
    segments: BTreeMap<u64, Segment>,
    /// Records waiting to be handed out, in push order; given-back records return to their
    /// place.
    ready: BTreeMap<RecordId, Location>,
    in_flight: HashMap<RecordId, Location>,
    /// The segment being written, never deleted.
    writing: u64,
    records: u64,
    items: u64,
    bytes: u64,
    unreadable: u64,
    /// Marks files written since the last flush.
    dirty_marks: BTreeSet<u64>,
    closed: bool,
}

#[derive(Debug, Clone, Copy)]
struct Location {
    len: u64,
    items: u32,
}

struct Segment {
    reader: Arc<File>,
    /// Opened when the first mark is written.
    marks: Option<Arc<File>>,
    len: u64,
    marks_len: u64,
    /// Records not yet acknowledged.
    pending: u64,
}

/// The background thread flushing on the interval; it stops when its sender is dropped.
struct Flusher {
    stop: mpsc::Sender<()>,
    thread: JoinHandle<()>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // No code that can panic runs under these locks; a poisoned lock still holds consistent
    // state.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A handed-out record on its way to the caller: if the caller stops waiting (a cancelled
/// `pop`), the record goes back to the queue instead of staying in flight.
struct Claim {
    shared: Arc<Shared>,
    id: RecordId,
    location: Location,
    reader: Arc<File>,
    armed: bool,
}

impl Drop for Claim {
    fn drop(&mut self) {
        if self.armed {
            let _ = self.shared.give_back(self.id);
        }
    }
}

impl DiskQueue {
    /// Opens the queue in `settings.directory`, creating it if missing, and recovers what an
    /// earlier run left there. `name` (the exporter's id) labels the queue's logs and errors.
    pub fn open(
        name: &str,
        settings: DiskQueueSettings,
    ) -> Result<(DiskQueue, RecoveryReport), DiskQueueError> {
        if let Some(error) = settings.validate(&KeyPath::root()).into_iter().next() {
            return Err(DiskQueueError::InvalidSettings(error.to_string()));
        }
        let io_error = |action, path: &Path| {
            let queue = name.to_string();
            let path = path.to_path_buf();
            move |source| DiskQueueError::Io {
                queue,
                action,
                path,
                source,
            }
        };
        let directory = &settings.directory;
        std::fs::create_dir_all(directory).map_err(io_error("create directory", directory))?;

        let (mut segment_ids, mut marks_ids) = (BTreeSet::new(), BTreeSet::new());
        for entry in std::fs::read_dir(directory).map_err(io_error("list", directory))? {
            let entry = entry.map_err(io_error("list", directory))?;
            match entry.file_name().to_str().and_then(format::classify) {
                Some(QueueFile::Segment(id)) => segment_ids.insert(id),
                Some(QueueFile::Marks(id)) => marks_ids.insert(id),
                None => false,
            };
        }

        let mut report = RecoveryReport::default();
        let mut state = State {
            segments: BTreeMap::new(),
            ready: BTreeMap::new(),
            in_flight: HashMap::new(),
            writing: 0,
            records: 0,
            items: 0,
            bytes: 0,
            unreadable: 0,
            dirty_marks: BTreeSet::new(),
            closed: false,
        };
        for &id in &segment_ids {
            if let Some(segment) = recover_segment(name, directory, id, &mut state, &mut report)? {
                state.segments.insert(id, segment);
            }
        }
        for id in marks_ids.difference(&segment_ids) {
            // The segment was deleted and the process stopped before its marks file went.
            remove_file_logged(name, &format::marks_path(directory, *id));
        }

        // Past every number in use, marks files included: a new segment must never pick up
        // the marks of an old one whose marks file could not be deleted.
        let writing = segment_ids
            .last()
            .max(marks_ids.last())
            .map_or(1, |last| last + 1);
        let path = format::segment_path(directory, writing);
        let file = create_segment(directory, &path).map_err(io_error("create", &path))?;
        state.writing = writing;
        state.bytes += SEGMENT_HEADER_LEN;
        state.segments.insert(
            writing,
            Segment {
                reader: Arc::clone(&file),
                marks: None,
                len: SEGMENT_HEADER_LEN,
                marks_len: 0,
                pending: 0,
            },
        );
        report.bytes = state.bytes;

        let shared = Arc::new(Shared {
            name: name.to_string(),
            writer: Mutex::new(Writer {
                segment: writing,
                file,
                len: SEGMENT_HEADER_LEN,
                pushed: 0,
                damaged: false,
                buffer: Vec::new(),
            }),
            state: Mutex::new(state),
            sync: Mutex::new(0),
            not_empty: Notify::new(),
            flusher: Mutex::new(None),
            settings,
        });
        *lock(&shared.flusher) = Some(Flusher::start(&shared)?);
        if report.records > 0 || report.skipped > 0 {
            tracing::info!(
                queue = name,
                records = report.records,
                items = report.items,
                redelivered = report.redelivered,
                skipped = report.skipped,
                bytes = report.bytes,
                "disk queue resumes where it stopped"
            );
        }
        Ok((DiskQueue { shared }, report))
    }

    /// The name given at [`open`](DiskQueue::open).
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Appends a record and returns its id; blocking file I/O (see the module doc for async
    /// callers). With `fsync = "always"` it returns once the record is on stable storage; if
    /// that flush fails the error is returned, but the record stays queued and may still be
    /// delivered.
    pub fn push(&self, payload: &[u8], items: u32) -> Result<RecordId, DiskQueueError> {
        self.shared.push(payload, items)
    }

    /// [`push`](DiskQueue::push) on tokio's blocking pool.
    pub async fn push_async(&self, payload: Bytes, items: u32) -> Result<RecordId, DiskQueueError> {
        let shared = Arc::clone(&self.shared);
        match tokio::task::spawn_blocking(move || shared.push(&payload, items)).await {
            Ok(result) => result,
            Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
            // Only a runtime shutting down cancels a blocking task.
            Err(_) => Err(DiskQueueError::Closed {
                queue: self.shared.name.clone(),
            }),
        }
    }

    /// The next record not handed out yet, waiting for one if the queue is empty; `None` once
    /// the queue is closed and has nothing left to hand out. A record that can no longer be
    /// read back is logged, counted in [`QueueStats::unreadable`] and passed over.
    ///
    /// Cancel-safe: a record claimed by a `pop` that is dropped goes back to the queue.
    pub async fn pop(&self) -> Option<Record> {
        loop {
            let notified = self.shared.not_empty.notified();
            match self.shared.claim() {
                Next::Claimed(claim) => {
                    let read = tokio::task::spawn_blocking(move || {
                        let record = claim.shared.read(&claim);
                        (claim, record)
                    })
                    .await;
                    match read {
                        Ok((mut claim, Some(record))) => {
                            claim.armed = false;
                            return Some(record);
                        }
                        // Unreadable and already passed over; try the next one.
                        Ok((_, None)) => continue,
                        Err(error) if error.is_panic() => {
                            std::panic::resume_unwind(error.into_panic())
                        }
                        // The runtime is shutting down; the claim went back to the queue.
                        Err(_) => return None,
                    }
                }
                Next::Empty => notified.await,
                Next::Closed => return None,
            }
        }
    }

    /// The next record not handed out yet, without waiting; blocking file I/O.
    pub fn try_pop(&self) -> Option<Record> {
        loop {
            match self.shared.claim() {
                Next::Claimed(mut claim) => {
                    if let Some(record) = self.shared.read(&claim) {
                        claim.armed = false;
                        return Some(record);
                    }
                }
                Next::Empty | Next::Closed => return None,
            }
        }
    }

    /// Marks a handed-out record delivered: it will never be handed out again, and its
    /// segment is deleted once all its records are acknowledged. Call it after the backend
    /// accepted the record, or refused it for good.
    pub fn ack(&self, id: RecordId) -> Result<(), DiskQueueError> {
        self.shared.ack(id)
    }

    /// Gives a handed-out record back: it is handed out again before any later record.
    pub fn nack(&self, id: RecordId) -> Result<(), DiskQueueError> {
        self.shared.give_back(id)
    }

    /// The queue's size now.
    pub fn stats(&self) -> QueueStats {
        let state = lock(&self.shared.state);
        QueueStats {
            records: state.records,
            items: state.items,
            in_flight: state.in_flight.len() as u64,
            bytes: state.bytes,
            segments: state.segments.len() as u64,
            unreadable: state.unreadable,
        }
    }

    /// Forces every push and acknowledgement so far to stable storage; blocking.
    pub fn flush(&self) -> Result<(), DiskQueueError> {
        self.shared.flush()
    }

    /// Refuses further pushes, flushes everything to stable storage and stops the background
    /// flusher. [`pop`](DiskQueue::pop) still hands out what is queued, then returns `None`;
    /// acks and nacks are still recorded. Nothing is deleted: unacknowledged records wait for
    /// the next [`open`](DiskQueue::open). Blocking; idempotent.
    pub fn close(&self) -> Result<(), DiskQueueError> {
        lock(&self.shared.state).closed = true;
        self.shared.not_empty.notify_waiters();
        let flusher = lock(&self.shared.flusher).take();
        if let Some(flusher) = flusher {
            drop(flusher.stop);
            // The flusher only flushes; it does not panic, and it ends when its sender drops.
            let _ = flusher.thread.join();
        }
        self.shared.flush()
    }
}

enum Next {
    Claimed(Claim),
    Empty,
    Closed,
}

impl Shared {
    fn io_error(&self, action: &'static str, path: PathBuf, source: io::Error) -> DiskQueueError {
        if source.kind() == io::ErrorKind::StorageFull {
            DiskQueueError::DiskFull {
                queue: self.name.clone(),
                path,
                source,
            }
        } else {
            DiskQueueError::Io {
                queue: self.name.clone(),
                action,
                path,
                source,
            }
        }
    }

    fn push(&self, payload: &[u8], items: u32) -> Result<RecordId, DiskQueueError> {
        if payload.len() > MAX_PAYLOAD_BYTES {
            return Err(DiskQueueError::RecordTooLarge {
                bytes: payload.len(),
            });
        }
        let mut writer = lock(&self.writer);
        let mut frame = std::mem::take(&mut writer.buffer);
        frame.clear();
        format::encode_record(payload, items, &mut frame);
        let result = self.append(&mut writer, &frame, items);
        writer.buffer = frame;
        let (id, pushed) = result?;
        drop(writer);
        self.not_empty.notify_one();
        if self.settings.fsync == FsyncPolicy::Always {
            self.sync_through(pushed)?;
        }
        Ok(id)
    }

    /// Writes `frame` to the current segment, or a new one, and queues it.
    fn append(
        &self,
        writer: &mut Writer,
        frame: &[u8],
        items: u32,
    ) -> Result<(RecordId, u64), DiskQueueError> {
        let len = frame.len() as u64;
        {
            let state = lock(&self.state);
            if state.closed {
                return Err(DiskQueueError::Closed {
                    queue: self.name.clone(),
                });
            }
            if state.bytes + len > self.settings.max_bytes {
                return Err(DiskQueueError::QueueFull {
                    queue: self.name.clone(),
                    used: state.bytes,
                    max_bytes: self.settings.max_bytes,
                    record: len,
                });
            }
        }
        if writer.damaged
            || (writer.len > SEGMENT_HEADER_LEN && writer.len + len > self.settings.segment_bytes)
        {
            self.roll(writer)?;
        }
        if let Err(error) = (&*writer.file).write_all(frame) {
            // Cut off whatever part of the frame reached the file, so the next record follows
            // the last whole one; if even that fails, the next push starts a new segment.
            if writer.file.set_len(writer.len).is_err() {
                writer.damaged = true;
            }
            let path = format::segment_path(&self.settings.directory, writer.segment);
            return Err(self.io_error("write", path, error));
        }
        let id = RecordId {
            segment: writer.segment,
            offset: writer.len,
        };
        writer.len += len;
        writer.pushed += 1;
        let mut state = lock(&self.state);
        state.ready.insert(id, Location { len, items });
        state.records += 1;
        state.items += u64::from(items);
        state.bytes += len;
        if let Some(segment) = state.segments.get_mut(&id.segment) {
            segment.len += len;
            segment.pending += 1;
        }
        Ok((id, writer.pushed))
    }

    /// Finishes the current segment and starts the next.
    fn roll(&self, writer: &mut Writer) -> Result<(), DiskQueueError> {
        let directory = &self.settings.directory;
        // Flushing the finished segment now means only the current one needs flushing to make
        // every push so far durable. A segment left damaged by a failed write is moved on from
        // even if it cannot be flushed, or the queue would refuse every push from then on.
        if let Err(error) = writer.file.sync_data() {
            let error = self.io_error(
                "flush",
                format::segment_path(directory, writer.segment),
                error,
            );
            if !writer.damaged {
                return Err(error);
            }
            tracing::warn!(queue = %self.name, %error, "disk queue moves on from a damaged segment it cannot flush");
        }
        let next = writer.segment + 1;
        let path = format::segment_path(directory, next);
        let file = create_segment(directory, &path)
            .map_err(|error| self.io_error("create", path, error))?;
        let finished = writer.segment;
        writer.segment = next;
        writer.file = Arc::clone(&file);
        writer.len = SEGMENT_HEADER_LEN;
        writer.damaged = false;
        let mut state = lock(&self.state);
        state.segments.insert(
            next,
            Segment {
                reader: file,
                marks: None,
                len: SEGMENT_HEADER_LEN,
                marks_len: 0,
                pending: 0,
            },
        );
        state.bytes += SEGMENT_HEADER_LEN;
        state.writing = next;
        self.delete_if_done(&mut state, finished);
        Ok(())
    }

    /// Makes the first `pushed` pushes durable; concurrent callers share one flush.
    fn sync_through(&self, pushed: u64) -> Result<(), DiskQueueError> {
        let mut synced = lock(&self.sync);
        if *synced >= pushed {
            return Ok(());
        }
        let (file, segment, target) = {
            let writer = lock(&self.writer);
            (Arc::clone(&writer.file), writer.segment, writer.pushed)
        };
        // Earlier segments were flushed when they were finished.
        file.sync_data().map_err(|error| {
            self.io_error(
                "flush",
                format::segment_path(&self.settings.directory, segment),
                error,
            )
        })?;
        *synced = target;
        Ok(())
    }

    fn flush(&self) -> Result<(), DiskQueueError> {
        let pushed = lock(&self.writer).pushed;
        let segment_result = self.sync_through(pushed);
        let dirty: Vec<(u64, Arc<File>)> = {
            let mut state = lock(&self.state);
            let ids = std::mem::take(&mut state.dirty_marks);
            ids.into_iter()
                .filter_map(|id| Some((id, Arc::clone(state.segments.get(&id)?.marks.as_ref()?))))
                .collect()
        };
        let mut marks_result = Ok(());
        for (id, file) in dirty {
            if let Err(error) = file.sync_data() {
                let path = format::marks_path(&self.settings.directory, id);
                marks_result = Err(self.io_error("flush", path, error));
            }
        }
        segment_result.and(marks_result)
    }

    /// Moves the first ready record in flight.
    fn claim(self: &Arc<Self>) -> Next {
        let mut state = lock(&self.state);
        let (id, location, reader) = loop {
            let Some((id, location)) = state.ready.pop_first() else {
                return if state.closed {
                    Next::Closed
                } else {
                    Next::Empty
                };
            };
            // A segment with pending records is never deleted, so this always finds it; were
            // it missing, the record is passed over rather than panic.
            if let Some(segment) = state.segments.get(&id.segment) {
                break (id, location, Arc::clone(&segment.reader));
            }
        };
        state.in_flight.insert(id, location);
        self.write_mark(&mut state, id, Mark::HandedOut);
        if !state.ready.is_empty() {
            // One notification may stand for several pushes: wake another waiting consumer.
            self.not_empty.notify_one();
        }
        Next::Claimed(Claim {
            shared: Arc::clone(self),
            id,
            location,
            reader,
            armed: true,
        })
    }

    /// Reads a claimed record; `None` (after dropping it from the queue) if it is unreadable.
    fn read(&self, claim: &Claim) -> Option<Record> {
        let mut bytes = vec![0; claim.location.len as usize];
        let result = read_exact_at(&claim.reader, &mut bytes, claim.id.offset)
            .map_err(|error| error.to_string())
            .and_then(|()| format::check_frame(&bytes).map_err(|error| error.to_string()))
            .and_then(|frame| {
                format::decode_payload(&frame, &bytes).map_err(|error| error.to_string())
            });
        match result {
            Ok(payload) => Some(Record {
                id: claim.id,
                items: claim.location.items,
                payload: Bytes::from(payload),
            }),
            Err(error) => {
                tracing::warn!(
                    queue = %self.name,
                    path = %format::segment_path(&self.settings.directory, claim.id.segment).display(),
                    offset = claim.id.offset, %error,
                    "disk queue record can no longer be read; dropping it"
                );
                let mut state = lock(&self.state);
                if state.in_flight.remove(&claim.id).is_some() {
                    state.unreadable += 1;
                    self.forget(&mut state, claim.id, claim.location);
                }
                None
            }
        }
    }

    fn ack(&self, id: RecordId) -> Result<(), DiskQueueError> {
        let mut state = lock(&self.state);
        let location = state
            .in_flight
            .remove(&id)
            .ok_or(DiskQueueError::UnknownRecord(id))?;
        self.write_mark(&mut state, id, Mark::Acked);
        self.forget(&mut state, id, location);
        Ok(())
    }

    fn give_back(&self, id: RecordId) -> Result<(), DiskQueueError> {
        let mut state = lock(&self.state);
        let location = state
            .in_flight
            .remove(&id)
            .ok_or(DiskQueueError::UnknownRecord(id))?;
        state.ready.insert(id, location);
        self.write_mark(&mut state, id, Mark::Returned);
        drop(state);
        self.not_empty.notify_one();
        Ok(())
    }

    /// Counts a record out of the queue, deleting its segment if it was the last.
    fn forget(&self, state: &mut State, id: RecordId, location: Location) {
        state.records -= 1;
        state.items -= u64::from(location.items);
        if let Some(segment) = state.segments.get_mut(&id.segment) {
            segment.pending -= 1;
        }
        self.delete_if_done(state, id.segment);
    }

    fn delete_if_done(&self, state: &mut State, id: u64) {
        let done = id != state.writing
            && state
                .segments
                .get(&id)
                .is_some_and(|segment| segment.pending == 0);
        if !done {
            return;
        }
        let Some(segment) = state.segments.remove(&id) else {
            return;
        };
        state.bytes -= segment.len + segment.marks_len;
        state.dirty_marks.remove(&id);
        let directory = &self.settings.directory;
        // The segment goes first: a marks file without its segment is harmless (removed at the
        // next start), a segment without its marks would be delivered again.
        if remove_file_logged(&self.name, &format::segment_path(directory, id)) {
            remove_file_logged(&self.name, &format::marks_path(directory, id));
        }
    }

    /// Appends a mark for `id`. A mark that cannot be written is logged: the cost is a
    /// duplicate delivery after a restart, not a loss.
    fn write_mark(&self, state: &mut State, id: RecordId, mark: Mark) {
        let directory = &self.settings.directory;
        let Some(segment) = state.segments.get_mut(&id.segment) else {
            return;
        };
        let path = || format::marks_path(directory, id.segment);
        if segment.marks.is_none() {
            match OpenOptions::new().create(true).append(true).open(path()) {
                Ok(file) => segment.marks = Some(Arc::new(file)),
                Err(error) => {
                    tracing::warn!(
                        queue = %self.name, path = %path().display(), %error,
                        "disk queue cannot record a delivery mark; the record may be delivered again after a restart"
                    );
                    return;
                }
            }
        }
        let Some(file) = &segment.marks else { return };
        match (&**file).write_all(&format::encode_mark(id.offset, mark)) {
            Ok(()) => {
                segment.marks_len += MARK_LEN as u64;
                state.bytes += MARK_LEN as u64;
                state.dirty_marks.insert(id.segment);
            }
            Err(error) => tracing::warn!(
                queue = %self.name, path = %path().display(), %error,
                "disk queue cannot record a delivery mark; the record may be delivered again after a restart"
            ),
        }
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        // Dropping the sender stops the flusher thread; it is not joined here because this
        // may run on that very thread (it briefly holds a handle while flushing).
        if let Some(flusher) = lock(&self.flusher).take() {
            drop(flusher.stop);
        }
        if let Err(error) = self.flush() {
            tracing::warn!(queue = %self.name, %error, "disk queue flush at close failed");
        }
    }
}

impl Flusher {
    fn start(shared: &Arc<Shared>) -> Result<Flusher, DiskQueueError> {
        let (stop, stopped) = mpsc::channel::<()>();
        let weak: Weak<Shared> = Arc::downgrade(shared);
        let interval = shared.settings.fsync_interval;
        let thread = std::thread::Builder::new()
            .name("sluice-disk-queue".to_string())
            .spawn(move || {
                while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(interval) {
                    let Some(shared) = weak.upgrade() else { return };
                    if let Err(error) = shared.flush() {
                        tracing::warn!(queue = %shared.name, %error, "disk queue flush failed");
                    }
                }
            })
            .map_err(|source| DiskQueueError::Io {
                queue: shared.name.clone(),
                action: "start the flusher thread for",
                path: shared.settings.directory.clone(),
                source,
            })?;
        Ok(Flusher { stop, thread })
    }
}

/// Creates a segment file with its header, and makes its name durable in the directory.
fn create_segment(directory: &Path, path: &Path) -> io::Result<Arc<File>> {
    let mut file = OpenOptions::new()
        .create_new(true)
        .read(true)
        .append(true)
        .open(path)?;
    file.write_all(&format::segment_header())?;
    sync_directory(directory)?;
    Ok(Arc::new(file))
}

#[cfg(unix)]
fn sync_directory(directory: &Path) -> io::Result<()> {
    File::open(directory)?.sync_all()
}

#[cfg(not(unix))]
fn sync_directory(_directory: &Path) -> io::Result<()> {
    // Other systems make new directory entries durable with the file itself.
    Ok(())
}

#[cfg(unix)]
fn read_exact_at(file: &File, buffer: &mut [u8], offset: u64) -> io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(file, buffer, offset)
}

#[cfg(windows)]
fn read_exact_at(file: &File, mut buffer: &mut [u8], mut offset: u64) -> io::Result<()> {
    use std::os::windows::fs::FileExt;
    while !buffer.is_empty() {
        match file.seek_read(buffer, offset)? {
            0 => return Err(io::ErrorKind::UnexpectedEof.into()),
            n => {
                buffer = &mut buffer[n..];
                offset += n as u64;
            }
        }
    }
    Ok(())
}

/// Removes a file, logging a failure; whether it is gone.
fn remove_file_logged(queue: &str, path: &Path) -> bool {
    match std::fs::remove_file(path) {
        Ok(()) => true,
        Err(error) if error.kind() == io::ErrorKind::NotFound => true,
        Err(error) => {
            tracing::warn!(queue, path = %path.display(), %error, "disk queue cannot delete a file");
            false
        }
    }
}

/// Reads segment `id` and its marks back into `state`; `None` when nothing in it is left to
/// deliver (its files are then deleted).
fn recover_segment(
    queue: &str,
    directory: &Path,
    id: u64,
    state: &mut State,
    report: &mut RecoveryReport,
) -> Result<Option<Segment>, DiskQueueError> {
    let path = format::segment_path(directory, id);
    let io_error = |action, path: &Path| {
        let queue = queue.to_string();
        let path = path.to_path_buf();
        move |source| DiskQueueError::Io {
            queue,
            action,
            path,
            source,
        }
    };
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .map_err(io_error("open", &path))?;
    let mut data = Vec::new();
    file.read_to_end(&mut data)
        .map_err(io_error("read", &path))?;
    let scan = recovery::scan_segment(queue, &path, &data);
    if let Some(version) = scan.newer_version {
        return Err(DiskQueueError::NewerFormat {
            queue: queue.to_string(),
            path,
            version,
        });
    }
    report.skipped += scan.skipped;
    report.skipped_bytes += scan.skipped_bytes;
    let mut len = data.len() as u64;
    if let Some(end) = scan.truncate_to {
        match file.set_len(end).and_then(|()| file.sync_data()) {
            Ok(()) => len = end,
            Err(error) => tracing::warn!(
                queue, path = %path.display(), %error,
                "disk queue cannot cut the damaged tail off a segment; it will be skipped again at the next start"
            ),
        }
    }

    let marks_path = format::marks_path(directory, id);
    let (marks, marks_len) = match std::fs::read(&marks_path) {
        Ok(bytes) => {
            let scan = recovery::scan_marks(queue, &marks_path, &bytes);
            let mut marks_len = bytes.len() as u64;
            if let Some(end) = scan.truncate_to {
                let cut = OpenOptions::new()
                    .write(true)
                    .open(&marks_path)
                    .and_then(|file| file.set_len(end));
                if cut.is_ok() {
                    marks_len = end;
                }
            }
            (scan.marks, marks_len)
        }
        Err(error) if error.kind() == io::ErrorKind::NotFound => (HashMap::new(), 0),
        Err(error) => return Err(io_error("read", &marks_path)(error)),
    };

    let mut pending = 0;
    for record in &scan.records {
        match marks.get(&record.offset) {
            Some(Mark::Acked) => continue,
            Some(Mark::HandedOut) => report.redelivered += 1,
            Some(Mark::Returned) | None => {}
        }
        pending += 1;
        report.records += 1;
        report.items += u64::from(record.items);
        state.records += 1;
        state.items += u64::from(record.items);
        state.ready.insert(
            RecordId {
                segment: id,
                offset: record.offset,
            },
            Location {
                len: record.len,
                items: record.items,
            },
        );
    }
    if pending == 0 {
        if remove_file_logged(queue, &path) {
            remove_file_logged(queue, &marks_path);
        }
        return Ok(None);
    }
    // Reopen for appending marks later; reads go through the same handle.
    let marks = if marks_len > 0 {
        OpenOptions::new()
            .append(true)
            .open(&marks_path)
            .map(Arc::new)
            .ok()
    } else {
        None
    };
    state.bytes += len + marks_len;
    report.segments += 1;
    Ok(Some(Segment {
        reader: Arc::new(file),
        marks,
        len,
        marks_len,
        pending,
    }))
}
