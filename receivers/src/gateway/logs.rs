//! Request events to log records: one per request, sampled or not, carrying the SERVER span's
//! attributes and its trace and span ids, so a log line leads to its trace when there is one.

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, any_value::Value};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs, SeverityNumber};
use opentelemetry_proto::tonic::resource::v1::Resource;
use sluice_gateway::event::RequestEvent;

use super::attributes;

/// The log record's `event_name`.
pub(crate) const EVENT_NAME: &str = "sluice.gateway.request";

/// The log records of a batch of events, in one resource and scope; `None` for no events.
pub(crate) fn export_request(
    events: &[RequestEvent],
    now_unix_nano: u64,
    resource: &Resource,
    scope: &InstrumentationScope,
) -> Option<ExportLogsServiceRequest> {
    if events.is_empty() {
        return None;
    }
    let log_records = events
        .iter()
        .map(|event| log_record(event, now_unix_nano))
        .collect();
    Some(ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(resource.clone()),
            scope_logs: vec![ScopeLogs {
                scope: Some(scope.clone()),
                log_records,
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    })
}

/// The log record of one request, observed at `now_unix_nano`.
pub(crate) fn log_record(event: &RequestEvent, now_unix_nano: u64) -> LogRecord {
    let (severity, text) = match event.status_code {
        500.. => (SeverityNumber::Error, "ERROR"),
        400..500 => (SeverityNumber::Warn, "WARN"),
        _ => (SeverityNumber::Info, "INFO"),
    };
    let mut attrs = attributes::request(event);
    if let Some(content) = &event.content {
        attributes::input_value(&mut attrs, event.operation, content);
        attributes::output_value(&mut attrs, content);
    }
    LogRecord {
        time_unix_nano: event.timings.end_unix_nano,
        observed_time_unix_nano: now_unix_nano,
        severity_number: severity as i32,
        severity_text: text.to_string(),
        body: Some(AnyValue {
            value: Some(Value::StringValue(body(event))),
        }),
        attributes: attrs.into_vec(),
        flags: u32::from(event.sampled),
        trace_id: event.trace.trace_id.to_vec(),
        span_id: event.trace.server_span_id.to_vec(),
        event_name: EVENT_NAME.to_string(),
        ..Default::default()
    }
}

/// One line for humans: `POST /v1/chat/completions 200 gpt-4o 532ms 12+40 tokens`, with the
/// error after a colon when there is one.
pub(crate) fn body(event: &RequestEvent) -> String {
    let mut line = format!(
        "{} {} {}",
        event.http_method, event.http_path, event.status_code
    );
    if let Some(model) = event
        .requested_model
        .as_deref()
        .or(event.response_model.as_deref())
    {
        line.push(' ');
        line.push_str(model);
    }
    let millis = event
        .timings
        .end_unix_nano
        .saturating_sub(event.timings.start_unix_nano)
        / 1_000_000;
    line.push_str(&format!(" {millis}ms"));
    match (event.usage.input_tokens, event.usage.output_tokens) {
        (Some(input), Some(output)) => line.push_str(&format!(" {input}+{output} tokens")),
        (Some(input), None) => line.push_str(&format!(" {input} tokens")),
        _ => {}
    }
    if let Some(error) = &event.error {
        line.push_str(&format!(" {}: {}", error.error_type, error.message));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::super::attributes::test_support::render;
    use super::super::fixtures::{self, T0};
    use super::super::traces;
    use super::*;

    const NOW: u64 = T0 + 5_000_000_000;

    #[test]
    fn a_successful_request_is_an_info_record_with_the_server_span_attributes_and_ids() {
        let event = fixtures::streamed_chat();
        let record = log_record(&event, NOW);
        assert_eq!(record.time_unix_nano, T0 + 900_000_000);
        assert_eq!(record.observed_time_unix_nano, NOW);
        assert_eq!(record.severity_number, SeverityNumber::Info as i32);
        assert_eq!(record.severity_text, "INFO");
        assert_eq!(record.event_name, "sluice.gateway.request");
        assert_eq!(record.flags, 1);
        assert_eq!(
            record.body,
            Some(AnyValue {
                value: Some(Value::StringValue(
                    "POST /v1/chat/completions 200 gpt-4o 900ms 12+40 tokens".into()
                ))
            })
        );
        let server = &traces::spans(&event)[0];
        assert_eq!(record.trace_id, server.trace_id);
        assert_eq!(record.span_id, server.span_id);
        assert_eq!(render(&record.attributes), render(&server.attributes));
    }

    #[test]
    fn severity_follows_the_status_class() {
        let mut event = fixtures::unauthorized();
        let record = log_record(&event, NOW);
        assert_eq!(
            (record.severity_number, record.severity_text.as_str()),
            (SeverityNumber::Warn as i32, "WARN")
        );
        assert_eq!(
            body(&event),
            "POST /v1/chat/completions 401 1ms unauthorized: Incorrect or missing API key"
        );
        event.status_code = 502;
        let record = log_record(&event, NOW);
        assert_eq!(
            (record.severity_number, record.severity_text.as_str()),
            (SeverityNumber::Error as i32, "ERROR")
        );
    }

    #[test]
    fn unsampled_requests_still_log_with_their_ids() {
        let mut event = fixtures::embeddings();
        event.sampled = false;
        let record = log_record(&event, NOW);
        assert_eq!(record.flags, 0);
        assert_eq!(record.trace_id, event.trace.trace_id.to_vec());
        assert_eq!(record.span_id, event.trace.server_span_id.to_vec());
        assert_eq!(
            body(&event),
            "POST /v1/embeddings 200 text-embedding-3-small 31ms 8 tokens"
        );
    }

    #[test]
    fn content_is_logged_only_when_captured() {
        let mut event = fixtures::streamed_chat();
        let without = format!("{:?}", log_record(&event, NOW));
        assert!(!without.contains("input.value"));
        event.content = Some(fixtures::chat_content());
        let record = log_record(&event, NOW);
        let attrs = render(&record.attributes);
        assert!(attrs["input.value"].contains(fixtures::SECRET_PROMPT));
        assert!(attrs["output.value"].contains("Blue."));
        assert_eq!(attrs["input.mime_type"], "\"application/json\"");
    }

    #[test]
    fn a_batch_of_events_is_one_request_and_no_events_is_none() {
        let events = [fixtures::streamed_chat(), fixtures::unauthorized()];
        let request = export_request(
            &events,
            NOW,
            &Resource::default(),
            &InstrumentationScope::default(),
        )
        .unwrap();
        assert_eq!(request.resource_logs[0].scope_logs[0].log_records.len(), 2);
        assert!(
            export_request(
                &[],
                NOW,
                &Resource::default(),
                &InstrumentationScope::default()
            )
            .is_none()
        );
    }
}
