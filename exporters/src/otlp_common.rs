//! What the OTLP/gRPC and OTLP/HTTP exporters share: compression setting, endpoint and header
//! validation, and reading a backend's partial-success answer.

use std::collections::BTreeMap;
use std::time::Duration;

use opentelemetry_proto::tonic::collector::{
    logs::v1::ExportLogsServiceResponse, metrics::v1::ExportMetricsServiceResponse,
    trace::v1::ExportTraceServiceResponse,
};
use serde::Deserialize;
use sluice_pipeline::{ComponentSettings, ConfigError, Signal};

/// How request bodies are compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    Gzip,
    None,
}

/// Gzip, as the OpenTelemetry Collector's OTLP exporters do by default.
pub fn default_compression() -> Compression {
    Compression::Gzip
}

/// Deflate level 1: OTLP compresses about as well at the fastest level as at the default 6
/// (field names and ids repeat within a batch), for well under half the CPU — and compression
/// is most of what a pass-through collector spends.
pub fn default_compression_level() -> u32 {
    1
}

/// Checks `compression_level` (1, fastest, to 9, smallest).
pub fn check_compression_level(
    settings: &ComponentSettings,
    level: u32,
) -> Result<(), ConfigError> {
    if (1..=9).contains(&level) {
        Ok(())
    } else {
        Err(settings.error(
            "compression_level",
            format!("{level} is not a gzip level: use 1 (fastest) to 9 (smallest)"),
        ))
    }
}

/// Appends the gzip compression of the concatenated `segments` to `out`.
pub fn gzip_into(out: Vec<u8>, segments: &[bytes::Bytes], level: u32) -> std::io::Result<Vec<u8>> {
    use std::io::Write as _;
    let mut encoder = flate2::write::GzEncoder::new(out, flate2::Compression::new(level));
    for segment in segments {
        encoder.write_all(segment)?;
    }
    encoder.finish()
}

/// Runs `work` — encoding and compressing a batch, milliseconds of CPU for a large one — on
/// tokio's blocking pool, so the async workers stay free for what is latency-bound: the
/// gateway's requests run on them.
pub async fn off_async_workers<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| format!("encoding the batch failed: {e}"))
}

/// Ten seconds per export, as the OpenTelemetry Collector.
pub fn default_timeout() -> Duration {
    Duration::from_secs(10)
}

/// Checks that `value` (the config key `key`) is a plain-HTTP URL with a host and returns it
/// parsed. `https` is recognised and refused with a clear message until TLS is supported.
pub fn parse_http_url(
    settings: &ComponentSettings,
    key: &str,
    value: &str,
) -> Result<http::Uri, ConfigError> {
    let uri: http::Uri = value
        .parse()
        .map_err(|e| settings.error(key, format!("invalid URL {value:?}: {e}")))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err(settings.error(
                key,
                format!("TLS is not supported yet: use an http:// endpoint instead of {value:?}"),
            ));
        }
        Some(other) => {
            return Err(settings.error(
                key,
                format!(
                    "unsupported scheme {other:?} in {value:?}; write e.g. \"http://host:4317\""
                ),
            ));
        }
        None => {
            return Err(settings.error(
                key,
                format!("{value:?} has no scheme; write e.g. \"http://{value}\""),
            ));
        }
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(settings.error(key, format!("{value:?} has no host")));
    }
    Ok(uri)
}

/// Headers the exporters set themselves; letting config override them would break the protocol.
const RESERVED_HEADERS: &[&str] = &[
    "content-type",
    "content-encoding",
    "content-length",
    "transfer-encoding",
    "te",
    "connection",
    "host",
];

/// Checks the `headers` table: every name and value must be sendable as an HTTP header (and so
/// as gRPC metadata). Returns the pairs as parsed header names and values, names lower-cased.
pub fn parse_headers(
    settings: &ComponentSettings,
    headers: &BTreeMap<String, String>,
) -> Result<Vec<(http::HeaderName, http::HeaderValue)>, ConfigError> {
    let mut parsed = Vec::with_capacity(headers.len());
    for (name, value) in headers {
        let error =
            |message: String| ConfigError::new(settings.path().key("headers").key(name), message);
        let header_name = http::HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| error(format!("{name:?} is not a valid header name")))?;
        if RESERVED_HEADERS.contains(&header_name.as_str())
            || header_name.as_str().starts_with("grpc-")
        {
            return Err(error(format!(
                "{name:?} is set by the exporter itself and cannot be configured"
            )));
        }
        let header_value = http::HeaderValue::from_str(value).map_err(|_| {
            error("header values may only hold visible ASCII characters, spaces and tabs".into())
        })?;
        parsed.push((header_name, header_value));
    }
    Ok(parsed)
}

/// A backend's answer that it accepted the request but rejected part of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartialSuccess {
    pub rejected: i64,
    pub error_message: String,
}

/// The partial success carried by an `Export*ServiceResponse`, if it reports any rejection or
/// message (an empty `partial_success` means full success).
pub trait ExportResponse: prost::Message + Default + Send + 'static {
    fn partial_success(&self) -> Option<PartialSuccess>;
}

fn partial(rejected: i64, error_message: &str) -> Option<PartialSuccess> {
    (rejected != 0 || !error_message.is_empty()).then(|| PartialSuccess {
        rejected,
        error_message: error_message.to_string(),
    })
}

impl ExportResponse for ExportTraceServiceResponse {
    fn partial_success(&self) -> Option<PartialSuccess> {
        let p = self.partial_success.as_ref()?;
        partial(p.rejected_spans, &p.error_message)
    }
}

impl ExportResponse for ExportMetricsServiceResponse {
    fn partial_success(&self) -> Option<PartialSuccess> {
        let p = self.partial_success.as_ref()?;
        partial(p.rejected_data_points, &p.error_message)
    }
}

impl ExportResponse for ExportLogsServiceResponse {
    fn partial_success(&self) -> Option<PartialSuccess> {
        let p = self.partial_success.as_ref()?;
        partial(p.rejected_log_records, &p.error_message)
    }
}

/// Logs a partial success. It is never retried (the OTLP specification says so: the backend
/// has already decided about every item), so a warning is all the user gets.
pub fn warn_partial_success(exporter: &str, signal: Signal, partial: &PartialSuccess) {
    tracing::warn!(
        exporter,
        %signal,
        rejected = partial.rejected,
        error_message = %partial.error_message,
        "backend rejected {} of the {signal} it was sent: {}",
        partial.rejected,
        partial.error_message,
    );
}

/// Cuts a backend's error text to a length that fits in a log line.
pub fn truncate_message(text: &str, max: usize) -> String {
    let text = text.trim();
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(toml_text: &str) -> ComponentSettings {
        crate::test_data::settings("x", toml_text)
    }

    #[test]
    fn https_endpoint_is_refused_until_tls_exists() {
        let s = settings("");
        let error = parse_http_url(&s, "endpoint", "https://example.com:4317").unwrap_err();
        assert_eq!(error.path.to_string(), "exporters.test.endpoint");
        assert!(
            error.message.contains("TLS is not supported yet"),
            "{}",
            error.message
        );
    }

    #[test]
    fn endpoint_without_scheme_is_refused_with_an_example() {
        let s = settings("");
        let error = parse_http_url(&s, "endpoint", "localhost:4317").unwrap_err();
        assert!(
            error.message.contains("http://localhost:4317"),
            "{}",
            error.message
        );
    }

    #[test]
    fn header_value_with_newline_is_refused_naming_the_header() {
        let s = settings("");
        let headers = BTreeMap::from([("x-tenant".to_string(), "a\nb".to_string())]);
        let error = parse_headers(&s, &headers).unwrap_err();
        assert_eq!(error.path.to_string(), "exporters.test.headers.x-tenant");
    }

    #[test]
    fn header_name_with_space_is_refused() {
        let s = settings("");
        let headers = BTreeMap::from([("x tenant".to_string(), "a".to_string())]);
        assert!(parse_headers(&s, &headers).is_err());
    }

    #[test]
    fn content_type_header_cannot_be_overridden() {
        let s = settings("");
        let headers = BTreeMap::from([("Content-Type".to_string(), "text/plain".to_string())]);
        let error = parse_headers(&s, &headers).unwrap_err();
        assert!(
            error.message.contains("set by the exporter"),
            "{}",
            error.message
        );
    }

    #[test]
    fn truncation_respects_character_boundaries() {
        assert_eq!(truncate_message("ééé", 3), "é…");
        assert_eq!(truncate_message(" short ", 10), "short");
    }

    #[test]
    fn compression_level_outside_gzip_levels_is_refused_naming_the_key() {
        let s = settings("");
        assert!(check_compression_level(&s, 1).is_ok());
        assert!(check_compression_level(&s, 9).is_ok());
        let error = check_compression_level(&s, 0).unwrap_err();
        assert_eq!(error.path.to_string(), "exporters.test.compression_level");
        assert!(check_compression_level(&s, 10).is_err());
    }

    #[test]
    fn gzip_of_segments_is_the_gzip_of_their_concatenation() {
        let segments = [
            bytes::Bytes::from_static(b"hello "),
            bytes::Bytes::from_static(b"world"),
        ];
        let compressed = gzip_into(b"prefix".to_vec(), &segments, 1).unwrap();
        assert!(compressed.starts_with(b"prefix"));
        let mut plain = String::new();
        std::io::Read::read_to_string(
            &mut flate2::read::GzDecoder::new(&compressed[6..]),
            &mut plain,
        )
        .unwrap();
        assert_eq!(plain, "hello world");
    }
}
