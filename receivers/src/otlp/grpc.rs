//! OTLP/gRPC: the trace, metrics and logs `Export` methods, served by tonic.
//!
//! The generated OTLP servers decode each request with prost; this one uses a codec whose
//! decoder hands over the message bytes as they arrived (after gzip, if any), which become the
//! batch without being decoded.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use opentelemetry_proto::tonic::collector::{
    logs::v1::ExportLogsServiceResponse, metrics::v1::ExportMetricsServiceResponse,
    trace::v1::ExportTraceServiceResponse,
};
use prost::Message;
use sluice_pipeline::{Batch, Signal};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::codec::{Codec, CompressionEncoding, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::{Body, Service, StdError};
use tonic::server::{Grpc, UnaryService};
use tonic::service::Routes;
use tonic::transport::server::TcpIncoming;

use super::status::Failure;
use super::{Shared, Transport};

const TRACES_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";
const METRICS_PATH: &str = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export";
const LOGS_PATH: &str = "/opentelemetry.proto.collector.logs.v1.LogsService/Export";

/// Serves OTLP/gRPC on `listener` until `stop` is cancelled, then finishes the calls in flight.
pub(crate) fn spawn(
    listener: TcpListener,
    shared: Arc<Shared>,
    stop: CancellationToken,
) -> JoinHandle<()> {
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let routes = Routes::from(axum::Router::new().fallback_service(ExportServices { shared }));
    tokio::spawn(async move {
        let result = tonic::transport::Server::builder()
            .add_routes(routes)
            .serve_with_incoming_shutdown(incoming, stop.cancelled_owned())
            .await;
        if let Err(e) = result {
            tracing::error!("OTLP/gRPC server failed: {e}");
        }
    })
}

/// The three OTLP `Export` methods, routed by path.
#[derive(Clone)]
struct ExportServices {
    shared: Arc<Shared>,
}

type ResponseFuture =
    Pin<Box<dyn Future<Output = Result<http::Response<tonic::body::Body>, Infallible>> + Send>>;

impl<B> Service<http::Request<B>> for ExportServices
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> ResponseFuture {
        let signal = match request.uri().path() {
            TRACES_PATH => Signal::Traces,
            METRICS_PATH => Signal::Metrics,
            LOGS_PATH => Signal::Logs,
            path => {
                let status = tonic::Status::unimplemented(format!("unknown method {path}"));
                return Box::pin(std::future::ready(Ok(status_response(status))));
            }
        };
        let shared = self.shared.clone();
        Box::pin(async move {
            // Answer before reading the body: no pipeline would take it.
            if let Err(failure) = shared.check_consumer(signal) {
                return Ok(status_response(failure.to_grpc_status()));
            }
            let mut grpc = Grpc::new(RawRequestCodec)
                .accept_compressed(CompressionEncoding::Gzip)
                .send_compressed(CompressionEncoding::Gzip)
                .max_decoding_message_size(shared.max_request_body_size);
            Ok(grpc.unary(Export { shared, signal }, request).await)
        })
    }
}

fn status_response(status: tonic::Status) -> http::Response<tonic::body::Body> {
    let (parts, ()) = status.into_http::<()>().into_parts();
    http::Response::from_parts(parts, tonic::body::Body::empty())
}

/// One `Export` call: the request's bytes in, the (empty) export response out.
struct Export {
    shared: Arc<Shared>,
    signal: Signal,
}

impl UnaryService<Bytes> for Export {
    type Response = ExportResponse;
    type Future = Pin<
        Box<dyn Future<Output = Result<tonic::Response<ExportResponse>, tonic::Status>> + Send>,
    >;

    fn call(&mut self, request: tonic::Request<Bytes>) -> Self::Future {
        let shared = self.shared.clone();
        let signal = self.signal;
        Box::pin(async move {
            let batch = Batch::from_encoded(signal, request.into_inner()).map_err(|e| {
                let failure = Failure::Malformed(e.to_string());
                shared.log_bad_request(Transport::Grpc, &failure);
                failure.to_grpc_status()
            })?;
            shared
                .deliver(Transport::Grpc, batch)
                .await
                .map_err(|failure| failure.to_grpc_status())?;
            Ok(tonic::Response::new(ExportResponse { signal }))
        })
    }
}

/// The `Export*ServiceResponse` of a signal. Requests are taken or refused whole, so it never
/// reports a partial success and is always the empty message.
pub(crate) struct ExportResponse {
    signal: Signal,
}

/// Decodes a request message to its bytes; encodes export responses with prost.
struct RawRequestCodec;

impl Codec for RawRequestCodec {
    type Encode = ExportResponse;
    type Decode = Bytes;
    type Encoder = ResponseEncoder;
    type Decoder = RawDecoder;

    fn encoder(&mut self) -> ResponseEncoder {
        ResponseEncoder
    }

    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

struct ResponseEncoder;

impl Encoder for ResponseEncoder {
    type Item = ExportResponse;
    type Error = tonic::Status;

    fn encode(
        &mut self,
        item: ExportResponse,
        dst: &mut EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        let result = match item.signal {
            Signal::Traces => ExportTraceServiceResponse::default().encode(dst),
            Signal::Metrics => ExportMetricsServiceResponse::default().encode(dst),
            Signal::Logs => ExportLogsServiceResponse::default().encode(dst),
        };
        result.map_err(|e| tonic::Status::internal(format!("encoding the response: {e}")))
    }
}

struct RawDecoder;

impl Decoder for RawDecoder {
    type Item = Bytes;
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, tonic::Status> {
        // The buffer is a BytesMut, so this splits the message off without copying it.
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}
