//! Pipeline data: a batch of OTLP data of one signal.
//!
//! A batch is an OTLP `Export*ServiceRequest`, held either as its protobuf encoding or decoded.
//! Receivers hand over the bytes they received and exporters send bytes, so a pipeline that
//! does not look inside the data never decodes it: batches are merged by concatenating their
//! encodings (the request's only field is a repeated message, and protobuf merges concatenated
//! encodings of repeated fields), kept as a list of segments so merging copies nothing.
//! A processor that needs the data asks for it decoded; it is encoded again only when sent.

use bytes::{BufMut, Bytes};
use opentelemetry_proto::tonic::collector::{
    logs::v1::ExportLogsServiceRequest, metrics::v1::ExportMetricsServiceRequest,
    trace::v1::ExportTraceServiceRequest,
};
use prost::Message;

use crate::ack::Acks;
use crate::signal::Signal;
use crate::wire::{self, WireError};

/// A decoded OTLP export request of one signal.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    Traces(ExportTraceServiceRequest),
    Metrics(ExportMetricsServiceRequest),
    Logs(ExportLogsServiceRequest),
}

impl Request {
    /// The signal this request carries.
    pub fn signal(&self) -> Signal {
        match self {
            Request::Traces(_) => Signal::Traces,
            Request::Metrics(_) => Signal::Metrics,
            Request::Logs(_) => Signal::Logs,
        }
    }

    /// Counts the items in the request: spans, metric data points or log records.
    pub fn item_count(&self) -> usize {
        match self {
            Request::Traces(r) => r
                .resource_spans
                .iter()
                .flat_map(|rs| &rs.scope_spans)
                .map(|ss| ss.spans.len())
                .sum(),
            Request::Metrics(r) => r
                .resource_metrics
                .iter()
                .flat_map(|rm| &rm.scope_metrics)
                .flat_map(|sm| &sm.metrics)
                .map(metric_data_point_count)
                .sum(),
            Request::Logs(r) => r
                .resource_logs
                .iter()
                .flat_map(|rl| &rl.scope_logs)
                .map(|sl| sl.log_records.len())
                .sum(),
        }
    }

    fn encoded_len(&self) -> usize {
        match self {
            Request::Traces(r) => r.encoded_len(),
            Request::Metrics(r) => r.encoded_len(),
            Request::Logs(r) => r.encoded_len(),
        }
    }

    fn encode_into(&self, buf: &mut impl BufMut) {
        // Encoding into a growable buffer cannot run out of space.
        let result = match self {
            Request::Traces(r) => r.encode(buf),
            Request::Metrics(r) => r.encode(buf),
            Request::Logs(r) => r.encode(buf),
        };
        debug_assert!(
            result.is_ok(),
            "encoding into a growable buffer never fails"
        );
    }

    fn decode(signal: Signal, bytes: &[u8]) -> Result<Request, prost::DecodeError> {
        Ok(match signal {
            Signal::Traces => Request::Traces(ExportTraceServiceRequest::decode(bytes)?),
            Signal::Metrics => Request::Metrics(ExportMetricsServiceRequest::decode(bytes)?),
            Signal::Logs => Request::Logs(ExportLogsServiceRequest::decode(bytes)?),
        })
    }

    /// Moves every resource entry of `other` (of the same signal) to the end of `self`.
    fn append(&mut self, other: Request) {
        match (self, other) {
            (Request::Traces(a), Request::Traces(b)) => a.resource_spans.extend(b.resource_spans),
            (Request::Metrics(a), Request::Metrics(b)) => {
                a.resource_metrics.extend(b.resource_metrics)
            }
            (Request::Logs(a), Request::Logs(b)) => a.resource_logs.extend(b.resource_logs),
            (a, b) => unreachable!("appending {} to {}", b.signal(), a.signal()),
        }
    }
}

/// The number of data points a metric carries, the unit metrics are counted and batched in.
pub fn metric_data_point_count(metric: &opentelemetry_proto::tonic::metrics::v1::Metric) -> usize {
    use opentelemetry_proto::tonic::metrics::v1::metric::Data;
    match &metric.data {
        Some(Data::Gauge(g)) => g.data_points.len(),
        Some(Data::Sum(s)) => s.data_points.len(),
        Some(Data::Histogram(h)) => h.data_points.len(),
        Some(Data::ExponentialHistogram(h)) => h.data_points.len(),
        Some(Data::Summary(s)) => s.data_points.len(),
        None => 0,
    }
}

#[derive(Debug, Clone)]
enum Payload {
    /// Segments whose concatenation is the protobuf encoding of the export request.
    Encoded(Vec<Bytes>),
    Decoded(Request),
}

/// A batch of OTLP data of one signal: the unit that flows between components.
///
/// Cloning an encoded batch is cheap (segments are reference-counted), which is what lets one
/// batch fan out to several exporters.
#[derive(Debug, Clone)]
pub struct Batch {
    signal: Signal,
    items: usize,
    payload: Payload,
    /// The acknowledgements waiting on this data (empty unless the pipeline asks for them).
    acks: Acks,
}

impl Batch {
    /// Takes the protobuf encoding of an `Export*ServiceRequest`, checking that it is
    /// well-formed and counting its items without decoding it.
    pub fn from_encoded(signal: Signal, bytes: Bytes) -> Result<Batch, WireError> {
        let items = wire::validate_and_count(signal, &bytes)?;
        Ok(Batch {
            signal,
            items,
            payload: Payload::Encoded(if bytes.is_empty() {
                Vec::new()
            } else {
                vec![bytes]
            }),
            acks: Acks::default(),
        })
    }

    /// Wraps a decoded export request.
    pub fn from_request(request: Request) -> Batch {
        Batch {
            signal: request.signal(),
            items: request.item_count(),
            payload: Payload::Decoded(request),
            acks: Acks::default(),
        }
    }

    /// An empty batch of `signal`.
    pub fn empty(signal: Signal) -> Batch {
        Batch {
            signal,
            items: 0,
            payload: Payload::Encoded(Vec::new()),
            acks: Acks::default(),
        }
    }

    /// The signal of the data in this batch.
    pub fn signal(&self) -> Signal {
        self.signal
    }

    /// The number of spans, metric data points or log records in this batch.
    pub fn item_count(&self) -> usize {
        self.items
    }

    /// Whether the batch holds no items.
    pub fn is_empty(&self) -> bool {
        self.items == 0
    }

    /// The length of the batch's protobuf encoding.
    pub fn encoded_len(&self) -> usize {
        match &self.payload {
            Payload::Encoded(segments) => segments.iter().map(Bytes::len).sum(),
            Payload::Decoded(request) => request.encoded_len(),
        }
    }

    /// The protobuf encoding as segments to be written one after the other. Encodes a decoded
    /// batch (keeping the encoding, so that fan-out to several exporters encodes once).
    pub fn encoded_segments(&mut self) -> &[Bytes] {
        if let Payload::Decoded(request) = &self.payload {
            let mut buf = Vec::with_capacity(request.encoded_len());
            request.encode_into(&mut buf);
            self.payload = Payload::Encoded(vec![Bytes::from(buf)]);
        }
        match &self.payload {
            Payload::Encoded(segments) => segments,
            Payload::Decoded(_) => unreachable!("encoded just above"),
        }
    }

    /// Writes the protobuf encoding into `buf`.
    pub fn write_encoded(&self, buf: &mut impl BufMut) {
        match &self.payload {
            Payload::Encoded(segments) => segments.iter().for_each(|s| buf.put_slice(s)),
            Payload::Decoded(request) => request.encode_into(buf),
        }
    }

    /// The protobuf encoding in one contiguous buffer.
    pub fn to_encoded_bytes(&self) -> Bytes {
        match &self.payload {
            Payload::Encoded(segments) if segments.len() == 1 => segments[0].clone(),
            _ => {
                let mut buf = Vec::with_capacity(self.encoded_len());
                self.write_encoded(&mut buf);
                Bytes::from(buf)
            }
        }
    }

    /// The decoded request, decoding (and keeping the result) if the batch is encoded.
    pub fn request(&mut self) -> Result<&Request, prost::DecodeError> {
        self.decode_in_place()?;
        match &self.payload {
            Payload::Decoded(request) => Ok(request),
            Payload::Encoded(_) => unreachable!("decoded just above"),
        }
    }

    /// Lets `change` modify the decoded request, then recounts the items.
    pub fn modify<T>(
        &mut self,
        change: impl FnOnce(&mut Request) -> T,
    ) -> Result<T, prost::DecodeError> {
        self.decode_in_place()?;
        let Payload::Decoded(request) = &mut self.payload else {
            unreachable!("decoded just above")
        };
        let result = change(request);
        self.items = request.item_count();
        Ok(result)
    }

    /// Consumes the batch, returning the decoded request. Its acknowledgements are released as
    /// delivered: a processor that builds new batches from the request carries them over with
    /// [`Batch::take_acks`] and [`Batch::add_acks`].
    pub fn into_request(mut self) -> Result<Request, prost::DecodeError> {
        self.decode_in_place()?;
        match self.payload {
            Payload::Decoded(request) => Ok(request),
            Payload::Encoded(_) => unreachable!("decoded just above"),
        }
    }

    fn decode_in_place(&mut self) -> Result<(), prost::DecodeError> {
        if let Payload::Encoded(segments) = &self.payload {
            let request = match segments.as_slice() {
                [] => Request::decode(self.signal, &[])?,
                [one] => Request::decode(self.signal, one)?,
                _ => Request::decode(self.signal, &self.to_encoded_bytes())?,
            };
            self.payload = Payload::Decoded(request);
        }
        Ok(())
    }

    /// Moves the items of `other` (of the same signal) to the end of this batch.
    pub fn append(&mut self, other: Batch) {
        assert_eq!(
            self.signal, other.signal,
            "batches of different signals never meet"
        );
        self.items += other.items;
        self.acks.extend(other.acks);
        match (&mut self.payload, other.payload) {
            (Payload::Encoded(a), Payload::Encoded(b)) => a.extend(b),
            (Payload::Decoded(a), Payload::Decoded(b)) => a.append(b),
            (Payload::Encoded(a), Payload::Decoded(b)) => {
                let mut buf = Vec::with_capacity(b.encoded_len());
                b.encode_into(&mut buf);
                a.push(Bytes::from(buf));
            }
            (Payload::Decoded(a), Payload::Encoded(b)) => {
                let mut buf = Vec::with_capacity(a.encoded_len());
                a.encode_into(&mut buf);
                let mut segments = vec![Bytes::from(buf)];
                segments.extend(b);
                self.payload = Payload::Encoded(segments);
            }
        }
    }

    /// Splits off the first `max_items` items into a new batch, leaving the rest in `self`.
    /// When the cut falls between top-level resource entries the encoded bytes are sliced
    /// without decoding; otherwise the straddling resource entry is decoded and divided.
    pub fn split_to(&mut self, max_items: usize) -> Batch {
        let mut part = wire::split_to(self, max_items);
        // Both parts must be delivered before the data counts as delivered.
        part.acks = self.acks.clone();
        part
    }

    /// Takes the batch's acknowledgements, leaving none.
    pub fn take_acks(&mut self) -> Acks {
        std::mem::take(&mut self.acks)
    }

    /// Adds acknowledgements that wait on this batch's data.
    pub fn add_acks(&mut self, acks: Acks) {
        self.acks.extend(acks);
    }

    pub(crate) fn from_parts_encoded(signal: Signal, items: usize, segments: Vec<Bytes>) -> Batch {
        Batch {
            signal,
            items,
            payload: Payload::Encoded(segments),
            acks: Acks::default(),
        }
    }

    pub(crate) fn take_payload_segments(&mut self) -> Option<Vec<Bytes>> {
        match &mut self.payload {
            Payload::Encoded(segments) => Some(std::mem::take(segments)),
            Payload::Decoded(_) => None,
        }
    }

    pub(crate) fn set_encoded(&mut self, items: usize, segments: Vec<Bytes>) {
        self.items = items;
        self.payload = Payload::Encoded(segments);
    }
}
