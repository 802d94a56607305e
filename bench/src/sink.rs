//! The backend sluice exports to: an OTLP/gRPC TraceService that decodes and counts spans.
//!
//! It runs in the benchmark's own process; its CPU is not part of the measured figure.

use std::net::SocketAddr;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::codec::CompressionEncoding;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};

/// Export batches larger than this are refused; far above anything the batch processor sends.
const MAX_MESSAGE_BYTES: usize = 256 * 1024 * 1024;

/// What the sink has received so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SinkCounts {
    pub spans: u64,
    pub requests: u64,
    /// Requests that arrived gzip-compressed (`grpc-encoding: gzip`).
    pub gzip_requests: u64,
}

/// A running sink; dropping it stops the server.
pub struct Sink {
    pub addr: SocketAddr,
    counts: watch::Receiver<SinkCounts>,
    server: JoinHandle<()>,
}

struct CountingService {
    counts: watch::Sender<SinkCounts>,
}

#[tonic::async_trait]
impl TraceService for CountingService {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let gzip = request
            .metadata()
            .get("grpc-encoding")
            .is_some_and(|value| value.as_bytes() == b"gzip");
        let spans: usize = request
            .get_ref()
            .resource_spans
            .iter()
            .flat_map(|rs| &rs.scope_spans)
            .map(|ss| ss.spans.len())
            .sum();
        self.counts.send_modify(|counts| {
            counts.spans += spans as u64;
            counts.requests += 1;
            counts.gzip_requests += u64::from(gzip);
        });
        Ok(Response::new(ExportTraceServiceResponse::default()))
    }
}

impl Sink {
    /// Starts the sink on 127.0.0.1 on a port the system picks.
    pub async fn start() -> std::io::Result<Sink> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let (sender, counts) = watch::channel(SinkCounts::default());
        let service = TraceServiceServer::new(CountingService { counts: sender })
            .accept_compressed(CompressionEncoding::Gzip)
            .max_decoding_message_size(MAX_MESSAGE_BYTES);
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
                gzip_requests: 1
            }
        );
    }
}
