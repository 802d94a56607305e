//! The shipped configurations (configs/*.toml) validate and pass their own `[[tests]]` through
//! the real binary, and `sluice test` reports failing expectations and broken test tables the
//! way a user needs to read them.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Shipped configurations that have no `[[tests]]` yet.
const WITHOUT_TESTS: &[&str] = &["gateway-prometheus.toml"];

fn repo_file(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// Runs `sluice ARGS`, without the OpenTelemetry variables of the environment running the
/// tests (they would add exporters or headers to the configs).
fn sluice(args: &[&str], files: &[&Path]) -> Output {
    let mut command = Command::new(common::sluice_binary());
    command.args(args);
    for file in files {
        command.arg(file);
    }
    for (name, _) in std::env::vars() {
        if name.starts_with("OTEL_") {
            command.env_remove(name);
        }
    }
    command.output().unwrap()
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn shipped_configs() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo_file("configs"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_shipped_config_validates_and_passes_its_tests() {
    let files = shipped_configs();
    assert!(files.len() >= 8, "{files:?}");
    for file in &files {
        let name = file.file_name().unwrap().to_string_lossy().to_string();
        let validated = sluice(&["validate", "--config"], &[file]);
        assert!(validated.status.success(), "{name}: {}", text(&validated));

        let tested = sluice(&["test", "--config"], &[file]);
        let output = text(&tested);
        assert!(tested.status.success(), "{name}: {output}");
        assert!(output.contains("test result: ok."), "{name}: {output}");
        assert!(!output.contains("FAILED"), "{name}: {output}");
        let ran = output
            .lines()
            .filter(|l| l.starts_with("test ") && !l.starts_with("test result:"))
            .count();
        if WITHOUT_TESTS.contains(&name.as_str()) {
            assert_eq!(ran, 0, "{name} has tests now: remove it from WITHOUT_TESTS");
        } else {
            assert!(ran > 0, "{name} has no [[tests]]: {output}");
            assert!(
                output.contains(&format!("{ran} passed; 0 failed")),
                "{name}: {output}"
            );
        }
    }
}

#[test]
fn a_wrong_assertion_fails_the_run_and_says_what_came_instead() {
    let dir = tempfile::tempdir().unwrap();
    let tests = dir.path().join("wrong.toml");
    // Claims the API key reaches the backend unmasked: the compliance pipeline masks it.
    std::fs::write(
        &tests,
        r#"[[tests]]
name = "the key leaks"
[[tests.input]]
at = "gateway"
spans = [{ name = "chat gpt-4o", attributes = { "input.value" = "my key is sk-proj-4f9aXb2LmQ81rT5vWz0yKd" } }]
[[tests.expect]]
from = "exporter/otlp"
attributes = { "input.value" = "my key is sk-proj-4f9aXb2LmQ81rT5vWz0yKd" }
"#,
    )
    .unwrap();
    let config = repo_file("configs/compliance.toml");
    let output = sluice(
        &["test", "--config"],
        &[&config, Path::new("--tests"), &tests],
    );
    let text = text(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(text.contains("test the key leaks ... FAILED"), "{text}");
    assert!(
        text.contains("test secrets in a captured prompt are masked before export ... ok"),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "{}:6: from exporter/otlp: span \"chat gpt-4o\": attribute \"input.value\" is \"my key is ****\", expected \"my key is sk-proj-4f9aXb2LmQ81rT5vWz0yKd\"",
            tests.display()
        )),
        "{text}"
    );
    assert!(
        text.contains("test result: FAILED. 5 passed; 1 failed"),
        "{text}"
    );
}

#[test]
fn a_trace_the_sampler_drops_fails_an_expectation_that_it_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let tests = dir.path().join("kept.toml");
    std::fs::write(
        &tests,
        "[[tests]]\nname = \"fast trace kept\"\n[[tests.input]]\nat = \"otlp\"\nspans = [{ name = \"GET /cart\", duration = \"40ms\" }]\n[[tests.expect]]\nfrom = \"exporter/traces\"\ncount = 1\n",
    )
    .unwrap();
    let config = repo_file("configs/tail-sampling.toml");
    let output = sluice(
        &["test", "--config"],
        &[&config, Path::new("--tests"), &tests],
    );
    let text = text(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(
        text.contains(&format!(
            "{}:6: from exporter/traces: expected 1 item, got none",
            tests.display()
        )),
        "{text}"
    );
}

#[test]
fn a_broken_test_table_is_reported_with_file_line_and_key_by_test_and_validate() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pipes.toml");
    let config = std::fs::read_to_string(repo_file("configs/quickstart.toml")).unwrap();
    let lines = config.lines().count();
    std::fs::write(
        &file,
        format!(
            "{config}\n[[tests]]\nname = \"typo\"\n[[tests.input]]\nat = \"otlp\"\nspans = [{{ name = \"a\" }}]\n[[tests.expect]]\nfrom = \"debug\"\natributes = {{ a = 1 }}\n"
        ),
    )
    .unwrap();
    let expected = format!(
        "{}:{}: tests[2].expect[0].atributes: unknown field `atributes`",
        file.display(),
        lines + 9
    );
    for command in ["test", "validate"] {
        let output = sluice(&[command, "--config"], &[&file]);
        let text = text(&output);
        assert_eq!(output.status.code(), Some(2), "{command}: {text}");
        assert!(text.contains(&expected), "{command}: {text}");
    }

    // A component that does not exist is found by `sluice test`, in the --tests file.
    let tests = dir.path().join("more.toml");
    std::fs::write(
        &tests,
        "[[tests]]\nname = \"nowhere\"\n[[tests.input]]\nat = \"otlp\"\nspans = [{ name = \"a\" }]\n[[tests.expect]]\nfrom = \"tempo\"\ncount = 1\n",
    )
    .unwrap();
    let output = sluice(
        &["test", "--config"],
        &[
            &repo_file("configs/quickstart.toml"),
            Path::new("--tests"),
            &tests,
        ],
    );
    let text = text(&output);
    assert_eq!(output.status.code(), Some(2), "{text}");
    assert!(
        text.contains(&format!(
            "{}:7: tests[0].expect[0].from: no receiver or processor or exporter is named \"tempo\"",
            tests.display()
        )),
        "{text}"
    );
}
