//! End to end: delivery when backends fail. A backend that is down for a while loses nothing
//! (retries until it is back), a throttling backend's `Retry-After` is honoured, a permanent
//! refusal drops only that exporter's batch, and `/status` tells each exporter's state.

mod common;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use common::backends::{Backend, Fault, Received};
use common::{Sluice, free_port, http_get, wait_for};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use serde_json::Value;

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A request of `count` spans whose span ids are `first..first + count`, unique across requests.
fn spans_numbered(first: u64, count: u64) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            scope_spans: vec![ScopeSpans {
                spans: (first..first + count)
                    .map(|n| Span {
                        trace_id: [7; 16].to_vec(),
                        span_id: (n + 1).to_be_bytes().to_vec(),
                        name: "delivery".to_string(),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// The distinct span ids a backend received, and how many spans it received in all.
fn distinct_and_total(received: &Received) -> (HashSet<Vec<u8>>, usize) {
    let mut distinct = HashSet::new();
    let mut total = 0;
    for span in received
        .traces
        .iter()
        .flat_map(|r| &r.resource_spans)
        .flat_map(|r| &r.scope_spans)
        .flat_map(|s| &s.spans)
    {
        distinct.insert(span.span_id.clone());
        total += 1;
    }
    (distinct, total)
}

async fn send(grpc: SocketAddr, first: u64, total: u64, per_request: u64) {
    let mut client = TraceServiceClient::connect(format!("http://{grpc}"))
        .await
        .expect("the receiver is listening");
    let mut next = first;
    while next < first + total {
        client
            .export(spans_numbered(next, per_request))
            .await
            .expect("sluice accepts the spans while the backends are down");
        next += per_request;
    }
}

fn status(admin: SocketAddr) -> Value {
    serde_json::from_str(&http_get(admin, "/status")).expect("/status is JSON")
}

fn exporter_state(admin: SocketAddr, exporter: &str) -> String {
    status(admin)["exporters"][exporter]["state"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backends_down_for_twenty_seconds_lose_nothing_once_they_are_back() {
    const SPANS: u64 = 50_000;
    let http_backend = Backend::http().await;
    let grpc_backend = Backend::grpc().await;
    http_backend.faults.set(Fault::unavailable());
    grpc_backend.faults.set(Fault::unavailable());
    let (admin, grpc) = (local(free_port()), local(free_port()));
    let config = format!(
        r#"
[service]
admin = "{admin}"
[receivers.otlp]
grpc = "{grpc}"
[processors.batch]
timeout = "100ms"
send_batch_size = 2000
[exporters.over_http]
type = "otlp_http"
endpoint = "{http}"
retry = {{ initial_interval = "500ms", max_interval = "2s", max_elapsed_time = "0s" }}
[exporters.over_grpc]
type = "otlp_grpc"
endpoint = "{grpc_backend}"
retry = {{ initial_interval = "500ms", max_interval = "2s", max_elapsed_time = "0s" }}
[pipelines.traces]
receivers = ["otlp"]
processors = ["batch"]
exporters = ["over_http", "over_grpc"]
"#,
        http = http_backend.url(),
        grpc_backend = grpc_backend.url(),
    );
    let sluice = Sluice::start(&config, admin, &[grpc]);

    let outage = tokio::time::Instant::now();
    send(grpc, 0, SPANS, 500).await;
    wait_for("both exporters to see the outage", || {
        exporter_state(admin, "over_http") == "Error"
            && exporter_state(admin, "over_grpc") == "Error"
    });
    tokio::time::sleep_until(outage + Duration::from_secs(20)).await;
    assert!(http_backend.faults.refused() > 0 && grpc_backend.faults.refused() > 0);
    http_backend.faults.clear();
    grpc_backend.faults.clear();

    for backend in [&http_backend, &grpc_backend] {
        let received = backend
            .recorder
            .wait_until("every span after the outage", |r| {
                distinct_and_total(r).0.len() as u64 == SPANS
            })
            .await;
        let (distinct, total) = distinct_and_total(&received);
        assert_eq!(distinct.len() as u64, SPANS);
        // Retries may deliver a batch twice when an answer is lost; here none were.
        println!("duplicates: {}", total - distinct.len());
    }
    let metrics = sluice.metrics();
    let failed = common::metric_value(&metrics, "sluice_exporter_send_failed_items_total");
    assert_eq!(failed, 0.0, "nothing was dropped:\n{metrics}");
    assert!(common::metric_value(&metrics, "sluice_exporter_retried_items_total") > 0.0);
    wait_for("both exporters to be connected again", || {
        exporter_state(admin, "over_http") == "Connected"
            && exporter_state(admin, "over_grpc") == "Connected"
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttling_backend_gets_no_request_before_its_retry_after() {
    let backend = Backend::http().await;
    backend.faults.set(Fault {
        http_status: 429,
        retry_after: Some("2"),
        times: Some(1),
        ..Fault::unavailable()
    });
    let (admin, grpc) = (local(free_port()), local(free_port()));
    let config = format!(
        r#"
[service]
admin = "{admin}"
[receivers.otlp]
grpc = "{grpc}"
[exporters.throttled]
type = "otlp_http"
endpoint = "{url}"
retry = {{ initial_interval = "100ms", jitter = 0.0 }}
[pipelines.traces]
receivers = ["otlp"]
exporters = ["throttled"]
"#,
        url = backend.url(),
    );
    let _sluice = Sluice::start(&config, admin, &[grpc]);
    send(grpc, 0, 10, 10).await;
    backend
        .recorder
        .wait_until("the spans after the throttle", |r| r.span_count() == 10)
        .await;
    let arrivals = backend.faults.arrivals();
    assert_eq!(arrivals.len(), 2, "one refused attempt, one accepted");
    assert!(arrivals[0].1 && !arrivals[1].1);
    let waited = arrivals[1].0 - arrivals[0].0;
    assert!(
        waited >= Duration::from_secs(2),
        "the retry came after {waited:?}, before Retry-After's 2 s"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanent_refusal_drops_only_that_exporters_batch() {
    let refusing = Backend::http().await;
    refusing.faults.set(Fault::bad_request());
    let healthy = Backend::grpc().await;
    let (admin, grpc) = (local(free_port()), local(free_port()));
    let config = format!(
        r#"
[service]
admin = "{admin}"
[receivers.otlp]
grpc = "{grpc}"
[exporters.refusing]
type = "otlp_http"
endpoint = "{refusing}"
[exporters.healthy]
type = "otlp_grpc"
endpoint = "{healthy}"
[pipelines.traces]
receivers = ["otlp"]
exporters = ["refusing", "healthy"]
"#,
        refusing = refusing.url(),
        healthy = healthy.url(),
    );
    let sluice = Sluice::start(&config, admin, &[grpc]);
    send(grpc, 0, 300, 100).await;
    healthy
        .recorder
        .wait_until("every span at the healthy backend", |r| {
            r.span_count() == 300
        })
        .await;
    wait_for("the refused spans to be counted", || {
        sluice.metric(
            "sluice_exporter_send_failed_items_total{exporter=\"refusing\",signal=\"traces\"}",
        ) == 300.0
    });
    // Refused once each: a permanent error is never retried.
    assert_eq!(refusing.faults.refused(), 3);
    let report = &status(admin)["exporters"]["refusing"];
    assert_eq!(report["state"], "Error");
    assert!(
        report["last_error"]
            .as_str()
            .unwrap_or_default()
            .contains("400"),
        "{report}"
    );
    assert!(
        sluice.stderr.text().contains("injected fault"),
        "the backend's own message is logged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_an_exporter_disconnected_then_connected_then_in_error() {
    let backend = Backend::http().await;
    let (admin, grpc) = (local(free_port()), local(free_port()));
    let config = format!(
        r#"
[service]
admin = "{admin}"
[receivers.otlp]
grpc = "{grpc}"
[exporters.primary]
type = "otlp_http"
endpoint = "{url}"
retry = {{ enabled = false }}
[exporters.standby]
type = "otlp_http"
endpoint = "{url}"
enabled = false
[pipelines.traces]
receivers = ["otlp"]
exporters = ["primary", "standby"]
"#,
        url = backend.url(),
    );
    let sluice = Sluice::start(&config, admin, &[grpc]);
    let initial = status(admin);
    assert_eq!(initial["exporters"]["primary"]["state"], "Disconnected");
    assert_eq!(initial["exporters"]["standby"]["state"], "Disconnected");
    assert_eq!(initial["exporters"]["standby"]["enabled"], false);
    assert_eq!(initial["config"]["sha256"].as_str().map(str::len), Some(64));

    send(grpc, 0, 5, 5).await;
    wait_for("primary to connect", || {
        exporter_state(admin, "primary") == "Connected"
    });
    assert_eq!(
        sluice.metric("sluice_exporter_up{exporter=\"primary\"}"),
        1.0
    );

    backend.faults.set(Fault::unavailable());
    send(grpc, 5, 5, 5).await;
    wait_for("primary to report the error", || {
        exporter_state(admin, "primary") == "Error"
    });
    let report = &status(admin)["exporters"]["primary"];
    assert!(
        report["last_error"]
            .as_str()
            .unwrap_or_default()
            .contains("503"),
        "{report}"
    );
    assert_eq!(report["consecutive_failures"], 1);
    assert!(report["last_error_time"].is_string());
    assert_eq!(
        sluice.metric("sluice_exporter_up{exporter=\"primary\"}"),
        0.0
    );
    // The disabled exporter sent nothing and stayed Disconnected; what reached it is counted.
    assert_eq!(exporter_state(admin, "standby"), "Disconnected");
    assert_eq!(backend.recorder.snapshot().span_count(), 5);
    assert_eq!(
        sluice.metric(
            "sluice_exporter_discarded_items_total{exporter=\"standby\",signal=\"traces\"}"
        ),
        10.0
    );
}

/// A config with one OTLP/HTTP exporter to `url` behind a disk queue in `queue_dir`, and
/// acknowledgements on.
fn disk_queue_config(admin: SocketAddr, grpc: SocketAddr, url: &str, queue_dir: &Path) -> String {
    format!(
        r#"
[service]
admin = "{admin}"
[receivers.otlp]
grpc = "{grpc}"
[exporters.durable]
type = "otlp_http"
endpoint = "{url}"
queue = {{ type = "disk", directory = "{dir}", max_items = 1000000 }}
retry = {{ initial_interval = "200ms", max_interval = "1s", max_elapsed_time = "0s" }}
[pipelines.traces]
receivers = ["otlp"]
exporters = ["durable"]
acknowledgements = true
"#,
        dir = queue_dir.display(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_spans_survive_sigkill_in_the_disk_queue() {
    const SPANS: u64 = 50_000;
    let backend = Backend::http().await;
    backend.faults.set(Fault::unavailable());
    let queue_dir = tempfile::tempdir().unwrap();
    let (admin, grpc) = (local(free_port()), local(free_port()));
    let config = disk_queue_config(admin, grpc, &backend.url(), queue_dir.path());

    let mut first = Sluice::start(&config, admin, &[grpc]);
    // Every export call returns only once its spans are on disk.
    send(grpc, 0, SPANS, 500).await;
    first.kill();
    assert_eq!(backend.recorder.snapshot().span_count(), 0);

    backend.faults.clear();
    let (admin, grpc) = (local(free_port()), local(free_port()));
    let config = disk_queue_config(admin, grpc, &backend.url(), queue_dir.path());
    let second = Sluice::start(&config, admin, &[grpc]);
    let received = backend
        .recorder
        .wait_until("every acknowledged span after the restart", |r| {
            distinct_and_total(r).0.len() as u64 == SPANS
        })
        .await;
    let (distinct, total) = distinct_and_total(&received);
    assert_eq!(distinct.len() as u64, SPANS);
    println!("duplicates after the crash: {}", total - distinct.len());
    assert!(second.stderr.text().contains("disk queue opened"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_disk_queue_starts_cleanly_and_delivers_every_intact_record() {
    const REQUESTS: u64 = 40;
    const PER_REQUEST: u64 = 50;
    let backend = Backend::http().await;
    backend.faults.set(Fault::unavailable());
    let queue_dir = tempfile::tempdir().unwrap();
    let (admin, grpc) = (local(free_port()), local(free_port()));
    let config = disk_queue_config(admin, grpc, &backend.url(), queue_dir.path());
    let mut first = Sluice::start(&config, admin, &[grpc]);
    send(grpc, 0, REQUESTS * PER_REQUEST, PER_REQUEST).await;
    first.terminate();

    // Damage the queue: flip a byte in the middle of the segment (one byte lies in one record,
    // so exactly one record is damaged) and cut the last record short.
    let exporter_dir = queue_dir.path().join("durable");
    let segment = std::fs::read_dir(&exporter_dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .find(|path| path.extension().is_some_and(|e| e == "seg"))
        .expect("a segment file");
    let mut bytes = std::fs::read(&segment).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    bytes.truncate(bytes.len() - 100);
    std::fs::write(&segment, &bytes).unwrap();

    backend.faults.clear();
    let (admin, grpc) = (local(free_port()), local(free_port()));
    let config = disk_queue_config(admin, grpc, &backend.url(), queue_dir.path());
    let second = Sluice::start(&config, admin, &[grpc]);
    // Two records are damaged (one flipped, one cut short); every other one arrives.
    let intact = (REQUESTS - 2) * PER_REQUEST;
    let received = backend
        .recorder
        .wait_until("every intact record", |r| {
            distinct_and_total(r).0.len() as u64 >= intact
        })
        .await;
    assert_eq!(distinct_and_total(&received).0.len() as u64, intact);
    wait_for("the skipped records to be counted", || {
        second.metric("sluice_exporter_disk_queue_skipped_records_total{exporter=\"durable\"}")
            == 2.0
    });
    assert!(second.stderr.text().contains("damaged records"));
}
