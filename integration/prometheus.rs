//! End to end: the `prometheus` exporter scraped by a real Prometheus server.
//!
//! The real `sluice` binary runs the AI gateway on its mock provider; the real OpenAI client
//! (`async-openai`) sends requests through it; a real Prometheus (Debian's `prometheus`
//! package, which CI installs) scrapes the exporter every second, and the tests ask
//! Prometheus's HTTP query API whether request counts, token sums and a histogram quantile
//! are what was sent. `promtool` checks a real scrape and the shipped alert rules. Both tools
//! must be on PATH: a missing one fails the tests, it does not skip them.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use async_openai::types::chat::{
    ChatCompletionRequestMessage, ChatCompletionRequestUserMessageArgs,
    ChatCompletionStreamOptions, CreateChatCompletionRequestArgs,
};
use common::backends::Backend;
use common::gateway::{Addresses, counter, openai};
use common::{PATIENCE, Sluice, free_port, http_get, wait_for};
use futures_util::StreamExt;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum, metric,
    number_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use serde_json::Value;

/// The bucket bounds of `gen_ai.client.token.usage` (GenAI semantic conventions).
const TOKEN_BOUNDS: &[f64] = &[
    1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0,
    16777216.0, 67108864.0,
];

/// A tool the tests need, found on PATH; a clear failure when it is not there.
fn tool(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!(
                "`{name}` is not on PATH. These tests run a real Prometheus: install Debian's \
                 `prometheus` package (`apt-get install -y prometheus`, as .ci/run does)"
            )
        })
}

fn repo_file(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// A real Prometheus server with its own data directory, killed when dropped.
struct Prometheus {
    child: Child,
    address: SocketAddr,
    client: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    /// Starts Prometheus scraping every target of `jobs` (`(job name, address)`) every second,
    /// with `honor_labels` as the shipped scrape config has it, and waits until it is ready.
    async fn start(jobs: &[(&str, SocketAddr)]) -> Prometheus {
        let binary = tool("prometheus");
        let dir = tempfile::tempdir().unwrap();
        let mut config =
            String::from("global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n");
        for (job, target) in jobs {
            config.push_str(&format!(
                "  - job_name: {job}\n    honor_labels: true\n    static_configs:\n      - targets: [\"{target}\"]\n"
            ));
        }
        let config_file = dir.path().join("prometheus.yml");
        std::fs::write(&config_file, config).unwrap();
        let address = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let child = Command::new(binary)
            .arg(format!("--config.file={}", config_file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={address}"))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("prometheus starts");
        let mut prometheus = Prometheus {
            child,
            address,
            client: reqwest::Client::new(),
            _dir: dir,
        };
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Ok(Some(status)) = prometheus.child.try_wait() {
                panic!("prometheus exited with {status} before it was ready");
            }
            let ready = prometheus
                .client
                .get(format!("http://{address}/-/ready"))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ready {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "prometheus was not ready in time"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        prometheus
    }

    /// Runs an instant query; returns each result's labels and value. Fails the test on a
    /// query error (a bad expression).
    async fn query(&self, expr: &str) -> Vec<(BTreeMap<String, String>, f64)> {
        let url = format!(
            "http://{}/api/v1/query?query={}",
            self.address,
            encode(expr)
        );
        let body: Value = self
            .client
            .get(url)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(body["status"], "success", "query {expr}: {body}");
        body["data"]["result"]
            .as_array()
            .unwrap_or_else(|| panic!("query {expr} is not a vector: {body}"))
            .iter()
            .map(|r| {
                let labels = r["metric"]
                    .as_object()
                    .unwrap()
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
                    .collect();
                let value = r["value"][1].as_str().unwrap().parse().unwrap();
                (labels, value)
            })
            .collect()
    }

    /// The single value of `expr`, if it has one.
    async fn value(&self, expr: &str) -> Option<f64> {
        let result = self.query(expr).await;
        assert!(result.len() <= 1, "{expr} has several series: {result:?}");
        result.first().map(|(_, v)| *v)
    }

    /// Polls `expr` until its value is `expected`, failing after [`PATIENCE`].
    async fn wait_for_value(&self, expr: &str, expected: f64) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let value = self.value(expr).await;
            if value == Some(expected) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{expr} is {value:?}, expected {expected}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Percent-encodes a query parameter value.
fn encode(text: &str) -> String {
    let mut out = String::new();
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-_.~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// What Prometheus's `histogram_quantile` gives for `q` over `values` recorded in a
/// histogram with `bounds`: the rank's bucket, interpolated linearly (from 0 in the first
/// bucket).
fn histogram_quantile(q: f64, bounds: &[f64], values: &[f64]) -> f64 {
    let mut counts = vec![0u64; bounds.len() + 1];
    for v in values {
        counts[bounds.partition_point(|b| b < v)] += 1;
    }
    let rank = q * values.len() as f64;
    let mut cumulative = 0u64;
    for (i, count) in counts.iter().enumerate() {
        let before = cumulative;
        cumulative += count;
        if cumulative as f64 >= rank {
            if i == bounds.len() {
                return bounds[bounds.len() - 1];
            }
            let lower = if i == 0 { 0.0 } else { bounds[i - 1] };
            return lower + (bounds[i] - lower) * (rank - before as f64) / *count as f64;
        }
    }
    unreachable!("the last bucket holds every value")
}

fn user_message(text: &str) -> ChatCompletionRequestMessage {
    ChatCompletionRequestUserMessageArgs::default()
        .content(text)
        .build()
        .unwrap()
        .into()
}

const GATEWAY_KEYS: &[(&str, &str)] = &[
    ("team-a", "sk-team-a-1f2e3d"),
    ("team-b", "sk-team-b-9a8b7c"),
];

/// Sluice with the gateway on its mock provider; metrics through `batch` to the prometheus
/// exporter and an OTLP/gRPC backend.
fn gateway_config(addresses: Addresses, exporter: SocketAddr, backend: &str) -> String {
    let mut keys = String::new();
    for (id, key) in GATEWAY_KEYS {
        keys.push_str(&format!(
            "[[gateway.keys]]\nid = \"{id}\"\nkey = \"{key}\"\n\n"
        ));
    }
    format!(
        r#"
[service]
admin = "{admin}"

[gateway]
listen = "{gateway}"

[gateway.telemetry]
metrics_interval = "200ms"

[gateway.providers.local]
kind = "mock"

[[gateway.routes]]
model = "gpt-4o"
targets = [{{ provider = "local" }}]

{keys}
[processors.batch]
timeout = "50ms"

[exporters.prometheus]
endpoint = "{exporter}"

[exporters.backend]
type = "otlp_grpc"
endpoint = "{backend}"
compression = "none"

[pipelines.metrics]
receivers = ["gateway"]
processors = ["batch"]
exporters = ["prometheus", "backend"]
"#,
        admin = addresses.admin,
        gateway = addresses.gateway,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_the_gateway_metrics_and_its_queries_match_what_was_sent() {
    let promtool = tool("promtool");
    let backend = Backend::grpc().await;
    let addresses = Addresses::free();
    let exporter = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let sluice = Sluice::start(
        &gateway_config(addresses, exporter, &backend.url()),
        addresses.admin,
        &[addresses.gateway, exporter],
    );
    let prometheus =
        Prometheus::start(&[("sluice-exporter", exporter), ("sluice", addresses.admin)]).await;

    // Requests: chats with each key, streamed chats with usage, and a misspelt model.
    let (mut input_tokens, mut output_tokens) = (Vec::new(), Vec::new());
    let mut per_key = BTreeMap::new();
    for (i, (id, key)) in GATEWAY_KEYS.iter().cycle().take(7).enumerate() {
        let request = CreateChatCompletionRequestArgs::default()
            .model("gpt-4o")
            .messages(vec![user_message(
                &"tell me about the river ".repeat(i + 1),
            )])
            .build()
            .unwrap();
        let usage = openai(addresses, key)
            .chat()
            .create(request)
            .await
            .unwrap()
            .usage
            .unwrap();
        input_tokens.push(f64::from(usage.prompt_tokens));
        output_tokens.push(f64::from(usage.completion_tokens));
        *per_key.entry(*id).or_insert(0.0) += 1.0;
    }
    for i in 0..3 {
        let request = CreateChatCompletionRequestArgs::default()
            .model("gpt-4o")
            .messages(vec![user_message(&format!(
                "stream number {i} about the sea"
            ))])
            .stream_options(ChatCompletionStreamOptions {
                include_usage: Some(true),
                include_obfuscation: None,
            })
            .build()
            .unwrap();
        let mut stream = openai(addresses, GATEWAY_KEYS[0].1)
            .chat()
            .create_stream(request)
            .await
            .unwrap();
        let mut usage = None;
        while let Some(chunk) = stream.next().await {
            if let Some(u) = chunk.unwrap().usage {
                usage = Some(u);
            }
        }
        let usage = usage.expect("the stream ends with its usage");
        input_tokens.push(f64::from(usage.prompt_tokens));
        output_tokens.push(f64::from(usage.completion_tokens));
        *per_key.entry(GATEWAY_KEYS[0].0).or_insert(0.0) += 1.0;
    }
    for _ in 0..2 {
        let request = CreateChatCompletionRequestArgs::default()
            .model("gpt-4oo")
            .messages(vec![user_message("hello")])
            .build()
            .unwrap();
        let error = openai(addresses, GATEWAY_KEYS[1].1)
            .chat()
            .create(request)
            .await
            .unwrap_err();
        assert!(error.to_string().contains("gpt-4oo"), "{error}");
        *per_key.entry(GATEWAY_KEYS[1].0).or_insert(0.0) += 1.0;
    }
    let total: f64 = per_key.values().sum();
    assert_eq!(total, 12.0);

    // Request counts, through Prometheus's query API once it has scraped them.
    let job = r#"job="sluice-gateway""#;
    prometheus
        .wait_for_value(
            &format!("sum(sluice_gateway_requests_total{{{job}}})"),
            total,
        )
        .await;
    for (id, count) in &per_key {
        prometheus
            .wait_for_value(
                &format!("sum(sluice_gateway_requests_total{{{job},sluice_api_key_id=\"{id}\"}})"),
                *count,
            )
            .await;
    }
    prometheus
        .wait_for_value(
            &format!("sum(sluice_gateway_requests_total{{{job},gen_ai_request_model=\"unknown\",http_response_status_code=\"404\",error_type=\"model_not_found\"}})"),
            2.0,
        )
        .await;
    prometheus
        .wait_for_value(
            &format!(
                "sum(sluice_gateway_requests_total{{{job},http_response_status_code=\"200\"}})"
            ),
            10.0,
        )
        .await;

    // Token sums.
    let input_sum: f64 = input_tokens.iter().sum();
    let output_sum: f64 = output_tokens.iter().sum();
    for (token_type, expected) in [("input", input_sum), ("output", output_sum)] {
        prometheus
            .wait_for_value(
                &format!(
                    "sum(sluice_gateway_tokens_total{{{job},gen_ai_token_type=\"{token_type}\"}})"
                ),
                expected,
            )
            .await;
        prometheus
            .wait_for_value(
                &format!(
                    "sum(gen_ai_client_token_usage_sum{{{job},gen_ai_token_type=\"{token_type}\"}})"
                ),
                expected,
            )
            .await;
    }

    // Histogram quantiles of the token usage, as Prometheus computes them from the buckets.
    for (token_type, values) in [("input", &input_tokens), ("output", &output_tokens)] {
        for q in [0.5, 0.9] {
            let expected = histogram_quantile(q, TOKEN_BOUNDS, values);
            let expr = format!(
                "histogram_quantile({q}, sum by (le) (gen_ai_client_token_usage_bucket{{{job},gen_ai_token_type=\"{token_type}\"}}))"
            );
            let value = prometheus.value(&expr).await.expect("a quantile");
            assert!(
                (value - expected).abs() < 1e-9,
                "{expr} = {value}, expected {expected} from {values:?}"
            );
        }
    }
    // Every request was answered within the duration histogram's range.
    let p99 = prometheus
        .value(&format!("histogram_quantile(0.99, sum by (le) (gen_ai_client_operation_duration_seconds_bucket{{{job}}}))"))
        .await
        .expect("a latency quantile");
    assert!(p99 > 0.0 && p99 <= 81.92, "{p99}");
    // The streams' time to first token is there too.
    prometheus
        .wait_for_value(
            &format!("sum(gen_ai_server_time_to_first_token_seconds_count{{{job}}})"),
            3.0,
        )
        .await;
    // The gateway's resource and scope.
    prometheus
        .wait_for_value(
            &format!("count(target_info{{{job},service_version=~\".+\"}})"),
            1.0,
        )
        .await;
    assert_eq!(
        prometheus
            .value(&format!(
                "count(sluice_gateway_requests_total{{{job},otel_scope_name!=\"sluice.gateway\"}})"
            ))
            .await,
        None
    );
    prometheus
        .wait_for_value(
            &format!("sum(sluice_gateway_active_requests{{{job}}})"),
            0.0,
        )
        .await;
    // The exporter's series gauge, scraped from the admin address.
    prometheus.wait_for_value(r#"up{job="sluice"}"#, 1.0).await;
    let series = prometheus
        .value(r#"sum(sluice_prometheus_series{job="sluice",exporter="prometheus",metric="sluice_gateway_requests"})"#)
        .await
        .expect("the exporter's series gauge");
    assert!(series >= 3.0, "{series}");

    // The OTLP exporter of the same pipeline carries the same values (acceptance 5).
    let received = backend
        .recorder
        .wait_until("the OTLP backend has every request counted", |r| {
            counter(r, "sluice.gateway.requests", &[]) == 12
                && counter(
                    r,
                    "sluice.gateway.tokens",
                    &[("gen_ai.token.type", "output")],
                ) == output_sum as i64
        })
        .await;
    assert_eq!(
        counter(
            &received,
            "sluice.gateway.tokens",
            &[("gen_ai.token.type", "input")]
        ) as f64,
        prometheus
            .value(&format!(
                "sum(sluice_gateway_tokens_total{{{job},gen_ai_token_type=\"input\"}})"
            ))
            .await
            .unwrap()
    );
    for (id, count) in &per_key {
        assert_eq!(
            counter(
                &received,
                "sluice.gateway.requests",
                &[("sluice.api_key.id", id)]
            ) as f64,
            *count
        );
    }

    // promtool accepts a real scrape in the text format (acceptance 2).
    let scrape = http_get(exporter, "/metrics");
    assert!(
        scrape.contains("# TYPE sluice_gateway_requests_total counter"),
        "{scrape}"
    );
    let mut check = Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    check
        .stdin
        .take()
        .unwrap()
        .write_all(scrape.as_bytes())
        .unwrap();
    let output = check.wait_with_output().unwrap();
    assert!(
        output.status.success() && output.stdout.is_empty() && output.stderr.is_empty(),
        "promtool check metrics: {}{}\n{scrape}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );

    // Prometheus itself scraped in OpenMetrics (it asks for it first) without errors.
    prometheus
        .wait_for_value(r#"up{job="sluice-exporter"}"#, 1.0)
        .await;

    // Every query of the shipped dashboard is valid PromQL against these metrics.
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(repo_file("configs/grafana-dashboard.json")).unwrap(),
    )
    .unwrap();
    let mut queries = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"]
                .as_str()
                .unwrap()
                .replace("$__rate_interval", "1m")
                .replace("$__range", "5m")
                .replace("$sluice_job", ".*")
                .replace("$job", ".*")
                .replace("$model", ".*")
                .replace("$key", ".*");
            prometheus.query(&expr).await;
            queries += 1;
        }
    }
    assert!(queries > 20, "{queries}");
    drop(sluice);
}

#[test]
fn promtool_accepts_the_shipped_alert_rules_and_scrape_config() {
    let promtool = tool("promtool");
    for args in [
        ["check", "rules"].map(String::from).to_vec(),
        ["check", "config"].map(String::from).to_vec(),
    ] {
        let file = if args[1] == "rules" {
            "configs/prometheus-alerts.yml"
        } else {
            "configs/prometheus.yml"
        };
        let output = Command::new(&promtool)
            .args(&args)
            .arg(repo_file(file))
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(output.status.success(), "promtool {args:?} {file}: {text}");
        assert!(text.contains("SUCCESS"), "{text}");
    }
    let rules = std::fs::read_to_string(repo_file("configs/prometheus-alerts.yml")).unwrap();
    for alert in [
        "SluiceGatewayErrorRateHigh",
        "SluiceGatewayLatencySpike",
        "SluiceGatewayRateLimitSaturation",
        "SluiceExporterError",
        "SluiceExporterQueueFilling",
        "SluiceDataDropped",
    ] {
        assert!(rules.contains(&format!("alert: {alert}")), "{alert}");
    }
}

/// Runs `sluice validate` on `config`; returns (success, output, file path).
fn validate(config: &str) -> (bool, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sluice.toml");
    std::fs::write(&file, config).unwrap();
    let output = Command::new(common::sluice_binary())
        .args(["validate", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text, file.display().to_string())
}

#[test]
fn the_prometheus_exporter_in_a_traces_pipeline_is_a_config_error_with_its_line() {
    let (ok, text, file) = validate(
        r#"[receivers.otlp]
grpc = "127.0.0.1:0"

[exporters.prometheus]
endpoint = "127.0.0.1:0"

[pipelines.metrics]
receivers = ["otlp"]
exporters = ["prometheus"]

[pipelines.traces]
receivers = ["otlp"]
exporters = ["prometheus"]
"#,
    );
    assert!(!ok, "{text}");
    assert!(
        text.contains(&format!(
            "{file}:13: pipelines.traces.exporters[0]: exporter \"prometheus\" (type prometheus) does not support traces; it supports metrics"
        )),
        "{text}"
    );
}

#[test]
fn the_shipped_configs_validate() {
    for file in ["configs/gateway-prometheus.toml", "configs/quickstart.toml"] {
        let output = Command::new(common::sluice_binary())
            .args(["validate", "--config"])
            .arg(repo_file(file))
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{file}: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

#[test]
fn a_taken_scrape_port_stops_the_start_naming_the_exporter_and_address() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sluice.toml");
    std::fs::write(
        &file,
        format!(
            "[service]\nadmin = \"127.0.0.1:{admin}\"\n\n[receivers.otlp]\ngrpc = \"127.0.0.1:{grpc}\"\n\n[exporters.prometheus]\nendpoint = \"{address}\"\n\n[pipelines.metrics]\nreceivers = [\"otlp\"]\nexporters = [\"prometheus\"]\n",
            admin = free_port(),
            grpc = free_port(),
        ),
    )
    .unwrap();
    let output = Command::new(common::sluice_binary())
        .args(["run", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{text}");
    assert!(
        text.contains(&format!("exporters.prometheus: cannot listen on {address}")),
        "{text}"
    );
}

fn string(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.into())),
        }),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_model_names_keep_the_series_at_the_limit_plus_overflow() {
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let grpc = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let exporter = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let _sluice = Sluice::start(
        &format!(
            r#"[service]
admin = "{admin}"

[receivers.otlp]
grpc = "{grpc}"

[exporters.prometheus]
endpoint = "{exporter}"
max_series_per_metric = 2000

[pipelines.metrics]
receivers = ["otlp"]
exporters = ["prometheus"]
"#
        ),
        admin,
        &[grpc, exporter],
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let data_points = (0..10_000)
        .map(|i| NumberDataPoint {
            attributes: vec![string("gen_ai.request.model", &format!("model-{i}"))],
            start_time_unix_nano: now - 1_000_000_000,
            time_unix_nano: now,
            value: Some(number_data_point::Value::AsInt(1)),
            ..Default::default()
        })
        .collect();
    let request = ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(Resource {
                attributes: vec![string("service.name", "cardinality-test")],
                ..Default::default()
            }),
            scope_metrics: vec![ScopeMetrics {
                metrics: vec![Metric {
                    name: "sluice.gateway.requests".into(),
                    unit: "{request}".into(),
                    data: Some(metric::Data::Sum(Sum {
                        data_points,
                        aggregation_temporality: AggregationTemporality::Cumulative as i32,
                        is_monotonic: true,
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    let mut client = MetricsServiceClient::connect(format!("http://{grpc}"))
        .await
        .unwrap();
    client.export(request).await.unwrap();

    let series = |text: &str| {
        text.lines()
            .filter(|l| l.starts_with("sluice_gateway_requests_total{"))
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    wait_for("the exporter to expose the export", || {
        series(&http_get(exporter, "/metrics")).len() == 2001
    });
    let lines = series(&http_get(exporter, "/metrics"));
    let overflow: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains(r#"otel_metric_overflow="true""#))
        .collect();
    assert_eq!(
        overflow,
        [&r#"sluice_gateway_requests_total{otel_metric_overflow="true"} 8000"#.to_string()]
    );
    let internal = http_get(admin, "/metrics");
    assert_eq!(
        common::metric_value(
            &internal,
            r#"sluice_prometheus_series_dropped_total{exporter="prometheus",metric="sluice_gateway_requests"}"#
        ),
        8000.0
    );
    assert_eq!(
        common::metric_value(
            &internal,
            r#"sluice_prometheus_series{exporter="prometheus",metric="sluice_gateway_requests"}"#
        ),
        2001.0
    );
}
