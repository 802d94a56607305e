use std::path::Path;
use std::sync::Mutex;

use async_trait::async_trait;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};

use super::*;
use crate::batch::Request;
use crate::component::{
    Exporter, ExporterFactory, Processor, ProcessorContext, ProcessorFactory, Receiver,
    ReceiverContext, ReceiverFactory, Running, RunningProcessor,
};
use crate::config::{ComponentSettings, load_str};
use crate::error::{ConsumeError, ExportError, StartError};

struct NeverStarted;
#[async_trait]
impl Receiver for NeverStarted {
    async fn start(self: Box<Self>, _: ReceiverContext) -> Result<Box<dyn Running>, StartError> {
        panic!("a config test starts no receiver")
    }
}
struct Receivers;
impl ReceiverFactory for Receivers {
    fn type_name(&self) -> &'static str {
        "in"
    }
    fn signals(&self) -> &'static [Signal] {
        &Signal::ALL
    }
    fn build(&self, _: &ComponentSettings) -> Result<Box<dyn Receiver>, ConfigError> {
        Ok(Box::new(NeverStarted))
    }
}

/// What the fake processors do to spans: tag them with their id, drop those with
/// `drop = true`, or hold everything until shutdown (as a batch processor does).
#[derive(Clone, Copy, PartialEq)]
enum Behaviour {
    Tag,
    Drop,
    Hold,
}

struct Fake {
    id: String,
    behaviour: Behaviour,
    next: Arc<dyn Consumer>,
    held: Mutex<Vec<Batch>>,
}

#[async_trait]
impl Consumer for Fake {
    async fn consume(&self, mut batch: Batch) -> Result<(), ConsumeError> {
        if self.behaviour == Behaviour::Hold {
            self.held.lock().unwrap().push(batch);
            return Ok(());
        }
        let (id, behaviour) = (self.id.clone(), self.behaviour);
        batch
            .modify(|request| {
                if let Request::Traces(traces) = request {
                    for scope in traces
                        .resource_spans
                        .iter_mut()
                        .flat_map(|r| &mut r.scope_spans)
                    {
                        match behaviour {
                            Behaviour::Tag => {
                                for span in &mut scope.spans {
                                    span.attributes.push(KeyValue {
                                        key: "tagged_by".into(),
                                        value: Some(AnyValue {
                                            value: Some(any_value::Value::StringValue(id.clone())),
                                        }),
                                        ..Default::default()
                                    });
                                }
                            }
                            _ => scope.spans.retain(|span| {
                                !span.attributes.iter().any(|kv| {
                                    kv.key == "drop"
                                        && kv.value.as_ref().and_then(|v| v.value.as_ref())
                                            == Some(&any_value::Value::BoolValue(true))
                                })
                            }),
                        }
                    }
                }
            })
            .map_err(|e| ConsumeError::Rejected(e.to_string()))?;
        let batch = Batch::from_request(batch.into_request().unwrap());
        if batch.is_empty() {
            return Ok(());
        }
        self.next.consume(batch).await
    }
}

#[async_trait]
impl Running for Fake {
    async fn shutdown(&self) {
        let held = std::mem::take(&mut *self.held.lock().unwrap());
        for batch in held {
            let _ = self.next.consume(batch).await;
        }
    }
}

struct FakeProcessor(Behaviour);
#[async_trait]
impl Processor for FakeProcessor {
    async fn start(
        self: Box<Self>,
        ctx: ProcessorContext,
    ) -> Result<Arc<dyn RunningProcessor>, StartError> {
        Ok(Arc::new(Fake {
            id: ctx.id,
            behaviour: self.0,
            next: ctx.next,
            held: Mutex::default(),
        }))
    }
}
struct Processors(&'static str, Behaviour);
impl ProcessorFactory for Processors {
    fn type_name(&self) -> &'static str {
        self.0
    }
    fn signals(&self) -> &'static [Signal] {
        &Signal::ALL
    }
    fn build(&self, _: &ComponentSettings) -> Result<Box<dyn Processor>, ConfigError> {
        Ok(Box::new(FakeProcessor(self.1)))
    }
}

/// Batches the configured exporters were asked to send: a config test must send none.
static EXPORTED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

struct Unreachable;
#[async_trait]
impl Exporter for Unreachable {
    async fn export(&self, _: Batch) -> Result<(), ExportError> {
        EXPORTED.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }
}
struct Exporters;
impl ExporterFactory for Exporters {
    fn type_name(&self) -> &'static str {
        "out"
    }
    fn signals(&self) -> &'static [Signal] {
        &Signal::ALL
    }
    fn build(&self, _: &ComponentSettings) -> Result<Box<dyn Exporter>, ConfigError> {
        Ok(Box::new(Unreachable))
    }
}

fn registry() -> Registry {
    let mut registry = Registry::new();
    registry.add_receiver(Receivers);
    registry.add_processor(Processors("tag", Behaviour::Tag));
    registry.add_processor(Processors("drop", Behaviour::Drop));
    registry.add_processor(Processors("hold", Behaviour::Hold));
    registry.add_exporter(Exporters);
    registry
}

const PIPELINES: &str = r#"[receivers.otlp]
type = "in"

[processors.tagger]
type = "tag"
[processors.filter]
type = "drop"
[processors.batch]
type = "hold"

[exporters.tempo]
type = "out"
[exporters.loki]
type = "out"

[pipelines.traces]
receivers = ["otlp"]
processors = ["tagger", "filter", "batch"]
exporters = ["tempo"]

[pipelines.logs]
receivers = ["otlp"]
exporters = ["loki"]

[pipelines.metrics]
receivers = ["otlp"]
exporters = ["loki"]
"#;

fn config(tests: &str) -> Result<Config, String> {
    load_str(
        Path::new("t.toml"),
        &format!("{PIPELINES}\n{tests}"),
        |_| None,
    )
    .map_err(|e| e.to_string())
}

/// The outcomes of the tests in `tests`, or the errors that stopped them.
async fn run(tests: &str) -> Result<Vec<TestOutcome>, String> {
    let config = config(tests)?;
    let suite = Suite::load(&config, &[]).map_err(|errors| {
        errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    })?;
    Ok(suite.run(&config, &registry(), |_| {}).await.outcomes)
}

async fn failures(tests: &str) -> Vec<String> {
    let outcomes = run(tests).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(outcomes.len(), 1);
    outcomes[0].failures.clone()
}

#[tokio::test]
async fn an_input_at_a_receiver_goes_through_every_processor_to_the_exporter() {
    let tests = r#"
[[tests]]
name = "tagged and filtered"
[[tests.input]]
at = "otlp"
spans = [
  { name = "kept", attributes = { "user" = "bob" } },
  { name = "dropped", attributes = { "drop" = true } },
]
[[tests.expect]]
from = "exporter/tempo"
count = 1
name = "kept"
attributes = { "tagged_by" = "tagger", "user" = { equals = "bob" } }
[[tests.expect]]
from = "receiver/otlp"
count = 2
[[tests.expect]]
from = "tempo"
where = { name = "dropped" }
dropped = true
"#;
    assert_eq!(failures(tests).await, Vec::<String>::new());
    assert_eq!(
        EXPORTED.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "the configured exporter was replaced by one that sends nothing"
    );
}

#[tokio::test]
async fn what_a_processor_holds_is_flushed_before_the_expectations_are_checked() {
    let tests = r#"
[[tests]]
name = "held"
[[tests.input]]
at = "otlp"
spans = [{ name = "a" }, { name = "b" }]
[[tests.expect]]
from = "processor/batch"
count = 2
[[tests.expect]]
from = "filter"
count = 2
"#;
    assert_eq!(failures(tests).await, Vec::<String>::new());
}

#[tokio::test]
async fn an_input_at_a_processor_skips_the_processors_before_it() {
    let tests = r#"
[[tests]]
name = "at filter"
[[tests.input]]
at = "processor/filter"
spans = [{ name = "x", attributes = { drop = false } }]
[[tests.expect]]
from = "tempo"
count = 1
attributes = { "tagged_by" = { absent = true }, "drop" = false }
"#;
    assert_eq!(failures(tests).await, Vec::<String>::new());
}

#[tokio::test]
async fn a_failed_expectation_says_where_what_was_expected_and_what_came() {
    let tests = r#"
[[tests]]
name = "wrong"
[[tests.input]]
at = "otlp"
spans = [{ name = "checkout", attributes = { "user.email" = "bob@example.com" } }]
[[tests.expect]]
from = "tempo"
attributes = { "user.email" = { matches = "^\\*+$" }, "card" = { present = true } }
[[tests.expect]]
from = "tempo"
count = 2
[[tests.expect]]
from = "tempo"
where = { name = "nope" }
attributes = { a = 1 }
"#;
    let failures = failures(tests).await;
    assert_eq!(
        failures,
        vec![
            r#"t.toml:35: from exporter/tempo: span "checkout": attribute "card" is absent, expected it present"#,
            r#"t.toml:35: from exporter/tempo: span "checkout": attribute "user.email" is "bob@example.com", which does not match /^\*+$/"#,
            r#"t.toml:38: from exporter/tempo: expected 2 items, got 1 item: span "checkout""#,
            r#"t.toml:41: from exporter/tempo where name = "nope": nothing came out to check"#,
        ]
    );
}

#[tokio::test]
async fn dropped_fails_when_something_comes_out() {
    let tests = r#"
[[tests]]
name = "not dropped"
[[tests.input]]
at = "otlp"
spans = [{ name = "survivor" }]
[[tests.expect]]
from = "tempo"
dropped = true
"#;
    assert_eq!(
        failures(tests).await,
        vec![r#"t.toml:35: from exporter/tempo: expected nothing, got 1 item: span "survivor""#]
    );
}

#[tokio::test]
async fn logs_and_metrics_are_counted_in_records_and_data_points() {
    let tests = r#"
[[tests]]
name = "logs and metrics"
[[tests.input]]
at = "otlp"
resource = { "service.name" = "checkout" }
logs = [{ body = "payment declined", severity = "error", attributes = { code = 402 } }]
metrics = [
  { name = "requests", type = "sum", points = [{ value = 3, attributes = { route = "/a" } }, { value = 4 }] },
  { name = "latency", type = "histogram", unit = "s", points = [{ bounds = [0.1, 1.0], bucket_counts = [1, 2, 0], sum = 1.5 }] },
  { name = "queue", type = "gauge", value = 0.5 },
]
[[tests.expect]]
from = "exporter/loki"
where = { name = "payment declined" }
count = 1
body = { matches = "declined" }
attributes = { code = 402 }
resource = { "service.name" = "checkout" }
[[tests.expect]]
from = "loki"
where = { name = "requests" }
count = 2
[[tests.expect]]
from = "loki"
where = { attributes = { route = "/a" } }
count = 1
[[tests.expect]]
from = "loki"
count = 5
"#;
    assert_eq!(failures(tests).await, Vec::<String>::new());
}

#[tokio::test]
async fn every_test_runs_on_a_fresh_pipeline() {
    let one = |name: &str| {
        format!(
            "[[tests]]\nname = \"{name}\"\n[[tests.input]]\nat = \"otlp\"\nspans = [{{ name = \"{name}\" }}]\n[[tests.expect]]\nfrom = \"tempo\"\ncount = 1\nname = \"{name}\"\n"
        )
    };
    let outcomes = run(&format!("{}\n{}", one("first"), one("second")))
        .await
        .unwrap();
    assert_eq!(outcomes.len(), 2);
    assert!(outcomes.iter().all(TestOutcome::passed), "{outcomes:?}");
    assert_eq!(outcomes[1].to_string(), "test second ... ok");
}

#[test]
fn spans_of_one_input_share_a_derived_trace_and_name_their_parent() {
    let config = config(
        r#"
[[tests]]
name = "ids"
[[tests.input]]
at = "otlp"
spans = [
  { name = "root", kind = "server", status = "error", duration = "150ms" },
  { name = "child", parent = "root", start = "10ms" },
  { name = "other", trace_id = "5b8efff798038103d269b633813fc60c", span_id = "eee19b7ec3c1b174" },
]
[[tests.expect]]
from = "tempo"
count = 3
"#,
    )
    .unwrap();
    let mut errors = Vec::new();
    let parsed = parse_test(
        KeyPath::of(&["tests"]).index(0),
        config.tests[0].clone(),
        &mut errors,
    )
    .unwrap();
    let Request::Traces(traces) = parsed.inputs[0].batches[0]
        .0
        .clone()
        .into_request()
        .unwrap()
    else {
        panic!("not traces");
    };
    let spans = &traces.resource_spans[0].scope_spans[0].spans;
    assert_eq!(spans[0].trace_id, spans[1].trace_id);
    assert_eq!(spans[1].parent_span_id, spans[0].span_id);
    assert_eq!(
        hex::encode(&spans[2].trace_id),
        "5b8efff798038103d269b633813fc60c"
    );
    assert_eq!(hex::encode(&spans[2].span_id), "eee19b7ec3c1b174");
    assert_eq!(
        spans[0].end_time_unix_nano - spans[0].start_time_unix_nano,
        150_000_000
    );
    assert_eq!(
        spans[1].start_time_unix_nano - spans[0].start_time_unix_nano,
        10_000_000
    );
    assert_eq!(spans[0].status.as_ref().unwrap().code, 2);
    assert_eq!(spans[0].kind, 2);
}

#[test]
fn a_broken_test_table_is_a_config_error_with_file_line_and_key() {
    let errors = config(
        "[[tests]]\nname = \"bad\"\n[[tests.input]]\nat = \"otlp\"\nspans = [{ name = \"a\", duraton = \"1s\" }]\n[[tests.expect]]\nfrom = \"tempo\"\nattributes = { k = { matches = \"(\" } }\n",
    )
    .unwrap_err();
    assert!(
        errors.contains("t.toml:33: tests[0].input[0].spans[0].duraton: unknown field `duraton`"),
        "{errors}"
    );
    let errors = config(
        "[[tests]]\nname = \"bad\"\n[[tests.input]]\nat = \"otlp\"\nspans = [{ name = \"a\" }]\n[[tests.expect]]\nfrom = \"tempo\"\nattributes = { k = { matches = \"(\" } }\n",
    )
    .unwrap_err();
    assert!(
        errors.contains(
            "t.toml:36: tests[0].expect[0].attributes.k.matches: invalid regular expression"
        ),
        "{errors}"
    );
}

#[test]
fn checks_that_check_nothing_or_contradict_each_other_are_refused() {
    let base = "[[tests]]\nname = \"x\"\n[[tests.input]]\nat = \"otlp\"\nspans = [{ name = \"a\" }]\n[[tests.expect]]\nfrom = \"tempo\"\n";
    let errors = config(base).unwrap_err();
    assert!(
        errors.contains("tests[0].expect[0]: checks nothing"),
        "{errors}"
    );
    let errors = config(&format!("{base}dropped = true\nattributes = {{ a = 1 }}\n")).unwrap_err();
    assert!(
        errors.contains("expects no items and checks their content"),
        "{errors}"
    );
    let errors = config(&format!("{base}count = 1\ndropped = true\n")).unwrap_err();
    assert!(
        errors.contains("tests[0].expect[0].dropped: give either count or dropped"),
        "{errors}"
    );
}

#[test]
fn components_a_test_names_must_exist_be_in_a_pipeline_and_take_the_signal() {
    let load = |at: &str, from: &str, items: &str| {
        let config = config(&format!(
            "[[tests]]\nname = \"x\"\n[[tests.input]]\nat = \"{at}\"\n{items}\n[[tests.expect]]\nfrom = \"{from}\"\ncount = 1\n"
        ))
        .unwrap();
        match Suite::load(&config, &[]) {
            Ok(_) => String::new(),
            Err(errors) => errors[0].to_string(),
        }
    };
    let spans = "spans = [{ name = \"a\" }]";
    assert_eq!(load("otlp", "tempo", spans), "");
    assert_eq!(
        load("otlp", "tempo2", spans),
        "t.toml:35: tests[0].expect[0].from: no receiver or processor or exporter is named \"tempo2\""
    );
    assert_eq!(
        load("exporter/tempo", "tempo", spans),
        "t.toml:32: tests[0].input[0].at: must name a receiver or processor, not an exporter"
    );
    assert_eq!(
        load("tagger", "tempo", "logs = [{ body = \"x\" }]"),
        "t.toml:33: tests[0].input[0].logs: processor \"tagger\" is in no logs pipeline"
    );
}

#[test]
fn a_tests_file_holds_only_tests_and_its_errors_name_it() {
    let config = config("").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(
        &good,
        "[[tests]]\nname = \"extra\"\n[[tests.input]]\nat = \"otlp\"\nspans = [{ name = \"a\" }]\n[[tests.expect]]\nfrom = \"tempo\"\ncount = 1\n",
    )
    .unwrap();
    assert_eq!(Suite::load(&config, &[good]).map(|s| s.len()).ok(), Some(1));
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[receivers.x]\n\n[[tests]]\nname = \"y\"\n[[tests.input]]\nat = \"nope\"\nspans = [{ name = \"a\" }]\n[[tests.expect]]\nfrom = \"tempo\"\ncount = 1\n").unwrap();
    let Err(errors) = Suite::load(&config, std::slice::from_ref(&bad)) else {
        panic!("a tests file with a receiver loaded");
    };
    assert_eq!(
        errors[0].to_string(),
        format!(
            "{}:1: receivers: a tests file holds only [[tests]] tables",
            bad.display()
        )
    );
}
