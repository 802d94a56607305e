//! The backend sluice exports to: an OTLP/gRPC TraceService that counts spans.
//!
//! It runs in the benchmark's own process and shares the machine with sluice, so it is kept
//! cheap: a request is decoded with prost down to its spans, each span kept as the bytes it
//! arrived in and counted; only the first span of each request is fully decoded, as a check
//! that what arrives are spans. Its CPU is not part of the measured figure.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::body::Body;
use tonic::codec::{Codec, CompressionEncoding, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::{Body as HttpBody, BoxFuture, Service, StdError};
use tonic::server::{NamedService, UnaryService};
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};

/// Export batches larger than this are refused; far above anything the batch processor sends.
const MAX_MESSAGE_BYTES: usize = 256 * 1024 * 1024;

const SERVICE_NAME: &str = "opentelemetry.proto.collector.trace.v1.TraceService";
const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// What the sink has received so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SinkCounts {
    pub spans: u64,
    pub requests: u64,
    /// Requests that arrived gzip-compressed (`grpc-encoding: gzip`).
    pub gzip_requests: u64,
    /// Requests whose first span did not decode as a `Span` (answered INVALID_ARGUMENT).
    pub invalid_requests: u64,
}

/// A running sink; dropping it stops the server.
pub struct Sink {
    pub addr: SocketAddr,
    counts: watch::Receiver<SinkCounts>,
    server: JoinHandle<()>,
}

impl Sink {
    /// Starts the sink on 127.0.0.1 on a port the system picks.
    pub async fn start() -> std::io::Result<Sink> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let (sender, counts) = watch::channel(SinkCounts::default());
        let service = SinkService {
            counts: Arc::new(sender),
        };
        let server = tokio::spawn(async move {
            let result = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(TcpIncoming::from(listener))
                .await;
            if let Err(error) = result {
                eprintln!("sink: server stopped: {error}");
            }
        });
        Ok(Sink {
            addr,
            counts,
            server,
        })
    }

    /// The counts now.
    pub fn counts(&self) -> SinkCounts {
        *self.counts.borrow()
    }

    /// A receiver that wakes on every request the sink takes.
    pub fn watch(&self) -> watch::Receiver<SinkCounts> {
        self.counts.clone()
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// `ExportTraceServiceRequest` decoded down to the spans, which stay encoded.
#[derive(Clone, PartialEq, Message)]
pub struct ShallowRequest {
    #[prost(message, repeated, tag = "1")]
    pub resource_spans: Vec<ShallowResourceSpans>,
}

#[derive(Clone, PartialEq, Message)]
pub struct ShallowResourceSpans {
    #[prost(message, repeated, tag = "2")]
    pub scope_spans: Vec<ShallowScopeSpans>,
}

#[derive(Clone, PartialEq, Message)]
pub struct ShallowScopeSpans {
    #[prost(bytes = "bytes", repeated, tag = "2")]
    pub spans: Vec<Bytes>,
}

impl ShallowRequest {
    fn spans(&self) -> impl Iterator<Item = &Bytes> {
        self.resource_spans
            .iter()
            .flat_map(|rs| &rs.scope_spans)
            .flat_map(|ss| &ss.spans)
    }
}

/// The TraceService: the HTTP/2 service tonic's server routes requests to.
#[derive(Clone)]
struct SinkService {
    counts: Arc<watch::Sender<SinkCounts>>,
}

impl NamedService for SinkService {
    const NAME: &'static str = SERVICE_NAME;
}

impl<B> Service<http::Request<B>> for SinkService
where
    B: HttpBody + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let export = Export {
            counts: Arc::clone(&self.counts),
        };
        Box::pin(async move {
            if request.uri().path() != EXPORT_PATH {
                return Ok(Status::unimplemented("only TraceService/Export is served").into_http());
            }
            let mut grpc = tonic::server::Grpc::new(SinkCodec)
                .accept_compressed(CompressionEncoding::Gzip)
                .max_decoding_message_size(MAX_MESSAGE_BYTES);
            Ok(grpc.unary(export, request).await)
        })
    }
}

struct Export {
    counts: Arc<watch::Sender<SinkCounts>>,
}

impl UnaryService<ShallowRequest> for Export {
    type Response = ExportTraceServiceResponse;
    type Future = BoxFuture<Response<ExportTraceServiceResponse>, Status>;

    fn call(&mut self, request: Request<ShallowRequest>) -> Self::Future {
        let gzip = request
            .metadata()
            .get("grpc-encoding")
            .is_some_and(|value| value.as_bytes() == b"gzip");
        let valid = request
            .get_ref()
            .spans()
            .next()
            .is_none_or(|first| Span::decode(first.clone()).is_ok());
        let spans = request.get_ref().spans().count() as u64;
        self.counts.send_modify(|counts| {
            counts.requests += 1;
            counts.gzip_requests += u64::from(gzip);
            if valid {
                counts.spans += spans;
            } else {
                counts.invalid_requests += 1;
            }
        });
        Box::pin(async move {
            if valid {
                Ok(Response::new(ExportTraceServiceResponse::default()))
            } else {
                Err(Status::invalid_argument(
                    "the first span does not decode as a Span",
                ))
            }
        })
    }
}

/// Decodes requests as `ShallowRequest`, encodes responses with prost.
#[derive(Clone, Copy, Debug, Default)]
struct SinkCodec;

impl Codec for SinkCodec {
    type Encode = ExportTraceServiceResponse;
    type Decode = ShallowRequest;
    type Encoder = SinkCodec;
    type Decoder = SinkCodec;

    fn encoder(&mut self) -> Self::Encoder {
        SinkCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        SinkCodec
    }
}

impl Encoder for SinkCodec {
    type Item = ExportTraceServiceResponse;
    type Error = Status;

    fn encode(&mut self, item: Self::Item, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        item.encode(dst)
            .map_err(|error| Status::internal(format!("cannot encode the response: {error}")))
    }
}

impl Decoder for SinkCodec {
    type Item = ShallowRequest;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<ShallowRequest>, Status> {
        // copy_to_bytes on tonic's buffer splits it without copying; the spans borrow from it.
        let body = src.copy_to_bytes(src.remaining());
        ShallowRequest::decode(body)
            .map(Some)
            .map_err(|error| Status::invalid_argument(format!("undecodable request: {error}")))
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;

    use super::*;
    use crate::payload::build_request;

    #[tokio::test]
    async fn counts_spans_and_gzip_requests() {
        let sink = Sink::start().await.unwrap();
        let request = build_request(0, 20, &mut fastrand::Rng::with_seed(5));
        let mut plain = TraceServiceClient::connect(format!("http://{}", sink.addr))
            .await
            .unwrap();
        plain.export(request.clone()).await.unwrap();
        let mut gzip = plain.clone().send_compressed(CompressionEncoding::Gzip);
        gzip.export(request).await.unwrap();
        assert_eq!(
            sink.counts(),
            SinkCounts {
                spans: 40,
                requests: 2,
                gzip_requests: 1,
                invalid_requests: 0,
            }
        );
    }

    #[tokio::test]
    async fn a_request_whose_spans_are_not_spans_is_refused_and_not_counted() {
        let sink = Sink::start().await.unwrap();
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", sink.addr))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let garbage = ShallowRequest {
            resource_spans: vec![ShallowResourceSpans {
                scope_spans: vec![ShallowScopeSpans {
                    // Field 1 as a varint, but Span's field 1 (trace_id) is bytes.
                    spans: vec![Bytes::from_static(&[0x08, 0x01])],
                }],
            }],
        };
        let mut client = tonic::client::Grpc::new(channel);
        client.ready().await.unwrap();
        let answer = client
            .unary(
                Request::new(Bytes::from(garbage.encode_to_vec())),
                http::uri::PathAndQuery::from_static(EXPORT_PATH),
                crate::load::PreEncodedCodec,
            )
            .await;
        assert_eq!(answer.unwrap_err().code(), tonic::Code::InvalidArgument);
        assert_eq!(sink.counts().spans, 0);
        assert_eq!(sink.counts().invalid_requests, 1);
    }
}
