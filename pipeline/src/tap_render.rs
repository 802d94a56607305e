//! How a tap shows items: one line per span, log record or metric, as JSON (NDJSON) or text,
//! optionally only those with an attribute of a given value.

use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use serde_json::{Value, json};

use crate::batch::{Batch, Request};

/// The line format of a tap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TapFormat {
    /// One JSON object per item (NDJSON), with the item in OTLP/JSON form.
    Json,
    /// One readable line per item.
    Text,
}

/// `KEY=VALUE`: keeps items whose attribute KEY (on the item or its resource) has VALUE as
/// its text; `name=VALUE` also matches span, metric and (string) log body names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TapFilter {
    key: String,
    value: String,
}

impl TapFilter {
    /// Parses `KEY=VALUE`.
    pub fn parse(text: &str) -> Result<TapFilter, String> {
        match text.split_once('=') {
            Some((key, value)) if !key.is_empty() => Ok(TapFilter {
                key: key.to_string(),
                value: value.to_string(),
            }),
            _ => Err(format!("a filter is KEY=VALUE, not {text:?}")),
        }
    }

    fn matches(&self, name: &str, attributes: &[KeyValue], resource: Option<&Resource>) -> bool {
        if self.key == "name" && name == self.value {
            return true;
        }
        let resource_attributes = resource.map(|r| r.attributes.as_slice()).unwrap_or(&[]);
        attributes
            .iter()
            .chain(resource_attributes)
            .any(|kv| kv.key == self.key && value_text(kv.value.as_ref()) == self.value)
    }
}

/// The text of an attribute value, as a filter compares it.
fn value_text(value: Option<&AnyValue>) -> String {
    match value.and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn attributes_json(attributes: &[KeyValue]) -> Value {
    Value::Object(
        attributes
            .iter()
            .map(|kv| (kv.key.clone(), any_json(kv.value.as_ref())))
            .collect(),
    )
}

fn any_json(value: Option<&AnyValue>) -> Value {
    match value.and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => json!(s),
        Some(any_value::Value::BoolValue(b)) => json!(b),
        Some(any_value::Value::IntValue(i)) => json!(i),
        Some(any_value::Value::DoubleValue(d)) => json!(d),
        Some(any_value::Value::ArrayValue(array)) => {
            Value::Array(array.values.iter().map(|v| any_json(Some(v))).collect())
        }
        Some(any_value::Value::KvlistValue(list)) => attributes_json(&list.values),
        Some(any_value::Value::BytesValue(bytes)) => json!(hex::encode(bytes)),
        Some(other) => json!(format!("{other:?}")),
        None => Value::Null,
    }
}

fn text_attributes(attributes: &[KeyValue]) -> String {
    attributes
        .iter()
        .map(|kv| format!(" {}={}", kv.key, value_text(kv.value.as_ref())))
        .collect()
}

fn line(value: Value) -> String {
    let mut text = value.to_string();
    text.push('\n');
    text
}

/// The lines showing the items of `batch` leaving `component` that pass `filter`.
pub fn render_items(
    component: &str,
    batch: Batch,
    format: TapFormat,
    filter: Option<&TapFilter>,
) -> Vec<String> {
    let request = match batch.into_request() {
        Ok(request) => request,
        Err(error) => return vec![format!("# undecodable batch: {error}\n")],
    };
    let keep = |name: &str, attributes: &[KeyValue], resource: Option<&Resource>| {
        filter.is_none_or(|f| f.matches(name, attributes, resource))
    };
    let mut lines = Vec::new();
    match request {
        Request::Traces(request) => {
            for resource_spans in &request.resource_spans {
                let resource = resource_spans.resource.as_ref();
                for scope_spans in &resource_spans.scope_spans {
                    for span in &scope_spans.spans {
                        if !keep(&span.name, &span.attributes, resource) {
                            continue;
                        }
                        lines.push(match format {
                            TapFormat::Json => line(json!({
                                "component": component,
                                "signal": "traces",
                                "resource": resource.map(|r| attributes_json(&r.attributes)),
                                "span": span,
                            })),
                            TapFormat::Text => format!(
                                "{component} span {:?} trace={} span={} duration={}ns{}\n",
                                span.name,
                                hex::encode(&span.trace_id),
                                hex::encode(&span.span_id),
                                span.end_time_unix_nano
                                    .saturating_sub(span.start_time_unix_nano),
                                text_attributes(&span.attributes)
                            ),
                        });
                    }
                }
            }
        }
        Request::Logs(request) => {
            for resource_logs in &request.resource_logs {
                let resource = resource_logs.resource.as_ref();
                for scope_logs in &resource_logs.scope_logs {
                    for record in &scope_logs.log_records {
                        let body = value_text(record.body.as_ref());
                        if !keep(&body, &record.attributes, resource) {
                            continue;
                        }
                        lines.push(match format {
                            TapFormat::Json => line(json!({
                                "component": component,
                                "signal": "logs",
                                "resource": resource.map(|r| attributes_json(&r.attributes)),
                                "log_record": record,
                            })),
                            TapFormat::Text => format!(
                                "{component} log {} {:?}{}\n",
                                record.severity_text,
                                body,
                                text_attributes(&record.attributes)
                            ),
                        });
                    }
                }
            }
        }
        Request::Metrics(request) => {
            for resource_metrics in &request.resource_metrics {
                let resource = resource_metrics.resource.as_ref();
                for scope_metrics in &resource_metrics.scope_metrics {
                    for metric in &scope_metrics.metrics {
                        if !keep(&metric.name, &metric.metadata, resource) {
                            continue;
                        }
                        lines.push(match format {
                            TapFormat::Json => line(json!({
                                "component": component,
                                "signal": "metrics",
                                "resource": resource.map(|r| attributes_json(&r.attributes)),
                                "metric": metric,
                            })),
                            TapFormat::Text => format!(
                                "{component} metric {} ({} data points)\n",
                                metric.name,
                                crate::batch::metric_data_point_count(metric)
                            ),
                        });
                    }
                }
            }
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};

    fn kv(key: &str, value: &str) -> KeyValue {
        KeyValue {
            key: key.to_string(),
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue(value.to_string())),
            }),
            ..Default::default()
        }
    }

    fn two_spans() -> Batch {
        let span = |name: &str, model: &str| Span {
            name: name.to_string(),
            attributes: vec![kv("gen_ai.request.model", model)],
            ..Default::default()
        };
        Batch::from_request(Request::Traces(ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![kv("service.name", "shop")],
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    spans: vec![span("chat gpt-4o", "gpt-4o"), span("chat mini", "mini")],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }))
    }

    #[test]
    fn json_lines_carry_the_item_and_its_resource() {
        let lines = render_items("processor/batch", two_spans(), TapFormat::Json, None);
        assert_eq!(lines.len(), 2);
        let first: Value = serde_json::from_str(&lines[0]).unwrap();
        assert_eq!(first["component"], "processor/batch");
        assert_eq!(first["resource"]["service.name"], "shop");
        assert_eq!(first["span"]["name"], "chat gpt-4o");
    }

    #[test]
    fn a_filter_keeps_items_by_attribute_resource_attribute_or_name() {
        let by_model = TapFilter::parse("gen_ai.request.model=mini").unwrap();
        let lines = render_items("r", two_spans(), TapFormat::Text, Some(&by_model));
        assert_eq!(lines.len(), 1);
        assert!(lines[0].contains("chat mini"), "{}", lines[0]);

        let by_service = TapFilter::parse("service.name=shop").unwrap();
        assert_eq!(
            render_items("r", two_spans(), TapFormat::Text, Some(&by_service)).len(),
            2
        );
        let by_name = TapFilter::parse("name=chat gpt-4o").unwrap();
        assert_eq!(
            render_items("r", two_spans(), TapFormat::Json, Some(&by_name)).len(),
            1
        );
        assert!(TapFilter::parse("no-equals").is_err());
    }
}
