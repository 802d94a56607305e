//! The `batch` processor: merges the batches of one pipeline into larger ones, sent when they
//! reach `send_batch_size` items or when their oldest item has waited `timeout`.
//!
//! Merging costs no decoding: encoded batches are appended by concatenating their encodings.
//! Each instance runs one task that owns the pending batch; `consume` hands batches to it
//! through a bounded channel and never waits, so a receiver learns at once when the pipeline
//! is full and can tell its client to retry.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use prometheus::IntCounter;
use serde::Deserialize;
use sluice_pipeline::{
    Batch, ComponentSettings, ConfigError, ConsumeError, Consumer, Processor, ProcessorContext,
    ProcessorFactory, Running, RunningProcessor, Signal, StartError,
};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Configuration of the `batch` processor (`[processors.batch]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchConfig {
    /// Send a batch as soon as this many items (spans, metric data points, log records) are
    /// pending. Must be greater than 0.
    #[serde(default = "default_send_batch_size")]
    pub send_batch_size: usize,
    /// The most items one sent batch may hold; larger ones are split. 0 means no cap: when
    /// `send_batch_size` is reached, everything pending is sent together. When set, it must be
    /// at least `send_batch_size`.
    #[serde(default = "default_send_batch_max_size")]
    pub send_batch_max_size: usize,
    /// The longest an item waits before the batch holding it is sent, e.g. `"200ms"`.
    #[serde(
        default = "default_timeout",
        with = "sluice_pipeline::config::duration"
    )]
    pub timeout: Duration,
}

fn default_send_batch_size() -> usize {
    8192
}

fn default_send_batch_max_size() -> usize {
    0
}

fn default_timeout() -> Duration {
    Duration::from_millis(200)
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            send_batch_size: default_send_batch_size(),
            send_batch_max_size: default_send_batch_max_size(),
            timeout: default_timeout(),
        }
    }
}

impl BatchConfig {
    /// Parses and checks the `[processors.<id>]` table.
    pub fn from_settings(settings: &ComponentSettings) -> Result<BatchConfig, ConfigError> {
        let config: BatchConfig = settings.parse()?;
        if config.send_batch_size == 0 {
            return Err(settings.error("send_batch_size", "must be greater than 0"));
        }
        if config.send_batch_max_size != 0 && config.send_batch_max_size < config.send_batch_size {
            return Err(settings.error(
                "send_batch_max_size",
                format!(
                    "{} is less than send_batch_size ({}): set it to at least send_batch_size, \
                     or to 0 for no cap",
                    config.send_batch_max_size, config.send_batch_size
                ),
            ));
        }
        Ok(config)
    }

    /// How many pending items to send in the next batch.
    fn next_batch_items(&self, pending: usize) -> usize {
        if self.send_batch_max_size == 0 {
            pending
        } else {
            pending.min(self.send_batch_max_size)
        }
    }
}

/// How many received batches may wait for an instance's task. The task takes batches in as
/// fast as it can append them (no decoding), so the channel only fills while the next
/// component refuses what the task sends (a full exporter queue). The bound is then what the
/// processor holds on top of its pending batch before receivers are told to retry: 16
/// requests (a few MiB for typical SDK requests).
pub const INPUT_CAPACITY: usize = 16;

/// The first wait before sending again a batch the next component refused retryably.
const INITIAL_BACKOFF: Duration = Duration::from_millis(5);
/// The longest wait between two attempts: short, so a freed queue is filled again quickly.
const MAX_BACKOFF: Duration = Duration::from_millis(100);

/// Builds `batch` processors.
pub struct BatchProcessorFactory;

impl ProcessorFactory for BatchProcessorFactory {
    fn type_name(&self) -> &'static str {
        "batch"
    }

    fn signals(&self) -> &'static [Signal] {
        &Signal::ALL
    }

    fn build(&self, settings: &ComponentSettings) -> Result<Box<dyn Processor>, ConfigError> {
        Ok(Box::new(BatchProcessor {
            config: BatchConfig::from_settings(settings)?,
        }))
    }
}

/// A `batch` processor built from config, ready to start in a pipeline.
pub struct BatchProcessor {
    config: BatchConfig,
}

impl BatchProcessor {
    /// A processor for `config` (checked by [`BatchConfig::from_settings`]).
    pub fn new(config: BatchConfig) -> BatchProcessor {
        BatchProcessor { config }
    }
}

#[async_trait]
impl Processor for BatchProcessor {
    async fn start(
        self: Box<Self>,
        ctx: ProcessorContext,
    ) -> Result<Arc<dyn RunningProcessor>, StartError> {
        let (input, rx) = mpsc::channel(INPUT_CAPACITY);
        let shutdown = CancellationToken::new();
        let telemetry = &ctx.telemetry;
        let task = BatchTask {
            config: self.config,
            input: rx,
            next: ctx.next,
            pending: Pending::new(ctx.signal),
            shutdown: shutdown.clone(),
            sent_on_size: telemetry.processor_batches(&ctx.id, ctx.signal, "size"),
            sent_on_timeout: telemetry.processor_batches(&ctx.id, ctx.signal, "timeout"),
            sent_on_shutdown: telemetry.processor_batches(&ctx.id, ctx.signal, "shutdown"),
            dropped: telemetry.processor_dropped(&ctx.id, ctx.signal),
            id: ctx.id.clone(),
            pipeline: ctx.pipeline,
            signal: ctx.signal,
        };
        Ok(Arc::new(RunningBatch {
            id: ctx.id,
            input,
            shutdown,
            task: Mutex::new(Some(tokio::spawn(task.run()))),
        }))
    }
}

/// A `batch` processor running in one pipeline.
pub struct RunningBatch {
    id: String,
    input: mpsc::Sender<Batch>,
    shutdown: CancellationToken,
    /// The task holding the pending batch; taken and awaited by the first `shutdown`.
    task: Mutex<Option<JoinHandle<()>>>,
}

#[async_trait]
impl Consumer for RunningBatch {
    async fn consume(&self, batch: Batch) -> Result<(), ConsumeError> {
        if self.shutdown.is_cancelled() {
            return Err(ConsumeError::ShuttingDown);
        }
        if batch.is_empty() {
            // Nothing to deliver: a request without spans, data points or log records.
            return Ok(());
        }
        self.input.try_send(batch).map_err(|error| match error {
            mpsc::error::TrySendError::Full(_) => ConsumeError::Backpressure(format!(
                "batch processor {}: {INPUT_CAPACITY} batches already wait for the next component",
                self.id
            )),
            mpsc::error::TrySendError::Closed(_) => ConsumeError::ShuttingDown,
        })
    }
}

#[async_trait]
impl Running for RunningBatch {
    /// Stops taking batches, then returns once everything taken has been sent or dropped.
    async fn shutdown(&self) {
        self.shutdown.cancel();
        let task = self
            .task
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(task) = task
            && let Err(error) = task.await
        {
            tracing::error!(processor = %self.id, %error, "batch processor task failed");
        }
    }
}

/// What made a batch go out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trigger {
    Size,
    Timeout,
    Shutdown,
}

/// The items received but not sent yet.
struct Pending {
    batch: Batch,
    /// When each received batch still (partly) pending arrived, and how many of its items are
    /// still pending; oldest first. The front gives the deadline of the next timeout.
    arrivals: VecDeque<(Instant, usize)>,
}

impl Pending {
    fn new(signal: Signal) -> Pending {
        Pending {
            batch: Batch::empty(signal),
            arrivals: VecDeque::new(),
        }
    }

    fn items(&self) -> usize {
        self.batch.item_count()
    }

    fn push(&mut self, batch: Batch) {
        self.arrivals
            .push_back((Instant::now(), batch.item_count()));
        self.batch.append(batch);
    }

    /// When the oldest pending item will have waited `timeout`.
    fn deadline(&self, timeout: Duration) -> Option<Instant> {
        self.arrivals.front().map(|(arrived, _)| *arrived + timeout)
    }

    /// Removes the first `n` pending items.
    fn take(&mut self, n: usize) -> Batch {
        let batch = self.batch.split_to(n);
        let mut taken = batch.item_count();
        while let Some((_, items)) = self.arrivals.front_mut() {
            if *items > taken {
                *items -= taken;
                break;
            }
            taken -= *items;
            self.arrivals.pop_front();
        }
        batch
    }
}

/// The task of one instance: owns the pending items and sends batches to the next component.
struct BatchTask {
    config: BatchConfig,
    input: mpsc::Receiver<Batch>,
    next: Arc<dyn Consumer>,
    pending: Pending,
    shutdown: CancellationToken,
    sent_on_size: IntCounter,
    sent_on_timeout: IntCounter,
    sent_on_shutdown: IntCounter,
    dropped: IntCounter,
    id: String,
    pipeline: String,
    signal: Signal,
}

impl BatchTask {
    async fn run(mut self) {
        loop {
            let deadline = self.pending.deadline(self.config.timeout);
            tokio::select! {
                biased;
                () = self.shutdown.cancelled() => break,
                received = self.input.recv() => match received {
                    Some(batch) => {
                        self.pending.push(batch);
                        while self.pending.items() >= self.config.send_batch_size {
                            self.send_next(Trigger::Size).await;
                        }
                    }
                    // The processor was dropped without a shutdown: flush all the same.
                    None => break,
                },
                () = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)),
                    if deadline.is_some() => {
                    while self.pending.items() > 0 {
                        self.send_next(Trigger::Timeout).await;
                    }
                }
            }
        }
        // Take in what consumers handed over before the input closed, then send it all.
        self.input.close();
        while let Some(batch) = self.input.recv().await {
            self.pending.push(batch);
        }
        while self.pending.items() > 0 {
            self.send_next(Trigger::Shutdown).await;
        }
    }

    /// Sends the next batch of pending items, at most `send_batch_max_size` of them.
    async fn send_next(&mut self, trigger: Trigger) {
        let items = self.config.next_batch_items(self.pending.items());
        let batch = self.pending.take(items);
        self.deliver(batch, trigger).await;
    }

    /// Hands `batch` to the next component, retrying while it refuses retryably, until it is
    /// taken or shutdown allows a last attempt; what is not taken is dropped and counted.
    async fn deliver(&self, mut batch: Batch, trigger: Trigger) {
        // Each attempt sends a copy; encoded copies share their bytes, so encode once first.
        batch.encoded_segments();
        let mut backoff = INITIAL_BACKOFF;
        loop {
            let last_attempt = self.shutdown.is_cancelled();
            match self.next.consume(batch.clone()).await {
                Ok(()) => {
                    match trigger {
                        Trigger::Size => &self.sent_on_size,
                        Trigger::Timeout => &self.sent_on_timeout,
                        Trigger::Shutdown => &self.sent_on_shutdown,
                    }
                    .inc();
                    return;
                }
                Err(error) if error.is_retryable() && !last_attempt => {
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = self.shutdown.cancelled() => {}
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
                Err(error) => {
                    let items = batch.item_count();
                    self.dropped.inc_by(items as u64);
                    tracing::warn!(
                        processor = %self.id,
                        pipeline = %self.pipeline,
                        signal = %self.signal,
                        items,
                        %error,
                        "dropped a batch the next component did not take"
                    );
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use bytes::Bytes;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
    use prost::Message;
    use sluice_pipeline::config::ComponentKind;
    use sluice_pipeline::{Request, Telemetry};
    use tokio::sync::{Notify, Semaphore};

    use super::*;

    fn settings(toml: &str) -> ComponentSettings {
        ComponentSettings::new(
            ComponentKind::Processor,
            "batch",
            "batch",
            toml::from_str(toml).expect("test TOML is valid"),
        )
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let config = BatchConfig::from_settings(&settings("")).unwrap();
        assert_eq!(config, BatchConfig::default());
        assert_eq!(config.send_batch_size, 8192);
        assert_eq!(config.send_batch_max_size, 0);
        assert_eq!(config.timeout, Duration::from_millis(200));
    }

    #[test]
    fn readme_example_parses() {
        let readme = include_str!("../README.md");
        let example = readme
            .split("```toml\n")
            .nth(1)
            .and_then(|rest| rest.split("```").next())
            .expect("the README has a TOML example");
        let file: toml::Table = toml::from_str(example).unwrap();
        let table = file["processors"]["batch"].as_table().unwrap().clone();
        let config = BatchConfig::from_settings(&ComponentSettings {
            table,
            ..settings("")
        })
        .unwrap();
        assert_eq!(config.send_batch_size, 8192);
        assert_eq!(config.send_batch_max_size, 10000);
        assert_eq!(config.timeout, Duration::from_millis(200));
    }

    #[test]
    fn zero_send_batch_size_is_an_error_naming_the_key() {
        let error = BatchConfig::from_settings(&settings("send_batch_size = 0")).unwrap_err();
        assert_eq!(error.path.to_string(), "processors.batch.send_batch_size");
    }

    #[test]
    fn max_size_below_send_batch_size_is_an_error_naming_the_key() {
        let error = BatchConfig::from_settings(&settings(
            "send_batch_size = 100\nsend_batch_max_size = 50",
        ))
        .unwrap_err();
        assert_eq!(
            error.path.to_string(),
            "processors.batch.send_batch_max_size"
        );
        assert!(
            error.message.contains("at least send_batch_size"),
            "{}",
            error.message
        );
        // Equal is fine, and 0 means no cap.
        for max in ["100", "0"] {
            let toml = format!("send_batch_size = 100\nsend_batch_max_size = {max}");
            assert!(BatchConfig::from_settings(&settings(&toml)).is_ok());
        }
    }

    #[test]
    fn unknown_key_and_bad_duration_are_errors_naming_the_key() {
        let error = BatchConfig::from_settings(&settings("send_batch_szie = 5")).unwrap_err();
        assert_eq!(error.path.to_string(), "processors.batch.send_batch_szie");
        let error = BatchConfig::from_settings(&settings("timeout = \"soon\"")).unwrap_err();
        assert_eq!(error.path.to_string(), "processors.batch.timeout");
    }

    /// A downstream consumer that records what it takes, answers from a script first, and can
    /// be made to wait.
    #[derive(Default)]
    struct Recorder {
        taken: Mutex<Vec<(Instant, Batch)>>,
        /// Answers for the first calls; after them every batch is taken.
        script: Mutex<VecDeque<ConsumeError>>,
        /// The answer once the script is used up; `None` takes the batch.
        always: Option<ConsumeError>,
        /// When set, each call waits for a permit first.
        gate: Option<Semaphore>,
        calls: AtomicUsize,
        /// Signalled when a call starts and when a batch is taken.
        called: Notify,
    }

    #[async_trait]
    impl Consumer for Recorder {
        async fn consume(&self, batch: Batch) -> Result<(), ConsumeError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            self.called.notify_one();
            if let Some(gate) = &self.gate {
                gate.acquire()
                    .await
                    .expect("the gate is never closed")
                    .forget();
            }
            let scripted = self.script.lock().unwrap().pop_front();
            if let Some(error) = scripted.or_else(|| self.always.clone()) {
                return Err(error);
            }
            self.taken.lock().unwrap().push((Instant::now(), batch));
            self.called.notify_one();
            Ok(())
        }
    }

    impl Recorder {
        fn sizes(&self) -> Vec<usize> {
            self.taken
                .lock()
                .unwrap()
                .iter()
                .map(|(_, b)| b.item_count())
                .collect()
        }

        /// The names of every span taken, in order.
        fn span_names(&self) -> Vec<String> {
            let taken = std::mem::take(&mut *self.taken.lock().unwrap());
            let mut names = Vec::new();
            for (_, batch) in taken {
                let Request::Traces(request) = batch.into_request().unwrap() else {
                    panic!("traces only");
                };
                for rs in request.resource_spans {
                    for ss in rs.scope_spans {
                        names.extend(ss.spans.into_iter().map(|s| s.name));
                    }
                }
            }
            names
        }

        /// Waits until `count` batches have been taken.
        async fn wait_for_batches(&self, count: usize) {
            let wait = async {
                while self.taken.lock().unwrap().len() < count {
                    self.called.notified().await;
                    tokio::task::yield_now().await;
                }
            };
            tokio::time::timeout(Duration::from_secs(10), wait)
                .await
                .expect("the batches arrive");
        }
    }

    /// An encoded traces batch of spans named `first`, `first + 1`, ….
    fn spans(first: usize, count: usize) -> Batch {
        let request = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans {
                    spans: (first..first + count)
                        .map(|i| Span {
                            name: i.to_string(),
                            ..Default::default()
                        })
                        .collect(),
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        Batch::from_encoded(Signal::Traces, Bytes::from(request.encode_to_vec())).unwrap()
    }

    fn names(range: std::ops::Range<usize>) -> Vec<String> {
        range.map(|i| i.to_string()).collect()
    }

    async fn start(
        config: BatchConfig,
        next: Arc<Recorder>,
    ) -> (Arc<dyn RunningProcessor>, Telemetry) {
        let telemetry = Telemetry::new();
        let processor = Box::new(BatchProcessor::new(config))
            .start(ProcessorContext {
                id: "batch".to_string(),
                pipeline: "traces".to_string(),
                signal: Signal::Traces,
                next,
                telemetry: telemetry.clone(),
            })
            .await
            .unwrap();
        (processor, telemetry)
    }

    fn config(size: usize, max: usize, timeout: Duration) -> BatchConfig {
        BatchConfig {
            send_batch_size: size,
            send_batch_max_size: max,
            timeout,
        }
    }

    fn sent(telemetry: &Telemetry, trigger: &str) -> u64 {
        telemetry
            .processor_batches("batch", Signal::Traces, trigger)
            .get()
    }

    const HOUR: Duration = Duration::from_secs(3600);

    #[tokio::test]
    async fn batch_flushes_on_size_with_everything_pending_when_uncapped() {
        let next = Arc::new(Recorder::default());
        let (processor, telemetry) = start(config(10, 0, HOUR), next.clone()).await;
        for i in 0..4 {
            processor.consume(spans(3 * i, 3)).await.unwrap();
        }
        next.wait_for_batches(1).await;
        assert_eq!(next.sizes(), vec![12]);
        assert_eq!(next.span_names(), names(0..12));
        assert_eq!(sent(&telemetry, "size"), 1);
        processor.shutdown().await;
        assert_eq!(sent(&telemetry, "shutdown"), 0, "nothing was left to flush");
    }

    #[tokio::test(start_paused = true)]
    async fn batch_flushes_on_timeout_when_below_size() {
        let next = Arc::new(Recorder::default());
        let timeout = Duration::from_millis(200);
        let (processor, telemetry) = start(config(100, 0, timeout), next.clone()).await;
        let first_arrival = Instant::now();
        processor.consume(spans(0, 5)).await.unwrap();
        // A later arrival does not postpone the first item's deadline.
        tokio::time::sleep(Duration::from_millis(150)).await;
        processor.consume(spans(5, 5)).await.unwrap();
        next.wait_for_batches(1).await;
        let sent_at = next.taken.lock().unwrap()[0].0;
        assert_eq!(sent_at - first_arrival, timeout);
        assert_eq!(next.span_names(), names(0..10));
        assert_eq!(sent(&telemetry, "timeout"), 1);
        assert_eq!(sent(&telemetry, "size"), 0);
        processor.shutdown().await;
    }

    #[tokio::test(start_paused = true)]
    async fn leftover_items_keep_their_own_deadline() {
        let next = Arc::new(Recorder::default());
        let timeout = Duration::from_millis(200);
        let (processor, _telemetry) = start(config(10, 10, timeout), next.clone()).await;
        let start = Instant::now();
        processor.consume(spans(0, 4)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        // 4 + 8 = 12: the first 10 go on size, the last 2 arrived at 100ms.
        processor.consume(spans(4, 8)).await.unwrap();
        next.wait_for_batches(2).await;
        let times: Vec<Duration> = next
            .taken
            .lock()
            .unwrap()
            .iter()
            .map(|(t, _)| *t - start)
            .collect();
        assert_eq!(
            times,
            vec![Duration::from_millis(100), Duration::from_millis(300)]
        );
        assert_eq!(next.sizes(), vec![10, 2]);
        processor.shutdown().await;
    }

    #[tokio::test]
    async fn batch_splits_above_max_size_with_exact_sizes() {
        let next = Arc::new(Recorder::default());
        let (processor, telemetry) = start(config(10, 15, HOUR), next.clone()).await;
        processor.consume(spans(0, 47)).await.unwrap();
        next.wait_for_batches(3).await;
        assert_eq!(
            next.sizes(),
            vec![15, 15, 15],
            "2 items stay pending below the size"
        );
        processor.shutdown().await;
        assert_eq!(next.sizes(), vec![15, 15, 15, 2]);
        assert_eq!(next.span_names(), names(0..47));
        assert_eq!(sent(&telemetry, "size"), 3);
        assert_eq!(sent(&telemetry, "shutdown"), 1);
    }

    #[tokio::test]
    async fn merged_batches_are_split_across_request_boundaries() {
        let next = Arc::new(Recorder::default());
        let (processor, _telemetry) = start(config(10, 10, HOUR), next.clone()).await;
        for i in 0..5 {
            processor.consume(spans(7 * i, 7)).await.unwrap();
        }
        processor.shutdown().await;
        assert_eq!(next.sizes(), vec![10, 10, 10, 5]);
        assert_eq!(next.span_names(), names(0..35));
    }

    #[tokio::test]
    async fn batch_flushes_on_shutdown_and_then_refuses() {
        let next = Arc::new(Recorder::default());
        let (processor, telemetry) = start(config(100, 0, HOUR), next.clone()).await;
        processor.consume(spans(0, 7)).await.unwrap();
        processor.shutdown().await;
        assert_eq!(next.sizes(), vec![7]);
        assert_eq!(sent(&telemetry, "shutdown"), 1);
        assert_eq!(
            processor.consume(spans(7, 1)).await,
            Err(ConsumeError::ShuttingDown)
        );
    }

    #[tokio::test]
    async fn batch_pushes_back_when_its_input_is_full() {
        let next = Arc::new(Recorder {
            gate: Some(Semaphore::new(0)),
            ..Default::default()
        });
        let (processor, telemetry) = start(config(1, 0, HOUR), next.clone()).await;
        // The task takes the first batch and waits on the next component.
        processor.consume(spans(0, 1)).await.unwrap();
        while next.calls.load(Ordering::SeqCst) == 0 {
            next.called.notified().await;
        }
        for i in 1..=INPUT_CAPACITY {
            processor.consume(spans(i, 1)).await.unwrap();
        }
        let refused = processor.consume(spans(99, 1)).await;
        assert!(
            matches!(refused, Err(ConsumeError::Backpressure(_))),
            "{refused:?}"
        );
        assert!(refused.unwrap_err().is_retryable());

        // Once the next component takes batches again, everything accepted arrives.
        next.gate.as_ref().unwrap().add_permits(1000);
        processor.shutdown().await;
        assert_eq!(next.span_names(), names(0..INPUT_CAPACITY + 1));
        assert_eq!(
            telemetry.processor_dropped("batch", Signal::Traces).get(),
            0
        );
    }

    #[tokio::test]
    async fn permanent_downstream_error_drops_and_counts_the_items() {
        let next = Arc::new(Recorder {
            always: Some(ConsumeError::Rejected("no".to_string())),
            ..Default::default()
        });
        let (processor, telemetry) = start(config(5, 0, HOUR), next.clone()).await;
        processor.consume(spans(0, 5)).await.unwrap();
        processor.shutdown().await;
        assert_eq!(next.calls.load(Ordering::SeqCst), 1, "not retried");
        assert_eq!(
            telemetry.processor_dropped("batch", Signal::Traces).get(),
            5
        );
        assert_eq!(sent(&telemetry, "size"), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn retryable_downstream_error_is_retried_until_taken() {
        let next = Arc::new(Recorder {
            script: Mutex::new(
                (0..3)
                    .map(|_| ConsumeError::Backpressure("full".to_string()))
                    .collect(),
            ),
            ..Default::default()
        });
        let (processor, telemetry) = start(config(5, 0, HOUR), next.clone()).await;
        let start = Instant::now();
        processor.consume(spans(0, 5)).await.unwrap();
        next.wait_for_batches(1).await;
        // Three refusals: waits of 5, 10 and 20ms.
        assert_eq!(
            next.taken.lock().unwrap()[0].0 - start,
            Duration::from_millis(35)
        );
        assert_eq!(next.calls.load(Ordering::SeqCst), 4);
        assert_eq!(sent(&telemetry, "size"), 1);
        assert_eq!(
            telemetry.processor_dropped("batch", Signal::Traces).get(),
            0
        );
        processor.shutdown().await;
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_drops_and_counts_what_downstream_still_refuses() {
        let next = Arc::new(Recorder {
            always: Some(ConsumeError::Backpressure("full".to_string())),
            ..Default::default()
        });
        let (processor, telemetry) = start(config(5, 0, HOUR), next.clone()).await;
        processor.consume(spans(0, 5)).await.unwrap(); // retried until shutdown
        processor.consume(spans(5, 3)).await.unwrap(); // still pending at shutdown
        tokio::time::sleep(Duration::from_secs(1)).await;
        processor.shutdown().await;
        assert_eq!(
            telemetry.processor_dropped("batch", Signal::Traces).get(),
            8
        );
        assert!(next.taken.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn empty_batches_are_accepted_and_not_sent() {
        let next = Arc::new(Recorder::default());
        let (processor, telemetry) = start(config(1, 0, HOUR), next.clone()).await;
        processor
            .consume(Batch::empty(Signal::Traces))
            .await
            .unwrap();
        processor.shutdown().await;
        assert_eq!(next.calls.load(Ordering::SeqCst), 0);
        assert_eq!(sent(&telemetry, "shutdown"), 0);
    }
}
