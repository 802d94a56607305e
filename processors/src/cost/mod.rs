//! The `cost` processor: AI cost attribution from token counts and a price table.
//!
//! In a traces pipeline it prices every span that carries token counts (the GenAI semantic
//! conventions' `gen_ai.usage.*`, or OpenInference's `llm.token_count.*`) and adds
//! `gen_ai.usage.cost` and `llm.cost.{prompt,completion,total}` in USD. In a metrics pipeline
//! it derives the `gen_ai.client.cost` counter from the gateway's `sluice.gateway.tokens`
//! (see [`metric`]). A model the table does not price gets no cost, never a guess, and is
//! counted in `sluice_cost_unpriced_total{model}`.

pub mod metric;
pub mod prices;

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value::Value};
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{IntCounter, IntCounterVec, Opts};
use serde::Deserialize;
use sluice_pipeline::{
    Batch, ComponentSettings, ConfigError, ConsumeError, Consumer, Processor, ProcessorContext,
    ProcessorFactory, Request, Running, RunningProcessor, Signal, StartError, Telemetry,
};

use prices::{MAX_PRICE, Price, PriceTable, Usage};

/// The span attribute with the total cost, in USD.
pub const COST: &str = "gen_ai.usage.cost";
/// OpenInference's cost of the input side (uncached, cache-read and cache-write tokens).
pub const COST_PROMPT: &str = "llm.cost.prompt";
/// OpenInference's cost of the output side (output and reasoning tokens).
pub const COST_COMPLETION: &str = "llm.cost.completion";
/// OpenInference's total cost.
pub const COST_TOTAL: &str = "llm.cost.total";

/// The most distinct `model` labels `sluice_cost_unpriced_total` takes; later models are
/// counted under `model="other"`, so model names sent by clients cannot grow the metric
/// without bound.
pub const MAX_UNPRICED_MODELS: usize = 1000;
/// The `model` label for usage with no model attribute at all.
pub const NO_MODEL: &str = "(none)";

/// Configuration of the `cost` processor (`[processors.cost]`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CostConfig {
    /// The price table, one `[[processors.cost.models]]` entry per model name or pattern.
    /// At least one entry.
    #[serde(default)]
    pub models: Vec<ModelPrice>,
}

/// One row of the price table. Prices are in USD per million tokens, kept to six decimals.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelPrice {
    /// The model name as the telemetry reports it (`gpt-4o-2024-08-06`), or a pattern where
    /// `*` matches any run of characters and `?` one character (`gpt-4o*`). Case-sensitive.
    /// An exact name wins over patterns; among patterns the most specific (most characters
    /// that are not wildcards) wins, then the first in the table.
    pub model: String,
    /// Price of input (prompt) tokens that were neither read from nor written to a cache.
    pub input: f64,
    /// Price of output (completion) tokens that are not reasoning tokens.
    pub output: f64,
    /// Price of input tokens read from the provider's cache. Defaults to `input`.
    #[serde(default)]
    pub cache_read: Option<f64>,
    /// Price of input tokens written to the provider's cache. Defaults to `input`.
    #[serde(default)]
    pub cache_write: Option<f64>,
    /// Price of reasoning tokens. Defaults to `output`.
    #[serde(default)]
    pub reasoning: Option<f64>,
}

impl CostConfig {
    /// Parses and checks the `[processors.<id>]` table.
    pub fn from_settings(settings: &ComponentSettings) -> Result<CostConfig, ConfigError> {
        let config: CostConfig = settings.parse()?;
        if config.models.is_empty() {
            return Err(settings.error(
                "models",
                "the price table is empty: add a [[processors.<id>.models]] entry per model",
            ));
        }
        let mut seen = HashSet::new();
        for (i, entry) in config.models.iter().enumerate() {
            let path = settings.path().key("models").index(i);
            if entry.model.is_empty() {
                return Err(ConfigError::new(path.key("model"), "must not be empty"));
            }
            if !seen.insert(entry.model.as_str()) {
                return Err(ConfigError::new(
                    path.key("model"),
                    format!("{:?} is priced twice", entry.model),
                ));
            }
            let prices = [
                ("input", Some(entry.input)),
                ("output", Some(entry.output)),
                ("cache_read", entry.cache_read),
                ("cache_write", entry.cache_write),
                ("reasoning", entry.reasoning),
            ];
            for (key, price) in prices {
                if let Some(price) = price
                    && !(price.is_finite() && (0.0..=MAX_PRICE).contains(&price))
                {
                    return Err(ConfigError::new(
                        path.key(key),
                        format!(
                            "{price} is not a price: write USD per million tokens, from 0 to \
                             {MAX_PRICE}"
                        ),
                    ));
                }
            }
        }
        Ok(config)
    }

    /// The price table this config describes.
    pub fn table(&self) -> PriceTable {
        PriceTable::new(self.models.iter().map(|m| {
            (
                m.model.clone(),
                Price::new(m.input, m.output, m.cache_read, m.cache_write, m.reasoning),
            )
        }))
    }
}

/// Builds `cost` processors.
pub struct CostProcessorFactory;

impl ProcessorFactory for CostProcessorFactory {
    fn type_name(&self) -> &'static str {
        "cost"
    }

    fn signals(&self) -> &'static [Signal] {
        &[Signal::Traces, Signal::Metrics]
    }

    fn build(&self, settings: &ComponentSettings) -> Result<Box<dyn Processor>, ConfigError> {
        let config = CostConfig::from_settings(settings)?;
        Ok(Box::new(CostProcessor {
            table: Arc::new(config.table()),
        }))
    }
}

/// A `cost` processor built from config, ready to start in a pipeline.
pub struct CostProcessor {
    table: Arc<PriceTable>,
}

impl CostProcessor {
    /// A processor pricing with `table`.
    pub fn new(table: PriceTable) -> CostProcessor {
        CostProcessor {
            table: Arc::new(table),
        }
    }
}

#[async_trait]
impl Processor for CostProcessor {
    async fn start(
        self: Box<Self>,
        ctx: ProcessorContext,
    ) -> Result<Arc<dyn RunningProcessor>, StartError> {
        Ok(Arc::new(RunningCost {
            pricer: Pricer::new(self.table, &ctx.telemetry, &ctx.id, ctx.signal),
            id: ctx.id,
            next: ctx.next,
        }))
    }
}

/// The counters one processor instance adds to.
struct Counters {
    priced: IntCounter,
    invalid: IntCounter,
    unpriced: UnpricedCounter,
}

/// Prices the items of decoded requests and counts what it did: the part of the processor
/// that does not depend on being in a pipeline (and that the benchmarks drive).
pub struct Pricer {
    table: Arc<PriceTable>,
    counters: Counters,
}

impl Pricer {
    /// A pricer for the processor `id` in a pipeline of `signal`.
    pub fn new(table: Arc<PriceTable>, telemetry: &Telemetry, id: &str, signal: Signal) -> Pricer {
        let labels = [id, signal.as_str()];
        Pricer {
            table,
            counters: Counters {
                priced: telemetry
                    .counter_vec(
                        "sluice_cost_priced_items_total",
                        "Spans given a cost, or gen_ai.client.cost data points derived, by the \
                         cost processor.",
                        &["processor", "signal"],
                    )
                    .with_label_values(&labels),
                invalid: telemetry
                    .counter_vec(
                        "sluice_cost_invalid_usage_total",
                        "Spans or token series the cost processor left unpriced because their \
                         token counts were not non-negative integers or their cached or \
                         reasoning tokens exceeded the total they are part of.",
                        &["processor", "signal"],
                    )
                    .with_label_values(&labels),
                unpriced: UnpricedCounter::get(telemetry),
            },
        }
    }

    /// Prices every item of `request` that carries token counts.
    pub fn process(&self, request: &mut Request) {
        let mut tally = Tally::default();
        match request {
            Request::Traces(traces) => price_spans(traces, &self.table, &mut tally),
            Request::Metrics(metrics) => metric::derive(metrics, &self.table, &mut tally),
            // The factory offers no logs pipelines.
            Request::Logs(_) => {}
        }
        self.counters.priced.inc_by(tally.priced);
        self.counters.invalid.inc_by(tally.invalid);
        for (model, count) in tally.unpriced {
            self.counters.unpriced.add(&model, count);
        }
    }
}

/// A `cost` processor running in one pipeline.
pub struct RunningCost {
    id: String,
    pricer: Pricer,
    next: Arc<dyn Consumer>,
}

#[async_trait]
impl Consumer for RunningCost {
    async fn consume(&self, mut batch: Batch) -> Result<(), ConsumeError> {
        if batch.is_empty() {
            return self.next.consume(batch).await;
        }
        batch
            .modify(|request| self.pricer.process(request))
            .map_err(|error| {
                ConsumeError::Rejected(format!("cost processor {}: {error}", self.id))
            })?;
        self.next.consume(batch).await
    }
}

#[async_trait]
impl Running for RunningCost {
    /// Holds nothing: every batch is passed on as it is priced.
    async fn shutdown(&self) {}
}

/// What pricing one request did, added to the counters once per batch.
#[derive(Debug, Default)]
pub struct Tally {
    pub priced: u64,
    pub invalid: u64,
    /// Unpriced items by model name (few distinct names per batch: a list is enough).
    pub unpriced: Vec<(String, u64)>,
}

impl Tally {
    fn add_unpriced(&mut self, model: &str) {
        let model = if model.is_empty() { NO_MODEL } else { model };
        match self.unpriced.iter_mut().find(|(m, _)| m == model) {
            Some((_, count)) => *count += 1,
            None => self.unpriced.push((model.to_string(), 1)),
        }
    }
}

/// `sluice_cost_unpriced_total{model}`, with at most [`MAX_UNPRICED_MODELS`] model labels.
/// Registered once per telemetry registry, so every cost processor shares the label budget.
#[derive(Clone)]
struct UnpricedCounter {
    counter: IntCounterVec,
    models: Arc<Mutex<HashSet<String>>>,
}

impl UnpricedCounter {
    const NAME: &'static str = "sluice_cost_unpriced_total";

    fn get(telemetry: &Telemetry) -> UnpricedCounter {
        telemetry.metric(Self::NAME, || UnpricedCounter {
            counter: IntCounterVec::new(
                Opts::new(
                    Self::NAME,
                    "Spans (traces pipelines) or token series per export (metrics pipelines) \
                     with token counts whose model the cost processor's price table does not \
                     price; model=\"other\" past the first 1000 models.",
                ),
                &["model"],
            )
            .expect("the metric's name and label are static and valid"),
            models: Arc::default(),
        })
    }

    fn add(&self, model: &str, count: u64) {
        let label = {
            let mut models = self.models.lock().unwrap_or_else(PoisonError::into_inner);
            if models.contains(model) {
                model
            } else if models.len() < MAX_UNPRICED_MODELS {
                models.insert(model.to_string());
                model
            } else {
                "other"
            }
        };
        self.counter.with_label_values(&[label]).inc_by(count);
    }
}

impl Collector for UnpricedCounter {
    fn desc(&self) -> Vec<&Desc> {
        self.counter.desc()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        self.counter.collect()
    }
}

const COST_KEYS: [&str; 4] = [COST, COST_PROMPT, COST_COMPLETION, COST_TOTAL];

/// What an attribute of a span means to the cost processor.
#[derive(Clone, Copy)]
enum Key {
    /// A token count: its slot in `[input, output, cache_read, cache_write, reasoning]`, and
    /// its rank (0 for the GenAI name, 1 for OpenInference's; the lower wins).
    Count(usize, u8),
    /// The model: rank 0 `gen_ai.response.model` (what was billed), 1 `gen_ai.request.model`,
    /// 2 `llm.model_name`.
    Model(u8),
    /// One of [`COST_KEYS`], already on the span.
    Cost(usize),
}

/// Where each token count and the model of a span are read from, GenAI conventions first.
fn classify(key: &str) -> Option<Key> {
    Some(match key {
        "gen_ai.usage.input_tokens" => Key::Count(0, 0),
        "llm.token_count.prompt" => Key::Count(0, 1),
        "gen_ai.usage.output_tokens" => Key::Count(1, 0),
        "llm.token_count.completion" => Key::Count(1, 1),
        "gen_ai.usage.cache_read.input_tokens" => Key::Count(2, 0),
        "llm.token_count.prompt_details.cache_read" => Key::Count(2, 1),
        "gen_ai.usage.cache_creation.input_tokens" => Key::Count(3, 0),
        "llm.token_count.prompt_details.cache_write" => Key::Count(3, 1),
        "gen_ai.usage.reasoning.output_tokens" => Key::Count(4, 0),
        "llm.token_count.completion_details.reasoning" => Key::Count(4, 1),
        "gen_ai.response.model" => Key::Model(0),
        "gen_ai.request.model" => Key::Model(1),
        "llm.model_name" => Key::Model(2),
        COST => Key::Cost(0),
        COST_PROMPT => Key::Cost(1),
        COST_COMPLETION => Key::Cost(2),
        COST_TOTAL => Key::Cost(3),
        _ => return None,
    })
}

/// A token count as read from an attribute: the rank of the key it came from, and the count,
/// `None` when the value is not a count.
type Read = Option<(u8, Option<u64>)>;

/// What one pass over a span's attributes found.
#[derive(Default)]
struct Scan<'a> {
    /// `[input, output, cache_read, cache_write, reasoning]`.
    counts: [Read; 5],
    model: Option<(u8, &'a str)>,
    /// Where each of [`COST_KEYS`] already is.
    existing: [Option<usize>; 4],
}

impl<'a> Scan<'a> {
    fn of(attributes: &'a [KeyValue]) -> Scan<'a> {
        let mut scan = Scan::default();
        for (i, kv) in attributes.iter().enumerate() {
            let value = kv.value.as_ref();
            match classify(&kv.key) {
                Some(Key::Count(slot, rank))
                    if scan.counts[slot].is_none_or(|(held, _)| rank < held) =>
                {
                    scan.counts[slot] = Some((rank, count(value)));
                }
                Some(Key::Model(rank)) if scan.model.is_none_or(|(held, _)| rank < held) => {
                    if let Some(model) = string_value(value) {
                        scan.model = Some((rank, model));
                    }
                }
                Some(Key::Cost(slot)) => scan.existing[slot] = Some(i),
                _ => {}
            }
        }
        scan
    }

    /// The usage, `None` without any token count, `Some(None)` when a count is not a count.
    fn usage(&self) -> Option<Option<Usage>> {
        if self.counts.iter().all(Option::is_none) {
            return None;
        }
        let mut values = [0u64; 5];
        for (value, read) in values.iter_mut().zip(&self.counts) {
            match read {
                None => {}
                Some((_, Some(count))) => *value = *count,
                Some((_, None)) => return Some(None),
            }
        }
        let [input, output, cache_read, cache_write, reasoning] = values;
        Some(Some(Usage {
            input,
            output,
            cache_read,
            cache_write,
            reasoning,
        }))
    }
}

/// Prices every span of `request` that carries token counts.
pub fn price_spans(request: &mut ExportTraceServiceRequest, table: &PriceTable, tally: &mut Tally) {
    for span in request
        .resource_spans
        .iter_mut()
        .flat_map(|rs| rs.scope_spans.iter_mut())
        .flat_map(|ss| ss.spans.iter_mut())
    {
        price_attributes(&mut span.attributes, table, tally);
    }
}

/// Adds the cost attributes to one span's `attributes` if they carry a priced usage.
fn price_attributes(attributes: &mut Vec<KeyValue>, table: &PriceTable, tally: &mut Tally) {
    let scan = Scan::of(attributes);
    let Some(usage) = scan.usage() else {
        return;
    };
    let Some(usage) = usage else {
        tally.invalid += 1;
        return;
    };
    let model = scan.model.map(|(_, model)| model).unwrap_or_default();
    let Some(price) = table.lookup(model) else {
        tally.add_unpriced(model);
        return;
    };
    let Ok(cost) = price.cost(&usage) else {
        tally.invalid += 1;
        return;
    };
    let existing = scan.existing;
    attributes.reserve(existing.iter().filter(|at| at.is_none()).count());
    let total = cost.total_usd();
    let values = [total, cost.prompt_usd(), cost.completion_usd(), total];
    for ((key, value), at) in COST_KEYS.iter().zip(values).zip(existing) {
        let value = Some(AnyValue {
            value: Some(Value::DoubleValue(value)),
        });
        match at {
            // A cost already on the span (an SDK's own estimate) is replaced: the table is
            // what this deployment pays.
            Some(i) => attributes[i].value = value,
            None => attributes.push(KeyValue {
                key: (*key).to_string(),
                value,
                ..Default::default()
            }),
        }
    }
    tally.priced += 1;
}

/// An attribute value as a token count: a non-negative integer, or a double or string
/// holding one (some SDKs send those).
fn count(value: Option<&AnyValue>) -> Option<u64> {
    match value?.value.as_ref()? {
        Value::IntValue(i) => u64::try_from(*i).ok(),
        Value::DoubleValue(d) => whole_number(*d),
        Value::StringValue(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// `d` as a count when it is a non-negative whole number.
pub(crate) fn whole_number(d: f64) -> Option<u64> {
    // 2^64 as a double: the first whole number a u64 cannot hold.
    (d >= 0.0 && d.fract() == 0.0 && d < 18_446_744_073_709_551_616.0).then_some(d as u64)
}

/// The string in an attribute value, if it is a string.
pub(crate) fn string_value(value: Option<&AnyValue>) -> Option<&str> {
    match value?.value.as_ref()? {
        Value::StringValue(s) => Some(s),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
