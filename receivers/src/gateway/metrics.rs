//! Request events to metrics, aggregated in the receiver: one data point per series and
//! export, never one per request.
//!
//! Every series is cumulative from the receiver's start. The dimensions are those of the
//! spans: `gen_ai.operation.name`, `gen_ai.request.model`, `gen_ai.response.model`,
//! `gen_ai.provider.name`, `sluice.api_key.id`, `http.response.status_code` and, for failures,
//! `error.type`. A requested model that no route names and that was refused for it
//! (`model_not_found`, `forbidden`, or an upstream 404) is counted as `unknown`: a misspelt
//! model must not create series (spans and logs keep the name). Each metric holds at most
//! [`MAX_SERIES`] series; past that, new attribute sets are folded into one series marked
//! `otel.metric.overflow = true`, as the OpenTelemetry SDKs do.

use std::collections::{BTreeMap, HashSet};

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, Histogram as OtlpHistogram, HistogramDataPoint, Metric,
    NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum, metric, number_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use sluice_gateway::event::RequestEvent;

use super::attributes::{self, Attributes};

/// The most series a metric keeps (the OpenTelemetry SDKs' default cardinality limit).
pub(crate) const MAX_SERIES: usize = 2000;

/// The model name metrics use for requested models that have no route.
pub(crate) const UNKNOWN_MODEL: &str = "unknown";

/// Bucket bounds of `gen_ai.client.token.usage`, from the GenAI semantic conventions.
pub(crate) const TOKEN_BOUNDS: &[f64] = &[
    1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0,
    16777216.0, 67108864.0,
];
/// Bucket bounds of `gen_ai.client.operation.duration`, in seconds.
pub(crate) const DURATION_BOUNDS: &[f64] = &[
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
];
/// Bucket bounds of `gen_ai.server.time_to_first_token`, in seconds.
pub(crate) const TTFT_BOUNDS: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];
/// Bucket bounds of `gen_ai.server.time_per_output_token`, in seconds.
pub(crate) const TPOT_BOUNDS: &[f64] = &[
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5,
];

/// One attribute value of a series' key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Dim {
    Str(String),
    Int(i64),
    Bool(bool),
}

/// A series' attributes, in a fixed order.
type Dims = Vec<(&'static str, Dim)>;

fn overflow_dims() -> Dims {
    vec![("otel.metric.overflow", Dim::Bool(true))]
}

fn to_attributes(dims: &Dims) -> Vec<KeyValue> {
    let mut attrs = Attributes::new();
    for (key, value) in dims {
        match value {
            Dim::Str(s) => attrs.str(*key, s.clone()),
            Dim::Int(i) => attrs.int(key, *i),
            Dim::Bool(b) => attrs.bool(key, *b),
        };
    }
    attrs.into_vec()
}

/// The series of one metric, capped at [`MAX_SERIES`].
#[derive(Debug)]
struct Series<T> {
    points: BTreeMap<Dims, T>,
}

impl<T> Default for Series<T> {
    fn default() -> Self {
        Series {
            points: BTreeMap::new(),
        }
    }
}

impl<T> Series<T> {
    fn get(&mut self, dims: Dims, new: impl FnOnce() -> T) -> &mut T {
        let dims = if self.points.len() >= MAX_SERIES && !self.points.contains_key(&dims) {
            overflow_dims()
        } else {
            dims
        };
        self.points.entry(dims).or_insert_with(new)
    }
}

impl Series<u64> {
    fn add(&mut self, dims: Dims, value: u64) {
        let sum = self.get(dims, || 0);
        *sum = sum.saturating_add(value);
    }
}

impl Series<Histogram> {
    fn record(&mut self, dims: Dims, bounds: &'static [f64], value: f64) {
        self.get(dims, || Histogram::new(bounds)).record(value);
    }
}

/// An explicit-bucket histogram: bucket `i` counts values in `(bounds[i-1], bounds[i]]`.
#[derive(Debug, Clone, PartialEq)]
struct Histogram {
    bounds: &'static [f64],
    counts: Vec<u64>,
    count: u64,
    sum: f64,
    min: f64,
    max: f64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: vec![0; bounds.len() + 1],
            count: 0,
            sum: 0.0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
        }
    }

    fn record(&mut self, value: f64) {
        let bucket = self.bounds.partition_point(|bound| *bound < value);
        self.counts[bucket] += 1;
        self.count += 1;
        self.sum += value;
        self.min = self.min.min(value);
        self.max = self.max.max(value);
    }
}

/// The aggregated metrics of every request since the receiver started.
#[derive(Debug)]
pub(crate) struct Aggregator {
    start_unix_nano: u64,
    /// Model names that have a route of their own: always reported as they are.
    routed_models: HashSet<String>,
    token_usage: Series<Histogram>,
    duration: Series<Histogram>,
    time_to_first_token: Series<Histogram>,
    time_per_output_token: Series<Histogram>,
    requests: Series<u64>,
    errors: Series<u64>,
    rate_limited: Series<u64>,
    policy_denied: Series<u64>,
    fallbacks: Series<u64>,
    tokens: Series<u64>,
    /// The gateway's requests in flight when last read, if reported.
    active_requests: Option<i64>,
}

impl Aggregator {
    /// An empty aggregation whose cumulative series start at `start_unix_nano`.
    pub(crate) fn new(start_unix_nano: u64, routed_models: HashSet<String>) -> Aggregator {
        Aggregator {
            start_unix_nano,
            routed_models,
            token_usage: Series::default(),
            duration: Series::default(),
            time_to_first_token: Series::default(),
            time_per_output_token: Series::default(),
            requests: Series::default(),
            errors: Series::default(),
            rate_limited: Series::default(),
            policy_denied: Series::default(),
            fallbacks: Series::default(),
            tokens: Series::default(),
            active_requests: None,
        }
    }

    /// Sets the requests in flight reported by the next export.
    pub(crate) fn set_active_requests(&mut self, active: i64) {
        self.active_requests = Some(active);
    }

    /// The requested model as metrics report it.
    fn metric_model<'a>(&self, event: &'a RequestEvent) -> Option<&'a str> {
        let model = event.requested_model.as_deref()?;
        if self.routed_models.contains(model) {
            return Some(model);
        }
        let refused_for_the_model = matches!(
            event.error.as_ref().map(|e| e.error_type.as_str()),
            Some("model_not_found" | "forbidden" | "404")
        );
        Some(if refused_for_the_model {
            UNKNOWN_MODEL
        } else {
            model
        })
    }

    fn dims(&self, event: &RequestEvent) -> Dims {
        let mut dims: Dims = vec![(
            "gen_ai.operation.name",
            Dim::Str(event.operation.as_str().to_string()),
        )];
        if let Some(model) = self.metric_model(event) {
            dims.push(("gen_ai.request.model", Dim::Str(model.to_string())));
        }
        if let Some(model) = &event.response_model {
            dims.push(("gen_ai.response.model", Dim::Str(model.clone())));
        }
        if let Some(provider) = &event.provider {
            dims.push(("gen_ai.provider.name", Dim::Str(provider.name.clone())));
        }
        dims.push(("sluice.api_key.id", Dim::Str(event.key_id.clone())));
        dims.push((
            "http.response.status_code",
            Dim::Int(i64::from(event.status_code)),
        ));
        if let Some(error) = &event.error {
            dims.push(("error.type", Dim::Str(error.error_type.clone())));
        }
        dims
    }

    /// Adds one request.
    pub(crate) fn record(&mut self, event: &RequestEvent) {
        let dims = self.dims(event);
        let with = |key: &'static str, value: &str| {
            let mut dims = dims.clone();
            dims.push((key, Dim::Str(value.to_string())));
            dims
        };
        self.requests.add(dims.clone(), 1);
        if let Some(error) = &event.error {
            self.errors.add(dims.clone(), 1);
            match error.error_type.as_str() {
                "rate_limited" => self.rate_limited.add(dims.clone(), 1),
                "forbidden" => self.policy_denied.add(dims.clone(), 1),
                _ => {}
            }
        }
        let fallbacks = event.attempts.iter().filter(|a| a.fallback).count() as u64;
        if fallbacks > 0 {
            self.fallbacks.add(dims.clone(), fallbacks);
        }

        let usage = &event.usage;
        for (token_type, count) in [
            ("input", usage.input_tokens),
            ("output", usage.output_tokens),
            ("cached_input", usage.cached_input_tokens),
            ("reasoning", usage.reasoning_tokens),
        ] {
            if let Some(count) = count {
                self.tokens
                    .add(with("gen_ai.token.type", token_type), count);
            }
        }
        if !attributes::is_genai(event.operation) {
            return;
        }
        let timings = &event.timings;
        self.duration.record(
            dims.clone(),
            DURATION_BOUNDS,
            attributes::seconds_between(timings.start_unix_nano, timings.end_unix_nano),
        );
        for (token_type, count) in [
            ("input", usage.input_tokens),
            ("output", usage.output_tokens),
        ] {
            if let Some(count) = count {
                self.token_usage.record(
                    with("gen_ai.token.type", token_type),
                    TOKEN_BOUNDS,
                    count as f64,
                );
            }
        }
        // The server-side latency conventions are about successful streams: an unstreamed
        // answer's first byte is its last, which says nothing about token pace.
        let successful_stream = event.stream && event.status_code < 400;
        if let (true, Some(first)) = (successful_stream, timings.first_chunk_unix_nano) {
            self.time_to_first_token.record(
                dims.clone(),
                TTFT_BOUNDS,
                attributes::seconds_between(timings.start_unix_nano, first),
            );
            if let Some(output) = usage.output_tokens.filter(|n| *n > 1) {
                let last = timings
                    .last_chunk_unix_nano
                    .unwrap_or(timings.end_unix_nano);
                self.time_per_output_token.record(
                    dims,
                    TPOT_BOUNDS,
                    attributes::seconds_between(first, last) / (output - 1) as f64,
                );
            }
        }
    }

    /// Whether no request has been recorded yet.
    pub(crate) fn is_empty(&self) -> bool {
        self.requests.points.is_empty()
    }

    /// Every series as of `now_unix_nano`; `None` when nothing was recorded yet.
    pub(crate) fn export_request(
        &self,
        now_unix_nano: u64,
        resource: &Resource,
        scope: &InstrumentationScope,
    ) -> Option<ExportMetricsServiceRequest> {
        if self.is_empty() {
            return None;
        }
        let histograms = [
            (
                "gen_ai.client.token.usage",
                "{token}",
                "Number of input and output tokens used.",
                &self.token_usage,
            ),
            (
                "gen_ai.client.operation.duration",
                "s",
                "GenAI operation duration.",
                &self.duration,
            ),
            (
                "gen_ai.server.time_to_first_token",
                "s",
                "Time to generate first token for successful responses.",
                &self.time_to_first_token,
            ),
            (
                "gen_ai.server.time_per_output_token",
                "s",
                "Time per output token generated after the first token for successful responses.",
                &self.time_per_output_token,
            ),
        ];
        let sums = [
            (
                "sluice.gateway.requests",
                "{request}",
                "Requests the gateway answered, refused ones included.",
                &self.requests,
            ),
            (
                "sluice.gateway.errors",
                "{request}",
                "Requests that ended in an error, by error.type.",
                &self.errors,
            ),
            (
                "sluice.gateway.rate_limited",
                "{request}",
                "Requests refused by a key's requests_per_minute limit (429).",
                &self.rate_limited,
            ),
            (
                "sluice.gateway.policy_denied",
                "{request}",
                "Requests refused because the key may not use the model (403).",
                &self.policy_denied,
            ),
            (
                "sluice.gateway.fallbacks",
                "{attempt}",
                "Upstream attempts made on a route's fallback targets.",
                &self.fallbacks,
            ),
            (
                "sluice.gateway.tokens",
                "{token}",
                "Tokens reported by upstreams, by gen_ai.token.type: input, output, cached_input, reasoning.",
                &self.tokens,
            ),
        ];
        let start = self.start_unix_nano;
        let mut metrics = Vec::new();
        for (name, unit, description, series) in histograms {
            if series.points.is_empty() {
                continue;
            }
            let data_points = series
                .points
                .iter()
                .map(|(dims, h)| HistogramDataPoint {
                    attributes: to_attributes(dims),
                    start_time_unix_nano: start,
                    time_unix_nano: now_unix_nano,
                    count: h.count,
                    sum: Some(h.sum),
                    bucket_counts: h.counts.clone(),
                    explicit_bounds: h.bounds.to_vec(),
                    min: Some(h.min),
                    max: Some(h.max),
                    ..Default::default()
                })
                .collect();
            metrics.push(Metric {
                name: name.to_string(),
                description: description.to_string(),
                unit: unit.to_string(),
                data: Some(metric::Data::Histogram(OtlpHistogram {
                    data_points,
                    aggregation_temporality: AggregationTemporality::Cumulative as i32,
                })),
                ..Default::default()
            });
        }
        for (name, unit, description, series) in sums {
            if series.points.is_empty() {
                continue;
            }
            let data_points = series
                .points
                .iter()
                .map(|(dims, value)| NumberDataPoint {
                    attributes: to_attributes(dims),
                    start_time_unix_nano: start,
                    time_unix_nano: now_unix_nano,
                    value: Some(number_data_point::Value::AsInt(attributes::saturating_i64(
                        *value,
                    ))),
                    ..Default::default()
                })
                .collect();
            metrics.push(Metric {
                name: name.to_string(),
                description: description.to_string(),
                unit: unit.to_string(),
                data: Some(metric::Data::Sum(Sum {
                    data_points,
                    aggregation_temporality: AggregationTemporality::Cumulative as i32,
                    is_monotonic: true,
                })),
                ..Default::default()
            });
        }
        if let Some(active) = self.active_requests {
            // An UpDownCounter in OTLP terms: a non-monotonic cumulative sum.
            metrics.push(Metric {
                name: "sluice.gateway.active_requests".to_string(),
                description: "Requests the gateway is handling (streams until their last byte)."
                    .to_string(),
                unit: "{request}".to_string(),
                data: Some(metric::Data::Sum(Sum {
                    data_points: vec![NumberDataPoint {
                        start_time_unix_nano: start,
                        time_unix_nano: now_unix_nano,
                        value: Some(number_data_point::Value::AsInt(active)),
                        ..Default::default()
                    }],
                    aggregation_temporality: AggregationTemporality::Cumulative as i32,
                    is_monotonic: false,
                })),
                ..Default::default()
            });
        }
        Some(ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                resource: Some(resource.clone()),
                scope_metrics: vec![ScopeMetrics {
                    scope: Some(scope.clone()),
                    metrics,
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            }],
        })
    }
}

#[cfg(test)]
mod tests {
    use sluice_gateway::event::EventError;

    use super::super::attributes::test_support::render;
    use super::super::fixtures::{self, T0};
    use super::*;

    const NOW: u64 = T0 + 60_000_000_000;

    fn aggregator() -> Aggregator {
        Aggregator::new(
            T0 - 1_000,
            ["gpt-4o", "text-embedding-3-small"]
                .into_iter()
                .map(String::from)
                .collect(),
        )
    }

    fn export(aggregator: &Aggregator) -> Vec<Metric> {
        let request = aggregator
            .export_request(NOW, &Resource::default(), &InstrumentationScope::default())
            .expect("something was recorded");
        request.resource_metrics[0].scope_metrics[0].metrics.clone()
    }

    fn metric<'a>(metrics: &'a [Metric], name: &str) -> &'a Metric {
        metrics
            .iter()
            .find(|m| m.name == name)
            .unwrap_or_else(|| panic!("no metric {name}"))
    }

    fn histogram_points(metric: &Metric) -> &[HistogramDataPoint] {
        match &metric.data {
            Some(metric::Data::Histogram(h)) => {
                assert_eq!(
                    h.aggregation_temporality,
                    AggregationTemporality::Cumulative as i32
                );
                &h.data_points
            }
            other => panic!("{} is not a histogram: {other:?}", metric.name),
        }
    }

    /// `(rendered attributes, value)` of each point of a sum.
    fn sum_points(metric: &Metric) -> Vec<(BTreeMap<String, String>, i64)> {
        match &metric.data {
            Some(metric::Data::Sum(s)) => {
                assert!(s.is_monotonic);
                assert_eq!(
                    s.aggregation_temporality,
                    AggregationTemporality::Cumulative as i32
                );
                s.data_points
                    .iter()
                    .map(|p| {
                        assert_eq!(
                            (p.start_time_unix_nano, p.time_unix_nano),
                            (T0 - 1_000, NOW)
                        );
                        let Some(number_data_point::Value::AsInt(v)) = p.value else {
                            panic!("not an integer: {p:?}")
                        };
                        (render(&p.attributes), v)
                    })
                    .collect()
            }
            other => panic!("{} is not a sum: {other:?}", metric.name),
        }
    }

    fn total(metric: &Metric) -> i64 {
        sum_points(metric).iter().map(|(_, v)| v).sum()
    }

    #[test]
    fn nothing_recorded_exports_nothing() {
        assert!(
            aggregator()
                .export_request(NOW, &Resource::default(), &InstrumentationScope::default())
                .is_none()
        );
    }

    #[test]
    fn histograms_aggregate_several_requests_into_exact_buckets() {
        let mut agg = aggregator();
        agg.record(&fixtures::streamed_chat());
        let mut second = fixtures::streamed_chat();
        second.usage.input_tokens = Some(3000);
        second.usage.output_tokens = Some(1);
        second.timings.first_chunk_unix_nano = Some(T0 + 5_000_000);
        agg.record(&second);
        agg.record(&fixtures::embeddings());
        agg.record(&fixtures::unauthorized());
        let metrics = export(&agg);

        let names: Vec<_> = metrics
            .iter()
            .map(|m| (m.name.as_str(), m.unit.as_str()))
            .collect();
        assert_eq!(
            names,
            [
                ("gen_ai.client.token.usage", "{token}"),
                ("gen_ai.client.operation.duration", "s"),
                ("gen_ai.server.time_to_first_token", "s"),
                ("gen_ai.server.time_per_output_token", "s"),
                ("sluice.gateway.requests", "{request}"),
                ("sluice.gateway.errors", "{request}"),
                ("sluice.gateway.tokens", "{token}"),
            ],
            "metrics with nothing recorded (rate limited, denied, fallbacks) are left out"
        );

        // Token usage: the two chats share a series per token type.
        let usage = histogram_points(metric(&metrics, "gen_ai.client.token.usage"));
        let chat_input = usage
            .iter()
            .find(|p| {
                let a = render(&p.attributes);
                a["gen_ai.operation.name"] == "\"chat\"" && a["gen_ai.token.type"] == "\"input\""
            })
            .unwrap();
        assert_eq!(chat_input.count, 2);
        assert_eq!(chat_input.sum, Some(3012.0));
        assert_eq!((chat_input.min, chat_input.max), (Some(12.0), Some(3000.0)));
        // 12 is in (4, 16], 3000 in (1024, 4096].
        let mut expected = vec![0; 15];
        expected[2] = 1;
        expected[6] = 1;
        assert_eq!(chat_input.bucket_counts, expected);
        assert_eq!(chat_input.explicit_bounds, TOKEN_BOUNDS);
        assert_eq!(chat_input.start_time_unix_nano, T0 - 1_000);
        assert_eq!(chat_input.time_unix_nano, NOW);
        assert_eq!(
            render(&chat_input.attributes),
            super::super::attributes::test_support::expect(&[
                ("gen_ai.operation.name", "\"chat\""),
                ("gen_ai.request.model", "\"gpt-4o\""),
                ("gen_ai.response.model", "\"gpt-4o-2024-08-06\""),
                ("gen_ai.provider.name", "\"openai\""),
                ("sluice.api_key.id", "\"team-a\""),
                ("http.response.status_code", "200"),
                ("gen_ai.token.type", "\"input\""),
            ])
        );
        let chat_output = usage
            .iter()
            .find(|p| {
                let a = render(&p.attributes);
                a["gen_ai.operation.name"] == "\"chat\"" && a["gen_ai.token.type"] == "\"output\""
            })
            .unwrap();
        // 1 is in (-inf, 1] (bounds are inclusive above), 40 in (16, 64].
        assert_eq!(chat_output.bucket_counts[0], 1);
        assert_eq!(chat_output.bucket_counts[3], 1);
        assert_eq!(chat_output.sum, Some(41.0));
        assert_eq!(usage.len(), 3, "chat input, chat output, embeddings input");

        // Duration: the 401 is recorded too, in its own series with error.type.
        let duration = histogram_points(metric(&metrics, "gen_ai.client.operation.duration"));
        assert_eq!(duration.len(), 3);
        let chat = duration
            .iter()
            .find(|p| {
                render(&p.attributes)["gen_ai.operation.name"] == "\"chat\""
                    && !render(&p.attributes).contains_key("error.type")
            })
            .unwrap();
        assert_eq!(chat.count, 2);
        assert_eq!(chat.sum, Some(1.8));
        assert_eq!(chat.bucket_counts[7], 2, "0.9s is in (0.64, 1.28]");
        let refused = duration
            .iter()
            .find(|p| render(&p.attributes).get("error.type") == Some(&"\"unauthorized\"".into()))
            .unwrap();
        assert_eq!(refused.count, 1);
        assert_eq!(refused.bucket_counts[0], 1, "1ms is in (-inf, 0.01]");

        // Time to first token: streams only (the two chats): 0.2s and 0.005s.
        let ttft = histogram_points(metric(&metrics, "gen_ai.server.time_to_first_token"));
        assert_eq!(ttft.len(), 1);
        assert_eq!(ttft[0].count, 2);
        let mut expected = vec![0; 17];
        expected[1] = 1; // 0.005 in (0.001, 0.005]
        expected[8] = 1; // 0.2 in (0.1, 0.25]
        assert_eq!(ttft[0].bucket_counts, expected);

        // Time per output token: only the 40-token chat: (0.88 - 0.2) / 39.
        let tpot = histogram_points(metric(&metrics, "gen_ai.server.time_per_output_token"));
        assert_eq!(tpot[0].count, 1);
        let expected_tpot = 0.68 / 39.0;
        assert!((tpot[0].sum.unwrap() - expected_tpot).abs() < 1e-12);
        assert_eq!(tpot[0].bucket_counts[1], 1, "0.0174s is in (0.01, 0.025]");

        // Counters.
        assert_eq!(total(metric(&metrics, "sluice.gateway.requests")), 4);
        let errors = sum_points(metric(&metrics, "sluice.gateway.errors"));
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].0["error.type"], "\"unauthorized\"");
        assert_eq!(errors[0].0["http.response.status_code"], "401");
        assert_eq!(errors[0].1, 1);
        let mut tokens: BTreeMap<String, i64> = BTreeMap::new();
        for (attrs, value) in sum_points(metric(&metrics, "sluice.gateway.tokens")) {
            *tokens
                .entry(attrs["gen_ai.token.type"].clone())
                .or_default() += value;
        }
        assert_eq!(
            tokens,
            BTreeMap::from([
                ("\"cached_input\"".to_string(), 0),
                ("\"input\"".to_string(), 12 + 3000 + 8),
                ("\"output\"".to_string(), 41),
            ])
        );
    }

    #[test]
    fn requests_in_flight_are_reported_as_an_up_down_counter() {
        let mut agg = aggregator();
        agg.record(&fixtures::streamed_chat());
        assert!(
            export(&agg)
                .iter()
                .all(|m| m.name != "sluice.gateway.active_requests"),
            "not reported until read"
        );
        agg.set_active_requests(3);
        let metrics = export(&agg);
        let active = metric(&metrics, "sluice.gateway.active_requests");
        assert_eq!(active.unit, "{request}");
        let Some(metric::Data::Sum(sum)) = &active.data else {
            panic!("not a sum: {active:?}")
        };
        assert!(!sum.is_monotonic);
        assert_eq!(
            sum.aggregation_temporality,
            AggregationTemporality::Cumulative as i32
        );
        assert_eq!(sum.data_points.len(), 1);
        assert!(sum.data_points[0].attributes.is_empty());
        assert_eq!(
            sum.data_points[0].value,
            Some(number_data_point::Value::AsInt(3))
        );
    }

    #[test]
    fn unrouted_model_names_are_reported_as_unknown() {
        let mut agg = aggregator();
        agg.record(&fixtures::model_not_found("gpt-4oo"));
        agg.record(&fixtures::model_not_found("gtp-4o"));
        let mut forbidden = fixtures::model_not_found("random-name");
        forbidden.status_code = 403;
        forbidden.error = Some(EventError {
            error_type: "forbidden".into(),
            message: "key team-a may not use model random-name".into(),
        });
        agg.record(&forbidden);
        let mut forbidden_routed = forbidden.clone();
        forbidden_routed.requested_model = Some("gpt-4o".into());
        agg.record(&forbidden_routed);
        let metrics = export(&agg);

        let requests = sum_points(metric(&metrics, "sluice.gateway.requests"));
        let by_model: Vec<(String, String, i64)> = requests
            .iter()
            .map(|(a, v)| {
                (
                    a["gen_ai.request.model"].clone(),
                    a["error.type"].clone(),
                    *v,
                )
            })
            .collect();
        assert_eq!(
            by_model,
            [
                ("\"gpt-4o\"".into(), "\"forbidden\"".into(), 1),
                ("\"unknown\"".into(), "\"forbidden\"".into(), 1),
                ("\"unknown\"".into(), "\"model_not_found\"".into(), 2),
            ]
        );
        let denied = sum_points(metric(&metrics, "sluice.gateway.policy_denied"));
        assert_eq!(denied.iter().map(|(_, v)| v).sum::<i64>(), 2);
    }

    #[test]
    fn fallbacks_and_rate_limits_are_counted() {
        let mut agg = aggregator();
        agg.record(&fixtures::fallback());
        let mut limited = fixtures::unauthorized();
        limited.key_id = "team-a".into();
        limited.status_code = 429;
        limited.error = Some(EventError {
            error_type: "rate_limited".into(),
            message: "Rate limit reached".into(),
        });
        agg.record(&limited);
        let metrics = export(&agg);
        let fallbacks = sum_points(metric(&metrics, "sluice.gateway.fallbacks"));
        assert_eq!(fallbacks.len(), 1);
        assert_eq!(fallbacks[0].0["gen_ai.provider.name"], "\"local\"");
        assert_eq!(fallbacks[0].1, 1);
        let limited = sum_points(metric(&metrics, "sluice.gateway.rate_limited"));
        assert_eq!(limited.len(), 1);
        assert_eq!(limited[0].0["http.response.status_code"], "429");
        assert_eq!(limited[0].1, 1);
        // The fallback's chat was not streamed: no server-side latency metrics.
        assert!(
            metrics
                .iter()
                .all(|m| m.name != "gen_ai.server.time_to_first_token")
        );
    }

    #[test]
    fn series_past_the_limit_fold_into_an_overflow_series() {
        let mut agg = aggregator();
        for i in 0..MAX_SERIES + 10 {
            let mut event = fixtures::unauthorized();
            event.key_id = format!("key-{i}");
            agg.record(&event);
        }
        let metrics = export(&agg);
        let requests = sum_points(metric(&metrics, "sluice.gateway.requests"));
        assert_eq!(requests.len(), MAX_SERIES + 1);
        let overflow: Vec<_> = requests
            .iter()
            .filter(|(a, _)| a.get("otel.metric.overflow") == Some(&"true".into()))
            .collect();
        assert_eq!(overflow.len(), 1);
        assert_eq!(overflow[0].1, 10);
        assert_eq!(
            total(metric(&metrics, "sluice.gateway.requests")),
            (MAX_SERIES + 10) as i64
        );
    }
}
