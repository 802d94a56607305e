//! Both OTLP exporters against real TLS servers on 127.0.0.1, with certificates made by rcgen
//! for each test: a private CA (`ca_file`), mutual TLS, `server_name`, `insecure_skip_verify`,
//! an untrusted certificate; and authentication headers, which must arrive and never show.

use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
    trace_service_server::{TraceService, TraceServiceServer},
};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls::server::WebPkiClientVerifier;
use sluice_pipeline::{Batch, ExportError, Exporter, ExporterFactory, Signal};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use super::*;
use crate::otlp_grpc::OtlpGrpcFactory;
use crate::otlp_http::OtlpHttpFactory;
use crate::test_data;

/// A certificate authority that signs certificates for the test servers and clients.
struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

impl Ca {
    fn new() -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "sluice test CA");
        let key = KeyPair::generate().unwrap();
        let pem = params.self_signed(&key).unwrap().pem();
        Ca {
            issuer: Issuer::new(params, key),
            pem,
        }
    }

    /// A certificate for `names` and its key, both PEM.
    fn issue(&self, names: &[&str]) -> (String, String) {
        let params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

/// PEM files in a directory that lives as long as the test.
struct Files(tempfile::TempDir);

impl Files {
    fn new() -> Files {
        Files(tempfile::tempdir().unwrap())
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    }
}

/// What a test server saw of one request.
struct Seen {
    path: String,
    headers: http::HeaderMap,
}

/// A TLS server on 127.0.0.1 answering OTLP/HTTP (any path but the gRPC ones: 200) and
/// OTLP/gRPC traces (accepted), over HTTP/1.1 or HTTP/2 as ALPN decides.
struct TlsServer {
    port: u16,
    seen: mpsc::UnboundedReceiver<Seen>,
}

#[derive(Clone)]
struct Traces;

#[tonic::async_trait]
impl TraceService for Traces {
    async fn export(
        &self,
        _: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

impl TlsServer {
    /// Serves with `cert`/`key`; when `client_ca` is given, only clients with a certificate it
    /// signed may connect.
    async fn start(cert: &str, key: &str, client_ca: Option<&str>) -> TlsServer {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let chain = CertificateDer::pem_slice_iter(cert.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
        let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .unwrap();
        let builder = match client_ca {
            Some(ca) => {
                let mut roots = RootCertStore::empty();
                for cert in CertificateDer::pem_slice_iter(ca.as_bytes()) {
                    roots.add(cert.unwrap()).unwrap();
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                        .build()
                        .unwrap();
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder.with_single_cert(chain, key).unwrap();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (tx, seen) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    // A refused handshake is what some tests expect: the client reports it.
                    let Ok(stream) = acceptor.accept(stream).await else {
                        return;
                    };
                    let grpc = TraceServiceServer::new(Traces)
                        .accept_compressed(tonic::codec::CompressionEncoding::Gzip);
                    let service =
                        hyper::service::service_fn(move |request: http::Request<Incoming>| {
                            let _ = tx.send(Seen {
                                path: request.uri().path().to_string(),
                                headers: request.headers().clone(),
                            });
                            let grpc = grpc.clone();
                            async move {
                                if request.uri().path().starts_with("/opentelemetry.proto.") {
                                    tower::ServiceExt::oneshot(grpc, request).await
                                } else {
                                    let _ = request.into_body().collect().await;
                                    Ok(http::Response::new(tonic::body::Body::new(Full::new(
                                        Bytes::new(),
                                    ))))
                                }
                            }
                        });
                    let _ = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
                });
            }
        });
        TlsServer { port, seen }
    }
}

fn build(type_name: &str, toml_text: &str) -> Box<dyn Exporter> {
    let settings = test_data::settings(type_name, toml_text);
    let built = match type_name {
        "otlp_grpc" => OtlpGrpcFactory.build(&settings),
        _ => OtlpHttpFactory.build(&settings),
    };
    built.unwrap_or_else(|e| panic!("{toml_text}: {e}"))
}

fn traces() -> Batch {
    Batch::from_request(sluice_pipeline::Request::Traces(test_data::traces_request()))
}

fn toml_path(path: &std::path::Path) -> String {
    format!("{:?}", path.display().to_string())
}

/// Each exporter type, with the URL it is given for a server on `port` at `host`.
fn both(host: &str, port: u16) -> [(&'static str, String); 2] {
    [
        ("otlp_grpc", format!("https://{host}:{port}")),
        ("otlp_http", format!("https://{host}:{port}")),
    ]
}

#[tokio::test]
async fn both_exporters_send_over_tls_to_a_server_signed_by_the_ca_file() {
    let ca = Ca::new();
    let (cert, key) = ca.issue(&["localhost"]);
    let mut server = TlsServer::start(&cert, &key, None).await;
    let files = Files::new();
    let ca_file = files.write("ca.pem", &ca.pem);
    for (type_name, url) in both("localhost", server.port) {
        let exporter = build(
            type_name,
            &format!(
                "endpoint = \"{url}\"\ntls = {{ ca_file = {} }}",
                toml_path(&ca_file)
            ),
        );
        exporter.export(traces()).await.unwrap();
        let seen = server.seen.recv().await.unwrap();
        let expected = match type_name {
            "otlp_grpc" => "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
            _ => "/v1/traces",
        };
        assert_eq!(seen.path, expected, "{type_name}");
        assert_eq!(
            exporter.check(Signal::Traces).await.unwrap(),
            format!(
                "{}{}: reachable, export accepted",
                url,
                if type_name == "otlp_http" {
                    "/v1/traces"
                } else {
                    ""
                }
            )
        );
        assert_eq!(server.seen.recv().await.unwrap().path, expected);
    }
}

#[tokio::test]
async fn a_server_requiring_a_client_certificate_takes_the_configured_one_and_refuses_none() {
    let server_ca = Ca::new();
    let client_ca = Ca::new();
    let (cert, key) = server_ca.issue(&["localhost"]);
    let mut server = TlsServer::start(&cert, &key, Some(&client_ca.pem)).await;
    let files = Files::new();
    let ca_file = files.write("ca.pem", &server_ca.pem);
    let (client_cert, client_key) = client_ca.issue(&["sluice"]);
    let cert_file = files.write("client.pem", &client_cert);
    let key_file = files.write("client.key", &client_key);
    for (type_name, url) in both("localhost", server.port) {
        let with_cert = build(
            type_name,
            &format!(
                "endpoint = \"{url}\"\ntls = {{ ca_file = {}, cert_file = {}, key_file = {} }}",
                toml_path(&ca_file),
                toml_path(&cert_file),
                toml_path(&key_file)
            ),
        );
        with_cert.export(traces()).await.unwrap();
        assert!(server.seen.recv().await.is_some());

        let without_cert = build(
            type_name,
            &format!(
                "endpoint = \"{url}\"\ntls = {{ ca_file = {} }}",
                toml_path(&ca_file)
            ),
        );
        let ExportError::Permanent(message) = without_cert.check(Signal::Traces).await.unwrap_err()
        else {
            panic!("a check failure is permanent");
        };
        assert!(
            message.contains("TLS") && message.contains("client certificate"),
            "{type_name}: {message}"
        );
        assert!(
            without_cert.export(traces()).await.is_err(),
            "{type_name} without a client certificate"
        );
    }
}

#[tokio::test]
async fn server_name_verifies_a_certificate_for_another_name_than_the_endpoint_host() {
    let ca = Ca::new();
    let (cert, key) = ca.issue(&["backend.internal"]);
    let mut server = TlsServer::start(&cert, &key, None).await;
    let files = Files::new();
    let ca_file = files.write("ca.pem", &ca.pem);
    for (type_name, url) in both("127.0.0.1", server.port) {
        let named = build(
            type_name,
            &format!(
                "endpoint = \"{url}\"\ntls = {{ ca_file = {}, server_name = \"backend.internal\" }}",
                toml_path(&ca_file)
            ),
        );
        named.export(traces()).await.unwrap();
        assert!(server.seen.recv().await.is_some());

        let unnamed = build(
            type_name,
            &format!(
                "endpoint = \"{url}\"\ntls = {{ ca_file = {} }}",
                toml_path(&ca_file)
            ),
        );
        let message = unnamed.check(Signal::Traces).await.unwrap_err().to_string();
        assert!(
            message.contains("not valid for the endpoint's host")
                && message.contains("tls.server_name"),
            "{type_name}: {message}"
        );
    }
}

#[tokio::test]
async fn insecure_skip_verify_accepts_a_certificate_nobody_trusts() {
    let (cert, key) = Ca::new().issue(&["somewhere.else"]);
    let mut server = TlsServer::start(&cert, &key, None).await;
    for (type_name, url) in both("127.0.0.1", server.port) {
        let exporter = build(
            type_name,
            &format!("endpoint = \"{url}\"\ntls = {{ insecure_skip_verify = true }}"),
        );
        exporter.export(traces()).await.unwrap();
        assert!(server.seen.recv().await.is_some());
    }
}

#[tokio::test]
async fn an_untrusted_certificate_fails_with_a_tls_error_saying_so() {
    let (cert, key) = Ca::new().issue(&["localhost"]);
    let server = TlsServer::start(&cert, &key, None).await;
    for (type_name, url) in both("localhost", server.port) {
        // No ca_file: the system's roots, which do not know the test CA.
        let exporter = build(type_name, &format!("endpoint = \"{url}\""));
        let message = exporter
            .check(Signal::Traces)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            message.starts_with(&url)
                && message.contains("TLS handshake failed")
                && message.contains("not signed by a trusted CA")
                && message.contains("tls.ca_file"),
            "{type_name}: {message}"
        );
        let export_error = exporter.export(traces()).await.unwrap_err().to_string();
        assert!(
            export_error.contains("UnknownIssuer"),
            "{type_name}: {export_error}"
        );
    }
}

#[tokio::test]
async fn auth_headers_arrive_at_the_backend() {
    let ca = Ca::new();
    let (cert, key) = ca.issue(&["localhost"]);
    let mut server = TlsServer::start(&cert, &key, None).await;
    let files = Files::new();
    let ca_file = toml_path(&files.write("ca.pem", &ca.pem));
    let cases = [
        (
            "auth = { type = \"bearer\", token = \"tok-123\" }",
            "authorization",
            "Bearer tok-123",
        ),
        (
            "auth = { type = \"basic\", username = \"ann\", password = \"pw\" }",
            "authorization",
            // base64("ann:pw")
            "Basic YW5uOnB3",
        ),
        (
            "auth = { type = \"api_key\", header = \"x-honeycomb-team\", value = \"key-9\" }",
            "x-honeycomb-team",
            "key-9",
        ),
    ];
    for (type_name, url) in both("localhost", server.port) {
        for (auth, header, value) in cases {
            let exporter = build(
                type_name,
                &format!(
                    "endpoint = \"{url}\"\n{auth}\nheaders = {{ x-tenant = \"t1\" }}\ntls = {{ ca_file = {ca_file} }}"
                ),
            );
            exporter.export(traces()).await.unwrap();
            let seen = server.seen.recv().await.unwrap();
            assert_eq!(
                seen.headers.get(header).and_then(|v| v.to_str().ok()),
                Some(value),
                "{type_name} {auth}"
            );
            assert_eq!(
                seen.headers.get("x-tenant").and_then(|v| v.to_str().ok()),
                Some("t1")
            );
        }
    }
}

#[tokio::test]
async fn secrets_appear_in_no_debug_output_and_no_error_message() {
    let secrets = [
        "tok-SECRET-1",
        "pw-SECRET-2",
        "key-SECRET-3",
        "hdr-SECRET-4",
    ];
    let tables = [
        "auth = { type = \"bearer\", token = \"tok-SECRET-1\" }\nheaders = { x-key = \"hdr-SECRET-4\" }",
        "auth = { type = \"basic\", username = \"u\", password = \"pw-SECRET-2\" }",
        "auth = { type = \"api_key\", header = \"x-api-key\", value = \"key-SECRET-3\" }",
    ];
    // Nothing listens on this port: the export fails, and its error is what gets logged.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    for type_name in ["otlp_grpc", "otlp_http"] {
        for table in tables {
            let text = format!("endpoint = \"http://127.0.0.1:{port}\"\n{table}");
            let settings = test_data::settings(type_name, &text);
            let (config_debug, exporter) = match type_name {
                "otlp_grpc" => {
                    let config: crate::otlp_grpc::Config = settings.parse().unwrap();
                    (format!("{config:?}"), build(type_name, &text))
                }
                _ => {
                    let config: crate::otlp_http::Config = settings.parse().unwrap();
                    (format!("{config:?}"), build(type_name, &text))
                }
            };
            let exporter_debug = match type_name {
                "otlp_grpc" => {
                    let config = settings.parse().unwrap();
                    format!(
                        "{:?}",
                        crate::otlp_grpc::OtlpGrpcExporter::new(
                            &settings,
                            config,
                            &crate::otlp_env::OtlpEnv::default()
                        )
                        .unwrap()
                    )
                }
                _ => {
                    let config = settings.parse().unwrap();
                    format!(
                        "{:?}",
                        crate::otlp_http::OtlpHttpExporter::new(
                            &settings,
                            config,
                            &crate::otlp_env::OtlpEnv::default()
                        )
                        .unwrap()
                    )
                }
            };
            assert!(config_debug.contains("<redacted>"), "{config_debug}");
            assert!(exporter_debug.contains("Sensitive"), "{exporter_debug}");
            let export_error = exporter.export(traces()).await.unwrap_err().to_string();
            let check_error = exporter
                .check(Signal::Traces)
                .await
                .unwrap_err()
                .to_string();
            for secret in secrets {
                for (what, text) in [
                    ("config Debug", &config_debug),
                    ("exporter Debug", &exporter_debug),
                    ("export error", &export_error),
                    ("check error", &check_error),
                ] {
                    assert!(
                        !text.contains(secret),
                        "{type_name}: {what} shows {secret}: {text}"
                    );
                }
            }
        }
    }
    // A secret that is not a valid header value is refused without being repeated.
    let settings = test_data::settings(
        "otlp_http",
        "endpoint = \"http://a\"\nauth = { type = \"bearer\", token = \"tok-SECRET-1\\n\" }",
    );
    let error = OtlpHttpFactory.build(&settings).err().unwrap();
    assert_eq!(error.path.to_string(), "exporters.test.auth.token");
    assert!(!error.to_string().contains("SECRET"), "{error}");
}

#[test]
fn unreadable_or_invalid_certificate_files_are_config_errors_naming_key_and_file() {
    let files = Files::new();
    let not_pem = files.write("not.pem", "hello");
    let ca = Ca::new();
    let (cert, _) = ca.issue(&["x"]);
    let cert_file = files.write("client.pem", &cert);
    let cases = [
        (
            "tls = { ca_file = \"/nonexistent/ca.pem\" }".to_string(),
            "exporters.test.tls.ca_file",
            "/nonexistent/ca.pem",
        ),
        (
            format!("tls = {{ ca_file = {} }}", toml_path(&not_pem)),
            "exporters.test.tls.ca_file",
            "not.pem",
        ),
        (
            format!(
                "tls = {{ cert_file = {}, key_file = {} }}",
                toml_path(&cert_file),
                toml_path(&not_pem)
            ),
            "exporters.test.tls.key_file",
            "not.pem",
        ),
        (
            format!("tls = {{ cert_file = {} }}", toml_path(&cert_file)),
            "exporters.test.tls.key_file",
            "cert_file is set",
        ),
        (
            "tls = { server_name = \"not a name\" }".to_string(),
            "exporters.test.tls.server_name",
            "not a name",
        ),
    ];
    for type_name in ["otlp_grpc", "otlp_http"] {
        for (table, path, mentioned) in &cases {
            let settings =
                test_data::settings(type_name, &format!("endpoint = \"https://a:1\"\n{table}"));
            let error = match type_name {
                "otlp_grpc" => OtlpGrpcFactory.build(&settings).err(),
                _ => OtlpHttpFactory.build(&settings).err(),
            }
            .unwrap_or_else(|| panic!("{table} must be refused"));
            assert_eq!(error.path.to_string(), *path, "{table}");
            assert!(
                error.message.contains(mentioned),
                "{table}: {}",
                error.message
            );
        }
    }
}

#[test]
fn https_without_tls_settings_trusts_the_system_roots() {
    let settings = test_data::settings("otlp_http", "");
    let tls = Tls::new(&settings, &TlsConfig::default()).unwrap();
    assert!(!tls.skips_verification());
    assert!(!system_roots().is_empty());
}
