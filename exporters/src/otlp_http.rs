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
    self, Auth, Compression, ExportResponse, PartialSuccess, ResolvedSettings, Secret,
    default_compression_level,
};
use crate::otlp_env::OtlpEnv;
use crate::tls::{Tls, TlsConfig};
use sluice_pipeline::error::error_chain;

/// Configuration of an `otlp_http` exporter. Keys left out that the OpenTelemetry environment
/// variables define (endpoints, `headers`, `compression`, `timeout`) are taken from them.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Base URL of the OTLP/HTTP backend, e.g. `"http://collector:4318"` or
    /// `"https://collector:4318"` (TLS). `/v1/traces`, `/v1/metrics` and `/v1/logs` are
    /// appended to it. Without it, `OTEL_EXPORTER_OTLP_<SIGNAL>_ENDPOINT` (as-is) or
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` (with `/v1/<signal>` appended).
    #[serde(default)]
    pub endpoint: Option<String>,
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
    /// Body compression: `"gzip"` or `"none"`. Without it, `OTEL_EXPORTER_OTLP_COMPRESSION`,
    /// else [`default_compression`] (gzip).
    #[serde(default)]
    pub compression: Option<Compression>,
    /// gzip effort, 1 (fastest) to 9 (smallest).
    #[serde(default = "default_compression_level")]
    pub compression_level: u32,
    /// How long one export may take, connecting and reading the answer included. Without it,
    /// `OTEL_EXPORTER_OTLP_TIMEOUT`, else [`default_timeout`] (10 s).
    #[serde(default, deserialize_with = "otlp_common::optional_duration")]
    pub timeout: Option<Duration>,
    /// Extra HTTP headers sent with every request, e.g. a tenant id. Without it,
    /// `OTEL_EXPORTER_OTLP_HEADERS`.
    #[serde(default)]
    pub headers: Option<BTreeMap<String, Secret>>,
    /// Authentication: `{ type = "bearer", token }`, `{ type = "basic", username, password }`
    /// or `{ type = "api_key", header, value }`.
    #[serde(default)]
    pub auth: Option<Auth>,
    /// TLS settings for `https://` endpoints (by default the system's roots verify them).
    #[serde(default)]
    pub tls: Option<TlsConfig>,
}

/// How request bodies are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    #[default]
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
        Ok(Box::new(OtlpHttpExporter::new(
            settings,
            config,
            &OtlpEnv::from_process(),
        )?))
    }
}

/// Longest error text from a backend that is kept in an error message.
const MAX_ERROR_TEXT: usize = 512;
/// Most of a response body that is read: partial-success answers and error statuses are small,
/// and a misbehaving backend must not make us buffer an arbitrary amount.
const MAX_RESPONSE_BODY: usize = 1 << 20;

/// The HTTP client: plain, or through rustls when an endpoint is `https://`.
enum HttpClient {
    Plain(Client<HttpConnector, Full<Bytes>>),
    Tls(Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>),
}

impl HttpClient {
    async fn request(
        &self,
        request: http::Request<Full<Bytes>>,
    ) -> Result<http::Response<hyper::body::Incoming>, hyper_util::client::legacy::Error> {
        match self {
            HttpClient::Plain(client) => client.request(request).await,
            HttpClient::Tls(client) => client.request(request).await,
        }
    }
}

/// An exporter sending OTLP over HTTP/1.1 with pooled keep-alive connections.
pub struct OtlpHttpExporter {
    id: String,
    /// `sluice_exporter_rejected_items_total`, once started: items a backend's partial success
    /// reported rejected.
    rejected: Option<prometheus::IntCounterVec>,
    /// Each signal's URL, in [`Signal::ALL`] order; `None` when neither the config nor the
    /// environment gives one (only possible when the environment sets some signals' only).
    urls: [Option<Uri>; 3],
    encoding: Encoding,
    compression: Compression,
    compression_level: u32,
    timeout: Duration,
    headers: HeaderMap,
    /// Set when an endpoint is `https://`.
    tls: Option<Tls>,
    /// Created on first use: the client's pool needs a running tokio runtime, which `build`
    /// (run by `sluice validate` too) does not have.
    client: OnceLock<HttpClient>,
}

/// Shows the settings but no secret: header values are marked sensitive, so `HeaderMap`'s
/// `Debug` prints `Sensitive` in their place.
impl std::fmt::Debug for OtlpHttpExporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OtlpHttpExporter")
            .field("id", &self.id)
            .field("urls", &self.urls)
            .field("encoding", &self.encoding)
            .field("compression", &self.compression)
            .field("timeout", &self.timeout)
            .field("headers", &self.headers)
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

fn signal_index(signal: Signal) -> usize {
    match signal {
        Signal::Traces => 0,
        Signal::Metrics => 1,
        Signal::Logs => 2,
    }
}

impl OtlpHttpExporter {
    /// Checks the configuration and prepares the exporter; connects nothing. Keys the config
    /// omits are taken from `env` where it sets them.
    pub fn new(
        settings: &ComponentSettings,
        config: Config,
        env: &OtlpEnv,
    ) -> Result<Self, ConfigError> {
        if let Some(endpoint) = &config.endpoint {
            otlp_common::parse_http_url(settings, "endpoint", endpoint)?;
        }
        otlp_common::check_compression_level(settings, config.compression_level)?;
        // Explicit config first (a signal's own URL, then the base endpoint), then the
        // environment (the signal's variable as-is, then the generic one + /v1/<signal>).
        let url = |signal: Signal, key: &str, overridden: &Option<String>| {
            if let Some(url) = overridden {
                return otlp_common::parse_http_url(settings, key, url).map(Some);
            }
            if let Some(base) = &config.endpoint {
                let url = format!("{}/v1/{}", base.trim_end_matches('/'), signal.as_str());
                return otlp_common::parse_http_url(settings, "endpoint", &url).map(Some);
            }
            match env.http_url(signal) {
                Some(var) => otlp_common::parse_http_url(settings, "endpoint", &var.value)
                    .map(Some)
                    .map_err(|e| otlp_common::from_env(e, Some(&var.name))),
                None => Ok(None),
            }
        };
        let urls = [
            url(Signal::Traces, "traces_endpoint", &config.traces_endpoint)?,
            url(
                Signal::Metrics,
                "metrics_endpoint",
                &config.metrics_endpoint,
            )?,
            url(Signal::Logs, "logs_endpoint", &config.logs_endpoint)?,
        ];
        if urls.iter().all(Option::is_none) {
            return Err(settings.error(
                "endpoint",
                "missing: set endpoint = \"http://host:4318\" or the OTEL_EXPORTER_OTLP_ENDPOINT environment variable",
            ));
        }
        let any_https = urls
            .iter()
            .flatten()
            .any(|u| u.scheme_str() == Some("https"));
        let tls = match (any_https, &config.tls) {
            (true, tls) => Some(Tls::new(settings, &tls.clone().unwrap_or_default())?),
            (false, Some(_)) => {
                return Err(settings.error(
                    "tls",
                    "no endpoint is https://, so nothing uses TLS: write https:// to use these settings",
                ));
            }
            (false, None) => None,
        };
        let ResolvedSettings {
            compression,
            timeout,
            headers: configured_headers,
        } = ResolvedSettings::resolve(
            settings,
            env,
            config.compression,
            config.timeout,
            config.headers,
        )?;
        let mut headers = HeaderMap::new();
        for (name, value) in
            otlp_common::request_headers(settings, &configured_headers, config.auth.as_ref())?
        {
            headers.append(name, value);
        }
        let content_type = match config.encoding {
            Encoding::Proto => "application/x-protobuf",
            Encoding::Json => "application/json",
        };
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        if compression == Compression::Gzip {
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
            rejected: None,
            urls,
            encoding: config.encoding,
            compression,
            compression_level: config.compression_level,
            timeout,
            headers,
            tls,
            client: OnceLock::new(),
        })
    }

    fn client(&self) -> &HttpClient {
        self.client.get_or_init(|| {
            let mut connector = HttpConnector::new();
            connector.set_nodelay(true);
            let mut builder = Client::builder(TokioExecutor::new());
            builder.pool_timer(TokioTimer::new());
            match &self.tls {
                None => HttpClient::Plain(builder.build(connector)),
                Some(tls) => {
                    connector.enforce_http(false);
                    HttpClient::Tls(builder.build(tls.http1_connector(connector)))
                }
            }
        })
    }

    /// The URL of `signal`, or a permanent error saying none is configured.
    fn url(&self, signal: Signal) -> Result<&Uri, ExportError> {
        self.urls[signal_index(signal)].as_ref().ok_or_else(|| {
            ExportError::permanent(format!(
                "no URL for {signal}: set endpoint or {signal}_endpoint, or OTEL_EXPORTER_OTLP_{}_ENDPOINT",
                signal.as_str().to_ascii_uppercase()
            ))
        })
    }

    /// Posts `body` and reads the answer, up to [`MAX_RESPONSE_BODY`].
    async fn post(
        &self,
        url: &Uri,
        body: Bytes,
    ) -> Result<(http::response::Parts, Bytes), PostError> {
        let mut request = http::Request::new(Full::new(body));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = url.clone();
        *request.headers_mut() = self.headers.clone();
        let response = self
            .client()
            .request(request)
            .await
            .map_err(PostError::Send)?;
        let (parts, body) = response.into_parts();
        let body = Limited::new(body, MAX_RESPONSE_BODY)
            .collect()
            .await
            .map(|collected| collected.to_bytes())
            .map_err(PostError::Read)?;
        Ok((parts, body))
    }

    async fn send(&self, signal: Signal, body: Bytes) -> Result<(), ExportError> {
        let url = self.url(signal)?;
        let (parts, body) = self.post(url, body).await.map_err(|e| match e {
            PostError::Send(e) => {
                ExportError::retryable(format!("sending to {url}: {}", error_chain(&e)))
            }
            PostError::Read(e) => {
                ExportError::retryable(format!("reading the answer of {url}: {e}"))
            }
        })?;
        let content_type = parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let format = BodyFormat::of(content_type);
        if parts.status.is_success() {
            if let Some(partial) = partial_success(signal, format, &body) {
                otlp_common::warn_partial_success(
                    &self.id,
                    signal,
                    &partial,
                    self.rejected.as_ref(),
                );
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

/// Why a POST got no answer.
enum PostError {
    Send(hyper_util::client::legacy::Error),
    Read(Box<dyn std::error::Error + Send + Sync>),
}

#[async_trait]
impl Exporter for OtlpHttpExporter {
    async fn start(&mut self, ctx: &ExporterContext) -> Result<(), StartError> {
        self.id = ctx.id.clone();
        self.rejected = Some(otlp_common::rejected_counter(&ctx.telemetry));
        if let Some(tls) = &self.tls {
            tls.warn_if_insecure(&self.id);
        }
        Ok(())
    }

    async fn check(&self, signal: Signal) -> Result<String, ExportError> {
        if let Some(tls) = &self.tls {
            tls.warn_if_insecure(&self.id);
        }
        let url = self.url(signal)?;
        let body = body(
            Batch::empty(signal),
            self.encoding,
            self.compression,
            self.compression_level,
        )?;
        let answer = match tokio::time::timeout(self.timeout, self.post(url, body)).await {
            Ok(answer) => answer,
            Err(_) => {
                return Err(ExportError::retryable(format!(
                    "{url}: timed out after {} without an answer",
                    humantime::format_duration(self.timeout)
                )));
            }
        };
        let (parts, body) = match answer {
            Ok(answer) => answer,
            Err(e) => {
                let mut cause = match &e {
                    PostError::Send(e) => otlp_common::connection_failure(e),
                    PostError::Read(e) => otlp_common::connection_failure(&**e),
                };
                let explained = ["connection refused", "DNS", "TLS", "connection timed out"]
                    .iter()
                    .any(|known| cause.starts_with(known));
                if !explained && answers_http2(url).await {
                    cause = format!(
                        "wrong protocol: the server does not answer HTTP/1.1 but speaks HTTP/2 (a gRPC-only port such as OTLP/gRPC's 4317? use otlp_grpc for it); the request failed with: {cause}"
                    );
                }
                return Err(ExportError::permanent(format!("{url}: {cause}")));
            }
        };
        if parts.status.is_success() {
            return Ok(format!("{url}: reachable, export accepted"));
        }
        let format = BodyFormat::of(
            parts
                .headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or(""),
        );
        let mut detail = format!("HTTP {}", parts.status);
        let text = error_detail(format, &body);
        if !text.is_empty() {
            detail = format!("{detail}: {text}");
        }
        let cause = match parts.status.as_u16() {
            401 => format!("authentication failed ({detail}): check auth and headers"),
            403 => format!("permission denied ({detail}): check auth and headers"),
            404 => format!(
                "wrong path ({detail}): nothing serves {}; OTLP/HTTP backends take /v1/{signal} under their base URL",
                url.path()
            ),
            _ => format!("export refused ({detail})"),
        };
        Err(ExportError::permanent(format!("{url}: {cause}")))
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
                self.url(signal)?,
                humantime::format_duration(self.timeout)
            ))),
        }
    }
}

/// Whether a plaintext endpoint answers the HTTP/2 connection preface with a SETTINGS frame:
/// after a failed HTTP/1.1 request, the sign that it went to an HTTP/2-only (gRPC) port, whose
/// answer HTTP/1.1 cannot parse.
async fn answers_http2(url: &Uri) -> bool {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let (Some("http"), Some(authority)) = (url.scheme_str(), url.authority()) else {
        return false;
    };
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let port = authority.port_u16().unwrap_or(80);
    let probe = async {
        let mut stream = tokio::net::TcpStream::connect((host, port)).await.ok()?;
        // The preface, then an empty SETTINGS frame.
        let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        hello.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
        stream.write_all(&hello).await.ok()?;
        let mut frame_header = [0u8; 9];
        stream.read_exact(&mut frame_header).await.ok()?;
        // A SETTINGS frame (type 4) on stream 0.
        Some(frame_header[3] == 4 && frame_header[5..9] == [0, 0, 0, 0])
    };
    tokio::time::timeout(Duration::from_secs(2), probe)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
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
