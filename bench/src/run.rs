//! One benchmark run: sink, sluice, warm-up, measured load, drain, and the report.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::load::{self, LoadError, LoadStats, Pace};
use crate::payload::{self, EncodedRequest};
use crate::procfs::{self, ProcError};
use crate::sink::{Sink, SinkCounts};
use crate::sluice::{self, Compression, Ports, SluiceError, SluiceProcess};

/// How long sluice may take to open its receiver port.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

/// The drain after the load ends: it stops when the sink has every acknowledged span, or
/// when nothing new arrived for this long.
const DRAIN_QUIET: Duration = Duration::from_secs(3);

/// How often the sluice process's RSS is sampled during the measured phase.
const RSS_SAMPLE_INTERVAL: Duration = Duration::from_millis(250);

/// What to run.
#[derive(Clone, Debug)]
pub struct Options {
    pub sluice: PathBuf,
    pub pace: Pace,
    pub duration: Duration,
    pub warmup: Duration,
    pub compression: Compression,
    pub concurrency: usize,
    pub spans_per_request: usize,
    pub distinct_requests: usize,
    /// The exporter queue's `max_items`; sluice's default when None.
    pub queue_max_items: Option<usize>,
}

/// Errors that end a run before it has figures.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot start the sink: {0}")]
    Sink(std::io::Error),
    #[error("cannot find a free port: {0}")]
    Port(std::io::Error),
    #[error(transparent)]
    Sluice(#[from] SluiceError),
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(transparent)]
    Proc(#[from] ProcError),
    #[error("sluice exited during the run; its log:\n{0}")]
    SluiceDied(String),
}

/// The figures of one run; printed as one JSON line.
#[derive(Debug, Serialize)]
pub struct Report {
    pub mode: &'static str,
    /// The target rate in rate mode.
    pub target_spans_per_s: Option<u64>,
    pub compression: &'static str,
    /// The exporter queue's `max_items` if set (otherwise sluice's default).
    pub queue_max_items: Option<usize>,
    pub concurrency: usize,
    pub spans_per_request: usize,
    pub bytes_per_span: f64,
    /// Spans sluice acknowledged during the measured phase.
    pub spans_sent: u64,
    /// Spans the sink received from the start of the measured phase to the end of the drain.
    pub spans_received_by_sink: u64,
    /// The measured load phase, first send to last answer.
    pub wall_s: f64,
    /// After the load phase, until the sink had every span (or went quiet).
    pub drain_s: f64,
    pub achieved_spans_per_s: f64,
    /// utime + stime of the sluice process over the load phase and the drain.
    pub sluice_cpu_s: f64,
    /// The figure of merit: spans_received_by_sink / sluice_cpu_s.
    pub spans_per_cpu_second: f64,
    /// Sluice's CPU during the load phase as a share of one core.
    pub cpu_pct_of_one_core: f64,
    /// VmRSS of sluice at the end of the load phase.
    pub rss_mib: f64,
    /// The largest VmRSS sampled during the load phase.
    pub rss_max_sampled_mib: f64,
    /// The peak RSS of sluice: VmHWM at the end (includes warm-up), or the largest sample if
    /// that is higher (the kernel updates VmHWM lazily, so it can trail a sample slightly).
    pub peak_rss_mib: f64,
    /// UNAVAILABLE / RESOURCE_EXHAUSTED answers, each followed by a resend.
    pub pushback_count: u64,
    pub errors: u64,
    pub last_error: Option<String>,
    pub spans_rejected: u64,
    /// Export requests the sink received, and how many were gzip-compressed.
    pub sink_requests: u64,
    pub sink_gzip_requests: u64,
    /// Requests the sink refused because their spans did not decode.
    pub sink_invalid_requests: u64,
    pub sink_avg_spans_per_request: f64,
    /// CPU of the benchmark process itself (load generator and sink) over the same span.
    pub bench_cpu_s: f64,
}

impl Report {
    /// True when the sink received exactly what sluice acknowledged.
    pub fn complete(&self) -> bool {
        self.spans_received_by_sink == self.spans_sent
    }

    /// One line for people, saying plainly whether any span went missing.
    pub fn summary(&self) -> String {
        let rate = match self.target_spans_per_s {
            Some(target) => format!("rate {target}/s"),
            None => "full speed".to_string(),
        };
        let delivery = if self.complete() {
            format!(
                "all {} acknowledged spans reached the sink",
                self.spans_sent
            )
        } else {
            format!(
                "MISMATCH: the sink received {} of {} acknowledged spans",
                self.spans_received_by_sink, self.spans_sent
            )
        };
        format!(
            "{rate}, exporter compression {}: {:.0} spans/s for {:.1} s; sluice used {:.2} CPU-s \
             = {:.0} spans per CPU-second, {:.1}% of a core; RSS {:.1} MiB at the end, peak {:.1} MiB; \
             {} pushbacks, {} errors; {delivery}",
            self.compression,
            self.achieved_spans_per_s,
            self.wall_s,
            self.sluice_cpu_s,
            self.spans_per_cpu_second,
            self.cpu_pct_of_one_core,
            self.rss_mib,
            self.peak_rss_mib,
            self.pushback_count,
            self.errors,
        )
    }
}

/// Runs the benchmark described by `options`.
pub async fn run(options: &Options) -> Result<Report, RunError> {
    let mut rng = fastrand::Rng::new();
    let requests: Arc<[EncodedRequest]> = payload::build_requests(
        options.distinct_requests,
        options.spans_per_request,
        &mut rng,
    )
    .into();
    let total_bytes: usize = requests.iter().map(|r| r.body.len()).sum();
    let total_spans: u64 = requests.iter().map(|r| r.spans).sum();
    let ticks = procfs::clock_ticks_per_second()? as f64;

    let sink = Sink::start().await.map_err(RunError::Sink)?;
    let ports = Ports {
        receiver: sluice::free_local_addr().map_err(RunError::Port)?,
        admin: sluice::free_local_addr().map_err(RunError::Port)?,
        sink: sink.addr,
    };
    let mut sluice = SluiceProcess::start(
        &options.sluice,
        &sluice::config(ports, options.compression, options.queue_max_items),
    )?;
    sluice
        .wait_for_port(ports.receiver, STARTUP_TIMEOUT)
        .await?;
    let pid = sluice.pid();
    let endpoint = format!("http://{}", ports.receiver);
    let mut sink_watch = sink.watch();

    if !options.warmup.is_zero() {
        let base = sink.counts().spans;
        let (stats, _) = load::run(
            &endpoint,
            Arc::clone(&requests),
            options.concurrency,
            options.pace,
            options.warmup,
        )
        .await?;
        drain(
            &mut sink_watch,
            base + stats.spans_acked.load(Ordering::Relaxed),
        )
        .await;
    }

    let base: SinkCounts = sink.counts();
    let cpu_start = procfs::cpu_ticks(pid)?;
    let bench_cpu_start = procfs::cpu_ticks(std::process::id())?;
    let (rss_stop, rss_sampler) = sample_rss(pid);
    let (stats, wall) = load::run(
        &endpoint,
        Arc::clone(&requests),
        options.concurrency,
        options.pace,
        options.duration,
    )
    .await?;
    let cpu_load_end = procfs::cpu_ticks(pid)?;
    let rss_mib = procfs::status_mib(pid, "VmRSS")?;
    let _ = rss_stop.send(());
    let rss_max_sampled_mib = rss_sampler.await.unwrap_or(0.0).max(rss_mib);

    let spans_sent = stats.spans_acked.load(Ordering::Relaxed);
    let drain_start = Instant::now();
    drain(&mut sink_watch, base.spans + spans_sent).await;
    let drain_time = drain_start.elapsed();
    let cpu_end = procfs::cpu_ticks(pid)?;
    let bench_cpu_end = procfs::cpu_ticks(std::process::id())?;
    let peak_rss_mib = procfs::status_mib(pid, "VmHWM")?;
    if sluice.exited().is_some() {
        return Err(RunError::SluiceDied(sluice.log()));
    }
    let end = sink.counts();

    let received = end.spans - base.spans;
    let sink_requests = end.requests - base.requests;
    let sluice_cpu_s = (cpu_end - cpu_start) as f64 / ticks;
    let wall_s = wall.as_secs_f64();
    Ok(Report {
        mode: match options.pace {
            Pace::FullSpeed => "full",
            Pace::SpansPerSecond(_) => "rate",
        },
        target_spans_per_s: match options.pace {
            Pace::FullSpeed => None,
            Pace::SpansPerSecond(rate) => Some(rate),
        },
        compression: options.compression.as_str(),
        queue_max_items: options.queue_max_items,
        concurrency: options.concurrency,
        spans_per_request: options.spans_per_request,
        bytes_per_span: round(total_bytes as f64 / total_spans.max(1) as f64, 1),
        spans_sent,
        spans_received_by_sink: received,
        wall_s: round(wall_s, 3),
        drain_s: round(drain_time.as_secs_f64(), 3),
        achieved_spans_per_s: round(spans_sent as f64 / wall_s, 0),
        sluice_cpu_s: round(sluice_cpu_s, 2),
        spans_per_cpu_second: if sluice_cpu_s > 0.0 {
            round(received as f64 / sluice_cpu_s, 0)
        } else {
            0.0
        },
        cpu_pct_of_one_core: round(
            (cpu_load_end - cpu_start) as f64 / ticks / wall_s * 100.0,
            1,
        ),
        rss_mib: round(rss_mib, 1),
        rss_max_sampled_mib: round(rss_max_sampled_mib, 1),
        peak_rss_mib: round(peak_rss_mib.max(rss_max_sampled_mib), 1),
        pushback_count: stats.pushbacks.load(Ordering::Relaxed),
        errors: stats.errors.load(Ordering::Relaxed),
        last_error: last_error(&stats),
        spans_rejected: stats.spans_rejected.load(Ordering::Relaxed),
        sink_requests,
        sink_gzip_requests: end.gzip_requests - base.gzip_requests,
        sink_invalid_requests: end.invalid_requests - base.invalid_requests,
        sink_avg_spans_per_request: round(received as f64 / sink_requests.max(1) as f64, 0),
        bench_cpu_s: round((bench_cpu_end - bench_cpu_start) as f64 / ticks, 2),
    })
}

fn last_error(stats: &LoadStats) -> Option<String> {
    stats.last_error.lock().ok().and_then(|last| last.clone())
}

fn round(value: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (value * scale).round() / scale
}

/// Waits until the sink has counted `target` spans, or nothing arrived for `DRAIN_QUIET`.
async fn drain(sink: &mut watch::Receiver<SinkCounts>, target: u64) {
    sink.mark_unchanged();
    while sink.borrow().spans < target {
        match tokio::time::timeout(DRAIN_QUIET, sink.changed()).await {
            Ok(Ok(())) => {}
            // Quiet for DRAIN_QUIET, or the sink is gone: what arrived is all there is.
            Ok(Err(_)) | Err(_) => return,
        }
    }
}

/// Samples the VmRSS of `pid` until told to stop; yields the largest sample in MiB.
fn sample_rss(
    pid: u32,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<f64>,
) {
    let (stop, mut stopped) = tokio::sync::oneshot::channel();
    let sampler = tokio::spawn(async move {
        let mut max: f64 = 0.0;
        let mut tick = tokio::time::interval(RSS_SAMPLE_INTERVAL);
        loop {
            tokio::select! {
                _ = &mut stopped => return max,
                _ = tick.tick() => {
                    if let Ok(rss) = procfs::status_mib(pid, "VmRSS") {
                        max = max.max(rss);
                    }
                }
            }
        }
    });
    (stop, sampler)
}
