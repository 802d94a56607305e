//! The `otlp_http` exporter: sends batches to an OTLP/HTTP backend (protobuf or JSON bodies,
//! optionally gzip-compressed) and classifies the answer as the OTLP/HTTP specification says.

mod json;

use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use opentelemetry_proto::tonic::collector::{
    logs::v1::ExportLogsServiceResponse, metrics::v1::ExportMetricsServiceResponse,
    trace::v1::ExportTraceServiceResponse,
};
use prost::Message;
use serde::Deserialize;
use sluice_pipeline::{
    Batch, ComponentSettings, ConfigError, ExportError, Exporter, ExporterContext, ExporterFactory,
    Signal, StartError,
};

use crate::otlp_common::{
    self, Compression, ExportResponse, PartialSuccess, default_compression,
    default_compression_level, default_timeout,
};
use sluice_pipeline::error::error_chain;

/// Configuration of an `otlp_http` exporter.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Base URL of the OTLP/HTTP backend, e.g. `"http://collector:4318"`. `/v1/traces`,
    /// `/v1/metrics` and `/v1/logs` are appended to it. Only `http://` for now.
    pub endpoint: String,
    /// Full URL for traces, used as-is instead of `endpoint` + `/v1/traces`.
    #[serde(default)]
    pub traces_endpoint: Option<String>,
    /// Full URL for metrics, used as-is instead of `endpoint` + `/v1/metrics`.
    #[serde(default)]
    pub metrics_endpoint: Option<String>,
    /// Full URL for logs, used as-is instead of `endpoint` + `/v1/logs`.
    #[serde(default)]
    pub logs_endpoint: Option<String>,
    /// Body encoding: `"proto"` (binary protobuf) or `"json"` (OTLP/JSON).
    #[serde(default = "default_encoding")]
    pub encoding: Encoding,
    /// Body compression: `"gzip"` or `"none"`.
    #[serde(default = "default_compression")]
    pub compression: Compression,
    /// gzip effort, 1 (fastest) to 9 (smallest).
    #[serde(default = "default_compression_level")]
    pub compression_level: u32,
    /// How long one export may take, connecting and reading the answer included.
    #[serde(
        default = "default_timeout",
        with = "sluice_pipeline::config::duration"
    )]
    pub timeout: Duration,
    /// Extra HTTP headers sent with every request, e.g. an API key or a tenant id.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

/// How request bodies are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    Proto,
    Json,
}

fn default_encoding() -> Encoding {
    Encoding::Proto
}

/// Builds `otlp_http` exporters.
pub struct OtlpHttpFactory;

impl ExporterFactory for OtlpHttpFactory {
    fn type_name(&self) -> &'static str {
        "otlp_http"
    }

    fn signals(&self) -> &'static [Signal] {
        &Signal::ALL
    }

    fn build(&self, settings: &ComponentSettings) -> Result<Box<dyn Exporter>, ConfigError> {
        let config: Config = settings.parse()?;
        Ok(Box::new(OtlpHttpExporter::new(settings, config)?))
    }
}

/// Longest error text from a backend that is kept in an error message.
const MAX_ERROR_TEXT: usize = 512;
/// Most of a response body that is read: partial-success answers and error statuses are small,
/// and a misbehaving backend must not make us buffer an arbitrary amount.
const MAX_RESPONSE_BODY: usize = 1 << 20;

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// An exporter sending OTLP over HTTP/1.1 with pooled keep-alive connections.
pub struct OtlpHttpExporter {
    id: String,
    traces_url: Uri,
    metrics_url: Uri,
    logs_url: Uri,
    encoding: Encoding,
    compression: Compression,
    compression_level: u32,
    timeout: Duration,
    headers: HeaderMap,
    /// Created on first use: the client's pool needs a running tokio runtime, which `build`
    /// (run by `sluice validate` too) does not have.
    client: OnceLock<HttpClient>,
}

/// Appends `/v1/<signal>` to the base endpoint, with exactly one slash between them.
fn signal_url(
    settings: &ComponentSettings,
    base: &str,
    signal: Signal,
) -> Result<Uri, ConfigError> {
    let url = format!("{}/v1/{}", base.trim_end_matches('/'), signal.as_str());
    otlp_common::parse_http_url(settings, "endpoint", &url)
}

impl OtlpHttpExporter {
    /// Checks the configuration and prepares the exporter; connects nothing.
    pub fn new(settings: &ComponentSettings, config: Config) -> Result<Self, ConfigError> {
        otlp_common::parse_http_url(settings, "endpoint", &config.endpoint)?;
        otlp_common::check_compression_level(settings, config.compression_level)?;
        let url = |signal: Signal, key: &str, overridden: &Option<String>| match overridden {
            Some(url) => otlp_common::parse_http_url(settings, key, url),
            None => signal_url(settings, &config.endpoint, signal),
        };
        let traces_url = url(Signal::Traces, "traces_endpoint", &config.traces_endpoint)?;
        let metrics_url = url(
            Signal::Metrics,
            "metrics_endpoint",
            &config.metrics_endpoint,
        )?;
        let logs_url = url(Signal::Logs, "logs_endpoint", &config.logs_endpoint)?;
        if config.timeout.is_zero() {
            return Err(settings.error("timeout", "must be greater than zero"));
        }
        let mut headers = HeaderMap::new();
        for (name, value) in otlp_common::parse_headers(settings, &config.headers)? {
            headers.append(name, value);
        }
        let content_type = match config.encoding {
            Encoding::Proto => "application/x-protobuf",
            Encoding::Json => "application/json",
        };
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        if config.compression == Compression::Gzip {
            headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        }
        headers
            .entry(header::USER_AGENT)
            .or_insert(HeaderValue::from_static(concat!(
                "sluice/",
                env!("CARGO_PKG_VERSION")
            )));
        Ok(OtlpHttpExporter {
            id: settings.id.clone(),
            traces_url,
            metrics_url,
            logs_url,
            encoding: config.encoding,
            compression: config.compression,
            compression_level: config.compression_level,
            timeout: config.timeout,
            headers,
            client: OnceLock::new(),
        })
    }

    fn client(&self) -> &HttpClient {
        self.client.get_or_init(|| {
            let mut connector = HttpConnector::new();
            connector.set_nodelay(true);
            Client::builder(TokioExecutor::new())
                .pool_timer(TokioTimer::new())
                .build(connector)
        })
    }

    fn url(&self, signal: Signal) -> &Uri {
        match signal {
            Signal::Traces => &self.traces_url,
            Signal::Metrics => &self.metrics_url,
            Signal::Logs => &self.logs_url,
        }
    }

    async fn send(&self, signal: Signal, body: Bytes) -> Result<(), ExportError> {
        let mut request = http::Request::new(Full::new(body));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = self.url(signal).clone();
        *request.headers_mut() = self.headers.clone();
        let response = self.client().request(request).await.map_err(|e| {
            ExportError::retryable(format!(
                "sending to {}: {}",
                self.url(signal),
                error_chain(&e)
            ))
        })?;
        let (parts, body) = response.into_parts();
        let body = Limited::new(body, MAX_RESPONSE_BODY)
            .collect()
            .await
            .map(|collected| collected.to_bytes())
            .map_err(|e| {
                ExportError::retryable(format!("reading the answer of {}: {e}", self.url(signal)))
            })?;
        let content_type = parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let format = BodyFormat::of(content_type);
        if parts.status.is_success() {
            if let Some(partial) = partial_success(signal, format, &body) {
                otlp_common::warn_partial_success(&self.id, signal, &partial);
            }
            return Ok(());
        }
        Err(classify_failure(
            parts.status,
            &parts.headers,
            format,
            &body,
            SystemTime::now(),
        ))
    }
}

/// The request body: the batch's protobuf encoding as it is, or OTLP/JSON; compressed.
fn body(
    mut batch: Batch,
    encoding: Encoding,
    compression: Compression,
    level: u32,
) -> Result<Bytes, ExportError> {
    let json;
    let segments: &[Bytes] = match encoding {
        Encoding::Proto => batch.encoded_segments(),
        Encoding::Json => {
            let request = batch.request().map_err(|e| {
                ExportError::permanent(format!("batch is not valid OTLP protobuf: {e}"))
            })?;
            json = [Bytes::from(json::encode(request).map_err(|e| {
                ExportError::permanent(format!("encoding OTLP/JSON: {e}"))
            })?)];
            &json
        }
    };
    match compression {
        Compression::None if segments.len() == 1 => Ok(segments[0].clone()),
        Compression::None => Ok(Bytes::from(segments.concat())),
        Compression::Gzip => {
            let len: usize = segments.iter().map(Bytes::len).sum();
            // OTLP compresses well; a quarter of the input is a fair first guess.
            let out = Vec::with_capacity(len / 4 + 64);
            let compressed = otlp_common::gzip_into(out, segments, level)
                .map_err(|e| ExportError::permanent(format!("gzip: {e}")))?;
            Ok(Bytes::from(compressed))
        }
    }
}

#[async_trait]
impl Exporter for OtlpHttpExporter {
    async fn start(&mut self, ctx: &ExporterContext) -> Result<(), StartError> {
        self.id = ctx.id.clone();
        Ok(())
    }

    async fn export(&self, batch: Batch) -> Result<(), ExportError> {
        let signal = batch.signal();
        let (encoding, compression, level) =
            (self.encoding, self.compression, self.compression_level);
        let body =
            otlp_common::off_async_workers(move || body(batch, encoding, compression, level))
                .await
                .map_err(ExportError::permanent)??;
        match tokio::time::timeout(self.timeout, self.send(signal, body)).await {
            Ok(result) => result,
            Err(_) => Err(ExportError::retryable(format!(
                "sending to {} timed out after {}",
                self.url(signal),
                humantime::format_duration(self.timeout)
            ))),
        }
    }
}

/// How a response body is encoded, from its content type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyFormat {
    Proto,
    Json,
    Other,
}

impl BodyFormat {
    fn of(content_type: &str) -> BodyFormat {
        let essence = content_type
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        match essence.as_str() {
            "application/x-protobuf" | "application/protobuf" => BodyFormat::Proto,
            "application/json" => BodyFormat::Json,
            _ => BodyFormat::Other,
        }
    }
}

/// The partial success in a 2xx answer, if the body carries one.
fn partial_success(signal: Signal, format: BodyFormat, body: &[u8]) -> Option<PartialSuccess> {
    if body.is_empty() {
        return None;
    }
    match format {
        BodyFormat::Proto => match signal {
            Signal::Traces => ExportTraceServiceResponse::decode(body)
                .ok()?
                .partial_success(),
            Signal::Metrics => ExportMetricsServiceResponse::decode(body)
                .ok()?
                .partial_success(),
            Signal::Logs => ExportLogsServiceResponse::decode(body)
                .ok()?
                .partial_success(),
        },
        BodyFormat::Json => {
            // Read by hand: the rejected count is an int64, which OTLP/JSON allows as a
            // number or a string.
            let value: serde_json::Value = serde_json::from_slice(body).ok()?;
            let partial = value.get("partialSuccess")?;
            let rejected_key = match signal {
                Signal::Traces => "rejectedSpans",
                Signal::Metrics => "rejectedDataPoints",
                Signal::Logs => "rejectedLogRecords",
            };
            let rejected = match partial.get(rejected_key) {
                Some(serde_json::Value::String(s)) => s.parse().unwrap_or(0),
                Some(v) => v.as_i64().unwrap_or(0),
                None => 0,
            };
            let error_message = partial
                .get("errorMessage")
                .and_then(|m| m.as_str())
                .unwrap_or("");
            (rejected != 0 || !error_message.is_empty()).then(|| PartialSuccess {
                rejected,
                error_message: error_message.to_string(),
            })
        }
        BodyFormat::Other => None,
    }
}

/// Turns a non-2xx answer into an export error: 429, 502, 503 and 504 are worth retrying (after
/// the Retry-After delay, if given); every other status means the data will never be taken.
fn classify_failure(
    status: StatusCode,
    headers: &HeaderMap,
    format: BodyFormat,
    body: &[u8],
    now: SystemTime,
) -> ExportError {
    let mut message = format!("HTTP {status}");
    let detail = error_detail(format, body);
    if !detail.is_empty() {
        message.push_str(": ");
        message.push_str(&detail);
    }
    match status.as_u16() {
        429 | 502 | 503 | 504 => ExportError::Retryable {
            message,
            throttle: headers
                .get(header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| parse_retry_after(v, now)),
        },
        _ => ExportError::Permanent(message),
    }
}

/// The backend's error message: a `google.rpc.Status` body's message, as the OTLP/HTTP
/// specification asks servers to send, or else the body's text.
fn error_detail(format: BodyFormat, body: &[u8]) -> String {
    let status_message = match format {
        BodyFormat::Proto => tonic_types::Status::decode(body).ok().map(|s| s.message),
        BodyFormat::Json => serde_json::from_slice::<serde_json::Value>(body)
            .ok()
            .and_then(|v| v.get("message")?.as_str().map(str::to_string)),
        BodyFormat::Other => None,
    };
    match status_message {
        Some(message) if !message.is_empty() => {
            otlp_common::truncate_message(&message, MAX_ERROR_TEXT)
        }
        _ => otlp_common::truncate_message(&String::from_utf8_lossy(body), MAX_ERROR_TEXT),
    }
}

/// Parses a Retry-After value: a number of seconds or an HTTP-date.
fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests;
