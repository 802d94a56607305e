//! Spans as the tail sampler holds them: encoded, as they arrived.
//!
//! Decoding a span with ten attributes and dropping it costs more CPU than everything else the
//! tail sampler does with it, and the decoded span takes about four times its encoded size. So
//! each buffered span is a zero-copy slice of the request it came in, with a shared handle on
//! its resource and scope (also encoded). At decision time the few fields the policies look at
//! (times, status, attributes) are read in place; a sampled trace is sent as a request built by
//! copying the slices under their resource and scope, and a dropped one is just released.
//!
//! A slice keeps its whole request buffer alive until the last span sliced from it is gone.
//! The spans of one request belong to traces decided within `decision_wait` of its arrival, so
//! a buffer is held at most that long.

use std::sync::Arc;

use bytes::Bytes;

use crate::otlp_wire::{
    Malformed, Value, WIRE_I64, WIRE_LEN, WIRE_VARINT, fields, len_field_len, read_any_value,
    varint_of, write_len_field, write_len_header,
};

/// A trace id as a map key: the span's 16 bytes (shorter ids are zero-padded, longer ones cut;
/// both are invalid OTLP, and this keeps such spans together rather than failing them).
pub type TraceId = [u8; 16];

// Field numbers: `ExportTraceServiceRequest { 1: ResourceSpans }`,
// `ResourceSpans { 1: Resource, 2: ScopeSpans, 3: schema_url }`,
// `ScopeSpans { 1: scope, 2: Span, 3: schema_url }`, `Resource { 1: attributes }`,
// `Span { 1: trace_id, 7: start, 8: end, 9: attributes, 15: Status { 3: code } }`,
// `KeyValue { 1: key, 2: value }`.
const REQUEST_RESOURCE_SPANS: u32 = 1;
const RESOURCE_SPANS_RESOURCE: u32 = 1;
const RESOURCE_SPANS_SCOPE_SPANS: u32 = 2;
const SCOPE_SPANS_SPANS: u32 = 2;
const RESOURCE_ATTRIBUTES: u32 = 1;
const SPAN_TRACE_ID: u32 = 1;
const SPAN_START: u32 = 7;
const SPAN_END: u32 = 8;
const SPAN_ATTRIBUTES: u32 = 9;
const SPAN_STATUS: u32 = 15;
const STATUS_CODE: u32 = 3;
const KEY_VALUE_KEY: u32 = 1;
const KEY_VALUE_VALUE: u32 = 2;
const ANY_VALUE_STRING: u32 = 1;

/// The resource and scope a group of spans arrived under: every field of their `ResourceSpans`
/// but the scopes, and every field of their `ScopeSpans` but the spans, encoded.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Origin {
    pub resource_fields: Bytes,
    pub scope_fields: Bytes,
}

/// One encoded span (a `Span` message) and where it came from.
#[derive(Debug, Clone)]
pub struct BufferedSpan {
    pub origin: Arc<Origin>,
    pub bytes: Bytes,
}

fn trace_id_of(span: &[u8]) -> Result<TraceId, Malformed> {
    let mut id = [0u8; 16];
    for field in fields(span) {
        let field = field?;
        // A field repeated on the wire: the last one wins, as when decoding.
        if field.number == SPAN_TRACE_ID && field.wire_type == WIRE_LEN {
            id = [0u8; 16];
            let n = field.payload.len().min(16);
            id[..n].copy_from_slice(&field.payload[..n]);
        }
    }
    Ok(id)
}

/// The fields of `message` other than `except`, concatenated.
fn fields_except(message: &[u8], except: u32) -> Result<Bytes, Malformed> {
    let mut out = Vec::new();
    for field in fields(message) {
        let field = field?;
        if field.number != except || field.wire_type != WIRE_LEN {
            out.extend_from_slice(field.whole);
        }
    }
    Ok(Bytes::from(out))
}

/// The spans of an encoded `ExportTraceServiceRequest`, each with its trace id, sliced from
/// `request` without copying.
pub fn split_request(request: &Bytes) -> Result<Vec<(TraceId, BufferedSpan)>, Malformed> {
    let mut spans = Vec::new();
    for resource_spans in fields(request) {
        let resource_spans = resource_spans?;
        if resource_spans.number != REQUEST_RESOURCE_SPANS || resource_spans.wire_type != WIRE_LEN {
            continue;
        }
        let resource_fields = fields_except(resource_spans.payload, RESOURCE_SPANS_SCOPE_SPANS)?;
        for scope_spans in fields(resource_spans.payload) {
            let scope_spans = scope_spans?;
            if scope_spans.number != RESOURCE_SPANS_SCOPE_SPANS || scope_spans.wire_type != WIRE_LEN
            {
                continue;
            }
            let origin = Arc::new(Origin {
                resource_fields: resource_fields.clone(),
                scope_fields: fields_except(scope_spans.payload, SCOPE_SPANS_SPANS)?,
            });
            for span in fields(scope_spans.payload) {
                let span = span?;
                if span.number != SCOPE_SPANS_SPANS || span.wire_type != WIRE_LEN {
                    continue;
                }
                spans.push((
                    trace_id_of(span.payload)?,
                    BufferedSpan {
                        origin: origin.clone(),
                        bytes: request.slice_ref(span.payload),
                    },
                ));
            }
        }
    }
    Ok(spans)
}

/// What the policies read of one span.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpanSummary {
    pub start: u64,
    pub end: u64,
    /// The status code; 0 (UNSET) without a status.
    pub code: i32,
}

/// An attribute of a span or of its resource: its key and value, read in place.
pub type Attribute<'a> = (&'a [u8], Value<'a>);

fn fixed64(payload: &[u8]) -> u64 {
    payload.try_into().map(u64::from_le_bytes).unwrap_or(0)
}

fn push_attribute<'a>(key_value: &'a [u8], attributes: &mut Vec<Attribute<'a>>) {
    let mut key = None;
    let mut value = None;
    for field in fields(key_value).map_while(Result::ok) {
        match (field.number, field.wire_type) {
            (KEY_VALUE_KEY, WIRE_LEN) => key = Some(field.payload),
            (KEY_VALUE_VALUE, WIRE_LEN) => value = read_any_value(field.payload).ok().flatten(),
            _ => {}
        }
    }
    if let (Some(key), Some(value)) = (key, value) {
        attributes.push((key, value));
    }
}

/// Reads what the policies need from `spans`: one summary per span, and the attributes of
/// every span and of each resource they came under, in one list.
///
/// The request was checked when it was received; a field that does not parse anyway is left
/// out (read as absent) rather than failing the whole trace.
pub fn summarize<'a>(
    spans: &'a [BufferedSpan],
    summaries: &mut Vec<SpanSummary>,
    attributes: &mut Vec<Attribute<'a>>,
) {
    // Scopes of one resource entry share its encoded fields: look at each resource once.
    let mut resources_seen: Vec<*const u8> = Vec::new();
    for span in spans {
        let mut summary = SpanSummary::default();
        for field in fields(&span.bytes).map_while(Result::ok) {
            match (field.number, field.wire_type) {
                (SPAN_START, WIRE_I64) => summary.start = fixed64(field.payload),
                (SPAN_END, WIRE_I64) => summary.end = fixed64(field.payload),
                (SPAN_ATTRIBUTES, WIRE_LEN) => push_attribute(field.payload, attributes),
                (SPAN_STATUS, WIRE_LEN) => {
                    for status in fields(field.payload).map_while(Result::ok) {
                        if (status.number, status.wire_type) == (STATUS_CODE, WIRE_VARINT) {
                            summary.code = varint_of(status.payload).unwrap_or(0) as i32;
                        }
                    }
                }
                _ => {}
            }
        }
        summaries.push(summary);
        let resource = span.origin.resource_fields.as_ptr();
        if !resources_seen.contains(&resource) {
            resources_seen.push(resource);
            resource_attributes(&span.origin.resource_fields, attributes);
        }
    }
}

fn resource_attributes<'a>(resource_fields: &'a [u8], attributes: &mut Vec<Attribute<'a>>) {
    for field in fields(resource_fields).map_while(Result::ok) {
        if (field.number, field.wire_type) != (RESOURCE_SPANS_RESOURCE, WIRE_LEN) {
            continue;
        }
        for attribute in fields(field.payload).map_while(Result::ok) {
            if (attribute.number, attribute.wire_type) == (RESOURCE_ATTRIBUTES, WIRE_LEN) {
                push_attribute(attribute.payload, attributes);
            }
        }
    }
}

/// The encoded attribute field (`Span.attributes`) `key = "value"` (a string).
pub fn string_attribute_field(key: &str, value: &str) -> Vec<u8> {
    let mut any_value = Vec::new();
    write_len_field(&mut any_value, ANY_VALUE_STRING, value.as_bytes());
    let mut key_value = Vec::new();
    write_len_field(&mut key_value, KEY_VALUE_KEY, key.as_bytes());
    write_len_field(&mut key_value, KEY_VALUE_VALUE, &any_value);
    let mut field = Vec::new();
    write_len_field(&mut field, SPAN_ATTRIBUTES, &key_value);
    field
}

/// `span` without its attributes named `key`.
pub fn without_attribute(span: &Bytes, key: &str) -> Bytes {
    let named = |payload: &[u8]| {
        fields(payload).map_while(Result::ok).any(|f| {
            (f.number, f.wire_type) == (KEY_VALUE_KEY, WIRE_LEN) && f.payload == key.as_bytes()
        })
    };
    let mut found = false;
    for field in fields(span).map_while(Result::ok) {
        if (field.number, field.wire_type) == (SPAN_ATTRIBUTES, WIRE_LEN) && named(field.payload) {
            found = true;
            break;
        }
    }
    if !found {
        return span.clone();
    }
    let mut out = Vec::with_capacity(span.len());
    for field in fields(span).map_while(Result::ok) {
        if !((field.number, field.wire_type) == (SPAN_ATTRIBUTES, WIRE_LEN) && named(field.payload))
        {
            out.extend_from_slice(field.whole);
        }
    }
    Bytes::from(out)
}

/// A span on its way out, with the encoded attribute field to append to it, if any.
pub struct Released {
    pub span: BufferedSpan,
    pub extra: Option<Arc<[u8]>>,
}

/// Whether two origins came from the same resource entry (their scopes share its fields).
fn same_resource(a: &Origin, b: &Origin) -> bool {
    a.resource_fields.as_ptr() == b.resource_fields.as_ptr()
        && a.resource_fields.len() == b.resource_fields.len()
}

/// The encoding of an `ExportTraceServiceRequest` holding `spans`: one resource entry per
/// resource entry they arrived in, one scope entry per scope entry, in the order each first
/// appears.
pub fn encode_request(spans: Vec<Released>) -> Vec<u8> {
    // resource entry → its scope entries → their spans.
    let mut resources: Vec<Vec<(Arc<Origin>, Vec<Released>)>> = Vec::new();
    for released in spans {
        let origin = &released.span.origin;
        // Released traces come in order, and the spans of one trace mostly share an origin:
        // the group a span belongs to is nearly always among the last ones.
        let resource = resources
            .iter_mut()
            .rev()
            .find(|scopes| same_resource(&scopes[0].0, origin));
        match resource {
            Some(scopes) => match scopes
                .iter_mut()
                .rev()
                .find(|(o, _)| Arc::ptr_eq(o, origin))
            {
                Some((_, group)) => group.push(released),
                None => scopes.push((origin.clone(), vec![released])),
            },
            None => resources.push(vec![(origin.clone(), vec![released])]),
        }
    }
    let span_len = |r: &Released| r.span.bytes.len() + r.extra.as_ref().map_or(0, |e| e.len());
    let scope_len = |(origin, spans): &(Arc<Origin>, Vec<Released>)| {
        origin.scope_fields.len()
            + spans
                .iter()
                .map(|r| len_field_len(SCOPE_SPANS_SPANS, span_len(r)))
                .sum::<usize>()
    };
    let resource_len = |scopes: &Vec<(Arc<Origin>, Vec<Released>)>| {
        scopes[0].0.resource_fields.len()
            + scopes
                .iter()
                .map(|scope| len_field_len(RESOURCE_SPANS_SCOPE_SPANS, scope_len(scope)))
                .sum::<usize>()
    };
    let total = resources
        .iter()
        .map(|scopes| len_field_len(REQUEST_RESOURCE_SPANS, resource_len(scopes)))
        .sum();
    let mut out = Vec::with_capacity(total);
    for scopes in &resources {
        write_len_header(&mut out, REQUEST_RESOURCE_SPANS, resource_len(scopes));
        out.extend_from_slice(&scopes[0].0.resource_fields);
        for scope in scopes {
            write_len_header(&mut out, RESOURCE_SPANS_SCOPE_SPANS, scope_len(scope));
            out.extend_from_slice(&scope.0.scope_fields);
            for released in &scope.1 {
                write_len_header(&mut out, SCOPE_SPANS_SPANS, span_len(released));
                out.extend_from_slice(&released.span.bytes);
                if let Some(extra) = &released.extra {
                    out.extend_from_slice(extra);
                }
            }
        }
    }
    debug_assert_eq!(out.len(), total, "the sizes computed are the sizes written");
    out
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::{
        AnyValue, InstrumentationScope, KeyValue, any_value,
    };
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};
    use prost::Message;

    use super::*;

    fn kv(key: &str, value: &str) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue(value.into())),
            }),
            ..Default::default()
        }
    }

    fn request() -> ExportTraceServiceRequest {
        let span = |t: u8, name: &str| Span {
            trace_id: vec![t; 16],
            name: name.into(),
            start_time_unix_nano: 10,
            end_time_unix_nano: 20 + u64::from(t),
            attributes: vec![kv("a", name)],
            status: Some(Status {
                code: i32::from(t),
                ..Default::default()
            }),
            ..Default::default()
        };
        ExportTraceServiceRequest {
            resource_spans: vec![
                ResourceSpans {
                    resource: Some(Resource {
                        attributes: vec![kv("service.name", "one")],
                        ..Default::default()
                    }),
                    scope_spans: vec![
                        ScopeSpans {
                            scope: Some(InstrumentationScope {
                                name: "s1".into(),
                                ..Default::default()
                            }),
                            spans: vec![span(1, "x"), span(2, "y")],
                            schema_url: "u1".into(),
                        },
                        ScopeSpans {
                            spans: vec![span(1, "z")],
                            ..Default::default()
                        },
                    ],
                    schema_url: "r1".into(),
                },
                ResourceSpans {
                    resource: None,
                    scope_spans: vec![ScopeSpans {
                        spans: vec![span(2, "w")],
                        ..Default::default()
                    }],
                    ..Default::default()
                },
            ],
        }
    }

    #[test]
    fn split_then_encode_gives_the_request_back() {
        let original = request();
        let bytes = Bytes::from(original.encode_to_vec());
        let spans = split_request(&bytes).unwrap();
        let ids: Vec<u8> = spans.iter().map(|(id, _)| id[0]).collect();
        assert_eq!(ids, [1, 2, 1, 2]);
        // Zero-copy: the spans point into the request.
        assert!(spans.iter().all(|(_, s)| {
            let range = bytes.as_ptr_range();
            range.contains(&s.bytes.as_ptr())
        }));
        let released = spans
            .into_iter()
            .map(|(_, span)| Released { span, extra: None })
            .collect();
        let decoded =
            ExportTraceServiceRequest::decode(encode_request(released).as_slice()).unwrap();
        assert_eq!(decoded, original);
    }

    #[test]
    fn encoding_groups_spans_by_origin_and_appends_the_extra_attribute() {
        let bytes = Bytes::from(request().encode_to_vec());
        let mut spans: Vec<BufferedSpan> = split_request(&bytes)
            .unwrap()
            .into_iter()
            .map(|(_, s)| s)
            .collect();
        // Interleave the origins: x (s1), w (second resource), y (s1).
        spans.remove(2);
        spans.swap(1, 2);
        let extra: Arc<[u8]> = string_attribute_field("p", "errors").into();
        let released = spans
            .into_iter()
            .map(|span| Released {
                span,
                extra: Some(extra.clone()),
            })
            .collect();
        let decoded =
            ExportTraceServiceRequest::decode(encode_request(released).as_slice()).unwrap();
        assert_eq!(decoded.resource_spans.len(), 2);
        let names: Vec<Vec<&str>> = decoded
            .resource_spans
            .iter()
            .map(|rs| {
                rs.scope_spans[0]
                    .spans
                    .iter()
                    .map(|s| s.name.as_str())
                    .collect()
            })
            .collect();
        assert_eq!(names, [vec!["x", "y"], vec!["w"]]);
        assert_eq!(
            decoded.resource_spans[0].scope_spans[0]
                .scope
                .as_ref()
                .unwrap()
                .name,
            "s1"
        );
        assert_eq!(decoded.resource_spans[0].schema_url, "r1");
        for span in decoded
            .resource_spans
            .iter()
            .flat_map(|rs| &rs.scope_spans[0].spans)
        {
            assert_eq!(span.attributes.last(), Some(&kv("p", "errors")));
        }
    }

    #[test]
    fn summaries_and_attributes_are_read_in_place() {
        let bytes = Bytes::from(request().encode_to_vec());
        let spans: Vec<BufferedSpan> = split_request(&bytes)
            .unwrap()
            .into_iter()
            .map(|(_, s)| s)
            .collect();
        let mut summaries = Vec::new();
        let mut attributes = Vec::new();
        summarize(&spans, &mut summaries, &mut attributes);
        assert_eq!(
            summaries,
            [
                SpanSummary {
                    start: 10,
                    end: 21,
                    code: 1
                },
                SpanSummary {
                    start: 10,
                    end: 22,
                    code: 2
                },
                SpanSummary {
                    start: 10,
                    end: 21,
                    code: 1
                },
                SpanSummary {
                    start: 10,
                    end: 22,
                    code: 2
                },
            ]
        );
        let attributes: Vec<(String, String)> = attributes
            .iter()
            .map(|(k, v)| {
                let Value::String(v) = v else {
                    panic!("strings only")
                };
                (
                    String::from_utf8(k.to_vec()).unwrap(),
                    String::from_utf8(v.to_vec()).unwrap(),
                )
            })
            .collect();
        // Each span's attribute, and each resource once (the second resource has none).
        let expected: Vec<(String, String)> = [
            ("a", "x"),
            ("service.name", "one"),
            ("a", "y"),
            ("a", "z"),
            ("a", "w"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(attributes, expected);
    }

    #[test]
    fn without_attribute_removes_only_that_key() {
        let span = Span {
            name: "s".into(),
            attributes: vec![kv("keep", "1"), kv("drop", "2"), kv("keep2", "3")],
            ..Default::default()
        };
        let bytes = Bytes::from(span.encode_to_vec());
        let out = Span::decode(without_attribute(&bytes, "drop")).unwrap();
        assert_eq!(out.attributes, vec![kv("keep", "1"), kv("keep2", "3")]);
        let same = without_attribute(&bytes, "absent");
        assert_eq!(
            same.as_ptr(),
            bytes.as_ptr(),
            "no copy when there is nothing to remove"
        );
    }

    #[test]
    fn malformed_requests_are_errors_not_panics() {
        let good = request().encode_to_vec();
        for cut in 1..good.len() {
            let _ = split_request(&Bytes::copy_from_slice(&good[..cut]));
        }
        assert!(split_request(&Bytes::from_static(&[0x0a, 0x05, 0x12])).is_err());
    }
}
