//! The walker checked against prost: on random requests, on mutations of them, and on
//! hand-made edge cases; and splitting checked at every cut point.

use bytes::Bytes;
use opentelemetry_proto::tonic::collector::{
    logs::v1::ExportLogsServiceRequest, metrics::v1::ExportMetricsServiceRequest,
    trace::v1::ExportTraceServiceRequest,
};
use opentelemetry_proto::tonic::common::v1::{
    AnyValue, ArrayValue, EntityRef, InstrumentationScope, KeyValue, KeyValueList, any_value,
};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::metrics::v1::{
    Exemplar, ExponentialHistogram, ExponentialHistogramDataPoint, Gauge, Histogram,
    HistogramDataPoint, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum, Summary,
    SummaryDataPoint, exemplar, exponential_histogram_data_point::Buckets, metric::Data,
    number_data_point, summary_data_point::ValueAtQuantile,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status, span};
use prost::Message;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::schema::{ALL, Kind};
use super::validate_and_count;
use crate::batch::{Batch, Request};
use crate::signal::Signal;

/// Random OTLP requests, covering every message type and field of the schemas.
struct Gen {
    rng: StdRng,
    /// The most elements a generated list has.
    size: usize,
}

impl Gen {
    fn new(seed: u64, size: usize) -> Gen {
        Gen {
            rng: StdRng::seed_from_u64(seed),
            size,
        }
    }

    fn len(&mut self) -> usize {
        self.rng.random_range(0..=self.size)
    }

    fn chance(&mut self, p: f64) -> bool {
        self.rng.random_bool(p)
    }

    fn string(&mut self) -> String {
        const CHARS: &[char] = &['a', 'k', 'z', ' ', '.', 'é', 'ß', '日', '本', '🦀'];
        let len = self.rng.random_range(0..8);
        (0..len)
            .map(|_| CHARS[self.rng.random_range(0..CHARS.len())])
            .collect()
    }

    fn bytes(&mut self, max: usize) -> Vec<u8> {
        let len = self.rng.random_range(0..=max);
        (0..len).map(|_| self.rng.random()).collect()
    }

    fn any_value(&mut self, depth: usize) -> AnyValue {
        use any_value::Value;
        let choices = if depth == 0 { 7 } else { 9 };
        let value = match self.rng.random_range(0..choices) {
            0 => None,
            1 => Some(Value::StringValue(self.string())),
            2 => Some(Value::BoolValue(self.rng.random())),
            3 => Some(Value::IntValue(self.rng.random())),
            4 => Some(Value::DoubleValue(self.rng.random())),
            5 => Some(Value::BytesValue(self.bytes(6))),
            6 => Some(Value::StringValueStrindex(self.rng.random())),
            7 => Some(Value::ArrayValue(ArrayValue {
                values: (0..self.rng.random_range(0..3))
                    .map(|_| self.any_value(depth - 1))
                    .collect(),
            })),
            _ => Some(Value::KvlistValue(KeyValueList {
                values: (0..self.rng.random_range(0..3))
                    .map(|_| self.key_value(depth - 1))
                    .collect(),
            })),
        };
        AnyValue { value }
    }

    fn key_value(&mut self, depth: usize) -> KeyValue {
        KeyValue {
            key: self.string(),
            value: self.chance(0.9).then(|| self.any_value(depth)),
            key_strindex: if self.chance(0.1) {
                self.rng.random()
            } else {
                0
            },
        }
    }

    fn attributes(&mut self) -> Vec<KeyValue> {
        (0..self.rng.random_range(0..4))
            .map(|_| self.key_value(2))
            .collect()
    }

    fn resource(&mut self) -> Option<Resource> {
        self.chance(0.8).then(|| Resource {
            attributes: self.attributes(),
            dropped_attributes_count: self.rng.random_range(0..3),
            entity_refs: (0..self.rng.random_range(0..2))
                .map(|_| EntityRef {
                    schema_url: self.string(),
                    r#type: self.string(),
                    id_keys: vec![self.string(); self.rng.random_range(0..3)],
                    description_keys: vec![self.string(); self.rng.random_range(0..2)],
                })
                .collect(),
        })
    }

    fn scope(&mut self) -> Option<InstrumentationScope> {
        self.chance(0.8).then(|| InstrumentationScope {
            name: self.string(),
            version: self.string(),
            attributes: self.attributes(),
            dropped_attributes_count: self.rng.random_range(0..3),
        })
    }

    fn span(&mut self) -> Span {
        Span {
            trace_id: self.bytes(16),
            span_id: self.bytes(8),
            trace_state: self.string(),
            parent_span_id: self.bytes(8),
            flags: self.rng.random(),
            name: self.string(),
            kind: self.rng.random_range(0..6),
            start_time_unix_nano: self.rng.random(),
            end_time_unix_nano: self.rng.random(),
            attributes: self.attributes(),
            dropped_attributes_count: self.rng.random_range(0..3),
            events: (0..self.rng.random_range(0..3))
                .map(|_| span::Event {
                    time_unix_nano: self.rng.random(),
                    name: self.string(),
                    attributes: self.attributes(),
                    dropped_attributes_count: self.rng.random_range(0..3),
                })
                .collect(),
            dropped_events_count: self.rng.random_range(0..3),
            links: (0..self.rng.random_range(0..2))
                .map(|_| span::Link {
                    trace_id: self.bytes(16),
                    span_id: self.bytes(8),
                    trace_state: self.string(),
                    attributes: self.attributes(),
                    dropped_attributes_count: self.rng.random_range(0..3),
                    flags: self.rng.random(),
                })
                .collect(),
            dropped_links_count: self.rng.random_range(0..3),
            status: self.chance(0.5).then(|| Status {
                message: self.string(),
                code: self.rng.random_range(0..3),
            }),
        }
    }

    fn traces(&mut self) -> ExportTraceServiceRequest {
        ExportTraceServiceRequest {
            resource_spans: (0..self.len())
                .map(|_| ResourceSpans {
                    resource: self.resource(),
                    scope_spans: (0..self.len())
                        .map(|_| ScopeSpans {
                            scope: self.scope(),
                            spans: (0..self.len()).map(|_| self.span()).collect(),
                            schema_url: self.string(),
                        })
                        .collect(),
                    schema_url: self.string(),
                })
                .collect(),
        }
    }

    fn exemplars(&mut self) -> Vec<Exemplar> {
        (0..self.rng.random_range(0..2))
            .map(|_| Exemplar {
                filtered_attributes: self.attributes(),
                time_unix_nano: self.rng.random(),
                span_id: self.bytes(8),
                trace_id: self.bytes(16),
                value: match self.rng.random_range(0..3) {
                    0 => None,
                    1 => Some(exemplar::Value::AsDouble(self.rng.random())),
                    _ => Some(exemplar::Value::AsInt(self.rng.random())),
                },
            })
            .collect()
    }

    fn number_points(&mut self) -> Vec<NumberDataPoint> {
        (0..self.len())
            .map(|_| NumberDataPoint {
                attributes: self.attributes(),
                start_time_unix_nano: self.rng.random(),
                time_unix_nano: self.rng.random(),
                exemplars: self.exemplars(),
                flags: self.rng.random_range(0..2),
                value: match self.rng.random_range(0..3) {
                    0 => None,
                    1 => Some(number_data_point::Value::AsDouble(self.rng.random())),
                    _ => Some(number_data_point::Value::AsInt(self.rng.random())),
                },
            })
            .collect()
    }

    fn optional_double(&mut self) -> Option<f64> {
        self.chance(0.5).then(|| self.rng.random())
    }

    fn buckets(&mut self) -> Option<Buckets> {
        self.chance(0.7).then(|| Buckets {
            offset: self.rng.random_range(-5..5),
            bucket_counts: (0..self.rng.random_range(0..4))
                .map(|_| {
                    let bits = self.rng.random_range(0..64);
                    self.rng.random::<u64>() >> bits
                })
                .collect(),
        })
    }

    fn metric(&mut self) -> Metric {
        let data = match self.rng.random_range(0..6) {
            0 => None,
            1 => Some(Data::Gauge(Gauge {
                data_points: self.number_points(),
            })),
            2 => Some(Data::Sum(Sum {
                data_points: self.number_points(),
                aggregation_temporality: self.rng.random_range(0..3),
                is_monotonic: self.rng.random(),
            })),
            3 => Some(Data::Histogram(Histogram {
                data_points: (0..self.len())
                    .map(|_| {
                        let buckets = self.rng.random_range(0..4);
                        HistogramDataPoint {
                            attributes: self.attributes(),
                            start_time_unix_nano: self.rng.random(),
                            time_unix_nano: self.rng.random(),
                            count: self.rng.random(),
                            sum: self.optional_double(),
                            bucket_counts: (0..buckets).map(|_| self.rng.random()).collect(),
                            explicit_bounds: (0..buckets).map(|_| self.rng.random()).collect(),
                            exemplars: self.exemplars(),
                            flags: self.rng.random_range(0..2),
                            min: self.optional_double(),
                            max: self.optional_double(),
                        }
                    })
                    .collect(),
                aggregation_temporality: self.rng.random_range(0..3),
            })),
            4 => Some(Data::ExponentialHistogram(ExponentialHistogram {
                data_points: (0..self.len())
                    .map(|_| ExponentialHistogramDataPoint {
                        attributes: self.attributes(),
                        start_time_unix_nano: self.rng.random(),
                        time_unix_nano: self.rng.random(),
                        count: self.rng.random(),
                        sum: self.optional_double(),
                        scale: self.rng.random_range(-10..10),
                        zero_count: self.rng.random(),
                        positive: self.buckets(),
                        negative: self.buckets(),
                        flags: self.rng.random_range(0..2),
                        exemplars: self.exemplars(),
                        min: self.optional_double(),
                        max: self.optional_double(),
                        zero_threshold: self.rng.random(),
                    })
                    .collect(),
                aggregation_temporality: self.rng.random_range(0..3),
            })),
            _ => Some(Data::Summary(Summary {
                data_points: (0..self.len())
                    .map(|_| SummaryDataPoint {
                        attributes: self.attributes(),
                        start_time_unix_nano: self.rng.random(),
                        time_unix_nano: self.rng.random(),
                        count: self.rng.random(),
                        sum: self.rng.random(),
                        quantile_values: (0..self.rng.random_range(0..3))
                            .map(|_| ValueAtQuantile {
                                quantile: self.rng.random(),
                                value: self.rng.random(),
                            })
                            .collect(),
                        flags: self.rng.random_range(0..2),
                    })
                    .collect(),
            })),
        };
        Metric {
            name: self.string(),
            description: self.string(),
            unit: self.string(),
            metadata: self.attributes(),
            data,
        }
    }

    fn metrics(&mut self) -> ExportMetricsServiceRequest {
        ExportMetricsServiceRequest {
            resource_metrics: (0..self.len())
                .map(|_| ResourceMetrics {
                    resource: self.resource(),
                    scope_metrics: (0..self.len())
                        .map(|_| ScopeMetrics {
                            scope: self.scope(),
                            metrics: (0..self.len()).map(|_| self.metric()).collect(),
                            schema_url: self.string(),
                        })
                        .collect(),
                    schema_url: self.string(),
                })
                .collect(),
        }
    }

    fn log_record(&mut self) -> LogRecord {
        LogRecord {
            time_unix_nano: self.rng.random(),
            observed_time_unix_nano: self.rng.random(),
            severity_number: self.rng.random_range(0..25),
            severity_text: self.string(),
            body: self.chance(0.8).then(|| self.any_value(3)),
            attributes: self.attributes(),
            dropped_attributes_count: self.rng.random_range(0..3),
            flags: self.rng.random(),
            trace_id: self.bytes(16),
            span_id: self.bytes(8),
            event_name: self.string(),
        }
    }

    fn logs(&mut self) -> ExportLogsServiceRequest {
        ExportLogsServiceRequest {
            resource_logs: (0..self.len())
                .map(|_| ResourceLogs {
                    resource: self.resource(),
                    scope_logs: (0..self.len())
                        .map(|_| ScopeLogs {
                            scope: self.scope(),
                            log_records: (0..self.len()).map(|_| self.log_record()).collect(),
                            schema_url: self.string(),
                        })
                        .collect(),
                    schema_url: self.string(),
                })
                .collect(),
        }
    }

    fn request(&mut self, signal: Signal) -> Request {
        match signal {
            Signal::Traces => Request::Traces(self.traces()),
            Signal::Metrics => Request::Metrics(self.metrics()),
            Signal::Logs => Request::Logs(self.logs()),
        }
    }

    /// A random protobuf message that ignores the schema: random field numbers (mostly ones
    /// the OTLP messages use) with random wire types, nested messages, strings that are or
    /// are not UTF-8, packed numbers, groups. Decoded as an OTLP request it exercises every
    /// wire-type mismatch and every kind of payload.
    fn raw_message(&mut self, depth: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for _ in 0..self.rng.random_range(0..5) {
            let field: u32 = if self.chance(0.9) {
                self.rng.random_range(1..17)
            } else {
                self.rng.random_range(17..2000)
            };
            match self.rng.random_range(0..7) {
                0 => {
                    put_key(&mut out, field, 0);
                    put_varint(
                        &mut out,
                        self.rng.random::<u64>() >> self.rng.random_range(0..64),
                    );
                }
                1 => {
                    put_key(&mut out, field, 1);
                    out.extend_from_slice(&self.rng.random::<u64>().to_le_bytes());
                }
                2 => {
                    put_key(&mut out, field, 5);
                    out.extend_from_slice(&self.rng.random::<u32>().to_le_bytes());
                }
                3 if depth > 0 => {
                    put_key(&mut out, field, 3);
                    out.extend(self.raw_message(depth - 1));
                    let end = if self.chance(0.9) { field } else { field + 1 };
                    put_key(&mut out, end, 4);
                }
                4 | 5 if depth > 0 => {
                    let payload = self.raw_message(depth - 1);
                    put_key(&mut out, field, 2);
                    put_varint(&mut out, payload.len() as u64);
                    out.extend(payload);
                }
                _ => {
                    let payload = if self.chance(0.5) {
                        self.string().into_bytes()
                    } else {
                        self.bytes(16)
                    };
                    put_key(&mut out, field, 2);
                    put_varint(&mut out, payload.len() as u64);
                    out.extend(payload);
                }
            }
        }
        out
    }
}

fn put_varint(out: &mut Vec<u8>, value: u64) {
    prost::encoding::encode_varint(value, out);
}

fn put_key(out: &mut Vec<u8>, field: u32, wire_type: u32) {
    put_varint(out, u64::from(field) << 3 | u64::from(wire_type));
}

/// A length-delimited field holding `payload`.
fn put_bytes(out: &mut Vec<u8>, field: u32, payload: &[u8]) {
    put_key(out, field, 2);
    put_varint(out, payload.len() as u64);
    out.extend_from_slice(payload);
}

fn encode(request: &Request) -> Vec<u8> {
    match request {
        Request::Traces(r) => r.encode_to_vec(),
        Request::Metrics(r) => r.encode_to_vec(),
        Request::Logs(r) => r.encode_to_vec(),
    }
}

fn prost_decode(signal: Signal, bytes: &[u8]) -> Result<Request, prost::DecodeError> {
    Ok(match signal {
        Signal::Traces => Request::Traces(ExportTraceServiceRequest::decode(bytes)?),
        Signal::Metrics => Request::Metrics(ExportMetricsServiceRequest::decode(bytes)?),
        Signal::Logs => Request::Logs(ExportLogsServiceRequest::decode(bytes)?),
    })
}

/// Asserts that the walker accepts `bytes` exactly when prost decodes them, and then counts
/// what prost decodes. Returns whether they were accepted.
fn assert_agrees_with_prost(signal: Signal, bytes: &[u8]) -> bool {
    let ours = validate_and_count(signal, bytes);
    let theirs = prost_decode(signal, bytes);
    match (&ours, &theirs) {
        (Ok(count), Ok(request)) => {
            assert_eq!(*count, request.item_count(), "{signal} {bytes:02x?}");
            true
        }
        (Err(_), Err(_)) => false,
        _ => panic!("{signal}: walker says {ours:?}, prost says {theirs:?} for {bytes:02x?}"),
    }
}

#[test]
fn schema_marks_exactly_the_messages_that_can_hold_items() {
    // `has_items` lets the counting walker skip whole subtrees, so it must be true exactly
    // when an item field is reachable.
    fn reaches_items(schema: &super::schema::Schema, depth: usize) -> bool {
        depth > 0
            && schema.fields.iter().any(|kind| match kind {
                Kind::Item(_) => true,
                Kind::Message(child) | Kind::OneofMessage(child) => reaches_items(child, depth - 1),
                _ => false,
            })
    }
    for schema in ALL {
        assert_eq!(
            schema.has_items,
            reaches_items(schema, 8),
            "{}",
            schema.name
        );
    }
}

#[test]
fn count_equals_item_count_of_random_requests() {
    for signal in Signal::ALL {
        let mut generator = Gen::new(1, 3);
        let mut items = 0;
        for _ in 0..1000 {
            let request = generator.request(signal);
            let count = validate_and_count(signal, &encode(&request)).unwrap();
            assert_eq!(count, request.item_count());
            items += count;
        }
        assert!(items > 2_000, "the generator makes items: {items}");
    }
}

#[test]
fn empty_request_is_valid_with_no_items() {
    for signal in Signal::ALL {
        assert_eq!(validate_and_count(signal, &[]), Ok(0));
    }
}

#[test]
fn truncation_at_every_offset_is_judged_like_prost() {
    for signal in Signal::ALL {
        let mut generator = Gen::new(2, 2);
        let mut rejected = 0;
        for _ in 0..40 {
            let bytes = encode(&generator.request(signal));
            for end in 0..bytes.len() {
                if !assert_agrees_with_prost(signal, &bytes[..end]) {
                    rejected += 1;
                }
            }
        }
        assert!(rejected > 500, "{signal}: truncations rejected: {rejected}");
    }
}

#[test]
fn random_bit_flips_are_judged_like_prost() {
    for signal in Signal::ALL {
        let mut generator = Gen::new(3, 2);
        let (mut accepted, mut rejected) = (0, 0);
        for _ in 0..2500 {
            let mut bytes = encode(&generator.request(signal));
            if bytes.is_empty() {
                continue;
            }
            for _ in 0..generator.rng.random_range(1..4) {
                let bit = generator.rng.random_range(0..bytes.len() * 8);
                bytes[bit / 8] ^= 1 << (bit % 8);
            }
            if assert_agrees_with_prost(signal, &bytes) {
                accepted += 1;
            } else {
                rejected += 1;
            }
        }
        assert!(
            accepted > 300 && rejected > 300,
            "{signal}: {accepted} accepted, {rejected} rejected"
        );
    }
}

#[test]
fn random_byte_edits_are_judged_like_prost() {
    for signal in Signal::ALL {
        let mut generator = Gen::new(4, 2);
        for _ in 0..2500 {
            let mut bytes = encode(&generator.request(signal));
            let at = generator.rng.random_range(0..=bytes.len());
            match generator.rng.random_range(0..3) {
                0 => {
                    let garbage = generator.bytes(4);
                    bytes.splice(at..at, garbage);
                }
                1 => {
                    let end = (at + generator.rng.random_range(1..5)).min(bytes.len());
                    bytes.drain(at..end);
                }
                _ => {
                    if at < bytes.len() {
                        bytes[at] = generator.rng.random();
                    }
                }
            }
            assert_agrees_with_prost(signal, &bytes);
        }
    }
}

#[test]
fn random_garbage_is_judged_like_prost() {
    let mut generator = Gen::new(5, 3);
    for signal in Signal::ALL {
        for _ in 0..3000 {
            let bytes = generator.bytes(64);
            assert_agrees_with_prost(signal, &bytes);
        }
    }
}

#[test]
fn random_schema_less_messages_are_judged_like_prost() {
    // Random fields at every level make every known field appear with every wire type.
    for signal in Signal::ALL {
        let mut generator = Gen::new(6, 3);
        let (mut accepted, mut rejected) = (0, 0);
        for _ in 0..20_000 {
            let bytes = generator.raw_message(6);
            if assert_agrees_with_prost(signal, &bytes) {
                accepted += 1;
            } else {
                rejected += 1;
            }
        }
        assert!(
            accepted > 1000 && rejected > 1000,
            "{signal}: {accepted} accepted, {rejected} rejected"
        );
    }
}

/// A traces request whose only span has `name` and the given extra raw fields appended.
fn traces_with_span(name: &[u8], extra_span_fields: &[u8]) -> Vec<u8> {
    let mut span = Vec::new();
    put_bytes(&mut span, 5, name);
    span.extend_from_slice(extra_span_fields);
    let mut scope = Vec::new();
    put_bytes(&mut scope, 2, &span);
    let mut resource = Vec::new();
    put_bytes(&mut resource, 2, &scope);
    let mut request = Vec::new();
    put_bytes(&mut request, 1, &resource);
    request
}

#[test]
fn invalid_utf8_in_a_string_field_is_rejected() {
    let bytes = traces_with_span(b"ok\xff\xfe", &[]);
    let error = validate_and_count(Signal::Traces, &bytes).unwrap_err();
    assert!(error.reason.contains("UTF-8"), "{error}");
    assert!(error.reason.contains("Span field 5"), "{error}");
    assert!(prost_decode(Signal::Traces, &bytes).is_err());

    // A truncated multi-byte character is as invalid as a stray byte.
    let bytes = traces_with_span("日".as_bytes().split_at(2).0, &[]);
    assert!(validate_and_count(Signal::Traces, &bytes).is_err());
}

#[test]
fn invalid_utf8_in_a_nested_string_is_rejected_and_in_bytes_accepted() {
    // An attribute (key "k", string value 0xff) inside the span.
    let mut any_value = Vec::new();
    put_bytes(&mut any_value, 1, b"\xff");
    let mut key_value = Vec::new();
    put_bytes(&mut key_value, 1, b"k");
    put_bytes(&mut key_value, 2, &any_value);
    let mut attribute = Vec::new();
    put_bytes(&mut attribute, 9, &key_value);
    let bytes = traces_with_span(b"span", &attribute);
    assert!(validate_and_count(Signal::Traces, &bytes).is_err());
    assert!(prost_decode(Signal::Traces, &bytes).is_err());

    // The same bytes as a trace_id are fine.
    let mut trace_id = Vec::new();
    put_bytes(&mut trace_id, 1, b"\xff\xfe");
    let bytes = traces_with_span(b"span", &trace_id);
    assert_eq!(validate_and_count(Signal::Traces, &bytes), Ok(1));
}

#[test]
fn unknown_fields_of_every_wire_type_are_skipped() {
    let mut unknown = Vec::new();
    put_key(&mut unknown, 100, 0);
    put_varint(&mut unknown, 300);
    put_key(&mut unknown, 101, 1);
    unknown.extend_from_slice(&[0; 8]);
    put_bytes(&mut unknown, 102, b"\xff not utf-8 but unknown");
    put_key(&mut unknown, 103, 5);
    unknown.extend_from_slice(&[0; 4]);
    // A group holding a nested group and a varint.
    put_key(&mut unknown, 104, 3);
    put_key(&mut unknown, 1, 3);
    put_key(&mut unknown, 1, 4);
    put_key(&mut unknown, 2, 0);
    put_varint(&mut unknown, 1);
    put_key(&mut unknown, 104, 4);
    let bytes = traces_with_span(b"span", &unknown);
    assert!(assert_agrees_with_prost(Signal::Traces, &bytes));
    assert_eq!(validate_and_count(Signal::Traces, &bytes), Ok(1));
}

#[test]
fn mismatched_or_stray_end_group_is_rejected() {
    let mut mismatched = Vec::new();
    put_key(&mut mismatched, 104, 3);
    put_key(&mut mismatched, 105, 4);
    assert!(!assert_agrees_with_prost(
        Signal::Traces,
        &traces_with_span(b"s", &mismatched)
    ));
    let mut stray = Vec::new();
    put_key(&mut stray, 104, 4);
    assert!(!assert_agrees_with_prost(
        Signal::Traces,
        &traces_with_span(b"s", &stray)
    ));
}

#[test]
fn known_field_with_another_wire_type_is_rejected() {
    // Span.name (a string) sent as a varint.
    let mut name_as_varint = Vec::new();
    put_key(&mut name_as_varint, 5, 0);
    put_varint(&mut name_as_varint, 1);
    let bytes = traces_with_span(b"s", &name_as_varint);
    let error = validate_and_count(Signal::Traces, &bytes).unwrap_err();
    assert!(error.reason.contains("wire type"), "{error}");
    assert!(prost_decode(Signal::Traces, &bytes).is_err());
}

#[test]
fn varint_of_ten_bytes_is_accepted_only_when_it_fits_64_bits() {
    for (last, ok) in [(0x01, true), (0x02, false), (0x81, false)] {
        let mut field = Vec::new();
        put_key(&mut field, 6, 0); // Span.kind
        field.extend_from_slice(&[0xff; 9]);
        field.push(last);
        if last & 0x80 != 0 {
            field.push(0x00);
        }
        let bytes = traces_with_span(b"s", &field);
        assert_eq!(
            assert_agrees_with_prost(Signal::Traces, &bytes),
            ok,
            "last byte {last:#x}"
        );
    }
}

/// A logs request whose only record's body is arrays nested `depth` deep around an AnyValue
/// made of `innermost`.
fn logs_with_nested_body(depth: usize, innermost: &[u8]) -> Vec<u8> {
    let mut value = innermost.to_vec();
    for _ in 0..depth {
        let mut array = Vec::new();
        put_bytes(&mut array, 1, &value);
        value.clear();
        put_bytes(&mut value, 5, &array);
    }
    let mut record = Vec::new();
    put_bytes(&mut record, 5, &value);
    let mut scope = Vec::new();
    put_bytes(&mut scope, 2, &record);
    let mut resource = Vec::new();
    put_bytes(&mut resource, 2, &scope);
    let mut request = Vec::new();
    put_bytes(&mut request, 1, &resource);
    request
}

#[test]
fn nesting_is_limited_like_prost() {
    let mut int_value = Vec::new();
    put_key(&mut int_value, 3, 0);
    put_varint(&mut int_value, 7);
    // prost checks the limit also when skipping an unknown field, so an unknown field in the
    // deepest message allowed is rejected while a known one is not.
    let mut unknown = Vec::new();
    put_key(&mut unknown, 99, 0);
    put_varint(&mut unknown, 7);
    let mut unknown_group = Vec::new();
    put_key(&mut unknown_group, 99, 3);
    put_key(&mut unknown_group, 99, 4);
    for innermost in [&[][..], &int_value, &unknown, &unknown_group] {
        let judged: Vec<bool> = (40..56)
            .map(|depth| {
                assert_agrees_with_prost(Signal::Logs, &logs_with_nested_body(depth, innermost))
            })
            .collect();
        // The limit falls inside the range: shallower nesting passes, deeper fails.
        assert_eq!(judged.first(), Some(&true));
        assert_eq!(judged.last(), Some(&false));
    }
}

#[test]
fn packed_and_unpacked_repeated_numbers_are_both_accepted() {
    let point = |packed: bool| {
        let mut dp = Vec::new();
        if packed {
            let mut counts = Vec::new();
            counts.extend_from_slice(&1u64.to_le_bytes());
            counts.extend_from_slice(&2u64.to_le_bytes());
            put_bytes(&mut dp, 6, &counts);
        } else {
            for n in [1u64, 2] {
                put_key(&mut dp, 6, 1);
                dp.extend_from_slice(&n.to_le_bytes());
            }
        }
        dp
    };
    for packed in [true, false] {
        let mut histogram = Vec::new();
        put_bytes(&mut histogram, 1, &point(packed));
        let bytes = metrics_with_metric_fields(&{
            let mut metric = Vec::new();
            put_bytes(&mut metric, 9, &histogram);
            metric
        });
        assert!(
            assert_agrees_with_prost(Signal::Metrics, &bytes),
            "packed: {packed}"
        );
        let Ok(Request::Metrics(request)) = prost_decode(Signal::Metrics, &bytes) else {
            panic!("decodes");
        };
        let Some(Data::Histogram(h)) =
            &request.resource_metrics[0].scope_metrics[0].metrics[0].data
        else {
            panic!("a histogram");
        };
        assert_eq!(h.data_points[0].bucket_counts, vec![1, 2]);
    }

    // Packed exponential-histogram bucket counts (varints), and a packed length that is not a
    // whole number of fixed64 values.
    let mut buckets = Vec::new();
    put_bytes(&mut buckets, 2, &[1, 0x80, 0x01, 3]);
    let mut dp = Vec::new();
    put_bytes(&mut dp, 8, &buckets);
    let mut exponential = Vec::new();
    put_bytes(&mut exponential, 1, &dp);
    let mut metric = Vec::new();
    put_bytes(&mut metric, 10, &exponential);
    assert!(assert_agrees_with_prost(
        Signal::Metrics,
        &metrics_with_metric_fields(&metric)
    ));

    let mut dp = Vec::new();
    put_bytes(&mut dp, 7, &[0; 12]);
    let mut histogram = Vec::new();
    put_bytes(&mut histogram, 1, &dp);
    let mut metric = Vec::new();
    put_bytes(&mut metric, 9, &histogram);
    assert!(!assert_agrees_with_prost(
        Signal::Metrics,
        &metrics_with_metric_fields(&metric)
    ));
}

/// A metrics request with one metric made of `fields`.
fn metrics_with_metric_fields(fields: &[u8]) -> Vec<u8> {
    let mut scope = Vec::new();
    put_bytes(&mut scope, 2, fields);
    let mut resource = Vec::new();
    put_bytes(&mut resource, 2, &scope);
    let mut request = Vec::new();
    put_bytes(&mut request, 1, &resource);
    request
}

/// A gauge or sum (by field number) with `points` empty data points.
fn metric_data(field: u32, points: usize) -> Vec<u8> {
    let mut data = Vec::new();
    for _ in 0..points {
        put_bytes(&mut data, 1, &[]);
    }
    let mut out = Vec::new();
    put_bytes(&mut out, field, &data);
    out
}

#[test]
fn later_oneof_member_replaces_the_earlier_one_in_the_count() {
    let gauge_then_sum = [metric_data(5, 3), metric_data(7, 2)].concat();
    let bytes = metrics_with_metric_fields(&gauge_then_sum);
    assert!(assert_agrees_with_prost(Signal::Metrics, &bytes));
    assert_eq!(validate_and_count(Signal::Metrics, &bytes), Ok(2));

    // The same member twice merges.
    let gauge_twice = [metric_data(5, 3), metric_data(5, 2)].concat();
    let bytes = metrics_with_metric_fields(&gauge_twice);
    assert!(assert_agrees_with_prost(Signal::Metrics, &bytes));
    assert_eq!(validate_and_count(Signal::Metrics, &bytes), Ok(5));

    let back_and_forth = [metric_data(5, 3), metric_data(7, 2), metric_data(5, 4)].concat();
    let bytes = metrics_with_metric_fields(&back_and_forth);
    assert!(assert_agrees_with_prost(Signal::Metrics, &bytes));
    assert_eq!(validate_and_count(Signal::Metrics, &bytes), Ok(4));
}

// Splitting.

/// Every item of a request with the resource and scope (and for metrics, the metric without
/// its points) it belongs to, in order. Splitting must preserve this sequence exactly.
fn flatten(request: &Request) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut push = |parts: &[Vec<u8>]| out.push(parts.concat());
    match request {
        Request::Traces(r) => {
            for rs in &r.resource_spans {
                let resource = ResourceSpans {
                    scope_spans: vec![],
                    ..rs.clone()
                }
                .encode_to_vec();
                for ss in &rs.scope_spans {
                    let scope = ScopeSpans {
                        spans: vec![],
                        ..ss.clone()
                    }
                    .encode_to_vec();
                    for span in &ss.spans {
                        push(&[resource.clone(), scope.clone(), span.encode_to_vec()]);
                    }
                }
            }
        }
        Request::Logs(r) => {
            for rl in &r.resource_logs {
                let resource = ResourceLogs {
                    scope_logs: vec![],
                    ..rl.clone()
                }
                .encode_to_vec();
                for sl in &rl.scope_logs {
                    let scope = ScopeLogs {
                        log_records: vec![],
                        ..sl.clone()
                    }
                    .encode_to_vec();
                    for record in &sl.log_records {
                        push(&[resource.clone(), scope.clone(), record.encode_to_vec()]);
                    }
                }
            }
        }
        Request::Metrics(r) => {
            for rm in &r.resource_metrics {
                let resource = ResourceMetrics {
                    scope_metrics: vec![],
                    ..rm.clone()
                }
                .encode_to_vec();
                for sm in &rm.scope_metrics {
                    let scope = ScopeMetrics {
                        metrics: vec![],
                        ..sm.clone()
                    }
                    .encode_to_vec();
                    for metric in &sm.metrics {
                        let (header, points) = metric_parts(metric);
                        for point in points {
                            push(&[resource.clone(), scope.clone(), header.clone(), point]);
                        }
                    }
                }
            }
        }
    }
    out
}

/// A metric's encoding without its data points, and each data point's encoding.
fn metric_parts(metric: &Metric) -> (Vec<u8>, Vec<Vec<u8>>) {
    let mut header = metric.clone();
    let points = match &mut header.data {
        Some(Data::Gauge(g)) => std::mem::take(&mut g.data_points)
            .iter()
            .map(Message::encode_to_vec)
            .collect(),
        Some(Data::Sum(s)) => std::mem::take(&mut s.data_points)
            .iter()
            .map(Message::encode_to_vec)
            .collect(),
        Some(Data::Histogram(h)) => std::mem::take(&mut h.data_points)
            .iter()
            .map(Message::encode_to_vec)
            .collect(),
        Some(Data::ExponentialHistogram(h)) => std::mem::take(&mut h.data_points)
            .iter()
            .map(Message::encode_to_vec)
            .collect(),
        Some(Data::Summary(s)) => std::mem::take(&mut s.data_points)
            .iter()
            .map(Message::encode_to_vec)
            .collect(),
        None => Vec::new(),
    };
    (header.encode_to_vec(), points)
}

/// A batch of several encoded requests appended, and the request they add up to.
fn multi_segment_batch(generator: &mut Gen, signal: Signal, parts: usize) -> (Batch, Request) {
    let mut batch = Batch::empty(signal);
    let mut whole: Option<Request> = None;
    for _ in 0..parts {
        let request = generator.request(signal);
        let bytes = Bytes::from(encode(&request));
        batch.append(Batch::from_encoded(signal, bytes).unwrap());
        match &mut whole {
            None => whole = Some(request),
            Some(whole) => {
                let mut bytes = encode(whole);
                bytes.extend(encode(&request));
                *whole = prost_decode(signal, &bytes).unwrap();
            }
        }
    }
    (
        batch,
        whole.unwrap_or_else(|| prost_decode(signal, &[]).unwrap()),
    )
}

fn check_split_at_every_cut(batch: &Batch, original: &Request) {
    let total = batch.item_count();
    assert_eq!(total, original.item_count());
    let expected = flatten(original);
    for n in 0..=total + 1 {
        let mut rest = batch.clone();
        let head = rest.split_to(n);
        assert_eq!(head.item_count(), n.min(total), "n = {n}");
        assert_eq!(rest.item_count(), total - n.min(total), "n = {n}");
        for half in [&head, &rest] {
            // The encoding is valid and its count is what the batch says.
            let bytes = half.to_encoded_bytes();
            assert_eq!(
                validate_and_count(batch.signal(), &bytes),
                Ok(half.item_count())
            );
        }
        let mut joined = flatten(&head.into_request().unwrap());
        joined.extend(flatten(&rest.into_request().unwrap()));
        assert!(joined == expected, "n = {n}: items differ");
    }
}

#[test]
fn split_at_every_cut_point_keeps_items_in_order_for_encoded_batches() {
    for signal in Signal::ALL {
        let mut generator = Gen::new(7, 3);
        for _ in 0..12 {
            let parts = generator.rng.random_range(1..4);
            let (batch, original) = multi_segment_batch(&mut generator, signal, parts);
            check_split_at_every_cut(&batch, &original);
        }
    }
}

#[test]
fn split_at_every_cut_point_keeps_items_in_order_for_decoded_batches() {
    for signal in Signal::ALL {
        let mut generator = Gen::new(8, 3);
        for _ in 0..12 {
            let request = generator.request(signal);
            check_split_at_every_cut(&Batch::from_request(request.clone()), &request);
        }
    }
}

#[test]
fn split_between_entries_slices_without_copying() {
    let mut generator = Gen::new(9, 3);
    let request = |generator: &mut Gen| {
        let mut r = generator.traces();
        r.resource_spans.truncate(1);
        r.resource_spans.resize_with(1, Default::default);
        r.resource_spans[0].scope_spans = vec![ScopeSpans {
            spans: (0..5).map(|_| generator.span()).collect(),
            ..Default::default()
        }];
        Bytes::from(r.encode_to_vec())
    };
    let (first, second) = (request(&mut generator), request(&mut generator));
    let mut batch = Batch::from_encoded(Signal::Traces, first.clone()).unwrap();
    batch.append(Batch::from_encoded(Signal::Traces, second.clone()).unwrap());

    let mut head = batch.split_to(5);
    assert_eq!(head.encoded_segments().len(), 1);
    assert_eq!(head.encoded_segments()[0].as_ptr(), first.as_ptr());
    assert_eq!(batch.encoded_segments()[0].as_ptr(), second.as_ptr());
    assert_eq!((head.item_count(), batch.item_count()), (5, 5));
}

#[test]
fn split_of_at_least_the_whole_batch_moves_it_all() {
    let mut generator = Gen::new(10, 3);
    let request = generator.request(Signal::Logs);
    let mut batch = Batch::from_encoded(Signal::Logs, Bytes::from(encode(&request))).unwrap();
    let count = batch.item_count();
    let head = batch.split_to(count);
    assert_eq!(head.item_count(), count);
    assert!(batch.is_empty());
    assert_eq!(batch.encoded_len(), 0);
}
