//! Protobuf wire-level access to encoded OTLP requests: validation, item counting and splitting.
//!
//! TEMPORARY: decodes with prost. To be replaced by a non-allocating walker.

use bytes::Bytes;
use thiserror::Error;

use crate::batch::{Batch, Request};
use crate::signal::Signal;

/// An encoded request that is not a well-formed OTLP export request.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error("malformed OTLP {signal} protobuf: {reason}")]
pub struct WireError {
    pub signal: Signal,
    pub reason: String,
}

/// Checks that `bytes` is a well-formed `Export*ServiceRequest` of `signal` and counts its items.
pub fn validate_and_count(signal: Signal, bytes: &[u8]) -> Result<usize, WireError> {
    let request = decode(signal, bytes)?;
    Ok(request.item_count())
}

fn decode(signal: Signal, bytes: &[u8]) -> Result<Request, WireError> {
    let mut batch = Batch::from_parts_encoded(signal, 0, vec![Bytes::copy_from_slice(bytes)]);
    batch.request().cloned().map_err(|e| WireError {
        signal,
        reason: e.to_string(),
    })
}

pub(crate) fn split_to(batch: &mut Batch, max_items: usize) -> Batch {
    let signal = batch.signal();
    if batch.item_count() <= max_items {
        return std::mem::replace(batch, Batch::empty(signal));
    }
    let _ = batch.take_payload_segments();
    unimplemented!("split_to")
}
