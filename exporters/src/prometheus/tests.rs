//! The exporter's behaviour: exact exposition text for every OTLP metric type and temporality,
//! cardinality limits, allowlists, expiry, and the scrape endpoint on a real socket.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, ExponentialHistogram, ExponentialHistogramDataPoint, Gauge, Histogram,
    HistogramDataPoint, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum, Summary,
    SummaryDataPoint, exponential_histogram_data_point::Buckets, metric, number_data_point,
    summary_data_point::ValueAtQuantile,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use sluice_pipeline::{Batch, ExporterContext, Request, Telemetry};

use super::conversion::Converter;
use super::exposition::{self, Format};
use super::store::{Store, StoreMetrics};
use super::*;
use crate::test_data::string;

const CUMULATIVE: i32 = AggregationTemporality::Cumulative as i32;
const DELTA: i32 = AggregationTemporality::Delta as i32;
const T0: u64 = 1_700_000_000_000_000_000;
const SECOND: u64 = 1_000_000_000;

/// The labels every series of [`resource`] and [`scope`] ends with.
const CONTEXT: &str =
    r#"job="shop/checkout",instance="i-1",otel_scope_name="meter",otel_scope_version="1.2""#;
const TARGET_INFO: &str = r#"# HELP target_info Target metadata
# TYPE target_info gauge
target_info{job="shop/checkout",instance="i-1",host_name="h1"} 1
"#;

fn resource() -> Resource {
    Resource {
        attributes: vec![
            string("service.name", "checkout"),
            string("service.namespace", "shop"),
            string("service.instance.id", "i-1"),
            string("host.name", "h1"),
        ],
        ..Default::default()
    }
}

fn request(metrics: Vec<Metric>) -> ExportMetricsServiceRequest {
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(resource()),
            scope_metrics: vec![ScopeMetrics {
                scope: Some(InstrumentationScope {
                    name: "meter".into(),
                    version: "1.2".into(),
                    ..Default::default()
                }),
                metrics,
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    }
}

fn attrs(pairs: &[(&str, &str)]) -> Vec<KeyValue> {
    pairs.iter().map(|(k, v)| string(k, v)).collect()
}

fn number(
    pairs: &[(&str, &str)],
    start: u64,
    time: u64,
    value: number_data_point::Value,
) -> NumberDataPoint {
    NumberDataPoint {
        attributes: attrs(pairs),
        start_time_unix_nano: start,
        time_unix_nano: time,
        value: Some(value),
        ..Default::default()
    }
}

fn int(v: i64) -> number_data_point::Value {
    number_data_point::Value::AsInt(v)
}

fn double(v: f64) -> number_data_point::Value {
    number_data_point::Value::AsDouble(v)
}

fn metric(name: &str, unit: &str, description: &str, data: metric::Data) -> Metric {
    Metric {
        name: name.into(),
        unit: unit.into(),
        description: description.into(),
        data: Some(data),
        ..Default::default()
    }
}

fn sum(
    name: &str,
    unit: &str,
    monotonic: bool,
    temporality: i32,
    points: Vec<NumberDataPoint>,
) -> Metric {
    metric(
        name,
        unit,
        "",
        metric::Data::Sum(Sum {
            data_points: points,
            aggregation_temporality: temporality,
            is_monotonic: monotonic,
        }),
    )
}

fn histogram(temporality: i32, start: u64, time: u64, counts: &[u64], sum: f64) -> Metric {
    metric(
        "http.server.request.duration",
        "s",
        "Duration of HTTP server requests.",
        metric::Data::Histogram(Histogram {
            data_points: vec![HistogramDataPoint {
                attributes: attrs(&[("http.request.method", "GET")]),
                start_time_unix_nano: start,
                time_unix_nano: time,
                count: counts.iter().sum(),
                sum: Some(sum),
                bucket_counts: counts.to_vec(),
                explicit_bounds: vec![0.1, 1.0],
                ..Default::default()
            }],
            aggregation_temporality: temporality,
        }),
    )
}

/// A converter and store with `config` (TOML), fed by `export`, rendered by `render`.
struct Harness {
    converter: Converter,
    store: Store,
    telemetry: Telemetry,
}

impl Harness {
    fn new(config: &str) -> Harness {
        let config: Config = toml::from_str(config).expect("a valid test config");
        let telemetry = Telemetry::new();
        let const_labels: Vec<String> = config
            .const_labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{v}\""))
            .collect();
        Harness {
            converter: Converter::new(&config),
            store: Store::new(
                config.max_series_per_metric,
                config.metric_expiration,
                &const_labels.join(","),
                StoreMetrics::new(&telemetry, "prometheus"),
            ),
            telemetry,
        }
    }

    fn export_at(&self, request: &ExportMetricsServiceRequest, now: Instant) {
        for update in self.converter.convert(request) {
            self.store.apply(update.family, update.series, now);
        }
    }

    fn export(&self, metrics: Vec<Metric>) {
        self.export_at(&request(metrics), Instant::now());
    }

    fn render(&self, format: Format) -> String {
        exposition::render(&self.store.snapshot(Instant::now()), format)
    }

    fn text(&self) -> String {
        self.render(Format::Text)
    }

    /// The exposition without `target_info`.
    fn text_without_target_info(&self) -> String {
        self.text().replace(TARGET_INFO, "")
    }
}

#[test]
fn every_otlp_metric_type_has_its_exact_exposition() {
    let harness = Harness::new("");
    harness.export(vec![
        metric(
            "system.memory.utilization",
            "1",
            "Memory used.",
            metric::Data::Gauge(Gauge {
                data_points: vec![number(&[("state", "used")], 0, T0, double(0.25))],
            }),
        ),
        sum(
            "http.server.requests",
            "{request}",
            true,
            CUMULATIVE,
            vec![number(&[], T0, T0 + SECOND, int(7))],
        ),
        sum(
            "net.io",
            "By",
            true,
            CUMULATIVE,
            vec![number(&[("direction", "rx")], T0, T0 + SECOND, int(1024))],
        ),
        sum(
            "queue.size",
            "{item}",
            false,
            CUMULATIVE,
            vec![number(&[], T0, T0 + SECOND, int(-3))],
        ),
        histogram(CUMULATIVE, T0, T0 + SECOND, &[2, 1, 1], 2.5),
        metric(
            "payload.size",
            "By",
            "Payload sizes.",
            metric::Data::ExponentialHistogram(ExponentialHistogram {
                data_points: vec![ExponentialHistogramDataPoint {
                    start_time_unix_nano: T0,
                    time_unix_nano: T0 + SECOND,
                    count: 5,
                    sum: Some(7.5),
                    scale: 0,
                    zero_count: 1,
                    // Index 0 is (1, 2], index 1 is (2, 4].
                    positive: Some(Buckets {
                        offset: 0,
                        bucket_counts: vec![1, 2],
                    }),
                    // Index 1 holds [-4, -2).
                    negative: Some(Buckets {
                        offset: 1,
                        bucket_counts: vec![1],
                    }),
                    ..Default::default()
                }],
                aggregation_temporality: CUMULATIVE,
            }),
        ),
        metric(
            "rpc.latency",
            "s",
            "RPC latency.",
            metric::Data::Summary(Summary {
                data_points: vec![SummaryDataPoint {
                    start_time_unix_nano: T0,
                    time_unix_nano: T0 + SECOND,
                    count: 10,
                    sum: 1.5,
                    quantile_values: vec![
                        ValueAtQuantile {
                            quantile: 0.5,
                            value: 0.1,
                        },
                        ValueAtQuantile {
                            quantile: 0.99,
                            value: 0.4,
                        },
                    ],
                    ..Default::default()
                }],
            }),
        ),
    ]);
    let c = CONTEXT;
    let expected = format!(
        r#"# HELP http_server_request_duration_seconds Duration of HTTP server requests.
# TYPE http_server_request_duration_seconds histogram
http_server_request_duration_seconds_bucket{{http_request_method="GET",{c},le="0.1"}} 2
http_server_request_duration_seconds_bucket{{http_request_method="GET",{c},le="1"}} 3
http_server_request_duration_seconds_bucket{{http_request_method="GET",{c},le="+Inf"}} 4
http_server_request_duration_seconds_sum{{http_request_method="GET",{c}}} 2.5
http_server_request_duration_seconds_count{{http_request_method="GET",{c}}} 4
# HELP http_server_requests_total http.server.requests
# TYPE http_server_requests_total counter
http_server_requests_total{{{c}}} 7
# HELP net_io_bytes_total net.io
# TYPE net_io_bytes_total counter
net_io_bytes_total{{direction="rx",{c}}} 1024
# HELP payload_size_bytes Payload sizes.
# TYPE payload_size_bytes histogram
payload_size_bytes_bucket{{{c},le="-2"}} 1
payload_size_bytes_bucket{{{c},le="0"}} 2
payload_size_bytes_bucket{{{c},le="2"}} 3
payload_size_bytes_bucket{{{c},le="4"}} 5
payload_size_bytes_bucket{{{c},le="+Inf"}} 5
payload_size_bytes_sum{{{c}}} 7.5
payload_size_bytes_count{{{c}}} 5
# HELP queue_size queue.size
# TYPE queue_size gauge
queue_size{{{c}}} -3
# HELP rpc_latency_seconds RPC latency.
# TYPE rpc_latency_seconds summary
rpc_latency_seconds{{{c},quantile="0.5"}} 0.1
rpc_latency_seconds{{{c},quantile="0.99"}} 0.4
rpc_latency_seconds_sum{{{c}}} 1.5
rpc_latency_seconds_count{{{c}}} 10
# HELP system_memory_utilization_ratio Memory used.
# TYPE system_memory_utilization_ratio gauge
system_memory_utilization_ratio{{state="used",{c}}} 0.25
{TARGET_INFO}"#
    );
    assert_eq!(harness.text(), expected);
}

#[test]
fn open_metrics_names_families_without_suffixes_and_ends_with_eof() {
    let harness = Harness::new("");
    harness.export(vec![
        sum(
            "net.io",
            "By",
            true,
            CUMULATIVE,
            vec![number(&[], T0, T0 + SECOND, int(5))],
        ),
        histogram(CUMULATIVE, T0, T0 + SECOND, &[1, 0, 0], 0.05),
    ]);
    let c = CONTEXT;
    let expected = format!(
        r#"# TYPE http_server_request_duration_seconds histogram
# UNIT http_server_request_duration_seconds seconds
# HELP http_server_request_duration_seconds Duration of HTTP server requests.
http_server_request_duration_seconds_bucket{{http_request_method="GET",{c},le="0.1"}} 1
http_server_request_duration_seconds_bucket{{http_request_method="GET",{c},le="1.0"}} 1
http_server_request_duration_seconds_bucket{{http_request_method="GET",{c},le="+Inf"}} 1
http_server_request_duration_seconds_sum{{http_request_method="GET",{c}}} 0.05
http_server_request_duration_seconds_count{{http_request_method="GET",{c}}} 1
# TYPE net_io_bytes counter
# UNIT net_io_bytes bytes
# HELP net_io_bytes net.io
net_io_bytes_total{{{c}}} 5
# TYPE target info
# HELP target Target metadata
target_info{{job="shop/checkout",instance="i-1",host_name="h1"}} 1
# EOF
"#
    );
    assert_eq!(harness.render(Format::OpenMetrics), expected);
}

#[test]
fn delta_sums_accumulate_into_a_cumulative_counter() {
    let harness = Harness::new("");
    let delta = |start, time, v| {
        sum(
            "tokens",
            "{token}",
            true,
            DELTA,
            vec![number(&[("model", "gpt-4o")], start, time, int(v))],
        )
    };
    harness.export(vec![delta(T0, T0 + SECOND, 5)]);
    harness.export(vec![delta(T0 + SECOND, T0 + 2 * SECOND, 7)]);
    // A repeat of a window already added is not added twice.
    harness.export(vec![delta(T0 + SECOND, T0 + 2 * SECOND, 7)]);
    harness.export(vec![delta(T0 + 3 * SECOND, T0 + 4 * SECOND, 1)]);
    assert_eq!(
        harness.text_without_target_info(),
        format!(
            "# HELP tokens_total tokens\n# TYPE tokens_total counter\ntokens_total{{model=\"gpt-4o\",{CONTEXT}}} 13\n"
        )
    );
}

#[test]
fn delta_up_down_sums_accumulate_into_a_gauge() {
    let harness = Harness::new("");
    let delta = |start, time, v| {
        sum(
            "active",
            "{request}",
            false,
            DELTA,
            vec![number(&[], start, time, int(v))],
        )
    };
    harness.export(vec![delta(T0, T0 + SECOND, 5)]);
    harness.export(vec![delta(T0 + SECOND, T0 + 2 * SECOND, -2)]);
    assert_eq!(
        harness.text_without_target_info(),
        format!("# HELP active active\n# TYPE active gauge\nactive{{{CONTEXT}}} 3\n")
    );
}

#[test]
fn a_cumulative_counter_takes_the_latest_value_and_resets_with_a_new_start_time() {
    let harness = Harness::new("");
    let point = |start, time, v| {
        sum(
            "requests",
            "",
            true,
            CUMULATIVE,
            vec![number(&[], start, time, int(v))],
        )
    };
    harness.export(vec![point(T0, T0 + 2 * SECOND, 10)]);
    // Late and older than what is shown: ignored.
    harness.export(vec![point(T0, T0 + SECOND, 4)]);
    let value = |h: &Harness| {
        h.text_without_target_info()
            .lines()
            .last()
            .and_then(|l| l.rsplit(' ').next())
            .map(str::to_string)
    };
    assert_eq!(value(&harness).as_deref(), Some("10"));
    // The producer restarted: a new start time, counting from 0 again.
    harness.export(vec![point(T0 + 10 * SECOND, T0 + 11 * SECOND, 2)]);
    assert_eq!(value(&harness).as_deref(), Some("2"));
}

#[test]
fn delta_histograms_accumulate_bucket_by_bucket() {
    let harness = Harness::new("");
    harness.export(vec![histogram(DELTA, T0, T0 + SECOND, &[1, 0, 1], 5.05)]);
    harness.export(vec![histogram(
        DELTA,
        T0 + SECOND,
        T0 + 2 * SECOND,
        &[0, 2, 0],
        1.0,
    )]);
    let c = CONTEXT;
    let expected = format!(
        r#"# HELP http_server_request_duration_seconds Duration of HTTP server requests.
# TYPE http_server_request_duration_seconds histogram
http_server_request_duration_seconds_bucket{{http_request_method="GET",{c},le="0.1"}} 1
http_server_request_duration_seconds_bucket{{http_request_method="GET",{c},le="1"}} 3
http_server_request_duration_seconds_bucket{{http_request_method="GET",{c},le="+Inf"}} 4
http_server_request_duration_seconds_sum{{http_request_method="GET",{c}}} 6.05
http_server_request_duration_seconds_count{{http_request_method="GET",{c}}} 4
"#
    );
    assert_eq!(harness.text_without_target_info(), expected);
}

#[test]
fn delta_exponential_histograms_of_different_scales_merge_at_the_coarser_scale() {
    let harness = Harness::new("");
    let point = |start, time, scale, offset, counts: Vec<u64>| {
        metric(
            "size",
            "By",
            "Sizes.",
            metric::Data::ExponentialHistogram(ExponentialHistogram {
                data_points: vec![ExponentialHistogramDataPoint {
                    start_time_unix_nano: start,
                    time_unix_nano: time,
                    count: counts.iter().sum(),
                    sum: Some(1.0),
                    scale,
                    positive: Some(Buckets {
                        offset,
                        bucket_counts: counts,
                    }),
                    ..Default::default()
                }],
                aggregation_temporality: DELTA,
            }),
        )
    };
    // Scale 1: index 2 is (2, 2^1.5], index 3 is (2^1.5, 4].
    harness.export(vec![point(T0, T0 + SECOND, 1, 2, vec![1, 1])]);
    // Scale 0: index 1 is (2, 4], index 2 is (4, 8].
    harness.export(vec![point(T0 + SECOND, T0 + 2 * SECOND, 0, 1, vec![1, 3])]);
    let c = CONTEXT;
    let expected = format!(
        r#"# HELP size_bytes Sizes.
# TYPE size_bytes histogram
size_bytes_bucket{{{c},le="4"}} 3
size_bytes_bucket{{{c},le="8"}} 6
size_bytes_bucket{{{c},le="+Inf"}} 6
size_bytes_sum{{{c}}} 2
size_bytes_count{{{c}}} 6
"#
    );
    assert_eq!(harness.text_without_target_info(), expected);
}

#[test]
fn exponential_bucket_bounds_follow_the_scale() {
    use super::store::{Buckets as B, ExpHistogram};
    let h = |scale| ExpHistogram {
        scale,
        zero_threshold: 0.0,
        zero_count: 0,
        positive: B::default(),
        negative: B::default(),
        count: 0,
        sum: None,
    };
    assert_eq!(h(0).upper_bound(0), 2.0);
    assert_eq!(h(0).upper_bound(-1), 1.0);
    assert_eq!(h(1).upper_bound(0), std::f64::consts::SQRT_2);
    assert_eq!(h(1).upper_bound(1), 2.0);
    assert_eq!(h(-1).upper_bound(0), 4.0);
    assert_eq!(h(-2).upper_bound(1), 256.0);
}

#[test]
fn resource_attributes_can_be_promoted_and_const_labels_and_namespace_apply() {
    let harness = Harness::new(
        r#"
namespace = "ai"
const_labels = { region = "eu-1" }
resource_to_labels = ["host.name", "absent.attribute"]
"#,
    );
    harness.export(vec![sum(
        "requests",
        "",
        true,
        CUMULATIVE,
        vec![number(&[("region", "us")], T0, T0 + SECOND, int(1))],
    )]);
    assert_eq!(
        harness.text(),
        r#"# HELP ai_requests_total requests
# TYPE ai_requests_total counter
ai_requests_total{host_name="h1",job="shop/checkout",instance="i-1",otel_scope_name="meter",otel_scope_version="1.2",region="eu-1"} 1
# HELP ai_target_info Target metadata
# TYPE ai_target_info gauge
ai_target_info{job="shop/checkout",instance="i-1",host_name="h1",region="eu-1"} 1
"#
    );
}

#[test]
fn suffixes_can_be_turned_off() {
    let harness = Harness::new("add_metric_suffixes = false\ntarget_info = false");
    harness.export(vec![
        sum(
            "net.io",
            "By",
            true,
            CUMULATIVE,
            vec![number(&[], T0, T0 + SECOND, int(5))],
        ),
        sum(
            "errors_total",
            "",
            true,
            CUMULATIVE,
            vec![number(&[], T0, T0 + SECOND, int(1))],
        ),
    ]);
    assert_eq!(
        harness.text(),
        format!(
            "# HELP errors_total errors_total\n# TYPE errors_total counter\nerrors_total{{{CONTEXT}}} 1\n\
             # HELP net_io net.io\n# TYPE net_io counter\nnet_io{{{CONTEXT}}} 5\n"
        )
    );
}

#[test]
fn a_name_taken_by_another_type_keeps_the_first() {
    let harness = Harness::new("target_info = false");
    harness.export(vec![sum(
        "depth",
        "",
        false,
        CUMULATIVE,
        vec![number(&[], T0, T0 + SECOND, int(4))],
    )]);
    harness.export(vec![metric(
        "depth",
        "",
        "",
        metric::Data::Histogram(Histogram {
            data_points: vec![HistogramDataPoint {
                count: 1,
                ..Default::default()
            }],
            aggregation_temporality: CUMULATIVE,
        }),
    )]);
    assert_eq!(
        harness.text(),
        format!("# HELP depth depth\n# TYPE depth gauge\ndepth{{{CONTEXT}}} 4\n")
    );
}

fn model_counter(models: impl Iterator<Item = String>, value: i64, time: u64) -> Metric {
    let points = models
        .map(|model| number(&[("gen_ai.request.model", &model)], T0, time, int(value)))
        .collect();
    sum(
        "sluice.gateway.requests",
        "{request}",
        true,
        CUMULATIVE,
        points,
    )
}

#[test]
fn ten_thousand_model_names_stay_at_the_limit_plus_one_overflow_series() {
    let harness = Harness::new("max_series_per_metric = 2000\ntarget_info = false");
    let models = || (0..10_000).map(|i| format!("model-{i}"));
    harness.export(vec![model_counter(models(), 1, T0 + SECOND)]);
    let text = harness.text();
    let series: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("sluice_gateway_requests_total{"))
        .collect();
    assert_eq!(series.len(), 2001);
    let overflow: Vec<&&str> = series
        .iter()
        .filter(|l| l.contains("otel_metric_overflow=\"true\""))
        .collect();
    assert_eq!(
        overflow,
        [&"sluice_gateway_requests_total{otel_metric_overflow=\"true\"} 8000"]
    );
    let internal = harness.telemetry.render();
    assert!(
        internal.contains("sluice_prometheus_series_dropped_total{exporter=\"prometheus\",metric=\"sluice_gateway_requests\"} 8000"),
        "{internal}"
    );
    assert!(
        internal.contains("sluice_prometheus_series{exporter=\"prometheus\",metric=\"sluice_gateway_requests\"} 2001"),
        "{internal}"
    );

    // The same cumulative series again, each one request more: the overflow series adds what
    // changed (8,000), not the whole values again.
    harness.export(vec![model_counter(models(), 2, T0 + 2 * SECOND)]);
    let text = harness.text();
    assert!(
        text.contains("sluice_gateway_requests_total{otel_metric_overflow=\"true\"} 16000\n"),
        "{}",
        &text[text.len() - 300..]
    );
    assert!(text.contains(&format!(
        "sluice_gateway_requests_total{{gen_ai_request_model=\"model-0\",{CONTEXT}}} 2\n"
    )));
    assert_eq!(
        text.lines()
            .filter(|l| l.starts_with("sluice_gateway_requests_total{"))
            .count(),
        2001
    );
}

#[test]
fn an_allowlist_adds_up_series_that_differ_only_in_dropped_labels() {
    let harness = Harness::new(
        r#"
target_info = false
[label_allowlist]
"sluice_gateway_requests_total" = ["gen_ai.request.model"]
"#,
    );
    let point = |key: &str, time, v| {
        number(
            &[
                ("gen_ai.request.model", "gpt-4o"),
                ("sluice.api_key.id", key),
            ],
            T0,
            time,
            int(v),
        )
    };
    let export = |time, a, b| {
        harness.export(vec![sum(
            "sluice.gateway.requests",
            "{request}",
            true,
            CUMULATIVE,
            vec![point("team-a", time, a), point("team-b", time, b)],
        )])
    };
    export(T0 + SECOND, 3, 4);
    export(T0 + 2 * SECOND, 5, 4);
    assert_eq!(
        harness.text(),
        format!(
            "# HELP sluice_gateway_requests_total sluice.gateway.requests\n\
             # TYPE sluice_gateway_requests_total counter\n\
             sluice_gateway_requests_total{{gen_ai_request_model=\"gpt-4o\",{CONTEXT}}} 9\n"
        )
    );
}

#[test]
fn series_not_updated_for_the_expiration_disappear() {
    let harness = Harness::new("metric_expiration = \"1m\"\ntarget_info = false");
    let start = Instant::now();
    let point = |model: &str| model_counter(std::iter::once(model.to_string()), 1, T0 + SECOND);
    harness.export_at(&request(vec![point("old")]), start);
    harness.export_at(
        &request(vec![point("new")]),
        start + Duration::from_secs(50),
    );
    let render = |at| exposition::render(&harness.store.snapshot(at), Format::Text);
    let before = render(start + Duration::from_secs(59));
    assert!(
        before.contains("\"old\"") && before.contains("\"new\""),
        "{before}"
    );
    let after = render(start + Duration::from_secs(61));
    assert!(
        !after.contains("\"old\"") && after.contains("\"new\""),
        "{after}"
    );
    assert_eq!(render(start + Duration::from_secs(200)), "");
    assert!(
        !harness
            .telemetry
            .render()
            .contains("sluice_prometheus_series{"),
        "an expired metric's series gauge is removed"
    );
}

// ---- The exporter and its scrape endpoint on a real socket --------------------------------

fn settings(table: &str) -> sluice_pipeline::ComponentSettings {
    sluice_pipeline::ComponentSettings::new(
        sluice_pipeline::config::ComponentKind::Exporter,
        "prometheus",
        "prometheus",
        toml::from_str(table).expect("valid TOML"),
    )
}

async fn started(table: &str) -> (PrometheusExporter, SocketAddr, Telemetry) {
    let settings = settings(table);
    let config: Config = settings.parse().expect("a valid config");
    let mut exporter = PrometheusExporter::new(&settings, config).expect("a valid config");
    let telemetry = Telemetry::new();
    let ctx = ExporterContext {
        id: "prometheus".into(),
        telemetry: telemetry.clone(),
    };
    exporter.start(&ctx).await.expect("binds 127.0.0.1:0");
    let addr = exporter.local_addr().expect("started");
    (exporter, addr, telemetry)
}

/// A raw HTTP/1.1 GET: status line, headers and body bytes.
fn get(addr: SocketAddr, path: &str, headers: &str) -> (String, Vec<u8>) {
    let mut stream = TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{headers}\r\n"
    )
    .unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a complete response");
    let head = String::from_utf8_lossy(&response[..split]).to_string();
    (head, response[split + 4..].to_vec())
}

fn batch(metrics: Vec<Metric>) -> Batch {
    Batch::from_request(Request::Metrics(request(metrics)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrapes_get_text_openmetrics_or_gzip_as_they_ask() {
    let (exporter, addr, _) = started("endpoint = \"127.0.0.1:0\"").await;
    exporter
        .export(batch(vec![sum(
            "requests",
            "",
            true,
            CUMULATIVE,
            vec![number(&[], T0, T0 + SECOND, int(3))],
        )]))
        .await
        .unwrap();
    let expected_line = format!("requests_total{{{CONTEXT}}} 3\n");

    let (head, body) = tokio::task::spawn_blocking(move || get(addr, "/metrics", ""))
        .await
        .unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_lowercase()
            .contains("content-type: text/plain; version=0.0.4; charset=utf-8"),
        "{head}"
    );
    let text = String::from_utf8(body).unwrap();
    assert!(text.contains(&expected_line), "{text}");

    let (head, body) = tokio::task::spawn_blocking(move || {
        get(addr, "/metrics", "Accept: application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5\r\nAccept-Encoding: gzip\r\n")
    })
    .await
    .unwrap();
    let lower = head.to_lowercase();
    assert!(
        lower.contains("content-type: application/openmetrics-text; version=1.0.0; charset=utf-8"),
        "{head}"
    );
    assert!(lower.contains("content-encoding: gzip"), "{head}");
    let mut text = String::new();
    flate2::read::GzDecoder::new(&body[..])
        .read_to_string(&mut text)
        .unwrap();
    assert!(text.contains(&expected_line), "{text}");
    assert!(text.ends_with("# EOF\n"), "{text}");

    let (head, _) = tokio::task::spawn_blocking(move || get(addr, "/other", ""))
        .await
        .unwrap();
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");

    exporter.shutdown().await;
    assert!(
        TcpStream::connect(addr).is_err(),
        "the endpoint closes on shutdown"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scrape_sees_every_export_before_it() {
    let (exporter, addr, _) = started("endpoint = \"127.0.0.1:0\"").await;
    for i in 1..=3 {
        exporter
            .export(batch(vec![sum(
                "requests",
                "",
                true,
                CUMULATIVE,
                vec![number(&[], T0, T0 + i * SECOND, int(i as i64))],
            )]))
            .await
            .unwrap();
        let (_, body) = tokio::task::spawn_blocking(move || get(addr, "/metrics", ""))
            .await
            .unwrap();
        let text = String::from_utf8(body).unwrap();
        assert!(
            text.contains(&format!("requests_total{{{CONTEXT}}} {i}\n")),
            "{text}"
        );
    }
    exporter.shutdown().await;
}

#[tokio::test]
async fn a_taken_port_is_a_start_error_naming_the_exporter_and_address() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let mut exporter = PrometheusFactory
        .build(&settings(&format!("endpoint = \"{addr}\"")))
        .unwrap();
    let ctx = ExporterContext {
        id: "prometheus".into(),
        telemetry: Telemetry::new(),
    };
    let error = exporter.start(&ctx).await.unwrap_err().to_string();
    assert!(error.starts_with("exporters.prometheus: "), "{error}");
    assert!(
        error.contains(&format!("cannot listen on {addr}")),
        "{error}"
    );
}

#[test]
fn bad_values_are_config_errors_naming_the_key() {
    let error = |table: &str| {
        PrometheusFactory
            .build(&settings(table))
            .err()
            .expect("a config error")
            .to_string()
    };
    assert!(error("endpoint = \"localhost\"").contains("exporters.prometheus.endpoint"));
    assert!(
        error("const_labels = { \"bad-name\" = \"x\" }")
            .contains("exporters.prometheus.const_labels")
    );
    assert!(error("const_labels = { le = \"x\" }").contains("exporters.prometheus.const_labels"));
    assert!(error("metric_expiration = \"0s\"").contains("exporters.prometheus.metric_expiration"));
    assert!(
        error("max_series_per_metric = 0").contains("exporters.prometheus.max_series_per_metric")
    );
    assert!(error("namespace = \"1x\"").contains("exporters.prometheus.namespace"));
    assert!(error("enpoint = \"x\"").contains("unknown field `enpoint`"));
}

#[test]
fn the_factory_takes_metrics_only() {
    assert_eq!(
        PrometheusFactory.signals(),
        [sluice_pipeline::Signal::Metrics]
    );
}
