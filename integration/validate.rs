//! `sluice validate`: every kind of config error is reported with file, line and key path,
//! all at once, with a non-zero exit status.

mod common;

use std::process::Command;

/// Runs `sluice validate` on `config`; returns (exit success, stdout + stderr, the file path).
fn validate(config: &str) -> (bool, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pipelines.toml");
    std::fs::write(&file, config).unwrap();
    let output = Command::new(common::sluice_binary())
        .args(["validate", "--config"])
        .arg(&file)
        .env_remove("SLUICE_TEST_UNSET")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text, file.display().to_string())
}

const VALID: &str = r#"[service]
admin = "127.0.0.1:0"

[receivers.otlp]
grpc = "127.0.0.1:0"

[processors.batch]
timeout = "100ms"

[exporters.tempo]
type = "otlp_grpc"
endpoint = "http://127.0.0.1:14317"
headers = { "x-scope-orgid" = "${SLUICE_TEST_UNSET:-default}" }

[pipelines.traces]
receivers = ["otlp"]
processors = ["batch"]
exporters = ["tempo"]
"#;

#[test]
fn a_valid_config_passes() {
    let (ok, text, _) = validate(VALID);
    assert!(ok, "{text}");
    assert!(text.contains("configuration is valid"), "{text}");
}

#[test]
fn unknown_key_is_reported_with_file_line_and_key_path() {
    let config = VALID.replace(
        "endpoint = \"http://127.0.0.1:14317\"",
        "endpoint = \"http://127.0.0.1:14317\"\nendpiont = \"typo\"",
    );
    let (ok, text, file) = validate(&config);
    assert!(!ok);
    assert!(
        text.contains(&format!(
            "{file}:13: exporters.tempo.endpiont: unknown field `endpiont`"
        )),
        "{text}"
    );
}

#[test]
fn reference_to_an_undefined_component_is_reported() {
    let config = VALID.replace(
        "exporters = [\"tempo\"]",
        "exporters = [\"tempo\", \"honeycomb\"]",
    );
    let (ok, text, file) = validate(&config);
    assert!(!ok);
    assert!(
        text.contains(&format!(
            "{file}:18: pipelines.traces.exporters[1]: exporter \"honeycomb\" is not defined"
        )),
        "{text}"
    );
}

#[test]
fn pipeline_without_receivers_or_exporters_is_reported() {
    let config = VALID
        .replace("receivers = [\"otlp\"]\n", "")
        .replace("exporters = [\"tempo\"]\n", "");
    let (ok, text, file) = validate(&config);
    assert!(!ok);
    assert!(
        text.contains(&format!(
            "{file}:15: pipelines.traces.receivers: a pipeline needs at least one receiver"
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "{file}:15: pipelines.traces.exporters: a pipeline needs at least one exporter"
        )),
        "{text}"
    );
}

#[test]
fn unset_environment_variable_without_default_is_reported() {
    let config = VALID.replace("${SLUICE_TEST_UNSET:-default}", "${SLUICE_TEST_UNSET}");
    let (ok, text, file) = validate(&config);
    assert!(!ok);
    assert!(
        text.contains(&format!(
            "{file}:13: environment variable SLUICE_TEST_UNSET is not set"
        )),
        "{text}"
    );
}

#[test]
fn invalid_value_is_reported_with_its_key() {
    let config = VALID.replace("timeout = \"100ms\"", "timeout = \"soon\"");
    let (ok, text, file) = validate(&config);
    assert!(!ok);
    assert!(
        text.contains(&format!(
            "{file}:8: processors.batch.timeout: invalid duration \"soon\""
        )),
        "{text}"
    );
}

#[test]
fn unknown_component_type_is_reported() {
    let config = VALID.replace("type = \"otlp_grpc\"", "type = \"zipkin\"");
    let (ok, text, file) = validate(&config);
    assert!(!ok);
    assert!(
        text.contains(&format!(
            "{file}:11: exporters.tempo.type: unknown exporter type \"zipkin\""
        )),
        "{text}"
    );
}

#[test]
fn every_error_is_listed_in_one_run() {
    let config = VALID
        .replace("timeout = \"100ms\"", "timeout = \"soon\"")
        .replace(
            "exporters = [\"tempo\"]",
            "exporters = [\"tempo\", \"nope\"]",
        )
        .replace("grpc = \"127.0.0.1:0\"", "grpc = \"not an address\"");
    let (ok, text, file) = validate(&config);
    assert!(!ok);
    assert!(
        text.contains(&format!("{file}:8: processors.batch.timeout")),
        "{text}"
    );
    assert!(
        text.contains(&format!("{file}:18: pipelines.traces.exporters[1]")),
        "{text}"
    );
    assert!(
        text.contains(&format!("{file}:5: receivers.otlp.grpc")),
        "{text}"
    );
    assert!(text.contains("3 error(s)"), "{text}");
}

#[test]
fn unused_component_is_a_warning_not_an_error() {
    let config = format!("{VALID}\n[exporters.debug]\n");
    let (ok, text, file) = validate(&config);
    assert!(ok, "{text}");
    assert!(
        text.contains(&format!(
            "{file}:20: exporters.debug: exporter \"debug\" is defined but no pipeline uses it"
        )),
        "{text}"
    );
}

#[test]
fn a_syntax_error_is_reported_with_its_line() {
    let config = VALID.replace("timeout = \"100ms\"", "timeout = ");
    let (ok, text, file) = validate(&config);
    assert!(!ok);
    assert!(text.contains(&format!("{file}:8:")), "{text}");
}

#[test]
fn a_missing_file_is_a_clear_error() {
    let output = Command::new(common::sluice_binary())
        .args(["validate", "--config", "/nonexistent/sluice.toml"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let text = String::from_utf8_lossy(&output.stderr);
    assert!(
        text.contains("/nonexistent/sluice.toml: cannot read the file"),
        "{text}"
    );
}
