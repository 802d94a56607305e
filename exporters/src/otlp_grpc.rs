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
    self, Compression, ExportResponse, default_compression, default_compression_level,
    default_timeout,
};
use sluice_pipeline::error::error_chain;

/// Configuration of an `otlp_grpc` exporter.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The backend, as `"http://host:port"`. Only `http://` for now.
    pub endpoint: String,
    /// Request compression: `"gzip"` or `"none"`.
    #[serde(default = "default_compression")]
    pub compression: Compression,
    /// gzip effort, 1 (fastest) to 9 (smallest).
    #[serde(default = "default_compression_level")]
    pub compression_level: u32,
    /// How long one export may take, connecting and waiting for the answer included.
    #[serde(
        default = "default_timeout",
        with = "sluice_pipeline::config::duration"
    )]
    pub timeout: Duration,
    /// Extra gRPC metadata sent with every request, e.g. an API key or a tenant id.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
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
        Ok(Box::new(OtlpGrpcExporter::new(settings, config)?))
    }
}

/// An exporter sending OTLP over gRPC on one HTTP/2 connection shared by every export.
pub struct OtlpGrpcExporter {
    id: String,
    endpoint: Endpoint,
    compression: Compression,
    compression_level: u32,
    timeout: Duration,
    /// The request URI of each signal's Export method, in [`Signal::ALL`] order.
    uris: [http::Uri; 3],
    /// The headers of every request: gRPC's own and the configured metadata.
    headers: http::HeaderMap,
    /// Created on first use: a channel spawns its worker on the tokio runtime, which `build`
    /// (run by `sluice validate` too) does not have. It connects lazily, and reconnects on its
    /// own after the backend went away.
    channel: OnceLock<Channel>,
}

impl OtlpGrpcExporter {
    /// Checks the configuration and prepares the exporter; connects nothing.
    pub fn new(settings: &ComponentSettings, config: Config) -> Result<Self, ConfigError> {
        let uri = otlp_common::parse_http_url(settings, "endpoint", &config.endpoint)?;
        if !matches!(uri.path(), "" | "/") {
            return Err(settings.error(
                "endpoint",
                format!(
                    "a gRPC endpoint has no path: write \"http://{}\"",
                    uri.authority().map(|a| a.as_str()).unwrap_or("host:4317")
                ),
            ));
        }
        otlp_common::check_compression_level(settings, config.compression_level)?;
        if config.timeout.is_zero() {
            return Err(settings.error("timeout", "must be greater than zero"));
        }
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
        if config.compression == Compression::Gzip {
            headers.insert("grpc-encoding", http::HeaderValue::from_static("gzip"));
        }
        let timeout = http::HeaderValue::try_from(grpc_timeout(config.timeout))
            .map_err(|e| settings.error("timeout", e.to_string()))?;
        headers.insert("grpc-timeout", timeout);
        for (name, value) in otlp_common::parse_headers(settings, &config.headers)? {
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
            let value = http::HeaderValue::from_bytes(value.as_encoded_bytes())
                .map_err(|e| ConfigError::new(path, e.to_string()))?;
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
            .connect_timeout(config.timeout)
            .tcp_nodelay(true)
            .user_agent(concat!("sluice/", env!("CARGO_PKG_VERSION")))
            .map_err(|e| settings.error("endpoint", e.to_string()))?;
        Ok(OtlpGrpcExporter {
            id: settings.id.clone(),
            endpoint,
            compression: config.compression,
            compression_level: config.compression_level,
            timeout: config.timeout,
            uris: [traces, metrics, logs],
            headers,
            channel: OnceLock::new(),
        })
    }

    fn channel(&self) -> Channel {
        self.channel
            .get_or_init(|| self.endpoint.connect_lazy())
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
            .map_err(|e| Status::unavailable(format!("sending: {}", error_chain(&e))))?;
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
                    otlp_common::warn_partial_success(&self.id, signal, &partial);
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
        Ok(())
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
