use std::collections::BTreeSet;
use std::fs::OpenOptions;
use std::future::Future;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::pin::pin;
use std::task::{Context, Waker};

use super::*;

const NAME: &str = "otlp/test";

fn settings(directory: &Path) -> DiskQueueSettings {
    let mut settings = DiskQueueSettings::new(directory);
    // No background flush during a test unless the test asks for one: what a crash keeps must
    // not depend on the timer.
    settings.fsync_interval = Duration::from_secs(3600);
    settings
}

fn open(settings: &DiskQueueSettings) -> (DiskQueue, RecoveryReport) {
    DiskQueue::open(NAME, settings.clone()).unwrap()
}

/// A compressible payload unique to `i`, like an encoded OTLP batch.
fn payload(i: usize) -> Vec<u8> {
    format!("span {i} gen_ai.system=openai gen_ai.request.model=gpt-4o-mini; ")
        .repeat(20)
        .into_bytes()
}

/// `len` bytes that lz4 cannot shrink, unique to `seed`.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

fn push_all(queue: &DiskQueue, count: usize) -> Vec<RecordId> {
    (0..count)
        .map(|i| queue.push(&payload(i), i as u32 + 1).unwrap())
        .collect()
}

fn drain(queue: &DiskQueue) -> Vec<Record> {
    std::iter::from_fn(|| queue.try_pop()).collect()
}

fn payloads(records: &[Record]) -> Vec<Vec<u8>> {
    records.iter().map(|r| r.payload.to_vec()).collect()
}

fn files(directory: &Path, extension: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(directory)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == extension))
        .collect();
    files.sort();
    files
}

fn flip_byte(path: &Path, offset: u64) {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut byte = [0];
    file.read_exact_at(&mut byte, offset).unwrap();
    byte[0] ^= 0x5a;
    file.write_all_at(&byte, offset).unwrap();
}

#[test]
fn records_are_handed_out_in_push_order_with_their_item_counts() {
    let dir = tempfile::tempdir().unwrap();
    let (queue, report) = open(&settings(dir.path()));
    assert_eq!(
        report,
        RecoveryReport {
            bytes: 8,
            ..Default::default()
        }
    );
    let ids = push_all(&queue, 5);
    assert_eq!(queue.stats().records, 5);
    assert_eq!(queue.stats().items, 1 + 2 + 3 + 4 + 5);

    let records = drain(&queue);
    assert_eq!(records.iter().map(|r| r.id).collect::<Vec<_>>(), ids);
    assert_eq!(
        records.iter().map(|r| r.items).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5]
    );
    assert_eq!(payloads(&records), (0..5).map(payload).collect::<Vec<_>>());
    assert_eq!(queue.stats().in_flight, 5);
    for record in &records {
        queue.ack(record.id).unwrap();
    }
    let stats = queue.stats();
    assert_eq!((stats.records, stats.items, stats.in_flight), (0, 0, 0));
}

#[test]
fn payloads_lz4_cannot_shrink_and_empty_payloads_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let (queue, _) = open(&settings(dir.path()));
    let inputs = [noise(1, 10_000), Vec::new(), b"x".to_vec()];
    for input in &inputs {
        queue.push(input, 1).unwrap();
    }
    assert_eq!(payloads(&drain(&queue)), inputs);
}

#[test]
fn acking_twice_or_an_id_never_handed_out_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let (queue, _) = open(&settings(dir.path()));
    let id = queue.push(b"a", 1).unwrap();
    assert!(matches!(
        queue.ack(id),
        Err(DiskQueueError::UnknownRecord(_))
    ));
    let record = queue.try_pop().unwrap();
    queue.ack(record.id).unwrap();
    assert!(matches!(
        queue.ack(id),
        Err(DiskQueueError::UnknownRecord(_))
    ));
    assert!(matches!(
        queue.nack(id),
        Err(DiskQueueError::UnknownRecord(_))
    ));
}

#[tokio::test]
async fn pop_waits_for_a_push() {
    let dir = tempfile::tempdir().unwrap();
    let (queue, _) = open(&settings(dir.path()));
    let mut pop = pin!(queue.pop());
    let mut context = Context::from_waker(Waker::noop());
    assert!(
        pop.as_mut().poll(&mut context).is_pending(),
        "nothing to pop yet"
    );
    queue.push(b"late", 3).unwrap();
    let record = pop.await.unwrap();
    assert_eq!(
        (record.payload.as_ref(), record.items),
        (b"late".as_slice(), 3)
    );
}

#[tokio::test]
async fn pop_returns_none_once_closed_and_drained() {
    let dir = tempfile::tempdir().unwrap();
    let (queue, _) = open(&settings(dir.path()));
    queue.push(b"last", 1).unwrap();
    let waiting = tokio::spawn({
        let queue = queue.clone();
        async move {
            let first = queue.pop().await;
            (first, queue.pop().await)
        }
    });
    queue.close().unwrap();
    let (first, second) = waiting.await.unwrap();
    assert_eq!(first.unwrap().payload.as_ref(), b"last");
    assert_eq!(second, None);
    assert!(matches!(
        queue.push(b"after", 1),
        Err(DiskQueueError::Closed { .. })
    ));
}

#[tokio::test]
async fn async_push_and_pop_move_records_through_the_blocking_pool() {
    let dir = tempfile::tempdir().unwrap();
    let (queue, _) = open(&settings(dir.path()));
    queue
        .push_async(Bytes::from_static(b"one"), 1)
        .await
        .unwrap();
    queue
        .push_async(Bytes::from_static(b"two"), 2)
        .await
        .unwrap();
    let first = queue.pop().await.unwrap();
    let second = queue.pop().await.unwrap();
    assert_eq!(
        (first.payload.as_ref(), second.payload.as_ref()),
        (b"one".as_slice(), b"two".as_slice())
    );
}

#[test]
fn acks_in_any_order_leave_exactly_the_unacked_records_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let settings = settings(dir.path());
    let (queue, _) = open(&settings);
    push_all(&queue, 5);
    let records = drain(&queue);
    for i in [4, 1, 3] {
        queue.ack(records[i].id).unwrap();
    }
    assert_eq!(queue.stats().records, 2);
    queue.close().unwrap();
    drop(queue);

    let (queue, report) = open(&settings);
    assert_eq!(report.records, 2);
    assert_eq!(report.items, 1 + 3);
    // They were in flight, unacknowledged, when the queue closed: the backend may have them.
    assert_eq!(report.redelivered, 2);
    assert_eq!(payloads(&drain(&queue)), vec![payload(0), payload(2)]);
}

#[test]
fn restart_resumes_after_the_acknowledged_records() {
    let dir = tempfile::tempdir().unwrap();
    let settings = settings(dir.path());
    let (queue, _) = open(&settings);
    push_all(&queue, 10);
    for _ in 0..6 {
        let record = queue.try_pop().unwrap();
        queue.ack(record.id).unwrap();
    }
    queue.close().unwrap();
    drop(queue);

    let (queue, report) = open(&settings);
    assert_eq!(
        (report.records, report.redelivered, report.skipped),
        (4, 0, 0)
    );
    assert_eq!(
        payloads(&drain(&queue)),
        (6..10).map(payload).collect::<Vec<_>>()
    );
    // New pushes go after the recovered ones.
    queue.push(b"new", 1).unwrap();
    assert_eq!(drain(&queue)[0].payload.as_ref(), b"new");
}

#[test]
fn nack_hands_the_record_out_again_before_later_ones() {
    let dir = tempfile::tempdir().unwrap();
    let settings = settings(dir.path());
    let (queue, _) = open(&settings);
    push_all(&queue, 3);
    let first = queue.try_pop().unwrap();
    let second = queue.try_pop().unwrap();
    queue.nack(first.id).unwrap();
    assert_eq!(queue.try_pop().unwrap().id, first.id);
    assert_eq!(queue.try_pop().unwrap().payload.as_ref(), payload(2));
    // Given back before the stop, so not counted as possibly delivered.
    queue.nack(first.id).unwrap();
    queue.nack(second.id).unwrap();
    queue.close().unwrap();
    drop(queue);
    let (_, report) = open(&settings);
    assert_eq!((report.records, report.redelivered), (3, 1));
}

#[test]
fn a_claim_dropped_before_reaching_the_caller_goes_back_to_the_queue() {
    let dir = tempfile::tempdir().unwrap();
    let (queue, _) = open(&settings(dir.path()));
    let id = queue.push(b"a", 1).unwrap();
    match queue.shared.claim() {
        Next::Claimed(claim) => drop(claim),
        _ => panic!("a record was queued"),
    }
    assert_eq!(queue.stats().in_flight, 0);
    assert_eq!(queue.try_pop().unwrap().id, id);
}

#[test]
fn a_crash_loses_no_pushed_record_and_reports_the_in_flight_ones() {
    let dir = tempfile::tempdir().unwrap();
    let settings = settings(dir.path());
    let (queue, _) = open(&settings);
    push_all(&queue, 20);
    let records: Vec<Record> = (0..5).map(|_| queue.try_pop().unwrap()).collect();
    for record in &records[..3] {
        queue.ack(record.id).unwrap();
    }
    // Like SIGKILL: no destructor, no close, no flush (the interval is an hour).
    std::mem::forget(queue);

    let (queue, report) = open(&settings);
    assert_eq!(report.records, 17);
    assert_eq!(report.redelivered, 2);
    assert_eq!(report.skipped, 0);
    assert_eq!(
        payloads(&drain(&queue)),
        (3..20).map(payload).collect::<Vec<_>>()
    );
}

/// Ten records in one closed segment: its path and the records' ids.
fn closed_segment(settings: &DiskQueueSettings) -> (PathBuf, Vec<RecordId>) {
    let (queue, _) = open(settings);
    let ids = push_all(&queue, 10);
    queue.close().unwrap();
    drop(queue);
    let segments = files(&settings.directory, "seg");
    assert_eq!(segments.len(), 1);
    (segments[0].clone(), ids)
}

#[test]
fn flipped_bytes_skip_only_the_damaged_records() {
    let dir = tempfile::tempdir().unwrap();
    let settings = settings(dir.path());
    let (path, ids) = closed_segment(&settings);
    // The middle of record 3's payload, and record 7's length field: the reader must find the
    // next record without the length.
    flip_byte(&path, (ids[3].offset + ids[4].offset) / 2);
    flip_byte(&path, ids[7].offset + 5);

    let (queue, report) = open(&settings);
    assert_eq!(report.skipped, 2);
    assert_eq!(
        report.skipped_bytes,
        (ids[4].offset - ids[3].offset) + (ids[8].offset - ids[7].offset)
    );
    assert_eq!(report.records, 8);
    let intact: Vec<Vec<u8>> = [0, 1, 2, 4, 5, 6, 8, 9].into_iter().map(payload).collect();
    assert_eq!(payloads(&drain(&queue)), intact);
}

#[test]
fn a_segment_cut_mid_record_delivers_every_whole_record_and_reports_the_cut_once() {
    let dir = tempfile::tempdir().unwrap();
    let settings = settings(dir.path());
    let (path, ids) = closed_segment(&settings);
    let length = std::fs::metadata(&path).unwrap().len();
    let cut = (ids[9].offset + length) / 2;
    OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(cut)
        .unwrap();

    let (queue, report) = open(&settings);
    assert_eq!((report.records, report.skipped), (9, 1));
    assert_eq!(report.skipped_bytes, cut - ids[9].offset);
    assert_eq!(
        payloads(&drain(&queue)),
        (0..9).map(payload).collect::<Vec<_>>()
    );
    queue.close().unwrap();
    drop(queue);

    // The damaged tail was cut off, so the next start finds nothing to skip.
    let (queue, report) = open(&settings);
    assert_eq!((report.records, report.skipped), (9, 0));
    assert_eq!(drain(&queue).len(), 9);
}

#[test]
fn stray_broken_and_unrelated_files_do_not_stop_the_queue() {
    let dir = tempfile::tempdir().unwrap();
    let settings = settings(dir.path());
    let (path, _) = closed_segment(&settings);
    let directory = dir.path();
    // A segment created just before a crash, one of pure garbage, an orphan marks file, and a
    // file that is none of the queue's business.
    std::fs::write(format::segment_path(directory, 7), b"SLQ").unwrap();
    std::fs::write(format::segment_path(directory, 8), noise(8, 5000)).unwrap();
    std::fs::write(format::marks_path(directory, 5), [1, 2, 3]).unwrap();
    std::fs::write(directory.join("README"), b"keep").unwrap();
    // And the good segment's header damaged.
    flip_byte(&path, 0);

    let (queue, report) = open(&settings);
    assert_eq!(report.records, 10);
    assert_eq!(report.skipped, 1, "the garbage segment");
    assert_eq!(
        payloads(&drain(&queue)),
        (0..10).map(payload).collect::<Vec<_>>()
    );
    assert!(!format::segment_path(directory, 7).exists());
    assert!(!format::segment_path(directory, 8).exists());
    assert!(!format::marks_path(directory, 5).exists());
    assert!(directory.join("README").exists());
    queue.push(b"more", 1).unwrap();
    assert_eq!(drain(&queue).len(), 1);
}

#[test]
fn a_segment_from_a_newer_format_is_refused_and_kept() {
    let dir = tempfile::tempdir().unwrap();
    let settings = settings(dir.path());
    let (path, _) = closed_segment(&settings);
    let file = OpenOptions::new().write(true).open(&path).unwrap();
    file.write_all_at(&9u16.to_le_bytes(), 6).unwrap();
    let error = DiskQueue::open(NAME, settings.clone()).unwrap_err();
    assert!(
        matches!(error, DiskQueueError::NewerFormat { version: 9, .. }),
        "{error}"
    );
    assert!(path.exists());
}

#[test]
fn a_damaged_acknowledgement_means_delivering_again_not_losing() {
    let dir = tempfile::tempdir().unwrap();
    let settings = settings(dir.path());
    let (queue, _) = open(&settings);
    push_all(&queue, 2);
    let records = drain(&queue);
    queue.ack(records[0].id).unwrap();
    queue.ack(records[1].id).unwrap();
    queue.close().unwrap();
    drop(queue);
    // Marks: handed out 0, handed out 1, acked 0, acked 1. Damage "acked 0".
    let marks = files(dir.path(), "ack");
    flip_byte(&marks[0], 2 * MARK_LEN as u64 + 1);

    let (queue, report) = open(&settings);
    assert_eq!((report.records, report.redelivered), (1, 1));
    assert_eq!(payloads(&drain(&queue)), vec![payload(0)]);
}

#[test]
fn a_record_damaged_after_it_was_written_is_dropped_at_pop_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let (queue, _) = open(&settings(dir.path()));
    let ids = push_all(&queue, 3);
    let segment = format::segment_path(dir.path(), ids[1].segment);
    flip_byte(&segment, (ids[1].offset + ids[2].offset) / 2);
    assert_eq!(payloads(&drain(&queue)), vec![payload(0), payload(2)]);
    let stats = queue.stats();
    assert_eq!(
        (stats.unreadable, stats.records, stats.in_flight),
        (1, 2, 2)
    );
}

#[test]
fn max_bytes_refuses_pushes_with_queue_full_until_acks_free_a_segment() {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = settings(dir.path());
    settings.max_bytes = 64 * 1024;
    settings.segment_bytes = 16 * 1024;
    let (queue, _) = open(&settings);
    let mut pushed = 0;
    let error = loop {
        match queue.push(&noise(pushed, 4000), 1) {
            Ok(_) => pushed += 1,
            Err(error) => break error,
        }
        assert!(pushed < 100, "max_bytes never reached");
    };
    assert!(
        matches!(
            error,
            DiskQueueError::QueueFull {
                max_bytes: 65_536,
                ..
            }
        ),
        "{error}"
    );
    assert!(error.to_string().contains(NAME), "{error}");
    assert!(queue.stats().bytes <= settings.max_bytes);
    assert_eq!(queue.stats().records, pushed);

    // Acknowledging the oldest records frees their segments and makes room again.
    for _ in 0..8 {
        let record = queue.try_pop().unwrap();
        queue.ack(record.id).unwrap();
    }
    queue.push(&noise(1000, 4000), 1).unwrap();
    // A record larger than the whole queue never fits.
    assert!(matches!(
        queue.push(&noise(1001, 70_000), 1),
        Err(DiskQueueError::QueueFull { .. })
    ));
}

#[test]
fn segments_roll_over_and_fully_acked_segments_are_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = settings(dir.path());
    settings.segment_bytes = 4096;
    let (queue, _) = open(&settings);
    let ids: Vec<RecordId> = (0..12)
        .map(|i| queue.push(&noise(i, 1500), 1).unwrap())
        .collect();
    let segments: BTreeSet<u64> = ids.iter().map(|id| id.segment).collect();
    assert_eq!(segments.len(), 6, "two 1.5 KB records per 4 KiB segment");
    assert_eq!(files(dir.path(), "seg").len(), 6);

    let records = drain(&queue);
    let first = ids[0].segment;
    // The first segment's records, acknowledged last first.
    queue.ack(records[1].id).unwrap();
    assert!(
        format::segment_path(dir.path(), first).exists(),
        "one record still pending"
    );
    queue.ack(records[0].id).unwrap();
    assert!(!format::segment_path(dir.path(), first).exists());
    assert!(!format::marks_path(dir.path(), first).exists());
    assert_eq!(files(dir.path(), "seg").len(), 5);

    // The segment being written stays, even with everything in it acknowledged.
    for record in &records[2..] {
        queue.ack(record.id).unwrap();
    }
    let left = files(dir.path(), "seg");
    assert_eq!(
        left,
        vec![format::segment_path(dir.path(), ids[11].segment)]
    );
    let on_disk: u64 = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|entry| entry.unwrap().metadata().unwrap().len())
        .sum();
    assert_eq!(
        queue.stats().bytes,
        on_disk,
        "the byte count matches the files"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_producers_and_consumers_deliver_every_record_once_with_fsync_always() {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = settings(dir.path());
    settings.fsync = FsyncPolicy::Always;
    settings.segment_bytes = 16 * 1024;
    let (queue, _) = open(&settings);
    const PRODUCERS: usize = 4;
    const EACH: usize = 50;

    let consumers: Vec<_> = (0..3)
        .map(|_| {
            let queue = queue.clone();
            tokio::spawn(async move {
                let mut seen = Vec::new();
                while let Some(record) = queue.pop().await {
                    seen.push(record.payload.to_vec());
                    queue.ack(record.id).unwrap();
                }
                seen
            })
        })
        .collect();
    let producers: Vec<_> = (0..PRODUCERS)
        .map(|p| {
            let queue = queue.clone();
            std::thread::spawn(move || {
                for i in 0..EACH {
                    queue.push(&payload(p * EACH + i), 1).unwrap();
                }
            })
        })
        .collect();
    for producer in producers {
        producer.join().unwrap();
    }
    queue.close().unwrap();
    let mut delivered = Vec::new();
    for consumer in consumers {
        delivered.extend(consumer.await.unwrap());
    }
    delivered.sort();
    let mut expected: Vec<Vec<u8>> = (0..PRODUCERS * EACH).map(payload).collect();
    expected.sort();
    assert_eq!(delivered, expected);
    assert_eq!(queue.stats().records, 0);
}

#[test]
fn the_interval_flusher_runs_and_close_stops_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = settings(dir.path());
    settings.fsync_interval = Duration::from_millis(10);
    let (queue, _) = open(&settings);
    queue.push(b"a", 1).unwrap();
    let record = queue.try_pop().unwrap();
    queue.ack(record.id).unwrap();
    // The flusher takes the dirty marks set; wait for that signal rather than a fixed time.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !lock(&queue.shared.state).dirty_marks.is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the flusher never ran"
        );
        std::thread::yield_now();
    }
    assert_eq!(*lock(&queue.shared.sync), 1, "the push was flushed too");
    queue.close().unwrap();
    assert!(lock(&queue.shared.flusher).is_none());
}

#[test]
fn default_settings_round_trip_and_unknown_keys_are_refused() {
    let parsed: DiskQueueSettings = toml::from_str("directory = \"/var/lib/sluice/q\"").unwrap();
    assert_eq!(parsed, DiskQueueSettings::new("/var/lib/sluice/q"));
    let written = toml::to_string(&parsed).unwrap();
    assert_eq!(
        toml::from_str::<DiskQueueSettings>(&written).unwrap(),
        parsed
    );

    let full: DiskQueueSettings = toml::from_str(
        "directory = \"q\"\nmax_bytes = 1000000\nfsync = \"always\"\nfsync_interval = \"200ms\"\nsegment_bytes = 65536",
    )
    .unwrap();
    assert_eq!(full.fsync, FsyncPolicy::Always);
    assert_eq!(full.fsync_interval, Duration::from_millis(200));

    let error = toml::from_str::<DiskQueueSettings>("directory = \"q\"\nmax_byte = 1").unwrap_err();
    assert!(error.to_string().contains("max_byte"), "{error}");
    let error = toml::from_str::<DiskQueueSettings>("directory = \"q\"\nfsync = \"sometimes\"")
        .unwrap_err();
    assert!(error.to_string().contains("always"), "{error}");
}

#[test]
fn validate_names_each_bad_key() {
    let mut settings = DiskQueueSettings::new("");
    settings.max_bytes = 10;
    settings.segment_bytes = 0;
    settings.fsync_interval = Duration::ZERO;
    let path = KeyPath::of(&["exporters", "otlp", "queue"]);
    let keys: Vec<String> = settings
        .validate(&path)
        .iter()
        .map(|error| error.path.to_string())
        .collect();
    assert_eq!(
        keys,
        [
            "exporters.otlp.queue.directory",
            "exporters.otlp.queue.max_bytes",
            "exporters.otlp.queue.segment_bytes",
            "exporters.otlp.queue.fsync_interval",
        ]
    );
    assert!(DiskQueueSettings::new("q").validate(&path).is_empty());
    assert!(matches!(
        DiskQueue::open(NAME, settings),
        Err(DiskQueueError::InvalidSettings(_))
    ));
}

#[cfg(target_os = "linux")]
#[test]
fn a_failed_write_is_a_typed_error_and_the_next_push_goes_to_a_new_segment() {
    let dir = tempfile::tempdir().unwrap();
    let (queue, _) = open(&settings(dir.path()));
    let first = queue.push(b"before", 1).unwrap();
    // Every write to /dev/full fails with ENOSPC, and it cannot be truncated back either.
    let full = OpenOptions::new()
        .read(true)
        .append(true)
        .open("/dev/full")
        .unwrap();
    lock(&queue.shared.writer).file = Arc::new(full);

    let error = queue.push(b"lost", 1).unwrap_err();
    assert!(matches!(error, DiskQueueError::DiskFull { .. }), "{error}");
    assert!(error.to_string().contains(NAME), "{error}");
    assert_eq!(queue.stats().records, 1, "the failed push is not queued");

    let after = queue.push(b"after", 1).unwrap();
    assert_eq!(after.segment, first.segment + 1);
    assert_eq!(
        payloads(&drain(&queue)),
        vec![b"before".to_vec(), b"after".to_vec()]
    );
}

#[test]
fn a_new_segment_never_takes_the_number_of_a_marks_file_left_behind() {
    let dir = tempfile::tempdir().unwrap();
    // A marks file that cannot be deleted (here: a directory of that name) with no segment.
    std::fs::create_dir(format::marks_path(dir.path(), 1)).unwrap();
    let (queue, _) = open(&settings(dir.path()));
    let id = queue.push(b"a", 1).unwrap();
    assert_eq!(id.segment, 2);
}
