//! End to end: operating a running Sluice. A reload moves an exporter and adds a processor
//! while a gateway stream and a kept-alive OTLP connection are open, and neither notices; an
//! invalid config on reload changes nothing and shows in `/status`; `--watch` and SIGHUP
//! reload; `/tap` shows what leaves a component; `admin_token` guards the admin API.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use async_openai::types::chat::{
    ChatCompletionRequestUserMessageArgs, CreateChatCompletionRequestArgs,
};
use bytes::Bytes;
use common::backends::{Backend, Received};
use common::gateway::{Addresses, openai};
use common::{Sluice, free_port, http_get, wait_for};
use futures_util::StreamExt;
use http_body_util::{BodyExt, Full};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prost::Message;
use serde_json::Value;

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn spans_named(prefix: &str, count: usize) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            scope_spans: vec![ScopeSpans {
                spans: (0..count)
                    .map(|i| Span {
                        trace_id: [9; 16].to_vec(),
                        span_id: [i as u8 + 1; 8].to_vec(),
                        name: format!("{prefix} {i}"),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

fn names_with(received: &Received, prefix: &str) -> Vec<String> {
    received
        .traces
        .iter()
        .flat_map(|r| &r.resource_spans)
        .flat_map(|r| &r.scope_spans)
        .flat_map(|s| &s.spans)
        .filter(|s| s.name.starts_with(prefix))
        .map(|s| s.name.clone())
        .collect()
}

fn resource_has(received: &Received, prefix: &str, key: &str) -> bool {
    received
        .traces
        .iter()
        .flat_map(|r| &r.resource_spans)
        .filter(|rs| {
            rs.scope_spans
                .iter()
                .flat_map(|s| &s.spans)
                .any(|s| s.name.starts_with(prefix))
        })
        .all(|rs| {
            rs.resource
                .as_ref()
                .is_some_and(|r| r.attributes.iter().any(|kv| kv.key == key))
        })
}

/// One HTTP/1.1 connection to the OTLP/HTTP receiver, kept alive across requests: a request
/// fails if the server closed it.
struct KeptAlive {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    address: SocketAddr,
}

impl KeptAlive {
    async fn open(address: SocketAddr) -> KeptAlive {
        let stream = tokio::net::TcpStream::connect(address).await.unwrap();
        let (sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(connection);
        KeptAlive { sender, address }
    }

    async fn export(&mut self, request: ExportTraceServiceRequest) -> u16 {
        self.sender
            .ready()
            .await
            .expect("the connection is still open");
        let request = hyper::Request::post(format!("http://{}/v1/traces", self.address))
            .header("content-type", "application/x-protobuf")
            .body(Full::new(Bytes::from(request.encode_to_vec())))
            .unwrap();
        let response = self
            .sender
            .send_request(request)
            .await
            .expect("the kept-alive connection still answers");
        let status = response.status().as_u16();
        response.into_body().collect().await.unwrap();
        status
    }
}

fn config(addresses: Addresses, http: SocketAddr, exporter_url: &str, processors: &str) -> String {
    format!(
        r#"
[service]
admin = "{admin}"

[gateway]
listen = "{gateway}"

[gateway.providers.local]
kind = "mock"
stream_chunk_delay = "150ms"

[[gateway.routes]]
model = "gpt-4o"
targets = [{{ provider = "local" }}]

[receivers.otlp]
http = "{http}"

[processors.batch]
timeout = "50ms"

[processors.mark]
type = "resource"
attributes = [{{ key = "sluice.reloaded", value = "yes", action = "upsert" }}]

[exporters.main]
type = "otlp_grpc"
endpoint = "{exporter_url}"

[pipelines.traces]
receivers = ["otlp", "gateway"]
processors = [{processors}]
exporters = ["main"]
"#,
        admin = addresses.admin,
        gateway = addresses.gateway,
    )
}

async fn post_reload(admin: SocketAddr) -> (u16, String) {
    let response = reqwest::Client::new()
        .post(format!("http://{admin}/reload"))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

fn status(admin: SocketAddr) -> Value {
    serde_json::from_str(&http_get(admin, "/status")).expect("/status is JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_moves_an_exporter_and_adds_a_processor_without_dropping_connections() {
    let old = Backend::grpc().await;
    let new = Backend::grpc().await;
    let addresses = Addresses::free();
    let http = local(free_port());
    let sluice = Sluice::start(
        &config(addresses, http, &old.url(), "\"batch\""),
        addresses.admin,
        &[addresses.gateway, http],
    );

    // A streamed chat answer, one chunk read, the rest still to come.
    let client = openai(addresses, "sk-test");
    let request = CreateChatCompletionRequestArgs::default()
        .model("gpt-4o")
        .messages(vec![
            ChatCompletionRequestUserMessageArgs::default()
                .content("Tell me a long story about pipelines")
                .build()
                .unwrap()
                .into(),
        ])
        .build()
        .unwrap();
    let mut stream = client.chat().create_stream(request).await.unwrap();
    stream.next().await.unwrap().expect("a first chunk");

    // OTLP over a kept-alive connection, before the reload.
    let mut otlp = KeptAlive::open(http).await;
    assert_eq!(otlp.export(spans_named("before", 20)).await, 200);
    old.recorder
        .wait_until("the spans sent before the reload", |r| {
            names_with(r, "before").len() == 20
        })
        .await;

    let before = status(addresses.admin)["config"]["sha256"].clone();
    std::fs::write(
        sluice.config_path(),
        config(addresses, http, &new.url(), "\"mark\", \"batch\""),
    )
    .unwrap();
    let (code, summary) = post_reload(addresses.admin).await;
    assert_eq!(code, 200, "{summary}");
    assert!(
        summary.contains("started [processor mark in traces]"),
        "{summary}"
    );
    assert!(summary.contains("replaced [exporter main]"), "{summary}");
    assert!(summary.contains("receiver gateway") && summary.contains("receiver otlp"));
    assert_ne!(status(addresses.admin)["config"]["sha256"], before);

    // The stream completes.
    let mut chunks_after_reload = 0;
    while let Some(chunk) = stream.next().await {
        chunk.expect("the stream continues across the reload");
        chunks_after_reload += 1;
    }
    assert!(chunks_after_reload > 0, "the reload happened mid-stream");

    // The same OTLP connection keeps working; its data goes through the new processor to the
    // new endpoint.
    assert_eq!(otlp.export(spans_named("after", 20)).await, 200);
    let received = new
        .recorder
        .wait_until("the spans sent after the reload", |r| {
            names_with(r, "after").len() == 20
        })
        .await;
    assert!(resource_has(&received, "after", "sluice.reloaded"));
    // The gateway's trace of the stream, finished after the reload, went to the new endpoint.
    new.recorder
        .wait_until("the gateway's spans of the stream", |r| {
            !names_with(r, "chat gpt-4o").is_empty()
        })
        .await;
    // Nothing lost, nothing misrouted.
    assert_eq!(names_with(&old.recorder.snapshot(), "before").len(), 20);
    assert!(names_with(&old.recorder.snapshot(), "after").is_empty());
    assert!(names_with(&new.recorder.snapshot(), "before").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_config_on_reload_changes_nothing_and_shows_in_status() {
    let backend = Backend::grpc().await;
    let addresses = Addresses::free();
    let http = local(free_port());
    let good = config(addresses, http, &backend.url(), "\"batch\"");
    let sluice = Sluice::start(&good, addresses.admin, &[addresses.gateway, http]);
    let sha = status(addresses.admin)["config"]["sha256"].clone();

    std::fs::write(
        sluice.config_path(),
        good.replace("timeout = \"50ms\"", "timeout = \"soon\""),
    )
    .unwrap();
    let (code, message) = post_reload(addresses.admin).await;
    assert_eq!(code, 400);
    assert!(message.contains("processors.batch.timeout"), "{message}");

    let report = status(addresses.admin);
    let error = report["config"]["last_reload_error"]
        .as_str()
        .unwrap_or_default();
    assert!(
        error.contains("sluice.toml:"),
        "the error names the file and line: {error}"
    );
    assert!(error.contains("processors.batch.timeout"), "{error}");
    assert_eq!(
        report["config"]["sha256"], sha,
        "the running config is unchanged"
    );
    assert_eq!(report["ready"], true);

    // Everything still runs: OTLP in, spans out.
    let mut otlp = KeptAlive::open(http).await;
    assert_eq!(otlp.export(spans_named("still", 5)).await, 200);
    backend
        .recorder
        .wait_until("spans after the refused reload", |r| {
            names_with(r, "still").len() == 5
        })
        .await;

    // SIGHUP with a fixed config reloads and clears the error.
    std::fs::write(
        sluice.config_path(),
        good.replace("timeout = \"50ms\"", "timeout = \"60ms\""),
    )
    .unwrap();
    sluice.hangup();
    wait_for("the SIGHUP reload", || {
        status(addresses.admin)["config"]["last_reload_error"].is_null()
    });
    assert_ne!(status(addresses.admin)["config"]["sha256"], sha);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_reloads_when_the_file_changes() {
    let old = Backend::grpc().await;
    let new = Backend::grpc().await;
    let (admin, grpc) = (local(free_port()), local(free_port()));
    let config = |url: String| {
        format!(
            "[service]\nadmin = \"{admin}\"\n[receivers.otlp]\ngrpc = \"{grpc}\"\n\
             [exporters.main]\ntype = \"otlp_grpc\"\nendpoint = \"{url}\"\n\
             [pipelines.traces]\nreceivers = [\"otlp\"]\nexporters = [\"main\"]\n"
        )
    };
    let sluice = Sluice::start_with_args(&config(old.url()), admin, &[grpc], &["--watch"]);
    std::fs::write(sluice.config_path(), config(new.url())).unwrap();
    wait_for("the watched file to be reloaded", || {
        sluice.stderr.text().contains("reloaded:")
    });
    let mut client = opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient::connect(format!("http://{grpc}"))
        .await
        .unwrap();
    client.export(spans_named("watched", 3)).await.unwrap();
    new.recorder
        .wait_until("spans at the new endpoint", |r| {
            names_with(r, "watched").len() == 3
        })
        .await;
    assert!(names_with(&old.recorder.snapshot(), "watched").is_empty());
}

fn string_attribute(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.to_string())),
        }),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tap_streams_what_leaves_a_component_and_the_token_guards_the_admin_api() {
    let backend = Backend::grpc().await;
    let (admin, grpc) = (local(free_port()), local(free_port()));
    let config = format!(
        "[service]\nadmin = \"{admin}\"\nadmin_token = \"let-me-in\"\n\
         [receivers.otlp]\ngrpc = \"{grpc}\"\n[processors.batch]\ntimeout = \"20ms\"\n\
         [exporters.main]\ntype = \"otlp_grpc\"\nendpoint = \"{url}\"\n\
         [pipelines.traces]\nreceivers = [\"otlp\"]\nprocessors = [\"batch\"]\nexporters = [\"main\"]\n",
        url = backend.url()
    );
    let _sluice = Sluice::start(&config, admin, &[grpc]);
    let http = reqwest::Client::new();

    // Probes need no token; everything else does.
    assert_eq!(http_get(admin, "/healthz"), "ok\n");
    assert_eq!(http_get(admin, "/readyz"), "ready\n");
    let refused = http
        .get(format!("http://{admin}/status"))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status().as_u16(), 401);
    let wrong = http
        .get(format!("http://{admin}/metrics"))
        .bearer_auth("guess")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status().as_u16(), 401);

    let mut tap = http
        .get(format!(
            "http://{admin}/tap?component=batch&limit=2&where=team%3Dblue"
        ))
        .bearer_auth("let-me-in")
        .send()
        .await
        .unwrap();
    assert_eq!(tap.status().as_u16(), 200);

    let mut request = spans_named("tapped", 4);
    for (i, span) in request.resource_spans[0].scope_spans[0]
        .spans
        .iter_mut()
        .enumerate()
    {
        let team = if i % 2 == 0 { "blue" } else { "red" };
        span.attributes.push(string_attribute("team", team));
    }
    let mut client = opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient::connect(format!("http://{grpc}"))
        .await
        .unwrap();
    client.export(request).await.unwrap();

    let mut body = String::new();
    let read = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(chunk) = tap.chunk().await.unwrap() {
            body.push_str(&String::from_utf8_lossy(&chunk));
        }
    })
    .await;
    assert!(read.is_ok(), "the tap ends at its limit");
    let lines: Vec<Value> = body
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{body}");
    for line in &lines {
        assert_eq!(line["component"], "processor/batch");
        assert!(line["span"]["name"].as_str().unwrap().starts_with("tapped"));
        assert!(line.to_string().contains("blue") && !line.to_string().contains("\"red\""));
    }
    backend
        .recorder
        .wait_until("every span, tapped or not", |r| {
            names_with(r, "tapped").len() == 4
        })
        .await;

    let unknown = http
        .get(format!("http://{admin}/tap?component=nope"))
        .bearer_auth("let-me-in")
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status().as_u16(), 404);
    assert!(unknown.text().await.unwrap().contains("processor/batch"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_sluice_while_a_tap_is_open() {
    let backend = Backend::grpc().await;
    let (admin, grpc) = (local(free_port()), local(free_port()));
    let config = format!(
        "[service]\nadmin = \"{admin}\"\n[receivers.otlp]\ngrpc = \"{grpc}\"\n\
         [exporters.main]\ntype = \"otlp_grpc\"\nendpoint = \"{url}\"\n\
         [pipelines.traces]\nreceivers = [\"otlp\"]\nexporters = [\"main\"]\n",
        url = backend.url()
    );
    let mut sluice = Sluice::start(&config, admin, &[grpc]);
    // A viewer with no limit, which would never hang up by itself.
    let mut tap = reqwest::Client::new()
        .get(format!("http://{admin}/tap?component=otlp"))
        .send()
        .await
        .unwrap();
    assert_eq!(tap.status().as_u16(), 200);
    let stopped = tokio::task::spawn_blocking(move || sluice.terminate());
    let status = tokio::time::timeout(Duration::from_secs(30), stopped)
        .await
        .expect("sluice stops within 30 s although a tap is open")
        .unwrap();
    assert!(status.success(), "{status}");
    // The tap's stream ended rather than being cut.
    assert!(matches!(tap.chunk().await, Ok(None) | Err(_)));
}
