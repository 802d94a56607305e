use std::sync::Mutex;

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::metrics::v1::{
    Gauge, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, metric::Data,
};
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use sluice_pipeline::Telemetry;
use sluice_pipeline::config::ComponentKind;

use super::*;
use any_value::Value;

fn settings(toml: &str) -> ComponentSettings {
    ComponentSettings::new(
        ComponentKind::Processor,
        "resource",
        "resource",
        toml::from_str(toml).expect("test TOML is valid"),
    )
}

fn config(toml: &str) -> ResourceConfig {
    ResourceConfig::from_settings(&settings(toml)).unwrap()
}

type Env = Vec<(&'static str, &'static str)>;

fn plan_with_env(toml: &str, vars: Env) -> Plan {
    Plan::new(&config(toml), &move |name| {
        Ok(vars
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_string()))
    })
    .unwrap()
}

fn plan(toml: &str) -> Plan {
    plan_with_env(toml, Vec::new())
}

fn s(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue {
            value: Some(Value::StringValue(value.to_string())),
        }),
        ..Default::default()
    }
}

fn resource(attributes: Vec<KeyValue>) -> Resource {
    Resource {
        attributes,
        ..Default::default()
    }
}

/// The attributes rendered `key=value`, in order.
fn rendered(resource: &Resource) -> Vec<String> {
    resource
        .attributes
        .iter()
        .map(|kv| {
            let value = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(Value::StringValue(s)) => s.clone(),
                Some(Value::IntValue(i)) => i.to_string(),
                Some(Value::DoubleValue(d)) => format!("{d:?}"),
                Some(Value::BoolValue(b)) => b.to_string(),
                other => format!("{other:?}"),
            };
            format!("{}={value}", kv.key)
        })
        .collect()
}

#[test]
fn readme_example_parses() {
    let readme = include_str!("../../README.md");
    let section = readme
        .split("\n## `resource`")
        .nth(1)
        .expect("the README has a resource section");
    let example = section
        .split("```toml\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("the resource section has a TOML example");
    let file: toml::Table = toml::from_str(example).unwrap();
    let table = file["processors"]["resource"].as_table().unwrap().clone();
    let config = ResourceConfig::from_settings(&ComponentSettings {
        table,
        ..settings("")
    })
    .unwrap();
    assert_eq!(config.detectors.len(), 4);
    assert_eq!(config.deployment_environment.as_deref(), Some("prod"));
    assert!(!config.attributes.is_empty());
}

#[test]
fn defaults_change_nothing() {
    let config = config("");
    assert_eq!(
        config,
        ResourceConfig {
            detectors: vec![],
            deployment_environment: None,
            attributes: vec![],
        }
    );
    let mut r = resource(vec![s("service.name", "a")]);
    assert!(!plan("").apply(&mut r));
    assert_eq!(rendered(&r), ["service.name=a"]);
}

#[test]
fn actions_insert_update_upsert_delete_like_the_collector() {
    let plan = plan(
        r#"
attributes = [
  { key = "cloud.region", value = "eu-west-1", action = "insert" },
  { key = "team", value = "ignored", action = "insert" },
  { key = "tier", value = "gold", action = "update" },
  { key = "absent", value = "x", action = "update" },
  { key = "version", value = 3, action = "upsert" },
  { key = "sampled", value = true, action = "upsert" },
  { key = "ratio", value = 0.5, action = "upsert" },
  { key = "owner", from_attribute = "team", action = "upsert" },
  { key = "copy", from_attribute = "nowhere", action = "upsert" },
  { key = "secret", action = "delete" },
]
"#,
    );
    let mut r = resource(vec![
        s("team", "payments"),
        s("tier", "silver"),
        s("version", "2"),
        s("secret", "a"),
        s("secret", "b"),
    ]);
    assert!(plan.apply(&mut r));
    assert_eq!(
        rendered(&r),
        [
            "team=payments",
            "tier=gold",
            "version=3",
            "cloud.region=eu-west-1",
            "sampled=true",
            "ratio=0.5",
            "owner=payments",
        ]
    );
}

#[test]
fn detectors_insert_and_never_override_the_data() {
    let plan = plan_with_env(
        r#"
detectors = ["env", "host", "process", "service_instance"]
deployment_environment = "prod"
"#,
        vec![
            (
                "OTEL_RESOURCE_ATTRIBUTES",
                "team=pay%20ments,service.name=from-env,host.name=env-host",
            ),
            ("OTEL_SERVICE_NAME", "sluice-gw"),
        ],
    );
    // Data that already describes itself keeps its own values.
    let mut own = resource(vec![
        s("service.name", "checkout"),
        s("host.name", "app-1"),
        s("deployment.environment.name", "staging"),
        s("service.instance.id", "abc"),
    ]);
    let before = own.attributes.clone();
    plan.apply(&mut own);
    assert_eq!(own.attributes[..4], before[..]);
    assert_eq!(
        rendered(&own)[4..],
        [
            "team=pay ments".to_string(),
            format!("process.pid={}", std::process::id())
        ]
    );

    // Data without them gets what was detected: config first, then detectors in order.
    let mut bare = resource(vec![]);
    assert!(plan.apply(&mut bare));
    let instance = detectors::service_instance_id().unwrap();
    assert_eq!(
        rendered(&bare),
        [
            "deployment.environment.name=prod".to_string(),
            "service.name=sluice-gw".to_string(),
            "team=pay ments".to_string(),
            // env listed first: its host.name wins over the host detector's.
            "host.name=env-host".to_string(),
            format!("process.pid={}", std::process::id()),
            format!("service.instance.id={instance}"),
        ]
    );
}

#[test]
fn explicit_actions_apply_after_detectors() {
    let plan = plan(
        r#"
detectors = ["process"]
attributes = [{ key = "process.pid", action = "delete" }, { key = "host.name", value = "edge", action = "upsert" }]
"#,
    );
    let mut r = resource(vec![]);
    plan.apply(&mut r);
    assert_eq!(rendered(&r), ["host.name=edge"]);
}

#[test]
fn config_errors_name_the_action() {
    let error = ResourceConfig::from_settings(&settings(
        r#"attributes = [{ key = "a", action = "insert" }]"#,
    ))
    .unwrap_err();
    assert_eq!(error.path.to_string(), "processors.resource.attributes[0]");
    assert!(error.message.contains("exactly one"), "{}", error.message);

    let error = ResourceConfig::from_settings(&settings(
        r#"attributes = [{ key = "a", action = "delete", value = "x" }]"#,
    ))
    .unwrap_err();
    assert_eq!(error.path.to_string(), "processors.resource.attributes[0]");

    let error = ResourceConfig::from_settings(&settings(
        r#"attributes = [{ key = "a", action = "hash", value = "x" }]"#,
    ))
    .unwrap_err();
    assert_eq!(
        error.path.to_string(),
        "processors.resource.attributes[0].action"
    );

    let error = ResourceConfig::from_settings(&settings(
        r#"attributes = [{ key = "a", action = "insert", value = [1] }]"#,
    ))
    .unwrap_err();
    assert!(
        error.message.contains("string, integer"),
        "{}",
        error.message
    );

    let error = ResourceConfig::from_settings(&settings(r#"detectors = ["gcp"]"#)).unwrap_err();
    assert_eq!(error.path.to_string(), "processors.resource.detectors[0]");
}

#[test]
fn malformed_otel_resource_attributes_is_a_config_error() {
    let error = Plan::new(&config(r#"detectors = ["env"]"#), &|name| {
        Ok((name == "OTEL_RESOURCE_ATTRIBUTES").then(|| "a=1,broken".to_string()))
    })
    .unwrap_err();
    assert!(
        error.to_string().contains("OTEL_RESOURCE_ATTRIBUTES"),
        "{error}"
    );
}

fn all_signals() -> [Request; 3] {
    let spans = ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: None,
            scope_spans: vec![ScopeSpans {
                spans: vec![Span::default(); 3],
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    let metrics = ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(resource(vec![s("k", "v")])),
            scope_metrics: vec![ScopeMetrics {
                metrics: vec![Metric {
                    data: Some(Data::Gauge(Gauge {
                        data_points: vec![NumberDataPoint::default(); 2],
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    let logs = ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            scope_logs: vec![ScopeLogs {
                log_records: vec![LogRecord::default()],
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    [
        Request::Traces(spans),
        Request::Metrics(metrics),
        Request::Logs(logs),
    ]
}

fn resources(request: &Request) -> Vec<&Resource> {
    match request {
        Request::Traces(r) => r
            .resource_spans
            .iter()
            .filter_map(|r| r.resource.as_ref())
            .collect(),
        Request::Metrics(r) => r
            .resource_metrics
            .iter()
            .filter_map(|r| r.resource.as_ref())
            .collect(),
        Request::Logs(r) => r
            .resource_logs
            .iter()
            .filter_map(|r| r.resource.as_ref())
            .collect(),
    }
}

#[test]
fn works_on_every_signal_and_counts_changed_items() {
    let plan = plan(r#"deployment_environment = "prod""#);
    let mut changed = Vec::new();
    for mut request in all_signals() {
        changed.push(plan.apply_request(&mut request));
        let resources = resources(&request);
        assert_eq!(resources.len(), 1, "a resource is created when missing");
        assert!(rendered(resources[0]).contains(&"deployment.environment.name=prod".to_string()));
    }
    assert_eq!(changed, [3, 2, 1]);
    // Applying again changes nothing.
    let [mut traces, ..] = all_signals();
    plan.apply_request(&mut traces);
    assert_eq!(plan.apply_request(&mut traces), 0);
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

#[tokio::test]
async fn processor_changes_batches_and_counts_them() {
    let next = Arc::new(Keep::default());
    let telemetry = Telemetry::new();
    let processor = ResourceProcessorFactory
        .build(&settings(r#"deployment_environment = "prod""#))
        .unwrap()
        .start(ProcessorContext {
            id: "resource".to_string(),
            pipeline: "logs".to_string(),
            signal: Signal::Logs,
            next: next.clone(),
            telemetry: telemetry.clone(),
        })
        .await
        .unwrap();
    let [_, _, logs] = all_signals();
    processor.consume(Batch::from_request(logs)).await.unwrap();
    let request = next
        .0
        .lock()
        .unwrap()
        .pop()
        .unwrap()
        .into_request()
        .unwrap();
    assert_eq!(
        rendered(resources(&request)[0]),
        ["deployment.environment.name=prod"]
    );
    assert!(
        telemetry.render().contains(
            "sluice_resource_changed_items_total{processor=\"resource\",signal=\"logs\"} 1"
        )
    );
}
