//! The `probabilistic_sampler` processor: keeps a configured percentage of traces (and of the
//! logs that belong to them), deciding from the trace id alone so that every span of a trace,
//! on every Sluice instance with the same `hash_seed`, gets the same decision.
//!
//! The decision is the OpenTelemetry Collector's `probabilisticsampler` "hash_seed" mode, so a
//! fleet mixing Collectors and Sluice instances with the same seed agrees too: the 32-bit
//! FNV-1a hash of the seed (4 bytes, little-endian) followed by the trace id's bytes, masked to
//! 14 bits, is kept when it is below `sampling_percentage / 100 × 16384`. FNV-1a mixes every
//! input byte, so the low 14 bits of random trace ids are spread evenly over the buckets.
//!
//! An item carrying a `sampling.priority` attribute overrides the hash: 0 drops it, a positive
//! number keeps it (as in the Collector, per item).
//!
//! The sampler never decodes the data: it reads the trace id and the attributes it needs in
//! the protobuf encoding and copies the items it keeps (see [`wire`]).

mod wire;

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use prometheus::IntCounter;
use serde::Deserialize;
use sluice_pipeline::{
    Batch, ComponentSettings, ConfigError, ConsumeError, Consumer, Processor, ProcessorContext,
    ProcessorFactory, Running, RunningProcessor, Signal, StartError,
};

use crate::otlp_wire::Value;
use wire::{ItemFields, ItemView};

/// Configuration of the `probabilistic_sampler` processor.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbabilisticSamplerConfig {
    /// The percentage of traces (and logs) to keep, from 0 to 100. Resolution is 1/16384
    /// (about 0.006%): 10 keeps 1638 buckets of 16384, 9.998%.
    pub sampling_percentage: f64,
    /// The seed mixed into the hash. Instances that must agree (every collector tier sampling
    /// the same traces) use the same seed; tiers that must sample independently use different
    /// ones.
    #[serde(default = "default_hash_seed")]
    pub hash_seed: u32,
    /// What logs are sampled by: `"traceID"` (the record's trace id, or `from_attribute` when
    /// the record has none) or `"record"` (the `from_attribute` attribute of the record).
    #[serde(default = "default_attribute_source")]
    pub attribute_source: AttributeSource,
    /// The log record attribute to sample by when `attribute_source = "record"`, or when a
    /// record has no trace id. Its value is hashed like a trace id: strings and bytes as they
    /// are, numbers and booleans as their text.
    #[serde(default)]
    pub from_attribute: Option<String>,
    /// The attribute that overrides the hash for the item carrying it: 0 drops the item, a
    /// positive number (integer, double or numeric string) keeps it; other values are ignored.
    #[serde(default = "default_sampling_priority")]
    pub sampling_priority: String,
    /// What to do with a log record that has nothing to sample by (no trace id and no
    /// `from_attribute` value): `true` drops it, `false` keeps it.
    #[serde(default = "default_fail_closed")]
    pub fail_closed: bool,
}

fn default_hash_seed() -> u32 {
    0
}

fn default_attribute_source() -> AttributeSource {
    AttributeSource::TraceId
}

fn default_sampling_priority() -> String {
    "sampling.priority".to_string()
}

fn default_fail_closed() -> bool {
    true
}

/// What log records are sampled by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum AttributeSource {
    /// The record's trace id; `from_attribute` when the record has none.
    #[serde(rename = "traceID")]
    TraceId,
    /// The record's `from_attribute` attribute.
    #[serde(rename = "record")]
    Record,
}

impl ProbabilisticSamplerConfig {
    /// Parses and checks the `[processors.<id>]` table.
    pub fn from_settings(
        settings: &ComponentSettings,
    ) -> Result<ProbabilisticSamplerConfig, ConfigError> {
        let config: ProbabilisticSamplerConfig = settings.parse()?;
        if !(0.0..=100.0).contains(&config.sampling_percentage) {
            return Err(settings.error(
                "sampling_percentage",
                format!(
                    "{} is not a percentage: write a number from 0 to 100",
                    config.sampling_percentage
                ),
            ));
        }
        if config.attribute_source == AttributeSource::Record && config.from_attribute.is_none() {
            return Err(settings.error(
                "from_attribute",
                "attribute_source = \"record\" needs from_attribute: the log record attribute \
                 to sample by",
            ));
        }
        if config.from_attribute.as_deref() == Some("") {
            return Err(settings.error("from_attribute", "must not be empty"));
        }
        Ok(config)
    }
}

/// The number of hash buckets: the decision keeps the 14 low bits of the hash.
const NUM_HASH_BUCKETS: u32 = 0x4000;

/// 32-bit FNV-1a of the seed (little-endian) followed by `id`: the Collector's
/// `probabilisticsampler` hash, reproduced so both make the same decisions.
pub fn hash(seed: u32, id: &[u8]) -> u32 {
    const OFFSET_BASIS: u32 = 0x811c_9dc5;
    const PRIME: u32 = 0x0100_0193;
    seed.to_le_bytes()
        .iter()
        .chain(id)
        .fold(OFFSET_BASIS, |hash, &byte| {
            (hash ^ u32::from(byte)).wrapping_mul(PRIME)
        })
}

/// The pure decision: whether the trace (or record) identified by `id` is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decider {
    seed: u32,
    /// Hash buckets below this are kept.
    threshold: u32,
}

impl Decider {
    /// The decision for `sampling_percentage` and `seed`.
    pub fn new(sampling_percentage: f64, seed: u32) -> Decider {
        // The Collector truncates the same way; 100% gives 16384, above every bucket.
        let threshold = (sampling_percentage * f64::from(NUM_HASH_BUCKETS) / 100.0) as u32;
        Decider { seed, threshold }
    }

    /// Whether `id` (a trace id, or an attribute value's bytes) is sampled.
    pub fn keeps(&self, id: &[u8]) -> bool {
        hash(self.seed, id) & (NUM_HASH_BUCKETS - 1) < self.threshold
    }
}

/// What a `sampling.priority` value asks for: `Some(keep)`, or `None` to let the hash decide.
fn priority(value: Value<'_>) -> Option<bool> {
    let number = match value {
        Value::Int(i) => i as f64,
        Value::Double(d) => d,
        Value::String(s) => std::str::from_utf8(s).ok()?.trim().parse::<f64>().ok()?,
        _ => return None,
    };
    if number == 0.0 {
        Some(false)
    } else if number > 0.0 {
        Some(true)
    } else {
        None
    }
}

/// Whether a log record's trace id identifies a trace: present, 16 bytes, not all zero.
fn is_trace_id(bytes: &[u8]) -> bool {
    bytes.len() == 16 && bytes.iter().any(|&b| b != 0)
}

/// The bytes of an attribute value to hash in place of a trace id.
fn value_bytes<'a>(value: Value<'a>, scratch: &'a mut String) -> &'a [u8] {
    use std::fmt::Write;
    scratch.clear();
    match value {
        Value::String(s) | Value::Bytes(s) | Value::Other(s) => return s,
        Value::Bool(b) => write!(scratch, "{b}"),
        Value::Int(i) => write!(scratch, "{i}"),
        Value::Double(d) => write!(scratch, "{d}"),
    }
    .expect("writing to a String cannot fail");
    scratch.as_bytes()
}

/// The configured sampler, shared by the instances' `consume` calls.
#[derive(Debug, Clone)]
struct Sampler {
    decider: Decider,
    config: ProbabilisticSamplerConfig,
}

impl Sampler {
    fn keep_span(&self, span: &ItemView<'_>) -> bool {
        match span.attributes[0].and_then(priority) {
            Some(keep) => keep,
            None => self.decider.keeps(span.trace_id),
        }
    }

    fn keep_log(&self, record: &ItemView<'_>, scratch: &mut String) -> bool {
        if let Some(keep) = record.attributes[0].and_then(priority) {
            return keep;
        }
        let by_trace = self.config.attribute_source == AttributeSource::TraceId;
        if by_trace && is_trace_id(record.trace_id) {
            return self.decider.keeps(record.trace_id);
        }
        match record.attributes[1] {
            Some(value) => self.decider.keeps(value_bytes(value, scratch)),
            None => !self.config.fail_closed,
        }
    }

    /// The kept part of an encoded request of `signal`, and the counts.
    fn filter(&self, signal: Signal, request: &Bytes) -> Result<(Bytes, wire::Counts), String> {
        let priority = Some(self.config.sampling_priority.as_str());
        let result = match signal {
            Signal::Traces => {
                wire::filter_request(request, wire::SPAN, [priority, None], |s| self.keep_span(s))
            }
            Signal::Logs => {
                let shape: ItemFields = wire::LOG_RECORD;
                let from = self.config.from_attribute.as_deref();
                let mut scratch = String::new();
                wire::filter_request(request, shape, [priority, from], |r| {
                    self.keep_log(r, &mut scratch)
                })
            }
            Signal::Metrics => return Err("metrics cannot be sampled by trace".to_string()),
        };
        result.map_err(|e| e.to_string())
    }
}

/// Builds `probabilistic_sampler` processors.
pub struct ProbabilisticSamplerFactory;

impl ProcessorFactory for ProbabilisticSamplerFactory {
    fn type_name(&self) -> &'static str {
        "probabilistic_sampler"
    }

    fn signals(&self) -> &'static [Signal] {
        &[Signal::Traces, Signal::Logs]
    }

    fn build(&self, settings: &ComponentSettings) -> Result<Box<dyn Processor>, ConfigError> {
        Ok(Box::new(ProbabilisticSampler::new(
            ProbabilisticSamplerConfig::from_settings(settings)?,
        )))
    }
}

/// A `probabilistic_sampler` built from config, ready to start in a pipeline.
pub struct ProbabilisticSampler {
    config: ProbabilisticSamplerConfig,
}

impl ProbabilisticSampler {
    /// A processor for `config` (checked by [`ProbabilisticSamplerConfig::from_settings`]).
    pub fn new(config: ProbabilisticSamplerConfig) -> ProbabilisticSampler {
        ProbabilisticSampler { config }
    }
}

#[async_trait]
impl Processor for ProbabilisticSampler {
    async fn start(
        self: Box<Self>,
        ctx: ProcessorContext,
    ) -> Result<Arc<dyn RunningProcessor>, StartError> {
        let sampled = ctx
            .telemetry
            .counter_vec(
                "sluice_processor_probabilistic_sampler_sampled_items_total",
                "Items (spans, log records) the probabilistic sampler kept.",
                &["processor", "signal"],
            )
            .with_label_values(&[ctx.id.as_str(), ctx.signal.as_str()]);
        Ok(Arc::new(RunningSampler {
            sampler: Sampler {
                decider: Decider::new(self.config.sampling_percentage, self.config.hash_seed),
                config: self.config,
            },
            dropped: ctx.telemetry.processor_dropped(&ctx.id, ctx.signal),
            sampled,
            id: ctx.id,
            signal: ctx.signal,
            next: ctx.next,
        }))
    }
}

/// A `probabilistic_sampler` running in one pipeline.
pub struct RunningSampler {
    sampler: Sampler,
    id: String,
    signal: Signal,
    next: Arc<dyn Consumer>,
    sampled: IntCounter,
    dropped: IntCounter,
}

#[async_trait]
impl Consumer for RunningSampler {
    async fn consume(&self, batch: Batch) -> Result<(), ConsumeError> {
        if batch.is_empty() {
            return Ok(());
        }
        let request = batch.to_encoded_bytes();
        let (kept, counts) = self
            .sampler
            .filter(self.signal, &request)
            .map_err(|e| ConsumeError::Rejected(format!("{}: {e}", self.id)))?;
        self.dropped.inc_by(counts.dropped as u64);
        if counts.kept == 0 {
            return Ok(());
        }
        let batch = if counts.dropped == 0 {
            batch
        } else {
            Batch::from_encoded(self.signal, kept)
                .map_err(|e| ConsumeError::Rejected(format!("{}: {e}", self.id)))?
        };
        // Counted before handing on: the items left this processor whatever the next one does
        // (it counts its own refusals).
        self.sampled.inc_by(counts.kept as u64);
        self.next.consume(batch).await
    }
}

#[async_trait]
impl Running for RunningSampler {
    /// Nothing to flush: every batch is passed on during `consume`.
    async fn shutdown(&self) {}
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
    use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
    use prost::Message;
    use sluice_pipeline::config::ComponentKind;
    use sluice_pipeline::{Request, Telemetry};

    use super::*;

    fn settings(toml: &str) -> ComponentSettings {
        ComponentSettings::new(
            ComponentKind::Processor,
            "sample_10",
            "probabilistic_sampler",
            toml::from_str(toml).expect("test TOML is valid"),
        )
    }

    fn config(toml: &str) -> ProbabilisticSamplerConfig {
        ProbabilisticSamplerConfig::from_settings(&settings(toml)).unwrap()
    }

    /// Random 16-byte ids from a fixed-seed SplitMix64, so failures reproduce.
    fn random_ids(count: usize, seed: u64) -> Vec<[u8; 16]> {
        let mut state = seed;
        let mut next = move || {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        (0..count)
            .map(|_| {
                let mut id = [0u8; 16];
                id[..8].copy_from_slice(&next().to_le_bytes());
                id[8..].copy_from_slice(&next().to_le_bytes());
                id
            })
            .collect()
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let config = config("sampling_percentage = 10.0");
        assert_eq!(config.hash_seed, 0);
        assert_eq!(config.attribute_source, AttributeSource::TraceId);
        assert_eq!(config.from_attribute, None);
        assert_eq!(config.sampling_priority, "sampling.priority");
        assert!(config.fail_closed);
    }

    #[test]
    fn readme_example_parses() {
        let readme = include_str!("../README.md");
        let section = readme
            .split("## `probabilistic_sampler`")
            .nth(1)
            .expect("the README has a probabilistic_sampler section");
        let example = section
            .split("```toml\n")
            .nth(1)
            .and_then(|rest| rest.split("```").next())
            .expect("the section has a TOML example");
        let file: toml::Table = toml::from_str(example).unwrap();
        for (id, table) in file["processors"].as_table().unwrap() {
            let settings = ComponentSettings {
                table: table.as_table().unwrap().clone(),
                ..settings("")
            };
            let mut table = settings.table.clone();
            assert_eq!(
                table
                    .remove("type")
                    .and_then(|t| t.as_str().map(String::from)),
                Some("probabilistic_sampler".to_string()),
                "{id}"
            );
            ProbabilisticSamplerConfig::from_settings(&ComponentSettings { table, ..settings })
                .unwrap_or_else(|e| panic!("{id}: {e}"));
        }
    }

    #[test]
    fn bad_values_are_errors_naming_the_key() {
        for (toml, key) in [
            ("sampling_percentage = 101", "sampling_percentage"),
            ("sampling_percentage = -1", "sampling_percentage"),
            ("sampling_percentage = \"ten\"", "sampling_percentage"),
            ("", ""),
            ("sampling_percentage = 5\nhash_seed = -1", "hash_seed"),
            (
                "sampling_percentage = 5\nattribute_source = \"trace\"",
                "attribute_source",
            ),
            (
                "sampling_percentage = 5\nattribute_source = \"record\"",
                "from_attribute",
            ),
            (
                "sampling_percentage = 5\nsamplign_priority = \"x\"",
                "samplign_priority",
            ),
        ] {
            let error = ProbabilisticSamplerConfig::from_settings(&settings(toml)).unwrap_err();
            let expected = if key.is_empty() {
                "processors.sample_10".to_string()
            } else {
                format!("processors.sample_10.{key}")
            };
            assert_eq!(error.path.to_string(), expected, "{toml}: {error}");
        }
    }

    #[test]
    fn hash_is_fnv1a_of_the_little_endian_seed_then_the_id() {
        // FNV-1a-32 test vectors, "foobar" split as the seed bytes "foob" (little-endian)
        // followed by the id "ar": a change of byte order or of the hash breaks these.
        assert_eq!(hash(u32::from_le_bytes(*b"foob"), b"ar"), 0xbf9c_f968);
        assert_eq!(hash(u32::from_le_bytes(*b"abcd"), b""), 0xce34_79bd);
    }

    #[test]
    fn ten_percent_keeps_between_nine_and_eleven_percent_of_random_trace_ids() {
        let decider = Decider::new(10.0, 0);
        let ids = random_ids(100_000, 1);
        let kept = ids.iter().filter(|id| decider.keeps(*id)).count();
        assert!((9_000..=11_000).contains(&kept), "kept {kept}");
        // Other seeds and rates keep their share too.
        for (pct, seed) in [(1.0, 7), (50.0, 42), (25.0, 0xdead_beef)] {
            let decider = Decider::new(pct, seed);
            let kept = ids.iter().filter(|id| decider.keeps(*id)).count() as f64;
            let expected = pct / 100.0 * 100_000.0;
            assert!(
                (kept - expected).abs() < expected * 0.1,
                "{pct}%: kept {kept}"
            );
        }
    }

    #[test]
    fn zero_and_hundred_percent_drop_and_keep_everything() {
        let ids = random_ids(10_000, 2);
        assert!(ids.iter().all(|id| !Decider::new(0.0, 3).keeps(id)));
        assert!(ids.iter().all(|id| Decider::new(100.0, 3).keeps(id)));
    }

    #[test]
    fn the_seed_changes_which_traces_are_kept() {
        let ids = random_ids(10_000, 3);
        let a = Decider::new(10.0, 1);
        let b = Decider::new(10.0, 2);
        let disagree = ids.iter().filter(|id| a.keeps(*id) != b.keeps(*id)).count();
        // Independent 10% samples disagree on about 18% of ids.
        assert!(disagree > 1_000, "{disagree}");
    }

    /// A downstream consumer that records what it takes.
    #[derive(Default)]
    struct Recorder {
        taken: Mutex<Vec<Batch>>,
    }

    #[async_trait]
    impl Consumer for Recorder {
        async fn consume(&self, batch: Batch) -> Result<(), ConsumeError> {
            self.taken.lock().unwrap().push(batch);
            Ok(())
        }
    }

    impl Recorder {
        fn spans(&self) -> Vec<Span> {
            let taken = std::mem::take(&mut *self.taken.lock().unwrap());
            let mut spans = Vec::new();
            for batch in taken {
                let Request::Traces(request) = batch.into_request().unwrap() else {
                    panic!("traces only")
                };
                for rs in request.resource_spans {
                    for ss in rs.scope_spans {
                        spans.extend(ss.spans);
                    }
                }
            }
            spans
        }

        fn log_bodies(&self) -> Vec<String> {
            let taken = std::mem::take(&mut *self.taken.lock().unwrap());
            let mut bodies = Vec::new();
            for batch in taken {
                let Request::Logs(request) = batch.into_request().unwrap() else {
                    panic!("logs only")
                };
                for rl in request.resource_logs {
                    for sl in rl.scope_logs {
                        for record in sl.log_records {
                            match record.body.and_then(|b| b.value) {
                                Some(any_value::Value::StringValue(s)) => bodies.push(s),
                                other => panic!("unexpected body {other:?}"),
                            }
                        }
                    }
                }
            }
            bodies
        }
    }

    async fn start(
        config: ProbabilisticSamplerConfig,
        signal: Signal,
    ) -> (Arc<dyn RunningProcessor>, Arc<Recorder>, Telemetry) {
        let telemetry = Telemetry::new();
        let next = Arc::new(Recorder::default());
        let processor = Box::new(ProbabilisticSampler::new(config))
            .start(ProcessorContext {
                id: "sample_10".to_string(),
                pipeline: signal.as_str().to_string(),
                signal,
                next: next.clone(),
                telemetry: telemetry.clone(),
            })
            .await
            .unwrap();
        (processor, next, telemetry)
    }

    fn attr(key: &str, value: any_value::Value) -> KeyValue {
        KeyValue {
            key: key.to_string(),
            value: Some(AnyValue { value: Some(value) }),
            ..Default::default()
        }
    }

    fn span(trace_id: [u8; 16], name: &str, attributes: Vec<KeyValue>) -> Span {
        Span {
            trace_id: trace_id.to_vec(),
            span_id: vec![1; 8],
            name: name.to_string(),
            attributes,
            ..Default::default()
        }
    }

    fn traces(spans: Vec<Span>) -> Batch {
        let request = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans {
                    spans,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        Batch::from_encoded(Signal::Traces, Bytes::from(request.encode_to_vec())).unwrap()
    }

    fn logs(records: Vec<LogRecord>) -> Batch {
        let request = ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                scope_logs: vec![ScopeLogs {
                    log_records: records,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        Batch::from_encoded(Signal::Logs, Bytes::from(request.encode_to_vec())).unwrap()
    }

    fn record(body: &str, trace_id: Option<[u8; 16]>, attributes: Vec<KeyValue>) -> LogRecord {
        LogRecord {
            body: Some(AnyValue {
                value: Some(any_value::Value::StringValue(body.to_string())),
            }),
            trace_id: trace_id.map(|t| t.to_vec()).unwrap_or_default(),
            attributes,
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn every_span_of_a_trace_gets_the_same_decision_on_two_instances() {
        let config = config("sampling_percentage = 10.0\nhash_seed = 22");
        let (a, a_next, _) = start(config.clone(), Signal::Traces).await;
        let (b, b_next, _) = start(config, Signal::Traces).await;
        let ids = random_ids(2_000, 4);
        // Each trace has three spans, split over two requests in different orders.
        for chunk in ids.chunks(100) {
            let first: Vec<Span> = chunk
                .iter()
                .flat_map(|id| [span(*id, "root", vec![]), span(*id, "child", vec![])])
                .collect();
            let second: Vec<Span> = chunk.iter().map(|id| span(*id, "late", vec![])).collect();
            a.consume(traces(first.clone())).await.unwrap();
            a.consume(traces(second.clone())).await.unwrap();
            b.consume(traces(second)).await.unwrap();
            b.consume(traces(first)).await.unwrap();
        }
        let kept = |spans: Vec<Span>| {
            let mut by_trace = std::collections::BTreeMap::<Vec<u8>, usize>::new();
            for s in spans {
                *by_trace.entry(s.trace_id).or_default() += 1;
            }
            by_trace
        };
        let a_kept = kept(a_next.spans());
        let b_kept = kept(b_next.spans());
        assert_eq!(a_kept, b_kept, "the instances agree on every trace");
        assert!(a_kept.values().all(|&n| n == 3), "whole traces are kept");
        assert!((150..=250).contains(&a_kept.len()), "{}", a_kept.len());
        let decider = Decider::new(10.0, 22);
        assert!(a_kept.keys().all(|id| decider.keeps(id)));
    }

    #[tokio::test]
    async fn sampling_priority_overrides_the_hash_for_the_span_carrying_it() {
        let (p, next, telemetry) = start(config("sampling_percentage = 0"), Signal::Traces).await;
        let id = [7u8; 16];
        p.consume(traces(vec![
            span(
                id,
                "forced-int",
                vec![attr("sampling.priority", any_value::Value::IntValue(1))],
            ),
            span(
                id,
                "forced-double",
                vec![attr(
                    "sampling.priority",
                    any_value::Value::DoubleValue(0.5),
                )],
            ),
            span(
                id,
                "forced-string",
                vec![attr(
                    "sampling.priority",
                    any_value::Value::StringValue("10".into()),
                )],
            ),
            span(
                id,
                "negative-is-ignored",
                vec![attr("sampling.priority", any_value::Value::IntValue(-1))],
            ),
            span(
                id,
                "plain",
                vec![attr("other", any_value::Value::IntValue(1))],
            ),
        ]))
        .await
        .unwrap();
        let names: Vec<String> = next.spans().into_iter().map(|s| s.name).collect();
        assert_eq!(names, ["forced-int", "forced-double", "forced-string"]);
        assert_eq!(
            telemetry
                .processor_dropped("sample_10", Signal::Traces)
                .get(),
            2
        );

        let (p, next, _) = start(config("sampling_percentage = 100"), Signal::Traces).await;
        p.consume(traces(vec![
            span(
                id,
                "zero-drops",
                vec![attr("sampling.priority", any_value::Value::IntValue(0))],
            ),
            span(
                id,
                "zero-string-drops",
                vec![attr(
                    "sampling.priority",
                    any_value::Value::StringValue("0".into()),
                )],
            ),
            span(id, "kept", vec![]),
        ]))
        .await
        .unwrap();
        let names: Vec<String> = next.spans().into_iter().map(|s| s.name).collect();
        assert_eq!(names, ["kept"]);
    }

    #[tokio::test]
    async fn sampled_and_dropped_items_are_counted_and_empty_results_not_sent() {
        let (p, next, telemetry) = start(config("sampling_percentage = 10"), Signal::Traces).await;
        let ids = random_ids(1_000, 5);
        let spans: Vec<Span> = ids.iter().map(|id| span(*id, "s", vec![])).collect();
        p.consume(traces(spans)).await.unwrap();
        let kept = next.spans().len() as u64;
        let sampled = telemetry
            .counter_vec(
                "sluice_processor_probabilistic_sampler_sampled_items_total",
                "",
                &["processor", "signal"],
            )
            .with_label_values(&["sample_10", "traces"])
            .get();
        assert_eq!(sampled, kept);
        assert_eq!(
            telemetry
                .processor_dropped("sample_10", Signal::Traces)
                .get(),
            1_000 - kept
        );

        let dropped_id = ids
            .iter()
            .find(|id| !Decider::new(10.0, 0).keeps(*id))
            .unwrap();
        p.consume(traces(vec![span(*dropped_id, "s", vec![])]))
            .await
            .unwrap();
        assert!(
            next.taken.lock().unwrap().is_empty(),
            "nothing left to send"
        );
    }

    #[tokio::test]
    async fn logs_sample_by_trace_id_and_fall_back_to_the_attribute() {
        let config = config("sampling_percentage = 50\nfrom_attribute = \"session.id\"");
        let decider = Decider::new(50.0, 0);
        let ids = random_ids(200, 6);
        let kept_id = *ids.iter().find(|id| decider.keeps(*id)).unwrap();
        let dropped_id = *ids.iter().find(|id| !decider.keeps(*id)).unwrap();
        let sessions: Vec<String> = (0..200).map(|i| format!("session-{i}")).collect();
        let kept_session = sessions
            .iter()
            .find(|s| decider.keeps(s.as_bytes()))
            .unwrap();
        let dropped_session = sessions
            .iter()
            .find(|s| !decider.keeps(s.as_bytes()))
            .unwrap();
        let session = |s: &str| vec![attr("session.id", any_value::Value::StringValue(s.into()))];

        let (p, next, telemetry) = start(config, Signal::Logs).await;
        p.consume(logs(vec![
            // A trace id decides, even against the attribute.
            record("trace-kept", Some(kept_id), session(dropped_session)),
            record("trace-dropped", Some(dropped_id), session(kept_session)),
            // Without one (or with the all-zero invalid id) the attribute decides.
            record("session-kept", None, session(kept_session)),
            record(
                "zero-trace-session-kept",
                Some([0; 16]),
                session(kept_session),
            ),
            record("session-dropped", None, session(dropped_session)),
            // With neither, fail_closed drops.
            record("nothing", None, vec![]),
        ]))
        .await
        .unwrap();
        assert_eq!(
            next.log_bodies(),
            ["trace-kept", "session-kept", "zero-trace-session-kept"]
        );
        assert_eq!(
            telemetry.processor_dropped("sample_10", Signal::Logs).get(),
            3
        );
    }

    #[tokio::test]
    async fn logs_with_record_source_sample_by_the_attribute_only() {
        let config = config(
            "sampling_percentage = 50\nattribute_source = \"record\"\n\
             from_attribute = \"user.id\"\nfail_closed = false",
        );
        let decider = Decider::new(50.0, 0);
        let users: Vec<i64> = (0..200).collect();
        let kept_user = *users
            .iter()
            .find(|u| decider.keeps(u.to_string().as_bytes()))
            .unwrap();
        let dropped_user = *users
            .iter()
            .find(|u| !decider.keeps(u.to_string().as_bytes()))
            .unwrap();
        let ids = random_ids(200, 7);
        let dropped_trace = *ids.iter().find(|id| !decider.keeps(*id)).unwrap();
        let user = |u: i64| vec![attr("user.id", any_value::Value::IntValue(u))];

        let (p, next, _) = start(config, Signal::Logs).await;
        p.consume(logs(vec![
            // The trace id is not looked at; integers hash as their decimal text.
            record("user-kept", Some(dropped_trace), user(kept_user)),
            record("user-dropped", None, user(dropped_user)),
            // fail_closed = false keeps what has nothing to sample by.
            record("nothing-kept", None, vec![]),
            record(
                "priority-kept",
                None,
                [
                    user(dropped_user),
                    vec![attr("sampling.priority", any_value::Value::IntValue(2))],
                ]
                .concat(),
            ),
        ]))
        .await
        .unwrap();
        assert_eq!(
            next.log_bodies(),
            ["user-kept", "nothing-kept", "priority-kept"]
        );
    }
}
