//! The `otlp_grpc` exporter: sends batches to an OTLP/gRPC backend.
//!
//! The request is written straight from the batch's protobuf encoding into the gRPC frame by a
//! codec of our own ([`BatchCodec`]): a batch that nobody decoded on the way is never decoded
//! or re-encoded here either. Failures are classified as the OTLP/gRPC specification says.

use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use http::uri::PathAndQuery;
use opentelemetry_proto::tonic::collector::{
    logs::v1::ExportLogsServiceResponse, metrics::v1::ExportMetricsServiceResponse,
    trace::v1::ExportTraceServiceResponse,
};
use serde::Deserialize;
use sluice_pipeline::{
    Batch, ComponentSettings, ConfigError, ExportError, Exporter, ExporterContext, ExporterFactory,
    Signal, StartError,
};
use tonic::codec::{Codec, CompressionEncoding, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::metadata::{AsciiMetadataKey, AsciiMetadataValue};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};
use tonic_types::StatusExt;

use crate::otlp_common::{self, Compression, ExportResponse, default_compression, default_timeout};
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
    timeout: Duration,
    metadata: Vec<(AsciiMetadataKey, AsciiMetadataValue)>,
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
        if config.timeout.is_zero() {
            return Err(settings.error("timeout", "must be greater than zero"));
        }
        let mut metadata = Vec::with_capacity(config.headers.len());
        for (name, value) in otlp_common::parse_headers(settings, &config.headers)? {
            let path = settings.path().key("headers").key(name.as_str());
            let key = AsciiMetadataKey::from_bytes(name.as_str().as_bytes()).map_err(|_| {
                ConfigError::new(
                    path.clone(),
                    "not a valid gRPC metadata name (names ending in -bin are binary metadata)",
                )
            })?;
            let value = AsciiMetadataValue::try_from(value.as_bytes())
                .map_err(|_| ConfigError::new(path, "not a valid gRPC metadata value"))?;
            metadata.push((key, value));
        }
        let endpoint = Endpoint::from(uri)
            .connect_timeout(config.timeout)
            .tcp_nodelay(true)
            .user_agent(concat!("sluice/", env!("CARGO_PKG_VERSION")))
            .map_err(|e| settings.error("endpoint", e.to_string()))?;
        Ok(OtlpGrpcExporter {
            id: settings.id.clone(),
            endpoint,
            compression: config.compression,
            timeout: config.timeout,
            metadata,
            channel: OnceLock::new(),
        })
    }

    fn channel(&self) -> Channel {
        self.channel
            .get_or_init(|| self.endpoint.connect_lazy())
            .clone()
    }

    /// Sends `batch` to the service of its signal and returns the backend's answer.
    async fn call<R: ExportResponse + Sync>(
        &self,
        batch: Batch,
        path: &'static str,
    ) -> Result<R, Status> {
        let mut grpc = tonic::client::Grpc::new(self.channel());
        if self.compression == Compression::Gzip {
            grpc = grpc.send_compressed(CompressionEncoding::Gzip);
        }
        grpc = grpc.accept_compressed(CompressionEncoding::Gzip);
        grpc.ready()
            .await
            .map_err(|e| Status::unavailable(format!("connecting: {}", error_chain(&e))))?;
        let mut request = tonic::Request::new(batch);
        request.set_timeout(self.timeout);
        let metadata = request.metadata_mut();
        for (key, value) in &self.metadata {
            metadata.insert(key.clone(), value.clone());
        }
        let codec = BatchCodec::<R>(PhantomData);
        let response = grpc
            .unary(request, PathAndQuery::from_static(path), codec)
            .await?;
        Ok(response.into_inner())
    }

    async fn export_as<R: ExportResponse + Sync>(
        &self,
        batch: Batch,
        path: &'static str,
    ) -> Result<(), ExportError> {
        let signal = batch.signal();
        let started = Instant::now();
        let answer = tokio::time::timeout(self.timeout, self.call::<R>(batch, path)).await;
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
            // The channel enforces the grpc-timeout we send, and reports it as CANCELLED.
            Ok(Err(status))
                if matches!(status.code(), Code::Cancelled | Code::DeadlineExceeded)
                    && started.elapsed() >= self.timeout =>
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
            Signal::Traces => {
                self.export_as::<ExportTraceServiceResponse>(
                    batch,
                    "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
                )
                .await
            }
            Signal::Metrics => {
                self.export_as::<ExportMetricsServiceResponse>(
                    batch,
                    "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export",
                )
                .await
            }
            Signal::Logs => {
                self.export_as::<ExportLogsServiceResponse>(
                    batch,
                    "/opentelemetry.proto.collector.logs.v1.LogsService/Export",
                )
                .await
            }
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

/// A gRPC codec that sends a [`Batch`] as its protobuf encoding, copied segment by segment into
/// the frame, and decodes the answer as `R`.
struct BatchCodec<R>(PhantomData<R>);

impl<R: ExportResponse + Sync> Codec for BatchCodec<R> {
    type Encode = Batch;
    type Decode = R;
    type Encoder = BatchEncoder;
    type Decoder = ResponseDecoder<R>;

    fn encoder(&mut self) -> BatchEncoder {
        BatchEncoder
    }

    fn decoder(&mut self) -> ResponseDecoder<R> {
        ResponseDecoder(PhantomData)
    }
}

struct BatchEncoder;

impl Encoder for BatchEncoder {
    type Item = Batch;
    type Error = Status;

    fn encode(&mut self, batch: Batch, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.reserve(batch.encoded_len());
        batch.write_encoded(dst);
        Ok(())
    }
}

struct ResponseDecoder<R>(PhantomData<R>);

impl<R: ExportResponse> Decoder for ResponseDecoder<R> {
    type Item = R;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<R>, Status> {
        R::decode(src)
            .map(Some)
            .map_err(|e| Status::internal(format!("malformed export response: {e}")))
    }
}

#[cfg(test)]
mod tests;
