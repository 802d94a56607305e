use std::net::SocketAddr;

use bytes::Bytes;
use opentelemetry_proto::tonic::collector::{
    logs::v1::{
        ExportLogsServiceRequest,
        logs_service_server::{LogsService, LogsServiceServer},
    },
    metrics::v1::{
        ExportMetricsServiceRequest,
        metrics_service_server::{MetricsService, MetricsServiceServer},
    },
    trace::v1::{
        ExportTracePartialSuccess, ExportTraceServiceRequest,
        trace_service_server::{TraceService, TraceServiceServer},
    },
};
use prost::Message;
use sluice_pipeline::Request;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tonic::metadata::MetadataMap;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic_types::ErrorDetails;

use super::*;
use crate::test_data;
use tonic::codec::CompressionEncoding;

/// How the test backend answers every export.
#[derive(Clone, Copy)]
enum Answer {
    Accept,
    PartialSuccess(i64, &'static str),
    Fail(fn() -> Status),
    /// Never answers.
    Hang,
}

/// One export as the test backend saw it.
struct Received {
    request: Request,
    metadata: MetadataMap,
}

/// An OTLP/gRPC backend implementing the three generated collector services.
#[derive(Clone)]
struct Backend {
    received: mpsc::UnboundedSender<Received>,
    answer: Answer,
}

impl Backend {
    async fn start(answer: Answer) -> (SocketAddr, mpsc::UnboundedReceiver<Received>) {
        Backend::start_on(TcpListener::bind("127.0.0.1:0").await.unwrap(), answer)
    }

    fn start_on(
        listener: TcpListener,
        answer: Answer,
    ) -> (SocketAddr, mpsc::UnboundedReceiver<Received>) {
        let addr = listener.local_addr().unwrap();
        let (received, rx) = mpsc::unbounded_channel();
        let backend = Backend { received, answer };
        let router = Server::builder()
            .add_service(
                TraceServiceServer::new(backend.clone())
                    .accept_compressed(CompressionEncoding::Gzip),
            )
            .add_service(
                MetricsServiceServer::new(backend.clone())
                    .accept_compressed(CompressionEncoding::Gzip),
            )
            .add_service(
                LogsServiceServer::new(backend).accept_compressed(CompressionEncoding::Gzip),
            );
        tokio::spawn(router.serve_with_incoming(TcpIncoming::from(listener)));
        (addr, rx)
    }

    async fn answer<T>(
        &self,
        request: tonic::Request<T>,
        wrap: fn(T) -> Request,
    ) -> Result<Option<(i64, &'static str)>, Status> {
        let (metadata, _, message) = request.into_parts();
        let _ = self.received.send(Received {
            request: wrap(message),
            metadata,
        });
        match self.answer {
            Answer::Accept => Ok(None),
            Answer::PartialSuccess(rejected, message) => Ok(Some((rejected, message))),
            Answer::Fail(status) => Err(status()),
            Answer::Hang => std::future::pending().await,
        }
    }
}

#[async_trait]
impl TraceService for Backend {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, Status> {
        let partial = self.answer(request, Request::Traces).await?;
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: partial.map(|(rejected_spans, error_message)| {
                ExportTracePartialSuccess {
                    rejected_spans,
                    error_message: error_message.into(),
                }
            }),
        }))
    }
}

#[async_trait]
impl MetricsService for Backend {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, Status> {
        self.answer(request, Request::Metrics).await?;
        Ok(tonic::Response::new(ExportMetricsServiceResponse::default()))
    }
}

#[async_trait]
impl LogsService for Backend {
    async fn export(
        &self,
        request: tonic::Request<ExportLogsServiceRequest>,
    ) -> Result<tonic::Response<ExportLogsServiceResponse>, Status> {
        self.answer(request, Request::Logs).await?;
        Ok(tonic::Response::new(ExportLogsServiceResponse::default()))
    }
}

fn exporter(toml_text: &str) -> Box<dyn Exporter> {
    OtlpGrpcFactory
        .build(&test_data::settings("otlp_grpc", toml_text))
        .expect("valid config")
}

fn encoded(request: Request) -> Batch {
    let bytes = match &request {
        Request::Traces(r) => r.encode_to_vec(),
        Request::Metrics(r) => r.encode_to_vec(),
        Request::Logs(r) => r.encode_to_vec(),
    };
    Batch::from_encoded(request.signal(), Bytes::from(bytes)).unwrap()
}

fn traces_batch() -> Batch {
    encoded(Request::Traces(test_data::traces_request()))
}

#[tokio::test]
async fn each_signal_arrives_unchanged_at_its_service() {
    let (addr, mut received) = Backend::start(Answer::Accept).await;
    let exporter = exporter(&format!(
        "endpoint = \"http://{addr}\"\ncompression = \"none\""
    ));
    let requests = [
        Request::Traces(test_data::traces_request()),
        Request::Metrics(test_data::metrics_request()),
        Request::Logs(test_data::logs_request()),
    ];
    for request in requests {
        exporter.export(encoded(request.clone())).await.unwrap();
        let got = received.recv().await.unwrap();
        assert_eq!(got.metadata.get("grpc-encoding"), None);
        // Compared as encodings: the metrics carry NaN, which is not equal to itself.
        assert_eq!(format!("{:?}", got.request), format!("{request:?}"));
    }
}

#[tokio::test]
async fn decoded_batch_is_encoded_and_sent() {
    let (addr, mut received) = Backend::start(Answer::Accept).await;
    let exporter = exporter(&format!("endpoint = \"http://{addr}\""));
    let request = Request::Logs(test_data::logs_request());
    exporter
        .export(Batch::from_request(request.clone()))
        .await
        .unwrap();
    assert_eq!(received.recv().await.unwrap().request, request);
}

#[tokio::test]
async fn gzip_is_used_on_the_wire_by_default() {
    let (addr, mut received) = Backend::start(Answer::Accept).await;
    let exporter = exporter(&format!("endpoint = \"http://{addr}\""));
    exporter.export(traces_batch()).await.unwrap();
    let got = received.recv().await.unwrap();
    assert_eq!(got.metadata.get("grpc-encoding").unwrap(), "gzip");
    assert_eq!(got.request, Request::Traces(test_data::traces_request()));
}

#[tokio::test]
async fn configured_headers_arrive_as_metadata() {
    let (addr, mut received) = Backend::start(Answer::Accept).await;
    let exporter = exporter(&format!(
        "endpoint = \"http://{addr}\"\nheaders = {{ \"X-Scope-OrgID\" = \"tenant-1\", authorization = \"Bearer abc\" }}"
    ));
    exporter.export(traces_batch()).await.unwrap();
    let got = received.recv().await.unwrap();
    assert_eq!(got.metadata.get("x-scope-orgid").unwrap(), "tenant-1");
    assert_eq!(got.metadata.get("authorization").unwrap(), "Bearer abc");
}

#[tokio::test]
async fn unavailable_is_retryable() {
    let (addr, _received) =
        Backend::start(Answer::Fail(|| Status::unavailable("down for maintenance"))).await;
    let exporter = exporter(&format!("endpoint = \"http://{addr}\""));
    assert_eq!(
        exporter.export(traces_batch()).await.unwrap_err(),
        ExportError::Retryable {
            message: "gRPC Unavailable: down for maintenance".into(),
            throttle: None
        }
    );
}

#[tokio::test]
async fn invalid_argument_is_permanent_with_the_servers_message() {
    let (addr, _received) = Backend::start(Answer::Fail(|| {
        Status::invalid_argument("span name must not be empty")
    }))
    .await;
    let exporter = exporter(&format!("endpoint = \"http://{addr}\""));
    assert_eq!(
        exporter.export(traces_batch()).await.unwrap_err(),
        ExportError::Permanent("gRPC InvalidArgument: span name must not be empty".into())
    );
}

#[tokio::test]
async fn resource_exhausted_with_retry_info_is_retryable_with_throttle() {
    let (addr, _received) = Backend::start(Answer::Fail(|| {
        Status::with_error_details(
            Code::ResourceExhausted,
            "slow down",
            ErrorDetails::with_retry_info(Some(Duration::from_millis(2500))),
        )
    }))
    .await;
    let exporter = exporter(&format!("endpoint = \"http://{addr}\""));
    assert_eq!(
        exporter.export(traces_batch()).await.unwrap_err(),
        ExportError::Retryable {
            message: "gRPC ResourceExhausted: slow down".into(),
            throttle: Some(Duration::from_millis(2500)),
        }
    );
}

#[tokio::test]
async fn resource_exhausted_without_retry_info_is_permanent() {
    let (addr, _received) = Backend::start(Answer::Fail(|| {
        Status::resource_exhausted("quota exceeded")
    }))
    .await;
    let exporter = exporter(&format!("endpoint = \"http://{addr}\""));
    assert_eq!(
        exporter.export(traces_batch()).await.unwrap_err(),
        ExportError::Permanent("gRPC ResourceExhausted: quota exceeded".into())
    );
}

#[tokio::test]
async fn partial_success_is_ok() {
    let (addr, mut received) = Backend::start(Answer::PartialSuccess(1, "span too old")).await;
    let exporter = exporter(&format!("endpoint = \"http://{addr}\""));
    exporter.export(traces_batch()).await.unwrap();
    received.recv().await.unwrap();
}

#[tokio::test]
async fn server_that_never_answers_ends_retryably_at_the_deadline_it_was_sent() {
    let (addr, mut received) = Backend::start(Answer::Hang).await;
    let exporter = exporter(&format!(
        "endpoint = \"http://{addr}\"\ntimeout = \"300ms\""
    ));
    let error = exporter.export(traces_batch()).await.unwrap_err();
    let got = received
        .recv()
        .await
        .expect("the request reached the server");
    assert_eq!(
        parse_grpc_timeout(got.metadata.get("grpc-timeout").unwrap().to_str().unwrap()),
        Duration::from_millis(300)
    );
    // tonic's server enforces grpc-timeout with CANCELLED; either way it is retryable.
    assert!(matches!(error, ExportError::Retryable { .. }), "{error:?}");
}

#[tokio::test]
async fn unresponsive_server_is_a_retryable_timeout() {
    // Accepts TCP connections and never speaks HTTP/2.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let held = tokio::spawn(async move {
        let mut streams = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            streams.push(stream);
        }
    });
    let exporter = exporter(&format!(
        "endpoint = \"http://{addr}\"\ntimeout = \"300ms\""
    ));
    match exporter.export(traces_batch()).await {
        Err(ExportError::Retryable { message, throttle }) => {
            assert!(message.contains("timed out after 300ms"), "{message}");
            assert_eq!(throttle, None);
        }
        other => panic!("expected a retryable timeout, got {other:?}"),
    }
    held.abort();
}

#[tokio::test]
async fn connection_refused_is_retryable_and_the_backend_is_found_once_it_is_up() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let exporter = exporter(&format!("endpoint = \"http://{addr}\""));
    match exporter.export(traces_batch()).await {
        Err(ExportError::Retryable { message, .. }) => {
            assert!(message.to_lowercase().contains("connect"), "{message}")
        }
        other => panic!("expected a retryable error, got {other:?}"),
    }
    // The same exporter (and channel) reaches the backend once it listens.
    let listener = TcpListener::bind(addr).await.unwrap();
    let (_, mut received) = Backend::start_on(listener, Answer::Accept);
    exporter.export(traces_batch()).await.unwrap();
    received.recv().await.unwrap();
}

#[test]
fn tls_settings_with_an_http_endpoint_are_a_config_error_naming_tls() {
    let settings = test_data::settings(
        "otlp_grpc",
        "endpoint = \"http://tempo:4317\"\ntls = { insecure_skip_verify = true }",
    );
    let error = OtlpGrpcFactory.build(&settings).err().unwrap();
    assert_eq!(error.path.to_string(), "exporters.test.tls");
    assert!(error.message.contains("https://"), "{}", error.message);
}

#[test]
fn endpoint_with_a_path_is_refused() {
    let settings = test_data::settings("otlp_grpc", "endpoint = \"http://tempo:4317/v1\"");
    let error = OtlpGrpcFactory.build(&settings).err().unwrap();
    assert!(
        error.message.contains("http://tempo:4317"),
        "{}",
        error.message
    );
}

#[test]
fn binary_metadata_name_is_refused() {
    let settings = test_data::settings(
        "otlp_grpc",
        "endpoint = \"http://tempo:4317\"\nheaders = { \"x-token-bin\" = \"abc\" }",
    );
    let error = OtlpGrpcFactory.build(&settings).err().unwrap();
    assert_eq!(error.path.to_string(), "exporters.test.headers.x-token-bin");
}

#[test]
fn defaults_are_gzip_and_ten_seconds() {
    let settings = test_data::settings("otlp_grpc", "endpoint = \"http://a:4317\"");
    let config: Config = settings.parse().unwrap();
    let exporter = OtlpGrpcExporter::new(&settings, config, &OtlpEnv::default()).unwrap();
    assert_eq!(exporter.compression, Compression::Gzip);
    assert_eq!(exporter.timeout, Duration::from_secs(10));
    assert!(exporter.headers.get(http::header::AUTHORIZATION).is_none());
}

#[test]
fn unknown_key_is_a_config_error_naming_it() {
    let settings = test_data::settings(
        "otlp_grpc",
        "endpoint = \"http://a:4317\"\ncompresion = \"gzip\"",
    );
    let error = OtlpGrpcFactory.build(&settings).err().unwrap();
    assert_eq!(error.path.to_string(), "exporters.test.compresion");
}

#[test]
fn codes_are_classified_as_the_otlp_specification_says() {
    let retryable = [
        Code::Cancelled,
        Code::DeadlineExceeded,
        Code::Aborted,
        Code::OutOfRange,
        Code::Unavailable,
        Code::DataLoss,
    ];
    for code in retryable {
        assert!(
            matches!(
                classify(&Status::new(code, "x")),
                ExportError::Retryable { .. }
            ),
            "{code:?}"
        );
    }
    let permanent = [
        Code::Unknown,
        Code::InvalidArgument,
        Code::NotFound,
        Code::AlreadyExists,
        Code::PermissionDenied,
        Code::ResourceExhausted,
        Code::FailedPrecondition,
        Code::Unimplemented,
        Code::Internal,
        Code::Unauthenticated,
    ];
    for code in permanent {
        assert!(
            matches!(classify(&Status::new(code, "x")), ExportError::Permanent(_)),
            "{code:?}"
        );
    }
}

/// Reads a `grpc-timeout` header (digits and a unit) as the deadline it states.
fn parse_grpc_timeout(value: &str) -> Duration {
    let (digits, unit) = value.split_at(value.len() - 1);
    let amount: u64 = digits.parse().expect("grpc-timeout digits");
    match unit {
        "H" => Duration::from_secs(amount * 3600),
        "M" => Duration::from_secs(amount * 60),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        other => panic!("unknown grpc-timeout unit {other}"),
    }
}

#[test]
fn grpc_timeout_fits_eight_digits() {
    assert_eq!(grpc_timeout(Duration::from_millis(300)), "300m");
    assert_eq!(grpc_timeout(Duration::from_secs(10)), "10000m");
    assert_eq!(grpc_timeout(Duration::from_secs(200_000)), "200000S");
}
