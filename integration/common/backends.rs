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

/// How a backend refuses requests while a fault is set.
#[derive(Clone, Debug)]
pub struct Fault {
    /// The HTTP status the OTLP/HTTP backend answers.
    pub http_status: u16,
    /// The gRPC code the OTLP/gRPC backend answers.
    pub grpc_code: tonic::Code,
    /// A `Retry-After` header value for the HTTP answer.
    pub retry_after: Option<&'static str>,
    /// Refuse only this many requests, then accept again; `None` refuses until cleared.
    pub times: Option<usize>,
}

impl Fault {
    /// Refuses with HTTP 503 / gRPC UNAVAILABLE until cleared: a backend that is down.
    pub fn unavailable() -> Fault {
        Fault {
            http_status: 503,
            grpc_code: tonic::Code::Unavailable,
            retry_after: None,
            times: None,
        }
    }

    /// Refuses with HTTP 400 / gRPC INVALID_ARGUMENT: data the backend will never take.
    pub fn bad_request() -> Fault {
        Fault {
            http_status: 400,
            grpc_code: tonic::Code::InvalidArgument,
            retry_after: None,
            times: None,
        }
    }
}

/// The faults a backend is told to inject, and when each request arrived.
#[derive(Clone, Default)]
pub struct Faults {
    fault: Arc<Mutex<Option<Fault>>>,
    arrivals: Arc<Mutex<Vec<(std::time::Instant, bool)>>>,
}

impl Faults {
    /// Starts refusing requests as `fault` says.
    pub fn set(&self, fault: Fault) {
        *self.fault.lock().unwrap() = Some(fault);
    }

    /// Accepts requests again.
    pub fn clear(&self) {
        *self.fault.lock().unwrap() = None;
    }

    /// When each request arrived, and whether it was refused.
    pub fn arrivals(&self) -> Vec<(std::time::Instant, bool)> {
        self.arrivals.lock().unwrap().clone()
    }

    /// How many requests were refused.
    pub fn refused(&self) -> usize {
        self.arrivals()
            .iter()
            .filter(|(_, refused)| *refused)
            .count()
    }

    /// The fault to answer this request with, if any; records the arrival.
    fn take(&self) -> Option<Fault> {
        let mut current = self.fault.lock().unwrap();
        let fault = current.clone();
        if let Some(Fault {
            times: Some(left), ..
        }) = current.as_mut()
        {
            *left -= 1;
            if *left == 0 {
                *current = None;
            }
        }
        self.arrivals
            .lock()
            .unwrap()
            .push((std::time::Instant::now(), fault.is_some()));
        fault
    }

    fn grpc_refusal(&self) -> Result<(), tonic::Status> {
        match self.take() {
            Some(fault) => Err(tonic::Status::new(fault.grpc_code, "injected fault")),
            None => Ok(()),
        }
    }
}

/// A running test backend; stops when dropped.
pub struct Backend {
    pub address: SocketAddr,
    pub recorder: Recorder,
    /// Faults to inject: set one to make the backend refuse requests.
    pub faults: Faults,
    _stop: oneshot::Sender<()>,
}

impl Backend {
    /// A tonic OTLP/gRPC server taking traces, metrics and logs, plain or gzip.
    pub async fn grpc() -> Backend {
        use tonic::codec::CompressionEncoding::Gzip;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let recorder = Recorder::default();
        let faults = Faults::default();
        let service = GrpcService(recorder.clone(), faults.clone());
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
            faults,
            _stop: stop,
        }
    }

    /// An OTLP/HTTP server on /v1/{traces,metrics,logs} taking protobuf or JSON, plain or gzip.
    pub async fn http() -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let recorder = Recorder::default();
        let faults = Faults::default();
        let (stop, mut stopped) = oneshot::channel::<()>();
        let shared = recorder.clone();
        let shared_faults = faults.clone();
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    accepted = listener.accept() => accepted,
                    _ = &mut stopped => return,
                };
                let Ok((stream, _)) = accepted else { continue };
                let recorder = shared.clone();
                let faults = shared_faults.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        handle_http(recorder.clone(), faults.clone(), request)
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
            faults,
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
            faults: Faults::default(),
            _stop: stop,
        }
    }

    /// The base URL, e.g. `http://127.0.0.1:4318`.
    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }
}

#[derive(Clone)]
struct GrpcService(Recorder, Faults);

#[tonic::async_trait]
impl TraceService for GrpcService {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.1.grpc_refusal()?;
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
        self.1.grpc_refusal()?;
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
        self.1.grpc_refusal()?;
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
    faults: Faults,
    request: Request<hyper::body::Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = request.into_parts();
    let Ok(collected) = body.collect().await else {
        return Ok(respond(400, "unreadable body"));
    };
    if let Some(fault) = faults.take() {
        let mut response = respond(fault.http_status, "injected fault");
        if let Some(retry_after) = fault.retry_after {
            response
                .headers_mut()
                .insert("retry-after", retry_after.parse().unwrap());
        }
        return Ok(response);
    }
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
