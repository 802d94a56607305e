//! End to end: the admin API's command-line clients against a running Sluice. `sluice status`
//! shows each pipeline with its exporters in every state (and `--json` is the API's JSON),
//! `sluice tap` prints exactly `--limit` items and `--where` filters them, `sluice reload`
//! prints what changed or why not, and an unreachable address or a missing token is explained.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, ExitStatus, Stdio};

use common::backends::Backend;
use common::{PATIENCE, Sluice, free_port, http_get, sluice_binary};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use serde_json::Value;

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// What a finished `sluice` command printed.
struct Finished {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

/// Runs `sluice ARGS` to the end (killing it after [`PATIENCE`]), with `env` set and
/// `SLUICE_ADMIN_TOKEN` unset unless `env` sets it.
async fn sluice_cli(args: &[&str], env: &[(&str, &str)]) -> Finished {
    let child = Command::new(sluice_binary())
        .args(args)
        .env_remove("SLUICE_ADMIN_TOKEN")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the sluice binary was built by cargo for this test");
    finish(child, args).await
}

async fn finish(child: std::process::Child, args: &[&str]) -> Finished {
    let pid = child.id();
    let output = tokio::task::spawn_blocking(move || child.wait_with_output());
    match tokio::time::timeout(PATIENCE, output).await {
        Ok(output) => {
            let output = output.unwrap().unwrap();
            Finished {
                status: output.status,
                stdout: String::from_utf8(output.stdout).unwrap(),
                stderr: String::from_utf8(output.stderr).unwrap(),
            }
        }
        Err(_) => {
            let _ = Command::new("kill").arg(pid.to_string()).status();
            panic!("sluice {args:?} did not finish");
        }
    }
}

fn string_attribute(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.to_string())),
        }),
        ..Default::default()
    }
}

/// `count` spans named `prefix i`, alternately of team blue and team red.
fn spans(prefix: &str, count: usize) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            scope_spans: vec![ScopeSpans {
                spans: (0..count)
                    .map(|i| Span {
                        trace_id: [7; 16].to_vec(),
                        span_id: [i as u8 + 1; 8].to_vec(),
                        name: format!("{prefix} {i}"),
                        attributes: vec![string_attribute(
                            "team",
                            if i % 2 == 0 { "blue" } else { "red" },
                        )],
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

async fn send(grpc: SocketAddr, request: ExportTraceServiceRequest) {
    TraceServiceClient::connect(format!("http://{grpc}"))
        .await
        .unwrap()
        .export(request)
        .await
        .unwrap();
}

/// A running sluice: OTLP/gRPC in, a batch processor, `main` to a test backend, and with
/// `all_states` also `down` (nothing listens there) and `spare` (disabled).
struct Running {
    sluice: Sluice,
    backend: Backend,
    admin: SocketAddr,
    grpc: SocketAddr,
}

fn config(admin: SocketAddr, grpc: SocketAddr, backend: &Backend, extra: &str) -> String {
    let closed = local(free_port());
    format!(
        r#"
[service]
admin = "{admin}"
{extra}

[receivers.otlp]
grpc = "{grpc}"

[processors.batch]
timeout = "20ms"

[exporters.main]
type = "otlp_grpc"
endpoint = "{url}"

[exporters.down]
type = "otlp_grpc"
endpoint = "http://{closed}"

[exporters.spare]
type = "otlp_grpc"
endpoint = "{url}"
enabled = false

[pipelines.traces]
receivers = ["otlp"]
processors = ["batch"]
exporters = ["main", "down", "spare"]
"#,
        url = backend.url(),
    )
}

async fn start(extra_service: &str) -> Running {
    let backend = Backend::grpc().await;
    let (admin, grpc) = (local(free_port()), local(free_port()));
    let sluice = Sluice::start(
        &config(admin, grpc, &backend, extra_service),
        admin,
        &[grpc],
    );
    Running {
        sluice,
        backend,
        admin,
        grpc,
    }
}

fn exporter_state(admin: SocketAddr, id: &str) -> String {
    let status: Value = serde_json::from_str(&http_get(admin, "/status")).unwrap();
    status["exporters"][id]["state"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_the_pipeline_with_an_exporter_in_each_state() {
    let running = start("").await;
    let admin = running.admin.to_string();

    // Before any data every exporter is Disconnected.
    let before = sluice_cli(&["status", "--admin", &admin], &[]).await;
    assert!(before.status.success(), "{}", before.stderr);
    assert!(
        before.stdout.contains("pipeline traces (traces)"),
        "{}",
        before.stdout
    );
    let row = |text: &str, component: &str| -> Vec<String> {
        text.lines()
            .find(|line| line.trim_start().starts_with(component))
            .unwrap_or_else(|| panic!("no row for {component}:\n{text}"))
            .split("  ")
            .map(str::trim)
            .filter(|cell| !cell.is_empty())
            .map(str::to_string)
            .collect()
    };
    assert_eq!(row(&before.stdout, "exporter/main")[1], "Disconnected");

    send(running.grpc, spans("status", 4)).await;
    running
        .backend
        .recorder
        .wait_until("the spans at main", |r| r.span_count() == 4)
        .await;
    common::wait_for("main Connected and down in Error", || {
        exporter_state(running.admin, "main") == "Connected"
            && exporter_state(running.admin, "down") == "Error"
    });

    let after = sluice_cli(&["status", "--admin", &admin], &[]).await;
    assert!(after.status.success(), "{}", after.stderr);
    let text = &after.stdout;
    assert!(text.starts_with("sluice "), "{text}");
    assert!(text.contains(", ready\n"), "{text}");
    assert!(text.contains("sluice.toml (sha256 "), "{text}");
    assert_eq!(
        row(text, "receiver/otlp"),
        ["receiver/otlp", "-", "-", "4", "0", "-", "-", "-"]
    );
    assert_eq!(row(text, "processor/batch")[0], "processor/batch");
    let main = row(text, "exporter/main");
    assert_eq!(&main[..2], ["exporter/main", "Connected"], "{text}");
    assert_eq!(main[5], "4", "4 sent: {text}");
    let down = row(text, "exporter/down");
    assert_eq!(down[1], "Error", "{text}");
    assert!(
        down[2].ends_with("/100000 (0%)"),
        "queue fill of the failing exporter: {text}"
    );
    assert_eq!(
        row(text, "exporter/spare")[1],
        "Disconnected (disabled)",
        "{text}"
    );
    let note = text
        .lines()
        .skip_while(|line| !line.trim_start().starts_with("exporter/down"))
        .nth(1)
        .unwrap_or_default();
    assert!(
        note.trim_start().starts_with("last error at ") && note.contains("failure(s) in a row"),
        "the failing exporter's last error under its row: {text}"
    );

    let json = sluice_cli(&["status", "--admin", &admin, "--json"], &[]).await;
    assert!(json.status.success(), "{}", json.stderr);
    let status: Value = serde_json::from_str(&json.stdout).expect("--json prints JSON");
    assert_eq!(status["exporters"]["main"]["state"], "Connected");
    assert_eq!(status["exporters"]["main"]["sent"], 4);
    assert_eq!(
        status["config"]["pipelines"]["traces"]["processors"][0],
        "batch"
    );
}

/// Starts `sluice tap ARGS`, waits until it says it is tapping, sends `request`, and returns
/// what it printed once it ended.
async fn tap_while_sending(
    running: &Running,
    args: &[&str],
    request: ExportTraceServiceRequest,
) -> Finished {
    let mut child = Command::new(sluice_binary())
        .arg("tap")
        .args(args)
        .args(["--admin", &running.admin.to_string()])
        .env_remove("SLUICE_ADMIN_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    // The "tapping" line comes once the server answered, and the server watches the component
    // before it answers: spans sent from then on are seen.
    let first_line = tokio::task::spawn_blocking(move || {
        let mut reader = BufReader::new(stderr);
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        (line, reader)
    });
    let (line, mut reader) = tokio::time::timeout(PATIENCE, first_line)
        .await
        .expect("sluice tap says it is tapping")
        .unwrap();
    assert!(line.starts_with("tapping "), "{line}");
    send(running.grpc, request).await;
    let mut finished = finish(child, args).await;
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut reader, &mut rest).unwrap();
    finished.stderr = line + &rest;
    finished
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tap_prints_exactly_limit_items_as_ndjson_and_where_filters_them() {
    let running = start("").await;

    let tapped = tap_while_sending(
        &running,
        &["batch", "--limit", "2", "--format", "json"],
        spans("tapped", 6),
    )
    .await;
    assert!(tapped.status.success(), "{}", tapped.stderr);
    let lines: Vec<Value> = tapped
        .stdout
        .lines()
        .map(|line| serde_json::from_str(line).expect("each line is JSON"))
        .collect();
    assert_eq!(lines.len(), 2, "{}", tapped.stdout);
    for line in &lines {
        assert_eq!(line["component"], "processor/batch");
        assert!(line["span"]["name"].as_str().unwrap().starts_with("tapped"));
    }

    let red = tap_while_sending(
        &running,
        &["batch", "--limit", "3", "--where", "team=red"],
        spans("filtered", 6),
    )
    .await;
    assert!(red.status.success(), "{}", red.stderr);
    let names: Vec<String> = red
        .stdout
        .lines()
        .map(|line| {
            let line: Value = serde_json::from_str(line).unwrap();
            assert!(line.to_string().contains("\"red\""), "{line}");
            line["span"]["name"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(
        names,
        ["filtered 1", "filtered 3", "filtered 5"],
        "the red spans only, in order"
    );

    let text = tap_while_sending(
        &running,
        &["processor/batch", "--limit", "1", "--format", "text"],
        spans("text", 1),
    )
    .await;
    assert!(text.status.success(), "{}", text.stderr);
    assert!(
        text.stdout
            .starts_with("processor/batch span \"text 0\" trace=07070707"),
        "{}",
        text.stdout
    );
    assert_eq!(text.stdout.lines().count(), 1);

    let unknown = sluice_cli(&["tap", "nope", "--admin", &running.admin.to_string()], &[]).await;
    assert_eq!(unknown.status.code(), Some(1));
    assert!(
        unknown.stderr.contains("no component \"nope\"")
            && unknown.stderr.contains("processor/batch")
            && unknown.stderr.contains("exporter/main"),
        "the server's list of components: {}",
        unknown.stderr
    );
}

/// Starts `sluice tap batch` without a limit and waits until it is tapping.
async fn tapping(running: &Running) -> (std::process::Child, BufReader<std::process::ChildStderr>) {
    let mut child = Command::new(sluice_binary())
        .args(["tap", "batch", "--admin", &running.admin.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (line, reader) = tokio::time::timeout(
        PATIENCE,
        tokio::task::spawn_blocking(move || {
            let mut reader = BufReader::new(stderr);
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            (line, reader)
        }),
    )
    .await
    .expect("sluice tap says it is tapping")
    .unwrap();
    assert!(line.starts_with("tapping "), "{line}");
    (child, reader)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tap_ends_with_success_on_ctrl_c_and_with_failure_when_sluice_goes_away() {
    let mut running = start("").await;

    let (child, _) = tapping(&running).await;
    let interrupted = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(interrupted.success());
    let finished = finish(child, &["tap"]).await;
    assert_eq!(
        finished.status.code(),
        Some(0),
        "Ctrl-C ends a tap normally"
    );

    let (child, mut stderr) = tapping(&running).await;
    running.sluice.kill();
    let finished = finish(child, &["tap"]).await;
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    assert_eq!(finished.status.code(), Some(1));
    assert!(
        rest.starts_with(&format!(
            "lost the connection to the admin API at {}",
            running.admin
        )),
        "{rest}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_prints_what_changed_or_why_nothing_did() {
    let running = start("").await;
    let file = running.sluice.config_path();
    let original = std::fs::read_to_string(&file).unwrap();
    let path = file.to_str().unwrap();

    // --config finds the admin address in the file.
    std::fs::write(
        &file,
        original.replace("timeout = \"20ms\"", "timeout = \"30ms\""),
    )
    .unwrap();
    let reloaded = sluice_cli(&["reload", "--config", path], &[]).await;
    assert!(reloaded.status.success(), "{}", reloaded.stderr);
    assert!(
        reloaded.stdout.starts_with("reloaded: ")
            && reloaded
                .stdout
                .contains("started [processor batch in traces]"),
        "{}",
        reloaded.stdout
    );

    std::fs::write(
        &file,
        original.replace("[processors.batch]", "[processors.nope]"),
    )
    .unwrap();
    let admin = running.admin.to_string();
    let refused = sluice_cli(&["reload", "--admin", &admin], &[]).await;
    assert_eq!(refused.status.code(), Some(1), "{}", refused.stdout);
    assert!(
        refused
            .stderr
            .starts_with("the new configuration is invalid; nothing changed"),
        "{}",
        refused.stderr
    );
    let status = sluice_cli(&["status", "--admin", &admin], &[]).await;
    assert!(
        status.stdout.contains("last reload refused at "),
        "{}",
        status.stdout
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_address_that_does_not_answer_is_named_with_what_to_check() {
    let nobody = local(free_port()).to_string();
    for command in [vec!["status"], vec!["tap", "batch"], vec!["reload"]] {
        let mut args = command.clone();
        args.extend(["--admin", &nobody]);
        let failed = sluice_cli(&args, &[]).await;
        assert_eq!(failed.status.code(), Some(1), "{command:?}");
        assert_eq!(
            failed.stderr,
            format!(
                "cannot reach the admin API at {nobody}: connection refused — is sluice \
                 running, and is service.admin set to this address?\n"
            ),
            "{command:?}"
        );
        assert!(failed.stdout.is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_protected_admin_api_needs_the_token_and_says_so() {
    let running = start("admin_token = \"let-me-in\"").await;
    let admin = running.admin.to_string();

    let missing = sluice_cli(&["status", "--admin", &admin], &[]).await;
    assert_eq!(missing.status.code(), Some(1));
    assert!(
        missing.stderr.contains("needs a token (401)")
            && missing.stderr.contains("--token")
            && missing.stderr.contains("SLUICE_ADMIN_TOKEN"),
        "{}",
        missing.stderr
    );
    let wrong = sluice_cli(&["reload", "--admin", &admin, "--token", "guess"], &[]).await;
    assert_eq!(wrong.status.code(), Some(1));
    assert!(
        wrong.stderr.contains("refused the token (401)") && wrong.stderr.contains("--token"),
        "{}",
        wrong.stderr
    );

    let with_flag = sluice_cli(&["status", "--admin", &admin, "--token", "let-me-in"], &[]).await;
    assert!(with_flag.status.success(), "{}", with_flag.stderr);
    assert!(with_flag.stdout.contains("exporter/main"));
    let with_env = sluice_cli(
        &["reload", "--admin", &admin],
        &[("SLUICE_ADMIN_TOKEN", "let-me-in")],
    )
    .await;
    assert!(with_env.status.success(), "{}", with_env.stderr);
    assert!(with_env.stdout.starts_with("reloaded: "));
    // With --config, the file's own service.admin_token.
    let path = running.sluice.config_path();
    let from_config = sluice_cli(&["status", "--config", path.to_str().unwrap()], &[]).await;
    assert!(from_config.status.success(), "{}", from_config.stderr);
}
