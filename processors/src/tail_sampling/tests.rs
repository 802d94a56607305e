//! The processor through its `Consumer` interface, on paused time: deadlines are exact and no
//! test sleeps for real.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;

use bytes::Bytes;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};
use prost::Message;
use sluice_pipeline::Request;
use sluice_pipeline::config::ComponentKind;

use super::*;

fn settings(toml: &str) -> ComponentSettings {
    ComponentSettings::new(
        ComponentKind::Processor,
        "tail_sampling",
        "tail_sampling",
        toml::from_str(toml).expect("test TOML is valid"),
    )
}

const POLICIES: &str = r#"
[[policies]]
name = "errors"
type = "status_code"
status_codes = ["ERROR"]
[[policies]]
name = "expensive"
type = "numeric_attribute"
key = "gen_ai.usage.output_tokens"
min_value = 4000
[[policies]]
name = "no-health"
type = "drop"
[[policies.drop_sub_policy]]
type = "string_attribute"
key = "http.route"
values = ["/health"]
"#;

/// The config with `extra` top-level keys before the policies above.
fn config(extra: &str) -> String {
    format!("{extra}\n{POLICIES}")
}

#[test]
fn defaults_are_the_documented_ones() {
    let (config, policies) = TailSamplingConfig::from_settings(&settings(
        "[[policies]]\nname = \"all\"\ntype = \"always_sample\"",
    ))
    .unwrap();
    assert_eq!(config.decision_wait, Duration::from_secs(30));
    assert_eq!(config.num_traces, 50_000);
    assert_eq!(config.max_buffered_spans, 200_000);
    assert_eq!(config.max_spans_per_trace, 10_000);
    assert_eq!(config.decision_cache, DecisionCacheConfig::default());
    assert_eq!(config.decision_cache.sampled_size, 100_000);
    assert_eq!(config.decision_cache.non_sampled_size, 100_000);
    assert!(!config.record_policy);
    assert_eq!(policies.len(), 1);
}

#[test]
fn readme_and_issue_examples_parse() {
    let readme = include_str!("../../README.md");
    let section = readme
        .split("## `tail_sampling`")
        .nth(1)
        .expect("the README has a tail_sampling section");
    let example = section
        .split("```toml\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("the section has a TOML example");
    let issue_example = r#"
[processors.tail_sampling]
decision_wait = "10s"
num_traces = 50000
[[processors.tail_sampling.policies]]
name = "errors"
type = "status_code"
status_codes = ["ERROR"]
[[processors.tail_sampling.policies]]
name = "expensive"
type = "numeric_attribute"
key = "gen_ai.usage.output_tokens"
min_value = 4000
"#;
    for text in [example, issue_example] {
        let file: toml::Table = toml::from_str(text).unwrap();
        for (id, table) in file["processors"].as_table().unwrap() {
            let mut table = table.as_table().unwrap().clone();
            table.remove("type");
            let settings = ComponentSettings {
                table,
                ..settings("")
            };
            TailSamplingConfig::from_settings(&settings).unwrap_or_else(|e| panic!("{id}: {e}"));
        }
    }
}

#[test]
fn config_errors_name_the_key() {
    for (toml, path) in [
        (
            "decision_wait = \"0s\"",
            "processors.tail_sampling.decision_wait",
        ),
        (
            "decision_wait = \"soon\"",
            "processors.tail_sampling.decision_wait",
        ),
        ("num_traces = 0", "processors.tail_sampling.num_traces"),
        (
            "max_buffered_spans = 10\nmax_spans_per_trace = 11",
            "processors.tail_sampling.max_spans_per_trace",
        ),
        (
            "decision_cache = { sampled_size = 1, sampled = 2 }",
            "processors.tail_sampling.decision_cache.sampled",
        ),
        ("num_trace = 5", "processors.tail_sampling.num_trace"),
    ] {
        let error = TailSamplingConfig::from_settings(&settings(&config(toml))).unwrap_err();
        assert_eq!(error.path.to_string(), path, "{toml}: {error}");
    }
    let error = TailSamplingConfig::from_settings(&settings("decision_wait = \"1s\"")).unwrap_err();
    assert_eq!(error.path.to_string(), "processors.tail_sampling.policies");
    // The Collector's cache key names are accepted.
    let (config, _) = TailSamplingConfig::from_settings(&settings(&config(
        "decision_cache = { sampled_cache_size = 7, non_sampled_cache_size = 8 }",
    )))
    .unwrap();
    assert_eq!(
        config.decision_cache,
        DecisionCacheConfig {
            sampled_size: 7,
            non_sampled_size: 8
        }
    );
}

/// A downstream consumer that records what it takes, and can refuse from a script.
#[derive(Default)]
struct Recorder {
    taken: Mutex<Vec<(Instant, ExportTraceServiceRequest)>>,
    script: Mutex<VecDeque<ConsumeError>>,
    /// The answer once the script is used up; `None` takes the batch.
    always: Mutex<Option<ConsumeError>>,
    taken_signal: Notify,
}

#[async_trait]
impl Consumer for Recorder {
    async fn consume(&self, batch: Batch) -> Result<(), ConsumeError> {
        let scripted = self.script.lock().unwrap().pop_front();
        if let Some(error) = scripted.or_else(|| self.always.lock().unwrap().clone()) {
            return Err(error);
        }
        let Request::Traces(request) = batch.into_request().unwrap() else {
            panic!("traces only")
        };
        self.taken.lock().unwrap().push((Instant::now(), request));
        self.taken_signal.notify_waiters();
        Ok(())
    }
}

impl Recorder {
    /// Span names by trace (the first byte of the trace id), as released so far.
    fn traces(&self) -> BTreeMap<u8, Vec<String>> {
        let mut traces = BTreeMap::<u8, Vec<String>>::new();
        for (_, request) in self.taken.lock().unwrap().iter() {
            for rs in &request.resource_spans {
                for ss in &rs.scope_spans {
                    for span in &ss.spans {
                        traces
                            .entry(span.trace_id[0])
                            .or_default()
                            .push(span.name.clone());
                    }
                }
            }
        }
        traces.values_mut().for_each(|names| names.sort());
        traces
    }

    fn requests(&self) -> Vec<(Instant, ExportTraceServiceRequest)> {
        self.taken.lock().unwrap().clone()
    }

    /// Waits (in paused time, so instantly) until at least `count` requests were taken.
    async fn wait_for_requests(&self, count: usize) {
        let wait = async {
            loop {
                let notified = self.taken_signal.notified();
                if self.taken.lock().unwrap().len() >= count {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(Duration::from_secs(3600), wait)
            .await
            .expect("the requests arrive");
    }
}

struct Harness {
    processor: Arc<dyn RunningProcessor>,
    next: Arc<Recorder>,
    telemetry: Telemetry,
}

async fn start(toml: &str) -> Harness {
    let telemetry = Telemetry::new();
    let next = Arc::new(Recorder::default());
    let processor = Box::new(TailSampling::from_settings(&settings(toml)).unwrap())
        .start(ProcessorContext {
            id: "tail_sampling".to_string(),
            pipeline: "traces".to_string(),
            signal: Signal::Traces,
            next: next.clone(),
            telemetry: telemetry.clone(),
        })
        .await
        .unwrap();
    Harness {
        processor,
        next,
        telemetry,
    }
}

impl Harness {
    fn metric(&self, series: &str) -> f64 {
        let text = self.telemetry.render();
        text.lines()
            .filter(|line| line.starts_with(series))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    fn dropped(&self) -> u64 {
        self.telemetry
            .processor_dropped("tail_sampling", Signal::Traces)
            .get()
    }

    async fn send(&self, spans: Vec<Span>) {
        self.processor.consume(request(spans)).await.unwrap();
    }
}

/// A span of trace `trace` (its id is 16 bytes of `trace`).
fn span(trace: u8, name: &str) -> Span {
    Span {
        trace_id: vec![trace; 16],
        span_id: name.bytes().chain(std::iter::repeat(0)).take(8).collect(),
        name: name.to_string(),
        start_time_unix_nano: 1_000_000_000,
        end_time_unix_nano: 1_001_000_000,
        ..Default::default()
    }
}

fn error_span(trace: u8, name: &str) -> Span {
    Span {
        status: Some(Status {
            code: StatusCode::Error as i32,
            message: "boom".to_string(),
        }),
        ..span(trace, name)
    }
}

fn with_attribute(mut span: Span, key: &str, value: any_value::Value) -> Span {
    span.attributes.push(KeyValue {
        key: key.to_string(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    });
    span
}

fn resource(service: &str) -> Resource {
    Resource {
        attributes: vec![KeyValue {
            key: "service.name".to_string(),
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue(service.to_string())),
            }),
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// An encoded request of `spans` under service `svc` and scope `lib`.
fn request(spans: Vec<Span>) -> Batch {
    request_from("svc", spans)
}

fn request_from(service: &str, spans: Vec<Span>) -> Batch {
    let request = ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(resource(service)),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "lib".to_string(),
                    version: "1.0".to_string(),
                    ..Default::default()
                }),
                spans,
                schema_url: "https://opentelemetry.io/schemas/1.26.0".to_string(),
            }],
            schema_url: "https://opentelemetry.io/schemas/1.26.0".to_string(),
        }],
    };
    Batch::from_encoded(Signal::Traces, Bytes::from(request.encode_to_vec())).unwrap()
}

fn names(list: &[&str]) -> Vec<String> {
    let mut names: Vec<String> = list.iter().map(|s| s.to_string()).collect();
    names.sort();
    names
}

#[tokio::test(start_paused = true)]
async fn traces_are_decided_when_decision_wait_has_passed_since_their_first_span() {
    let h = start(&config("decision_wait = \"10s\"")).await;
    let start = Instant::now();
    h.send(vec![span(1, "root"), span(2, "normal-root")]).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    // The rest of trace 1 arrives later, in another request: the error decides the trace.
    h.send(vec![error_span(1, "failed-call"), span(1, "child")])
        .await;
    h.next.wait_for_requests(1).await;
    let (sent_at, _) = h.next.requests()[0].clone();
    assert_eq!(sent_at - start, Duration::from_secs(10));
    assert_eq!(
        h.next.traces(),
        BTreeMap::from([(1, names(&["root", "failed-call", "child"]))]),
        "the whole error trace, and nothing of the normal one"
    );
    assert_eq!(h.dropped(), 1, "the normal trace's span");
    assert_eq!(
        h.metric("sluice_processor_tail_sampling_traces_total{decision=\"sampled\""),
        1.0
    );
    assert_eq!(
        h.metric("sluice_processor_tail_sampling_traces_total{decision=\"not_sampled\""),
        1.0
    );
    h.processor.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn released_spans_keep_their_resource_and_scope() {
    let h = start(&config("decision_wait = \"1s\"")).await;
    h.send(vec![error_span(1, "a")]).await;
    h.processor
        .consume(request_from("other-svc", vec![span(1, "b")]))
        .await
        .unwrap();
    h.next.wait_for_requests(1).await;
    let (_, request) = h.next.requests()[0].clone();
    assert_eq!(request.resource_spans.len(), 2);
    for (rs, (service, name)) in request
        .resource_spans
        .iter()
        .zip([("svc", "a"), ("other-svc", "b")])
    {
        assert_eq!(rs.resource, Some(resource(service)));
        assert_eq!(rs.schema_url, "https://opentelemetry.io/schemas/1.26.0");
        let ss = &rs.scope_spans[0];
        assert_eq!(ss.scope.as_ref().unwrap().name, "lib");
        assert_eq!(ss.scope.as_ref().unwrap().version, "1.0");
        assert_eq!(ss.spans.len(), 1);
        assert_eq!(ss.spans[0].name, name);
        // The span itself is unchanged.
        assert_eq!(
            ss.spans[0].status.as_ref().map(|s| s.code),
            (name == "a").then_some(2)
        );
    }
    h.processor.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn any_drop_wins_else_any_sample_else_not_sampled() {
    let h = start(&config("decision_wait = \"1s\"")).await;
    let health = |s: Span| {
        with_attribute(
            s,
            "http.route",
            any_value::Value::StringValue("/health".into()),
        )
    };
    let tokens = |s: Span, n: i64| {
        with_attribute(
            s,
            "gen_ai.usage.output_tokens",
            any_value::Value::IntValue(n),
        )
    };
    h.send(vec![
        // 1: an error on a health check: dropped, although "errors" samples it.
        health(error_span(1, "health-error")),
        // 2: expensive: sampled by "expensive".
        tokens(span(2, "llm"), 4500),
        // 3: cheap and fine: nothing samples it.
        tokens(span(3, "llm"), 100),
        // 4: an error and expensive: sampled (by "errors", the first).
        tokens(error_span(4, "llm"), 9000),
    ])
    .await;
    h.next.wait_for_requests(1).await;
    assert_eq!(
        h.next.traces(),
        BTreeMap::from([(2, names(&["llm"])), (4, names(&["llm"]))])
    );
    let votes = |policy: &str, decision: &str| {
        h.metric(&format!(
            "sluice_processor_tail_sampling_policy_decisions_total{{decision=\"{decision}\",policy=\"{policy}\""
        ))
    };
    assert_eq!(votes("errors", "sampled"), 2.0);
    assert_eq!(votes("errors", "not_sampled"), 2.0);
    assert_eq!(votes("expensive", "sampled"), 2.0);
    assert_eq!(votes("no-health", "dropped"), 1.0);
    assert_eq!(votes("no-health", "not_sampled"), 3.0);
    assert_eq!(h.dropped(), 2);
    h.processor.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn record_policy_names_the_first_policy_that_sampled() {
    let h = start(&config("decision_wait = \"1s\"\nrecord_policy = true")).await;
    let tokens = |s: Span, n: i64| {
        with_attribute(
            s,
            "gen_ai.usage.output_tokens",
            any_value::Value::IntValue(n),
        )
    };
    h.send(vec![
        tokens(span(1, "expensive"), 5000),
        span(1, "sibling"),
        tokens(error_span(2, "both"), 5000),
    ])
    .await;
    h.next.wait_for_requests(1).await;
    let mut recorded = BTreeMap::new();
    for (_, request) in h.next.requests() {
        for span in request
            .resource_spans
            .iter()
            .flat_map(|rs| &rs.scope_spans)
            .flat_map(|ss| &ss.spans)
        {
            let policy = span
                .attributes
                .iter()
                .filter(|kv| kv.key == POLICY_ATTRIBUTE)
                .map(|kv| kv.value.clone())
                .collect::<Vec<_>>();
            recorded.insert(span.name.clone(), policy);
        }
    }
    let value = |name: &str| {
        vec![Some(AnyValue {
            value: Some(any_value::Value::StringValue(name.to_string())),
        })]
    };
    assert_eq!(recorded["expensive"], value("expensive"));
    assert_eq!(
        recorded["sibling"],
        value("expensive"),
        "every span of the trace"
    );
    assert_eq!(recorded["both"], value("errors"));
    h.processor.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn late_spans_follow_the_cached_decision_and_are_counted() {
    let h = start(&config("decision_wait = \"1s\"\nrecord_policy = true")).await;
    h.send(vec![error_span(1, "root"), span(2, "normal")]).await;
    h.next.wait_for_requests(1).await;
    assert_eq!(h.next.traces(), BTreeMap::from([(1, names(&["root"]))]));

    // After the decision: the sampled trace's span is sent, the other's dropped.
    h.send(vec![span(1, "late"), span(2, "late")]).await;
    h.next.wait_for_requests(2).await;
    assert_eq!(
        h.next.traces(),
        BTreeMap::from([(1, names(&["root", "late"]))])
    );
    let late_span = &h.next.requests()[1].1.resource_spans[0].scope_spans[0].spans[0];
    assert!(
        late_span
            .attributes
            .iter()
            .any(|kv| kv.key == POLICY_ATTRIBUTE),
        "a late span carries the policy too"
    );
    assert_eq!(
        h.metric("sluice_processor_tail_sampling_late_spans_total{decision=\"sampled\""),
        1.0
    );
    assert_eq!(
        h.metric("sluice_processor_tail_sampling_late_spans_total{decision=\"not_sampled\""),
        1.0
    );
    assert_eq!(h.dropped(), 2);
    assert_eq!(
        h.metric("sluice_processor_tail_sampling_buffered_traces"),
        0.0,
        "late spans start no trace"
    );
    h.processor.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn the_decision_cache_forgets_its_oldest_entries_beyond_its_size() {
    let h = start(&config(
        "decision_wait = \"1s\"\ndecision_cache = { sampled_size = 1, non_sampled_size = 0 }",
    ))
    .await;
    h.send(vec![error_span(1, "a")]).await;
    tokio::time::sleep(Duration::from_millis(10)).await;
    h.send(vec![error_span(2, "b")]).await;
    h.next.wait_for_requests(2).await;
    // Trace 1 was pushed out of the cache by trace 2: its late span starts a new trace, which
    // (without the error span) is not sampled. Trace 2's late span follows the cache.
    h.send(vec![span(1, "late"), span(2, "late")]).await;
    assert_eq!(
        h.metric("sluice_processor_tail_sampling_buffered_traces"),
        1.0
    );
    h.processor.shutdown().await;
    assert_eq!(
        h.next.traces(),
        BTreeMap::from([(1, names(&["a"])), (2, names(&["b", "late"]))])
    );
}

#[tokio::test(start_paused = true)]
async fn when_num_traces_is_reached_the_oldest_trace_is_decided_early_not_lost() {
    let h = start(&config("decision_wait = \"60s\"\nnum_traces = 2")).await;
    let start = Instant::now();
    h.send(vec![error_span(1, "first")]).await;
    h.send(vec![span(2, "second")]).await;
    h.send(vec![error_span(3, "third")]).await;
    // Trace 1 was decided (and sampled) at once to make room, long before its deadline.
    h.next.wait_for_requests(1).await;
    assert!(h.next.requests()[0].0 - start < Duration::from_secs(1));
    assert_eq!(h.next.traces(), BTreeMap::from([(1, names(&["first"]))]));
    assert_eq!(
        h.metric("sluice_processor_tail_sampling_traces_decided_early_total{processor=\"tail_sampling\",reason=\"num_traces\"}"),
        1.0
    );
    assert_eq!(
        h.metric("sluice_processor_tail_sampling_buffered_traces"),
        2.0
    );
    // The others keep their own deadline.
    h.next.wait_for_requests(2).await;
    assert_eq!(h.next.requests()[1].0 - start, Duration::from_secs(60));
    assert_eq!(
        h.next.traces(),
        BTreeMap::from([(1, names(&["first"])), (3, names(&["third"]))])
    );
    h.processor.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn when_max_buffered_spans_is_reached_the_oldest_traces_are_decided_early() {
    let h = start(&config(
        "decision_wait = \"60s\"\nmax_buffered_spans = 5\nmax_spans_per_trace = 5",
    ))
    .await;
    h.send(vec![error_span(1, "a1"), span(1, "a2")]).await;
    h.send(vec![span(2, "b1"), error_span(2, "b2")]).await;
    assert_eq!(
        h.metric("sluice_processor_tail_sampling_buffered_spans"),
        4.0
    );
    // Two more spans make 6: trace 1 (the oldest) goes, leaving 4.
    h.send(vec![span(3, "c1"), span(3, "c2")]).await;
    assert_eq!(
        h.metric("sluice_processor_tail_sampling_buffered_spans"),
        4.0
    );
    assert_eq!(
        h.metric("sluice_processor_tail_sampling_buffered_traces"),
        2.0
    );
    h.next.wait_for_requests(1).await;
    assert_eq!(h.next.traces(), BTreeMap::from([(1, names(&["a1", "a2"]))]));
    assert_eq!(
        h.metric("sluice_processor_tail_sampling_traces_decided_early_total{processor=\"tail_sampling\",reason=\"max_buffered_spans\"}"),
        1.0
    );
    h.processor.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_trace_reaching_the_per_trace_cap_is_decided_early_and_the_rest_kept() {
    let h = start(&config(
        "decision_wait = \"60s\"\nmax_buffered_spans = 10\nmax_spans_per_trace = 4",
    ))
    .await;
    let start = Instant::now();
    h.send(vec![error_span(9, "small")]).await;
    // An enormous error trace: decided when it reaches 4 spans; its later spans follow.
    let big: Vec<Span> = (0..12)
        .map(|i| {
            if i == 0 {
                error_span(1, "big-0")
            } else {
                span(1, &format!("big-{i}"))
            }
        })
        .collect();
    h.send(big).await;
    h.next.wait_for_requests(1).await;
    assert!(h.next.requests()[0].0 - start < Duration::from_secs(1));
    assert_eq!(
        h.next.traces()[&1].len(),
        12,
        "every span of the big trace is sent"
    );
    assert_eq!(
        h.metric("sluice_processor_tail_sampling_traces_decided_early_total{processor=\"tail_sampling\",reason=\"max_spans_per_trace\"}"),
        1.0
    );
    assert_eq!(
        h.metric("sluice_processor_tail_sampling_late_spans_total{decision=\"sampled\""),
        8.0
    );
    // The small trace was not pushed out: it waits for its own deadline.
    assert_eq!(
        h.metric("sluice_processor_tail_sampling_traces_decided_early_total{processor=\"tail_sampling\",reason=\"max_buffered_spans\"}"),
        0.0
    );
    assert_eq!(
        h.metric("sluice_processor_tail_sampling_buffered_traces"),
        1.0
    );
    h.next.wait_for_requests(2).await;
    assert_eq!(
        h.next.requests().last().unwrap().0 - start,
        Duration::from_secs(60)
    );
    assert_eq!(h.next.traces()[&9], names(&["small"]));
    h.processor.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn shutdown_decides_every_buffered_trace_now_and_flushes_it() {
    let h = start(&config("decision_wait = \"60s\"")).await;
    h.send(vec![error_span(1, "a"), span(2, "b"), error_span(3, "c")])
        .await;
    h.processor.shutdown().await;
    assert_eq!(
        h.next.traces(),
        BTreeMap::from([(1, names(&["a"])), (3, names(&["c"]))])
    );
    assert_eq!(
        h.metric("sluice_processor_tail_sampling_traces_decided_early_total{processor=\"tail_sampling\",reason=\"shutdown\"}"),
        3.0
    );
    assert_eq!(
        h.metric("sluice_processor_tail_sampling_buffered_spans"),
        0.0
    );
    assert_eq!(
        h.processor.consume(request(vec![span(4, "x")])).await,
        Err(ConsumeError::ShuttingDown)
    );
}

#[tokio::test(start_paused = true)]
async fn a_retryable_refusal_is_retried_until_taken() {
    let h = start(&config("decision_wait = \"1s\"")).await;
    h.next
        .script
        .lock()
        .unwrap()
        .extend((0..3).map(|_| ConsumeError::Backpressure("full".into())));
    let start = Instant::now();
    h.send(vec![error_span(1, "a")]).await;
    h.next.wait_for_requests(1).await;
    // Refused three times: waits of 5, 10 and 20ms after the deadline.
    assert_eq!(h.next.requests()[0].0 - start, Duration::from_millis(1035));
    assert_eq!(h.dropped(), 0);
    h.processor.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn what_the_next_component_still_refuses_at_shutdown_is_dropped_and_counted() {
    let h = start(&config("decision_wait = \"1s\"")).await;
    *h.next.always.lock().unwrap() = Some(ConsumeError::Backpressure("full".into()));
    h.send(vec![error_span(1, "a"), span(1, "b")]).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    h.send(vec![error_span(2, "c")]).await;
    h.processor.shutdown().await;
    assert_eq!(h.dropped(), 3);
    assert!(h.next.requests().is_empty());
}

#[tokio::test(start_paused = true)]
async fn receivers_are_told_to_retry_while_sampled_spans_wait_for_the_next_component() {
    let h = start(&config(
        "decision_wait = \"1s\"\nmax_buffered_spans = 4\nmax_spans_per_trace = 4",
    ))
    .await;
    *h.next.always.lock().unwrap() = Some(ConsumeError::Backpressure("full".into()));
    h.send((0..4).map(|i| error_span(1, &format!("s{i}"))).collect())
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let refused = h.processor.consume(request(vec![span(2, "x")])).await;
    assert!(
        matches!(refused, Err(ConsumeError::Backpressure(_))),
        "{refused:?}"
    );
    // Once the next component takes them, spans are accepted again.
    *h.next.always.lock().unwrap() = None;
    h.next.wait_for_requests(1).await;
    tokio::task::yield_now().await;
    h.send(vec![span(2, "x")]).await;
    h.processor.shutdown().await;
    assert_eq!(h.dropped(), 1, "trace 2 is not sampled");
}

#[tokio::test(start_paused = true)]
async fn releases_are_batched_at_most_every_release_interval() {
    let h = start(&config("decision_wait = \"1s\"")).await;
    let start = Instant::now();
    // Ten error traces whose first spans are 10ms apart: the first goes at 1s, the other nine
    // together one release interval later.
    for i in 0..10u8 {
        h.send(vec![error_span(i, "s")]).await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    h.next.wait_for_requests(2).await;
    let requests = h.next.requests();
    assert_eq!(requests[0].0 - start, Duration::from_secs(1));
    assert_eq!(requests[1].0 - start, Duration::from_millis(1100));
    let spans = |r: &ExportTraceServiceRequest| {
        r.resource_spans
            .iter()
            .flat_map(|rs| &rs.scope_spans)
            .map(|ss| ss.spans.len())
            .sum::<usize>()
    };
    assert_eq!(spans(&requests[0].1), 1);
    assert_eq!(spans(&requests[1].1), 9);
    h.processor.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn two_instances_of_one_processor_share_the_gauges() {
    let telemetry = Telemetry::new();
    let mut processors = Vec::new();
    for pipeline in ["traces", "traces/2"] {
        let processor = Box::new(
            TailSampling::from_settings(&settings(&config("decision_wait = \"1s\""))).unwrap(),
        )
        .start(ProcessorContext {
            id: "tail_sampling".to_string(),
            pipeline: pipeline.to_string(),
            signal: Signal::Traces,
            next: Arc::new(Recorder::default()),
            telemetry: telemetry.clone(),
        })
        .await
        .unwrap();
        processors.push(processor);
    }
    processors[0]
        .consume(request(vec![span(1, "a"), span(2, "b")]))
        .await
        .unwrap();
    processors[1]
        .consume(request(vec![span(3, "c")]))
        .await
        .unwrap();
    let gauge = || {
        telemetry
            .gauge_vec(
                "sluice_processor_tail_sampling_buffered_traces",
                "",
                &["processor"],
            )
            .with_label_values(&["tail_sampling"])
            .get()
    };
    assert_eq!(gauge(), 3);
    for p in processors {
        p.shutdown().await;
    }
    assert_eq!(gauge(), 0);
}
