//! Splitting a batch after a number of items, copying and decoding as little as possible.
//!
//! An encoded batch is a list of segments, each a sequence of top-level request fields (field
//! 1: one `Resource{Spans,Metrics,Logs}` entry each). The split walks the entries, counting
//! their items; a cut between two entries slices the segment (no copy), and only the one entry
//! the cut falls inside is decoded, divided and encoded again as two entries. Both halves of a
//! divided entry keep its resource, and both halves of a divided scope keep the scope (and
//! of a divided metric, the metric's description), so each half stands on its own.

use bytes::Bytes;
use opentelemetry_proto::tonic::collector::{
    logs::v1::ExportLogsServiceRequest, metrics::v1::ExportMetricsServiceRequest,
    trace::v1::ExportTraceServiceRequest,
};
use opentelemetry_proto::tonic::logs::v1::{ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::metrics::v1::{
    ExponentialHistogram, Gauge, Histogram, Metric, ResourceMetrics, ScopeMetrics, Sum, Summary,
    metric::Data,
};
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans};
use prost::Message;

use super::schema::{self, Schema};
use super::walk::{self, Fail, RECURSION_LIMIT};
use crate::batch::{Batch, Request, metric_data_point_count};
use crate::signal::Signal;

/// See [`super::split_to`].
pub(super) fn split_to(batch: &mut Batch, max_items: usize) -> Batch {
    let signal = batch.signal();
    let total = batch.item_count();
    if max_items >= total {
        return std::mem::replace(batch, Batch::empty(signal));
    }
    if let Some(segments) = batch.take_payload_segments() {
        match split_encoded(signal, &segments, max_items) {
            Ok((head, tail)) => {
                batch.set_encoded(total - max_items, tail);
                return Batch::from_parts_encoded(signal, max_items, head);
            }
            Err(fail) => {
                // Batches are validated on the way in, so this means a bug; decoding the whole
                // batch still splits it correctly.
                tracing::warn!(%signal, error = %fail, "splitting an encoded batch by decoding it");
                batch.set_encoded(total, segments);
            }
        }
    }
    match batch.modify(|request| split_request(request, max_items)) {
        Ok(head) => Batch::from_request(head),
        Err(error) => {
            tracing::warn!(%signal, %error, "cannot decode a batch to split it; sending it whole");
            std::mem::replace(batch, Batch::empty(signal))
        }
    }
}

/// The schema of one top-level entry of a request of `signal`.
fn entry_schema(signal: Signal) -> &'static Schema {
    match signal {
        Signal::Traces => &schema::RESOURCE_SPANS,
        Signal::Metrics => &schema::RESOURCE_METRICS,
        Signal::Logs => &schema::RESOURCE_LOGS,
    }
}

const ENTRY_FIELD: u32 = 1;
const LENGTH_DELIMITED: u32 = 2;

/// Splits encoded segments after `n` items (fewer than they hold) into (head, tail) segments.
fn split_encoded(
    signal: Signal,
    segments: &[Bytes],
    n: usize,
) -> Result<(Vec<Bytes>, Vec<Bytes>), Fail> {
    let schema = entry_schema(signal);
    let fail = |reason| Fail {
        reason,
        message: "export request",
        field: 0,
    };
    let mut head = Vec::new();
    let mut remaining = n;
    for (index, segment) in segments.iter().enumerate() {
        let mut rest: &[u8] = segment;
        while !rest.is_empty() {
            let start = segment.len() - rest.len();
            if remaining == 0 {
                // The cut falls between two entries: slice, and the rest moves untouched.
                if start > 0 {
                    head.push(segment.slice(..start));
                }
                let mut tail = vec![segment.slice(start..)];
                tail.extend_from_slice(&segments[index + 1..]);
                return Ok((head, tail));
            }
            let (field, wire_type) = walk::key(&mut rest).map_err(fail)?;
            if field != ENTRY_FIELD || wire_type != LENGTH_DELIMITED {
                rest = walk::skip(field, wire_type, rest, RECURSION_LIMIT).map_err(fail)?;
                continue;
            }
            let entry = walk::length_delimited(&mut rest).map_err(fail)?;
            let items = walk::walk::<false>(schema, entry, RECURSION_LIMIT - 1)?;
            if items <= remaining {
                remaining -= items;
                continue;
            }
            // The cut falls inside this entry: divide it.
            let end = segment.len() - rest.len();
            let (head_entry, tail_entry) = divide_entry(signal, entry, remaining)?;
            if start > 0 {
                head.push(segment.slice(..start));
            }
            head.push(head_entry);
            let mut tail = vec![tail_entry];
            if end < segment.len() {
                tail.push(segment.slice(end..));
            }
            tail.extend_from_slice(&segments[index + 1..]);
            return Ok((head, tail));
        }
        if !segment.is_empty() {
            head.push(segment.clone());
        }
    }
    // The segments hold fewer items than their count says.
    Err(fail("fewer items than counted"))
}

/// Decodes one entry, divides it after `n` items (fewer than it holds) and encodes both
/// halves as top-level request fields.
fn divide_entry(signal: Signal, entry: &[u8], n: usize) -> Result<(Bytes, Bytes), Fail> {
    let undecodable = |_| Fail {
        reason: "prost cannot decode the entry",
        message: entry_schema(signal).name,
        field: 0,
    };
    Ok(match signal {
        Signal::Traces => {
            let mut tail = ResourceSpans::decode(entry).map_err(undecodable)?;
            let head = split_resource_spans(&mut tail, n);
            (encode_entry(&head), encode_entry(&tail))
        }
        Signal::Metrics => {
            let mut tail = ResourceMetrics::decode(entry).map_err(undecodable)?;
            let head = split_resource_metrics(&mut tail, n);
            (encode_entry(&head), encode_entry(&tail))
        }
        Signal::Logs => {
            let mut tail = ResourceLogs::decode(entry).map_err(undecodable)?;
            let head = split_resource_logs(&mut tail, n);
            (encode_entry(&head), encode_entry(&tail))
        }
    })
}

/// Encodes `entry` as field 1 of an export request.
fn encode_entry(entry: &impl Message) -> Bytes {
    let len = entry.encoded_len();
    let mut buf = Vec::with_capacity(len + 11);
    prost::encoding::message::encode(ENTRY_FIELD, entry, &mut buf);
    Bytes::from(buf)
}

/// Splits a decoded request after `n` items, returning the first part.
fn split_request(request: &mut Request, n: usize) -> Request {
    match request {
        Request::Traces(r) => Request::Traces(ExportTraceServiceRequest {
            resource_spans: split_items(
                &mut r.resource_spans,
                n,
                |rs| rs.scope_spans.iter().map(|ss| ss.spans.len()).sum(),
                split_resource_spans,
            ),
        }),
        Request::Metrics(r) => Request::Metrics(ExportMetricsServiceRequest {
            resource_metrics: split_items(
                &mut r.resource_metrics,
                n,
                |rm| rm.scope_metrics.iter().map(scope_metrics_items).sum(),
                split_resource_metrics,
            ),
        }),
        Request::Logs(r) => Request::Logs(ExportLogsServiceRequest {
            resource_logs: split_items(
                &mut r.resource_logs,
                n,
                |rl| rl.scope_logs.iter().map(|sl| sl.log_records.len()).sum(),
                split_resource_logs,
            ),
        }),
    }
}

/// Removes and returns the leading elements of `list` that hold the first `n` items, dividing
/// the element the cut falls inside with `divide` (which gets the number of items to take).
fn split_items<T>(
    list: &mut Vec<T>,
    n: usize,
    items: impl Fn(&T) -> usize,
    divide: impl FnOnce(&mut T, usize) -> T,
) -> Vec<T> {
    let mut remaining = n;
    let mut whole = 0;
    while remaining > 0 && whole < list.len() {
        let count = items(&list[whole]);
        if count > remaining {
            break;
        }
        remaining -= count;
        whole += 1;
    }
    let mut head: Vec<T> = list.drain(..whole).collect();
    if remaining > 0
        && let Some(straddling) = list.first_mut()
    {
        head.push(divide(straddling, remaining));
    }
    head
}

fn split_resource_spans(entry: &mut ResourceSpans, n: usize) -> ResourceSpans {
    ResourceSpans {
        resource: entry.resource.clone(),
        scope_spans: split_items(
            &mut entry.scope_spans,
            n,
            |ss| ss.spans.len(),
            |ss, k| ScopeSpans {
                scope: ss.scope.clone(),
                spans: ss.spans.drain(..k).collect(),
                schema_url: ss.schema_url.clone(),
            },
        ),
        schema_url: entry.schema_url.clone(),
    }
}

fn split_resource_logs(entry: &mut ResourceLogs, n: usize) -> ResourceLogs {
    ResourceLogs {
        resource: entry.resource.clone(),
        scope_logs: split_items(
            &mut entry.scope_logs,
            n,
            |sl| sl.log_records.len(),
            |sl, k| ScopeLogs {
                scope: sl.scope.clone(),
                log_records: sl.log_records.drain(..k).collect(),
                schema_url: sl.schema_url.clone(),
            },
        ),
        schema_url: entry.schema_url.clone(),
    }
}

fn scope_metrics_items(scope: &ScopeMetrics) -> usize {
    scope.metrics.iter().map(metric_data_point_count).sum()
}

fn split_resource_metrics(entry: &mut ResourceMetrics, n: usize) -> ResourceMetrics {
    ResourceMetrics {
        resource: entry.resource.clone(),
        scope_metrics: split_items(&mut entry.scope_metrics, n, scope_metrics_items, |sm, k| {
            ScopeMetrics {
                scope: sm.scope.clone(),
                metrics: split_items(&mut sm.metrics, k, metric_data_point_count, split_metric),
                schema_url: sm.schema_url.clone(),
            }
        }),
        schema_url: entry.schema_url.clone(),
    }
}

/// Takes the first `n` data points of a metric into a copy of it.
fn split_metric(metric: &mut Metric, n: usize) -> Metric {
    let data = metric.data.as_mut().map(|data| match data {
        Data::Gauge(g) => Data::Gauge(Gauge {
            data_points: g.data_points.drain(..n).collect(),
        }),
        Data::Sum(s) => Data::Sum(Sum {
            data_points: s.data_points.drain(..n).collect(),
            aggregation_temporality: s.aggregation_temporality,
            is_monotonic: s.is_monotonic,
        }),
        Data::Histogram(h) => Data::Histogram(Histogram {
            data_points: h.data_points.drain(..n).collect(),
            aggregation_temporality: h.aggregation_temporality,
        }),
        Data::ExponentialHistogram(h) => Data::ExponentialHistogram(ExponentialHistogram {
            data_points: h.data_points.drain(..n).collect(),
            aggregation_temporality: h.aggregation_temporality,
        }),
        Data::Summary(s) => Data::Summary(Summary {
            data_points: s.data_points.drain(..n).collect(),
        }),
    });
    Metric {
        name: metric.name.clone(),
        description: metric.description.clone(),
        unit: metric.unit.clone(),
        metadata: metric.metadata.clone(),
        data,
    }
}
