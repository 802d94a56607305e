use std::path::Path;

use sluice_pipeline::config::load_str;

use super::*;
use crate::otlp_grpc::OtlpGrpcExporter;
use crate::otlp_http::OtlpHttpExporter;
use crate::test_data;

fn env(vars: &[(&str, &str)]) -> OtlpEnv {
    let vars: BTreeMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    OtlpEnv::from_lookup(|name| vars.get(name).cloned())
}

#[test]
fn the_generic_endpoint_gets_the_signal_path_and_a_signal_endpoint_is_used_as_is() {
    let env = env(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/"),
        (
            "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT",
            "http://logs:9000/ingest",
        ),
    ]);
    assert_eq!(
        env.http_url(Signal::Traces).unwrap().value,
        "http://collector:4318/v1/traces"
    );
    assert_eq!(
        env.http_url(Signal::Logs).unwrap().value,
        "http://logs:9000/ingest"
    );
    assert_eq!(
        env.grpc_endpoint(Some(Signal::Metrics)).unwrap().value,
        "http://collector:4318/"
    );
}

#[test]
fn signal_specific_variables_win_over_generic_ones() {
    let env = env(&[
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "1000"),
        ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "250"),
        ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip"),
        ("OTEL_EXPORTER_OTLP_METRICS_COMPRESSION", "none"),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ("OTEL_EXPORTER_OTLP_LOGS_PROTOCOL", "http/json"),
    ]);
    assert_eq!(
        env.timeout(Some(Signal::Traces)).unwrap(),
        Some(Duration::from_millis(250))
    );
    assert_eq!(
        env.timeout(Some(Signal::Logs)).unwrap(),
        Some(Duration::from_millis(1000))
    );
    assert_eq!(
        env.compression(Some(Signal::Metrics)).unwrap(),
        Some(Compression::None)
    );
    assert_eq!(env.protocol(Some(Signal::Traces)).unwrap(), Protocol::Grpc);
    assert_eq!(
        env.protocol(Some(Signal::Logs)).unwrap(),
        Protocol::HttpJson
    );
}

#[test]
fn protocol_defaults_to_http_protobuf_and_empty_values_count_as_unset() {
    let env = env(&[
        ("OTEL_EXPORTER_OTLP_PROTOCOL", ""),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", " "),
    ]);
    assert_eq!(env.protocol(None).unwrap(), Protocol::HttpProtobuf);
    assert!(!env.has_endpoint(Signal::Traces));
}

#[test]
fn headers_are_comma_separated_pairs_with_percent_decoded_values() {
    let env = env(&[(
        "OTEL_EXPORTER_OTLP_HEADERS",
        "api-key = abc%20def , x-tenant=t%2C1,,",
    )]);
    let headers = env.headers(None).unwrap().unwrap();
    assert_eq!(headers["api-key"].expose(), "abc def");
    assert_eq!(headers["x-tenant"].expose(), "t,1");
    assert_eq!(headers.len(), 2);
}

#[test]
fn invalid_values_name_the_variable_and_never_show_a_header_value() {
    let env = env(&[
        (
            "OTEL_EXPORTER_OTLP_HEADERS",
            "api-key=s3cret,garbage-s3cret",
        ),
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "10s"),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http"),
        ("OTEL_EXPORTER_OTLP_COMPRESSION", "brotli"),
    ]);
    let headers = env.headers(None).unwrap_err();
    assert!(
        headers.starts_with("OTEL_EXPORTER_OTLP_HEADERS: entry 2"),
        "{headers}"
    );
    assert!(!headers.contains("s3cret"), "{headers}");
    assert!(
        env.timeout(None)
            .unwrap_err()
            .contains("OTEL_EXPORTER_OTLP_TIMEOUT=\"10s\" is not a number of milliseconds")
    );
    assert!(
        env.protocol(None)
            .unwrap_err()
            .contains("grpc, http/protobuf or http/json")
    );
    assert!(env.compression(None).unwrap_err().contains("gzip or none"));
}

#[test]
fn an_exporter_takes_omitted_keys_from_the_environment_and_explicit_keys_win() {
    let env = env(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://env:4317"),
        ("OTEL_EXPORTER_OTLP_HEADERS", "x-from=env"),
        ("OTEL_EXPORTER_OTLP_COMPRESSION", "none"),
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "1500"),
    ]);
    let omitted = test_data::settings("otlp_grpc", "");
    let exporter = OtlpGrpcExporter::new(&omitted, omitted.parse().unwrap(), &env).unwrap();
    let debug = format!("{exporter:?}");
    assert!(debug.contains("endpoint: http://env:4317/"), "{debug}");
    assert!(debug.contains("x-from"), "{debug}");
    assert!(debug.contains("compression: None"), "{debug}");
    assert!(debug.contains("timeout: 1.5s"), "{debug}");

    let explicit = test_data::settings(
        "otlp_grpc",
        "endpoint = \"http://file:4317\"\ncompression = \"gzip\"\ntimeout = \"3s\"\nheaders = { x-from = \"file\" }",
    );
    let exporter = OtlpGrpcExporter::new(&explicit, explicit.parse().unwrap(), &env).unwrap();
    let debug = format!("{exporter:?}");
    assert!(debug.contains("endpoint: http://file:4317/"), "{debug}");
    assert!(debug.contains("compression: Gzip"), "{debug}");
    assert!(debug.contains("timeout: 3s"), "{debug}");

    let http = test_data::settings("otlp_http", "");
    let exporter = OtlpHttpExporter::new(&http, http.parse().unwrap(), &env).unwrap();
    assert!(format!("{exporter:?}").contains("http://env:4317/v1/metrics"));
}

#[test]
fn an_exporter_without_endpoint_or_environment_names_the_variable() {
    let settings = test_data::settings("otlp_http", "");
    let error = OtlpHttpExporter::new(&settings, settings.parse().unwrap(), &OtlpEnv::default())
        .unwrap_err();
    assert_eq!(error.path.to_string(), "exporters.test.endpoint");
    assert!(
        error.message.contains("OTEL_EXPORTER_OTLP_ENDPOINT"),
        "{error}"
    );
}

#[test]
fn a_bad_endpoint_from_the_environment_says_which_variable() {
    let env = env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4317")]);
    let settings = test_data::settings("otlp_grpc", "");
    let error = OtlpGrpcExporter::new(&settings, settings.parse().unwrap(), &env).unwrap_err();
    assert!(
        error
            .message
            .ends_with("(from OTEL_EXPORTER_OTLP_ENDPOINT)"),
        "{error}"
    );
}

const NO_EXPORTERS: &str = r#"
[receivers.otlp]
[exporters.debug]
[pipelines.traces]
receivers = ["otlp"]
[pipelines.metrics]
receivers = ["otlp"]
[pipelines.logs]
receivers = ["otlp"]
exporters = ["debug"]
"#;

fn config() -> Config {
    load_str(Path::new("t.toml"), NO_EXPORTERS, |_| None).unwrap()
}

#[test]
fn pipelines_without_exporters_share_one_exporter_from_the_environment() {
    let mut config = config();
    let env = env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")]);
    add_env_exporters(&mut config, &env).unwrap();
    assert_eq!(config.pipelines["traces"].exporters, ["otlp_env"]);
    assert_eq!(config.pipelines["metrics"].exporters, ["otlp_env"]);
    assert_eq!(config.pipelines["logs"].exporters, ["debug"]);
    let settings = &config.exporters["otlp_env"];
    assert_eq!(settings.type_name, "otlp_http");
    assert_eq!(
        settings.table["traces_endpoint"].as_str(),
        Some("http://collector:4318/v1/traces")
    );
    assert_eq!(
        settings.table["metrics_endpoint"].as_str(),
        Some("http://collector:4318/v1/metrics")
    );
}

#[test]
fn signals_with_different_grpc_endpoints_get_an_exporter_each() {
    let mut config = config();
    let env = env(&[
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:4317"),
        ("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "http://b:4317"),
        ("OTEL_EXPORTER_OTLP_HEADERS", "x-tenant=t1"),
    ]);
    add_env_exporters(&mut config, &env).unwrap();
    assert_eq!(config.pipelines["traces"].exporters, ["otlp_env_traces"]);
    assert_eq!(config.pipelines["metrics"].exporters, ["otlp_env_metrics"]);
    let metrics = &config.exporters["otlp_env_metrics"];
    assert_eq!(metrics.type_name, "otlp_grpc");
    assert_eq!(metrics.table["endpoint"].as_str(), Some("http://b:4317"));
    assert_eq!(metrics.table["headers"]["x-tenant"].as_str(), Some("t1"));
}

#[test]
fn without_an_endpoint_for_the_signal_nothing_is_added() {
    let mut config = config();
    let env = env(&[("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT", "http://l/v1/logs")]);
    add_env_exporters(&mut config, &env).unwrap();
    assert!(config.pipelines["traces"].exporters.is_empty());
    assert!(!config.exporters.contains_key("otlp_env"));
}

#[test]
fn an_invalid_variable_is_reported_at_the_pipeline() {
    let mut config = config();
    let env = env(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "thrift"),
    ]);
    let errors = add_env_exporters(&mut config, &env).unwrap_err();
    assert_eq!(errors[0].path.to_string(), "pipelines.metrics.exporters");
    assert!(errors[0].message.contains("OTEL_EXPORTER_OTLP_PROTOCOL"));
}
