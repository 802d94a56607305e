//! End to end: `sluice check` against real servers on 127.0.0.1, one per failure it must name
//! (accepting OTLP backends, a refused port, an unresolvable host, 401, 404, an untrusted TLS
//! certificate, gRPC spoken to an HTTP/1-only server and OTLP/HTTP to a gRPC-only one); and
//! `sluice run` sending a pipeline without exporters to OTEL_EXPORTER_OTLP_ENDPOINT.

mod common;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::{Command, Stdio};

use bytes::Bytes;
use common::backends::Backend;
use common::{free_port, sluice_binary};
use http_body_util::Full;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, trace_service_client::TraceServiceClient,
};
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use tokio::net::TcpListener;

/// An HTTP/1.1-only server answering every request with `status`.
async fn http1_server(status: u16) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |_| async move {
                    let mut response = http::Response::new(Full::new(Bytes::from_static(
                        b"{\"message\":\"nope\"}",
                    )));
                    *response.status_mut() = http::StatusCode::from_u16(status).unwrap();
                    response.headers_mut().insert(
                        http::header::CONTENT_TYPE,
                        http::HeaderValue::from_static("application/json"),
                    );
                    Ok::<_, Infallible>(response)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    address
}

/// A TLS server whose self-signed certificate nobody trusts: `openssl s_server`, the only TLS
/// server at hand to the binary's tests. Killed when dropped.
struct UntrustedTls {
    child: std::process::Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl UntrustedTls {
    fn start() -> UntrustedTls {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        let made = Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
            ])
            .args([
                "-nodes",
                "-days",
                "1",
                "-subj",
                "/CN=sluice untrusted test server",
            ])
            .args(["-addext", "subjectAltName=DNS:localhost"])
            // A server certificate, not a CA's: what a real server presents.
            .args(["-addext", "basicConstraints=critical,CA:FALSE"])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("the openssl command makes the test certificate");
        assert!(made.success(), "openssl req failed");
        let port = free_port();
        let child = Command::new("openssl")
            .args(["s_server", "-quiet", "-www", "-accept"])
            .arg(format!("127.0.0.1:{port}"))
            .arg("-cert")
            .arg(&cert)
            .arg("-key")
            .arg(&key)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("openssl s_server starts");
        common::wait_for("openssl s_server to listen", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        UntrustedTls {
            child,
            port,
            _dir: dir,
        }
    }
}

impl Drop for UntrustedTls {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `sluice check` on `config`; returns the exit code and each exporter's line by id.
fn check(config: &str) -> (i32, BTreeMap<String, String>, String) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sluice.toml");
    std::fs::write(&file, config).unwrap();
    let output = Command::new(sluice_binary())
        .args(["check", "--timeout", "10s", "--config"])
        .arg(&file)
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .output()
        .unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    let stderr = String::from_utf8(output.stderr).unwrap();
    let lines = stdout
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let status = words.next()?;
            let id = words.next()?;
            let _ = status;
            Some((id.to_string(), line.to_string()))
        })
        .collect();
    (
        output.status.code().unwrap_or(-1),
        lines,
        format!("{stdout}\n{stderr}"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_names_the_cause_of_each_failure_and_exits_non_zero() {
    let grpc = Backend::grpc().await;
    let http = Backend::http().await;
    let unauthorized = http1_server(401).await;
    let not_found = http1_server(404).await;
    let http1_only = http1_server(200).await;
    let tls = UntrustedTls::start();
    let refused = free_port();
    let receiver = free_port();
    let grpc_url = grpc.url();
    let http_url = http.url();
    let tls_port = tls.port;
    let config = format!(
        r#"
[service]
admin = ""

[receivers.otlp]
grpc = "127.0.0.1:{receiver}"

[exporters.grpc_ok]
type = "otlp_grpc"
endpoint = "{grpc_url}"

[exporters.http_ok]
type = "otlp_http"
endpoint = "{http_url}"

[exporters.refused]
type = "otlp_grpc"
endpoint = "http://127.0.0.1:{refused}"

[exporters.no_dns]
type = "otlp_grpc"
endpoint = "http://nonexistent.invalid:4317"

[exporters.unauthorized]
type = "otlp_http"
endpoint = "http://{unauthorized}"
auth = {{ type = "bearer", token = "wrong-token-SECRET" }}

[exporters.not_found]
type = "otlp_http"
endpoint = "http://{not_found}/otlp"

[exporters.untrusted]
type = "otlp_http"
endpoint = "https://localhost:{tls_port}"

[exporters.grpc_to_http1]
type = "otlp_grpc"
endpoint = "http://{http1_only}"

[exporters.http_to_grpc]
type = "otlp_http"
endpoint = "{grpc_url}"

[exporters.off]
type = "otlp_grpc"
endpoint = "http://127.0.0.1:{refused}"
enabled = false

[exporters.debug]

[pipelines.traces]
receivers = ["otlp"]
exporters = ["grpc_ok", "http_ok", "refused", "no_dns", "unauthorized", "not_found", "untrusted", "grpc_to_http1", "http_to_grpc", "off", "debug"]
"#
    );
    let (code, lines, output) = tokio::task::spawn_blocking(move || check(&config))
        .await
        .unwrap();
    let line = |id: &str| {
        lines
            .get(id)
            .unwrap_or_else(|| panic!("no line for {id}:\n{output}"))
            .clone()
    };
    let expect = |id: &str, status: &str, needles: &[&str]| {
        let text = line(id);
        assert!(text.starts_with(&format!("{status} ")), "{id}: {text}");
        for needle in needles {
            assert!(text.contains(needle), "{id} lacks {needle:?}: {text}");
        }
    };
    expect(
        "grpc_ok",
        "ok",
        &[&format!("{grpc_url}: reachable, export accepted")],
    );
    expect(
        "http_ok",
        "ok",
        &[&format!("{http_url}/v1/traces: reachable, export accepted")],
    );
    expect("refused", "FAIL", &["connection refused"]);
    expect(
        "no_dns",
        "FAIL",
        &["http://nonexistent.invalid:4317", "DNS resolution failed"],
    );
    expect(
        "unauthorized",
        "FAIL",
        &["authentication failed", "HTTP 401", "check auth"],
    );
    expect(
        "not_found",
        "FAIL",
        &["wrong path", "HTTP 404", "/otlp/v1/traces"],
    );
    expect(
        "untrusted",
        "FAIL",
        &["TLS handshake failed", "not signed by a trusted CA"],
    );
    expect(
        "grpc_to_http1",
        "FAIL",
        &["wrong protocol", "does not speak HTTP/2"],
    );
    expect(
        "http_to_grpc",
        "FAIL",
        &["wrong protocol", "does not answer HTTP/1.1"],
    );
    expect("off", "skip", &["disabled"]);
    expect("debug", "ok", &["nothing to check"]);
    assert!(!output.contains("SECRET"), "{output}");
    assert_eq!(code, 1, "{output}");
    // The accepting backends really received the test exports.
    assert!(!grpc.recorder.snapshot().traces.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_exits_zero_when_every_exporter_is_reachable() {
    let grpc = Backend::grpc().await;
    let config = format!(
        "[service]\nadmin = \"\"\n[receivers.otlp]\ngrpc = \"127.0.0.1:{}\"\n[exporters.tempo]\ntype = \"otlp_grpc\"\nendpoint = \"{}\"\n[pipelines.traces]\nreceivers = [\"otlp\"]\nexporters = [\"tempo\"]\n",
        free_port(),
        grpc.url()
    );
    let (code, lines, output) = tokio::task::spawn_blocking(move || check(&config))
        .await
        .unwrap();
    assert_eq!(code, 0, "{output}");
    assert!(lines["tempo"].starts_with("ok "), "{output}");
}

#[test]
fn check_reports_config_errors_like_validate() {
    let (code, _, output) = check(
        "[exporters.x]\ntype = \"otlp_grpc\"\nendpiont = \"y\"\n[receivers.otlp]\n[pipelines.traces]\nreceivers = [\"otlp\"]\nexporters = [\"x\"]\n",
    );
    assert_eq!(code, 2, "{output}");
    assert!(
        output.contains("exporters.x.endpiont: unknown field"),
        "{output}"
    );
}

/// A span whose name the backend can be searched for.
fn request(name: &str) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            scope_spans: vec![ScopeSpans {
                spans: vec![Span {
                    trace_id: vec![1; 16],
                    span_id: vec![2; 8],
                    name: name.into(),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_without_exporters_sends_to_the_otel_exporter_otlp_endpoint() {
    for (protocol, backend) in [
        ("grpc", Backend::grpc().await),
        ("http/protobuf", Backend::http().await),
    ] {
        let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let receiver = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let config = format!(
            "[service]\nadmin = \"{admin}\"\n[receivers.otlp]\ngrpc = \"{receiver}\"\n[pipelines.traces]\nreceivers = [\"otlp\"]\n"
        );
        let sluice = common::Sluice::start_with_env(
            &config,
            admin,
            &[receiver],
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", &backend.url()),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol),
                ("OTEL_EXPORTER_OTLP_HEADERS", "x-tenant=team%20a"),
            ],
        );
        let mut client = TraceServiceClient::connect(format!("http://{receiver}"))
            .await
            .unwrap();
        client.export(request("from-env")).await.unwrap();
        let received = backend
            .recorder
            .wait_until("the span at the environment's endpoint", |r| {
                r.span_count() >= 1
            })
            .await;
        assert_eq!(received.span_count(), 1, "{protocol}");
        assert_eq!(
            received.headers[0]
                .get("x-tenant")
                .and_then(|v| v.to_str().ok()),
            Some("team a"),
            "{protocol}"
        );
        assert!(
            sluice.stderr.text().contains("otlp_env"),
            "{protocol}: {}",
            sluice.stderr.text()
        );
    }
}

#[test]
fn without_the_environment_a_pipeline_without_exporters_is_an_error_with_a_hint() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sluice.toml");
    std::fs::write(
        &file,
        "[receivers.otlp]\n[pipelines.traces]\nreceivers = [\"otlp\"]\n",
    )
    .unwrap();
    let output = Command::new(sluice_binary())
        .args(["validate", "--config"])
        .arg(&file)
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .output()
        .unwrap();
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("pipelines.traces.exporters: a pipeline needs at least one exporter")
            && stderr.contains("OTEL_EXPORTER_OTLP_ENDPOINT"),
        "{stderr}"
    );
}
