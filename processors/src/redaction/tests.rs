use std::sync::Mutex;

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::{AnyValue, ArrayValue, KeyValue, KeyValueList};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::metrics::v1::{
    Gauge, Histogram, HistogramDataPoint, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics,
    metric::Data,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::span::{Event, Link};
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};
use sluice_pipeline::config::ComponentKind;
use sluice_pipeline::{Request, Telemetry};

use super::walk::{MASKED_COUNT, MASKED_KEYS, REDACTED_COUNT, REDACTED_KEYS};
use super::*;

const OPENAI_KEY: &str = "sk-proj-Ab3dEfGhIjKlMnOpQrStUvWxYz0123456789";
const EMAIL: &str = "alice@example.com";
const HASH_KEY: &str = "a-hash-key-of-32-bytes-for-tests";

fn settings(toml: &str) -> ComponentSettings {
    ComponentSettings::new(
        ComponentKind::Processor,
        "redaction",
        "redaction",
        toml::from_str(toml).expect("test TOML is valid"),
    )
}

fn redactor(toml: &str) -> Redactor {
    match RedactionConfig::from_settings(&settings(toml)) {
        Ok(redactor) => redactor,
        Err(error) => panic!("{error}"),
    }
}

fn config_error(toml: &str) -> ConfigError {
    match RedactionConfig::from_settings(&settings(toml)) {
        Ok(_) => panic!("expected a config error for {toml}"),
        Err(error) => error,
    }
}

fn string(key: &str, value: &str) -> KeyValue {
    any(key, Value::StringValue(value.to_string()))
}

fn any(key: &str, value: Value) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue { value: Some(value) }),
        ..KeyValue::default()
    }
}

fn get<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a Value> {
    attributes
        .iter()
        .find(|a| a.key == key)
        .and_then(|a| a.value.as_ref()?.value.as_ref())
}

fn get_str<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a str> {
    match get(attributes, key) {
        Some(Value::StringValue(s)) => Some(s.as_str()),
        None => None,
        other => panic!("{key}: not a string: {other:?}"),
    }
}

fn keys(attributes: &[KeyValue]) -> Vec<&str> {
    attributes.iter().map(|a| a.key.as_str()).collect()
}

fn traces(resource: Vec<KeyValue>, spans: Vec<Span>) -> Request {
    Request::Traces(ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: resource,
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

fn span(attributes: Vec<KeyValue>) -> Span {
    Span {
        name: "chat gpt-4o".into(),
        attributes,
        ..Span::default()
    }
}

/// Redacts one span (and its resource) and returns them.
fn redact_span(redactor: &Redactor, resource: Vec<KeyValue>, s: Span) -> (Vec<KeyValue>, Span) {
    let mut request = traces(resource, vec![s]);
    redactor.redact(&mut request);
    let Request::Traces(mut request) = request else {
        unreachable!()
    };
    let mut rs = request.resource_spans.remove(0);
    (
        rs.resource.take().unwrap().attributes,
        rs.scope_spans.remove(0).spans.remove(0),
    )
}

fn redact_attributes(redactor: &Redactor, attributes: Vec<KeyValue>) -> Vec<KeyValue> {
    redact_span(redactor, vec![], span(attributes)).1.attributes
}

// ---- Configuration --------------------------------------------------------------------------

#[test]
fn defaults_are_the_documented_ones() {
    let config: RedactionConfig = settings("").parse().unwrap();
    assert!(!config.allow_all_keys);
    assert!(config.allowed_keys.is_empty());
    assert_eq!(config.detectors, Detector::ALL.to_vec());
    assert_eq!(config.action, Action::Mask);
    assert_eq!(config.summary, Summary::Silent);
    assert_eq!(config.hash_key, None);
}

#[test]
fn the_issue_example_parses() {
    let r = redactor(
        r#"
        allow_all_keys = true
        blocked_values = ["sk-[A-Za-z0-9_-]{20,}", "AKIA[0-9A-Z]{16}"]
        detectors = ["api_key", "aws_key", "jwt", "email", "credit_card", "ip"]
        action = "mask"
        summary = "info"
        "#,
    );
    assert_eq!(
        r.rule_names(),
        [
            "api_key",
            "aws_key",
            "jwt",
            "email",
            "credit_card",
            "ip",
            "blocked_values"
        ]
    );
}

#[test]
fn readme_example_parses() {
    let readme = include_str!("../../README.md");
    let section = readme
        .split("## `redaction`")
        .nth(1)
        .expect("the README has a redaction section");
    let example = section
        .split("```toml\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("the redaction section has a TOML example");
    let file: toml::Table = toml::from_str(example).unwrap();
    let table = file["processors"]["redaction"].as_table().unwrap().clone();
    let settings = ComponentSettings {
        table,
        ..settings("")
    };
    RedactionConfig::from_settings(&settings).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn unknown_detector_is_an_error_naming_it() {
    let error = config_error(r#"detectors = ["email", "phone"]"#);
    assert_eq!(error.path.to_string(), "processors.redaction.detectors[1]");
    assert!(
        error.message.contains("unknown variant `phone`"),
        "{}",
        error.message
    );
    assert!(error.message.contains("credit_card"), "{}", error.message);
}

#[test]
fn invalid_regexes_are_errors_naming_the_key_and_index() {
    for (toml, path) in [
        (
            r#"blocked_values = ["ok", "(unclosed"]"#,
            "processors.redaction.blocked_values[1]",
        ),
        (
            r#"allowed_values = ["[z-a]"]"#,
            "processors.redaction.allowed_values[0]",
        ),
        (
            r#"blocked_keys = ["password", "*token"]"#,
            "processors.redaction.blocked_keys[1]",
        ),
    ] {
        let error = config_error(toml);
        assert_eq!(error.path.to_string(), path, "{toml}");
        assert!(
            error.message.contains("invalid regular expression"),
            "{}",
            error.message
        );
    }
}

#[test]
fn patterns_matching_everything_are_refused() {
    let error = config_error(r#"blocked_values = [".*"]"#);
    assert_eq!(
        error.path.to_string(),
        "processors.redaction.blocked_values[0]"
    );
    assert!(error.message.contains("empty string"), "{}", error.message);
}

#[test]
fn hash_action_needs_a_long_enough_key() {
    let error = config_error(r#"action = "hash""#);
    assert_eq!(error.path.to_string(), "processors.redaction.hash_key");
    let error = config_error("action = \"hash\"\nhash_key = \"short\"");
    assert_eq!(error.path.to_string(), "processors.redaction.hash_key");
    assert!(
        error.message.contains("at least 16 bytes"),
        "{}",
        error.message
    );
}

#[test]
fn hash_key_can_come_from_the_environment() {
    let text = "[processors.redaction]\nallow_all_keys = true\naction = \"hash\"\n\
                hash_key = \"${REDACTION_KEY}\"\n[receivers.otlp]\n[exporters.debug]\n\
                [pipelines.traces]\nreceivers = [\"otlp\"]\nprocessors = [\"redaction\"]\n\
                exporters = [\"debug\"]\n";
    let config =
        sluice_pipeline::config::load_str(std::path::Path::new("sluice.toml"), text, |name| {
            (name == "REDACTION_KEY").then(|| HASH_KEY.to_string())
        })
        .unwrap_or_else(|e| panic!("{e}"));
    let settings = &config.processors["redaction"];
    assert_eq!(settings.table["hash_key"].as_str(), Some(HASH_KEY));
    let r = RedactionConfig::from_settings(settings).unwrap_or_else(|e| panic!("{e}"));
    let out = redact_attributes(&r, vec![string("user", EMAIL)]);
    assert_eq!(
        get_str(&out, "user"),
        Some(hmac_hex(HASH_KEY, EMAIL).as_str())
    );
}

#[test]
fn unknown_keys_are_errors_naming_the_key() {
    let error = config_error("allow_all_keys = true\nblocked_value = [\"x\"]");
    assert_eq!(error.path.to_string(), "processors.redaction.blocked_value");
}

// ---- Keys -----------------------------------------------------------------------------------

#[test]
fn without_allowed_keys_or_allow_all_keys_every_attribute_is_removed() {
    let r = redactor(r#"ignored_keys = ["service.name"]"#);
    let (resource, s) = redact_span(
        &r,
        vec![string("service.name", "chat"), string("host.name", "h1")],
        span(vec![
            string("gen_ai.request.model", "gpt-4o"),
            any("n", Value::IntValue(3)),
        ]),
    );
    assert_eq!(keys(&resource), ["service.name"]);
    assert!(s.attributes.is_empty(), "{:?}", s.attributes);
}

#[test]
fn allowed_keys_keep_only_the_listed_attributes() {
    let r = redactor(r#"allowed_keys = ["gen_ai.request.model", "service.name"]"#);
    let (resource, s) = redact_span(
        &r,
        vec![string("service.name", "chat"), string("host.name", "h1")],
        span(vec![
            string("gen_ai.request.model", "gpt-4o"),
            string("user.email", EMAIL),
            any("n", Value::IntValue(3)),
        ]),
    );
    assert_eq!(keys(&resource), ["service.name"]);
    assert_eq!(keys(&s.attributes), ["gen_ai.request.model"]);
}

#[test]
fn ignored_keys_pass_untouched_even_with_secrets() {
    let r = redactor(
        r#"allowed_keys = ["a"]
ignored_keys = ["trusted"]"#,
    );
    let out = redact_attributes(
        &r,
        vec![
            string("a", EMAIL),
            string("trusted", EMAIL),
            string("other", "x"),
        ],
    );
    assert_eq!(get_str(&out, "a"), Some(MASK));
    assert_eq!(get_str(&out, "trusted"), Some(EMAIL));
    assert_eq!(get(&out, "other"), None);
}

#[test]
fn key_rules_hold_for_every_span_and_past_the_remembered_keys() {
    // Key rules are remembered per request; more distinct keys than are remembered must be
    // judged just as well, in every span, whichever span saw a key first.
    let r = redactor(
        r#"allowed_keys = ["keep", "db.password", "trusted"]
ignored_keys = ["trusted"]
blocked_keys = ["password"]"#,
    );
    let spans: Vec<Span> = (0..400)
        .map(|i| {
            span(vec![
                string(&format!("other.{i}"), "x"),
                string("keep", EMAIL),
                string("db.password", "hunter2"),
                string("trusted", EMAIL),
            ])
        })
        .collect();
    let mut request = traces(vec![], spans);
    let tally = r.redact(&mut request);
    let Request::Traces(request) = request else {
        unreachable!("redaction keeps the signal")
    };
    let spans = &request.resource_spans[0].scope_spans[0].spans;
    assert_eq!(spans.len(), 400);
    for s in spans {
        assert_eq!(keys(&s.attributes)[..2], ["keep", "trusted"], "{s:?}");
        assert_eq!(get_str(&s.attributes, "keep"), Some(MASK));
        assert_eq!(get_str(&s.attributes, "trusted"), Some(EMAIL));
    }
    assert_eq!(tally.not_allowed, 400);
    assert_eq!(tally.blocked_key, 400);
}

#[test]
fn blocked_keys_remove_attributes_even_when_allowed_and_inside_key_value_lists() {
    let r = redactor(
        r#"allow_all_keys = true
blocked_keys = ["(?i)password", "^auth\\."]"#,
    );
    let out = redact_attributes(
        &r,
        vec![
            string("db.password", "hunter2"),
            string("auth.token", "t"),
            string("author", "me"),
            any(
                "request",
                Value::KvlistValue(KeyValueList {
                    values: vec![string("Password", "hunter2"), string("user", "bob")],
                }),
            ),
        ],
    );
    assert_eq!(keys(&out), ["author", "request"]);
    let Some(Value::KvlistValue(list)) = get(&out, "request") else {
        panic!("{out:?}")
    };
    assert_eq!(keys(&list.values), ["user"]);
}

// ---- Values ---------------------------------------------------------------------------------

#[test]
fn blocked_values_mask_only_the_matching_part() {
    let r = redactor(
        r#"allow_all_keys = true
detectors = []
blocked_values = ["tenant-[0-9]+"]"#,
    );
    let out = redact_attributes(&r, vec![string("q", "for tenant-42 and tenant-7, please")]);
    assert_eq!(get_str(&out, "q"), Some("for **** and ****, please"));
}

#[test]
fn allowed_values_take_precedence() {
    let r = redactor(
        r#"allow_all_keys = true
detectors = ["email"]
allowed_values = ["[a-z]+@mycompany\\.com"]"#,
    );
    let out = redact_attributes(
        &r,
        vec![
            string("from", "support@mycompany.com"),
            string("to", "eve@evil.com"),
        ],
    );
    assert_eq!(get_str(&out, "from"), Some("support@mycompany.com"));
    assert_eq!(get_str(&out, "to"), Some(MASK));
}

#[test]
fn detectors_can_be_switched_off_one_by_one() {
    let r = redactor("allow_all_keys = true\ndetectors = [\"email\"]");
    let text = format!("{EMAIL} {OPENAI_KEY}");
    let out = redact_attributes(&r, vec![string("t", &text)]);
    assert_eq!(
        get_str(&out, "t"),
        Some(format!("**** {OPENAI_KEY}").as_str())
    );

    let none = redactor("allow_all_keys = true\ndetectors = []");
    let out = redact_attributes(&none, vec![string("t", &text)]);
    assert_eq!(get_str(&out, "t"), Some(text.as_str()));
}

#[test]
fn every_detector_is_on_by_default() {
    let r = redactor("allow_all_keys = true");
    let secrets = [
        OPENAI_KEY,
        "sk-ant-api03-AbCdEf0123456789ghijklMNOP",
        "AKIAIOSFODNN7EXAMPLE",
        "Bearer tok3n.tok3n.tok3n",
        "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
        EMAIL,
        "4111 1111 1111 1111",
        "192.168.10.20",
        "2001:db8::8a2e:370:7334",
    ];
    for secret in secrets {
        let out = redact_attributes(&r, vec![string("v", &format!("value: {secret}."))]);
        let masked = get_str(&out, "v").unwrap();
        assert!(masked.contains(MASK), "{secret} -> {masked}");
        let rest = masked.replace("Bearer ", "");
        assert!(
            !rest.contains(&secret.replace("Bearer ", "")),
            "{secret} -> {masked}"
        );
    }
}

#[test]
fn luhn_invalid_card_numbers_are_left_alone() {
    let r = redactor("allow_all_keys = true");
    let out = redact_attributes(
        &r,
        vec![string("order", "order 4111 1111 1111 1112 shipped")],
    );
    assert_eq!(
        get_str(&out, "order"),
        Some("order 4111 1111 1111 1112 shipped")
    );
}

#[test]
fn non_string_values_are_left_alone() {
    let r = redactor("allow_all_keys = true");
    let attributes = vec![
        any("n", Value::IntValue(4111111111111111)),
        any("d", Value::DoubleValue(1.5)),
        any("b", Value::BoolValue(true)),
    ];
    assert_eq!(redact_attributes(&r, attributes.clone()), attributes);
}

#[test]
fn secrets_are_found_at_any_depth_of_arrays_and_key_value_lists() {
    let r = redactor("allow_all_keys = true\nsummary = \"debug\"");
    let nested = any(
        "messages",
        Value::ArrayValue(ArrayValue {
            values: vec![AnyValue {
                value: Some(Value::KvlistValue(KeyValueList {
                    values: vec![
                        string("role", "user"),
                        string("content", &format!("my key is {OPENAI_KEY}")),
                    ],
                })),
            }],
        }),
    );
    let out = redact_attributes(&r, vec![nested]);
    let Some(Value::ArrayValue(array)) = get(&out, "messages") else {
        panic!()
    };
    let Some(Value::KvlistValue(message)) = &array.values[0].value else {
        panic!()
    };
    assert_eq!(get_str(&message.values, "content"), Some("my key is ****"));
    assert_eq!(get_str(&out, MASKED_KEYS), Some("messages"));
}

#[test]
fn json_message_attributes_are_masked_and_stay_valid_json() {
    let r = redactor("allow_all_keys = true");
    let messages = format!(
        r#"[{{"role":"system","content":"You are helpful."}},{{"role":"user","content":"Email {EMAIL} the key\n{OPENAI_KEY}\nfrom 10.1.2.3"}}]"#
    );
    let out = redact_attributes(
        &r,
        vec![
            string("gen_ai.input.messages", &messages),
            string("llm.input_messages.1.message.content", &messages),
            string("input.value", &messages),
        ],
    );
    for key in [
        "gen_ai.input.messages",
        "llm.input_messages.1.message.content",
        "input.value",
    ] {
        assert_eq!(
            get_str(&out, key),
            Some(
                r#"[{"role":"system","content":"You are helpful."},{"role":"user","content":"Email **** the key\n****\nfrom ****"}]"#
            ),
            "{key}"
        );
    }
}

#[test]
fn a_secret_at_the_end_of_a_long_value_is_found() {
    let r = redactor("allow_all_keys = true");
    let long = format!(
        "{} {OPENAI_KEY}",
        "lorem ipsum dolor sit amet ".repeat(40_000)
    );
    let out = redact_attributes(&r, vec![string("input.value", &long)]);
    let masked = get_str(&out, "input.value").unwrap();
    assert!(masked.ends_with(" ****"));
    assert_eq!(masked.len(), long.len() - OPENAI_KEY.len() + MASK.len());
}

#[test]
fn hash_replaces_secrets_with_stable_keyed_hex() {
    let r = redactor(&format!(
        "allow_all_keys = true\naction = \"hash\"\nhash_key = \"{HASH_KEY}\""
    ));
    let out = redact_attributes(
        &r,
        vec![
            string("a", &format!("to {EMAIL}")),
            string("b", EMAIL),
            string("c", "nothing secret"),
        ],
    );
    let hash = hmac_hex(HASH_KEY, EMAIL);
    assert_eq!(get_str(&out, "a"), Some(format!("to {hash}").as_str()));
    assert_eq!(get_str(&out, "b"), Some(hash.as_str()));
    assert_eq!(get_str(&out, "c"), Some("nothing secret"));
}

/// HMAC-SHA256 computed with the `hmac` crate directly, as a second opinion on the processor.
fn hmac_hex(key: &str, message: &str) -> String {
    use hmac::{Hmac, Mac};
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key.as_bytes()).unwrap();
    mac.update(message.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

#[test]
fn drop_attribute_removes_attributes_holding_secrets() {
    let r = redactor("allow_all_keys = true\naction = \"drop_attribute\"\nsummary = \"debug\"");
    let out = redact_attributes(
        &r,
        vec![
            string("prompt", &format!("mail {EMAIL}")),
            string("model", "gpt-4o"),
            any(
                "list",
                Value::ArrayValue(ArrayValue {
                    values: vec![AnyValue {
                        value: Some(Value::StringValue(OPENAI_KEY.into())),
                    }],
                }),
            ),
        ],
    );
    assert_eq!(keys(&out), ["model", MASKED_COUNT, MASKED_KEYS], "{out:?}");
    assert_eq!(get_str(&out, MASKED_KEYS), Some("list,prompt"));
}

// ---- Summary --------------------------------------------------------------------------------

fn summary_of(summary: &str) -> Vec<KeyValue> {
    let r = redactor(&format!(
        "allowed_keys = [\"prompt\", \"other\", \"model\"]\nsummary = \"{summary}\""
    ));
    redact_attributes(
        &r,
        vec![
            string("prompt", &format!("{EMAIL} {OPENAI_KEY}")),
            string("other", EMAIL),
            string("model", "gpt-4o"),
            string("user.id", "42"),
            string("session", "s"),
        ],
    )
}

#[test]
fn silent_summary_adds_nothing() {
    let out = summary_of("silent");
    assert_eq!(keys(&out), ["prompt", "other", "model"]);
}

#[test]
fn info_summary_adds_the_counts() {
    let out = summary_of("info");
    assert_eq!(get(&out, MASKED_COUNT), Some(&Value::IntValue(2)));
    assert_eq!(get(&out, REDACTED_COUNT), Some(&Value::IntValue(2)));
    assert_eq!(get(&out, MASKED_KEYS), None);
    assert_eq!(get(&out, REDACTED_KEYS), None);
}

#[test]
fn debug_summary_adds_the_counts_and_keys() {
    let out = summary_of("debug");
    assert_eq!(get(&out, MASKED_COUNT), Some(&Value::IntValue(2)));
    assert_eq!(get_str(&out, MASKED_KEYS), Some("other,prompt"));
    assert_eq!(get(&out, REDACTED_COUNT), Some(&Value::IntValue(2)));
    assert_eq!(get_str(&out, REDACTED_KEYS), Some("session,user.id"));
}

#[test]
fn items_without_changes_get_no_summary() {
    let r = redactor("allow_all_keys = true\nsummary = \"debug\"");
    let attributes = vec![string("model", "gpt-4o")];
    assert_eq!(redact_attributes(&r, attributes.clone()), attributes);
}

// ---- Signals --------------------------------------------------------------------------------

#[test]
fn span_events_links_status_and_resource_are_redacted() {
    let r = redactor("allow_all_keys = true\nsummary = \"debug\"");
    let mut s = span(vec![string("model", "gpt-4o")]);
    s.events = vec![Event {
        name: "gen_ai.content.prompt".into(),
        attributes: vec![string("gen_ai.prompt", &format!("hi, I am {EMAIL}"))],
        ..Event::default()
    }];
    s.links = vec![Link {
        attributes: vec![string("peer", "10.0.0.7")],
        ..Link::default()
    }];
    s.status = Some(Status {
        message: format!("Incorrect API key provided: {OPENAI_KEY}"),
        code: 2,
    });
    let (resource, s) = redact_span(&r, vec![string("host.ip", "192.168.0.4")], s);
    assert_eq!(
        get_str(&s.events[0].attributes, "gen_ai.prompt"),
        Some("hi, I am ****")
    );
    assert_eq!(get_str(&s.links[0].attributes, "peer"), Some(MASK));
    assert_eq!(
        s.status.unwrap().message,
        "Incorrect API key provided: ****"
    );
    // The span's summary covers its events, links and status.
    assert_eq!(get(&s.attributes, MASKED_COUNT), Some(&Value::IntValue(3)));
    assert_eq!(
        get_str(&s.attributes, MASKED_KEYS),
        Some("gen_ai.prompt,peer,status.message")
    );
    assert_eq!(get_str(&resource, "host.ip"), Some(MASK));
    assert_eq!(get(&resource, MASKED_COUNT), Some(&Value::IntValue(1)));
}

fn logs(resource: Vec<KeyValue>, records: Vec<LogRecord>) -> Request {
    Request::Logs(ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(Resource {
                attributes: resource,
                ..Resource::default()
            }),
            scope_logs: vec![ScopeLogs {
                log_records: records,
                ..ScopeLogs::default()
            }],
            ..ResourceLogs::default()
        }],
    })
}

fn records(request: Request) -> Vec<LogRecord> {
    let Request::Logs(request) = request else {
        unreachable!()
    };
    request.resource_logs[0].scope_logs[0].log_records.clone()
}

#[test]
fn log_bodies_and_attributes_are_redacted() {
    let r = redactor("allow_all_keys = true\nsummary = \"debug\"");
    let string_body = LogRecord {
        body: Some(AnyValue {
            value: Some(Value::StringValue(format!("login by {EMAIL}"))),
        }),
        attributes: vec![string("client.address", "172.16.5.4")],
        ..LogRecord::default()
    };
    let map_body = LogRecord {
        body: Some(AnyValue {
            value: Some(Value::KvlistValue(KeyValueList {
                values: vec![
                    string("event", "request"),
                    any(
                        "headers",
                        Value::KvlistValue(KeyValueList {
                            values: vec![string("authorization", "Bearer abcdefgh12345678")],
                        }),
                    ),
                ],
            })),
        }),
        ..LogRecord::default()
    };
    let mut request = logs(vec![], vec![string_body, map_body]);
    r.redact(&mut request);
    let out = records(request);
    assert_eq!(
        out[0].body.as_ref().unwrap().value,
        Some(Value::StringValue("login by ****".into()))
    );
    assert_eq!(get_str(&out[0].attributes, "client.address"), Some(MASK));
    assert_eq!(
        get_str(&out[0].attributes, MASKED_KEYS),
        Some("body,client.address")
    );
    let Some(Value::KvlistValue(body)) = &out[1].body.as_ref().unwrap().value else {
        panic!()
    };
    let Some(Value::KvlistValue(headers)) = get(&body.values, "headers") else {
        panic!()
    };
    assert_eq!(
        get_str(&headers.values, "authorization"),
        Some("Bearer ****")
    );
    assert_eq!(get_str(&out[1].attributes, MASKED_KEYS), Some("body"));
}

#[test]
fn drop_attribute_clears_a_log_body_holding_a_secret() {
    let r = redactor("allow_all_keys = true\naction = \"drop_attribute\"\nsummary = \"info\"");
    let record = LogRecord {
        body: Some(AnyValue {
            value: Some(Value::StringValue(format!("key {OPENAI_KEY}"))),
        }),
        ..LogRecord::default()
    };
    let mut request = logs(vec![], vec![record]);
    let tally = r.redact(&mut request);
    let out = records(request);
    assert_eq!(out[0].body, None);
    assert_eq!(
        get(&out[0].attributes, MASKED_COUNT),
        Some(&Value::IntValue(1))
    );
    assert_eq!(tally.dropped_for_value, 1);
}

#[test]
fn metric_data_point_attributes_are_redacted() {
    let r = redactor("allowed_keys = [\"user\", \"model\"]\nsummary = \"info\"");
    let metric = |data| Metric {
        name: "gen_ai.client.token.usage".into(),
        data: Some(data),
        ..Metric::default()
    };
    let attributes = vec![
        string("user", EMAIL),
        string("model", "gpt-4o"),
        string("session", "abc"),
    ];
    let mut request = Request::Metrics(ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            scope_metrics: vec![ScopeMetrics {
                metrics: vec![
                    metric(Data::Gauge(Gauge {
                        data_points: vec![NumberDataPoint {
                            attributes: attributes.clone(),
                            ..NumberDataPoint::default()
                        }],
                    })),
                    metric(Data::Histogram(Histogram {
                        data_points: vec![HistogramDataPoint {
                            attributes: attributes.clone(),
                            ..HistogramDataPoint::default()
                        }],
                        ..Histogram::default()
                    })),
                ],
                ..ScopeMetrics::default()
            }],
            ..ResourceMetrics::default()
        }],
    });
    let tally = r.redact(&mut request);
    let Request::Metrics(request) = request else {
        unreachable!()
    };
    let metrics = &request.resource_metrics[0].scope_metrics[0].metrics;
    let Some(Data::Gauge(gauge)) = &metrics[0].data else {
        panic!()
    };
    let Some(Data::Histogram(histogram)) = &metrics[1].data else {
        panic!()
    };
    for point_attributes in [
        &gauge.data_points[0].attributes,
        &histogram.data_points[0].attributes,
    ] {
        assert_eq!(get_str(point_attributes, "user"), Some(MASK));
        assert_eq!(get_str(point_attributes, "model"), Some("gpt-4o"));
        assert_eq!(get(point_attributes, "session"), None);
        assert_eq!(
            get(point_attributes, MASKED_COUNT),
            Some(&Value::IntValue(1))
        );
        assert_eq!(
            get(point_attributes, REDACTED_COUNT),
            Some(&Value::IntValue(1))
        );
    }
    assert_eq!(tally.not_allowed, 2);
    let email = r.rule_names().iter().position(|n| *n == "email").unwrap();
    assert_eq!(tally.masked[email], 2);
}

// ---- Running in a pipeline ------------------------------------------------------------------

#[derive(Default)]
struct Collect(Mutex<Vec<Batch>>);

#[async_trait]
impl Consumer for Collect {
    async fn consume(&self, batch: Batch) -> Result<(), ConsumeError> {
        self.0.lock().unwrap().push(batch);
        Ok(())
    }
}

#[tokio::test]
async fn the_running_processor_redacts_forwards_and_counts() {
    let factory = RedactionProcessorFactory;
    let processor = factory
        .build(&settings(
            "allowed_keys = [\"prompt\", \"model\"]\nblocked_keys = [\"model\"]\nblocked_values = [\"zebra\"]",
        ))
        .unwrap();
    let next = Arc::new(Collect::default());
    let telemetry = Telemetry::new();
    let running = processor
        .start(ProcessorContext {
            id: "redaction".into(),
            pipeline: "traces".into(),
            signal: Signal::Traces,
            next: next.clone(),
            telemetry: telemetry.clone(),
        })
        .await
        .unwrap();
    let request = traces(
        vec![],
        vec![
            span(vec![
                string("prompt", &format!("{EMAIL} and {EMAIL}, zebra")),
                string("model", "gpt-4o"),
                string("user", "u"),
            ]),
            span(vec![string("prompt", "no secrets")]),
        ],
    );
    running.consume(Batch::from_request(request)).await.unwrap();

    let mut batches = next.0.lock().unwrap();
    assert_eq!(batches.len(), 1);
    assert_eq!(batches[0].item_count(), 2);
    let Request::Traces(out) = batches[0].request().unwrap() else {
        panic!()
    };
    let spans = &out.resource_spans[0].scope_spans[0].spans;
    assert_eq!(keys(&spans[0].attributes), ["prompt"]);
    assert_eq!(
        get_str(&spans[0].attributes, "prompt"),
        Some("**** and ****, ****")
    );
    assert_eq!(get_str(&spans[1].attributes, "prompt"), Some("no secrets"));

    let metrics = telemetry.render();
    for line in [
        r#"sluice_processor_redaction_masked_total{processor="redaction",rule="email",signal="traces"} 2"#,
        r#"sluice_processor_redaction_masked_total{processor="redaction",rule="blocked_values",signal="traces"} 1"#,
        r#"sluice_processor_redaction_removed_total{processor="redaction",reason="not_allowed",signal="traces"} 1"#,
        r#"sluice_processor_redaction_removed_total{processor="redaction",reason="blocked_key",signal="traces"} 1"#,
    ] {
        assert!(metrics.contains(line), "{line} missing from:\n{metrics}");
    }
}
