//! What the OTLP/gRPC and OTLP/HTTP exporters share: compression setting, endpoint and header
//! validation, authentication, and reading a backend's partial-success answer.

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

/// An OTLP exporter's compression, timeout and headers: the config's where it sets them, else
/// the `OTEL_EXPORTER_OTLP_*` environment's, else the defaults (explicit config wins).
pub struct ResolvedSettings {
    pub compression: Compression,
    pub timeout: Duration,
    pub headers: BTreeMap<String, Secret>,
}

impl ResolvedSettings {
    /// Resolves the three settings of `settings` against `env`, naming the key in errors.
    pub fn resolve(
        settings: &ComponentSettings,
        env: &crate::otlp_env::OtlpEnv,
        compression: Option<Compression>,
        timeout: Option<Duration>,
        headers: Option<BTreeMap<String, Secret>>,
    ) -> Result<ResolvedSettings, ConfigError> {
        let compression = match compression {
            Some(compression) => compression,
            None => env
                .compression(None)
                .map_err(|m| settings.error("compression", m))?
                .unwrap_or_else(default_compression),
        };
        let timeout = match timeout {
            Some(timeout) => timeout,
            None => env
                .timeout(None)
                .map_err(|m| settings.error("timeout", m))?
                .unwrap_or_else(default_timeout),
        };
        if timeout.is_zero() {
            return Err(settings.error("timeout", "must be greater than zero"));
        }
        let headers = match headers {
            Some(headers) => headers,
            None => env
                .headers(None)
                .map_err(|m| settings.error("headers", m))?
                .unwrap_or_default(),
        };
        Ok(ResolvedSettings {
            compression,
            timeout,
            headers,
        })
    }
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

/// Deserializes a `timeout` that may be omitted (and then come from the environment), written
/// like every Sluice duration.
pub fn optional_duration<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Duration>, D::Error> {
    sluice_pipeline::config::duration::deserialize(deserializer).map(Some)
}

/// Adds where a value came from to a config error about it, when it came from an environment
/// variable rather than the file.
pub fn from_env(mut error: ConfigError, variable: Option<&str>) -> ConfigError {
    if let Some(variable) = variable {
        error.message = format!("{} (from {variable})", error.message);
    }
    error
}

/// Checks that `value` (the config key `key`) is an `http://` or `https://` URL with a host and
/// returns it parsed. Credentials in the URL are refused without repeating them: they belong
/// in `auth`, where they are kept out of logs.
pub fn parse_http_url(
    settings: &ComponentSettings,
    key: &str,
    value: &str,
) -> Result<http::Uri, ConfigError> {
    if let Some(authority) = value
        .split("://")
        .nth(1)
        .and_then(|rest| rest.split(['/', '?']).next())
        && authority.contains('@')
    {
        return Err(settings.error(
            key,
            "the URL carries credentials (user:password@); remove them and use \
             auth = { type = \"basic\", username = \"...\", password = \"...\" }",
        ));
    }
    let uri: http::Uri = value
        .parse()
        .map_err(|e| settings.error(key, format!("invalid URL {value:?}: {e}")))?;
    match uri.scheme_str() {
        Some("http") | Some("https") => {}
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

/// A configured value that must not be shown: a token, a password, a header value. Its
/// `Debug` is `"<redacted>"`, so config structs can derive `Debug` safely.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The value itself, to put on the wire.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("\"<redacted>\"")
    }
}

/// How an exporter authenticates to its backend: the `auth` table.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Auth {
    /// `authorization: Bearer <token>`.
    Bearer {
        /// The token.
        token: Secret,
    },
    /// `authorization: Basic base64(<username>:<password>)`.
    Basic {
        /// The user name.
        username: String,
        /// The password.
        password: Secret,
    },
    /// An API key in a header of its own, e.g. `x-honeycomb-team`.
    ApiKey {
        /// The header's name.
        header: String,
        /// The key.
        value: Secret,
    },
}

impl Auth {
    /// The header this authentication sends, its value marked sensitive.
    fn header(
        &self,
        settings: &ComponentSettings,
    ) -> Result<(http::HeaderName, http::HeaderValue), ConfigError> {
        use base64::Engine as _;
        let path = settings.path().key("auth");
        let (name, value, key) = match self {
            Auth::Bearer { token } => (
                http::header::AUTHORIZATION,
                format!("Bearer {}", token.expose()),
                "token",
            ),
            Auth::Basic { username, password } => {
                if username.contains(':') {
                    return Err(ConfigError::new(
                        path.key("username"),
                        "a basic-auth user name cannot contain ':'",
                    ));
                }
                let pair = format!("{username}:{}", password.expose());
                (
                    http::header::AUTHORIZATION,
                    format!(
                        "Basic {}",
                        base64::engine::general_purpose::STANDARD.encode(pair)
                    ),
                    "password",
                )
            }
            Auth::ApiKey { header, value } => {
                let name = http::HeaderName::from_bytes(header.as_bytes()).map_err(|_| {
                    ConfigError::new(
                        path.key("header"),
                        format!("{header:?} is not a valid header name"),
                    )
                })?;
                check_not_reserved(&name).map_err(|m| ConfigError::new(path.key("header"), m))?;
                (name, value.expose().to_string(), "value")
            }
        };
        let mut value = http::HeaderValue::from_str(&value).map_err(|_| {
            ConfigError::new(
                path.key(key),
                "may only hold visible ASCII characters, spaces and tabs",
            )
        })?;
        value.set_sensitive(true);
        Ok((name, value))
    }
}

/// The configured `headers` and the `auth` header, every value marked sensitive (never logged,
/// never put in HTTP/2's header compression table). `auth` and a header of the same name
/// cannot both be set.
pub fn request_headers(
    settings: &ComponentSettings,
    headers: &BTreeMap<String, Secret>,
    auth: Option<&Auth>,
) -> Result<Vec<(http::HeaderName, http::HeaderValue)>, ConfigError> {
    let mut parsed = parse_headers(settings, headers)?;
    if let Some(auth) = auth {
        let (name, value) = auth.header(settings)?;
        if parsed.iter().any(|(n, _)| *n == name) {
            return Err(settings.error(
                "auth",
                format!("headers also sets {name:?}: keep one of the two"),
            ));
        }
        parsed.push((name, value));
    }
    Ok(parsed)
}

fn check_not_reserved(name: &http::HeaderName) -> Result<(), String> {
    if RESERVED_HEADERS.contains(&name.as_str()) || name.as_str().starts_with("grpc-") {
        Err(format!(
            "{:?} is set by the exporter itself and cannot be configured",
            name.as_str()
        ))
    } else {
        Ok(())
    }
}

/// Checks the `headers` table: every name and value must be sendable as an HTTP header (and so
/// as gRPC metadata). Returns the pairs as parsed header names and values, names lower-cased,
/// values marked sensitive.
pub fn parse_headers(
    settings: &ComponentSettings,
    headers: &BTreeMap<String, Secret>,
) -> Result<Vec<(http::HeaderName, http::HeaderValue)>, ConfigError> {
    let mut parsed = Vec::with_capacity(headers.len());
    for (name, value) in headers {
        let error =
            |message: String| ConfigError::new(settings.path().key("headers").key(name), message);
        let header_name = http::HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| error(format!("{name:?} is not a valid header name")))?;
        check_not_reserved(&header_name).map_err(error)?;
        let mut header_value = http::HeaderValue::from_str(value.expose()).map_err(|_| {
            error("header values may only hold visible ASCII characters, spaces and tabs".into())
        })?;
        header_value.set_sensitive(true);
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

/// The counter of items backends rejected in a partial success.
pub fn rejected_counter(telemetry: &sluice_pipeline::Telemetry) -> prometheus::IntCounterVec {
    telemetry.counter_vec(
        "sluice_exporter_rejected_items_total",
        "Items a backend accepted the request for but rejected (OTLP partial success); not retried.",
        &["exporter", "signal"],
    )
}

/// Logs and counts a partial success. It is never retried (the OTLP specification says so:
/// the backend has already decided about every item).
pub fn warn_partial_success(
    exporter: &str,
    signal: Signal,
    partial: &PartialSuccess,
    rejected: Option<&prometheus::IntCounterVec>,
) {
    if let Some(rejected) = rejected {
        rejected
            .with_label_values(&[exporter, signal.as_str()])
            .inc_by(u64::try_from(partial.rejected).unwrap_or(0));
    }
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

/// Says in words a user can act on why a connection to a backend failed, from the error and
/// its causes: DNS, connection refused, TLS (with rustls' own reason), timeouts, or a server
/// that speaks another protocol. `sluice check` prints it; falls back to the whole chain.
pub fn connection_failure(error: &(dyn std::error::Error + 'static)) -> String {
    let chain = sluice_pipeline::error::error_chain(error);
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(cause) = source {
        if let Some(tls) = cause.downcast_ref::<rustls::Error>() {
            return tls_failure(tls);
        }
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            match io.kind() {
                std::io::ErrorKind::ConnectionRefused => {
                    return "connection refused (nothing listens on that port)".into();
                }
                std::io::ErrorKind::TimedOut => return "connection timed out".into(),
                _ => {}
            }
            // An io::Error's `source` skips the error it wraps (rustls' among them).
            if let Some(inner) = io.get_ref() {
                source = Some(inner as &(dyn std::error::Error + 'static));
                continue;
            }
        }
        source = cause.source();
    }
    // Under TLS 1.3 a server refuses a client certificate after the client's side of the
    // handshake is done, so the alert arrives through HTTP/2, which keeps only its text.
    if let Some(alert) = chain.split("received fatal alert: ").nth(1) {
        let alert = alert
            .split(|c: char| !c.is_alphanumeric())
            .next()
            .unwrap_or("");
        let hint = match alert {
            "CertificateRequired"
            | "BadCertificate"
            | "UnknownCA"
            | "HandshakeFailure"
            | "CertificateUnknown" => CLIENT_CERTIFICATE_HINT,
            _ => "",
        };
        return format!("TLS handshake failed: the server sent the alert {alert}{hint}");
    }
    // hyper-util's connector reports resolver failures as "dns error" without a typed cause.
    if chain.contains("dns error") || chain.contains("failed to lookup address") {
        return format!("DNS resolution failed: {}", last_cause(error));
    }
    if chain.contains("deadline has elapsed") || chain.contains("timed out") {
        return "connection timed out".into();
    }
    chain
}

/// The innermost cause's message.
fn last_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut last = error;
    while let Some(cause) = last.source() {
        last = cause;
    }
    last.to_string()
}

const CLIENT_CERTIFICATE_HINT: &str = ": the server refused the handshake; if it requires a client certificate, set tls.cert_file and tls.key_file to one it trusts";

fn tls_failure(error: &rustls::Error) -> String {
    use rustls::{AlertDescription, CertificateError, Error};
    let hint = match error {
        Error::InvalidCertificate(CertificateError::UnknownIssuer) => {
            ": the server's certificate is not signed by a trusted CA (set tls.ca_file to the CA that signed it)"
        }
        Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        ) => {
            ": the certificate is not valid for the endpoint's host (fix the host, or set tls.server_name)"
        }
        Error::InvalidCertificate(
            CertificateError::Expired | CertificateError::ExpiredContext { .. },
        ) => ": the server's certificate has expired",
        Error::AlertReceived(
            AlertDescription::CertificateRequired
            | AlertDescription::BadCertificate
            | AlertDescription::UnknownCA
            | AlertDescription::HandshakeFailure,
        ) => CLIENT_CERTIFICATE_HINT,
        Error::InvalidMessage(_) => {
            ": the server does not speak TLS (use http:// for a plaintext port)"
        }
        _ => "",
    };
    format!("TLS handshake failed: {error}{hint}")
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
    fn https_endpoint_is_accepted() {
        let s = settings("");
        let uri = parse_http_url(&s, "endpoint", "https://example.com:4317").unwrap();
        assert_eq!(uri.scheme_str(), Some("https"));
    }

    #[test]
    fn credentials_in_the_url_are_refused_without_repeating_them() {
        let s = settings("");
        let error =
            parse_http_url(&s, "endpoint", "https://user:hunter2@example.com/x").unwrap_err();
        assert_eq!(error.path.to_string(), "exporters.test.endpoint");
        assert!(!error.message.contains("hunter2"), "{}", error.message);
        assert!(error.message.contains("auth"), "{}", error.message);
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
        let headers = BTreeMap::from([("x-tenant".to_string(), Secret::new("a\nb"))]);
        let error = parse_headers(&s, &headers).unwrap_err();
        assert_eq!(error.path.to_string(), "exporters.test.headers.x-tenant");
    }

    #[test]
    fn header_name_with_space_is_refused() {
        let s = settings("");
        let headers = BTreeMap::from([("x tenant".to_string(), Secret::new("a"))]);
        assert!(parse_headers(&s, &headers).is_err());
    }

    #[test]
    fn content_type_header_cannot_be_overridden() {
        let s = settings("");
        let headers = BTreeMap::from([("Content-Type".to_string(), Secret::new("text/plain"))]);
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
