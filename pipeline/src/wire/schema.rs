//! The OTLP messages as the walker sees them: for each message, the kind of each known field.
//!
//! Field numbers and types follow the code opentelemetry-proto 0.33.1 generates from the OTLP
//! protos (`opentelemetry.proto.{common,resource,trace,metrics,logs}.v1`). A field missing
//! from a table is unknown to the walker, as it is to prost, and is skipped.

/// How one known field is encoded, and what it contributes to the item count.
#[derive(Clone, Copy)]
pub(super) enum Kind {
    /// Not in the schema: skipped whatever its wire type, as proto3 requires.
    Unknown,
    /// int32, int64, uint32, uint64, sint32, sint64, bool, enum: wire type 0.
    Varint,
    /// fixed32, sfixed32, float: wire type 5.
    Fixed32,
    /// fixed64, sfixed64, double: wire type 1.
    Fixed64,
    /// bytes: wire type 2, any content.
    Bytes,
    /// string: wire type 2, UTF-8.
    String,
    /// A repeated varint scalar: unpacked (wire type 0) or packed (wire type 2).
    PackedVarint,
    /// A repeated 64-bit scalar: unpacked (wire type 1) or packed (wire type 2).
    PackedFixed64,
    /// A nested message; the items inside it count towards this message's items.
    Message(&'static Schema),
    /// A nested message that is itself one item (a span, a log record, a data point).
    Item(&'static Schema),
    /// A nested message that is one member of a oneof. When a different member of the same
    /// oneof follows it replaces the earlier one (and its items), as prost decodes it. A
    /// message has at most one oneof whose members carry items (`Metric.data`).
    OneofMessage(&'static Schema),
}

/// The largest field number any OTLP message here uses (`Span.flags`).
pub(super) const MAX_FIELD: usize = 16;

/// What the walker does with a field, given its kind and the wire type it arrived with.
/// Derived from the kinds, so that the walker dispatches once per field.
#[derive(Clone, Copy)]
pub(super) enum Action {
    /// Field number 0 or wire type 6 or 7: prost rejects the key itself.
    InvalidKey,
    /// A known field with a wire type its kind does not allow.
    WrongWireType,
    /// An unknown field: skipped (groups included) within the recursion budget.
    Skip,
    Varint,
    Fixed32,
    Fixed64,
    Bytes,
    String,
    /// A packed run of varints.
    PackedVarint,
    /// A packed run of 64-bit values: its length must be a multiple of 8.
    PackedFixed64,
    Message(&'static Schema),
    Item(&'static Schema),
    OneofMessage(&'static Schema),
}

/// Wire types.
pub(super) const VARINT: u32 = 0;
pub(super) const FIXED64: u32 = 1;
pub(super) const LEN: u32 = 2;
pub(super) const START_GROUP: u32 = 3;
pub(super) const END_GROUP: u32 = 4;
pub(super) const FIXED32: u32 = 5;

/// The action for a field of `kind` arriving with `wire_type` (field number > 0, wire type < 6).
pub(super) const fn action(kind: Kind, wire_type: u32) -> Action {
    match (kind, wire_type) {
        (Kind::Unknown, _) => Action::Skip,
        (Kind::Varint | Kind::PackedVarint, VARINT) => Action::Varint,
        (Kind::Fixed32, FIXED32) => Action::Fixed32,
        (Kind::Fixed64 | Kind::PackedFixed64, FIXED64) => Action::Fixed64,
        (Kind::Bytes, LEN) => Action::Bytes,
        (Kind::String, LEN) => Action::String,
        (Kind::PackedVarint, LEN) => Action::PackedVarint,
        (Kind::PackedFixed64, LEN) => Action::PackedFixed64,
        (Kind::Message(child), LEN) => Action::Message(child),
        (Kind::Item(child), LEN) => Action::Item(child),
        (Kind::OneofMessage(child), LEN) => Action::OneofMessage(child),
        _ => Action::WrongWireType,
    }
}

/// One message type: its name (for error messages) and its fields indexed by field number.
pub(super) struct Schema {
    pub(super) name: &'static str,
    /// Whether items (spans, data points, log records) can occur inside this message; a
    /// walker that only counts skips messages without them.
    pub(super) has_items: bool,
    pub(super) fields: [Kind; MAX_FIELD + 1],
    /// The action for every one-byte key (fields 1 to 15, every wire type), indexed by the
    /// key byte: the common case is one table load per field.
    pub(super) one_byte_keys: [Action; 128],
}

impl Schema {
    /// The kind of field `number`.
    #[inline(always)]
    pub(super) fn kind(&self, number: u32) -> Kind {
        match self.fields.get(number as usize) {
            Some(kind) => *kind,
            None => Kind::Unknown,
        }
    }
}

/// Builds a message's field table from its (field number, kind) pairs.
const fn schema(name: &'static str, has_items: bool, known: &[(u32, Kind)]) -> Schema {
    let mut fields = [Kind::Unknown; MAX_FIELD + 1];
    let mut i = 0;
    while i < known.len() {
        let (number, kind) = known[i];
        assert!(
            number >= 1 && number as usize <= MAX_FIELD,
            "field number out of range"
        );
        fields[number as usize] = kind;
        i += 1;
    }
    let mut one_byte_keys = [Action::InvalidKey; 128];
    let mut key = 0;
    while key < 128 {
        let (number, wire_type) = (key >> 3, key as u32 & 7);
        if number > 0 && wire_type <= FIXED32 {
            one_byte_keys[key] = action(fields[number], wire_type);
        }
        key += 1;
    }
    Schema {
        name,
        has_items,
        fields,
        one_byte_keys,
    }
}

use Kind::{
    Bytes, Fixed32, Fixed64, Item, Message, OneofMessage, PackedFixed64, PackedVarint, String,
    Varint,
};

// opentelemetry.proto.common.v1

pub(super) static ANY_VALUE: Schema = schema(
    "AnyValue",
    false,
    &[
        (1, String),                        // string_value
        (2, Varint),                        // bool_value
        (3, Varint),                        // int_value
        (4, Fixed64),                       // double_value
        (5, OneofMessage(&ARRAY_VALUE)),    // array_value
        (6, OneofMessage(&KEY_VALUE_LIST)), // kvlist_value
        (7, Bytes),                         // bytes_value
        (8, Varint),                        // string_value_strindex
    ],
);

static ARRAY_VALUE: Schema = schema("ArrayValue", false, &[(1, Message(&ANY_VALUE))]);

static KEY_VALUE_LIST: Schema = schema("KeyValueList", false, &[(1, Message(&KEY_VALUE))]);

pub(super) static KEY_VALUE: Schema = schema(
    "KeyValue",
    false,
    &[
        (1, String),              // key
        (2, Message(&ANY_VALUE)), // value
        (3, Varint),              // key_strindex
    ],
);

static INSTRUMENTATION_SCOPE: Schema = schema(
    "InstrumentationScope",
    false,
    &[
        (1, String),              // name
        (2, String),              // version
        (3, Message(&KEY_VALUE)), // attributes
        (4, Varint),              // dropped_attributes_count
    ],
);

static ENTITY_REF: Schema = schema(
    "EntityRef",
    false,
    &[
        (1, String), // schema_url
        (2, String), // type
        (3, String), // id_keys (repeated)
        (4, String), // description_keys (repeated)
    ],
);

// opentelemetry.proto.resource.v1

static RESOURCE: Schema = schema(
    "Resource",
    false,
    &[
        (1, Message(&KEY_VALUE)),  // attributes
        (2, Varint),               // dropped_attributes_count
        (3, Message(&ENTITY_REF)), // entity_refs
    ],
);

// opentelemetry.proto.trace.v1 and collector.trace.v1

pub(super) static EXPORT_TRACE_REQUEST: Schema = schema(
    "ExportTraceServiceRequest",
    true,
    &[(1, Message(&RESOURCE_SPANS))],
);

pub(super) static RESOURCE_SPANS: Schema = schema(
    "ResourceSpans",
    true,
    &[
        (1, Message(&RESOURCE)),    // resource
        (2, Message(&SCOPE_SPANS)), // scope_spans
        (3, String),                // schema_url
    ],
);

static SCOPE_SPANS: Schema = schema(
    "ScopeSpans",
    true,
    &[
        (1, Message(&INSTRUMENTATION_SCOPE)), // scope
        (2, Item(&SPAN)),                     // spans
        (3, String),                          // schema_url
    ],
);

static SPAN: Schema = schema(
    "Span",
    false,
    &[
        (1, Bytes),               // trace_id
        (2, Bytes),               // span_id
        (3, String),              // trace_state
        (4, Bytes),               // parent_span_id
        (5, String),              // name
        (6, Varint),              // kind
        (7, Fixed64),             // start_time_unix_nano
        (8, Fixed64),             // end_time_unix_nano
        (9, Message(&KEY_VALUE)), // attributes
        (10, Varint),             // dropped_attributes_count
        (11, Message(&EVENT)),    // events
        (12, Varint),             // dropped_events_count
        (13, Message(&LINK)),     // links
        (14, Varint),             // dropped_links_count
        (15, Message(&STATUS)),   // status
        (16, Fixed32),            // flags
    ],
);

static EVENT: Schema = schema(
    "Span.Event",
    false,
    &[
        (1, Fixed64),             // time_unix_nano
        (2, String),              // name
        (3, Message(&KEY_VALUE)), // attributes
        (4, Varint),              // dropped_attributes_count
    ],
);

static LINK: Schema = schema(
    "Span.Link",
    false,
    &[
        (1, Bytes),               // trace_id
        (2, Bytes),               // span_id
        (3, String),              // trace_state
        (4, Message(&KEY_VALUE)), // attributes
        (5, Varint),              // dropped_attributes_count
        (6, Fixed32),             // flags
    ],
);

static STATUS: Schema = schema(
    "Status",
    false,
    &[
        (2, String), // message
        (3, Varint), // code
    ],
);

// opentelemetry.proto.logs.v1 and collector.logs.v1

pub(super) static EXPORT_LOGS_REQUEST: Schema = schema(
    "ExportLogsServiceRequest",
    true,
    &[(1, Message(&RESOURCE_LOGS))],
);

pub(super) static RESOURCE_LOGS: Schema = schema(
    "ResourceLogs",
    true,
    &[
        (1, Message(&RESOURCE)),   // resource
        (2, Message(&SCOPE_LOGS)), // scope_logs
        (3, String),               // schema_url
    ],
);

static SCOPE_LOGS: Schema = schema(
    "ScopeLogs",
    true,
    &[
        (1, Message(&INSTRUMENTATION_SCOPE)), // scope
        (2, Item(&LOG_RECORD)),               // log_records
        (3, String),                          // schema_url
    ],
);

static LOG_RECORD: Schema = schema(
    "LogRecord",
    false,
    &[
        (1, Fixed64),             // time_unix_nano
        (2, Varint),              // severity_number
        (3, String),              // severity_text
        (5, Message(&ANY_VALUE)), // body
        (6, Message(&KEY_VALUE)), // attributes
        (7, Varint),              // dropped_attributes_count
        (8, Fixed32),             // flags
        (9, Bytes),               // trace_id
        (10, Bytes),              // span_id
        (11, Fixed64),            // observed_time_unix_nano
        (12, String),             // event_name
    ],
);

// opentelemetry.proto.metrics.v1 and collector.metrics.v1

pub(super) static EXPORT_METRICS_REQUEST: Schema = schema(
    "ExportMetricsServiceRequest",
    true,
    &[(1, Message(&RESOURCE_METRICS))],
);

pub(super) static RESOURCE_METRICS: Schema = schema(
    "ResourceMetrics",
    true,
    &[
        (1, Message(&RESOURCE)),      // resource
        (2, Message(&SCOPE_METRICS)), // scope_metrics
        (3, String),                  // schema_url
    ],
);

static SCOPE_METRICS: Schema = schema(
    "ScopeMetrics",
    true,
    &[
        (1, Message(&INSTRUMENTATION_SCOPE)), // scope
        (2, Message(&METRIC)),                // metrics
        (3, String),                          // schema_url
    ],
);

static METRIC: Schema = schema(
    "Metric",
    true,
    &[
        (1, String),                                // name
        (2, String),                                // description
        (3, String),                                // unit
        (5, OneofMessage(&GAUGE)),                  // data.gauge
        (7, OneofMessage(&SUM)),                    // data.sum
        (9, OneofMessage(&HISTOGRAM)),              // data.histogram
        (10, OneofMessage(&EXPONENTIAL_HISTOGRAM)), // data.exponential_histogram
        (11, OneofMessage(&SUMMARY)),               // data.summary
        (12, Message(&KEY_VALUE)),                  // metadata
    ],
);

static GAUGE: Schema = schema("Gauge", true, &[(1, Item(&NUMBER_DATA_POINT))]);

static SUM: Schema = schema(
    "Sum",
    true,
    &[
        (1, Item(&NUMBER_DATA_POINT)), // data_points
        (2, Varint),                   // aggregation_temporality
        (3, Varint),                   // is_monotonic
    ],
);

static HISTOGRAM: Schema = schema(
    "Histogram",
    true,
    &[
        (1, Item(&HISTOGRAM_DATA_POINT)), // data_points
        (2, Varint),                      // aggregation_temporality
    ],
);

static EXPONENTIAL_HISTOGRAM: Schema = schema(
    "ExponentialHistogram",
    true,
    &[
        (1, Item(&EXPONENTIAL_HISTOGRAM_DATA_POINT)), // data_points
        (2, Varint),                                  // aggregation_temporality
    ],
);

static SUMMARY: Schema = schema("Summary", true, &[(1, Item(&SUMMARY_DATA_POINT))]);

static NUMBER_DATA_POINT: Schema = schema(
    "NumberDataPoint",
    false,
    &[
        (2, Fixed64),             // start_time_unix_nano
        (3, Fixed64),             // time_unix_nano
        (4, Fixed64),             // value.as_double
        (5, Message(&EXEMPLAR)),  // exemplars
        (6, Fixed64),             // value.as_int (sfixed64)
        (7, Message(&KEY_VALUE)), // attributes
        (8, Varint),              // flags
    ],
);

static HISTOGRAM_DATA_POINT: Schema = schema(
    "HistogramDataPoint",
    false,
    &[
        (2, Fixed64),             // start_time_unix_nano
        (3, Fixed64),             // time_unix_nano
        (4, Fixed64),             // count
        (5, Fixed64),             // sum (optional double)
        (6, PackedFixed64),       // bucket_counts (repeated fixed64)
        (7, PackedFixed64),       // explicit_bounds (repeated double)
        (8, Message(&EXEMPLAR)),  // exemplars
        (9, Message(&KEY_VALUE)), // attributes
        (10, Varint),             // flags
        (11, Fixed64),            // min (optional double)
        (12, Fixed64),            // max (optional double)
    ],
);

static EXPONENTIAL_HISTOGRAM_DATA_POINT: Schema = schema(
    "ExponentialHistogramDataPoint",
    false,
    &[
        (1, Message(&KEY_VALUE)), // attributes
        (2, Fixed64),             // start_time_unix_nano
        (3, Fixed64),             // time_unix_nano
        (4, Fixed64),             // count
        (5, Fixed64),             // sum (optional double)
        (6, Varint),              // scale (sint32)
        (7, Fixed64),             // zero_count
        (8, Message(&BUCKETS)),   // positive
        (9, Message(&BUCKETS)),   // negative
        (10, Varint),             // flags
        (11, Message(&EXEMPLAR)), // exemplars
        (12, Fixed64),            // min (optional double)
        (13, Fixed64),            // max (optional double)
        (14, Fixed64),            // zero_threshold (double)
    ],
);

static BUCKETS: Schema = schema(
    "ExponentialHistogramDataPoint.Buckets",
    false,
    &[
        (1, Varint),       // offset (sint32)
        (2, PackedVarint), // bucket_counts (repeated uint64)
    ],
);

static SUMMARY_DATA_POINT: Schema = schema(
    "SummaryDataPoint",
    false,
    &[
        (2, Fixed64),                     // start_time_unix_nano
        (3, Fixed64),                     // time_unix_nano
        (4, Fixed64),                     // count
        (5, Fixed64),                     // sum (double)
        (6, Message(&VALUE_AT_QUANTILE)), // quantile_values
        (7, Message(&KEY_VALUE)),         // attributes
        (8, Varint),                      // flags
    ],
);

static VALUE_AT_QUANTILE: Schema = schema(
    "SummaryDataPoint.ValueAtQuantile",
    false,
    &[
        (1, Fixed64), // quantile (double)
        (2, Fixed64), // value (double)
    ],
);

static EXEMPLAR: Schema = schema(
    "Exemplar",
    false,
    &[
        (2, Fixed64),             // time_unix_nano
        (3, Fixed64),             // value.as_double
        (4, Bytes),               // span_id
        (5, Bytes),               // trace_id
        (6, Fixed64),             // value.as_int (sfixed64)
        (7, Message(&KEY_VALUE)), // filtered_attributes
    ],
);

/// Every message type, for checks over the whole schema.
#[cfg(test)]
pub(super) static ALL: &[&Schema] = &[
    &ANY_VALUE,
    &ARRAY_VALUE,
    &KEY_VALUE_LIST,
    &KEY_VALUE,
    &INSTRUMENTATION_SCOPE,
    &ENTITY_REF,
    &RESOURCE,
    &EXPORT_TRACE_REQUEST,
    &RESOURCE_SPANS,
    &SCOPE_SPANS,
    &SPAN,
    &EVENT,
    &LINK,
    &STATUS,
    &EXPORT_LOGS_REQUEST,
    &RESOURCE_LOGS,
    &SCOPE_LOGS,
    &LOG_RECORD,
    &EXPORT_METRICS_REQUEST,
    &RESOURCE_METRICS,
    &SCOPE_METRICS,
    &METRIC,
    &GAUGE,
    &SUM,
    &HISTOGRAM,
    &EXPONENTIAL_HISTOGRAM,
    &SUMMARY,
    &NUMBER_DATA_POINT,
    &HISTOGRAM_DATA_POINT,
    &EXPONENTIAL_HISTOGRAM_DATA_POINT,
    &BUCKETS,
    &SUMMARY_DATA_POINT,
    &VALUE_AT_QUANTILE,
    &EXEMPLAR,
];
