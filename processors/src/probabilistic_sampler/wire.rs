//! Filtering items out of an encoded OTLP request without decoding it.
//!
//! Sampling keeps or drops whole spans and log records and changes nothing inside them, so the
//! sampler works on the protobuf encoding: it walks the request down to each item, reads the
//! few fields the decision needs (the trace id and one or two attributes) in place, and copies
//! the bytes of the items it keeps. Decoding and re-encoding every item would cost several
//! times more than the decision itself, and a request whose items are all kept is passed on
//! as it came, without a copy.
//!
//! The request was checked by the receiver (`Batch::from_encoded`), but this walker still
//! checks every length it follows and returns an error rather than panic on any input.

use bytes::Bytes;

use crate::otlp_wire::{Malformed, Value, WIRE_LEN, fields, read_any_value, write_len_field};

/// Field numbers of the OTLP messages the walker goes through. The trace and log shapes are
/// the same down to the item: `Export*ServiceRequest { 1: repeated Resource* }`,
/// `Resource* { 2: repeated Scope* }`, `Scope* { 2: repeated item }`.
const REQUEST_RESOURCES: u32 = 1;
const RESOURCE_SCOPES: u32 = 2;
const SCOPE_ITEMS: u32 = 2;

/// Where the trace id and attributes are in an item.
#[derive(Debug, Clone, Copy)]
pub struct ItemFields {
    pub trace_id: u32,
    pub attributes: u32,
}

/// `Span { 1: trace_id, 9: attributes }`.
pub const SPAN: ItemFields = ItemFields {
    trace_id: 1,
    attributes: 9,
};

/// `LogRecord { 9: trace_id, 6: attributes }`.
pub const LOG_RECORD: ItemFields = ItemFields {
    trace_id: 9,
    attributes: 6,
};

/// What the decision reads from one item.
#[derive(Debug, Default, Clone, Copy)]
pub struct ItemView<'a> {
    /// The trace id field's bytes (empty when absent).
    pub trace_id: &'a [u8],
    /// The value of each attribute asked for, in the order asked (the first occurrence of the
    /// key, as OTLP consumers read duplicated keys).
    pub attributes: [Option<Value<'a>>; 2],
}

fn read_item<'a>(
    bytes: &'a [u8],
    shape: ItemFields,
    keys: [Option<&str>; 2],
) -> Result<ItemView<'a>, Malformed> {
    let mut view = ItemView::default();
    for field in fields(bytes) {
        let field = field?;
        if field.wire_type != WIRE_LEN {
            continue;
        }
        if field.number == shape.trace_id {
            view.trace_id = field.payload;
        } else if field.number == shape.attributes && keys.iter().any(Option::is_some) {
            let mut key = None;
            let mut value = None;
            for kv in fields(field.payload) {
                let kv = kv?;
                match (kv.number, kv.wire_type) {
                    (1, WIRE_LEN) => key = Some(kv.payload),
                    (2, WIRE_LEN) => value = Some(kv.payload),
                    _ => {}
                }
            }
            let Some(key) = key else { continue };
            for (slot, wanted) in view.attributes.iter_mut().zip(keys) {
                if slot.is_none() && wanted.is_some_and(|w| w.as_bytes() == key) {
                    *slot = match value {
                        Some(v) => read_any_value(v)?,
                        None => None,
                    };
                }
            }
        }
    }
    Ok(view)
}

/// The outcome of filtering one message.
enum Filtered {
    /// Every item is kept: the message's bytes can be copied as they are.
    All,
    /// No item is kept (or there was none): the message is left out.
    Nothing,
    /// Some items are kept: the message re-encoded with only those.
    Some(Vec<u8>),
}

/// Counts of what a filter kept and dropped.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub kept: usize,
    pub dropped: usize,
}

/// The encoded request with only the items `keep` accepts, and what was kept and dropped.
///
/// Resource and scope entries left without items are removed; everything else (resources,
/// scopes, schema URLs, unknown fields) is copied as it is. When every item is kept the
/// returned bytes are `request` itself.
pub fn filter_request(
    request: &Bytes,
    shape: ItemFields,
    keys: [Option<&str>; 2],
    mut keep: impl FnMut(&ItemView<'_>) -> bool,
) -> Result<(Bytes, Counts), Malformed> {
    let mut counts = Counts::default();
    let mut decide = |item: &[u8]| -> Result<bool, Malformed> {
        let view = read_item(item, shape, keys)?;
        let kept = keep(&view);
        if kept {
            counts.kept += 1;
        } else {
            counts.dropped += 1;
        }
        Ok(kept)
    };
    let filtered = filter_message(request, REQUEST_RESOURCES, &mut |resource| {
        filter_message(resource, RESOURCE_SCOPES, &mut |scope| {
            filter_message(scope, SCOPE_ITEMS, &mut |item| {
                Ok(if decide(item)? {
                    Filtered::All
                } else {
                    Filtered::Nothing
                })
            })
        })
    })?;
    let bytes = match filtered {
        Filtered::All => request.clone(),
        // A request left without resources is the empty encoding.
        Filtered::Nothing => Bytes::new(),
        Filtered::Some(bytes) => Bytes::from(bytes),
    };
    Ok((bytes, counts))
}

/// Filters the repeated field `children` of a message through `child`, copying every other
/// field. The output buffer is only started at the first child that is not kept whole, so a
/// message whose children are all kept costs no copy.
fn filter_message(
    message: &[u8],
    children: u32,
    child: &mut dyn FnMut(&[u8]) -> Result<Filtered, Malformed>,
) -> Result<Filtered, Malformed> {
    let mut out: Option<Vec<u8>> = None;
    let mut seen = 0usize;
    let mut kept = 0usize;
    for field in fields(message) {
        let field = field?;
        if field.number != children || field.wire_type != WIRE_LEN {
            if let Some(out) = &mut out {
                out.extend_from_slice(field.whole);
            }
            continue;
        }
        seen += 1;
        match child(field.payload)? {
            Filtered::All => {
                kept += 1;
                if let Some(out) = &mut out {
                    out.extend_from_slice(field.whole);
                }
            }
            changed => {
                let out = out.get_or_insert_with(|| {
                    // Everything before this field is kept as it is.
                    let before = field.whole.as_ptr() as usize - message.as_ptr() as usize;
                    let mut out = Vec::with_capacity(message.len());
                    out.extend_from_slice(&message[..before]);
                    out
                });
                if let Filtered::Some(bytes) = changed {
                    kept += 1;
                    write_len_field(out, children, &bytes);
                }
            }
        }
    }
    Ok(match out {
        None if seen == 0 || kept > 0 => Filtered::All,
        None => Filtered::Nothing,
        Some(_) if kept == 0 => Filtered::Nothing,
        Some(out) => Filtered::Some(out),
    })
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
    use prost::Message;

    use super::*;

    fn kv(key: &str, value: any_value::Value) -> KeyValue {
        KeyValue {
            key: key.to_string(),
            value: Some(AnyValue { value: Some(value) }),
            ..Default::default()
        }
    }

    fn span(name: &str, trace: u8) -> Span {
        Span {
            name: name.to_string(),
            trace_id: vec![trace; 16],
            attributes: vec![
                kv("s", any_value::Value::StringValue("text".into())),
                kv("i", any_value::Value::IntValue(-7)),
                kv("d", any_value::Value::DoubleValue(0.25)),
                kv("b", any_value::Value::BoolValue(true)),
            ],
            ..Default::default()
        }
    }

    fn request() -> ExportTraceServiceRequest {
        let resource = |name: &str| Resource {
            attributes: vec![kv(
                "service.name",
                any_value::Value::StringValue(name.into()),
            )],
            ..Default::default()
        };
        ExportTraceServiceRequest {
            resource_spans: vec![
                ResourceSpans {
                    resource: Some(resource("a")),
                    scope_spans: vec![
                        ScopeSpans {
                            spans: vec![span("a1", 1), span("a2", 2)],
                            schema_url: "scope-a".into(),
                            ..Default::default()
                        },
                        ScopeSpans {
                            spans: vec![span("a3", 2)],
                            ..Default::default()
                        },
                    ],
                    schema_url: "res-a".into(),
                },
                ResourceSpans {
                    resource: Some(resource("b")),
                    scope_spans: vec![ScopeSpans {
                        spans: vec![span("b1", 1)],
                        ..Default::default()
                    }],
                    ..Default::default()
                },
            ],
        }
    }

    fn filter(keep_trace: u8) -> (ExportTraceServiceRequest, Counts) {
        let bytes = Bytes::from(request().encode_to_vec());
        let (out, counts) =
            filter_request(&bytes, SPAN, [None, None], |v| v.trace_id[0] == keep_trace).unwrap();
        (ExportTraceServiceRequest::decode(out).unwrap(), counts)
    }

    #[test]
    fn filtering_keeps_exactly_the_decoded_request_minus_dropped_items() {
        let (out, counts) = filter(2);
        assert_eq!(
            counts,
            Counts {
                kept: 2,
                dropped: 2
            }
        );
        let mut expected = request();
        expected.resource_spans[0].scope_spans[0].spans.remove(0);
        expected.resource_spans.remove(1);
        assert_eq!(out, expected);

        let (out, counts) = filter(1);
        assert_eq!(
            counts,
            Counts {
                kept: 2,
                dropped: 2
            }
        );
        let mut expected = request();
        expected.resource_spans[0].scope_spans[0].spans.remove(1);
        expected.resource_spans[0].scope_spans.remove(1);
        assert_eq!(out, expected);
    }

    #[test]
    fn keeping_everything_returns_the_same_bytes_without_a_copy() {
        let bytes = Bytes::from(request().encode_to_vec());
        let (out, counts) = filter_request(&bytes, SPAN, [None, None], |_| true).unwrap();
        assert_eq!(
            counts,
            Counts {
                kept: 4,
                dropped: 0
            }
        );
        assert_eq!(out.as_ptr(), bytes.as_ptr());
        let (out, counts) = filter_request(&bytes, SPAN, [None, None], |_| false).unwrap();
        assert_eq!(
            counts,
            Counts {
                kept: 0,
                dropped: 4
            }
        );
        assert!(out.is_empty());
    }

    #[test]
    fn attributes_are_read_in_place_with_their_types() {
        let bytes = Bytes::from(request().encode_to_vec());
        for (key, expected) in [
            ("s", Value::String(b"text")),
            ("i", Value::Int(-7)),
            ("d", Value::Double(0.25)),
            ("b", Value::Bool(true)),
        ] {
            let mut seen = Vec::new();
            filter_request(&bytes, SPAN, [Some(key), Some("missing")], |v| {
                seen.push(v.attributes == [Some(expected), None]);
                true
            })
            .unwrap();
            assert_eq!(seen, [true; 4], "{key}");
        }
    }

    #[test]
    fn malformed_input_is_an_error_not_a_panic() {
        let good = request().encode_to_vec();
        for cut in 1..good.len() {
            let bytes = Bytes::copy_from_slice(&good[..cut]);
            // Either an error or some filtered output; never a panic.
            let _ = filter_request(&bytes, SPAN, [Some("s"), None], |_| false);
        }
        let garbage = Bytes::from_static(&[0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f, 1, 2]);
        assert!(filter_request(&garbage, SPAN, [None, None], |_| true).is_err());
        let bad_wire_type = Bytes::from_static(&[0x0b, 0x00]);
        assert!(filter_request(&bad_wire_type, SPAN, [None, None], |_| true).is_err());
    }
}
