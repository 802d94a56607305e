//! `gen_ai.client.cost`: the cost counter derived from the gateway's token counter.
//!
//! The gateway receiver exports `sluice.gateway.tokens`, a cumulative monotonic Sum with one
//! series per request dimension set (model, provider, key id, …) and `gen_ai.token.type`.
//! Cost is linear in tokens, so the cost of a cumulative token count is the cumulative cost:
//! the data points of one export that differ only in `gen_ai.token.type` (and share start
//! and time) are one usage, priced into one `gen_ai.client.cost` point with exactly those
//! other attributes. Nothing is kept between exports.

use std::collections::HashMap;

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::metrics::v1::{
    Metric, NumberDataPoint, Sum, metric::Data, number_data_point,
};

use super::prices::{PriceTable, Usage};
use super::{Tally, string_value};

/// The metric the cost is derived from.
pub const TOKENS_METRIC: &str = "sluice.gateway.tokens";
/// The metric this adds.
pub const COST_METRIC: &str = "gen_ai.client.cost";
/// The attribute that tells the token counts of one usage apart.
const TOKEN_TYPE: &str = "gen_ai.token.type";

/// One usage being assembled from the token points that share its attributes.
struct Group {
    attributes: Vec<KeyValue>,
    start_time_unix_nano: u64,
    time_unix_nano: u64,
    usage: Usage,
    /// A token count that was not a non-negative integer: the group is not priced.
    invalid: bool,
}

/// Adds a `gen_ai.client.cost` metric next to every `sluice.gateway.tokens` metric of
/// `request`, tallying priced, unpriced and invalid series into `tally`.
pub fn derive(request: &mut ExportMetricsServiceRequest, table: &PriceTable, tally: &mut Tally) {
    for scope in request
        .resource_metrics
        .iter_mut()
        .flat_map(|rm| rm.scope_metrics.iter_mut())
    {
        // A scope that already has the cost (a second cost processor) keeps its own.
        if scope.metrics.iter().any(|m| m.name == COST_METRIC) {
            continue;
        }
        let Some(cost) = scope
            .metrics
            .iter()
            .find(|m| m.name == TOKENS_METRIC)
            .and_then(|tokens| match &tokens.data {
                Some(Data::Sum(sum)) => cost_metric(sum, table, tally),
                _ => None,
            })
        else {
            continue;
        };
        scope.metrics.push(cost);
    }
}

fn cost_metric(tokens: &Sum, table: &PriceTable, tally: &mut Tally) -> Option<Metric> {
    let mut groups: Vec<Group> = Vec::new();
    let mut index: HashMap<(String, u64, u64), usize> = HashMap::new();
    for point in &tokens.data_points {
        let Some(token_type) = point
            .attributes
            .iter()
            .find(|kv| kv.key == TOKEN_TYPE)
            .and_then(|kv| string_value(kv.value.as_ref()))
        else {
            continue;
        };
        let attributes: Vec<KeyValue> = point
            .attributes
            .iter()
            .filter(|kv| kv.key != TOKEN_TYPE)
            .cloned()
            .collect();
        let key = (
            group_key(&attributes),
            point.start_time_unix_nano,
            point.time_unix_nano,
        );
        let group = *index.entry(key).or_insert_with(|| {
            groups.push(Group {
                attributes,
                start_time_unix_nano: point.start_time_unix_nano,
                time_unix_nano: point.time_unix_nano,
                usage: Usage::default(),
                invalid: false,
            });
            groups.len() - 1
        });
        let group = &mut groups[group];
        let Some(count) = point_count(point) else {
            group.invalid = true;
            continue;
        };
        let usage = &mut group.usage;
        let field = match token_type {
            "input" => &mut usage.input,
            "output" => &mut usage.output,
            "cached_input" | "cache_read" => &mut usage.cache_read,
            "cache_creation" | "cache_write" => &mut usage.cache_write,
            "reasoning" => &mut usage.reasoning,
            // A type with no price (e.g. a future one) does not change the cost.
            _ => continue,
        };
        *field = field.saturating_add(count);
    }

    let mut data_points = Vec::with_capacity(groups.len());
    for group in groups {
        let model = model(&group.attributes);
        if group.invalid {
            tally.invalid += 1;
            continue;
        }
        let Some(price) = model.and_then(|m| table.lookup(m)) else {
            tally.add_unpriced(model.unwrap_or_default());
            continue;
        };
        let Ok(cost) = price.cost(&group.usage) else {
            tally.invalid += 1;
            continue;
        };
        tally.priced += 1;
        data_points.push(NumberDataPoint {
            attributes: group.attributes,
            start_time_unix_nano: group.start_time_unix_nano,
            time_unix_nano: group.time_unix_nano,
            value: Some(number_data_point::Value::AsDouble(cost.total_usd())),
            ..Default::default()
        });
    }
    if data_points.is_empty() {
        return None;
    }
    Some(Metric {
        name: COST_METRIC.to_string(),
        description: "Cost of GenAI operations in USD, from the token counts and the cost \
                      processor's price table."
            .to_string(),
        unit: "USD".to_string(),
        data: Some(Data::Sum(Sum {
            data_points,
            aggregation_temporality: tokens.aggregation_temporality,
            is_monotonic: true,
        })),
        ..Default::default()
    })
}

/// The priced model of a series: the response model, else the requested one.
fn model(attributes: &[KeyValue]) -> Option<&str> {
    let get = |key: &str| {
        attributes
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| string_value(kv.value.as_ref()))
    };
    get("gen_ai.response.model").or_else(|| get("gen_ai.request.model"))
}

/// A key identifying an attribute set whatever the order of its attributes.
fn group_key(attributes: &[KeyValue]) -> String {
    let mut sorted: Vec<&KeyValue> = attributes.iter().collect();
    sorted.sort_by(|a, b| a.key.cmp(&b.key));
    format!("{sorted:?}")
}

/// A data point's value as a token count.
fn point_count(point: &NumberDataPoint) -> Option<u64> {
    match point.value? {
        number_data_point::Value::AsInt(i) => u64::try_from(i).ok(),
        number_data_point::Value::AsDouble(d) => super::whole_number(d),
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::common::v1::AnyValue;
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    use opentelemetry_proto::tonic::metrics::v1::{
        AggregationTemporality, ResourceMetrics, ScopeMetrics,
    };

    use super::super::prices::Price;
    use super::*;

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

    /// A token point the way the gateway's aggregator writes it.
    fn point(model: &str, key_id: &str, token_type: &str, value: i64) -> NumberDataPoint {
        NumberDataPoint {
            attributes: vec![
                s("gen_ai.operation.name", "chat"),
                s("gen_ai.request.model", model),
                s("gen_ai.response.model", &format!("{model}-2024")),
                s("gen_ai.provider.name", "openai"),
                s("sluice.api_key.id", key_id),
                kv("http.response.status_code", Value::IntValue(200)),
                s(TOKEN_TYPE, token_type),
            ],
            start_time_unix_nano: 1_000,
            time_unix_nano: 2_000,
            value: Some(number_data_point::Value::AsInt(value)),
            ..Default::default()
        }
    }

    fn request(points: Vec<NumberDataPoint>) -> ExportMetricsServiceRequest {
        ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                scope_metrics: vec![ScopeMetrics {
                    metrics: vec![Metric {
                        name: TOKENS_METRIC.to_string(),
                        unit: "{token}".to_string(),
                        data: Some(Data::Sum(Sum {
                            data_points: points,
                            aggregation_temporality: AggregationTemporality::Cumulative as i32,
                            is_monotonic: true,
                        })),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    fn table() -> PriceTable {
        PriceTable::new([
            (
                "gpt-4o*".to_string(),
                Price::new(2.50, 10.00, Some(1.25), None, None),
            ),
            (
                "o3-mini*".to_string(),
                Price::new(1.10, 4.40, Some(0.55), None, None),
            ),
        ])
    }

    fn cost_points(request: &ExportMetricsServiceRequest) -> Vec<&NumberDataPoint> {
        let metrics = &request.resource_metrics[0].scope_metrics[0].metrics;
        let cost = metrics
            .iter()
            .find(|m| m.name == COST_METRIC)
            .expect("the cost metric was added");
        assert_eq!(cost.unit, "USD");
        let Some(Data::Sum(sum)) = &cost.data else {
            panic!("a sum")
        };
        assert!(sum.is_monotonic);
        assert_eq!(
            sum.aggregation_temporality,
            AggregationTemporality::Cumulative as i32
        );
        sum.data_points.iter().collect()
    }

    fn value(point: &NumberDataPoint) -> f64 {
        match point.value {
            Some(number_data_point::Value::AsDouble(d)) => d,
            other => panic!("not a double: {other:?}"),
        }
    }

    #[test]
    fn cost_points_have_the_token_dimensions_without_the_token_type() {
        let mut request = request(vec![
            point("gpt-4o", "team-a", "input", 1000),
            point("gpt-4o", "team-a", "output", 200),
            point("gpt-4o", "team-a", "cached_input", 400),
            point("o3-mini", "team-b", "input", 2000),
            point("o3-mini", "team-b", "output", 15),
            point("o3-mini", "team-b", "cached_input", 896),
            point("o3-mini", "team-b", "reasoning", 12),
        ]);
        let mut tally = Tally::default();
        derive(&mut request, &table(), &mut tally);
        let points = cost_points(&request);
        assert_eq!(points.len(), 2);
        // (1000 − 400) × 2.50 + 400 × 1.25 + 200 × 10 = 4000 µ$
        assert_eq!(value(points[0]), 0.004);
        // See the prices table test: 1773.2 µ$
        assert_eq!(value(points[1]), 0.0017732);
        let keys: Vec<&str> = points[1]
            .attributes
            .iter()
            .map(|kv| kv.key.as_str())
            .collect();
        assert_eq!(
            keys,
            [
                "gen_ai.operation.name",
                "gen_ai.request.model",
                "gen_ai.response.model",
                "gen_ai.provider.name",
                "sluice.api_key.id",
                "http.response.status_code"
            ]
        );
        assert_eq!(
            string_value(points[1].attributes[4].value.as_ref()),
            Some("team-b")
        );
        assert_eq!(points[0].start_time_unix_nano, 1_000);
        assert_eq!(points[0].time_unix_nano, 2_000);
        assert_eq!(tally.priced, 2);
        // The token metric is still there, untouched.
        let metrics = &request.resource_metrics[0].scope_metrics[0].metrics;
        assert_eq!(metrics.len(), 2);
        assert_eq!(metrics[0].name, TOKENS_METRIC);
    }

    #[test]
    fn points_group_whatever_their_attribute_order() {
        let mut reordered = point("gpt-4o", "a", "output", 100);
        reordered.attributes.reverse();
        let mut request = request(vec![point("gpt-4o", "a", "input", 100), reordered]);
        derive(&mut request, &table(), &mut Tally::default());
        let points = cost_points(&request);
        assert_eq!(points.len(), 1);
        // 100 × 2.5 + 100 × 10 = 1250 µ$
        assert_eq!(value(points[0]), 0.00125);
    }

    #[test]
    fn unpriced_models_get_no_cost_point_and_are_tallied() {
        let mut request = request(vec![
            point("gpt-4o", "a", "input", 10),
            point("llama-3", "a", "input", 10),
            point("llama-3", "a", "output", 10),
        ]);
        let mut tally = Tally::default();
        derive(&mut request, &table(), &mut tally);
        assert_eq!(cost_points(&request).len(), 1);
        assert_eq!(tally.unpriced, vec![("llama-3-2024".to_string(), 1)]);
    }

    #[test]
    fn request_model_prices_when_there_is_no_response_model() {
        let mut p = point("gpt-4o", "a", "input", 1_000_000);
        p.attributes.retain(|kv| kv.key != "gen_ai.response.model");
        let mut request = request(vec![p]);
        derive(&mut request, &table(), &mut Tally::default());
        assert_eq!(value(cost_points(&request)[0]), 2.5);
    }

    #[test]
    fn nothing_is_added_without_token_metric_or_priced_series() {
        let mut empty = request(vec![point("llama", "a", "input", 1)]);
        derive(&mut empty, &table(), &mut Tally::default());
        assert_eq!(empty.resource_metrics[0].scope_metrics[0].metrics.len(), 1);

        let mut other = request(vec![point("gpt-4o", "a", "input", 1)]);
        other.resource_metrics[0].scope_metrics[0].metrics[0].name = "other".to_string();
        derive(&mut other, &table(), &mut Tally::default());
        assert_eq!(other.resource_metrics[0].scope_metrics[0].metrics.len(), 1);
    }

    #[test]
    fn negative_counts_make_the_series_invalid() {
        let mut request = request(vec![
            point("gpt-4o", "a", "input", -5),
            point("gpt-4o", "a", "output", 5),
        ]);
        let mut tally = Tally::default();
        derive(&mut request, &table(), &mut tally);
        assert_eq!(
            request.resource_metrics[0].scope_metrics[0].metrics.len(),
            1
        );
        assert_eq!(tally.invalid, 1);
    }

    #[test]
    fn a_scope_that_already_has_the_cost_is_left_alone() {
        let mut request = request(vec![point("gpt-4o", "a", "input", 1)]);
        derive(&mut request, &table(), &mut Tally::default());
        derive(&mut request, &table(), &mut Tally::default());
        assert_eq!(
            request.resource_metrics[0].scope_metrics[0].metrics.len(),
            2
        );
    }
}
