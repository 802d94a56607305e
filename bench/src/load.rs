//! The load generator: sends pre-encoded trace requests over OTLP/gRPC.
//!
//! The requests are encoded once before the run; in the load loop a request is only a
//! reference-counted `Bytes` copied into tonic's frame buffer, so the generator takes little
//! of the CPU it shares with sluice. Each in-flight slot has its own HTTP/2 connection.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use prost::Message;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tonic::client::Grpc;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use crate::payload::EncodedRequest;

const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// How long a sender waits before resending a request sluice pushed back on: the first
/// pause, doubled on each further refusal of the same request up to the longest. Short, so
/// the load resumes as soon as sluice has room; growing, so a stalled pipeline is not
/// flooded with requests it can only refuse (each refusal costs sluice CPU).
const PUSHBACK_BACKOFF_FIRST: Duration = Duration::from_millis(5);
const PUSHBACK_BACKOFF_MAX: Duration = Duration::from_millis(100);

/// How long after the end of the load phase a pushed-back request is still retried; past it
/// the request counts as failed rather than stretching the measured phase without end.
const RETRY_GRACE: Duration = Duration::from_secs(30);

/// Errors setting up the load.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot connect to {endpoint}: {source}")]
    Connect {
        endpoint: String,
        source: tonic::transport::Error,
    },
}

/// How fast to send.
#[derive(Clone, Copy, Debug)]
pub enum Pace {
    /// Every slot sends its next request as soon as the previous one is answered.
    FullSpeed,
    /// Requests start on a fixed schedule totalling this many spans per second.
    SpansPerSecond(u64),
}

/// What a load phase achieved, counted on the client side.
#[derive(Debug, Default)]
pub struct LoadStats {
    /// Spans in requests sluice answered OK, minus any it reported as rejected.
    pub spans_acked: AtomicU64,
    pub requests_ok: AtomicU64,
    /// UNAVAILABLE and RESOURCE_EXHAUSTED answers: sluice asking the client to retry later.
    pub pushbacks: AtomicU64,
    /// Requests that failed for another reason (or were pushed back past the grace period).
    pub errors: AtomicU64,
    /// Spans sluice answered for with a partial success that rejected them.
    pub spans_rejected: AtomicU64,
    pub last_error: Mutex<Option<String>>,
}

impl LoadStats {
    fn record_error(&self, error: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut last) = self.last_error.lock() {
            *last = Some(error);
        }
    }
}

/// Sends `requests` in rotation to `endpoint` from `concurrency` slots until `duration` has
/// passed, then waits for the requests still in flight. Returns the stats and how long the
/// phase took from the first send to the last answer.
pub async fn run(
    endpoint: &str,
    requests: Arc<[EncodedRequest]>,
    concurrency: usize,
    pace: Pace,
    duration: Duration,
) -> Result<(Arc<LoadStats>, Duration), LoadError> {
    let mut channels = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        channels.push(connect(endpoint).await?);
    }
    let stats = Arc::new(LoadStats::default());
    let start = Instant::now();
    let deadline = start + duration;
    let schedule = match pace {
        Pace::FullSpeed => None,
        Pace::SpansPerSecond(rate) => {
            let spans = requests.first().map_or(1, |r| r.spans.max(1));
            let period = Duration::from_secs_f64(spans as f64 / rate.max(1) as f64);
            Some(Arc::new(Schedule::new(start, period)))
        }
    };
    let mut slots = JoinSet::new();
    for (slot, channel) in channels.into_iter().enumerate() {
        slots.spawn(send_loop(
            Grpc::new(channel),
            Arc::clone(&requests),
            // Slots start at different requests so the in-flight ones differ.
            slot * requests.len() / concurrency.max(1),
            deadline,
            schedule.clone(),
            Arc::clone(&stats),
        ));
    }
    while let Some(joined) = slots.join_next().await {
        if let Err(error) = joined {
            stats.record_error(format!("sender task failed: {error}"));
        }
    }
    Ok((stats, start.elapsed()))
}

async fn connect(endpoint: &str) -> Result<Channel, LoadError> {
    let error = |source| LoadError::Connect {
        endpoint: endpoint.to_string(),
        source,
    };
    Endpoint::from_shared(endpoint.to_string())
        .map_err(error)?
        .tcp_nodelay(true)
        .connect()
        .await
        .map_err(error)
}

/// Start times shared by the slots in rate mode: one request every `period`.
struct Schedule {
    next: Mutex<Instant>,
    period: Duration,
}

impl Schedule {
    fn new(start: Instant, period: Duration) -> Schedule {
        Schedule {
            next: Mutex::new(start),
            period,
        }
    }

    /// Takes the next start time; None once the schedule has passed `deadline`. A slot that
    /// is late gets a time in the past and sends at once, so the average rate is kept.
    fn take(&self, deadline: Instant) -> Option<Instant> {
        let mut next = self.next.lock().ok()?;
        let at = *next;
        if at >= deadline {
            return None;
        }
        *next += self.period;
        Some(at)
    }
}

async fn send_loop(
    mut client: Grpc<Channel>,
    requests: Arc<[EncodedRequest]>,
    first: usize,
    deadline: Instant,
    schedule: Option<Arc<Schedule>>,
    stats: Arc<LoadStats>,
) {
    let mut index = first;
    loop {
        match &schedule {
            Some(schedule) => match schedule.take(deadline) {
                Some(at) => tokio::time::sleep_until(at).await,
                None => return,
            },
            None if Instant::now() >= deadline => return,
            None => {}
        }
        let request = &requests[index % requests.len()];
        index += 1;
        send_until_accepted(&mut client, request, deadline + RETRY_GRACE, &stats).await;
    }
}

/// Sends one request, resending it after a short pause while sluice pushes back.
async fn send_until_accepted(
    client: &mut Grpc<Channel>,
    request: &EncodedRequest,
    give_up_at: Instant,
    stats: &LoadStats,
) {
    let mut backoff = PUSHBACK_BACKOFF_FIRST;
    loop {
        if let Err(error) = client.ready().await {
            stats.record_error(format!("connection not ready: {error}"));
            tokio::time::sleep(backoff).await;
            return;
        }
        let answer = client
            .unary(
                tonic::Request::new(request.body.clone()),
                http::uri::PathAndQuery::from_static(EXPORT_PATH),
                PreEncodedCodec,
            )
            .await;
        match answer {
            Ok(response) => {
                let rejected = response
                    .get_ref()
                    .partial_success
                    .as_ref()
                    .map_or(0, |p| u64::try_from(p.rejected_spans).unwrap_or(0));
                stats.requests_ok.fetch_add(1, Ordering::Relaxed);
                stats.spans_rejected.fetch_add(rejected, Ordering::Relaxed);
                stats
                    .spans_acked
                    .fetch_add(request.spans.saturating_sub(rejected), Ordering::Relaxed);
                return;
            }
            Err(status) if is_pushback(&status) => {
                stats.pushbacks.fetch_add(1, Ordering::Relaxed);
                if Instant::now() >= give_up_at {
                    stats.record_error(format!(
                        "still pushed back after the grace period: {status}"
                    ));
                    return;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(PUSHBACK_BACKOFF_MAX);
            }
            Err(status) => {
                stats.record_error(format!("{:?}: {}", status.code(), status.message()));
                return;
            }
        }
    }
}

fn is_pushback(status: &Status) -> bool {
    matches!(status.code(), Code::Unavailable | Code::ResourceExhausted)
}

/// A gRPC codec whose requests are already-encoded protobuf bytes.
#[derive(Clone, Copy, Debug, Default)]
pub struct PreEncodedCodec;

impl Codec for PreEncodedCodec {
    type Encode = Bytes;
    type Decode = ExportTraceServiceResponse;
    type Encoder = PreEncodedCodec;
    type Decoder = ResponseDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        PreEncodedCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        ResponseDecoder
    }
}

impl Encoder for PreEncodedCodec {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.reserve(item.len());
        dst.put_slice(&item);
        Ok(())
    }
}

/// Decodes the `ExportTraceServiceResponse`, to see partial successes.
#[derive(Clone, Copy, Debug, Default)]
pub struct ResponseDecoder;

impl Decoder for ResponseDecoder {
    type Item = ExportTraceServiceResponse;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, Status> {
        let response = ExportTraceServiceResponse::decode(src.copy_to_bytes(src.remaining()))
            .map_err(|error| Status::internal(format!("undecodable response: {error}")))?;
        Ok(Some(response))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
        TraceService, TraceServiceServer,
    };
    use tonic::transport::server::TcpIncoming;

    use super::*;
    use crate::payload::build_requests;
    use crate::sink::Sink;

    fn requests(spans: usize) -> Arc<[EncodedRequest]> {
        build_requests(4, spans, &mut fastrand::Rng::with_seed(1)).into()
    }

    #[tokio::test]
    async fn every_acknowledged_span_is_counted_by_the_sink() {
        let sink = Sink::start().await.unwrap();
        let endpoint = format!("http://{}", sink.addr);
        let (stats, _) = run(
            &endpoint,
            requests(50),
            3,
            Pace::FullSpeed,
            Duration::from_millis(300),
        )
        .await
        .unwrap();
        let acked = stats.spans_acked.load(Ordering::Relaxed);
        assert!(acked > 0);
        assert_eq!(acked, 50 * stats.requests_ok.load(Ordering::Relaxed));
        assert_eq!(stats.errors.load(Ordering::Relaxed), 0);
        assert_eq!(sink.counts().spans, acked);
    }

    #[tokio::test]
    async fn rate_mode_sends_exactly_the_scheduled_requests() {
        let sink = Sink::start().await.unwrap();
        let endpoint = format!("http://{}", sink.addr);
        // 2,000 spans/s of 100-span requests: one request every 50 ms, 10 in 500 ms.
        let pace = Pace::SpansPerSecond(2_000);
        let (stats, wall) = run(
            &endpoint,
            requests(100),
            2,
            pace,
            Duration::from_millis(500),
        )
        .await
        .unwrap();
        assert_eq!(stats.requests_ok.load(Ordering::Relaxed), 10);
        assert_eq!(sink.counts().spans, 1_000);
        assert!(
            wall >= Duration::from_millis(450),
            "finished after {wall:?}"
        );
    }

    /// Answers UNAVAILABLE to the first `refusals` requests, then OK.
    struct Refusing {
        refusals: usize,
        seen: AtomicUsize,
    }

    #[tonic::async_trait]
    impl TraceService for Refusing {
        async fn export(
            &self,
            _: tonic::Request<ExportTraceServiceRequest>,
        ) -> Result<tonic::Response<ExportTraceServiceResponse>, Status> {
            if self.seen.fetch_add(1, Ordering::Relaxed) < self.refusals {
                return Err(Status::unavailable("queue full"));
            }
            Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
        }
    }

    #[tokio::test]
    async fn pushed_back_requests_are_counted_and_resent() {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let service = TraceServiceServer::new(Refusing {
            refusals: 3,
            seen: AtomicUsize::new(0),
        });
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(TcpIncoming::from(listener)),
        );
        // One slot and a schedule of exactly one request: it must be refused 3 times, then land.
        let (stats, _) = run(
            &format!("http://{addr}"),
            requests(10),
            1,
            Pace::SpansPerSecond(10),
            Duration::from_millis(500),
        )
        .await
        .unwrap();
        server.abort();
        assert_eq!(stats.pushbacks.load(Ordering::Relaxed), 3);
        assert_eq!(stats.requests_ok.load(Ordering::Relaxed), 1);
        assert_eq!(stats.spans_acked.load(Ordering::Relaxed), 10);
        assert_eq!(stats.errors.load(Ordering::Relaxed), 0);
    }
}
