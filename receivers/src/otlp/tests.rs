//! The receiver on real sockets, driven by real OTLP/gRPC and HTTP clients.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use ::http::{HeaderMap, StatusCode};
use async_trait::async_trait;
use bytes::{Buf, Bytes};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse, logs_service_client::LogsServiceClient,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
    metrics_service_client::MetricsServiceClient,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse, trace_service_client::TraceServiceClient,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::metrics::v1::{
    Gauge, Histogram, HistogramDataPoint, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics,
    metric, number_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, span, status};
use prost::Message;
use sluice_pipeline::{Batch, ConsumeError, Consumer, Request, Running, Signal, Telemetry};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{Notify, Semaphore};
use tonic::codec::{Codec, CompressionEncoding, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::Channel;

use super::*;

// ---------------------------------------------------------------------------------------------
// A consumer that records what it takes, or refuses, or holds requests until released.

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Accept,
    Backpressure,
    Reject,
    /// Waits for a permit on `gate` before taking the batch.
    Hold,
}

struct TestConsumer {
    mode: Mutex<Mode>,
    batches: Mutex<Vec<Batch>>,
    gate: Semaphore,
    entered: Notify,
}

impl TestConsumer {
    fn new() -> Arc<TestConsumer> {
        Arc::new(TestConsumer {
            mode: Mutex::new(Mode::Accept),
            batches: Mutex::new(Vec::new()),
            gate: Semaphore::new(0),
            entered: Notify::new(),
        })
    }

    fn set_mode(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }

    fn take(&self) -> Vec<Batch> {
        std::mem::take(&mut *self.batches.lock().unwrap())
    }

    fn requests(&self) -> Vec<Request> {
        self.take()
            .into_iter()
            .map(|b| b.into_request().unwrap())
            .collect()
    }
}

#[async_trait]
impl Consumer for TestConsumer {
    async fn consume(&self, batch: Batch) -> Result<(), ConsumeError> {
        let mode = *self.mode.lock().unwrap();
        match mode {
            Mode::Accept => {}
            Mode::Backpressure => return Err(ConsumeError::Backpressure("queue full".into())),
            Mode::Reject => return Err(ConsumeError::Rejected("not wanted".into())),
            Mode::Hold => {
                self.entered.notify_one();
                self.gate.acquire().await.unwrap().forget();
            }
        }
        self.batches.lock().unwrap().push(batch);
        Ok(())
    }
}

struct Harness {
    running: RunningOtlp,
    consumer: Arc<TestConsumer>,
    telemetry: Telemetry,
}

impl Harness {
    async fn start() -> Harness {
        Harness::start_with(&Signal::ALL, default_max_request_body_size()).await
    }

    async fn start_with(signals: &[Signal], max_request_body_size: usize) -> Harness {
        let consumer = TestConsumer::new();
        let mut consumers = SignalConsumers::default();
        for &signal in signals {
            consumers.set(signal, consumer.clone());
        }
        let telemetry = Telemetry::new();
        let config = OtlpConfig {
            grpc: Some("127.0.0.1:0".parse().unwrap()),
            http: Some("127.0.0.1:0".parse().unwrap()),
            max_request_body_size,
        };
        let running = OtlpReceiver::new(config)
            .serve(ReceiverContext {
                id: "otlp".into(),
                consumers,
                telemetry: telemetry.clone(),
            })
            .await
            .unwrap();
        Harness {
            running,
            consumer,
            telemetry,
        }
    }

    fn grpc_url(&self) -> String {
        format!("http://{}", self.running.grpc_addr().unwrap())
    }

    fn http_addr(&self) -> SocketAddr {
        self.running.http_addr().unwrap()
    }

    fn accepted(&self, transport: &str, signal: Signal) -> u64 {
        self.telemetry
            .receiver("otlp", transport, signal)
            .accepted
            .get()
    }

    fn refused(&self, transport: &str, signal: Signal) -> u64 {
        self.telemetry
            .receiver("otlp", transport, signal)
            .refused
            .get()
    }
}

// ---------------------------------------------------------------------------------------------
// Sample data: every kind of id, name, attribute, resource and scope a client may send.

fn string_kv(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.into())),
        }),
        ..Default::default()
    }
}

fn int_kv(key: &str, value: i64) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::IntValue(value)),
        }),
        ..Default::default()
    }
}

fn resource() -> Option<Resource> {
    Some(Resource {
        attributes: vec![string_kv("service.name", "checkout"), int_kv("pid", 4242)],
        ..Default::default()
    })
}

fn scope() -> Option<InstrumentationScope> {
    Some(InstrumentationScope {
        name: "io.sluice.test".into(),
        version: "1.2.3".into(),
        attributes: vec![string_kv("scope.attr", "s")],
        dropped_attributes_count: 1,
    })
}

fn traces() -> ExportTraceServiceRequest {
    let span = |n: u8| Span {
        trace_id: vec![
            0x5b, 0x8e, 0xff, 0xf7, 0x98, 0x03, 0x81, 0x03, 0xd2, 0x69, 0xb6, 0x33, 0x81, 0x3f,
            0xc6, n,
        ],
        span_id: vec![0xee, 0xe1, 0x9b, 0x7e, 0xc3, 0xc1, 0xb1, n],
        parent_span_id: vec![0xee, 0xe1, 0x9b, 0x7e, 0xc3, 0xc1, 0xb1, 0x00],
        name: format!("GET /cart/{n}"),
        kind: span::SpanKind::Server as i32,
        start_time_unix_nano: 1_700_000_000_000_000_000 + n as u64,
        end_time_unix_nano: 1_700_000_001_000_000_000,
        attributes: vec![
            string_kv("http.method", "GET"),
            int_kv("http.status_code", 200),
        ],
        status: Some(opentelemetry_proto::tonic::trace::v1::Status {
            message: "ok".into(),
            code: status::StatusCode::Ok as i32,
        }),
        ..Default::default()
    };
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: resource(),
            scope_spans: vec![ScopeSpans {
                scope: scope(),
                spans: vec![span(1), span(2), span(3)],
                schema_url: "https://opentelemetry.io/schemas/1.21.0".into(),
            }],
            schema_url: String::new(),
        }],
    }
}

fn metrics() -> ExportMetricsServiceRequest {
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: resource(),
            scope_metrics: vec![ScopeMetrics {
                scope: scope(),
                metrics: vec![
                    Metric {
                        name: "queue.depth".into(),
                        unit: "{items}".into(),
                        data: Some(metric::Data::Gauge(Gauge {
                            data_points: vec![
                                NumberDataPoint {
                                    attributes: vec![string_kv("queue", "a")],
                                    time_unix_nano: 1_700_000_000_000_000_000,
                                    value: Some(number_data_point::Value::AsDouble(1.5)),
                                    ..Default::default()
                                },
                                NumberDataPoint {
                                    time_unix_nano: 1_700_000_000_000_000_001,
                                    value: Some(number_data_point::Value::AsInt(-7)),
                                    ..Default::default()
                                },
                            ],
                        })),
                        ..Default::default()
                    },
                    Metric {
                        name: "latency".into(),
                        data: Some(metric::Data::Histogram(Histogram {
                            aggregation_temporality: 2,
                            data_points: vec![HistogramDataPoint {
                                count: 3,
                                sum: Some(0.75),
                                bucket_counts: vec![1, 2, 0],
                                explicit_bounds: vec![0.1, 0.5],
                                min: Some(0.05),
                                max: Some(0.4),
                                ..Default::default()
                            }],
                        })),
                        ..Default::default()
                    },
                ],
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    }
}

fn logs() -> ExportLogsServiceRequest {
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: resource(),
            scope_logs: vec![ScopeLogs {
                scope: scope(),
                log_records: vec![LogRecord {
                    time_unix_nano: 1_700_000_000_000_000_000,
                    severity_number: 9,
                    severity_text: "INFO".into(),
                    body: Some(AnyValue {
                        value: Some(any_value::Value::StringValue("cart updated".into())),
                    }),
                    attributes: vec![int_kv("items", 3)],
                    trace_id: vec![7; 16],
                    span_id: vec![9; 8],
                    ..Default::default()
                }],
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    }
}

fn request_of(signal: Signal) -> Request {
    match signal {
        Signal::Traces => Request::Traces(traces()),
        Signal::Metrics => Request::Metrics(metrics()),
        Signal::Logs => Request::Logs(logs()),
    }
}

fn protobuf_of(signal: Signal) -> Vec<u8> {
    match signal {
        Signal::Traces => traces().encode_to_vec(),
        Signal::Metrics => metrics().encode_to_vec(),
        Signal::Logs => logs().encode_to_vec(),
    }
}

/// OTLP/JSON as opentelemetry-proto writes it (hex ids, int64 as strings, lowerCamelCase).
fn json_of(signal: Signal) -> Vec<u8> {
    match signal {
        Signal::Traces => serde_json::to_vec(&traces()),
        Signal::Metrics => serde_json::to_vec(&metrics()),
        Signal::Logs => serde_json::to_vec(&logs()),
    }
    .unwrap()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(data).unwrap();
    encoder.finish().unwrap()
}

// ---------------------------------------------------------------------------------------------
// Clients.

/// Sends `body` as the raw message of a gRPC call to `path`; the reply's message is returned raw.
async fn grpc_raw(url: &str, path: &'static str, body: Vec<u8>) -> Result<Bytes, tonic::Status> {
    let channel = Channel::from_shared(url.to_string())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    grpc.unary(
        tonic::Request::new(Bytes::from(body)),
        ::http::uri::PathAndQuery::from_static(path),
        BytesCodec,
    )
    .await
    .map(tonic::Response::into_inner)
}

struct BytesCodec;

impl Codec for BytesCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = BytesCodec;
    type Decoder = BytesCodec;

    fn encoder(&mut self) -> BytesCodec {
        BytesCodec
    }

    fn decoder(&mut self) -> BytesCodec {
        BytesCodec
    }
}

impl Encoder for BytesCodec {
    type Item = Bytes;
    type Error = tonic::Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        bytes::BufMut::put_slice(dst, &item);
        Ok(())
    }
}

impl Decoder for BytesCodec {
    type Item = Bytes;
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, tonic::Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

const TRACES_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

async fn grpc_export(harness: &Harness, signal: Signal, gzip: bool) -> Result<(), tonic::Status> {
    let url = harness.grpc_url();
    let enc = CompressionEncoding::Gzip;
    match signal {
        Signal::Traces => {
            let mut client = TraceServiceClient::connect(url).await.unwrap();
            if gzip {
                client = client.send_compressed(enc).accept_compressed(enc);
            }
            let response = client.export(traces()).await?.into_inner();
            assert_eq!(response, ExportTraceServiceResponse::default());
        }
        Signal::Metrics => {
            let mut client = MetricsServiceClient::connect(url).await.unwrap();
            if gzip {
                client = client.send_compressed(enc).accept_compressed(enc);
            }
            let response = client.export(metrics()).await?.into_inner();
            assert_eq!(response, ExportMetricsServiceResponse::default());
        }
        Signal::Logs => {
            let mut client = LogsServiceClient::connect(url).await.unwrap();
            if gzip {
                client = client.send_compressed(enc).accept_compressed(enc);
            }
            let response = client.export(logs()).await?.into_inner();
            assert_eq!(response, ExportLogsServiceResponse::default());
        }
    }
    Ok(())
}

struct HttpReply {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl HttpReply {
    fn content_type(&self) -> &str {
        self.headers
            .get(::http::header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap())
            .unwrap_or_default()
    }

    /// The google.rpc.Status body of an error reply, in whichever encoding it came.
    fn rpc_status(&self) -> (i32, String) {
        if self.content_type() == "application/json" {
            let value: serde_json::Value = serde_json::from_slice(&self.body).unwrap();
            (
                value["code"].as_i64().unwrap() as i32,
                value["message"].as_str().unwrap().to_string(),
            )
        } else {
            let status = tonic_types::Status::decode(self.body.clone()).unwrap();
            (status.code, status.message)
        }
    }
}

async fn http_request(
    addr: SocketAddr,
    method: ::http::Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> HttpReply {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut builder = ::http::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"));
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let response = client
        .request(builder.body(Full::new(Bytes::from(body))).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    HttpReply {
        status,
        headers,
        body,
    }
}

async fn post(addr: SocketAddr, path: &str, headers: &[(&str, &str)], body: Vec<u8>) -> HttpReply {
    http_request(addr, ::http::Method::POST, path, headers, body).await
}

fn path_of(signal: Signal) -> String {
    format!("/v1/{}", signal.as_str())
}

const PROTOBUF: (&str, &str) = ("content-type", "application/x-protobuf");
const JSON: (&str, &str) = ("content-type", "application/json");
const GZIP: (&str, &str) = ("content-encoding", "gzip");

// ---------------------------------------------------------------------------------------------
// Configuration.

fn settings(table: &str) -> ComponentSettings {
    ComponentSettings::new(
        sluice_pipeline::config::ComponentKind::Receiver,
        "otlp",
        "otlp",
        toml::from_str(table).unwrap(),
    )
}

#[test]
fn config_defaults_the_body_limit_to_20_mib() {
    let config = OtlpConfig::from_settings(&settings("grpc = \"127.0.0.1:4317\"")).unwrap();
    assert_eq!(
        config,
        OtlpConfig {
            grpc: Some("127.0.0.1:4317".parse().unwrap()),
            http: None,
            max_request_body_size: 20 * 1024 * 1024,
        }
    );
}

#[test]
fn readme_example_is_a_valid_config_with_the_documented_defaults() {
    let readme = include_str!("../../README.md");
    let example = readme
        .split("```toml")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("the README has a TOML example");
    let file: toml::Table = toml::from_str(example).unwrap();
    let table = file["receivers"]["otlp"].as_table().unwrap().clone();
    let mut example_settings = settings("");
    example_settings.table = table;
    let config = OtlpConfig::from_settings(&example_settings).unwrap();
    assert_eq!(config.grpc, Some("127.0.0.1:4317".parse().unwrap()));
    assert_eq!(config.http, Some("127.0.0.1:4318".parse().unwrap()));
    assert_eq!(
        config.max_request_body_size,
        default_max_request_body_size()
    );
}

#[test]
fn config_without_any_transport_is_an_error_naming_the_table() {
    let error = OtlpConfig::from_settings(&settings("max_request_body_size = 10")).unwrap_err();
    assert_eq!(error.path.to_string(), "receivers.otlp");
    assert!(error.message.contains("grpc"), "{}", error.message);
}

#[test]
fn config_unknown_key_is_an_error_naming_the_key() {
    let error = OtlpConfig::from_settings(&settings("grpc = \"127.0.0.1:4317\"\ngrcp = \"x\""))
        .unwrap_err();
    assert_eq!(error.path.to_string(), "receivers.otlp.grcp");
}

#[test]
fn config_invalid_address_is_an_error_naming_the_key() {
    let error = OtlpConfig::from_settings(&settings("http = \"localhost\"")).unwrap_err();
    assert_eq!(error.path.to_string(), "receivers.otlp.http");
    assert!(
        error.message.contains("127.0.0.1:4317"),
        "{}",
        error.message
    );
}

#[test]
fn config_zero_body_limit_is_an_error() {
    let error = OtlpConfig::from_settings(&settings(
        "http = \"127.0.0.1:4318\"\nmax_request_body_size = 0",
    ))
    .unwrap_err();
    assert_eq!(
        error.path.to_string(),
        "receivers.otlp.max_request_body_size"
    );
}

#[test]
fn factory_builds_for_every_signal_under_type_otlp() {
    let factory = OtlpReceiverFactory;
    assert_eq!(factory.type_name(), "otlp");
    assert_eq!(factory.signals(), &Signal::ALL);
    assert!(
        factory
            .build(&settings("http = \"127.0.0.1:4318\""))
            .is_ok()
    );
    assert!(factory.build(&settings("")).is_err());
}

#[tokio::test]
async fn start_fails_naming_the_address_when_it_is_taken() {
    let taken = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = taken.local_addr().unwrap();
    let receiver = OtlpReceiver::new(OtlpConfig {
        grpc: None,
        http: Some(addr),
        max_request_body_size: 1024,
    });
    let error = match receiver
        .serve(ReceiverContext {
            id: "otlp".into(),
            consumers: SignalConsumers::default(),
            telemetry: Telemetry::new(),
        })
        .await
    {
        Ok(_) => panic!("bound an address already in use"),
        Err(e) => e,
    };
    assert_eq!(error.component, "receivers.otlp");
    assert!(
        error.message.contains(&addr.to_string()),
        "{}",
        error.message
    );
}

// ---------------------------------------------------------------------------------------------
// OTLP/gRPC.

#[tokio::test]
async fn grpc_delivers_every_signal_unchanged() {
    let h = Harness::start().await;
    for signal in Signal::ALL {
        grpc_export(&h, signal, false).await.unwrap();
        assert_eq!(h.consumer.requests(), vec![request_of(signal)]);
    }
    assert_eq!(h.accepted("grpc", Signal::Traces), 3);
    assert_eq!(h.accepted("grpc", Signal::Metrics), 3);
    assert_eq!(h.accepted("grpc", Signal::Logs), 1);
    h.running.shutdown().await;
}

#[tokio::test]
async fn grpc_gzip_requests_are_delivered_unchanged() {
    let h = Harness::start().await;
    for signal in Signal::ALL {
        grpc_export(&h, signal, true).await.unwrap();
        assert_eq!(h.consumer.requests(), vec![request_of(signal)]);
    }
    h.running.shutdown().await;
}

#[tokio::test]
async fn grpc_batch_is_the_received_encoding() {
    let h = Harness::start().await;
    grpc_export(&h, Signal::Traces, false).await.unwrap();
    let batches = h.consumer.take();
    assert_eq!(batches[0].item_count(), 3);
    assert_eq!(
        batches[0].to_encoded_bytes(),
        Bytes::from(protobuf_of(Signal::Traces))
    );
    h.running.shutdown().await;
}

#[tokio::test]
async fn grpc_malformed_protobuf_is_invalid_argument() {
    let h = Harness::start().await;
    // Field 1, length-delimited, claiming 255 bytes that never come.
    let status = grpc_raw(&h.grpc_url(), TRACES_PATH, vec![0x0a, 0xff, 0x01, 0x02])
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(h.consumer.take().is_empty());
    h.running.shutdown().await;
}

#[tokio::test]
async fn grpc_well_formed_raw_request_gets_the_empty_response() {
    let h = Harness::start().await;
    let reply = grpc_raw(&h.grpc_url(), TRACES_PATH, protobuf_of(Signal::Traces))
        .await
        .unwrap();
    assert!(reply.is_empty());
    assert_eq!(h.consumer.requests(), vec![request_of(Signal::Traces)]);
    h.running.shutdown().await;
}

#[tokio::test]
async fn grpc_unknown_method_is_unimplemented() {
    let h = Harness::start().await;
    let status = grpc_raw(
        &h.grpc_url(),
        "/opentelemetry.proto.collector.profiles.v1development.ProfilesService/Export",
        Vec::new(),
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unimplemented);
    h.running.shutdown().await;
}

#[tokio::test]
async fn grpc_signal_without_pipeline_is_unimplemented_saying_so() {
    let h = Harness::start_with(&[Signal::Traces], 1 << 20).await;
    let status = grpc_export(&h, Signal::Logs, false).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unimplemented);
    assert!(
        status.message().contains("no pipeline takes logs"),
        "{}",
        status.message()
    );
    h.running.shutdown().await;
}

#[tokio::test]
async fn grpc_request_over_the_limit_is_refused() {
    let h = Harness::start_with(&Signal::ALL, 100).await;
    let status = grpc_export(&h, Signal::Traces, false).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::OutOfRange);
    assert!(h.consumer.take().is_empty());
    h.running.shutdown().await;
}

#[tokio::test]
async fn grpc_gzip_bomb_is_refused_at_the_decompressed_limit() {
    let limit = 64 * 1024;
    let h = Harness::start_with(&Signal::ALL, limit).await;
    // A request of one span with a huge name: small compressed, far over the limit inflated.
    let request = ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            scope_spans: vec![ScopeSpans {
                spans: vec![Span {
                    name: "a".repeat(4 * limit),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    let mut client = TraceServiceClient::connect(h.grpc_url())
        .await
        .unwrap()
        .send_compressed(CompressionEncoding::Gzip);
    let status = client.export(request).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    assert!(h.consumer.take().is_empty());
    h.running.shutdown().await;
}

#[tokio::test]
async fn grpc_backpressure_is_unavailable_with_retry_info_and_counted_refused() {
    let h = Harness::start().await;
    h.consumer.set_mode(Mode::Backpressure);
    let status = grpc_export(&h, Signal::Traces, false).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable);
    let details = tonic_types::StatusExt::get_error_details(&status);
    assert_eq!(
        details.retry_info().and_then(|r| r.retry_delay),
        Some(std::time::Duration::from_secs(1))
    );
    assert_eq!(h.refused("grpc", Signal::Traces), 3);
    assert_eq!(h.accepted("grpc", Signal::Traces), 0);
    h.running.shutdown().await;
}

#[tokio::test]
async fn grpc_rejected_data_is_invalid_argument() {
    let h = Harness::start().await;
    h.consumer.set_mode(Mode::Reject);
    let status = grpc_export(&h, Signal::Metrics, false).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert_eq!(h.refused("grpc", Signal::Metrics), 3);
    h.running.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// OTLP/HTTP.

#[tokio::test]
async fn http_protobuf_delivers_every_signal_unchanged_and_answers_in_protobuf() {
    let h = Harness::start().await;
    for signal in Signal::ALL {
        let reply = post(
            h.http_addr(),
            &path_of(signal),
            &[PROTOBUF],
            protobuf_of(signal),
        )
        .await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.content_type(), "application/x-protobuf");
        // The encoded Export*ServiceResponse with nothing to report is empty.
        assert!(reply.body.is_empty());
        assert_eq!(h.consumer.requests(), vec![request_of(signal)]);
    }
    assert_eq!(h.accepted("http", Signal::Traces), 3);
    assert_eq!(h.accepted("http", Signal::Metrics), 3);
    assert_eq!(h.accepted("http", Signal::Logs), 1);
    assert_eq!(h.accepted("grpc", Signal::Traces), 0);
    h.running.shutdown().await;
}

#[tokio::test]
async fn http_json_delivers_every_signal_unchanged_and_answers_in_json() {
    let h = Harness::start().await;
    for signal in Signal::ALL {
        let reply = post(h.http_addr(), &path_of(signal), &[JSON], json_of(signal)).await;
        assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
        assert_eq!(reply.content_type(), "application/json");
        let response: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
        assert_eq!(response, serde_json::json!({}));
        assert_eq!(h.consumer.requests(), vec![request_of(signal)]);
    }
    h.running.shutdown().await;
}

#[tokio::test]
async fn http_gzip_bodies_are_delivered_unchanged() {
    let h = Harness::start().await;
    for signal in Signal::ALL {
        let reply = post(
            h.http_addr(),
            &path_of(signal),
            &[PROTOBUF, GZIP],
            gzip(&protobuf_of(signal)),
        )
        .await;
        assert_eq!(reply.status, StatusCode::OK);
        let reply = post(
            h.http_addr(),
            &path_of(signal),
            &[("content-type", "application/json; charset=utf-8"), GZIP],
            gzip(&json_of(signal)),
        )
        .await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(
            h.consumer.requests(),
            vec![request_of(signal), request_of(signal)]
        );
    }
    h.running.shutdown().await;
}

#[tokio::test]
async fn http_json_nan_and_string_doubles_arrive_as_their_values() {
    let h = Harness::start().await;
    let body = serde_json::json!({"resourceMetrics": [{"scopeMetrics": [{"metrics": [
        {"name": "g", "gauge": {"dataPoints": [{"asDouble": "NaN"}, {"asDouble": "1.5"}]}},
        {"name": "h", "histogram": {"dataPoints": [{"count": "1", "bucketCounts": ["0", "1"],
                                                    "explicitBounds": ["Infinity"]}]}}
    ]}]}]});
    let reply = post(
        h.http_addr(),
        "/v1/metrics",
        &[JSON],
        body.to_string().into_bytes(),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    let batches = h.consumer.take();
    assert_eq!(batches[0].item_count(), 3);
    let Request::Metrics(request) = batches.into_iter().next().unwrap().into_request().unwrap()
    else {
        panic!("not metrics")
    };
    let metrics = &request.resource_metrics[0].scope_metrics[0].metrics;
    let Some(metric::Data::Gauge(gauge)) = &metrics[0].data else {
        panic!("gauge lost: {:?}", metrics[0])
    };
    assert!(matches!(
        gauge.data_points[0].value,
        Some(number_data_point::Value::AsDouble(v)) if v.is_nan()
    ));
    assert_eq!(
        gauge.data_points[1].value,
        Some(number_data_point::Value::AsDouble(1.5))
    );
    let Some(metric::Data::Histogram(histogram)) = &metrics[1].data else {
        panic!("histogram lost: {:?}", metrics[1])
    };
    assert_eq!(
        histogram.data_points[0].explicit_bounds,
        vec![f64::INFINITY]
    );
    h.running.shutdown().await;
}

#[tokio::test]
async fn http_json_null_value_is_400_not_silently_dropped() {
    let h = Harness::start().await;
    let body = serde_json::json!({"resourceMetrics": [{"scopeMetrics": [{"metrics": [
        {"name": "g", "gauge": {"dataPoints": [{"asDouble": null}]}}
    ]}]}]});
    let reply = post(
        h.http_addr(),
        "/v1/metrics",
        &[JSON],
        body.to_string().into_bytes(),
    )
    .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(reply.content_type(), "application/json");
    let (code, message) = reply.rpc_status();
    assert_eq!(code, tonic::Code::InvalidArgument as i32);
    assert!(message.contains("dataPoints[0].asDouble"), "{message}");
    assert!(h.consumer.take().is_empty());
    h.running.shutdown().await;
}

#[tokio::test]
async fn http_malformed_protobuf_is_400_with_a_protobuf_status() {
    let h = Harness::start().await;
    let reply = post(
        h.http_addr(),
        "/v1/traces",
        &[PROTOBUF],
        vec![0x0a, 0xff, 0x01],
    )
    .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(reply.content_type(), "application/x-protobuf");
    let (code, message) = reply.rpc_status();
    assert_eq!(code, tonic::Code::InvalidArgument as i32);
    assert!(!message.is_empty());
    assert!(h.consumer.take().is_empty());
    h.running.shutdown().await;
}

#[tokio::test]
async fn http_malformed_json_is_400_with_a_json_status() {
    let h = Harness::start().await;
    for signal in Signal::ALL {
        let reply = post(
            h.http_addr(),
            &path_of(signal),
            &[JSON],
            b"{\"resource".to_vec(),
        )
        .await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST);
        assert_eq!(reply.content_type(), "application/json");
        let (code, message) = reply.rpc_status();
        assert_eq!(code, tonic::Code::InvalidArgument as i32);
        assert!(message.contains("JSON"), "{message}");
    }
    let bad_hex = br#"{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"zz"}]}]}]}"#;
    let reply = post(h.http_addr(), "/v1/traces", &[JSON], bad_hex.to_vec()).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(h.consumer.take().is_empty());
    h.running.shutdown().await;
}

#[tokio::test]
async fn http_unsupported_content_type_or_encoding_is_415() {
    let h = Harness::start().await;
    let cases: [&[(&str, &str)]; 3] = [
        &[("content-type", "text/plain")],
        &[],
        &[PROTOBUF, ("content-encoding", "br")],
    ];
    for headers in cases {
        let reply = post(
            h.http_addr(),
            "/v1/traces",
            headers,
            protobuf_of(Signal::Traces),
        )
        .await;
        assert_eq!(
            reply.status,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "{headers:?}"
        );
        let (_, message) = reply.rpc_status();
        assert!(message.contains("unsupported"), "{message}");
    }
    assert!(h.consumer.take().is_empty());
    h.running.shutdown().await;
}

#[tokio::test]
async fn http_body_over_the_limit_is_413() {
    let h = Harness::start_with(&Signal::ALL, 100).await;
    let reply = post(
        h.http_addr(),
        "/v1/traces",
        &[JSON],
        json_of(Signal::Traces),
    )
    .await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(reply.content_type(), "application/json");
    assert!(h.consumer.take().is_empty());
    h.running.shutdown().await;
}

#[tokio::test]
async fn http_chunked_body_over_the_limit_is_413() {
    // No Content-Length: the limit must hold while the body streams in.
    let h = Harness::start_with(&Signal::ALL, 1000).await;
    let mut stream = tokio::net::TcpStream::connect(h.http_addr()).await.unwrap();
    let mut request =
        b"POST /v1/traces HTTP/1.1\r\nhost: x\r\ncontent-type: application/x-protobuf\r\n\
                        transfer-encoding: chunked\r\nconnection: close\r\n\r\n"
            .to_vec();
    for _ in 0..5 {
        request.extend_from_slice(format!("{:x}\r\n", 300).as_bytes());
        request.extend_from_slice(&[0u8; 300]);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    stream.write_all(&request).await.unwrap();
    let mut reply = Vec::new();
    stream.read_to_end(&mut reply).await.unwrap();
    let reply = String::from_utf8_lossy(&reply);
    assert!(reply.starts_with("HTTP/1.1 413"), "{reply}");
    assert!(h.consumer.take().is_empty());
    h.running.shutdown().await;
}

#[tokio::test]
async fn http_truncated_gzip_is_400() {
    let h = Harness::start().await;
    let compressed = gzip(&protobuf_of(Signal::Logs));
    let truncated = compressed[..compressed.len() - 10].to_vec();
    let reply = post(h.http_addr(), "/v1/logs", &[PROTOBUF, GZIP], truncated).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    let (_, message) = reply.rpc_status();
    assert!(message.contains("gzip"), "{message}");
    let reply = post(
        h.http_addr(),
        "/v1/logs",
        &[PROTOBUF, GZIP],
        b"not gzip".to_vec(),
    )
    .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(h.consumer.take().is_empty());
    h.running.shutdown().await;
}

#[tokio::test]
async fn http_gzip_bomb_is_413() {
    let limit = 256 * 1024;
    let h = Harness::start_with(&Signal::ALL, limit).await;
    let bomb = gzip(&vec![0u8; 16 * limit]);
    assert!(bomb.len() < limit);
    let reply = post(h.http_addr(), "/v1/traces", &[PROTOBUF, GZIP], bomb).await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(h.consumer.take().is_empty());
    h.running.shutdown().await;
}

#[tokio::test]
async fn http_unknown_path_is_404() {
    let h = Harness::start().await;
    let reply = post(h.http_addr(), "/v1/profiles", &[PROTOBUF], Vec::new()).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    let reply = post(h.http_addr(), "/", &[JSON], Vec::new()).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert_eq!(reply.content_type(), "application/json");
    h.running.shutdown().await;
}

#[tokio::test]
async fn http_wrong_method_is_405_allowing_post() {
    let h = Harness::start().await;
    for method in [::http::Method::GET, ::http::Method::PUT] {
        let reply = http_request(
            h.http_addr(),
            method,
            "/v1/metrics",
            &[PROTOBUF],
            Vec::new(),
        )
        .await;
        assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(reply.headers.get(::http::header::ALLOW).unwrap(), "POST");
    }
    h.running.shutdown().await;
}

#[tokio::test]
async fn http_signal_without_pipeline_is_404_saying_so() {
    let h = Harness::start_with(&[Signal::Metrics], 1 << 20).await;
    let reply = post(
        h.http_addr(),
        "/v1/traces",
        &[PROTOBUF],
        protobuf_of(Signal::Traces),
    )
    .await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    let (_, message) = reply.rpc_status();
    assert!(message.contains("no pipeline takes traces"), "{message}");
    h.running.shutdown().await;
}

#[tokio::test]
async fn http_backpressure_is_503_with_retry_after_and_counted_refused() {
    let h = Harness::start().await;
    h.consumer.set_mode(Mode::Backpressure);
    for (format, body) in [
        (PROTOBUF, protobuf_of(Signal::Logs)),
        (JSON, json_of(Signal::Logs)),
    ] {
        let reply = post(h.http_addr(), "/v1/logs", &[format], body).await;
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(reply.headers.get(::http::header::RETRY_AFTER).unwrap(), "1");
        assert_eq!(reply.content_type(), format.1);
        let (code, _) = reply.rpc_status();
        assert_eq!(code, tonic::Code::Unavailable as i32);
    }
    assert_eq!(h.refused("http", Signal::Logs), 2);
    assert_eq!(h.accepted("http", Signal::Logs), 0);
    h.running.shutdown().await;
}

#[tokio::test]
async fn http_rejected_data_is_400() {
    let h = Harness::start().await;
    h.consumer.set_mode(Mode::Reject);
    let reply = post(
        h.http_addr(),
        "/v1/traces",
        &[PROTOBUF],
        protobuf_of(Signal::Traces),
    )
    .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(reply.headers.get(::http::header::RETRY_AFTER).is_none());
    h.running.shutdown().await;
}

#[tokio::test]
async fn empty_requests_are_answered_without_reaching_the_pipeline() {
    let h = Harness::start().await;
    let reply = post(h.http_addr(), "/v1/traces", &[PROTOBUF], Vec::new()).await;
    assert_eq!(reply.status, StatusCode::OK);
    let reply = post(h.http_addr(), "/v1/logs", &[JSON], b"{}".to_vec()).await;
    assert_eq!(reply.status, StatusCode::OK);
    grpc_raw(&h.grpc_url(), TRACES_PATH, Vec::new())
        .await
        .unwrap();
    assert!(h.consumer.take().is_empty());
    h.running.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Shutdown.

#[tokio::test]
async fn shutdown_finishes_requests_in_flight_then_stops_listening() {
    let h = Arc::new(Harness::start().await);
    h.consumer.set_mode(Mode::Hold);
    let http_addr = h.http_addr();

    let http_call = tokio::spawn(async move {
        post(
            http_addr,
            "/v1/traces",
            &[PROTOBUF],
            protobuf_of(Signal::Traces),
        )
        .await
    });
    h.consumer.entered.notified().await;
    let grpc_call = {
        let h = h.clone();
        tokio::spawn(async move { grpc_export(&h, Signal::Logs, false).await })
    };
    h.consumer.entered.notified().await;

    let mut shutdown = {
        let h = h.clone();
        tokio::spawn(async move { h.running.shutdown().await })
    };
    // Both requests are held inside the pipeline: shutdown must wait for them.
    let early = tokio::time::timeout(std::time::Duration::from_millis(200), &mut shutdown).await;
    assert!(early.is_err(), "shutdown returned with requests in flight");
    h.consumer.gate.add_permits(2);

    assert_eq!(http_call.await.unwrap().status, StatusCode::OK);
    grpc_call.await.unwrap().unwrap();
    shutdown.await.unwrap();
    assert_eq!(h.consumer.take().len(), 2);

    assert!(tokio::net::TcpStream::connect(http_addr).await.is_err());
    assert!(
        tokio::net::TcpStream::connect(h.running.grpc_addr().unwrap())
            .await
            .is_err()
    );
}
