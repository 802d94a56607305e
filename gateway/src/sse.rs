//! Incremental parsing of server-sent events, keeping each event's raw bytes so the proxy can
//! pass events through untouched (or leave one out).

use bytes::{Bytes, BytesMut};

/// One complete event: its bytes as received (blank line included) and its `data` lines.
pub(crate) struct SseEvent {
    pub raw: Bytes,
    /// The `data:` lines joined with `\n`; `None` for events without data (comments).
    pub data: Option<String>,
}

/// Splits a byte stream into events as bytes arrive.
#[derive(Default)]
pub(crate) struct SseParser {
    buffer: BytesMut,
    /// How far the buffer has been searched for an event boundary.
    scanned: usize,
}

impl SseParser {
    /// Appends received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buffer.extend_from_slice(bytes);
    }

    /// The next complete event, if the buffer holds one.
    pub fn next_event(&mut self) -> Option<SseEvent> {
        let end = self.boundary()?;
        self.scanned = 0;
        let raw = self.buffer.split_to(end).freeze();
        let data = parse_data(&raw);
        Some(SseEvent { raw, data })
    }

    /// Whatever is left after the stream ended: an event without its closing blank line.
    pub fn finish(&mut self) -> Option<SseEvent> {
        if self.buffer.is_empty() {
            return None;
        }
        let raw = self.buffer.split().freeze();
        let data = parse_data(&raw);
        Some(SseEvent { raw, data })
    }

    /// The end of the first event: just past the first blank line (`\n\n`, `\r\n\r\n` or
    /// `\n\r\n`).
    fn boundary(&mut self) -> Option<usize> {
        let bytes = &self.buffer[..];
        let mut i = self.scanned;
        while i < bytes.len() {
            if bytes[i] == b'\n' {
                match bytes.get(i + 1) {
                    Some(b'\n') => return Some(i + 2),
                    Some(b'\r') => match bytes.get(i + 2) {
                        Some(b'\n') => return Some(i + 3),
                        Some(_) => {}
                        None => break,
                    },
                    Some(_) => {}
                    None => break,
                }
            }
            i += 1;
        }
        self.scanned = i;
        None
    }
}

fn parse_data(raw: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(raw);
    let mut data: Option<String> = None;
    for line in text.lines() {
        let Some(value) = line.strip_prefix("data:") else {
            continue;
        };
        let value = value.strip_prefix(' ').unwrap_or(value);
        match &mut data {
            Some(data) => {
                data.push('\n');
                data.push_str(value);
            }
            None => data = Some(value.to_string()),
        }
    }
    data
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split_across_pushes_are_reassembled_byte_for_byte() {
        let stream = b"data: {\"a\":1}\n\n: comment\n\ndata: x\r\ndata: y\r\n\r\ndata: [DONE]\n\n";
        let mut parser = SseParser::default();
        let mut events = Vec::new();
        for byte in stream {
            parser.push(&[*byte]);
            while let Some(event) = parser.next_event() {
                events.push(event);
            }
        }
        let raw: Vec<u8> = events.iter().flat_map(|e| e.raw.to_vec()).collect();
        assert_eq!(raw, stream);
        let data: Vec<Option<String>> = events.into_iter().map(|e| e.data).collect();
        assert_eq!(
            data,
            [
                Some("{\"a\":1}".to_string()),
                None,
                Some("x\ny".to_string()),
                Some("[DONE]".to_string())
            ]
        );
        assert!(parser.finish().is_none());
    }

    #[test]
    fn an_unterminated_last_event_is_returned_by_finish() {
        let mut parser = SseParser::default();
        parser.push(b"data: tail");
        assert!(parser.next_event().is_none());
        assert_eq!(parser.finish().unwrap().data.as_deref(), Some("tail"));
    }
}
