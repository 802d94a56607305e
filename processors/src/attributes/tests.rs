use std::sync::Mutex;

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::metrics::v1::{
    Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use sluice_pipeline::Telemetry;
use sluice_pipeline::config::ComponentKind;

use super::*;

fn settings(toml: &str) -> ComponentSettings {
    ComponentSettings::new(
        ComponentKind::Processor,
        "attributes",
        "attributes",
        toml::from_str(toml).expect("test TOML is valid"),
    )
}

fn compiled(toml: &str) -> Attributes {
    AttributesConfig::from_settings(&settings(toml)).unwrap_or_else(|e| panic!("{e}"))
}

fn config_error(toml: &str) -> ConfigError {
    match AttributesConfig::from_settings(&settings(toml)) {
        Ok(_) => panic!("expected an error for {toml}"),
        Err(error) => error,
    }
}

fn kv(key: &str, value: Value) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue { value: Some(value) }),
        ..KeyValue::default()
    }
}

fn s(key: &str, value: &str) -> KeyValue {
    kv(key, Value::StringValue(value.into()))
}

fn keys(attributes: &[KeyValue]) -> Vec<&str> {
    attributes.iter().map(|a| a.key.as_str()).collect()
}

fn span(name: &str, attributes: Vec<KeyValue>) -> Span {
    Span {
        name: name.into(),
        attributes,
        ..Span::default()
    }
}

fn traces(service: &str, spans: Vec<Span>) -> Request {
    Request::Traces(ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![
                    s("service.name", service),
                    s("deployment.environment.name", "prod"),
                ],
                ..Resource::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans,
                ..ScopeSpans::default()
            }],
            ..ResourceSpans::default()
        }],
    })
}

fn out_spans(request: Request) -> Vec<Span> {
    let Request::Traces(request) = request else {
        unreachable!()
    };
    request.resource_spans[0].scope_spans[0].spans.clone()
}

/// Applies `toml`'s actions to one span of service `chat` with `attributes`.
fn apply(toml: &str, attributes: Vec<KeyValue>) -> Vec<KeyValue> {
    let mut request = traces("chat", vec![span("chat gpt-4o", attributes)]);
    compiled(toml).apply(&mut request);
    out_spans(request).remove(0).attributes
}

const SHA256_OF_ALICE: &str = "2bd806c97f0e00af1a1fc3328fa763a9269723c8db8fac4f93af71db186d6e90";

// ---- Configuration --------------------------------------------------------------------------

#[test]
fn readme_example_parses() {
    let readme = include_str!("../../README.md");
    let section = readme
        .split("## `attributes`")
        .nth(1)
        .expect("the README has an attributes section");
    let example = section
        .split("```toml\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("the attributes section has a TOML example");
    let file: toml::Table = toml::from_str(example).unwrap();
    let table = file["processors"]["attributes"].as_table().unwrap().clone();
    AttributesConfig::from_settings(&ComponentSettings {
        table,
        ..settings("")
    })
    .unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn config_errors_name_the_action_and_key() {
    for (toml, path, message) in [
        (
            "actions = []",
            "processors.attributes.actions",
            "at least one",
        ),
        (
            "[[actions]]\nkey = \"a\"\naction = \"insert\"",
            "processors.attributes.actions[0]",
            "needs one of `value`",
        ),
        (
            "[[actions]]\nkey = \"a\"\naction = \"upsert\"\nvalue = 1\nfrom_attribute = \"b\"",
            "processors.attributes.actions[0].from_attribute",
            "only one of",
        ),
        (
            "[[actions]]\nkey = \"a\"\naction = \"delete\"\nvalue = 1",
            "processors.attributes.actions[0].value",
            "not used",
        ),
        (
            "[[actions]]\naction = \"hash\"",
            "processors.attributes.actions[0]",
            "`key` or `pattern`",
        ),
        (
            "[[actions]]\nkey = \"a\"\naction = \"delete\"\n[[actions]]\naction = \"delete\"\npattern = \"(\"",
            "processors.attributes.actions[1].pattern",
            "invalid regular expression",
        ),
        (
            "[[actions]]\nkey = \"a\"\naction = \"extract\"\npattern = \"[0-9]+\"",
            "processors.attributes.actions[0].pattern",
            "no named group",
        ),
        (
            "[[actions]]\nkey = \"a\"\naction = \"convert\"",
            "processors.attributes.actions[0].converted_type",
            "needs `converted_type`",
        ),
        (
            "[[actions]]\nkey = \"a\"\naction = \"rename\"",
            "processors.attributes.actions[0].new_key",
            "needs `new_key`",
        ),
        (
            "[[actions]]\nkey = \"a\"\naction = \"copy\"",
            "processors.attributes.actions[0].action",
            "unknown variant `copy`",
        ),
        (
            "[[actions]]\nkey = \"a\"\naction = \"delete\"\n[include]\nmatch_type = \"regexp\"\nspan_names = [\"ok\", \"*bad\"]",
            "processors.attributes.include.span_names[1]",
            "invalid regular expression",
        ),
        (
            "[[actions]]\nkey = \"a\"\naction = \"delete\"\n[exclude]\nmatch_type = \"strict\"",
            "processors.attributes.exclude",
            "at least one of",
        ),
    ] {
        let error = config_error(toml);
        assert_eq!(error.path.to_string(), path, "{toml}");
        assert!(error.message.contains(message), "{toml}: {}", error.message);
    }
}

// ---- Actions --------------------------------------------------------------------------------

#[test]
fn insert_adds_only_absent_attributes() {
    let out = apply(
        "[[actions]]\nkey = \"env\"\naction = \"insert\"\nvalue = \"prod\"\n\
         [[actions]]\nkey = \"team\"\naction = \"insert\"\nvalue = \"ml\"",
        vec![s("team", "infra")],
    );
    assert_eq!(get(&out, "env"), Some(&Value::StringValue("prod".into())));
    assert_eq!(get(&out, "team"), Some(&Value::StringValue("infra".into())));
}

#[test]
fn update_changes_only_present_attributes() {
    let out = apply(
        "[[actions]]\nkey = \"team\"\naction = \"update\"\nvalue = 7\n\
         [[actions]]\nkey = \"env\"\naction = \"update\"\nvalue = true",
        vec![s("team", "infra")],
    );
    assert_eq!(get(&out, "team"), Some(&Value::IntValue(7)));
    assert_eq!(get(&out, "env"), None);
}

#[test]
fn upsert_adds_or_changes_with_every_literal_type() {
    let out = apply(
        "[[actions]]\nkey = \"a\"\naction = \"upsert\"\nvalue = 1.5\n\
         [[actions]]\nkey = \"b\"\naction = \"upsert\"\nvalue = false",
        vec![s("a", "old")],
    );
    assert_eq!(get(&out, "a"), Some(&Value::DoubleValue(1.5)));
    assert_eq!(get(&out, "b"), Some(&Value::BoolValue(false)));
}

#[test]
fn values_come_from_other_attributes_and_the_resource() {
    let out = apply(
        "[[actions]]\nkey = \"model\"\naction = \"upsert\"\nfrom_attribute = \"gen_ai.request.model\"\n\
         [[actions]]\nkey = \"service\"\naction = \"insert\"\nfrom_resource_attribute = \"service.name\"\n\
         [[actions]]\nkey = \"missing\"\naction = \"insert\"\nfrom_attribute = \"nowhere\"",
        vec![s("gen_ai.request.model", "gpt-4o")],
    );
    assert_eq!(
        get(&out, "model"),
        Some(&Value::StringValue("gpt-4o".into()))
    );
    assert_eq!(
        get(&out, "service"),
        Some(&Value::StringValue("chat".into()))
    );
    assert_eq!(get(&out, "missing"), None);
}

#[test]
fn delete_removes_by_key_or_pattern() {
    let out = apply(
        "[[actions]]\nkey = \"a\"\naction = \"delete\"\n\
         [[actions]]\npattern = \"^http\\\\.request\\\\.header\\\\.\"\naction = \"delete\"",
        vec![
            s("a", "1"),
            s("b", "2"),
            s("http.request.header.cookie", "c"),
            s("http.request.header.authorization", "Bearer x"),
            s("http.request.method", "GET"),
        ],
    );
    assert_eq!(keys(&out), ["b", "http.request.method"]);
}

#[test]
fn hash_is_the_collectors_sha256_hex() {
    let out = apply(
        "[[actions]]\nkey = \"user.email\"\naction = \"hash\"\n\
         [[actions]]\npattern = \"^num\\\\.\"\naction = \"hash\"",
        vec![
            s("user.email", "alice"),
            kv("num.int", Value::IntValue(1)),
            kv("num.bool", Value::BoolValue(true)),
        ],
    );
    // `printf alice | sha256sum`
    assert_eq!(
        get(&out, "user.email"),
        Some(&Value::StringValue(SHA256_OF_ALICE.into()))
    );
    // The 8 little-endian bytes of 1, and the byte 1: `printf '\x01\0\0\0\0\0\0\0' | sha256sum`.
    assert_eq!(
        get(&out, "num.int"),
        Some(&Value::StringValue(
            "7c9fa136d4413fa6173637e883b6998d32e1d675f88cddff9dcbcf331820f4b8".into()
        ))
    );
    assert_eq!(
        get(&out, "num.bool"),
        Some(&Value::StringValue(
            "4bf5122f344554c53bde2ebb8cd2b7e3d1600ad631c385a5d7cce23c7785459a".into()
        ))
    );
}

#[test]
fn extract_adds_the_named_groups() {
    let out = apply(
        "[[actions]]\nkey = \"url.path\"\naction = \"extract\"\n\
         pattern = \"^/v1/(?P<api.kind>[a-z]+)/(?P<api.object>[a-z]+)$\"",
        vec![s("url.path", "/v1/chat/completions"), s("api.kind", "old")],
    );
    assert_eq!(
        get(&out, "api.kind"),
        Some(&Value::StringValue("chat".into()))
    );
    assert_eq!(
        get(&out, "api.object"),
        Some(&Value::StringValue("completions".into()))
    );
    assert_eq!(
        get(&out, "url.path"),
        Some(&Value::StringValue("/v1/chat/completions".into()))
    );

    let unmatched = apply(
        "[[actions]]\nkey = \"url.path\"\naction = \"extract\"\npattern = \"^/v2/(?P<v>.*)\"",
        vec![s("url.path", "/v1/chat")],
    );
    assert_eq!(keys(&unmatched), ["url.path"]);
}

#[test]
fn convert_changes_types_and_leaves_unconvertible_values() {
    let action = |key: &str, to: &str| {
        format!("[[actions]]\nkey = \"{key}\"\naction = \"convert\"\nconverted_type = \"{to}\"\n")
    };
    let toml = [
        action("s_int", "int"),
        action("d_int", "int"),
        action("bad_int", "int"),
        action("s_double", "double"),
        action("i_double", "double"),
        action("i_string", "string"),
        action("d_string", "string"),
        action("s_bool", "bool"),
        action("i_bool", "bool"),
        action("bad_bool", "bool"),
    ]
    .concat();
    let out = apply(
        &toml,
        vec![
            s("s_int", "42"),
            kv("d_int", Value::DoubleValue(3.9)),
            s("bad_int", "forty"),
            s("s_double", "0.25"),
            kv("i_double", Value::IntValue(2)),
            kv("i_string", Value::IntValue(-7)),
            kv("d_string", Value::DoubleValue(1.5)),
            s("s_bool", "True"),
            kv("i_bool", Value::IntValue(0)),
            s("bad_bool", "yes"),
        ],
    );
    assert_eq!(get(&out, "s_int"), Some(&Value::IntValue(42)));
    assert_eq!(get(&out, "d_int"), Some(&Value::IntValue(3)));
    assert_eq!(
        get(&out, "bad_int"),
        Some(&Value::StringValue("forty".into()))
    );
    assert_eq!(get(&out, "s_double"), Some(&Value::DoubleValue(0.25)));
    assert_eq!(get(&out, "i_double"), Some(&Value::DoubleValue(2.0)));
    assert_eq!(
        get(&out, "i_string"),
        Some(&Value::StringValue("-7".into()))
    );
    assert_eq!(
        get(&out, "d_string"),
        Some(&Value::StringValue("1.5".into()))
    );
    assert_eq!(get(&out, "s_bool"), Some(&Value::BoolValue(true)));
    assert_eq!(get(&out, "i_bool"), Some(&Value::BoolValue(false)));
    assert_eq!(
        get(&out, "bad_bool"),
        Some(&Value::StringValue("yes".into()))
    );
}

#[test]
fn rename_moves_the_value_and_replaces_the_target() {
    let out = apply(
        "[[actions]]\nkey = \"llm.model\"\naction = \"rename\"\nnew_key = \"gen_ai.request.model\"\n\
         [[actions]]\nkey = \"absent\"\naction = \"rename\"\nnew_key = \"x\"",
        vec![
            s("llm.model", "gpt-4o"),
            s("gen_ai.request.model", "old"),
            s("z", "z"),
        ],
    );
    assert_eq!(keys(&out), ["z", "gen_ai.request.model"]);
    assert_eq!(
        get(&out, "gen_ai.request.model"),
        Some(&Value::StringValue("gpt-4o".into()))
    );
}

#[test]
fn actions_apply_in_order() {
    let out = apply(
        "[[actions]]\nkey = \"n\"\naction = \"upsert\"\nvalue = \"12\"\n\
         [[actions]]\nkey = \"n\"\naction = \"convert\"\nconverted_type = \"int\"\n\
         [[actions]]\nkey = \"copy\"\naction = \"insert\"\nfrom_attribute = \"n\"",
        vec![],
    );
    assert_eq!(get(&out, "copy"), Some(&Value::IntValue(12)));
}

// ---- Filters --------------------------------------------------------------------------------

const INSERT_MARK: &str = "[[actions]]\nkey = \"marked\"\naction = \"insert\"\nvalue = true\n";

fn marked(toml: &str, service: &str, spans: Vec<Span>) -> Vec<bool> {
    let mut request = traces(service, spans);
    compiled(&format!("{INSERT_MARK}{toml}")).apply(&mut request);
    out_spans(request)
        .iter()
        .map(|s| get(&s.attributes, "marked").is_some())
        .collect()
}

#[test]
fn include_by_span_name_strict_and_regexp() {
    let spans = || {
        vec![
            span("chat gpt-4o", vec![]),
            span("embeddings text-embedding-3-small", vec![]),
        ]
    };
    assert_eq!(
        marked(
            "[include]\nmatch_type = \"strict\"\nspan_names = [\"chat gpt-4o\"]",
            "chat",
            spans()
        ),
        [true, false]
    );
    assert_eq!(
        marked(
            "[include]\nmatch_type = \"regexp\"\nspan_names = [\"^embeddings \"]",
            "chat",
            spans()
        ),
        [false, true]
    );
}

#[test]
fn include_by_service_name() {
    let toml = "[include]\nservices = [\"chat\"]";
    assert_eq!(marked(toml, "chat", vec![span("a", vec![])]), [true]);
    assert_eq!(marked(toml, "billing", vec![span("a", vec![])]), [false]);
}

#[test]
fn include_by_attribute_values_needs_all_of_them() {
    let toml = "[include]\nattributes = [{ key = \"gen_ai.provider.name\", value = \"openai\" }, { key = \"stream\" }]";
    let spans = vec![
        span(
            "a",
            vec![
                s("gen_ai.provider.name", "openai"),
                kv("stream", Value::BoolValue(false)),
            ],
        ),
        span("b", vec![s("gen_ai.provider.name", "openai")]),
        span(
            "c",
            vec![
                s("gen_ai.provider.name", "anthropic"),
                kv("stream", Value::BoolValue(true)),
            ],
        ),
    ];
    assert_eq!(marked(toml, "chat", spans), [true, false, false]);

    let typed = "[include]\nattributes = [{ key = \"n\", value = 3 }]";
    assert_eq!(
        marked(
            typed,
            "chat",
            vec![
                span("a", vec![kv("n", Value::IntValue(3))]),
                span("b", vec![s("n", "3")])
            ]
        ),
        [true, false]
    );

    let regexp = "[include]\nmatch_type = \"regexp\"\nattributes = [{ key = \"gen_ai.request.model\", value = \"^gpt-4\" }]";
    let spans = vec![
        span("a", vec![s("gen_ai.request.model", "gpt-4o-mini")]),
        span("b", vec![s("gen_ai.request.model", "claude-3")]),
    ];
    assert_eq!(marked(regexp, "chat", spans), [true, false]);
}

#[test]
fn exclude_wins_over_include() {
    let toml = "[include]\nservices = [\"chat\"]\n[exclude]\nmatch_type = \"regexp\"\nspan_names = [\"health\"]";
    let spans = vec![span("chat gpt-4o", vec![]), span("GET /healthz", vec![])];
    assert_eq!(marked(toml, "chat", spans), [true, false]);
}

#[test]
fn include_by_resource_attribute() {
    let toml =
        "[include]\nresources = [{ key = \"deployment.environment.name\", value = \"prod\" }]";
    assert_eq!(marked(toml, "chat", vec![span("a", vec![])]), [true]);
    let toml =
        "[include]\nresources = [{ key = \"deployment.environment.name\", value = \"dev\" }]";
    assert_eq!(marked(toml, "chat", vec![span("a", vec![])]), [false]);
}

// ---- Signals and the running processor -------------------------------------------------------

#[test]
fn logs_and_metric_data_points_get_the_actions() {
    let attributes = compiled(
        "[[actions]]\nkey = \"env\"\naction = \"insert\"\nfrom_resource_attribute = \"deployment.environment.name\"\n\
         [include]\nservices = [\"chat\"]",
    );
    let resource = Some(Resource {
        attributes: vec![
            s("service.name", "chat"),
            s("deployment.environment.name", "prod"),
        ],
        ..Resource::default()
    });
    let mut logs = Request::Logs(ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: resource.clone(),
            scope_logs: vec![ScopeLogs {
                log_records: vec![LogRecord::default()],
                ..ScopeLogs::default()
            }],
            ..ResourceLogs::default()
        }],
    });
    assert_eq!(attributes.apply(&mut logs), [1]);
    let Request::Logs(logs) = logs else {
        unreachable!()
    };
    let record = &logs.resource_logs[0].scope_logs[0].log_records[0];
    assert_eq!(
        get(&record.attributes, "env"),
        Some(&Value::StringValue("prod".into()))
    );

    let mut metrics = Request::Metrics(ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource,
            scope_metrics: vec![ScopeMetrics {
                metrics: vec![Metric {
                    name: "gen_ai.client.token.usage".into(),
                    data: Some(Data::Sum(Sum {
                        data_points: vec![NumberDataPoint::default(), NumberDataPoint::default()],
                        ..Sum::default()
                    })),
                    ..Metric::default()
                }],
                ..ScopeMetrics::default()
            }],
            ..ResourceMetrics::default()
        }],
    });
    assert_eq!(attributes.apply(&mut metrics), [2]);
}

#[derive(Default)]
struct Collect(Mutex<Vec<Batch>>);

#[async_trait]
impl Consumer for Collect {
    async fn consume(&self, batch: Batch) -> Result<(), ConsumeError> {
        self.0.lock().unwrap().push(batch);
        Ok(())
    }
}

async fn start(
    toml: &str,
    signal: Signal,
    telemetry: &Telemetry,
    next: Arc<Collect>,
) -> Result<Arc<dyn RunningProcessor>, StartError> {
    AttributesProcessorFactory
        .build(&settings(toml))
        .unwrap_or_else(|e| panic!("{e}"))
        .start(ProcessorContext {
            id: "attributes".into(),
            pipeline: signal.as_str().into(),
            signal,
            next,
            telemetry: telemetry.clone(),
        })
        .await
}

#[tokio::test]
async fn the_running_processor_changes_forwards_and_counts() {
    let telemetry = Telemetry::new();
    let next = Arc::new(Collect::default());
    let running = start(
        "[[actions]]\nkey = \"user.email\"\naction = \"hash\"\n\
         [[actions]]\nkey = \"team\"\naction = \"insert\"\nvalue = \"ml\"",
        Signal::Traces,
        &telemetry,
        next.clone(),
    )
    .await
    .unwrap();
    let request = traces(
        "chat",
        vec![span("a", vec![s("user.email", "alice")]), span("b", vec![])],
    );
    running.consume(Batch::from_request(request)).await.unwrap();
    let mut batches = next.0.lock().unwrap();
    let spans = out_spans(batches[0].request().unwrap().clone());
    assert_eq!(
        get(&spans[0].attributes, "user.email"),
        Some(&Value::StringValue(SHA256_OF_ALICE.into()))
    );
    assert_eq!(
        get(&spans[1].attributes, "team"),
        Some(&Value::StringValue("ml".into()))
    );
    let metrics = telemetry.render();
    for line in [
        r#"sluice_processor_attributes_changed_total{action="hash",processor="attributes",signal="traces"} 1"#,
        r#"sluice_processor_attributes_changed_total{action="insert",processor="attributes",signal="traces"} 2"#,
    ] {
        assert!(metrics.contains(line), "{line} missing from:\n{metrics}");
    }
}

#[tokio::test]
async fn span_name_filters_refuse_to_start_in_a_logs_pipeline() {
    let toml = "[[actions]]\nkey = \"a\"\naction = \"delete\"\n[include]\nspan_names = [\"x\"]";
    let telemetry = Telemetry::new();
    let error = start(toml, Signal::Logs, &telemetry, Arc::new(Collect::default()))
        .await
        .err()
        .expect("a logs pipeline cannot filter on span names");
    assert!(error.message.contains("span_names"), "{error}");
    assert!(
        start(
            toml,
            Signal::Traces,
            &telemetry,
            Arc::new(Collect::default())
        )
        .await
        .is_ok()
    );
}
