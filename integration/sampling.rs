//! End to end: the `probabilistic_sampler` and `tail_sampling` processors in the running binary.
//!
//! Spans go in over OTLP/gRPC (tonic's generated client, so the test controls every trace id
//! and timestamp) and come out at a recording OTLP/gRPC backend.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use common::backends::{Backend, Received};
use common::{Sluice, free_port};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn request(spans: Vec<Span>) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![attribute(
                    "service.name",
                    any_value::Value::StringValue("agent".into()),
                )],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

fn attribute(key: &str, value: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

/// Every span received, as (trace id, span name) → the `sluice.sampling.policy` it carries.
fn spans_by_trace(received: &Received) -> BTreeMap<(Vec<u8>, String), Option<String>> {
    let mut spans = BTreeMap::new();
    for request in &received.traces {
        for rs in &request.resource_spans {
            assert_eq!(
                rs.resource.as_ref().map(|r| r.attributes.len()),
                Some(1),
                "released spans keep their resource"
            );
            for span in rs.scope_spans.iter().flat_map(|ss| &ss.spans) {
                let policy = span
                    .attributes
                    .iter()
                    .find(|kv| kv.key == "sluice.sampling.policy")
                    .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                        any_value::Value::StringValue(s) => Some(s.clone()),
                        _ => None,
                    });
                let previous = spans.insert((span.trace_id.clone(), span.name.clone()), policy);
                assert!(previous.is_none(), "span {} received twice", span.name);
            }
        }
    }
    spans
}

/// Builds the spans of the tail sampling scenario. Times are in ms from a fixed origin.
struct TraceBuilder {
    id: Vec<u8>,
}

const ORIGIN_NANOS: u64 = 1_750_000_000_000_000_000;

impl TraceBuilder {
    fn new(n: u8) -> TraceBuilder {
        TraceBuilder {
            id: [[n; 8], [0xab; 8]].concat(),
        }
    }

    fn span(&self, name: &str, start_ms: u64, end_ms: u64) -> Span {
        Span {
            trace_id: self.id.clone(),
            span_id: name.bytes().chain(std::iter::repeat(7)).take(8).collect(),
            name: name.to_string(),
            start_time_unix_nano: ORIGIN_NANOS + start_ms * 1_000_000,
            end_time_unix_nano: ORIGIN_NANOS + end_ms * 1_000_000,
            attributes: vec![attribute(
                "gen_ai.usage.output_tokens",
                any_value::Value::IntValue(300),
            )],
            ..Default::default()
        }
    }
}

fn failed(mut span: Span) -> Span {
    span.status = Some(Status {
        code: StatusCode::Error as i32,
        message: "upstream 500".into(),
    });
    span
}

fn tokens(mut span: Span, output_tokens: i64) -> Span {
    span.attributes = vec![attribute(
        "gen_ai.usage.output_tokens",
        any_value::Value::IntValue(output_tokens),
    )];
    span
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_sampling_keeps_exactly_the_selected_traces_complete_with_late_spans() {
    let backend = Backend::grpc().await;
    let (admin, grpc) = (local(free_port()), local(free_port()));
    let config = format!(
        r#"
[service]
admin = "{admin}"
[receivers.otlp]
grpc = "{grpc}"
[processors.tail_sampling]
decision_wait = "1s"
record_policy = true
[[processors.tail_sampling.policies]]
name = "errors"
type = "status_code"
status_codes = ["ERROR"]
[[processors.tail_sampling.policies]]
name = "slow"
type = "latency"
threshold = "2s"
[[processors.tail_sampling.policies]]
name = "expensive"
type = "numeric_attribute"
key = "gen_ai.usage.output_tokens"
min_value = 4001
[exporters.backend]
type = "otlp_grpc"
endpoint = "{url}"
[pipelines.traces]
receivers = ["otlp"]
processors = ["tail_sampling"]
exporters = ["backend"]
"#,
        url = backend.url(),
    );
    let mut sluice = Sluice::start(&config, admin, &[grpc]);
    let mut client = TraceServiceClient::connect(format!("http://{grpc}"))
        .await
        .unwrap();

    let error = TraceBuilder::new(1);
    let slow = TraceBuilder::new(2);
    let expensive = TraceBuilder::new(3);
    let normals: Vec<TraceBuilder> = (10..15).map(TraceBuilder::new).collect();
    let borderline = TraceBuilder::new(20);

    // First request: the beginning of every trace.
    let mut first = vec![
        error.span("error/root", 0, 900),
        error.span("error/retrieve", 10, 200),
        failed(error.span("error/llm", 200, 880)),
        slow.span("slow/root", 0, 900),
        slow.span("slow/llm", 100, 800),
        expensive.span("expensive/root", 0, 1500),
        tokens(expensive.span("expensive/llm", 10, 1400), 5000),
        tokens(borderline.span("borderline/llm", 0, 1000), 4000),
    ];
    for (i, n) in normals.iter().enumerate() {
        first.push(n.span(&format!("normal{i}/root"), 0, 1000));
        first.push(n.span(&format!("normal{i}/llm"), 5, 990));
    }
    client.export(request(first)).await.unwrap();
    // Second request, before the decision: more spans of the same traces. The slow trace's
    // last span makes it slow (0 → 3000 ms); alone, its first spans are not.
    client
        .export(request(vec![
            error.span("error/late-tool", 880, 895),
            slow.span("slow/late-tool", 900, 3000),
            normals[0].span("normal0/late-tool", 990, 999),
        ]))
        .await
        .unwrap();
    let late_series = "sluice_processor_tail_sampling_late_spans_total";
    assert_eq!(
        sluice.metric(late_series),
        0.0,
        "the second request must arrive within the 1 s decision_wait (is the machine overloaded?)"
    );

    let decided = backend
        .recorder
        .wait_until("the sampled traces", |r| r.span_count() >= 9)
        .await;
    let expected: BTreeMap<(Vec<u8>, String), Option<String>> = [
        (&error, "error/root", "errors"),
        (&error, "error/retrieve", "errors"),
        (&error, "error/llm", "errors"),
        (&error, "error/late-tool", "errors"),
        (&slow, "slow/root", "slow"),
        (&slow, "slow/llm", "slow"),
        (&slow, "slow/late-tool", "slow"),
        (&expensive, "expensive/root", "expensive"),
        (&expensive, "expensive/llm", "expensive"),
    ]
    .into_iter()
    .map(|(t, name, policy)| ((t.id.clone(), name.to_string()), Some(policy.to_string())))
    .collect();
    assert_eq!(spans_by_trace(&decided), expected);

    // After the decision: a late span of the sampled error trace follows it out, a late span
    // of a dropped normal trace is dropped.
    client
        .export(request(vec![
            error.span("error/after-decision", 900, 950),
            normals[1].span("normal1/after-decision", 1000, 1010),
        ]))
        .await
        .unwrap();
    let after = backend
        .recorder
        .wait_until("the late span of the error trace", |r| r.span_count() >= 10)
        .await;
    let mut expected = expected;
    expected.insert(
        (error.id.clone(), "error/after-decision".to_string()),
        Some("errors".to_string()),
    );
    assert_eq!(spans_by_trace(&after), expected);
    common::wait_for("the late spans to be counted", || {
        sluice.metric(late_series) == 2.0
    });
    let metrics = sluice.metrics();
    let value = |series: &str| common::metric_value(&metrics, series);
    assert_eq!(
        value(
            "sluice_processor_tail_sampling_late_spans_total{decision=\"sampled\",processor=\"tail_sampling\"}"
        ),
        1.0
    );
    assert_eq!(
        value(
            "sluice_processor_tail_sampling_traces_total{decision=\"sampled\",processor=\"tail_sampling\"}"
        ),
        3.0
    );
    assert_eq!(
        value(
            "sluice_processor_tail_sampling_traces_total{decision=\"not_sampled\",processor=\"tail_sampling\"}"
        ),
        6.0,
        "five normal traces and the borderline one (4000 tokens is not above 4000)"
    );
    assert_eq!(
        value(
            "sluice_processor_dropped_items_total{processor=\"tail_sampling\",signal=\"traces\"}"
        ),
        // 5 × 2 normal spans, normal0's late-tool, the borderline span, normal1's late span.
        13.0
    );
    assert_eq!(value("sluice_processor_tail_sampling_buffered_spans"), 0.0);

    // Shutting down flushes nothing more: exactly the selected traces were kept.
    assert!(sluice.terminate().success());
    assert_eq!(spans_by_trace(&backend.recorder.snapshot()), expected);
}

/// `count` trace ids from a fixed-seed SplitMix64.
fn random_trace_ids(count: usize, seed: u64) -> Vec<Vec<u8>> {
    let mut state = seed;
    let mut next = move || {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    (0..count)
        .map(|_| [next().to_le_bytes(), next().to_le_bytes()].concat())
        .collect()
}

/// The Collector's `probabilisticsampler` decision (hash_seed mode), written out here
/// independently of the processor: FNV-1a-32 over the little-endian seed and the trace id,
/// low 14 bits below percentage × 16384 / 100.
fn collector_keeps(seed: u32, percentage: f64, trace_id: &[u8]) -> bool {
    let hash = seed
        .to_le_bytes()
        .iter()
        .chain(trace_id)
        .fold(0x811c_9dc5u32, |h, &b| {
            (h ^ u32::from(b)).wrapping_mul(16_777_619)
        });
    hash & 0x3fff < (percentage * 16384.0 / 100.0) as u32
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probabilistic_sampling_keeps_ten_percent_and_two_instances_agree_on_every_trace() {
    const TRACES: usize = 100_000;
    const PER_REQUEST: usize = 5_000;
    let ids = random_trace_ids(TRACES, 0x5eed);

    let mut instances = Vec::new();
    for _ in 0..2 {
        let backend = Backend::grpc().await;
        let (admin, grpc) = (local(free_port()), local(free_port()));
        let config = format!(
            r#"
[service]
admin = "{admin}"
[receivers.otlp]
grpc = "{grpc}"
[processors.sample_10]
type = "probabilistic_sampler"
sampling_percentage = 10.0
hash_seed = 4242
[processors.batch]
timeout = "50ms"
[exporters.backend]
type = "otlp_grpc"
endpoint = "{url}"
[pipelines.traces]
receivers = ["otlp"]
processors = ["sample_10", "batch"]
exporters = ["backend"]
"#,
            url = backend.url(),
        );
        let sluice = Sluice::start(&config, admin, &[grpc]);
        let client = TraceServiceClient::connect(format!("http://{grpc}"))
            .await
            .unwrap();
        instances.push((sluice, backend, client));
    }

    let mut kept_sets = Vec::new();
    for (sluice, backend, client) in &mut instances {
        for chunk in ids.chunks(PER_REQUEST) {
            let spans = chunk
                .iter()
                .map(|id| Span {
                    trace_id: id.clone(),
                    span_id: id[..8].to_vec(),
                    name: "llm".into(),
                    ..Default::default()
                })
                .collect();
            client.export(request(spans)).await.unwrap();
        }
        let series = |name: &str| format!("{name}{{processor=\"sample_10\",signal=\"traces\"}}");
        common::wait_for("every span to be decided", || {
            sluice.metric(&series("sluice_processor_dropped_items_total"))
                + sluice.metric(&series(
                    "sluice_processor_probabilistic_sampler_sampled_items_total",
                ))
                == TRACES as f64
        });
        let sampled = sluice.metric(&series(
            "sluice_processor_probabilistic_sampler_sampled_items_total",
        )) as usize;
        let received = backend
            .recorder
            .wait_until("the sampled spans", |r| r.span_count() >= sampled)
            .await;
        let kept: BTreeSet<Vec<u8>> = received
            .traces
            .iter()
            .flat_map(|r| &r.resource_spans)
            .flat_map(|rs| &rs.scope_spans)
            .flat_map(|ss| &ss.spans)
            .map(|s| s.trace_id.clone())
            .collect();
        assert_eq!(kept.len(), sampled, "each kept trace arrives once");
        assert!(
            (9_000..=11_000).contains(&kept.len()),
            "10% of {TRACES} kept {}",
            kept.len()
        );
        kept_sets.push(kept);
    }
    assert_eq!(
        kept_sets[0], kept_sets[1],
        "two instances with the same seed keep the same traces"
    );
    // And they are the traces the Collector would keep with the same seed.
    let reference: BTreeSet<Vec<u8>> = ids
        .iter()
        .filter(|id| collector_keeps(4242, 10.0, id))
        .cloned()
        .collect();
    assert_eq!(kept_sets[0], reference);
}
