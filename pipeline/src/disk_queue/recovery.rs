//! Reading a queue directory back at start-up: which records each segment holds, which of
//! them were acknowledged, and which bytes are damaged.

use std::collections::HashMap;
use std::path::Path;

use super::format::{
    self, FrameError, MARK_LEN, Mark, SEGMENT_HEADER_LEN, SegmentHeader, check_frame,
    check_segment_header, declared_len, find_frame,
};

/// An intact record found in a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct ScannedRecord {
    pub(super) offset: u64,
    pub(super) len: u64,
    pub(super) items: u32,
}

/// What a segment file holds.
#[derive(Debug, Default)]
pub(super) struct SegmentScan {
    pub(super) records: Vec<ScannedRecord>,
    /// Damaged regions skipped; each counts as one record, the most it can have held whole.
    pub(super) skipped: u64,
    pub(super) skipped_bytes: u64,
    /// Where the intact data ends when the file ends in damaged or cut-off bytes: the file is
    /// cut there so the same tail is not reported at every start.
    pub(super) truncate_to: Option<u64>,
    /// The file was created but never written to.
    pub(super) incomplete: bool,
    /// A newer format wrote this segment.
    pub(super) newer_version: Option<u16>,
}

/// Finds every intact record in the segment file `data`, skipping damaged regions.
pub(super) fn scan_segment(queue: &str, path: &Path, data: &[u8]) -> SegmentScan {
    let mut scan = SegmentScan::default();
    match check_segment_header(data) {
        SegmentHeader::Valid => {}
        SegmentHeader::Incomplete => {
            scan.incomplete = true;
            return scan;
        }
        SegmentHeader::Newer(version) => {
            scan.newer_version = Some(version);
            return scan;
        }
        SegmentHeader::Damaged => tracing::warn!(
            queue, path = %path.display(), offset = 0,
            "disk queue segment header is damaged; reading its records anyway"
        ),
    }
    let mut pos = SEGMENT_HEADER_LEN as usize;
    while pos < data.len() {
        let error = match check_frame(&data[pos..]) {
            Ok(frame) => {
                scan.records.push(ScannedRecord {
                    offset: pos as u64,
                    len: frame.len,
                    items: frame.items,
                });
                pos += frame.len as usize;
                continue;
            }
            Err(error) => error,
        };
        // The common damage is a changed byte inside one record whose length is intact: the
        // next record is where the header says. Otherwise look for the next record marker.
        let next = declared_len(&data[pos..])
            .map(|len| pos + len as usize)
            .filter(|&end| end < data.len() && check_frame(&data[end..]).is_ok())
            .or_else(|| find_frame(data, pos + 1));
        scan.skipped += 1;
        match next {
            Some(next) => {
                scan.skipped_bytes += (next - pos) as u64;
                tracing::warn!(
                    queue, path = %path.display(), offset = pos, bytes = next - pos,
                    reason = %error, "disk queue skips a damaged record"
                );
                pos = next;
            }
            None => {
                scan.skipped_bytes += (data.len() - pos) as u64;
                let what = if error == FrameError::Truncated {
                    "a record cut short"
                } else {
                    "damaged bytes"
                };
                tracing::warn!(
                    queue, path = %path.display(), offset = pos, bytes = data.len() - pos,
                    reason = %error,
                    "disk queue segment ends in {what}; skipping them and cutting the file there"
                );
                scan.truncate_to = Some(pos as u64);
                break;
            }
        }
    }
    scan
}

/// The marks of one segment: the last word on each record offset.
#[derive(Debug, Default)]
pub(super) struct MarksScan {
    pub(super) marks: HashMap<u64, Mark>,
    /// Entries whose checksum failed; their records count as not acknowledged.
    pub(super) damaged: u64,
    /// Where the whole entries end, when the file ends in part of one.
    pub(super) truncate_to: Option<u64>,
}

/// Reads a marks file: an acknowledgement is final, otherwise the last mark wins.
pub(super) fn scan_marks(queue: &str, path: &Path, data: &[u8]) -> MarksScan {
    let mut scan = MarksScan::default();
    let whole = data.len() - data.len() % MARK_LEN;
    if whole != data.len() {
        // The process stopped in the middle of writing an entry.
        scan.truncate_to = Some(whole as u64);
    }
    for entry in data[..whole].chunks_exact(MARK_LEN) {
        match format::decode_mark(entry) {
            Some((offset, mark)) => {
                let last = scan.marks.entry(offset).or_insert(mark);
                if *last != Mark::Acked {
                    *last = mark;
                }
            }
            None => scan.damaged += 1,
        }
    }
    if scan.damaged > 0 {
        tracing::warn!(
            queue, path = %path.display(), damaged = scan.damaged,
            "disk queue marks file has damaged entries; their records will be delivered again"
        );
    }
    scan
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk_queue::format::{encode_mark, encode_record, segment_header};

    fn segment(payloads: &[&[u8]]) -> (Vec<u8>, Vec<u64>) {
        let mut data = segment_header().to_vec();
        let mut offsets = Vec::new();
        for payload in payloads {
            offsets.push(data.len() as u64);
            encode_record(payload, 1, &mut data);
        }
        (data, offsets)
    }

    fn offsets(scan: &SegmentScan) -> Vec<u64> {
        scan.records.iter().map(|r| r.offset).collect()
    }

    #[test]
    fn intact_segment_yields_every_record() {
        let (data, expected) = segment(&[b"one", b"two", b"three"]);
        let scan = scan_segment("q", Path::new("s"), &data);
        assert_eq!(offsets(&scan), expected);
        assert_eq!((scan.skipped, scan.truncate_to), (0, None));
    }

    #[test]
    fn damaged_length_field_is_skipped_by_finding_the_next_marker() {
        let (mut data, expected) = segment(&[b"one", b"two", b"three"]);
        // Byte 4 of a frame is its stored length: the header no longer says where it ends.
        data[expected[1] as usize + 5] = 0xff;
        let scan = scan_segment("q", Path::new("s"), &data);
        assert_eq!(offsets(&scan), vec![expected[0], expected[2]]);
        assert_eq!(scan.skipped, 1);
        assert_eq!(scan.skipped_bytes, expected[2] - expected[1]);
    }

    #[test]
    fn garbage_tail_is_skipped_and_marked_for_truncation() {
        let (mut data, expected) = segment(&[b"one", b"two"]);
        let end = data.len() as u64;
        data.extend_from_slice(&[0; 100]);
        let scan = scan_segment("q", Path::new("s"), &data);
        assert_eq!(offsets(&scan), expected);
        assert_eq!(scan.truncate_to, Some(end));
        assert_eq!(scan.skipped_bytes, 100);
    }

    #[test]
    fn file_shorter_than_a_header_is_an_unwritten_segment() {
        let scan = scan_segment("q", Path::new("s"), b"SLQ");
        assert!(scan.incomplete);
        assert!(scan.records.is_empty());
    }

    #[test]
    fn acknowledgement_is_final_and_otherwise_the_last_mark_wins() {
        let mut data = Vec::new();
        for (offset, mark) in [
            (8, Mark::HandedOut),
            (8, Mark::Acked),
            (8, Mark::Returned),
            (40, Mark::HandedOut),
            (40, Mark::Returned),
            (80, Mark::HandedOut),
        ] {
            data.extend_from_slice(&encode_mark(offset, mark));
        }
        data.extend_from_slice(&[1, 2, 3]);
        let scan = scan_marks("q", Path::new("a"), &data);
        assert_eq!(scan.marks[&8], Mark::Acked);
        assert_eq!(scan.marks[&40], Mark::Returned);
        assert_eq!(scan.marks[&80], Mark::HandedOut);
        assert_eq!(scan.truncate_to, Some(6 * MARK_LEN as u64));
    }
}
