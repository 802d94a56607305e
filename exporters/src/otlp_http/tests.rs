use std::convert::Infallible;
use std::io::Read;
use std::net::SocketAddr;
use std::sync::Arc;

use http::Request;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::{
    logs::v1::ExportLogsServiceRequest,
    metrics::v1::ExportMetricsServiceRequest,
    trace::v1::{ExportTracePartialSuccess, ExportTraceServiceRequest},
};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use super::*;
use crate::test_data;

/// One request as the test backend saw it.
struct Recorded {
    path: String,
    headers: HeaderMap,
    body: Bytes,
}

impl Recorded {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The body, gunzipped when the request says it is gzip.
    fn plain_body(&self) -> Vec<u8> {
        if self.header("content-encoding") == Some("gzip") {
            let mut plain = Vec::new();
            flate2::read::GzDecoder::new(&self.body[..])
                .read_to_end(&mut plain)
                .expect("gzip body decompresses");
            plain
        } else {
            self.body.to_vec()
        }
    }
}

type Respond = dyn Fn(&Recorded) -> http::Response<Full<Bytes>> + Send + Sync;

/// An OTLP/HTTP backend on 127.0.0.1 that records every request and answers with `respond`.
struct Backend {
    addr: SocketAddr,
    requests: mpsc::UnboundedReceiver<Recorded>,
}

impl Backend {
    async fn start(
        respond: impl Fn(&Recorded) -> http::Response<Full<Bytes>> + Send + Sync + 'static,
    ) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, requests) = mpsc::unbounded_channel();
        let respond: Arc<Respond> = Arc::new(respond);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let tx = tx.clone();
                let respond = respond.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request: Request<Incoming>| {
                        let tx = tx.clone();
                        let respond = respond.clone();
                        async move {
                            let (parts, body) = request.into_parts();
                            let recorded = Recorded {
                                path: parts.uri.path().to_string(),
                                headers: parts.headers,
                                body: body.collect().await.unwrap().to_bytes(),
                            };
                            let response = respond(&recorded);
                            let _ = tx.send(recorded);
                            Ok::<_, Infallible>(response)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Backend { addr, requests }
    }

    async fn ok() -> Backend {
        Backend::start(|_| http::Response::new(Full::new(Bytes::new()))).await
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    async fn next(&mut self) -> Recorded {
        self.requests.recv().await.expect("backend is running")
    }
}

fn exporter(toml_text: &str) -> Box<dyn Exporter> {
    OtlpHttpFactory
        .build(&test_data::settings("otlp_http", toml_text))
        .expect("valid config")
}

fn traces_batch() -> Batch {
    let bytes = test_data::traces_request().encode_to_vec();
    Batch::from_encoded(Signal::Traces, Bytes::from(bytes)).unwrap()
}

fn response(status: u16, content_type: &str, body: Vec<u8>) -> http::Response<Full<Bytes>> {
    http::Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

#[tokio::test]
async fn proto_body_is_the_batch_encoding_and_decodes_to_the_same_request() {
    let mut backend = Backend::ok().await;
    let exporter = exporter(&format!(
        "endpoint = \"{}\"\ncompression = \"none\"",
        backend.url()
    ));
    exporter.export(traces_batch()).await.unwrap();
    let request = backend.next().await;
    assert_eq!(request.path, "/v1/traces");
    assert_eq!(
        request.header("content-type"),
        Some("application/x-protobuf")
    );
    assert_eq!(request.header("content-encoding"), None);
    let decoded = ExportTraceServiceRequest::decode(&request.body[..]).unwrap();
    assert_eq!(decoded, test_data::traces_request());
}

#[tokio::test]
async fn gzip_is_the_default_and_the_body_decompresses_to_the_request() {
    let mut backend = Backend::ok().await;
    let exporter = exporter(&format!("endpoint = \"{}\"", backend.url()));
    let request = test_data::metrics_request();
    exporter
        .export(Batch::from_request(sluice_pipeline::Request::Metrics(
            request.clone(),
        )))
        .await
        .unwrap();
    let recorded = backend.next().await;
    assert_eq!(recorded.path, "/v1/metrics");
    assert_eq!(recorded.header("content-encoding"), Some("gzip"));
    assert_ne!(
        recorded.body[..],
        request.encode_to_vec()[..],
        "body is compressed"
    );
    let decoded = ExportMetricsServiceRequest::decode(&recorded.plain_body()[..]).unwrap();
    assert_eq!(decoded.encode_to_vec(), request.encode_to_vec());
}

#[tokio::test]
async fn json_bodies_are_strict_otlp_json_and_decode_to_the_same_request() {
    let mut backend = Backend::ok().await;
    let exporter = exporter(&format!(
        "endpoint = \"{}/\"\nencoding = \"json\"",
        backend.url()
    ));

    exporter.export(traces_batch()).await.unwrap();
    let recorded = backend.next().await;
    assert_eq!(recorded.path, "/v1/traces");
    assert_eq!(recorded.header("content-type"), Some("application/json"));
    let body = recorded.plain_body();
    json::tests::assert_strict_otlp_json(&serde_json::from_slice(&body).unwrap());
    let decoded: ExportTraceServiceRequest = serde_json::from_slice(&body).unwrap();
    assert_eq!(decoded, test_data::traces_request());

    let logs = test_data::logs_request();
    exporter
        .export(Batch::from_request(sluice_pipeline::Request::Logs(
            logs.clone(),
        )))
        .await
        .unwrap();
    let recorded = backend.next().await;
    assert_eq!(recorded.path, "/v1/logs");
    let body = recorded.plain_body();
    json::tests::assert_strict_otlp_json(&serde_json::from_slice(&body).unwrap());
    let decoded: ExportLogsServiceRequest = serde_json::from_slice(&body).unwrap();
    assert_eq!(decoded, logs);

    exporter
        .export(Batch::from_request(sluice_pipeline::Request::Metrics(
            test_data::metrics_request(),
        )))
        .await
        .unwrap();
    let recorded = backend.next().await;
    assert_eq!(recorded.path, "/v1/metrics");
    let value: serde_json::Value = serde_json::from_slice(&recorded.plain_body()).unwrap();
    json::tests::assert_strict_otlp_json(&value);
    let metrics = &value["resourceMetrics"][0]["scopeMetrics"][0]["metrics"];
    assert_eq!(metrics.as_array().unwrap().len(), 5);
    assert_eq!(metrics[0]["gauge"]["dataPoints"][1]["asDouble"], "NaN");
}

#[tokio::test]
async fn per_signal_endpoint_is_used_as_is_and_others_append_to_the_base() {
    let mut backend = Backend::ok().await;
    let exporter = exporter(&format!(
        "endpoint = \"{0}/base/\"\ntraces_endpoint = \"{0}/custom/traces\"",
        backend.url()
    ));
    exporter.export(traces_batch()).await.unwrap();
    assert_eq!(backend.next().await.path, "/custom/traces");
    exporter
        .export(Batch::from_request(sluice_pipeline::Request::Logs(
            test_data::logs_request(),
        )))
        .await
        .unwrap();
    assert_eq!(backend.next().await.path, "/base/v1/logs");
}

#[tokio::test]
async fn configured_headers_arrive() {
    let mut backend = Backend::ok().await;
    let exporter = exporter(&format!(
        "endpoint = \"{}\"\nheaders = {{ \"X-Scope-OrgID\" = \"tenant-1\", authorization = \"Bearer abc\" }}",
        backend.url()
    ));
    exporter.export(traces_batch()).await.unwrap();
    let recorded = backend.next().await;
    assert_eq!(recorded.header("x-scope-orgid"), Some("tenant-1"));
    assert_eq!(recorded.header("authorization"), Some("Bearer abc"));
    assert!(
        recorded
            .header("user-agent")
            .unwrap()
            .starts_with("sluice/")
    );
}

#[tokio::test]
async fn service_unavailable_with_retry_after_is_retryable_with_throttle() {
    let mut backend = Backend::start(|_| {
        http::Response::builder()
            .status(503)
            .header("retry-after", "2")
            .body(Full::new(Bytes::from_static(b"overloaded")))
            .unwrap()
    })
    .await;
    let exporter = exporter(&format!("endpoint = \"{}\"", backend.url()));
    let error = exporter.export(traces_batch()).await.unwrap_err();
    backend.next().await;
    assert_eq!(
        error,
        ExportError::Retryable {
            message: "HTTP 503 Service Unavailable: overloaded".into(),
            throttle: Some(Duration::from_secs(2)),
        }
    );
}

#[tokio::test]
async fn bad_request_with_status_body_is_permanent_with_the_backends_message() {
    let backend = Backend::start(|_| {
        let status = tonic_types::Status {
            code: 3,
            message: "span name must not be empty".into(),
            details: vec![],
        };
        response(400, "application/x-protobuf", status.encode_to_vec())
    })
    .await;
    let exporter = exporter(&format!("endpoint = \"{}\"", backend.url()));
    let error = exporter.export(traces_batch()).await.unwrap_err();
    assert_eq!(
        error,
        ExportError::Permanent("HTTP 400 Bad Request: span name must not be empty".into())
    );
}

#[tokio::test]
async fn bad_request_with_json_status_body_is_permanent_with_the_backends_message() {
    let backend = Backend::start(|_| {
        response(
            400,
            "application/json",
            br#"{"code":3,"message":"invalid traceId"}"#.to_vec(),
        )
    })
    .await;
    let exporter = exporter(&format!(
        "endpoint = \"{}\"\nencoding = \"json\"",
        backend.url()
    ));
    let error = exporter.export(traces_batch()).await.unwrap_err();
    assert_eq!(
        error,
        ExportError::Permanent("HTTP 400 Bad Request: invalid traceId".into())
    );
}

#[tokio::test]
async fn partial_success_is_ok() {
    let backend = Backend::start(|_| {
        let answer = ExportTraceServiceResponse {
            partial_success: Some(ExportTracePartialSuccess {
                rejected_spans: 1,
                error_message: "span too old".into(),
            }),
        };
        response(200, "application/x-protobuf", answer.encode_to_vec())
    })
    .await;
    let exporter = exporter(&format!("endpoint = \"{}\"", backend.url()));
    exporter.export(traces_batch()).await.unwrap();
}

#[tokio::test]
async fn connection_refused_is_retryable() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let exporter = exporter(&format!("endpoint = \"http://{addr}\""));
    match exporter.export(traces_batch()).await {
        Err(ExportError::Retryable { message, throttle }) => {
            assert!(message.contains("onnection refused"), "{message}");
            assert_eq!(throttle, None);
        }
        other => panic!("expected a retryable error, got {other:?}"),
    }
}

#[tokio::test]
async fn unresponsive_backend_is_a_retryable_timeout() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // Accepts connections and never answers.
    let held = tokio::spawn(async move {
        let mut streams = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            streams.push(stream);
        }
    });
    let exporter = exporter(&format!(
        "endpoint = \"http://{addr}\"\ntimeout = \"200ms\""
    ));
    match exporter.export(traces_batch()).await {
        Err(ExportError::Retryable { message, .. }) => {
            assert!(message.contains("timed out after 200ms"), "{message}")
        }
        other => panic!("expected a retryable timeout, got {other:?}"),
    }
    held.abort();
}

#[test]
fn retry_after_takes_seconds_or_an_http_date() {
    let now = httpdate::parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").unwrap();
    assert_eq!(parse_retry_after("7", now), Some(Duration::from_secs(7)));
    assert_eq!(
        parse_retry_after("Sun, 06 Nov 1994 08:50:07 GMT", now),
        Some(Duration::from_secs(30))
    );
    assert_eq!(
        parse_retry_after("Sun, 06 Nov 1994 08:00:00 GMT", now),
        Some(Duration::ZERO)
    );
    assert_eq!(parse_retry_after("soon", now), None);
}

#[test]
fn statuses_are_classified_as_the_otlp_http_specification_says() {
    let now = SystemTime::now();
    for code in [429, 502, 503, 504] {
        let status = StatusCode::from_u16(code).unwrap();
        let error = classify_failure(status, &HeaderMap::new(), BodyFormat::Other, b"", now);
        assert!(
            matches!(error, ExportError::Retryable { throttle: None, .. }),
            "{code}: {error:?}"
        );
    }
    for code in [400, 401, 403, 404, 413, 500] {
        let status = StatusCode::from_u16(code).unwrap();
        let error = classify_failure(status, &HeaderMap::new(), BodyFormat::Other, b"", now);
        assert!(
            matches!(error, ExportError::Permanent(_)),
            "{code}: {error:?}"
        );
    }
}

#[test]
fn long_error_bodies_are_truncated() {
    let body = "x".repeat(10_000);
    let error = classify_failure(
        StatusCode::BAD_REQUEST,
        &HeaderMap::new(),
        BodyFormat::Other,
        body.as_bytes(),
        SystemTime::now(),
    );
    let ExportError::Permanent(message) = error else {
        panic!("400 is permanent")
    };
    assert!(message.len() < 600, "{}", message.len());
}

#[test]
fn json_partial_success_accepts_the_count_as_string_or_number() {
    let partial = partial_success(
        Signal::Logs,
        BodyFormat::Json,
        br#"{"partialSuccess":{"rejectedLogRecords":"3","errorMessage":"too big"}}"#,
    );
    assert_eq!(
        partial,
        Some(PartialSuccess {
            rejected: 3,
            error_message: "too big".into()
        })
    );
    let partial = partial_success(
        Signal::Traces,
        BodyFormat::Json,
        br#"{"partialSuccess":{"rejectedSpans":2}}"#,
    );
    assert_eq!(partial.map(|p| p.rejected), Some(2));
    assert_eq!(
        partial_success(
            Signal::Traces,
            BodyFormat::Json,
            br#"{"partialSuccess":{}}"#
        ),
        None
    );
}

#[test]
fn one_https_signal_endpoint_sets_up_tls() {
    let settings = test_data::settings(
        "otlp_http",
        "endpoint = \"http://a:4318\"\nlogs_endpoint = \"https://b/v1/logs\"",
    );
    let config: Config = settings.parse().unwrap();
    let exporter = OtlpHttpExporter::new(&settings, config, &OtlpEnv::default()).unwrap();
    assert!(exporter.tls.is_some());
}

#[test]
fn tls_settings_without_an_https_endpoint_are_a_config_error_naming_tls() {
    let settings = test_data::settings(
        "otlp_http",
        "endpoint = \"http://a:4318\"\ntls = { server_name = \"b\" }",
    );
    let error = OtlpHttpFactory.build(&settings).err().unwrap();
    assert_eq!(error.path.to_string(), "exporters.test.tls");
}

#[test]
fn unknown_key_and_bad_encoding_are_config_errors() {
    let settings = test_data::settings("otlp_http", "endpoint = \"http://a\"\nencodng = \"json\"");
    let error = OtlpHttpFactory.build(&settings).err().unwrap();
    assert_eq!(error.path.to_string(), "exporters.test.encodng");
    let settings = test_data::settings("otlp_http", "endpoint = \"http://a\"\nencoding = \"xml\"");
    let error = OtlpHttpFactory.build(&settings).err().unwrap();
    assert_eq!(error.path.to_string(), "exporters.test.encoding");
}

#[test]
fn defaults_are_proto_gzip_and_ten_seconds() {
    let settings = test_data::settings("otlp_http", "endpoint = \"http://a\"");
    let config: Config = settings.parse().unwrap();
    let exporter = OtlpHttpExporter::new(&settings, config, &OtlpEnv::default()).unwrap();
    assert_eq!(exporter.encoding, Encoding::Proto);
    assert_eq!(exporter.compression, Compression::Gzip);
    assert_eq!(exporter.timeout, Duration::from_secs(10));
}
