//! The `otlp_grpc` exporter: sends batches to an OTLP/gRPC backend.
//!
//! The gRPC request is framed here from the batch's protobuf encoding — a batch nobody decoded
//! on the way is never decoded or re-encoded — and sent over a tonic [`Channel`], which owns
//! the HTTP/2 connection. Framing it ourselves rather than through tonic's codec lets us choose
//! the gzip level: tonic always deflates at level 6, which made compression most of the
//! process's CPU. Failures are classified as the OTLP/gRPC specification says.

use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use http::uri::PathAndQuery;
use http_body_util::BodyExt as _;
use opentelemetry_proto::tonic::collector::{
    logs::v1::ExportLogsServiceResponse, metrics::v1::ExportMetricsServiceResponse,
    trace::v1::ExportTraceServiceResponse,
};
use serde::Deserialize;
use sluice_pipeline::{
    Batch, ComponentSettings, ConfigError, ExportError, Exporter, ExporterContext, ExporterFactory,
    Signal, StartError,
};
use tonic::metadata::{AsciiMetadataKey, AsciiMetadataValue};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};
use tonic_types::StatusExt;

use crate::otlp_common::{
    self, Auth, Compression, ExportResponse, ResolvedSettings, Secret, default_compression_level,
};
use crate::otlp_env::OtlpEnv;
use crate::tls::{Tls, TlsConfig};
use sluice_pipeline::error::error_chain;

/// Configuration of an `otlp_grpc` exporter. Keys left out that the OpenTelemetry environment
/// variables define (`endpoint`, `headers`, `compression`, `timeout`) are taken from them.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The backend, as `"http://host:port"` or `"https://host:port"` (TLS). Without it,
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Request compression: `"gzip"` or `"none"`. Without it, `OTEL_EXPORTER_OTLP_COMPRESSION`,
    /// else [`default_compression`] (gzip).
    #[serde(default)]
    pub compression: Option<Compression>,
    /// gzip effort, 1 (fastest) to 9 (smallest).
    #[serde(default = "default_compression_level")]
    pub compression_level: u32,
    /// How long one export may take, connecting and waiting for the answer included. Without
    /// it, `OTEL_EXPORTER_OTLP_TIMEOUT`, else [`default_timeout`] (10 s).
    #[serde(default, deserialize_with = "otlp_common::optional_duration")]
    pub timeout: Option<Duration>,
    /// Extra gRPC metadata sent with every request, e.g. a tenant id. Without it,
    /// `OTEL_EXPORTER_OTLP_HEADERS`.
    #[serde(default)]
    pub headers: Option<BTreeMap<String, Secret>>,
    /// Authentication: `{ type = "bearer", token }`, `{ type = "basic", username, password }`
    /// or `{ type = "api_key", header, value }`.
    #[serde(default)]
    pub auth: Option<Auth>,
    /// TLS settings for an `https://` endpoint (by default the system's roots verify it).
    #[serde(default)]
    pub tls: Option<TlsConfig>,
}

/// Builds `otlp_grpc` exporters.
pub struct OtlpGrpcFactory;

impl ExporterFactory for OtlpGrpcFactory {
    fn type_name(&self) -> &'static str {
        "otlp_grpc"
    }

    fn signals(&self) -> &'static [Signal] {
        &Signal::ALL
    }

    fn build(&self, settings: &ComponentSettings) -> Result<Box<dyn Exporter>, ConfigError> {
        let config: Config = settings.parse()?;
        Ok(Box::new(OtlpGrpcExporter::new(
            settings,
            config,
            &OtlpEnv::from_process(),
        )?))
    }
}

/// An exporter sending OTLP over gRPC on one HTTP/2 connection shared by every export.
pub struct OtlpGrpcExporter {
    id: String,
    /// `sluice_exporter_rejected_items_total`, once started: items a backend's partial success
    /// reported rejected.
    rejected: Option<prometheus::IntCounterVec>,
    endpoint: Endpoint,
    compression: Compression,
    compression_level: u32,
    timeout: Duration,
    /// The request URI of each signal's Export method, in [`Signal::ALL`] order.
    uris: [http::Uri; 3],
    /// The headers of every request: gRPC's own and the configured metadata.
    headers: http::HeaderMap,
    /// For `https://` endpoints: the rustls setup the channel connects with.
    tls: Option<Tls>,
    /// Created on first use: a channel spawns its worker on the tokio runtime, which `build`
    /// (run by `sluice validate` too) does not have. It connects lazily, and reconnects on its
    /// own after the backend went away.
    channel: OnceLock<Channel>,
}

/// Shows the settings but no secret: header values are marked sensitive, so `HeaderMap`'s
/// `Debug` prints `Sensitive` in their place.
impl std::fmt::Debug for OtlpGrpcExporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OtlpGrpcExporter")
            .field("id", &self.id)
            .field("endpoint", self.endpoint.uri())
            .field("compression", &self.compression)
            .field("timeout", &self.timeout)
            .field("headers", &self.headers)
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

impl OtlpGrpcExporter {
    /// Checks the configuration and prepares the exporter; connects nothing. Keys the config
    /// omits are taken from `env` where it sets them.
    pub fn new(
        settings: &ComponentSettings,
        config: Config,
        env: &OtlpEnv,
    ) -> Result<Self, ConfigError> {
        let (endpoint, endpoint_var) = match config.endpoint {
            Some(endpoint) => (endpoint, None),
            None => match env.grpc_endpoint(None) {
                Some(var) => (var.value, Some(var.name)),
                None => {
                    return Err(settings.error(
                        "endpoint",
                        "missing: set endpoint = \"http://host:4317\" or the OTEL_EXPORTER_OTLP_ENDPOINT environment variable",
                    ));
                }
            },
        };
        let from_env = |e| otlp_common::from_env(e, endpoint_var.as_deref());
        let uri = otlp_common::parse_http_url(settings, "endpoint", &endpoint).map_err(from_env)?;
        if !matches!(uri.path(), "" | "/") {
            return Err(from_env(settings.error(
                "endpoint",
                format!(
                    "a gRPC endpoint has no path: write \"{}://{}\"",
                    uri.scheme_str().unwrap_or("http"),
                    uri.authority().map(|a| a.as_str()).unwrap_or("host:4317")
                ),
            )));
        }
        let tls = match (uri.scheme_str(), &config.tls) {
            (Some("https"), tls) => Some(Tls::new(settings, &tls.clone().unwrap_or_default())?),
            (_, Some(_)) => {
                return Err(settings.error(
                    "tls",
                    "the endpoint is http://, which does not use TLS: write https:// to use these settings",
                ));
            }
            (_, None) => None,
        };
        otlp_common::check_compression_level(settings, config.compression_level)?;
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
        let mut headers = http::HeaderMap::new();
        headers.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/grpc"),
        );
        headers.insert(http::header::TE, http::HeaderValue::from_static("trailers"));
        headers.insert(
            "grpc-accept-encoding",
            http::HeaderValue::from_static("gzip"),
        );
        if compression == Compression::Gzip {
            headers.insert("grpc-encoding", http::HeaderValue::from_static("gzip"));
        }
        let grpc_timeout_value = http::HeaderValue::try_from(grpc_timeout(timeout))
            .map_err(|e| settings.error("timeout", e.to_string()))?;
        headers.insert("grpc-timeout", grpc_timeout_value);
        for (name, value) in
            otlp_common::request_headers(settings, &configured_headers, config.auth.as_ref())?
        {
            let path = settings.path().key("headers").key(name.as_str());
            let key = AsciiMetadataKey::from_bytes(name.as_str().as_bytes()).map_err(|_| {
                ConfigError::new(
                    path.clone(),
                    "not a valid gRPC metadata name (names ending in -bin are binary metadata)",
                )
            })?;
            let value = AsciiMetadataValue::try_from(value.as_bytes())
                .map_err(|_| ConfigError::new(path.clone(), "not a valid gRPC metadata value"))?;
            let name = http::HeaderName::from_bytes(key.as_str().as_bytes())
                .map_err(|e| ConfigError::new(path.clone(), e.to_string()))?;
            let mut value = http::HeaderValue::from_bytes(value.as_encoded_bytes())
                .map_err(|e| ConfigError::new(path, e.to_string()))?;
            value.set_sensitive(true);
            headers.insert(name, value);
        }
        let uris = Signal::ALL.map(|signal| {
            let mut parts = uri.clone().into_parts();
            parts.path_and_query = Some(PathAndQuery::from_static(export_path(signal)));
            http::Uri::from_parts(parts)
        });
        let [Ok(traces), Ok(metrics), Ok(logs)] = uris else {
            return Err(settings.error("endpoint", "cannot form the OTLP service URIs"));
        };
        let endpoint = Endpoint::from(uri)
            .connect_timeout(timeout)
            .tcp_nodelay(true)
            .user_agent(concat!("sluice/", env!("CARGO_PKG_VERSION")))
            .map_err(|e| settings.error("endpoint", e.to_string()))?;
        Ok(OtlpGrpcExporter {
            id: settings.id.clone(),
            rejected: None,
            endpoint,
            compression,
            compression_level: config.compression_level,
            timeout,
            uris: [traces, metrics, logs],
            headers,
            tls,
            channel: OnceLock::new(),
        })
    }

    fn channel(&self) -> Channel {
        self.channel
            .get_or_init(|| match &self.tls {
                None => self.endpoint.connect_lazy(),
                Some(tls) => {
                    let mut tcp = hyper_util::client::legacy::connect::HttpConnector::new();
                    tcp.enforce_http(false);
                    tcp.set_nodelay(true);
                    tcp.set_connect_timeout(Some(self.timeout));
                    self.endpoint
                        .connect_with_connector_lazy(tls.http2_connector(tcp))
                }
            })
            .clone()
    }

    /// Sends `batch` to the service of its signal and returns the backend's answer.
    async fn call<R: ExportResponse + Sync>(&self, batch: Batch) -> Result<R, Status> {
        let uri = match batch.signal() {
            Signal::Traces => &self.uris[0],
            Signal::Metrics => &self.uris[1],
            Signal::Logs => &self.uris[2],
        };
        let mut request = http::Request::post(uri.clone())
            .body(tonic::body::Body::empty())
            .map_err(|e| Status::internal(format!("building the request: {e}")))?;
        *request.headers_mut() = self.headers.clone();
        let (compression, level) = (self.compression, self.compression_level);
        let frame = otlp_common::off_async_workers(move || frame(batch, compression, level))
            .await
            .map_err(Status::internal)??;
        *request.body_mut() = tonic::body::Body::new(http_body_util::Full::new(frame));
        let response = tower::ServiceExt::oneshot(self.channel(), request)
            .await
            .map_err(|e| {
                // The cause stays attached so `check` can tell DNS from TLS from refused.
                let mut status = Status::unavailable(format!("sending: {}", error_chain(&e)));
                status.set_source(std::sync::Arc::new(e));
                status
            })?;
        read_response(response).await
    }

    async fn export_as<R: ExportResponse + Sync>(&self, batch: Batch) -> Result<(), ExportError> {
        let signal = batch.signal();
        let started = Instant::now();
        let answer = tokio::time::timeout(self.timeout, self.call::<R>(batch)).await;
        let timed_out = || {
            format!(
                "export to {} timed out after {}",
                self.endpoint.uri(),
                humantime::format_duration(self.timeout)
            )
        };
        match answer {
            Ok(Ok(response)) => {
                if let Some(partial) = response.partial_success() {
                    otlp_common::warn_partial_success(
                        &self.id,
                        signal,
                        &partial,
                        self.rejected.as_ref(),
                    );
                }
                Ok(())
            }
            // At the deadline the channel reports its own timers: the grpc-timeout we send as
            // CANCELLED, the connect timeout (the same duration) as UNAVAILABLE. Whichever fires
            // first, the export timed out.
            Ok(Err(status))
                if matches!(
                    status.code(),
                    Code::Cancelled | Code::DeadlineExceeded | Code::Unavailable
                ) && started.elapsed() >= self.timeout =>
            {
                Err(ExportError::retryable(format!(
                    "{} (gRPC {:?}: {})",
                    timed_out(),
                    status.code(),
                    status.message()
                )))
            }
            Ok(Err(status)) => Err(classify(&status)),
            Err(_) => Err(ExportError::retryable(timed_out())),
        }
    }
}

#[async_trait]
impl Exporter for OtlpGrpcExporter {
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
        let target = self.endpoint.uri().to_string();
        let target = target.trim_end_matches('/');
        let batch = Batch::empty(signal);
        let call = async {
            match signal {
                Signal::Traces => self
                    .call::<ExportTraceServiceResponse>(batch)
                    .await
                    .map(drop),
                Signal::Metrics => self
                    .call::<ExportMetricsServiceResponse>(batch)
                    .await
                    .map(drop),
                Signal::Logs => self
                    .call::<ExportLogsServiceResponse>(batch)
                    .await
                    .map(drop),
            }
        };
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(())) => Ok(format!("{target}: reachable, export accepted")),
            Ok(Err(status)) => {
                let mut cause = diagnose(&status, signal);
                let transport_failure = std::error::Error::source(&status).is_some();
                let explained = ["connection refused", "DNS", "TLS", "connection timed out"]
                    .iter()
                    .any(|known| cause.starts_with(known))
                    || cause.starts_with("wrong protocol");
                if transport_failure && !explained && answers_http1(self.endpoint.uri()).await {
                    cause = format!(
                        "wrong protocol: the server answers HTTP/1.1 and does not speak HTTP/2, so not gRPC (an OTLP/HTTP port such as 4318? use otlp_http for it); the gRPC call failed with: {cause}"
                    );
                }
                Err(ExportError::permanent(format!("{target}: {cause}")))
            }
            Err(_) => Err(ExportError::retryable(format!(
                "{target}: timed out after {} without an answer",
                humantime::format_duration(self.timeout)
            ))),
        }
    }

    async fn export(&self, batch: Batch) -> Result<(), ExportError> {
        match batch.signal() {
            Signal::Traces => self.export_as::<ExportTraceServiceResponse>(batch).await,
            Signal::Metrics => self.export_as::<ExportMetricsServiceResponse>(batch).await,
            Signal::Logs => self.export_as::<ExportLogsServiceResponse>(batch).await,
        }
    }
}

/// Classifies a failed call as the OTLP/gRPC specification says: these codes may pass, and
/// RESOURCE_EXHAUSTED only when the server says when to come back (a `google.rpc.RetryInfo` in
/// the status details); any other code means the data will never be accepted.
fn classify(status: &Status) -> ExportError {
    let message = if status.message().is_empty() {
        format!("gRPC {:?}", status.code())
    } else {
        format!("gRPC {:?}: {}", status.code(), status.message())
    };
    let throttle = status
        .get_details_retry_info()
        .and_then(|info| info.retry_delay);
    let retryable = match status.code() {
        Code::Cancelled
        | Code::DeadlineExceeded
        | Code::Aborted
        | Code::OutOfRange
        | Code::Unavailable
        | Code::DataLoss => true,
        Code::ResourceExhausted => throttle.is_some(),
        // tonic reports a transport failure of its own (the connection reset mid-call) as
        // UNKNOWN with the cause attached; a status that came from the server has no source.
        Code::Unknown => std::error::Error::source(status).is_some(),
        _ => false,
    };
    if retryable {
        ExportError::Retryable { message, throttle }
    } else {
        ExportError::Permanent(message)
    }
}

/// Whether a plaintext endpoint answers an HTTP/1.1 request: after a failed gRPC call, the
/// sign that HTTP/2 was spoken to an HTTP/1-only port (which closes the connection on the
/// HTTP/2 preface, leaving the client only a broken pipe or a reset).
async fn answers_http1(uri: &http::Uri) -> bool {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let (Some("http"), Some(authority)) = (uri.scheme_str(), uri.authority()) else {
        return false;
    };
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let port = authority.port_u16().unwrap_or(80);
    let probe = async {
        let mut stream = tokio::net::TcpStream::connect((host, port)).await.ok()?;
        let request =
            format!("OPTIONS * HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut start = [0u8; 7];
        stream.read_exact(&mut start).await.ok()?;
        Some(&start == b"HTTP/1.")
    };
    tokio::time::timeout(Duration::from_secs(2), probe)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}

/// Why a check's export failed, in words a user can act on.
fn diagnose(status: &Status, signal: Signal) -> String {
    if let Some(source) = std::error::Error::source(status) {
        let cause = otlp_common::connection_failure(source);
        // An HTTP/1-only server answers the HTTP/2 preface with an HTTP/1 response, which the
        // HTTP/2 client reads as a malformed frame.
        if cause.contains("frame with invalid size")
            || cause.contains("invalid HTTP/2")
            || cause.contains("connection closed")
            || cause.contains("PROTOCOL_ERROR")
        {
            return format!(
                "wrong protocol: the server does not speak HTTP/2, so not gRPC (an HTTP/1 port such as OTLP/HTTP's 4318? use otlp_http for it): {cause}"
            );
        }
        return cause;
    }
    let detail = if status.message().is_empty() {
        format!("gRPC {:?}", status.code())
    } else {
        format!("gRPC {:?}: {}", status.code(), status.message())
    };
    match status.code() {
        Code::Unauthenticated => {
            format!("authentication failed ({detail}): check auth and headers")
        }
        Code::PermissionDenied => format!("permission denied ({detail}): check auth and headers"),
        _ if status.message().ends_with("without a gRPC status") => format!(
            "wrong protocol: the server answered in HTTP/2 but not gRPC ({detail}); is this an OTLP/HTTP port? use otlp_http for it"
        ),
        Code::Unimplemented => format!(
            "the server does not implement the OTLP {signal} service ({detail}): wrong port?"
        ),
        _ => format!("export refused ({detail})"),
    }
}

/// The gRPC message frame: a compressed flag, the length, and the (compressed) encoding.
fn frame(mut batch: Batch, compression: Compression, level: u32) -> Result<Bytes, Status> {
    let mut frame = Vec::with_capacity(5 + batch.encoded_len() / 4);
    frame.extend_from_slice(&[0; 5]);
    let mut frame = match compression {
        Compression::None => {
            batch.write_encoded(&mut frame);
            frame
        }
        Compression::Gzip => otlp_common::gzip_into(frame, batch.encoded_segments(), level)
            .map_err(|e| Status::internal(format!("gzip: {e}")))?,
    };
    let length = u32::try_from(frame.len() - 5)
        .map_err(|_| Status::invalid_argument("the batch is larger than a gRPC message (4 GiB)"))?;
    frame[0] = u8::from(compression == Compression::Gzip);
    frame[1..5].copy_from_slice(&length.to_be_bytes());
    Ok(Bytes::from(frame))
}

/// The path of the OTLP Export method of `signal`.
fn export_path(signal: Signal) -> &'static str {
    match signal {
        Signal::Traces => "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
        Signal::Metrics => "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export",
        Signal::Logs => "/opentelemetry.proto.collector.logs.v1.LogsService/Export",
    }
}

/// The `grpc-timeout` header for `timeout`: at most 8 digits, in the coarsest unit that fits.
fn grpc_timeout(timeout: Duration) -> String {
    let millis = timeout.as_millis();
    if millis < 100_000_000 {
        format!("{millis}m")
    } else {
        format!("{}S", timeout.as_secs().min(99_999_999))
    }
}

/// Reads a gRPC answer: the status from the headers (a trailers-only answer) or the trailers,
/// and the response message.
async fn read_response<R: ExportResponse>(
    response: http::Response<tonic::body::Body>,
) -> Result<R, Status> {
    let (parts, body) = response.into_parts();
    if parts.status != http::StatusCode::OK {
        return Err(status_of_http(parts.status));
    }
    if let Some(status) = Status::from_header_map(&parts.headers)
        && status.code() != Code::Ok
    {
        return Err(status);
    }
    let collected = body.collect().await?;
    let status = collected
        .trailers()
        .and_then(Status::from_header_map)
        .or_else(|| Status::from_header_map(&parts.headers))
        .ok_or_else(|| Status::internal("the answer carries no grpc-status"))?;
    if status.code() != Code::Ok {
        return Err(status);
    }
    let data = collected.to_bytes();
    if data.is_empty() {
        return Ok(R::default());
    }
    let (Some(&compressed), Some(length)) = (data.first(), data.get(1..5)) else {
        return Err(Status::internal("truncated gRPC response frame"));
    };
    let length = u32::from_be_bytes([length[0], length[1], length[2], length[3]]) as usize;
    let message = data
        .get(5..5 + length)
        .ok_or_else(|| Status::internal("truncated gRPC response message"))?;
    let decoded = if compressed == 1 {
        let mut plain = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(message), &mut plain)
            .map_err(|e| Status::internal(format!("gunzip of the answer: {e}")))?;
        R::decode(plain.as_slice())
    } else {
        R::decode(message)
    };
    decoded.map_err(|e| Status::internal(format!("malformed export response: {e}")))
}

/// The gRPC code for an HTTP status that came without one, as the gRPC HTTP/2 protocol maps
/// them (a proxy or a server that does not speak gRPC answered).
fn status_of_http(status: http::StatusCode) -> Status {
    let code = match status.as_u16() {
        400 => Code::Internal,
        401 => Code::Unauthenticated,
        403 => Code::PermissionDenied,
        404 => Code::Unimplemented,
        429 | 502 | 503 | 504 => Code::Unavailable,
        _ => Code::Unknown,
    };
    Status::new(code, format!("HTTP {status} without a gRPC status"))
}

#[cfg(test)]
mod tests;
