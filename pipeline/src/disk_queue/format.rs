//! The bytes on disk: segment headers, record frames and delivery marks.
//!
//! Every integer is little-endian. The layouts are described for users in the module doc of
//! [`super`]; this file is the one place that reads and writes them.

use std::path::{Path, PathBuf};

/// The first bytes of every segment file.
pub(super) const SEGMENT_MAGIC: [u8; 6] = *b"SLQSEG";
/// The version of this format, written after [`SEGMENT_MAGIC`].
pub(super) const FORMAT_VERSION: u16 = 1;
/// Magic and version.
pub(super) const SEGMENT_HEADER_LEN: u64 = 8;

/// `SLQR` as a little-endian u32: the first four bytes of every record frame, so that after a
/// damaged region the reader can find where the next record starts.
const RECORD_MAGIC: [u8; 4] = *b"SLQR";
/// magic u32 | stored_len u32 | crc32 u32 | flags u32 | items u32 | raw_len u32.
pub(super) const RECORD_HEADER_LEN: usize = 24;
/// The payload is an lz4 block (no size prefix; the raw length is in the header).
const FLAG_LZ4: u32 = 1;
const KNOWN_FLAGS: u32 = FLAG_LZ4;

/// The largest payload a record may hold. An OTLP batch is a few MiB at most; the bound keeps a
/// damaged length from making the reader allocate gigabytes before the checksum rejects it.
pub const MAX_PAYLOAD_BYTES: usize = 256 * 1024 * 1024;

/// offset u64 | mark u32 | crc32 of the first 12 bytes u32.
pub(super) const MARK_LEN: usize = 16;

/// What became of a handed-out record, as written to its segment's marks file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mark {
    /// Given to a consumer; if nothing follows, the backend may have received it.
    HandedOut = 1,
    /// Accepted by the backend (or dropped for good): never to be delivered again.
    Acked = 2,
    /// Given back undelivered.
    Returned = 3,
}

impl Mark {
    fn from_u32(value: u32) -> Option<Mark> {
        match value {
            1 => Some(Mark::HandedOut),
            2 => Some(Mark::Acked),
            3 => Some(Mark::Returned),
            _ => None,
        }
    }
}

/// The segment header: magic then format version.
pub(super) fn segment_header() -> [u8; SEGMENT_HEADER_LEN as usize] {
    let mut header = [0; SEGMENT_HEADER_LEN as usize];
    header[..6].copy_from_slice(&SEGMENT_MAGIC);
    header[6..].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    header
}

/// What the first bytes of a segment file say.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum SegmentHeader {
    Valid,
    /// Shorter than a header: created, then the process stopped before writing to it.
    Incomplete,
    /// The magic is wrong: damaged, so records are looked for anyway.
    Damaged,
    /// Written by a newer format, which this code must not misread or delete.
    Newer(u16),
}

pub(super) fn check_segment_header(data: &[u8]) -> SegmentHeader {
    let Some(header) = data.get(..SEGMENT_HEADER_LEN as usize) else {
        return SegmentHeader::Incomplete;
    };
    if header[..6] != SEGMENT_MAGIC {
        return SegmentHeader::Damaged;
    }
    let version = u16::from_le_bytes([header[6], header[7]]);
    if version > FORMAT_VERSION {
        SegmentHeader::Newer(version)
    } else {
        SegmentHeader::Valid
    }
}

/// Appends one framed record holding `payload` to `out`.
pub(super) fn encode_record(payload: &[u8], items: u32, out: &mut Vec<u8>) {
    let start = out.len();
    let bound = lz4_flex::block::get_maximum_output_size(payload.len());
    out.resize(start + RECORD_HEADER_LEN + bound, 0);
    let compressed = lz4_flex::block::compress_into(payload, &mut out[start + RECORD_HEADER_LEN..]);
    // Incompressible payloads (already compressed, random ids) are stored as they are, so a
    // record is never larger than its payload plus the header.
    let (flags, stored_len) = match compressed {
        Ok(len) if len < payload.len() => (FLAG_LZ4, len),
        _ => {
            out[start + RECORD_HEADER_LEN..start + RECORD_HEADER_LEN + payload.len()]
                .copy_from_slice(payload);
            (0, payload.len())
        }
    };
    out.truncate(start + RECORD_HEADER_LEN + stored_len);
    let frame = &mut out[start..];
    frame[0..4].copy_from_slice(&RECORD_MAGIC);
    frame[4..8].copy_from_slice(&len_u32(stored_len).to_le_bytes());
    frame[12..16].copy_from_slice(&flags.to_le_bytes());
    frame[16..20].copy_from_slice(&items.to_le_bytes());
    frame[20..24].copy_from_slice(&len_u32(payload.len()).to_le_bytes());
    let crc = frame_crc(frame);
    frame[8..12].copy_from_slice(&crc.to_le_bytes());
}

/// Lengths are bounded by [`MAX_PAYLOAD_BYTES`] (checked by the caller) and its lz4 bound,
/// both far below `u32::MAX`.
fn len_u32(len: usize) -> u32 {
    u32::try_from(len).unwrap_or(u32::MAX)
}

/// The checksum of a frame: every header field but the magic and the checksum itself, then the
/// stored payload.
fn frame_crc(frame: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&frame[4..8]);
    hasher.update(&frame[12..]);
    hasher.finalize()
}

/// Why bytes are not a valid record frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum FrameError {
    /// The bytes end before the frame does.
    Truncated,
    /// No record starts here.
    BadMagic,
    /// Impossible lengths or unknown flags.
    BadHeader,
    /// The checksum does not match: some byte of the frame changed.
    BadChecksum,
    /// The checksum matched but the payload does not decompress to its recorded length.
    BadPayload,
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FrameError::Truncated => "truncated record",
            FrameError::BadMagic => "no record marker",
            FrameError::BadHeader => "impossible record header",
            FrameError::BadChecksum => "checksum mismatch",
            FrameError::BadPayload => "payload does not decompress",
        })
    }
}

/// A frame whose header and checksum are valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Frame {
    /// Header plus stored payload.
    pub(super) len: u64,
    pub(super) items: u32,
    flags: u32,
    raw_len: usize,
}

/// The header of the frame at the start of `data`, if it is plausible; `data` may be cut short.
fn read_header(data: &[u8]) -> Result<(usize, Frame), FrameError> {
    if data.len() < RECORD_HEADER_LEN {
        return Err(
            if RECORD_MAGIC.starts_with(data) || data.starts_with(&RECORD_MAGIC) {
                FrameError::Truncated
            } else {
                FrameError::BadMagic
            },
        );
    }
    if data[0..4] != RECORD_MAGIC {
        return Err(FrameError::BadMagic);
    }
    let field = |i: usize| u32::from_le_bytes([data[i], data[i + 1], data[i + 2], data[i + 3]]);
    let stored_len = field(4) as usize;
    let flags = field(12);
    let items = field(16);
    let raw_len = field(20) as usize;
    let plausible = flags & !KNOWN_FLAGS == 0
        && raw_len <= MAX_PAYLOAD_BYTES
        && if flags & FLAG_LZ4 != 0 {
            stored_len <= lz4_flex::block::get_maximum_output_size(raw_len)
        } else {
            stored_len == raw_len
        };
    if !plausible {
        return Err(FrameError::BadHeader);
    }
    Ok((
        stored_len,
        Frame {
            len: (RECORD_HEADER_LEN + stored_len) as u64,
            items,
            flags,
            raw_len,
        },
    ))
}

/// Checks the frame at the start of `data` (which may hold more after it).
pub(super) fn check_frame(data: &[u8]) -> Result<Frame, FrameError> {
    let (stored_len, frame) = read_header(data)?;
    let Some(bytes) = data.get(..RECORD_HEADER_LEN + stored_len) else {
        return Err(FrameError::Truncated);
    };
    let stored_crc = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
    if frame_crc(bytes) != stored_crc {
        return Err(FrameError::BadChecksum);
    }
    Ok(frame)
}

/// The declared length of the frame at the start of `data`, when its header is plausible even
/// though the frame is not valid: where the next record should start.
pub(super) fn declared_len(data: &[u8]) -> Option<u64> {
    read_header(data).ok().map(|(_, frame)| frame.len)
}

/// The offset in `data` of the first valid frame at or after `from`.
pub(super) fn find_frame(data: &[u8], from: usize) -> Option<usize> {
    let mut at = from;
    while let Some(found) = data
        .get(at..)?
        .windows(RECORD_MAGIC.len())
        .position(|window| window == RECORD_MAGIC)
    {
        let candidate = at + found;
        if check_frame(&data[candidate..]).is_ok() {
            return Some(candidate);
        }
        at = candidate + 1;
    }
    None
}

/// The payload of a frame that [`check_frame`] accepted.
pub(super) fn decode_payload(frame: &Frame, bytes: &[u8]) -> Result<Vec<u8>, FrameError> {
    let stored = bytes
        .get(RECORD_HEADER_LEN..frame.len as usize)
        .ok_or(FrameError::Truncated)?;
    if frame.flags & FLAG_LZ4 == 0 {
        return Ok(stored.to_vec());
    }
    let mut payload = vec![0; frame.raw_len];
    match lz4_flex::block::decompress_into(stored, &mut payload) {
        Ok(len) if len == frame.raw_len => Ok(payload),
        _ => Err(FrameError::BadPayload),
    }
}

/// One delivery mark.
pub(super) fn encode_mark(offset: u64, mark: Mark) -> [u8; MARK_LEN] {
    let mut entry = [0; MARK_LEN];
    entry[0..8].copy_from_slice(&offset.to_le_bytes());
    entry[8..12].copy_from_slice(&(mark as u32).to_le_bytes());
    let crc = crc32fast::hash(&entry[0..12]);
    entry[12..16].copy_from_slice(&crc.to_le_bytes());
    entry
}

/// The record offset and mark of an entry, or `None` when the entry is damaged.
pub(super) fn decode_mark(entry: &[u8]) -> Option<(u64, Mark)> {
    let entry: &[u8; MARK_LEN] = entry.try_into().ok()?;
    let crc = u32::from_le_bytes([entry[12], entry[13], entry[14], entry[15]]);
    if crc32fast::hash(&entry[0..12]) != crc {
        return None;
    }
    let mut offset = [0; 8];
    offset.copy_from_slice(&entry[0..8]);
    let mark = u32::from_le_bytes([entry[8], entry[9], entry[10], entry[11]]);
    Some((u64::from_le_bytes(offset), Mark::from_u32(mark)?))
}

/// `00000000000000000042.seg`: zero-padded so a directory listing sorts in queue order.
pub(super) fn segment_path(directory: &Path, segment: u64) -> PathBuf {
    directory.join(format!("{segment:020}.seg"))
}

/// The marks file of a segment, next to it.
pub(super) fn marks_path(directory: &Path, segment: u64) -> PathBuf {
    directory.join(format!("{segment:020}.ack"))
}

/// What a file in the queue directory is, from its name.
pub(super) enum QueueFile {
    Segment(u64),
    Marks(u64),
}

pub(super) fn classify(name: &str) -> Option<QueueFile> {
    let (stem, extension) = name.split_once('.')?;
    if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let id = stem.parse().ok()?;
    match extension {
        "seg" => Some(QueueFile::Segment(id)),
        "ack" => Some(QueueFile::Marks(id)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(payload: &[u8], items: u32) -> Vec<u8> {
        let mut out = Vec::new();
        encode_record(payload, items, &mut out);
        out
    }

    #[test]
    fn compressible_payload_round_trips_through_lz4() {
        let payload = b"span span span span span span span span span span span".repeat(20);
        let bytes = frame(&payload, 7);
        assert!(bytes.len() < payload.len(), "the frame is compressed");
        let checked = check_frame(&bytes).unwrap();
        assert_eq!(checked.len, bytes.len() as u64);
        assert_eq!(checked.items, 7);
        assert_eq!(decode_payload(&checked, &bytes).unwrap(), payload);
    }

    #[test]
    fn incompressible_and_empty_payloads_are_stored_as_they_are() {
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let noise: Vec<u8> = (0..4096)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        for payload in [noise.as_slice(), b"".as_slice(), b"x".as_slice()] {
            let bytes = frame(payload, 1);
            assert_eq!(bytes.len(), RECORD_HEADER_LEN + payload.len());
            let checked = check_frame(&bytes).unwrap();
            assert_eq!(decode_payload(&checked, &bytes).unwrap(), payload);
        }
    }

    #[test]
    fn any_flipped_byte_fails_the_frame() {
        let bytes = frame(&b"abcdefgh".repeat(50), 3);
        for i in 0..bytes.len() {
            let mut damaged = bytes.clone();
            damaged[i] ^= 0x40;
            assert!(check_frame(&damaged).is_err(), "byte {i} flipped");
        }
    }

    #[test]
    fn a_cut_frame_is_truncated() {
        let bytes = frame(&b"abcdefgh".repeat(50), 3);
        for cut in [
            2,
            RECORD_HEADER_LEN - 1,
            RECORD_HEADER_LEN + 3,
            bytes.len() - 1,
        ] {
            assert_eq!(
                check_frame(&bytes[..cut]),
                Err(FrameError::Truncated),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn find_frame_skips_garbage_and_false_markers() {
        let mut data = b"garbage SLQR more garbage".to_vec();
        let start = data.len();
        data.extend(frame(b"payload", 1));
        assert_eq!(find_frame(&data, 0), Some(start));
        assert_eq!(find_frame(&data, start + 1), None);
    }

    #[test]
    fn marks_round_trip_and_damaged_marks_are_rejected() {
        let entry = encode_mark(123_456, Mark::Acked);
        assert_eq!(decode_mark(&entry), Some((123_456, Mark::Acked)));
        let mut damaged = entry;
        damaged[3] ^= 1;
        assert_eq!(decode_mark(&damaged), None);
        assert_eq!(decode_mark(&entry[..15]), None);
    }

    #[test]
    fn file_names_sort_in_queue_order_and_classify_back() {
        let dir = Path::new("/q");
        let name = |p: PathBuf| p.file_name().unwrap().to_str().unwrap().to_string();
        assert!(name(segment_path(dir, 9)) < name(segment_path(dir, 10)));
        assert!(matches!(
            classify(&name(segment_path(dir, 42))),
            Some(QueueFile::Segment(42))
        ));
        assert!(matches!(
            classify(&name(marks_path(dir, 42))),
            Some(QueueFile::Marks(42))
        ));
        assert!(classify("notes.txt").is_none());
        assert!(classify("0042.seg").is_none());
    }
}
