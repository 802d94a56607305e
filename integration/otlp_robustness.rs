//! The running binary under adverse conditions: a backend that never answers must not delay
//! the other exporters, and malformed requests get the OTLP spec's status codes without
//! harming the process.

mod common;

use std::io::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::backends::Backend;
use common::{Sluice, free_port, http_get};
use http_body_util::{BodyExt, Full};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prost::Message;

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn request_of(spans: usize, tag: usize) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            scope_spans: vec![ScopeSpans {
                spans: (0..spans)
                    .map(|i| Span {
                        trace_id: [tag as u8 + 1; 16].to_vec(),
                        span_id: [(i + 1) as u8; 8].to_vec(),
                        name: format!("request {tag} span {i}"),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_backend_does_not_delay_the_other_exporter_and_its_drops_are_counted() {
    const BATCH_TIMEOUT: Duration = Duration::from_millis(100);
    let healthy = Backend::grpc().await;
    let hung = Backend::unresponsive().await;
    let (admin, grpc) = (local(free_port()), local(free_port()));
    let config = format!(
        r#"
[service]
admin = "{admin}"
[receivers.otlp]
grpc = "{grpc}"
[processors.batch]
timeout = "100ms"
[exporters.healthy]
type = "otlp_grpc"
endpoint = "{healthy}"
[exporters.hung]
type = "otlp_grpc"
endpoint = "{hung}"
timeout = "120s"
queue = {{ max_items = 50, consumers = 1 }}
[pipelines.traces]
receivers = ["otlp"]
processors = ["batch"]
exporters = ["healthy", "hung"]
"#,
        healthy = healthy.url(),
        hung = hung.url(),
    );
    let mut sluice = Sluice::start(&config, admin, &[grpc]);
    let mut client = TraceServiceClient::connect(format!("http://{grpc}"))
        .await
        .unwrap();

    const REQUESTS: usize = 20;
    const SPANS_PER_REQUEST: usize = 10;
    let mut slowest = Duration::ZERO;
    for tag in 0..REQUESTS {
        let sent_at = Instant::now();
        client
            .export(request_of(SPANS_PER_REQUEST, tag))
            .await
            .unwrap();
        let expected = (tag + 1) * SPANS_PER_REQUEST;
        healthy
            .recorder
            .wait_until("the healthy backend to get the batch", |r| {
                r.span_count() >= expected
            })
            .await;
        slowest = slowest.max(sent_at.elapsed());
    }
    // Each batch reached the healthy backend after about one batch timeout, while the hung
    // exporter holds its first batch for up to 120 s. The bound leaves room for a loaded
    // machine but is far below anything head-of-line blocking would cause.
    assert!(
        slowest < BATCH_TIMEOUT + Duration::from_secs(5),
        "slowest delivery took {slowest:?}"
    );
    assert_eq!(
        healthy.recorder.snapshot().span_count(),
        REQUESTS * SPANS_PER_REQUEST
    );

    // The backend records a request before the exporter sees the answer and counts it.
    let sent_series = "sluice_exporter_sent_items_total{exporter=\"healthy\",signal=\"traces\"}";
    common::wait_for("the healthy exporter's sent counter", || {
        sluice.metric(sent_series) == (REQUESTS * SPANS_PER_REQUEST) as f64
    });
    let metrics = sluice.metrics();
    let series = |name: &str, exporter: &str| {
        common::metric_value(
            &metrics,
            &format!("{name}{{exporter=\"{exporter}\",signal=\"traces\"}}"),
        )
    };
    assert_eq!(
        series("sluice_exporter_sent_items_total", "hung"),
        0.0,
        "{metrics}"
    );
    let dropped = series("sluice_exporter_enqueue_failed_items_total", "hung");
    assert!(
        dropped >= 100.0,
        "the hung exporter's queue of 50 must overflow: {metrics}"
    );
    assert!(
        common::metric_value(
            &metrics,
            "sluice_exporter_queue_capacity{exporter=\"hung\"}"
        ) == 50.0,
        "{metrics}"
    );
    assert!(sluice.is_running());
}

/// A running Sluice with a small body limit, for malformed-request tests.
fn sluice_for_bad_requests() -> (Sluice, SocketAddr, SocketAddr) {
    let (admin, grpc, http) = (local(free_port()), local(free_port()), local(free_port()));
    let config = format!(
        r#"
[service]
admin = "{admin}"
[receivers.otlp]
grpc = "{grpc}"
http = "{http}"
max_request_body_size = 4096
[exporters.debug]
verbosity = "basic"
[pipelines.traces]
receivers = ["otlp"]
exporters = ["debug"]
"#
    );
    let sluice = Sluice::start(&config, admin, &[grpc, http]);
    (sluice, grpc, http)
}

async fn post(
    http: SocketAddr,
    path: &str,
    content_type: &str,
    encoding: Option<&str>,
    body: Vec<u8>,
) -> (u16, http::HeaderMap, Bytes) {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let mut request =
        hyper::Request::post(format!("http://{http}{path}")).header("content-type", content_type);
    if let Some(encoding) = encoding {
        request = request.header("content-encoding", encoding);
    }
    let response = client
        .request(request.body(Full::new(Bytes::from(body))).unwrap())
        .await
        .unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, headers, body)
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(data).unwrap();
    encoder.finish().unwrap()
}

/// The google.rpc.Status message OTLP/HTTP error bodies carry.
#[derive(Clone, PartialEq, prost::Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_http_requests_get_the_spec_status_and_the_process_survives() {
    let (mut sluice, _grpc, http) = sluice_for_bad_requests();
    let valid = request_of(2, 0).encode_to_vec();

    let (status, headers, body) = post(
        http,
        "/v1/traces",
        "application/x-protobuf",
        None,
        b"\x0a\xff\xff\xff\xff\x0f garbage".to_vec(),
    )
    .await;
    assert_eq!(status, 400, "malformed protobuf");
    assert_eq!(headers["content-type"], "application/x-protobuf");
    let rpc_status = RpcStatus::decode(body).expect("a google.rpc.Status body");
    assert!(!rpc_status.message.is_empty());

    let (status, headers, body) = post(
        http,
        "/v1/traces",
        "application/json",
        None,
        b"{\"resourceSpans\": [".to_vec(),
    )
    .await;
    assert_eq!(status, 400, "malformed JSON");
    assert!(
        headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    let json: serde_json::Value =
        serde_json::from_slice(&body).expect("a JSON google.rpc.Status body");
    assert!(json.get("message").is_some(), "{json}");

    let (status, _, _) = post(http, "/v1/traces", "text/plain", None, valid.clone()).await;
    assert_eq!(status, 415, "wrong content type");

    let (status, _, _) = post(
        http,
        "/v1/traces",
        "application/x-protobuf",
        None,
        request_of(200, 0).encode_to_vec(),
    )
    .await;
    assert_eq!(status, 413, "body above max_request_body_size");

    let compressed = gzip(&valid);
    let (status, _, _) = post(
        http,
        "/v1/traces",
        "application/x-protobuf",
        Some("gzip"),
        compressed[..compressed.len() / 2].to_vec(),
    )
    .await;
    assert_eq!(status, 400, "truncated gzip");

    let bomb = gzip(&vec![0u8; 1 << 20]);
    let (status, _, _) = post(
        http,
        "/v1/traces",
        "application/x-protobuf",
        Some("gzip"),
        bomb,
    )
    .await;
    assert_eq!(
        status, 413,
        "gzip that inflates above max_request_body_size"
    );

    let (status, _, _) = post(
        http,
        "/v1/spans",
        "application/x-protobuf",
        None,
        valid.clone(),
    )
    .await;
    assert_eq!(status, 404, "unknown path");

    let (status, _, _) = post(
        http,
        "/v1/traces",
        "application/x-protobuf",
        Some("gzip"),
        gzip(&valid),
    )
    .await;
    assert_eq!(status, 200, "a valid gzip request after all the bad ones");

    assert!(sluice.is_running());
    assert_eq!(http_get(sluice.admin, "/healthz").trim(), "ok");
    let accepted = sluice.metric("sluice_receiver_accepted_items_total{receiver=\"otlp\",signal=\"traces\",transport=\"http\"}");
    assert_eq!(accepted, 2.0, "only the valid request was accepted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_method_gets_405() {
    let (_sluice, _grpc, http) = sluice_for_bad_requests();
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let response = client
        .request(
            hyper::Request::get(format!("http://{http}/v1/traces"))
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 405);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_grpc_request_gets_invalid_argument_and_the_process_survives() {
    let (mut sluice, grpc, _http) = sluice_for_bad_requests();
    // A gRPC frame (uncompressed flag, length, message) whose message is not valid protobuf.
    let garbage = b"\x0a\xff\xff\xff\xff\x0f not protobuf";
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(garbage.len() as u32).to_be_bytes());
    frame.extend_from_slice(garbage);
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<Full<Bytes>>();
    let request = hyper::Request::post(format!(
        "http://{grpc}/opentelemetry.proto.collector.trace.v1.TraceService/Export"
    ))
    .header("content-type", "application/grpc")
    .header("te", "trailers")
    .body(Full::new(Bytes::from(frame)))
    .unwrap();
    let response = client.request(request).await.unwrap();
    let headers = response.headers().clone();
    let collected = response.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned().unwrap_or_default();
    let grpc_status = headers
        .get("grpc-status")
        .or_else(|| trailers.get("grpc-status"))
        .expect("a grpc-status");
    assert_eq!(grpc_status, "3", "INVALID_ARGUMENT");

    // The process still serves valid requests.
    let mut client = TraceServiceClient::connect(format!("http://{grpc}"))
        .await
        .unwrap();
    client.export(request_of(1, 0)).await.unwrap();
    assert!(sluice.is_running());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_flushes_pending_batches_to_the_backends_before_exiting() {
    let backend = Backend::grpc().await;
    let (admin, grpc) = (local(free_port()), local(free_port()));
    // A batch timeout and size the test never reaches: only shutdown can flush these spans.
    let config = format!(
        r#"
[service]
admin = "{admin}"
shutdown_timeout = "20s"
[receivers.otlp]
grpc = "{grpc}"
[processors.batch]
timeout = "1h"
send_batch_size = 100000
[exporters.backend]
type = "otlp_grpc"
endpoint = "{url}"
[pipelines.traces]
receivers = ["otlp"]
processors = ["batch"]
exporters = ["backend"]
"#,
        url = backend.url(),
    );
    let mut sluice = Sluice::start(&config, admin, &[grpc]);
    let mut client = TraceServiceClient::connect(format!("http://{grpc}"))
        .await
        .unwrap();
    for tag in 0..5 {
        client.export(request_of(7, tag)).await.unwrap();
    }
    assert_eq!(
        backend.recorder.snapshot().span_count(),
        0,
        "nothing is sent before the batch is due"
    );
    let status = tokio::task::spawn_blocking(move || {
        let status = sluice.terminate();
        (status, sluice)
    })
    .await
    .unwrap();
    assert!(status.0.success(), "clean exit: {}", status.1.stderr.text());
    assert_eq!(
        backend.recorder.snapshot().span_count(),
        35,
        "every accepted span was flushed at shutdown"
    );
}
