use std::sync::Mutex;

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use sluice_pipeline::config::ComponentKind;

use super::*;

fn settings(toml: &str) -> ComponentSettings {
    ComponentSettings::new(
        ComponentKind::Processor,
        "cost",
        "cost",
        toml::from_str(toml).expect("test TOML is valid"),
    )
}

fn kv(key: &str, value: Value) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

fn s(key: &str, value: &str) -> KeyValue {
    kv(key, Value::StringValue(value.to_string()))
}

fn i(key: &str, value: i64) -> KeyValue {
    kv(key, Value::IntValue(value))
}

fn get<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a Value> {
    let mut found = attributes.iter().filter(|kv| kv.key == key);
    let first = found.next()?;
    assert!(found.next().is_none(), "{key} is on the span once");
    first.value.as_ref()?.value.as_ref()
}

fn double(attributes: &[KeyValue], key: &str) -> Option<f64> {
    match get(attributes, key)? {
        Value::DoubleValue(d) => Some(*d),
        other => panic!("{key} is not a double: {other:?}"),
    }
}

/// `(gen_ai.usage.cost, llm.cost.prompt, llm.cost.completion, llm.cost.total)`.
fn costs(attributes: &[KeyValue]) -> Option<(f64, f64, f64, f64)> {
    Some((
        double(attributes, COST)?,
        double(attributes, COST_PROMPT)?,
        double(attributes, COST_COMPLETION)?,
        double(attributes, COST_TOTAL)?,
    ))
}

const TABLE: &str = r#"
[[models]]
model = "gpt-4o*"
input = 2.50
output = 10.00
cache_read = 1.25

[[models]]
model = "o3-mini"
input = 1.10
output = 4.40
cache_read = 0.55

[[models]]
model = "claude-3-7-sonnet*"
input = 3
output = 15
cache_read = 0.30
cache_write = 3.75
"#;

fn table() -> PriceTable {
    CostConfig::from_settings(&settings(TABLE)).unwrap().table()
}

fn price(mut attributes: Vec<KeyValue>) -> (Vec<KeyValue>, Tally) {
    let mut tally = Tally::default();
    price_attributes(&mut attributes, &table(), &mut tally);
    (attributes, tally)
}

/// The attributes of the gateway's CLIENT span of an answered o3-mini chat (both
/// conventions, as receivers/src/gateway/traces.rs writes them).
fn gateway_client_span() -> Vec<KeyValue> {
    vec![
        s("gen_ai.operation.name", "chat"),
        s("gen_ai.provider.name", "openai"),
        s("gen_ai.request.model", "o3-mini"),
        s("gen_ai.response.model", "o3-mini"),
        i("gen_ai.usage.input_tokens", 2000),
        i("gen_ai.usage.output_tokens", 15),
        i("gen_ai.usage.cache_read.input_tokens", 896),
        i("gen_ai.usage.reasoning.output_tokens", 12),
        s("llm.model_name", "o3-mini"),
        i("llm.token_count.prompt", 2000),
        i("llm.token_count.completion", 15),
        i("llm.token_count.total", 2015),
        i("llm.token_count.prompt_details.cache_read", 896),
        i("llm.token_count.completion_details.reasoning", 12),
    ]
}

#[test]
fn readme_example_parses_with_the_documented_fallbacks() {
    let readme = include_str!("../../README.md");
    let section = readme
        .split("\n## `cost`")
        .nth(1)
        .expect("the README has a cost section");
    let example = section
        .split("```toml\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("the cost section has a TOML example");
    let file: toml::Table = toml::from_str(example).unwrap();
    let table = file["processors"]["cost"].as_table().unwrap().clone();
    let config = CostConfig::from_settings(&ComponentSettings {
        table,
        ..settings("")
    })
    .unwrap();
    assert!(config.models.len() >= 2);
    assert_eq!(config.models[0].model, "gpt-4o*");
    assert_eq!(config.models[0].cache_read, Some(1.25));
    assert_eq!(config.models[0].reasoning, None, "falls back to output");
}

#[test]
fn empty_price_table_is_an_error() {
    let error = CostConfig::from_settings(&settings("")).unwrap_err();
    assert_eq!(error.path.to_string(), "processors.cost.models");
}

#[test]
fn config_errors_name_the_entry_and_key() {
    let error = CostConfig::from_settings(&settings(
        "[[models]]\nmodel = \"a\"\ninput = 1\noutput = 1\n[[models]]\nmodel = \"b\"\ninput = -1\noutput = 1\n",
    ))
    .unwrap_err();
    assert_eq!(error.path.to_string(), "processors.cost.models[1].input");

    let error = CostConfig::from_settings(&settings(
        "[[models]]\nmodel = \"a*\"\ninput = 1\noutput = 1\n[[models]]\nmodel = \"a*\"\ninput = 2\noutput = 1\n",
    ))
    .unwrap_err();
    assert_eq!(error.path.to_string(), "processors.cost.models[1].model");
    assert!(error.message.contains("twice"), "{}", error.message);

    let error = CostConfig::from_settings(&settings(
        "[[models]]\nmodel = \"a\"\ninput = 1\noutput = 1\ncached = 1\n",
    ))
    .unwrap_err();
    assert_eq!(error.path.to_string(), "processors.cost.models[0].cached");

    let error =
        CostConfig::from_settings(&settings("[[models]]\nmodel = \"a\"\ninput = 1\n")).unwrap_err();
    assert!(error.message.contains("output"), "{}", error.message);

    let error = CostConfig::from_settings(&settings(
        "[[models]]\nmodel = \"a\"\ninput = 1\noutput = 1\nreasoning = inf\n",
    ))
    .unwrap_err();
    assert_eq!(
        error.path.to_string(),
        "processors.cost.models[0].reasoning"
    );
}

#[test]
fn gateway_span_gets_exact_cost_attributes() {
    let (attributes, tally) = price(gateway_client_span());
    // (2000 − 896) × 1.10 + 896 × 0.55 = 1707.2 µ$; (15 − 12) × 4.40 + 12 × 4.40 = 66 µ$.
    assert_eq!(
        costs(&attributes),
        Some((0.0017732, 0.0017072, 0.000066, 0.0017732))
    );
    assert_eq!(tally.priced, 1);
    assert_eq!(attributes.len(), gateway_client_span().len() + 4);
}

#[test]
fn openinference_only_span_is_priced_from_llm_token_counts() {
    let (attributes, _) = price(vec![
        s("llm.model_name", "claude-3-7-sonnet-20250219"),
        i("llm.token_count.prompt", 10000),
        i("llm.token_count.completion", 1000),
        i("llm.token_count.prompt_details.cache_read", 6000),
        i("llm.token_count.prompt_details.cache_write", 2000),
    ]);
    // 2000 × 3 + 6000 × 0.30 + 2000 × 3.75 = 15300 µ$; 1000 × 15 = 15000 µ$.
    assert_eq!(costs(&attributes), Some((0.0303, 0.0153, 0.015, 0.0303)));
}

#[test]
fn genai_counts_win_over_openinference_counts() {
    let (attributes, _) = price(vec![
        s("gen_ai.request.model", "gpt-4o"),
        i("llm.token_count.prompt", 999_999),
        i("gen_ai.usage.input_tokens", 1000),
    ]);
    assert_eq!(double(&attributes, COST), Some(0.0025));
}

#[test]
fn response_model_wins_over_request_model() {
    // Routed from an alias to a priced model: the response names what was billed.
    let (attributes, _) = price(vec![
        s("gen_ai.request.model", "cheap-alias"),
        s("gen_ai.response.model", "gpt-4o-2024-08-06"),
        i("gen_ai.usage.input_tokens", 1_000_000),
    ]);
    assert_eq!(double(&attributes, COST), Some(2.5));

    let (attributes, _) = price(vec![
        s("gen_ai.response.model", "o3-mini"),
        s("gen_ai.request.model", "gpt-4o"),
        i("gen_ai.usage.input_tokens", 1_000_000),
    ]);
    assert_eq!(double(&attributes, COST), Some(1.1));
}

#[test]
fn unpriced_model_gets_no_cost_and_is_counted_by_model() {
    let telemetry = Telemetry::new();
    let pricer = Pricer::new(Arc::new(table()), &telemetry, "cost", Signal::Traces);
    let mut request = Request::Traces(traces(vec![
        vec![
            s("gen_ai.request.model", "llama-3.1-70b"),
            i("gen_ai.usage.input_tokens", 10),
        ],
        vec![
            s("gen_ai.request.model", "llama-3.1-70b"),
            i("gen_ai.usage.output_tokens", 10),
        ],
        vec![i("gen_ai.usage.input_tokens", 10)],
        gateway_client_span(),
    ]));
    pricer.process(&mut request);
    let spans = spans(&request);
    assert_eq!(costs(&spans[0]), None);
    assert_eq!(costs(&spans[1]), None);
    assert_eq!(costs(&spans[2]), None);
    assert!(costs(&spans[3]).is_some());
    let text = telemetry.render();
    assert!(
        text.contains("sluice_cost_unpriced_total{model=\"llama-3.1-70b\"} 2"),
        "{text}"
    );
    assert!(
        text.contains("sluice_cost_unpriced_total{model=\"(none)\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("sluice_cost_priced_items_total{processor=\"cost\",signal=\"traces\"} 1"),
        "{text}"
    );
}

#[test]
fn unpriced_model_labels_are_capped() {
    let telemetry = Telemetry::new();
    let counter = UnpricedCounter::get(&telemetry);
    for n in 0..MAX_UNPRICED_MODELS + 5 {
        counter.add(&format!("model-{n}"), 1);
    }
    counter.add("model-0", 1);
    let text = telemetry.render();
    let series = text
        .lines()
        .filter(|l| l.starts_with("sluice_cost_unpriced_total{"))
        .count();
    assert_eq!(series, MAX_UNPRICED_MODELS + 1);
    assert!(text.contains("sluice_cost_unpriced_total{model=\"other\"} 5"));
    assert!(text.contains("sluice_cost_unpriced_total{model=\"model-0\"} 2"));
    // Shared by every processor of the registry.
    UnpricedCounter::get(&telemetry).add("model-999999", 1);
    assert!(
        telemetry
            .render()
            .contains("sluice_cost_unpriced_total{model=\"other\"} 6")
    );
}

#[test]
fn spans_without_token_counts_are_left_alone() {
    let attributes = vec![s("gen_ai.request.model", "gpt-4o"), s("http.method", "GET")];
    let (priced, tally) = price(attributes.clone());
    assert_eq!(priced, attributes);
    assert_eq!(tally.priced + tally.invalid, 0);
    assert!(tally.unpriced.is_empty());
}

#[test]
fn counts_sent_as_doubles_or_strings_are_read() {
    let (attributes, _) = price(vec![
        s("gen_ai.request.model", "gpt-4o"),
        kv("gen_ai.usage.input_tokens", Value::DoubleValue(1000.0)),
        s("gen_ai.usage.output_tokens", "500"),
    ]);
    assert_eq!(double(&attributes, COST), Some(0.0075));
}

#[test]
fn malformed_or_inconsistent_counts_are_not_priced() {
    for attributes in [
        vec![
            s("gen_ai.request.model", "gpt-4o"),
            i("gen_ai.usage.input_tokens", -1),
        ],
        vec![
            s("gen_ai.request.model", "gpt-4o"),
            kv("gen_ai.usage.input_tokens", Value::DoubleValue(1.5)),
        ],
        vec![
            s("gen_ai.request.model", "gpt-4o"),
            s("gen_ai.usage.input_tokens", "many"),
        ],
        // Cache tokens reported apart from the input tokens: not the rule the formula needs.
        vec![
            s("gen_ai.request.model", "gpt-4o"),
            i("gen_ai.usage.input_tokens", 100),
            i("gen_ai.usage.cache_read.input_tokens", 1000),
        ],
        vec![
            s("gen_ai.request.model", "gpt-4o"),
            i("gen_ai.usage.output_tokens", 10),
            i("gen_ai.usage.reasoning.output_tokens", 11),
        ],
    ] {
        let (priced, tally) = price(attributes.clone());
        assert_eq!(priced, attributes, "no cost added");
        assert_eq!(tally.invalid, 1);
    }
}

#[test]
fn existing_cost_attributes_are_replaced() {
    let (attributes, _) = price(vec![
        s("gen_ai.request.model", "gpt-4o"),
        i("gen_ai.usage.input_tokens", 1_000_000),
        kv(COST, Value::DoubleValue(123.0)),
        s(COST_TOTAL, "a guess"),
    ]);
    assert_eq!(costs(&attributes), Some((2.5, 2.5, 0.0, 2.5)));
    assert_eq!(attributes.len(), 6);
}

fn traces(spans: Vec<Vec<KeyValue>>) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            scope_spans: vec![ScopeSpans {
                spans: spans
                    .into_iter()
                    .map(|attributes| Span {
                        name: "chat".to_string(),
                        attributes,
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

fn spans(request: &Request) -> Vec<Vec<KeyValue>> {
    let Request::Traces(request) = request else {
        panic!("traces")
    };
    request.resource_spans[0].scope_spans[0]
        .spans
        .iter()
        .map(|s| s.attributes.clone())
        .collect()
}

/// The next component: keeps what it is given.
#[derive(Default)]
struct Keep(Mutex<Vec<Batch>>);

#[async_trait]
impl Consumer for Keep {
    async fn consume(&self, batch: Batch) -> Result<(), ConsumeError> {
        self.0.lock().unwrap().push(batch);
        Ok(())
    }
}

async fn start(signal: Signal, next: Arc<Keep>) -> Arc<dyn RunningProcessor> {
    let processor = CostProcessorFactory
        .build(&settings(TABLE))
        .expect("the table is valid");
    processor
        .start(ProcessorContext {
            id: "cost".to_string(),
            pipeline: signal.as_str().to_string(),
            signal,
            next,
            telemetry: Telemetry::new(),
        })
        .await
        .unwrap()
}

#[tokio::test]
async fn processor_prices_encoded_trace_batches_and_passes_them_on() {
    use prost::Message;
    let next = Arc::new(Keep::default());
    let processor = start(Signal::Traces, next.clone()).await;
    let encoded = traces(vec![gateway_client_span()]).encode_to_vec();
    let batch = Batch::from_encoded(Signal::Traces, encoded.into()).unwrap();
    processor.consume(batch).await.unwrap();
    let taken = next.0.lock().unwrap().pop().unwrap();
    let request = taken.into_request().unwrap();
    assert_eq!(
        costs(&spans(&request)[0]),
        Some((0.0017732, 0.0017072, 0.000066, 0.0017732))
    );
}

#[tokio::test]
async fn processor_derives_the_cost_metric_in_a_metrics_pipeline() {
    use opentelemetry_proto::tonic::metrics::v1::{
        Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum, metric::Data,
        number_data_point,
    };
    let next = Arc::new(Keep::default());
    let processor = start(Signal::Metrics, next.clone()).await;
    let point = |token_type: &str, value: i64| NumberDataPoint {
        attributes: vec![
            s("gen_ai.request.model", "gpt-4o"),
            s("sluice.api_key.id", "team-a"),
            s("gen_ai.token.type", token_type),
        ],
        value: Some(number_data_point::Value::AsInt(value)),
        ..Default::default()
    };
    let request = ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            scope_metrics: vec![ScopeMetrics {
                metrics: vec![Metric {
                    name: metric::TOKENS_METRIC.to_string(),
                    data: Some(Data::Sum(Sum {
                        data_points: vec![point("input", 1000), point("output", 500)],
                        aggregation_temporality: 2,
                        is_monotonic: true,
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    let batch = Batch::from_request(Request::Metrics(request));
    assert_eq!(batch.item_count(), 2);
    processor.consume(batch).await.unwrap();
    let taken = next.0.lock().unwrap().pop().unwrap();
    assert_eq!(
        taken.item_count(),
        3,
        "the cost point is counted as an item"
    );
    let Request::Metrics(request) = taken.into_request().unwrap() else {
        panic!("metrics")
    };
    let cost = &request.resource_metrics[0].scope_metrics[0].metrics[1];
    assert_eq!(cost.name, "gen_ai.client.cost");
    let Some(Data::Sum(sum)) = &cost.data else {
        panic!("a sum")
    };
    assert_eq!(
        sum.data_points[0].value,
        Some(number_data_point::Value::AsDouble(0.0075))
    );
}
