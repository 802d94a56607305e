//! Protobuf wire-level access to encoded OTLP requests: validation, item counting and splitting.
//!
//! Every request a receiver takes passes through [`validate_and_count`], so it must be cheap:
//! it walks the encoding once, guided by static tables describing the OTLP messages
//! ([`schema`]), checks it the way prost's decoder would and counts the items, allocating
//! nothing. A request it accepts is one prost decodes, so later stages may decode it without
//! failing.

mod schema;
mod split;
#[cfg(test)]
mod tests;
mod walk;

use thiserror::Error;

use crate::batch::Batch;
use crate::signal::Signal;

/// An encoded request that is not a well-formed OTLP export request.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error("malformed OTLP {signal} protobuf: {reason}")]
pub struct WireError {
    pub signal: Signal,
    pub reason: String,
}

/// The schema of the `Export*ServiceRequest` of `signal`.
fn request_schema(signal: Signal) -> &'static schema::Schema {
    match signal {
        Signal::Traces => &schema::EXPORT_TRACE_REQUEST,
        Signal::Metrics => &schema::EXPORT_METRICS_REQUEST,
        Signal::Logs => &schema::EXPORT_LOGS_REQUEST,
    }
}

/// Checks that `bytes` is a well-formed `Export*ServiceRequest` of `signal` and counts its
/// items (spans, metric data points, log records), without decoding it.
///
/// Accepts exactly the encodings prost decodes (proto3: unknown fields are skipped, known
/// fields must have their wire type, strings must be UTF-8, nesting is limited to 100), and
/// counts what [`crate::Request::item_count`] counts on the decoded request.
pub fn validate_and_count(signal: Signal, bytes: &[u8]) -> Result<usize, WireError> {
    walk::walk::<true>(request_schema(signal), bytes, walk::RECURSION_LIMIT).map_err(|fail| {
        WireError {
            signal,
            reason: fail.to_string(),
        }
    })
}

/// Splits off the first `max_items` items of `batch` into a new batch, leaving the rest.
pub(crate) fn split_to(batch: &mut Batch, max_items: usize) -> Batch {
    split::split_to(batch, max_items)
}
