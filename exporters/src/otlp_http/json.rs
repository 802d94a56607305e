//! OTLP/JSON encoding of export requests.
//!
//! opentelemetry-proto's serde implementation gets most of the OTLP/JSON mapping right (hex
//! trace and span ids, lowerCamelCase names, enums as integers, 64-bit integers as decimal
//! strings), but not all of it:
//! - a double that is NaN or infinite comes out as `null` (serde_json cannot write it as a
//!   number) wherever the field is a plain `f64`: data point values, exemplar values, histogram
//!   `sum`/`min`/`max`/`explicitBounds`, `zeroThreshold`, summary `sum`, attribute
//!   `doubleValue`. The protobuf JSON mapping writes them as the strings `"NaN"`, `"Infinity"`
//!   and `"-Infinity"`; a `null` loses the value, and some receivers drop the whole data point.
//! - an absent message field (`resource`, `scope`, `status`, an attribute's `value`) comes out
//!   as `null`. The mapping allows that, but receivers built on opentelemetry-proto's own serde
//!   treat `null` inside metric data points as the end of the data, so we leave the key out.
//!
//! So the request is serialized through [`NonFinite`], a serializer adapter that writes
//! non-finite doubles as their strings, into a `serde_json::Value` whose `null` members are
//! then removed.

use serde::Serialize;
use serde::ser::{
    SerializeMap, SerializeSeq, SerializeStruct, SerializeStructVariant, SerializeTuple,
    SerializeTupleStruct, SerializeTupleVariant, Serializer,
};
use serde_json::Value;
use sluice_pipeline::Request;

/// Encodes `request` as an OTLP/JSON document.
pub fn encode(request: &Request) -> Result<Vec<u8>, serde_json::Error> {
    let serializer = NonFinite(serde_json::value::Serializer);
    let mut value = match request {
        Request::Traces(r) => r.serialize(serializer)?,
        Request::Metrics(r) => r.serialize(serializer)?,
        Request::Logs(r) => r.serialize(serializer)?,
    };
    remove_null_members(&mut value);
    serde_json::to_vec(&value)
}

fn remove_null_members(value: &mut Value) {
    match value {
        Value::Object(map) => {
            map.retain(|_, v| !v.is_null());
            map.values_mut().for_each(remove_null_members);
        }
        Value::Array(items) => items.iter_mut().for_each(remove_null_members),
        _ => {}
    }
}

/// The protobuf JSON mapping's spelling of a double that is not a finite number.
fn non_finite_name(value: f64) -> &'static str {
    if value.is_nan() {
        "NaN"
    } else if value > 0.0 {
        "Infinity"
    } else {
        "-Infinity"
    }
}

/// Wraps a serializer (and every serializer it hands out for nested values) so that a
/// non-finite double is written as its protobuf JSON string; everything else passes through.
struct NonFinite<S>(S);

/// A value to be serialized through [`NonFinite`].
struct Wrap<'a, T: ?Sized>(&'a T);

impl<T: ?Sized + Serialize> Serialize for Wrap<'_, T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(NonFinite(serializer))
    }
}

macro_rules! forward {
    ($($method:ident($ty:ty)),* $(,)?) => {
        $(fn $method(self, v: $ty) -> Result<S::Ok, S::Error> {
            self.0.$method(v)
        })*
    };
}

impl<S: Serializer> Serializer for NonFinite<S> {
    type Ok = S::Ok;
    type Error = S::Error;
    type SerializeSeq = NonFinite<S::SerializeSeq>;
    type SerializeTuple = NonFinite<S::SerializeTuple>;
    type SerializeTupleStruct = NonFinite<S::SerializeTupleStruct>;
    type SerializeTupleVariant = NonFinite<S::SerializeTupleVariant>;
    type SerializeMap = NonFinite<S::SerializeMap>;
    type SerializeStruct = NonFinite<S::SerializeStruct>;
    type SerializeStructVariant = NonFinite<S::SerializeStructVariant>;

    forward!(
        serialize_bool(bool),
        serialize_i8(i8),
        serialize_i16(i16),
        serialize_i32(i32),
        serialize_i64(i64),
        serialize_i128(i128),
        serialize_u8(u8),
        serialize_u16(u16),
        serialize_u32(u32),
        serialize_u64(u64),
        serialize_u128(u128),
        serialize_char(char),
        serialize_str(&str),
        serialize_bytes(&[u8]),
        serialize_unit_struct(&'static str),
    );

    fn serialize_f32(self, v: f32) -> Result<S::Ok, S::Error> {
        self.serialize_f64(f64::from(v))
    }

    fn serialize_f64(self, v: f64) -> Result<S::Ok, S::Error> {
        if v.is_finite() {
            self.0.serialize_f64(v)
        } else {
            self.0.serialize_str(non_finite_name(v))
        }
    }

    fn serialize_none(self) -> Result<S::Ok, S::Error> {
        self.0.serialize_none()
    }

    fn serialize_some<T: ?Sized + Serialize>(self, value: &T) -> Result<S::Ok, S::Error> {
        self.0.serialize_some(&Wrap(value))
    }

    fn serialize_unit(self) -> Result<S::Ok, S::Error> {
        self.0.serialize_unit()
    }

    fn serialize_unit_variant(
        self,
        name: &'static str,
        index: u32,
        variant: &'static str,
    ) -> Result<S::Ok, S::Error> {
        self.0.serialize_unit_variant(name, index, variant)
    }

    fn serialize_newtype_struct<T: ?Sized + Serialize>(
        self,
        name: &'static str,
        value: &T,
    ) -> Result<S::Ok, S::Error> {
        self.0.serialize_newtype_struct(name, &Wrap(value))
    }

    fn serialize_newtype_variant<T: ?Sized + Serialize>(
        self,
        name: &'static str,
        index: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<S::Ok, S::Error> {
        self.0
            .serialize_newtype_variant(name, index, variant, &Wrap(value))
    }

    fn serialize_seq(self, len: Option<usize>) -> Result<Self::SerializeSeq, S::Error> {
        self.0.serialize_seq(len).map(NonFinite)
    }

    fn serialize_tuple(self, len: usize) -> Result<Self::SerializeTuple, S::Error> {
        self.0.serialize_tuple(len).map(NonFinite)
    }

    fn serialize_tuple_struct(
        self,
        name: &'static str,
        len: usize,
    ) -> Result<Self::SerializeTupleStruct, S::Error> {
        self.0.serialize_tuple_struct(name, len).map(NonFinite)
    }

    fn serialize_tuple_variant(
        self,
        name: &'static str,
        index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<Self::SerializeTupleVariant, S::Error> {
        self.0
            .serialize_tuple_variant(name, index, variant, len)
            .map(NonFinite)
    }

    fn serialize_map(self, len: Option<usize>) -> Result<Self::SerializeMap, S::Error> {
        self.0.serialize_map(len).map(NonFinite)
    }

    fn serialize_struct(
        self,
        name: &'static str,
        len: usize,
    ) -> Result<Self::SerializeStruct, S::Error> {
        self.0.serialize_struct(name, len).map(NonFinite)
    }

    fn serialize_struct_variant(
        self,
        name: &'static str,
        index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<Self::SerializeStructVariant, S::Error> {
        self.0
            .serialize_struct_variant(name, index, variant, len)
            .map(NonFinite)
    }

    fn is_human_readable(&self) -> bool {
        self.0.is_human_readable()
    }
}

impl<S: SerializeSeq> SerializeSeq for NonFinite<S> {
    type Ok = S::Ok;
    type Error = S::Error;

    fn serialize_element<T: ?Sized + Serialize>(&mut self, value: &T) -> Result<(), S::Error> {
        self.0.serialize_element(&Wrap(value))
    }

    fn end(self) -> Result<S::Ok, S::Error> {
        self.0.end()
    }
}

impl<S: SerializeTuple> SerializeTuple for NonFinite<S> {
    type Ok = S::Ok;
    type Error = S::Error;

    fn serialize_element<T: ?Sized + Serialize>(&mut self, value: &T) -> Result<(), S::Error> {
        self.0.serialize_element(&Wrap(value))
    }

    fn end(self) -> Result<S::Ok, S::Error> {
        self.0.end()
    }
}

impl<S: SerializeTupleStruct> SerializeTupleStruct for NonFinite<S> {
    type Ok = S::Ok;
    type Error = S::Error;

    fn serialize_field<T: ?Sized + Serialize>(&mut self, value: &T) -> Result<(), S::Error> {
        self.0.serialize_field(&Wrap(value))
    }

    fn end(self) -> Result<S::Ok, S::Error> {
        self.0.end()
    }
}

impl<S: SerializeTupleVariant> SerializeTupleVariant for NonFinite<S> {
    type Ok = S::Ok;
    type Error = S::Error;

    fn serialize_field<T: ?Sized + Serialize>(&mut self, value: &T) -> Result<(), S::Error> {
        self.0.serialize_field(&Wrap(value))
    }

    fn end(self) -> Result<S::Ok, S::Error> {
        self.0.end()
    }
}

impl<S: SerializeMap> SerializeMap for NonFinite<S> {
    type Ok = S::Ok;
    type Error = S::Error;

    fn serialize_key<T: ?Sized + Serialize>(&mut self, key: &T) -> Result<(), S::Error> {
        self.0.serialize_key(&Wrap(key))
    }

    fn serialize_value<T: ?Sized + Serialize>(&mut self, value: &T) -> Result<(), S::Error> {
        self.0.serialize_value(&Wrap(value))
    }

    fn serialize_entry<K: ?Sized + Serialize, V: ?Sized + Serialize>(
        &mut self,
        key: &K,
        value: &V,
    ) -> Result<(), S::Error> {
        self.0.serialize_entry(&Wrap(key), &Wrap(value))
    }

    fn end(self) -> Result<S::Ok, S::Error> {
        self.0.end()
    }
}

impl<S: SerializeStruct> SerializeStruct for NonFinite<S> {
    type Ok = S::Ok;
    type Error = S::Error;

    fn serialize_field<T: ?Sized + Serialize>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), S::Error> {
        self.0.serialize_field(key, &Wrap(value))
    }

    fn skip_field(&mut self, key: &'static str) -> Result<(), S::Error> {
        self.0.skip_field(key)
    }

    fn end(self) -> Result<S::Ok, S::Error> {
        self.0.end()
    }
}

impl<S: SerializeStructVariant> SerializeStructVariant for NonFinite<S> {
    type Ok = S::Ok;
    type Error = S::Error;

    fn serialize_field<T: ?Sized + Serialize>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), S::Error> {
        self.0.serialize_field(key, &Wrap(value))
    }

    fn skip_field(&mut self, key: &'static str) -> Result<(), S::Error> {
        self.0.skip_field(key)
    }

    fn end(self) -> Result<S::Ok, S::Error> {
        self.0.end()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::test_data;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::any_value;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
    use serde_json::json;

    fn encode_value(request: Request) -> Value {
        serde_json::from_slice(&encode(&request).unwrap()).unwrap()
    }

    /// Checks what a strict OTLP/JSON receiver checks: every key lowerCamelCase, no `null`, ids as hex of the right length, 64-bit integers as
    /// decimal strings, enums as integers, doubles as numbers or the special strings.
    pub(crate) fn assert_strict_otlp_json(value: &Value) {
        check(value, "$");
    }

    const HEX_IDS: &[(&str, usize)] = &[("traceId", 32), ("spanId", 16), ("parentSpanId", 16)];
    const INT64_FIELDS: &[&str] = &[
        "startTimeUnixNano",
        "endTimeUnixNano",
        "timeUnixNano",
        "observedTimeUnixNano",
        "count",
        "zeroCount",
        "asInt",
        "intValue",
        "bucketCounts",
    ];
    const ENUM_FIELDS: &[&str] = &["kind", "code", "severityNumber", "aggregationTemporality"];
    const DOUBLE_FIELDS: &[&str] = &[
        "asDouble",
        "doubleValue",
        "sum",
        "min",
        "max",
        "explicitBounds",
        "zeroThreshold",
        "quantile",
        "value",
    ];

    fn check(value: &Value, at: &str) {
        match value {
            Value::Null => panic!("null at {at}"),
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    check(item, &format!("{at}[{i}]"));
                }
            }
            Value::Object(map) => {
                for (key, v) in map {
                    let here = format!("{at}.{key}");
                    assert!(
                        key.chars().next().is_some_and(|c| c.is_ascii_lowercase())
                            && key.chars().all(|c| c.is_ascii_alphanumeric()),
                        "{here}: key is not lowerCamelCase"
                    );
                    if let Some((_, len)) = HEX_IDS.iter().find(|(name, _)| name == key) {
                        let text = v
                            .as_str()
                            .unwrap_or_else(|| panic!("{here} is not a string"));
                        assert!(
                            (text.is_empty() && key == "parentSpanId") || text.len() == *len,
                            "{here}: {text:?} is not {len} hex digits"
                        );
                        assert!(
                            text.chars()
                                .all(|c| c.is_ascii_hexdigit() && !c.is_uppercase()),
                            "{here}: {text:?} is not lower-case hex"
                        );
                    } else if INT64_FIELDS.contains(&key.as_str()) {
                        let items = match v {
                            Value::Array(items) => items.iter().collect(),
                            other => vec![other],
                        };
                        for item in items {
                            let text = item
                                .as_str()
                                .unwrap_or_else(|| panic!("{here}: {item} is not a string"));
                            assert!(
                                text.parse::<i128>().is_ok(),
                                "{here}: {text:?} is not decimal"
                            );
                        }
                    } else if ENUM_FIELDS.contains(&key.as_str()) {
                        assert!(v.is_i64(), "{here}: enum {v} is not an integer");
                    } else if DOUBLE_FIELDS.contains(&key.as_str()) && !v.is_object() {
                        let items = match v {
                            Value::Array(items) => items.iter().collect(),
                            other => vec![other],
                        };
                        for item in items {
                            assert!(
                                item.is_number()
                                    || matches!(
                                        item.as_str(),
                                        Some("NaN" | "Infinity" | "-Infinity")
                                    ),
                                "{here}: {item} is not a double"
                            );
                        }
                    } else {
                        check(v, &here);
                    }
                }
            }
            _ => {}
        }
    }

    #[test]
    fn every_signal_encodes_to_strict_otlp_json() {
        for request in [
            Request::Traces(test_data::traces_request()),
            Request::Metrics(test_data::metrics_request()),
            Request::Logs(test_data::logs_request()),
        ] {
            assert_strict_otlp_json(&encode_value(request));
        }
    }

    #[test]
    fn traces_and_logs_decode_back_to_the_same_request() {
        let traces = test_data::traces_request();
        let json = encode(&Request::Traces(traces.clone())).unwrap();
        assert_eq!(
            serde_json::from_slice::<ExportTraceServiceRequest>(&json).unwrap(),
            traces
        );
        let logs = test_data::logs_request();
        let json = encode(&Request::Logs(logs.clone())).unwrap();
        assert_eq!(
            serde_json::from_slice::<
                opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest,
            >(&json)
            .unwrap(),
            logs
        );
    }

    #[test]
    fn ids_are_hex_and_int64_are_decimal_strings() {
        let value = encode_value(Request::Traces(test_data::traces_request()));
        let span = &value["resourceSpans"][0]["scopeSpans"][0]["spans"][0];
        assert_eq!(span["traceId"], "5b8efff798038103d269b633813fc60c");
        assert_eq!(span["spanId"], "eee19b7ec3c1b174");
        assert_eq!(span["parentSpanId"], "eee19b7ec3c1b173");
        assert_eq!(span["startTimeUnixNano"], "1704067200000000123");
        assert_eq!(span["kind"], 2);
        assert_eq!(
            span["status"],
            json!({"message": "upstream failed", "code": 2})
        );
        assert_eq!(
            span["attributes"][2],
            json!({"key": "int", "value": {"intValue": "-9007199254740993"}})
        );
        assert_eq!(
            span["attributes"][4],
            json!({"key": "bytes", "value": {"bytesValue": "AAEC/w=="}})
        );
    }

    #[test]
    fn non_finite_doubles_are_written_as_their_protobuf_json_strings() {
        let value = encode_value(Request::Metrics(test_data::metrics_request()));
        let metrics = &value["resourceMetrics"][0]["scopeMetrics"][0]["metrics"];
        let gauge = &metrics[0]["gauge"]["dataPoints"];
        assert_eq!(gauge[0]["asDouble"], 1.5);
        assert_eq!(gauge[1]["asDouble"], "NaN");
        assert_eq!(gauge[2]["asDouble"], "-Infinity");
        assert_eq!(
            metrics[1]["sum"]["dataPoints"][0]["asInt"],
            "9007199254740993"
        );
        let histogram = &metrics[2]["histogram"]["dataPoints"][0];
        assert_eq!(histogram["explicitBounds"], json!(["-Infinity", 10.0]));
        assert_eq!(histogram["min"], "-Infinity");
        assert_eq!(histogram["max"], "Infinity");
        assert_eq!(histogram["count"], "9007199254740993");
        assert_eq!(
            histogram["bucketCounts"],
            json!(["1", "9007199254740992", "0"])
        );
        assert_eq!(
            metrics[3]["exponentialHistogram"]["dataPoints"][0]["sum"],
            "NaN"
        );
        let summary = &metrics[4]["summary"]["dataPoints"][0];
        assert_eq!(summary["sum"], "Infinity");
        assert_eq!(summary["quantileValues"][1]["value"], "NaN");
    }

    #[test]
    fn non_finite_attribute_double_is_a_string_not_null() {
        let mut request = test_data::traces_request();
        request.resource_spans[0].scope_spans[0].spans[0].attributes = vec![test_data::kv(
            "ratio",
            any_value::Value::DoubleValue(f64::INFINITY),
        )];
        let value = encode_value(Request::Traces(request));
        assert_eq!(
            value["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["attributes"][0]["value"],
            json!({"doubleValue": "Infinity"})
        );
    }

    #[test]
    fn absent_messages_are_left_out_instead_of_null() {
        let request = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: None,
                scope_spans: vec![ScopeSpans {
                    scope: None,
                    spans: vec![Span {
                        status: None,
                        attributes: vec![opentelemetry_proto::tonic::common::v1::KeyValue {
                            key: "empty".into(),
                            value: None,
                            ..Default::default()
                        }],
                        ..Default::default()
                    }],
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            }],
        };
        let value = encode_value(Request::Traces(request));
        let resource_spans = &value["resourceSpans"][0];
        assert!(resource_spans.get("resource").is_none(), "{value}");
        assert!(
            resource_spans["scopeSpans"][0].get("scope").is_none(),
            "{value}"
        );
        let span = &resource_spans["scopeSpans"][0]["spans"][0];
        assert!(span.get("status").is_none(), "{value}");
        assert_eq!(span["attributes"][0], json!({"key": "empty"}));
    }
}
