//! Test OTLP backends: a tonic gRPC server and a hyper HTTP server (protobuf and JSON) that
//! record every request they receive, and a backend that accepts connections and never answers.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::{
    LogsService, LogsServiceServer,
};
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prost::Message;
use tokio::net::TcpListener;
use tokio::sync::{Notify, oneshot};

use super::PATIENCE;

/// Everything a backend received.
#[derive(Default, Clone)]
pub struct Received {
    pub traces: Vec<ExportTraceServiceRequest>,
    pub metrics: Vec<ExportMetricsServiceRequest>,
    pub logs: Vec<ExportLogsServiceRequest>,
    /// Request headers (gRPC metadata or HTTP headers), one map per request.
    pub headers: Vec<http::HeaderMap>,
    /// The bodies as they arrived on the wire (HTTP only), for searching raw bytes.
    pub raw_bodies: Vec<Bytes>,
}

impl Received {
    pub fn span_count(&self) -> usize {
        self.traces
            .iter()
            .flat_map(|r| &r.resource_spans)
            .flat_map(|r| &r.scope_spans)
            .map(|s| s.spans.len())
            .sum()
    }

    pub fn data_point_count(&self) -> usize {
        use opentelemetry_proto::tonic::metrics::v1::metric::Data;
        self.metrics
            .iter()
            .flat_map(|r| &r.resource_metrics)
            .flat_map(|r| &r.scope_metrics)
            .flat_map(|s| &s.metrics)
            .map(|m| match &m.data {
                Some(Data::Gauge(g)) => g.data_points.len(),
                Some(Data::Sum(s)) => s.data_points.len(),
                Some(Data::Histogram(h)) => h.data_points.len(),
                Some(Data::ExponentialHistogram(h)) => h.data_points.len(),
                Some(Data::Summary(s)) => s.data_points.len(),
                None => 0,
            })
            .sum()
    }

    pub fn log_record_count(&self) -> usize {
        self.logs
            .iter()
            .flat_map(|r| &r.resource_logs)
            .flat_map(|r| &r.scope_logs)
            .map(|s| s.log_records.len())
            .sum()
    }
}

/// The shared record of a backend and a way to wait for it to change.
#[derive(Default, Clone)]
pub struct Recorder {
    received: Arc<Mutex<Received>>,
    changed: Arc<Notify>,
}

impl Recorder {
    fn record(&self, change: impl FnOnce(&mut Received)) {
        change(&mut self.received.lock().unwrap());
        self.changed.notify_waiters();
    }

    /// A copy of everything received so far.
    pub fn snapshot(&self) -> Received {
        self.received.lock().unwrap().clone()
    }

    /// Waits until `done` holds for what was received, failing the test after [`PATIENCE`].
    pub async fn wait_until(&self, what: &str, done: impl Fn(&Received) -> bool) -> Received {
        let wait = async {
            loop {
                let changed = self.changed.notified();
                {
                    let received = self.received.lock().unwrap();
                    if done(&received) {
                        return received.clone();
                    }
                }
                changed.await;
            }
        };
        match tokio::time::timeout(PATIENCE, wait).await {
            Ok(received) => received,
            Err(_) => panic!("backend timed out waiting for {what}"),
        }
    }
}

/// A running test backend; stops when dropped.
pub struct Backend {
    pub address: SocketAddr,
    pub recorder: Recorder,
    _stop: oneshot::Sender<()>,
}

impl Backend {
    /// A tonic OTLP/gRPC server taking traces, metrics and logs, plain or gzip.
    pub async fn grpc() -> Backend {
        use tonic::codec::CompressionEncoding::Gzip;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let recorder = Recorder::default();
        let service = GrpcService(recorder.clone());
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(
                    TraceServiceServer::new(service.clone())
                        .accept_compressed(Gzip)
                        .max_decoding_message_size(256 << 20),
                )
                .add_service(
                    MetricsServiceServer::new(service.clone())
                        .accept_compressed(Gzip)
                        .max_decoding_message_size(256 << 20),
                )
                .add_service(
                    LogsServiceServer::new(service)
                        .accept_compressed(Gzip)
                        .max_decoding_message_size(256 << 20),
                )
                .serve_with_incoming_shutdown(
                    tonic::transport::server::TcpIncoming::from(listener),
                    async {
                        let _ = stopped.await;
                    },
                ),
        );
        Backend {
            address,
            recorder,
            _stop: stop,
        }
    }

    /// An OTLP/HTTP server on /v1/{traces,metrics,logs} taking protobuf or JSON, plain or gzip.
    pub async fn http() -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let recorder = Recorder::default();
        let (stop, mut stopped) = oneshot::channel::<()>();
        let shared = recorder.clone();
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    accepted = listener.accept() => accepted,
                    _ = &mut stopped => return,
                };
                let Ok((stream, _)) = accepted else { continue };
                let recorder = shared.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        handle_http(recorder.clone(), request)
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
                });
            }
        });
        Backend {
            address,
            recorder,
            _stop: stop,
        }
    }

    /// A server that accepts connections and never reads or answers: a hung backend.
    pub async fn unresponsive() -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (stop, mut stopped) = oneshot::channel::<()>();
        tokio::spawn(async move {
            let mut held = Vec::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => if let Ok((stream, _)) = accepted { held.push(stream) },
                    _ = &mut stopped => return,
                }
            }
        });
        Backend {
            address,
            recorder: Recorder::default(),
            _stop: stop,
        }
    }

    /// The base URL, e.g. `http://127.0.0.1:4318`.
    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }
}

#[derive(Clone)]
struct GrpcService(Recorder);

#[tonic::async_trait]
impl TraceService for GrpcService {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let headers = request.metadata().clone().into_headers();
        self.0.record(|r| {
            r.headers.push(headers);
            r.traces.push(request.into_inner());
        });
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl MetricsService for GrpcService {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        let headers = request.metadata().clone().into_headers();
        self.0.record(|r| {
            r.headers.push(headers);
            r.metrics.push(request.into_inner());
        });
        Ok(tonic::Response::new(ExportMetricsServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl LogsService for GrpcService {
    async fn export(
        &self,
        request: tonic::Request<ExportLogsServiceRequest>,
    ) -> Result<tonic::Response<ExportLogsServiceResponse>, tonic::Status> {
        let headers = request.metadata().clone().into_headers();
        self.0.record(|r| {
            r.headers.push(headers);
            r.logs.push(request.into_inner());
        });
        Ok(tonic::Response::new(ExportLogsServiceResponse::default()))
    }
}

/// Adds one decoded request to what a backend received.
type Store = Box<dyn FnOnce(&mut Received) + Send>;

fn respond(status: u16, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
    response
}

async fn handle_http(
    recorder: Recorder,
    request: Request<hyper::body::Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = request.into_parts();
    let Ok(collected) = body.collect().await else {
        return Ok(respond(400, "unreadable body"));
    };
    let raw = collected.to_bytes();
    let body = if parts
        .headers
        .get("content-encoding")
        .is_some_and(|v| v == "gzip")
    {
        let mut plain = Vec::new();
        if std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&raw[..]), &mut plain)
            .is_err()
        {
            return Ok(respond(400, "bad gzip"));
        }
        Bytes::from(plain)
    } else {
        raw.clone()
    };
    let json = parts
        .headers
        .get("content-type")
        .is_some_and(|v| v.to_str().unwrap_or("").starts_with("application/json"));
    let path = parts.uri.path().to_string();
    let decoded: Result<Store, String> = match path.as_str() {
        "/v1/traces" => decode::<ExportTraceServiceRequest>(&body, json)
            .map(|r| Box::new(move |rec: &mut Received| rec.traces.push(r)) as _),
        "/v1/metrics" => decode::<ExportMetricsServiceRequest>(&body, json)
            .map(|r| Box::new(move |rec: &mut Received| rec.metrics.push(r)) as _),
        "/v1/logs" => decode::<ExportLogsServiceRequest>(&body, json)
            .map(|r| Box::new(move |rec: &mut Received| rec.logs.push(r)) as _),
        _ => return Ok(respond(404, "unknown path")),
    };
    match decoded {
        Ok(store) => {
            recorder.record(|r| {
                r.headers.push(parts.headers.clone());
                r.raw_bodies.push(raw);
                store(r);
            });
            let mut response = respond(200, if json { "{}" } else { "" });
            response.headers_mut().insert(
                "content-type",
                if json {
                    "application/json"
                } else {
                    "application/x-protobuf"
                }
                .parse()
                .unwrap(),
            );
            Ok(response)
        }
        Err(e) => {
            eprintln!("test backend could not decode {path}: {e}");
            Ok(respond(400, "undecodable"))
        }
    }
}

fn decode<T: Message + Default + serde::de::DeserializeOwned>(
    body: &[u8],
    json: bool,
) -> Result<T, String> {
    if json {
        serde_json::from_slice(body).map_err(|e| e.to_string())
    } else {
        T::decode(body).map_err(|e| e.to_string())
    }
}
