//! End to end: the `redaction` and `attributes` processors in the running binary.
//!
//! A corpus of secrets, one or more of each detector's kind, travels through Sluice two ways:
//! as prompts sent to the AI gateway with `capture_content = "full"` (so they land in span and
//! log attributes), and from the OpenTelemetry SDK over OTLP in span attributes, span events,
//! resource attributes, log bodies (string and map) and metric data point attributes. The test
//! backend's raw request bodies (OTLP/HTTP protobuf, uncompressed) must hold none of them, the
//! items that held them must carry the redaction summary, and a Luhn-invalid card number sent
//! alongside must arrive untouched (the search would find a secret if one got through).

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use async_openai::types::chat::{
    ChatCompletionRequestSystemMessageArgs, ChatCompletionRequestUserMessageArgs,
    CreateChatCompletionRequestArgs,
};
use common::backends::{Backend, Received};
use common::gateway::{GatewayConfig, attr, contains, log_records, openai, spans, str_attr};
use common::{Sluice, free_port};
use opentelemetry::logs::{AnyValue as LogValue, LogRecord as _, Logger as _, LoggerProvider as _};
use opentelemetry::metrics::MeterProvider as _;
use opentelemetry::trace::{Span as _, Tracer as _, TracerProvider as _};
use opentelemetry::{Key, KeyValue};
use opentelemetry_otlp::{Protocol, WithExportConfig as _};
use opentelemetry_proto::tonic::common::v1::KeyValue as ProtoKeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value as ProtoValue;
use opentelemetry_sdk::Resource;

/// One secret of each kind the detectors know, with the detector that must catch it.
const SECRETS: &[(&str, &str)] = &[
    ("api_key", "sk-proj-Q7w8E9r0T1y2U3i4O5p6A7s8D9f0G1h2J3k4"),
    ("api_key", "sk-ant-api03-Zx1Cv2Bn3Mm4Lk5Jh6Gf7Ds8Aa9"),
    ("aws_key", "AKIAQWERTYUIOPASDF12"),
    ("bearer", "tok3n-9f8e7d6c5b4a3210"),
    (
        "jwt",
        "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJzZWNyZXQtdXNlciJ9.c2lnbmF0dXJlLXNlY3JldA",
    ),
    ("email", "carol.secret@example.org"),
    ("credit_card", "4012 8888 8888 1881"),
    ("ip", "203.0.113.77"),
    ("ip", "2001:db8:85a3::8a2e:370:7334"),
];

/// Looks like a card number but fails the Luhn check: it must arrive untouched.
const NOT_A_CARD: &str = "4012 8888 8888 1882";

/// A prompt carrying every secret, each in its natural setting.
fn secret_prompt() -> String {
    let s = |i: usize| SECRETS[i].1;
    format!(
        "My OpenAI key is {} and the Anthropic one {}. AWS access key id {}. \
         Call it with the header Authorization: Bearer {}, the session token is {}. \
         Mail me at {}. Charge card {} (not order {}). The server is {} or {}.",
        s(0),
        s(1),
        s(2),
        s(3),
        s(4),
        s(5),
        s(6),
        NOT_A_CARD,
        s(7),
        s(8)
    )
}

/// Fails the test naming every secret found in `bytes`, and checks the control is there.
fn assert_no_secret(what: &str, bytes: &[u8]) {
    let mut leaked = Vec::new();
    for (detector, secret) in SECRETS {
        // A card number also leaks when written without its spaces.
        let mut forms = vec![secret.to_string()];
        if secret.contains(' ') {
            forms.push(secret.replace(' ', ""));
        }
        for form in forms {
            if contains(bytes, &form) {
                leaked.push(format!("{detector}: {form}"));
            }
        }
    }
    assert!(leaked.is_empty(), "{what} holds secrets: {leaked:#?}");
}

fn redaction_table() -> &'static str {
    r#"
[processors.redaction]
allow_all_keys = true
action = "mask"
summary = "debug"
"#
}

/// Every raw body the backend received, after checking they were sent uncompressed.
fn raw_bodies(received: &Received) -> Vec<u8> {
    assert!(
        received
            .headers
            .iter()
            .all(|h| h.get("content-encoding").is_none()),
        "the raw bodies are uncompressed protobuf, so secrets would be there as text"
    );
    received
        .raw_bodies
        .iter()
        .flat_map(|b| b.to_vec())
        .collect()
}

fn int_of(attributes: &[ProtoKeyValue], key: &str) -> Option<i64> {
    match attr(attributes, key) {
        Some(ProtoValue::IntValue(i)) => Some(*i),
        _ => None,
    }
}

// ---- Gateway → redaction → OTLP exporter -----------------------------------------------------

#[tokio::test]
async fn secrets_in_gateway_prompts_never_reach_the_backend() {
    let backend = Backend::http().await;
    let exporters = format!(
        "[exporters.proto]\ntype = \"otlp_http\"\nendpoint = \"{}\"\ncompression = \"none\"\n{}",
        backend.url(),
        redaction_table()
    );
    let config = GatewayConfig {
        gateway_keys: "capture_content = \"full\"",
        gateway_tables: "[gateway.providers.local]\nkind = \"mock\"\n\n[[gateway.routes]]\nmodel = \"gpt-4o\"\ntargets = [{ provider = \"local\" }]\n",
        exporters: &exporters,
        exporter_names: &["proto"],
    };
    let addresses = common::gateway::Addresses::free();
    let rendered = config.render(addresses).replace(
        "processors = [\"batch\"]",
        "processors = [\"redaction\", \"batch\"]",
    );
    assert_eq!(rendered.matches("[\"redaction\", \"batch\"]").count(), 3);
    let sluice = Sluice::start(&rendered, addresses.admin, &[addresses.gateway]);

    // The client's own key is a secret too: it must not be exported either.
    let client = openai(addresses, SECRETS[0].1);
    let prompt = secret_prompt();
    let request = CreateChatCompletionRequestArgs::default()
        .model("gpt-4o")
        .messages(vec![
            ChatCompletionRequestSystemMessageArgs::default()
                .content(format!("Never repeat {}.", SECRETS[2].1))
                .build()
                .unwrap()
                .into(),
            ChatCompletionRequestUserMessageArgs::default()
                .content(prompt.clone())
                .build()
                .unwrap()
                .into(),
        ])
        .build()
        .unwrap();
    client.chat().create(request).await.unwrap();

    let received = backend
        .recorder
        .wait_until("the chat's spans and log record", |r| {
            spans(r).iter().any(|s| s.name == "chat gpt-4o") && r.log_record_count() >= 1
        })
        .await;

    assert_no_secret("the backend's raw bodies", &raw_bodies(&received));
    let all = raw_bodies(&received);
    assert!(
        contains(&all, NOT_A_CARD),
        "the Luhn-invalid number is kept, so the search does find prompt text"
    );

    // The CLIENT span kept the prompt, with the secrets masked, and says so.
    let chat = spans(&received)
        .into_iter()
        .find(|s| s.name == "chat gpt-4o")
        .unwrap();
    let input = str_attr(&chat.attributes, "input.value").expect("content is captured");
    assert!(
        input.contains("My OpenAI key is **** and the Anthropic one ****"),
        "{input}"
    );
    assert!(input.contains("Authorization: Bearer ****"), "{input}");
    assert!(input.contains(NOT_A_CARD), "{input}");
    let content = str_attr(&chat.attributes, "llm.input_messages.1.message.content").unwrap();
    assert!(content.contains("Mail me at ****."), "{content}");
    let masked = int_of(&chat.attributes, "redaction.masked.count").expect("summary on the span");
    assert!(masked >= 3, "{masked}");
    let keys = str_attr(&chat.attributes, "redaction.masked.keys").unwrap();
    for key in [
        "input.value",
        "llm.input_messages.0.message.content",
        "llm.input_messages.1.message.content",
    ] {
        assert!(keys.split(',').any(|k| k == key), "{key} not in {keys}");
    }
    // The log record of the request carries its summary too.
    let records = log_records(&received);
    assert!(
        records
            .iter()
            .any(|r| int_of(&r.attributes, "redaction.masked.count").is_some_and(|n| n > 0)),
        "{records:#?}"
    );

    // The processor counted what it masked, by detector.
    let metrics = sluice.metrics();
    for detector in [
        "api_key",
        "aws_key",
        "bearer",
        "jwt",
        "email",
        "credit_card",
        "ip",
    ] {
        let series = format!(
            "sluice_processor_redaction_masked_total{{processor=\"redaction\",rule=\"{detector}\",signal=\"traces\"}}"
        );
        assert!(
            common::metric_value(&metrics, &series) >= 1.0,
            "{series}\n{metrics}"
        );
    }
}

// ---- SDK → OTLP receiver → redaction → OTLP exporter -----------------------------------------

struct OtlpDeployment {
    sluice: Sluice,
    backend: Backend,
    http: SocketAddr,
}

/// Sluice with an OTLP/HTTP receiver and an OTLP/HTTP exporter, running `processor` in the
/// pipelines of `signals` (the other signals pass through untouched).
async fn deploy_otlp(processor_tables: &str, processor: &str, signals: &[&str]) -> OtlpDeployment {
    let backend = Backend::http().await;
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let http = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut config = format!(
        r#"
[service]
admin = "{admin}"

[receivers.otlp]
http = "{http}"

{processor_tables}

[exporters.proto]
type = "otlp_http"
endpoint = "{url}"
compression = "none"
"#,
        url = backend.url()
    );
    for signal in ["traces", "metrics", "logs"] {
        let processors = if signals.contains(&signal) {
            format!("processors = [\"{processor}\"]\n")
        } else {
            String::new()
        };
        config.push_str(&format!(
            "\n[pipelines.{signal}]\nreceivers = [\"otlp\"]\n{processors}exporters = [\"proto\"]\n"
        ));
    }
    let sluice = Sluice::start(&config, admin, &[http]);
    OtlpDeployment {
        sluice,
        backend,
        http,
    }
}

fn sdk_resource(extra: Vec<KeyValue>) -> Resource {
    Resource::builder()
        .with_service_name("chat-api")
        .with_attributes(extra)
        .build()
}

/// Sends one span (attributes, an event), two log records (string and map bodies) and a
/// counter data point with the SDK over OTLP/HTTP protobuf, each carrying secrets.
async fn send_secrets_with_sdk(http: SocketAddr) {
    let endpoint = |signal: &str| format!("http://{http}/v1/{signal}");
    let spans = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(endpoint("traces"))
        .build()
        .unwrap();
    let logs = opentelemetry_otlp::LogExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(endpoint("logs"))
        .build()
        .unwrap();
    let metrics = opentelemetry_otlp::MetricExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(endpoint("metrics"))
        .build()
        .unwrap();
    let resource = sdk_resource(vec![
        KeyValue::new("host.ip", SECRETS[7].1),
        KeyValue::new("deploy.token", format!("Bearer {}", SECRETS[3].1)),
    ]);
    let prompt = secret_prompt();
    let span_resource = resource.clone();
    let log_resource = resource.clone();
    tokio::task::spawn_blocking(move || {
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
            .with_simple_exporter(spans)
            .with_resource(span_resource)
            .build();
        let tracer = provider.tracer("sluice.e2e");
        let mut span = tracer
            .span_builder("chat gpt-4o")
            .with_attributes([
                KeyValue::new(
                    "gen_ai.input.messages",
                    format!(r#"[{{"role":"user","content":"{prompt}"}}]"#),
                ),
                KeyValue::new("user.email", SECRETS[5].1),
                KeyValue::new("aws.credentials", SECRETS[2].1),
                KeyValue::new(
                    "client.addresses",
                    opentelemetry::Value::Array(opentelemetry::Array::String(vec![
                        SECRETS[8].1.into(),
                        "localhost".into(),
                    ])),
                ),
                KeyValue::new("order.reference", NOT_A_CARD),
            ])
            .start(&tracer);
        span.add_event(
            "gen_ai.content.completion",
            vec![KeyValue::new(
                "gen_ai.completion",
                format!("Your token {} is valid", SECRETS[4].1),
            )],
        );
        span.end();
        provider.shutdown().unwrap();

        let provider = opentelemetry_sdk::logs::SdkLoggerProvider::builder()
            .with_simple_exporter(logs)
            .with_resource(log_resource)
            .build();
        let logger = provider.logger("sluice.e2e");
        let mut record = logger.create_log_record();
        record.set_body(format!("payment with card {} by {}", SECRETS[6].1, SECRETS[5].1).into());
        logger.emit(record);
        let mut record = logger.create_log_record();
        let mut headers = HashMap::new();
        headers.insert(
            Key::from("authorization"),
            LogValue::from(format!("Bearer {}", SECRETS[3].1)),
        );
        let mut body = HashMap::new();
        body.insert(Key::from("event"), LogValue::from("request"));
        body.insert(Key::from("api_key"), LogValue::from(SECRETS[1].1));
        body.insert(Key::from("headers"), LogValue::Map(Box::new(headers)));
        record.set_body(LogValue::Map(Box::new(body)));
        logger.emit(record);
        provider.shutdown().unwrap();
    })
    .await
    .unwrap();

    let reader =
        opentelemetry_sdk::metrics::periodic_reader_with_async_runtime::PeriodicReader::builder(
            metrics,
            opentelemetry_sdk::runtime::Tokio,
        )
        .with_interval(Duration::from_secs(3600))
        .build();
    let provider = opentelemetry_sdk::metrics::SdkMeterProvider::builder()
        .with_reader(reader)
        .with_resource(resource)
        .build();
    let counter = provider.meter("sluice.e2e").u64_counter("requests").build();
    counter.add(1, &[KeyValue::new("enduser.email", SECRETS[5].1)]);
    tokio::task::spawn_blocking(move || provider.shutdown().unwrap())
        .await
        .unwrap();
}

#[tokio::test]
async fn secrets_sent_over_otlp_never_reach_the_backend() {
    let d = deploy_otlp(
        redaction_table(),
        "redaction",
        &["traces", "metrics", "logs"],
    )
    .await;
    send_secrets_with_sdk(d.http).await;
    let received = d
        .backend
        .recorder
        .wait_until("the span, both log records and the data point", |r| {
            r.span_count() >= 1 && r.log_record_count() >= 2 && r.data_point_count() >= 1
        })
        .await;

    let all = raw_bodies(&received);
    assert_no_secret("the backend's raw bodies", &all);
    assert!(
        contains(&all, NOT_A_CARD),
        "the Luhn-invalid number is kept"
    );

    // Every kind of item that held a secret carries the summary.
    let span = &spans(&received)[0];
    assert_eq!(
        str_attr(&span.attributes, "redaction.masked.keys"),
        Some("aws.credentials,client.addresses,gen_ai.completion,gen_ai.input.messages,user.email")
    );
    assert_eq!(int_of(&span.attributes, "redaction.masked.count"), Some(5));
    assert_eq!(str_attr(&span.attributes, "user.email"), Some("****"));
    let completion = str_attr(&span.events[0].attributes, "gen_ai.completion").unwrap();
    assert_eq!(completion, "Your token **** is valid");

    let resource = &received.traces[0].resource_spans[0]
        .resource
        .as_ref()
        .unwrap()
        .attributes;
    assert_eq!(str_attr(resource, "host.ip"), Some("****"));
    assert_eq!(str_attr(resource, "deploy.token"), Some("Bearer ****"));
    assert_eq!(str_attr(resource, "service.name"), Some("chat-api"));
    assert_eq!(int_of(resource, "redaction.masked.count"), Some(2));

    for record in log_records(&received) {
        assert_eq!(
            str_attr(&record.attributes, "redaction.masked.keys"),
            Some("body"),
            "{record:?}"
        );
    }

    let point_attributes: Vec<ProtoKeyValue> = received
        .metrics
        .iter()
        .flat_map(|r| &r.resource_metrics)
        .flat_map(|r| &r.scope_metrics)
        .flat_map(|s| &s.metrics)
        .filter(|m| m.name == "requests")
        .find_map(|m| match &m.data {
            Some(opentelemetry_proto::tonic::metrics::v1::metric::Data::Sum(sum)) => {
                Some(sum.data_points[0].attributes.clone())
            }
            _ => None,
        })
        .expect("the counter arrived");
    assert_eq!(str_attr(&point_attributes, "enduser.email"), Some("****"));
    assert_eq!(int_of(&point_attributes, "redaction.masked.count"), Some(1));

    let metrics = d.sluice.metrics();
    for signal in ["traces", "logs", "metrics"] {
        let series = format!(
            "sluice_processor_redaction_masked_total{{processor=\"redaction\",rule=\"email\",signal=\"{signal}\"}}"
        );
        assert!(
            common::metric_value(&metrics, &series) >= 1.0,
            "{series}\n{metrics}"
        );
    }
}

// ---- attributes ------------------------------------------------------------------------------

#[tokio::test]
async fn attributes_actions_are_seen_at_the_backend() {
    let tables = r#"
[processors.attributes]

[[processors.attributes.actions]]
key = "deployment.environment.name"
action = "insert"
value = "prod"

[[processors.attributes.actions]]
key = "user.email"
action = "hash"

[[processors.attributes.actions]]
key = "gen_ai.response.id"
action = "extract"
pattern = "^(?P<gen_ai.response.id_prefix>[a-z]+)-(?P<gen_ai.response.id_number>[0-9]+)$"

[processors.attributes.include]
match_type = "regexp"
span_names = ["^chat "]
"#;
    // Span-name filters only apply to traces.
    let d = deploy_otlp(tables, "attributes", &["traces"]).await;
    let spans_exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(format!("http://{}/v1/traces", d.http))
        .build()
        .unwrap();
    tokio::task::spawn_blocking(move || {
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
            .with_simple_exporter(spans_exporter)
            .with_resource(sdk_resource(vec![]))
            .build();
        let tracer = provider.tracer("sluice.e2e");
        for name in ["chat gpt-4o", "GET /healthz"] {
            tracer
                .span_builder(name)
                .with_attributes([
                    KeyValue::new("user.email", "alice"),
                    KeyValue::new("gen_ai.response.id", "chatcmpl-4242"),
                ])
                .start(&tracer)
                .end();
        }
        provider.shutdown().unwrap();
    })
    .await
    .unwrap();

    let received = d
        .backend
        .recorder
        .wait_until("both spans", |r| r.span_count() >= 2)
        .await;
    let all = spans(&received);
    let chat = all.iter().find(|s| s.name == "chat gpt-4o").unwrap();
    let a = &chat.attributes;
    assert_eq!(str_attr(a, "deployment.environment.name"), Some("prod"));
    // `printf alice | sha256sum`
    assert_eq!(
        str_attr(a, "user.email"),
        Some("2bd806c97f0e00af1a1fc3328fa763a9269723c8db8fac4f93af71db186d6e90")
    );
    assert_eq!(str_attr(a, "gen_ai.response.id_prefix"), Some("chatcmpl"));
    assert_eq!(str_attr(a, "gen_ai.response.id_number"), Some("4242"));
    // The include filter left the other span alone.
    let health = all.iter().find(|s| s.name == "GET /healthz").unwrap();
    assert_eq!(str_attr(&health.attributes, "user.email"), Some("alice"));
    assert_eq!(
        str_attr(&health.attributes, "deployment.environment.name"),
        None
    );

    let metrics = d.sluice.metrics();
    let series = "sluice_processor_attributes_changed_total{action=\"hash\",processor=\"attributes\",signal=\"traces\"}";
    assert_eq!(common::metric_value(&metrics, series), 1.0, "{metrics}");
}
