//! Config unit tests: the `[[tests]]` tables `sluice test` runs.
//!
//! A test inserts spans, log records or metrics written in TOML at a receiver or a processor
//! of the configured pipelines and checks what comes out of another component. It runs the
//! real processors of the config, with no receiver started and every exporter replaced by one
//! that sends nothing ([`Plan::for_tests`]), so it opens no port and reaches no backend. What
//! leaves a component is seen through its tap point (see [`crate::tap`]), watched before the
//! inputs go in; the pipelines are then shut down, which flushes every processor (a batch
//! processor sends what it holds, a tail sampler decides every buffered trace), and the
//! expectations are checked against everything the tap points saw. Each test runs on a fresh
//! service with fresh telemetry, so tests do not see each other's data or state.
//!
//! ```toml
//! [[tests]]
//! name = "emails are masked before export"
//!
//! [[tests.input]]
//! at = "otlp"                       # a receiver, or a processor: data enters there
//! spans = [{ name = "signup", attributes = { "user.email" = "bob@example.com" } }]
//!
//! [[tests.expect]]
//! from = "exporter/tempo"           # what reaches the exporter
//! where = { name = "signup" }       # optional: only these items
//! count = 1
//! attributes = { "user.email" = { matches = "^\\*+$" } }
//! ```

mod expect;
mod input;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use serde::Deserialize;
use tokio::sync::oneshot;

use crate::batch::Batch;
use crate::component::{Consumer, Registry};
use crate::config::{
    ComponentKind, Config, ConfigError, ConfigErrors, KeyPath, SourceMap, expand_env, parse_value,
};
use crate::graph::{self, Plan};
use crate::queue::Fanout;
use crate::service::{Service, Switch};
use crate::signal::Signal;
use crate::tap::Watch;
use crate::telemetry::Telemetry;

use expect::{Expectation, RawExpect};
use input::{Builder, RawInput};

/// One `[[tests]]` table as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTest {
    name: String,
    #[serde(default)]
    input: Vec<RawInput>,
    #[serde(default)]
    expect: Vec<RawExpect>,
}

/// A test whose tables are well-formed, its items built.
struct ParsedTest {
    path: KeyPath,
    name: String,
    inputs: Vec<ParsedInput>,
    expects: Vec<Expectation>,
}

struct ParsedInput {
    path: KeyPath,
    at: String,
    pipeline: Option<String>,
    /// Each batch with the key that wrote its items (`spans`, `logs`, `metrics`).
    batches: Vec<(Batch, &'static str)>,
}

/// Checks the `[[tests]]` value of a config file (shape and syntax; component names are
/// checked by `sluice test`) and returns its tables.
pub fn check_tables(value: toml::Value, errors: &mut Vec<ConfigError>) -> Vec<toml::Value> {
    let path = KeyPath::of(&["tests"]);
    let tables = match value {
        toml::Value::Array(tables) if tables.iter().all(toml::Value::is_table) => tables,
        _ => {
            errors.push(ConfigError::new(
                path,
                "must be an array of tables: write each test as [[tests]]",
            ));
            return Vec::new();
        }
    };
    let mut names = BTreeSet::new();
    for (index, table) in tables.iter().enumerate() {
        if let Some(test) = parse_test(path.index(index), table.clone(), errors)
            && !names.insert(test.name.clone())
        {
            errors.push(ConfigError::new(
                test.path.key("name"),
                format!("another test is named {:?}", test.name),
            ));
        }
    }
    tables
}

/// Parses one test table at `path`, building its items; `None` when it has errors.
fn parse_test(
    path: KeyPath,
    value: toml::Value,
    errors: &mut Vec<ConfigError>,
) -> Option<ParsedTest> {
    let raw: RawTest = match parse_value(&path, value) {
        Ok(raw) => raw,
        Err(e) => {
            errors.push(e);
            return None;
        }
    };
    let before = errors.len();
    if raw.input.is_empty() {
        errors.push(ConfigError::new(
            path.clone(),
            "a test needs at least one [[tests.input]]",
        ));
    }
    if raw.expect.is_empty() {
        errors.push(ConfigError::new(
            path.clone(),
            "a test needs at least one [[tests.expect]]",
        ));
    }
    let base = input::now_nanos();
    let mut inputs = Vec::new();
    for (index, raw_input) in raw.input.iter().enumerate() {
        let input_path = path.key("input").index(index);
        let seed = format!("{}\0{index}", raw.name);
        let mut builder = Builder {
            seed: &seed,
            base,
            path: &input_path,
            errors,
        };
        let mut batches = Vec::new();
        if let Some(batch) = builder.spans(raw_input) {
            batches.push((batch, "spans"));
        }
        if let Some(batch) = builder.logs(raw_input) {
            batches.push((batch, "logs"));
        }
        if let Some(batch) = builder.metrics(raw_input) {
            batches.push((batch, "metrics"));
        }
        if batches.is_empty() {
            errors.push(ConfigError::new(
                input_path.clone(),
                "an input needs items: spans = [...], logs = [...] or metrics = [...]",
            ));
        }
        inputs.push(ParsedInput {
            path: input_path,
            at: raw_input.at.clone(),
            pipeline: raw_input.pipeline.clone(),
            batches,
        });
    }
    let expects = raw
        .expect
        .into_iter()
        .enumerate()
        .map(|(index, e)| Expectation::parse(path.key("expect").index(index), e, errors))
        .collect();
    (errors.len() == before).then_some(ParsedTest {
        path,
        name: raw.name,
        inputs,
        expects,
    })
}

/// A component a test names: `kind/id` or an id alone.
fn resolve_component(
    config: &Config,
    path: KeyPath,
    text: &str,
    kinds: &[ComponentKind],
) -> Result<(ComponentKind, String), ConfigError> {
    let allowed = kinds
        .iter()
        .map(|k| k.noun())
        .collect::<Vec<_>>()
        .join(" or ");
    let explicit = text.split_once('/').and_then(|(kind, id)| {
        [
            ComponentKind::Receiver,
            ComponentKind::Processor,
            ComponentKind::Exporter,
        ]
        .into_iter()
        .find(|k| k.noun() == kind)
        .map(|k| (k, id))
    });
    let (kind, id) = match explicit {
        Some((kind, id)) => {
            if !kinds.contains(&kind) {
                return Err(ConfigError::new(
                    path,
                    format!("must name a {allowed}, not {}", with_article(kind)),
                ));
            }
            if !config.components(kind).contains_key(id) {
                return Err(ConfigError::new(
                    path,
                    format!("{} {id:?} is not defined", kind.noun()),
                ));
            }
            (kind, id.to_string())
        }
        None => {
            let found: Vec<ComponentKind> = kinds
                .iter()
                .copied()
                .filter(|k| config.components(*k).contains_key(text))
                .collect();
            match found.as_slice() {
                [kind] => (*kind, text.to_string()),
                [] => {
                    return Err(ConfigError::new(
                        path,
                        format!("no {allowed} is named {text:?}"),
                    ));
                }
                several => {
                    return Err(ConfigError::new(
                        path,
                        format!(
                            "{text:?} names several components; write {}",
                            several
                                .iter()
                                .map(|k| format!("\"{}/{text}\"", k.noun()))
                                .collect::<Vec<_>>()
                                .join(" or ")
                        ),
                    ));
                }
            }
        }
    };
    let used = config.pipelines.values().any(|p| {
        let list = match kind {
            ComponentKind::Receiver => &p.receivers,
            ComponentKind::Processor => &p.processors,
            ComponentKind::Exporter => &p.exporters,
        };
        list.contains(&id)
    });
    if !used {
        return Err(ConfigError::new(
            path,
            format!("{} {id:?} is in no pipeline", kind.noun()),
        ));
    }
    Ok((kind, id))
}

fn with_article(kind: ComponentKind) -> &'static str {
    match kind {
        ComponentKind::Receiver => "a receiver",
        ComponentKind::Processor => "a processor",
        ComponentKind::Exporter => "an exporter",
    }
}

/// Where an input's batch goes: the pipelines it enters, at their head or at a processor.
struct Entry {
    kind: ComponentKind,
    id: String,
    pipelines: Vec<String>,
}

struct ResolvedInput {
    batches: Vec<(Batch, Entry)>,
}

struct ResolvedExpect {
    /// The tap point: `kind/id`.
    tap: String,
    /// `file:line: ` of the expectation, prefixed to its failures.
    location: String,
    expectation: Expectation,
}

/// One test, checked against the config.
struct ConfigTest {
    name: String,
    inputs: Vec<ResolvedInput>,
    expects: Vec<ResolvedExpect>,
}

fn resolve_test(
    config: &Config,
    test: ParsedTest,
    locate: &dyn Fn(&KeyPath) -> String,
    errors: &mut Vec<ConfigError>,
) -> Option<ConfigTest> {
    let before = errors.len();
    let mut inputs = Vec::new();
    for input in test.inputs {
        let at = match resolve_component(
            config,
            input.path.key("at"),
            &input.at,
            &[ComponentKind::Receiver, ComponentKind::Processor],
        ) {
            Ok(at) => at,
            Err(e) => {
                errors.push(e);
                continue;
            }
        };
        let (kind, id) = at;
        let contains = |p: &crate::config::PipelineConfig| match kind {
            ComponentKind::Receiver => p.receivers.contains(&id),
            _ => p.processors.contains(&id),
        };
        if let Some(name) = &input.pipeline {
            match config.pipelines.get(name) {
                Some(p) if contains(p) => {}
                Some(_) => {
                    errors.push(ConfigError::new(
                        input.path.key("pipeline"),
                        format!("pipeline {name:?} has no {} {id:?}", kind.noun()),
                    ));
                    continue;
                }
                None => {
                    errors.push(ConfigError::new(
                        input.path.key("pipeline"),
                        format!("no pipeline is named {name:?}"),
                    ));
                    continue;
                }
            }
        }
        let mut batches = Vec::new();
        for (batch, key) in input.batches {
            let signal = batch.signal();
            let pipelines: Vec<String> = config
                .pipelines
                .values()
                .filter(|p| p.signal == signal && contains(p))
                .filter(|p| input.pipeline.as_ref().is_none_or(|name| &p.name == name))
                .map(|p| p.name.clone())
                .collect();
            if pipelines.is_empty() {
                errors.push(ConfigError::new(
                    input.path.key(key),
                    format!(
                        "{} {id:?} is in no {signal} pipeline{}",
                        kind.noun(),
                        input
                            .pipeline
                            .as_ref()
                            .map(|p| format!(" named {p:?}"))
                            .unwrap_or_default()
                    ),
                ));
                continue;
            }
            batches.push((
                batch,
                Entry {
                    kind,
                    id: id.clone(),
                    pipelines,
                },
            ));
        }
        inputs.push(ResolvedInput { batches });
    }
    let mut expects = Vec::new();
    for expectation in test.expects {
        match resolve_component(
            config,
            expectation.path.key("from"),
            &expectation.from,
            &[
                ComponentKind::Receiver,
                ComponentKind::Processor,
                ComponentKind::Exporter,
            ],
        ) {
            Ok((kind, id)) => expects.push(ResolvedExpect {
                tap: format!("{}/{id}", kind.noun()),
                location: locate(&expectation.path),
                expectation,
            }),
            Err(e) => errors.push(e),
        }
    }
    (errors.len() == before).then_some(ConfigTest {
        name: test.name,
        inputs,
        expects,
    })
}

/// The tests of a configuration, checked against it and ready to run.
pub struct Suite {
    tests: Vec<ConfigTest>,
}

/// The outcome of one test.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestOutcome {
    pub name: String,
    /// What failed, each line starting with the file and line of the expectation it is
    /// about; empty when the test passed.
    pub failures: Vec<String>,
}

impl TestOutcome {
    /// Whether every expectation held.
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }
}

impl std::fmt::Display for TestOutcome {
    /// The test runner's line: `test NAME ... ok` or `... FAILED`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let verdict = if self.passed() { "ok" } else { "FAILED" };
        write!(f, "test {} ... {verdict}", self.name)
    }
}

/// Every test's outcome, shown as the end of a test run: the failures, then the counts.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub outcomes: Vec<TestOutcome>,
}

impl Summary {
    /// Whether every test passed.
    pub fn passed(&self) -> bool {
        self.outcomes.iter().all(TestOutcome::passed)
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let failed: Vec<&TestOutcome> = self.outcomes.iter().filter(|o| !o.passed()).collect();
        if !failed.is_empty() {
            writeln!(f, "\nfailures:")?;
            for outcome in &failed {
                writeln!(f, "\n---- {} ----", outcome.name)?;
                for failure in &outcome.failures {
                    writeln!(f, "  {failure}")?;
                }
            }
        }
        let passed = self.outcomes.len() - failed.len();
        writeln!(
            f,
            "\ntest result: {}. {passed} passed; {} failed",
            if failed.is_empty() { "ok" } else { "FAILED" },
            failed.len()
        )
    }
}

impl Suite {
    /// The tests of `config` followed by those of the files `extra` (which hold only
    /// `[[tests]]` tables), checked against `config`. Errors name file, line and key.
    pub fn load(config: &Config, extra: &[PathBuf]) -> Result<Suite, Vec<ConfigErrors>> {
        let mut tests = Vec::new();
        let mut names = BTreeSet::new();
        let mut failed = Vec::new();
        let locate_in_config = |path: &KeyPath| {
            let located = config.locate(vec![ConfigError::new(path.clone(), String::new())]);
            location(&config.file, located.errors.first().and_then(|e| e.line))
        };
        let mut errors = Vec::new();
        let mut found = Found {
            tests: &mut tests,
            names: &mut names,
            errors: &mut errors,
        };
        found.collect(config, config.tests.clone(), &locate_in_config);
        if !errors.is_empty() {
            failed.push(config.locate(errors));
        }
        for file in extra {
            match load_tests_file(file) {
                Ok((map, tables)) => {
                    let locate = |path: &KeyPath| location(file, map.line_of(path));
                    let mut errors = Vec::new();
                    let mut found = Found {
                        tests: &mut tests,
                        names: &mut names,
                        errors: &mut errors,
                    };
                    found.collect(config, tables, &locate);
                    if !errors.is_empty() {
                        for error in &mut errors {
                            error.line = error.line.or_else(|| map.line_of(&error.path));
                        }
                        failed.push(ConfigErrors {
                            file: file.clone(),
                            errors,
                        });
                    }
                }
                Err(errors) => failed.push(errors),
            }
        }
        if failed.is_empty() {
            Ok(Suite { tests })
        } else {
            Err(failed)
        }
    }

    /// How many tests there are.
    pub fn len(&self) -> usize {
        self.tests.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.tests.is_empty()
    }

    /// Runs every test in turn, each on its own fresh service built from `config`, calling
    /// `report` with each outcome as it is known.
    pub async fn run(
        &self,
        config: &Config,
        registry: &Registry,
        mut report: impl FnMut(&TestOutcome),
    ) -> Summary {
        let mut summary = Summary::default();
        for test in &self.tests {
            let failures = match graph::plan(config, registry) {
                Ok(plan) => run_test(test, plan, config).await,
                Err(errors) => config
                    .locate(errors)
                    .to_string()
                    .lines()
                    .map(str::to_string)
                    .collect(),
            };
            let outcome = TestOutcome {
                name: test.name.clone(),
                failures,
            };
            report(&outcome);
            summary.outcomes.push(outcome);
        }
        summary
    }
}

fn location(file: &Path, line: Option<usize>) -> String {
    match line {
        Some(line) => format!("{}:{line}", file.display()),
        None => file.display().to_string(),
    }
}

/// The tests found so far, their names, and the errors of the file being read.
struct Found<'a> {
    tests: &'a mut Vec<ConfigTest>,
    names: &'a mut BTreeSet<String>,
    errors: &'a mut Vec<ConfigError>,
}

impl Found<'_> {
    /// Parses and resolves `tables`, keeping the good tests.
    fn collect(
        &mut self,
        config: &Config,
        tables: Vec<toml::Value>,
        locate: &dyn Fn(&KeyPath) -> String,
    ) {
        for (index, table) in tables.into_iter().enumerate() {
            let path = KeyPath::of(&["tests"]).index(index);
            let Some(parsed) = parse_test(path.clone(), table, self.errors) else {
                continue;
            };
            if !self.names.insert(parsed.name.clone()) {
                self.errors.push(ConfigError::new(
                    path.key("name"),
                    format!("another test is named {:?}", parsed.name),
                ));
                continue;
            }
            if let Some(test) = resolve_test(config, parsed, locate, self.errors) {
                self.tests.push(test);
            }
        }
    }
}

/// Reads a file of `[[tests]]` tables: its source map and the tables.
fn load_tests_file(file: &Path) -> Result<(SourceMap, Vec<toml::Value>), ConfigErrors> {
    let fail = |errors| ConfigErrors {
        file: file.to_path_buf(),
        errors,
    };
    let text = std::fs::read_to_string(file).map_err(|e| {
        fail(vec![ConfigError::new(
            KeyPath::root(),
            format!("cannot read the file: {e}"),
        )])
    })?;
    let expanded = expand_env(&text, |name| std::env::var(name).ok()).map_err(fail)?;
    let map = SourceMap::new(&expanded);
    let root: toml::Table = toml::from_str(&expanded).map_err(|e| {
        fail(vec![ConfigError {
            path: KeyPath::root(),
            message: e.message().trim().to_string(),
            line: e.span().map(|span| map.line_at(span.start)),
        }])
    })?;
    let mut errors = Vec::new();
    let mut tables = Vec::new();
    for (key, value) in root {
        if key == "tests" {
            tables = check_tables(value, &mut errors);
        } else {
            errors.push(ConfigError::new(
                KeyPath::of(&[&key]),
                "a tests file holds only [[tests]] tables",
            ));
        }
    }
    if errors.is_empty() {
        Ok((map, tables))
    } else {
        for error in &mut errors {
            error.line = map.line_of(&error.path);
        }
        Err(fail(errors))
    }
}

/// Collects what a tap point shows until told to stop, then what is still waiting.
async fn collect_watch(mut watch: Watch, mut stop: oneshot::Receiver<()>) -> (Vec<Batch>, u64) {
    let mut batches = Vec::new();
    loop {
        tokio::select! {
            biased;
            batch = watch.next() => match batch {
                Some(batch) => batches.push(batch),
                None => break,
            },
            _ = &mut stop => {
                while let Some(batch) = watch.try_next() {
                    batches.push(batch);
                }
                break;
            }
        }
    }
    (batches, watch.take_skipped())
}

/// Runs one test on a fresh service; returns its failures.
async fn run_test(test: &ConfigTest, plan: Plan, config: &Config) -> Vec<String> {
    let telemetry = Telemetry::new();
    // Watched before the service starts, so nothing that leaves a component is missed.
    let taps: BTreeSet<&str> = test.expects.iter().map(|e| e.tap.as_str()).collect();
    let mut watchers = Vec::new();
    for tap in taps {
        let (kind, id) = tap.split_once('/').unwrap_or(("", tap));
        let watch = telemetry.taps().point(kind, id).watch();
        let (stop, stopped) = oneshot::channel();
        watchers.push((tap, stop, tokio::spawn(collect_watch(watch, stopped))));
    }
    let mut failures = Vec::new();
    let service = match Service::start(plan.for_tests(), &telemetry).await {
        Ok(service) => service,
        Err(e) => return vec![format!("the pipelines did not start: {e}")],
    };
    for (number, input) in test.inputs.iter().enumerate() {
        for (batch, entry) in &input.batches {
            let Some(consumer) = entry_consumer(&service, entry, &telemetry) else {
                failures.push(format!(
                    "input {}: {} {:?} is not running",
                    number + 1,
                    entry.kind.noun(),
                    entry.id
                ));
                continue;
            };
            if let Err(e) = consumer.consume(batch.clone()).await {
                failures.push(format!(
                    "input {}: {} {:?} refused the {}: {e}",
                    number + 1,
                    entry.kind.noun(),
                    entry.id,
                    signal_items(batch.signal())
                ));
            }
        }
    }
    // Shutting down flushes every processor, so everything buffered comes out.
    service
        .shutdown(Instant::now() + config.service.shutdown_timeout)
        .await;
    let mut seen = std::collections::BTreeMap::new();
    for (tap, stop, task) in watchers {
        let _ = stop.send(());
        match task.await {
            Ok((batches, skipped)) => {
                if skipped > 0 {
                    failures.push(format!(
                        "{tap}: {skipped} items came out faster than the test could watch them; use fewer inputs"
                    ));
                }
                let requests: Vec<crate::batch::Request> = batches
                    .into_iter()
                    .filter_map(|batch| batch.into_request().ok())
                    .collect();
                seen.insert(tap, requests);
            }
            Err(e) => failures.push(format!("{tap}: watching failed: {e}")),
        }
    }
    for expect in &test.expects {
        let requests = seen
            .get(expect.tap.as_str())
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        let items = expect::items(requests);
        for failure in expect.expectation.evaluate(&expect.tap, &items) {
            failures.push(format!("{}: {failure}", expect.location));
        }
    }
    failures
}

fn signal_items(signal: Signal) -> &'static str {
    match signal {
        Signal::Traces => "spans",
        Signal::Metrics => "metrics",
        Signal::Logs => "log records",
    }
}

/// The consumer an input's batch is handed to: a receiver's output (seen by its tap point)
/// feeding the heads of its pipelines, or a processor's input in each pipeline.
fn entry_consumer(
    service: &Service,
    entry: &Entry,
    telemetry: &Telemetry,
) -> Option<Arc<dyn Consumer>> {
    let consumers: Option<Vec<Arc<dyn Consumer>>> = entry
        .pipelines
        .iter()
        .map(|pipeline| match entry.kind {
            ComponentKind::Receiver => service.pipeline_head(pipeline),
            _ => service.processor_input(pipeline, &entry.id),
        })
        .collect();
    let fanout = Fanout::over(consumers?);
    Some(match entry.kind {
        ComponentKind::Receiver => {
            Switch::to(fanout, telemetry.taps().point("receiver", &entry.id)) as Arc<dyn Consumer>
        }
        _ => fanout,
    })
}

#[cfg(test)]
mod tests;
