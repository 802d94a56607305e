//! The running pipeline graph: starting a plan, reloading a new one in place, stopping.
//!
//! Components are linked through [`Switch`]es, consumers whose target can be changed while
//! data flows. That is what lets a reload rebuild only what changed: a receiver whose settings
//! are unchanged keeps its listeners and connections and is simply pointed at the new pipeline
//! heads; a processor whose settings are unchanged keeps its state (a tail sampler's buffered
//! traces) and is relinked to its new successor; an exporter whose own settings changed gets
//! the new exporter behind the same queue, keeping what is queued.
//!
//! Starting is back to front (exporters, processors, receivers) so nothing receives data
//! before its downstream exists; stopping is front to back so everything accepted is flushed.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use async_trait::async_trait;

use crate::ack::{AckToken, Acks};
use crate::batch::Batch;
use crate::component::{
    Consumer, ExporterContext, ProcessorContext, ReceiverContext, Running, RunningProcessor,
    SignalConsumers,
};
use crate::config::ComponentSettings;
use crate::error::{ConsumeError, StartError};
use crate::graph::{Plan, PlannedExporter, PlannedPipeline, PlannedReceiver};
use crate::queue::{Fanout, QueuedExporter};
use crate::signal::Signal;
use crate::tap::TapPoint;
use crate::telemetry::Telemetry;

/// A consumer that hands batches to a target that can be changed at any time. It sits at the
/// output of a component, so it is also where that component's tap point sees the data.
pub struct Switch {
    target: RwLock<Arc<dyn Consumer>>,
    tap: Arc<TapPoint>,
}

impl Switch {
    /// A switch pointing at `target`, showing what passes on `tap`.
    pub fn to(target: Arc<dyn Consumer>, tap: Arc<TapPoint>) -> Arc<Switch> {
        Arc::new(Switch {
            target: RwLock::new(target),
            tap,
        })
    }

    /// Sends the next batches to `target`.
    pub fn set(&self, target: Arc<dyn Consumer>) {
        *self.target.write().unwrap_or_else(|p| p.into_inner()) = target;
    }
}

#[async_trait]
impl Consumer for Switch {
    async fn consume(&self, batch: Batch) -> Result<(), ConsumeError> {
        self.tap.offer(&batch);
        let target = Arc::clone(&self.target.read().unwrap_or_else(|p| p.into_inner()));
        target.consume(batch).await
    }
}

/// The head of a pipeline with `acknowledgements = true`: takes a batch only once every
/// exporter has sent it or written it to its disk queue (see [`crate::ack`]).
struct Acknowledging {
    next: Arc<dyn Consumer>,
}

#[async_trait]
impl Consumer for Acknowledging {
    async fn consume(&self, mut batch: Batch) -> Result<(), ConsumeError> {
        let (token, waiter) = AckToken::new();
        let mut acks = Acks::default();
        acks.push(token);
        batch.add_acks(acks);
        self.next.consume(batch).await?;
        // Retryable: the client sends again, and at-least-once delivery may mean a duplicate,
        // never a loss.
        waiter.outcome().await.map_err(ConsumeError::Backpressure)
    }
}

struct RunningExporter {
    settings: ComponentSettings,
    queue: Arc<QueuedExporter>,
}

struct RunningProcessorEntry {
    id: String,
    settings: ComponentSettings,
    instance: Arc<dyn RunningProcessor>,
    /// Where the instance sends what it processed.
    next: Arc<Switch>,
}

struct RunningPipeline {
    signal: Signal,
    processors: Vec<RunningProcessorEntry>,
    head: Arc<dyn Consumer>,
}

/// What makes a running receiver the same as a planned one: its settings and the signals it
/// feeds (a receiver serves only the signals it was started with).
struct ReceiverIdentity {
    settings: ComponentSettings,
    signals: BTreeSet<Signal>,
}

impl ReceiverIdentity {
    fn same_as(&self, other: &ReceiverIdentity) -> bool {
        self.settings.same_as(&other.settings) && self.signals == other.signals
    }
}

struct RunningReceiver {
    identity: ReceiverIdentity,
    running: Box<dyn Running>,
    switches: BTreeMap<Signal, Arc<Switch>>,
}

/// What a reload changed, for the log and the caller.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReloadSummary {
    /// Components started, replaced or removed, as `kind id`.
    pub started: Vec<String>,
    pub replaced: Vec<String>,
    pub removed: Vec<String>,
    /// Components kept as they were.
    pub kept: Vec<String>,
}

/// A running pipeline graph.
pub struct Service {
    telemetry: Telemetry,
    exporters: BTreeMap<String, RunningExporter>,
    pipelines: BTreeMap<String, RunningPipeline>,
    receivers: BTreeMap<String, RunningReceiver>,
}

/// What a reload takes out of service, stopped once the new graph carries the data.
#[derive(Default)]
struct Retired {
    receivers: Vec<(String, Box<dyn Running>)>,
    processors: Vec<(String, Arc<dyn RunningProcessor>)>,
    exporters: Vec<(String, Arc<QueuedExporter>)>,
}

impl Service {
    /// Starts every component of `plan`. On a start failure, what was already started is
    /// stopped again before the error is returned.
    pub async fn start(plan: Plan, telemetry: &Telemetry) -> Result<Service, StartError> {
        let mut service = Service {
            telemetry: telemetry.clone(),
            exporters: BTreeMap::new(),
            pipelines: BTreeMap::new(),
            receivers: BTreeMap::new(),
        };
        match service.apply(plan, Instant::now()).await {
            Ok(_) => Ok(service),
            Err(error) => {
                service
                    .shutdown(Instant::now() + std::time::Duration::from_secs(5))
                    .await;
                Err(error)
            }
        }
    }

    /// Changes the running graph into `plan`, rebuilding only what changed. Retired
    /// components drain until `deadline`. On a start failure the components already switched
    /// over keep running and the error is returned.
    pub async fn reload(
        &mut self,
        plan: Plan,
        deadline: Instant,
    ) -> Result<ReloadSummary, StartError> {
        self.apply(plan, deadline).await
    }

    async fn apply(&mut self, plan: Plan, deadline: Instant) -> Result<ReloadSummary, StartError> {
        let mut summary = ReloadSummary::default();
        let mut retired = Retired::default();
        let result = self
            .apply_parts(plan, deadline, &mut summary, &mut retired)
            .await;
        // Whatever happened, what was taken out of service is stopped, front to back.
        for (id, receiver) in retired.receivers {
            tracing::debug!(receiver = %id, "stopping");
            receiver.shutdown().await;
        }
        for (id, processor) in retired.processors {
            tracing::debug!(processor = %id, "flushing");
            processor.shutdown().await;
        }
        for (id, queue) in retired.exporters {
            tracing::debug!(exporter = %id, "draining");
            queue.shutdown(deadline).await;
        }
        result.map(|()| summary)
    }

    async fn apply_parts(
        &mut self,
        plan: Plan,
        deadline: Instant,
        summary: &mut ReloadSummary,
        retired: &mut Retired,
    ) -> Result<(), StartError> {
        let Plan {
            exporters,
            pipelines,
            receivers,
            ..
        } = plan;
        self.apply_exporters(exporters, deadline, summary, retired)
            .await?;
        self.apply_pipelines(pipelines, summary, retired).await?;
        self.apply_receivers(receivers, summary, retired).await
    }

    async fn apply_exporters(
        &mut self,
        planned: Vec<PlannedExporter>,
        deadline: Instant,
        summary: &mut ReloadSummary,
        retired: &mut Retired,
    ) -> Result<(), StartError> {
        let wanted: BTreeSet<String> = planned.iter().map(|p| p.id.clone()).collect();
        let gone: Vec<String> = self
            .exporters
            .keys()
            .filter(|id| !wanted.contains(*id))
            .cloned()
            .collect();
        for id in gone {
            if let Some(old) = self.exporters.remove(&id) {
                summary.removed.push(format!("exporter {id}"));
                self.telemetry.status().remove_exporter(&id);
                retired.exporters.push((id, old.queue));
            }
        }
        for planned in planned {
            let id = planned.id.clone();
            let ctx = ExporterContext {
                id: id.clone(),
                telemetry: self.telemetry.clone(),
            };
            match self.exporters.get_mut(&id) {
                Some(running) if running.settings.same_as(&planned.settings) => {
                    summary.kept.push(format!("exporter {id}"));
                }
                Some(running)
                    if running.settings.type_name == planned.settings.type_name
                        && running.settings.table.get("queue")
                            == planned.settings.table.get("queue") =>
                {
                    // Same queue: keep it and what it holds; take the new settings in place.
                    running
                        .queue
                        .update(planned.core.retry, planned.core.enabled);
                    if without_core_keys(&running.settings) != without_core_keys(&planned.settings)
                    {
                        running
                            .queue
                            .replace_exporter(planned.exporter, &ctx)
                            .await?;
                    }
                    running.settings = planned.settings;
                    summary.replaced.push(format!("exporter {id}"));
                }
                existing => {
                    if let Some(old) = existing {
                        // A new kind of queue: the old one drains first (a disk queue's
                        // directory can be opened by one queue at a time).
                        summary.replaced.push(format!("exporter {id}"));
                        old.queue.shutdown(deadline).await;
                    } else {
                        summary.started.push(format!("exporter {id}"));
                    }
                    let mut exporter = planned.exporter;
                    exporter.start(&ctx).await?;
                    let queue = QueuedExporter::open(
                        &id,
                        &planned.type_name,
                        Arc::from(exporter),
                        planned.core,
                        &self.telemetry,
                    )
                    .await?;
                    self.exporters.insert(
                        id,
                        RunningExporter {
                            settings: planned.settings,
                            queue,
                        },
                    );
                }
            }
        }
        Ok(())
    }

    async fn apply_pipelines(
        &mut self,
        planned: Vec<PlannedPipeline>,
        summary: &mut ReloadSummary,
        retired: &mut Retired,
    ) -> Result<(), StartError> {
        let mut old = std::mem::take(&mut self.pipelines);
        for pipeline in planned {
            let mut reusable: Vec<RunningProcessorEntry> = match old.remove(&pipeline.name) {
                Some(previous) if previous.signal == pipeline.signal => previous.processors,
                // Same name, another signal: nothing carries over, and what it held is flushed.
                Some(previous) => {
                    for entry in previous.processors {
                        retired.processors.push((entry.id, entry.instance));
                    }
                    Vec::new()
                }
                None => Vec::new(),
            };
            let outputs = pipeline
                .exporters
                .iter()
                .filter_map(|id| self.exporters.get(id))
                .map(|running| Arc::clone(&running.queue) as Arc<dyn Consumer>)
                .collect();
            let mut next = Fanout::over(outputs);
            let mut processors = Vec::new();
            for planned in pipeline.processors.into_iter().rev() {
                let same = reusable
                    .iter()
                    .position(|p| p.id == planned.id && p.settings.same_as(&planned.settings));
                let entry = match same {
                    Some(index) => {
                        let entry = reusable.remove(index);
                        entry.next.set(Arc::clone(&next));
                        summary
                            .kept
                            .push(format!("processor {} in {}", planned.id, pipeline.name));
                        entry
                    }
                    None => {
                        let switch = Switch::to(
                            Arc::clone(&next),
                            self.telemetry.taps().point("processor", &planned.id),
                        );
                        let ctx = ProcessorContext {
                            id: planned.id.clone(),
                            pipeline: pipeline.name.clone(),
                            signal: pipeline.signal,
                            next: Arc::clone(&switch) as Arc<dyn Consumer>,
                            telemetry: self.telemetry.clone(),
                        };
                        let instance = planned.processor.start(ctx).await?;
                        summary
                            .started
                            .push(format!("processor {} in {}", planned.id, pipeline.name));
                        RunningProcessorEntry {
                            id: planned.id,
                            settings: planned.settings,
                            instance,
                            next: switch,
                        }
                    }
                };
                next = Arc::clone(&entry.instance) as Arc<dyn Consumer>;
                processors.push(entry);
            }
            processors.reverse();
            for entry in reusable {
                summary
                    .removed
                    .push(format!("processor {} in {}", entry.id, pipeline.name));
                retired.processors.push((entry.id, entry.instance));
            }
            if pipeline.acknowledgements {
                next = Arc::new(Acknowledging { next });
            }
            self.pipelines.insert(
                pipeline.name,
                RunningPipeline {
                    signal: pipeline.signal,
                    processors,
                    head: next,
                },
            );
        }
        for (name, pipeline) in old {
            summary.removed.push(format!("pipeline {name}"));
            for entry in pipeline.processors {
                retired.processors.push((entry.id, entry.instance));
            }
        }
        Ok(())
    }

    /// The consumer for `signal` of a receiver feeding `pipelines`.
    fn heads(&self, pipelines: &[String], signal: Signal) -> Option<Arc<dyn Consumer>> {
        let feeds: Vec<Arc<dyn Consumer>> = pipelines
            .iter()
            .filter_map(|name| self.pipelines.get(name))
            .filter(|p| p.signal == signal)
            .map(|p| Arc::clone(&p.head))
            .collect();
        (!feeds.is_empty()).then(|| Fanout::over(feeds))
    }

    async fn apply_receivers(
        &mut self,
        planned: Vec<PlannedReceiver>,
        summary: &mut ReloadSummary,
        retired: &mut Retired,
    ) -> Result<(), StartError> {
        let wanted: BTreeSet<String> = planned.iter().map(|p| p.id.clone()).collect();
        let gone: Vec<String> = self
            .receivers
            .keys()
            .filter(|id| !wanted.contains(*id))
            .cloned()
            .collect();
        for id in gone {
            if let Some(old) = self.receivers.remove(&id) {
                summary.removed.push(format!("receiver {id}"));
                retired.receivers.push((id, old.running));
            }
        }
        for planned in planned {
            let heads: BTreeMap<Signal, Arc<dyn Consumer>> = Signal::ALL
                .into_iter()
                .filter_map(|signal| Some((signal, self.heads(&planned.pipelines, signal)?)))
                .collect();
            let identity = ReceiverIdentity {
                settings: planned.settings,
                signals: heads.keys().copied().collect(),
            };
            let id = planned.id;
            if let Some(running) = self.receivers.get(&id)
                && running.identity.same_as(&identity)
            {
                for (signal, head) in heads {
                    if let Some(switch) = running.switches.get(&signal) {
                        switch.set(head);
                    }
                }
                summary.kept.push(format!("receiver {id}"));
                continue;
            }
            if let Some(old) = self.receivers.remove(&id) {
                // Its port must be free before the new one binds it.
                old.running.shutdown().await;
                summary.replaced.push(format!("receiver {id}"));
            } else {
                summary.started.push(format!("receiver {id}"));
            }
            let mut consumers = SignalConsumers::default();
            let mut switches = BTreeMap::new();
            for (signal, head) in heads {
                let switch = Switch::to(head, self.telemetry.taps().point("receiver", &id));
                consumers.set(signal, Arc::clone(&switch) as Arc<dyn Consumer>);
                switches.insert(signal, switch);
            }
            let ctx = ReceiverContext {
                id: id.clone(),
                consumers,
                telemetry: self.telemetry.clone(),
            };
            let running = planned.receiver.start(ctx).await?;
            self.receivers.insert(
                id,
                RunningReceiver {
                    identity,
                    running,
                    switches,
                },
            );
        }
        Ok(())
    }

    /// The consumer at the head of pipeline `name`, where its receivers hand it batches.
    pub fn pipeline_head(&self, name: &str) -> Option<Arc<dyn Consumer>> {
        self.pipelines.get(name).map(|p| Arc::clone(&p.head))
    }

    /// The input of processor `id` in pipeline `pipeline`: data handed to it skips the
    /// processors before it (`sluice test` inserts its inputs there).
    pub fn processor_input(&self, pipeline: &str, id: &str) -> Option<Arc<dyn Consumer>> {
        let pipeline = self.pipelines.get(pipeline)?;
        let entry = pipeline.processors.iter().find(|p| p.id == id)?;
        Some(Arc::clone(&entry.instance) as Arc<dyn Consumer>)
    }

    /// Stops the graph front to back: receivers stop accepting, processors flush, exporter
    /// queues drain until `deadline`; what could not be sent by then is counted and logged.
    pub async fn shutdown(self, deadline: Instant) {
        for (id, receiver) in &self.receivers {
            tracing::debug!(receiver = %id, "stopping");
            receiver.running.shutdown().await;
        }
        for (name, pipeline) in &self.pipelines {
            for entry in &pipeline.processors {
                tracing::debug!(pipeline = %name, processor = %entry.id, "flushing");
                entry.instance.shutdown().await;
            }
        }
        for (id, exporter) in &self.exporters {
            tracing::debug!(exporter = %id, "draining");
            exporter.queue.shutdown(deadline).await;
        }
    }
}

/// An exporter's settings without the keys the core handles, to tell whether the exporter
/// itself must be rebuilt.
fn without_core_keys(settings: &ComponentSettings) -> toml::Table {
    let mut table = settings.table.clone();
    for key in crate::graph::EXPORTER_CORE_KEYS {
        table.remove(key);
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::component::Exporter;
    use crate::error::ExportError;
    use crate::queue::ExporterCore;

    /// An exporter that waits for a permit per batch, then answers `outcome`.
    struct GatedExporter {
        gate: Arc<tokio::sync::Semaphore>,
        outcome: Result<(), ExportError>,
    }
    #[async_trait]
    impl Exporter for GatedExporter {
        async fn export(&self, _: Batch) -> Result<(), ExportError> {
            let _permit = self.gate.acquire().await;
            self.outcome.clone()
        }
    }

    fn acknowledging_pipeline(
        outcome: Result<(), ExportError>,
    ) -> (
        Acknowledging,
        Arc<tokio::sync::Semaphore>,
        Arc<QueuedExporter>,
    ) {
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let exporter = Arc::new(GatedExporter {
            gate: Arc::clone(&gate),
            outcome,
        });
        let queue = QueuedExporter::start(
            "gated",
            "gated",
            exporter,
            ExporterCore {
                retry: crate::retry::RetrySettings {
                    enabled: false,
                    ..Default::default()
                },
                ..ExporterCore::default()
            },
            &Telemetry::new(),
        );
        let head = Acknowledging {
            next: Arc::clone(&queue) as Arc<dyn Consumer>,
        };
        (head, gate, queue)
    }

    fn one_span() -> Batch {
        use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
        use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
        Batch::from_request(crate::batch::Request::Traces(ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans {
                    spans: vec![Span::default()],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }))
    }

    #[tokio::test]
    async fn with_acknowledgements_a_batch_is_taken_only_once_the_backend_has_it() {
        let (head, gate, queue) = acknowledging_pipeline(Ok(()));
        let mut consumed = Box::pin(head.consume(one_span()));
        // Queued, not yet sent: the receiver must not answer yet.
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(50), &mut consumed)
                .await
                .is_err()
        );
        gate.add_permits(1);
        assert_eq!(consumed.await, Ok(()));
        queue
            .shutdown(Instant::now() + std::time::Duration::from_secs(1))
            .await;
    }

    #[tokio::test]
    async fn with_acknowledgements_a_failed_export_reaches_the_receiver_as_retryable() {
        let (head, gate, queue) = acknowledging_pipeline(Err(ExportError::permanent("400")));
        gate.add_permits(1);
        let refused = head.consume(one_span()).await;
        let Err(error) = refused else {
            panic!("a batch the backend refused was acknowledged");
        };
        assert!(error.is_retryable());
        assert!(error.to_string().contains("could not send"), "{error}");
        queue
            .shutdown(Instant::now() + std::time::Duration::from_secs(1))
            .await;
    }

    /// What the fake components did, in order: `start receiver in`, `stop processor p`, ...
    type Log = Arc<std::sync::Mutex<Vec<String>>>;

    fn note(log: &Log, event: String) {
        log.lock().unwrap().push(event);
    }

    #[derive(serde::Deserialize)]
    struct Tag {
        #[serde(default)]
        tag: String,
    }

    struct LoggedRunning(Log, String);
    #[async_trait]
    impl Running for LoggedRunning {
        async fn shutdown(&self) {
            note(&self.0, format!("stop {}", self.1));
        }
    }

    /// A receiver that hands its traces consumer to the test.
    struct FakeReceiver(
        Log,
        String,
        tokio::sync::mpsc::UnboundedSender<Arc<dyn Consumer>>,
    );
    #[async_trait]
    impl crate::component::Receiver for FakeReceiver {
        async fn start(
            self: Box<Self>,
            ctx: ReceiverContext,
        ) -> Result<Box<dyn Running>, StartError> {
            note(&self.0, format!("start receiver {}", self.1));
            if let Some(traces) = ctx.consumers.traces {
                let _ = self.2.send(traces);
            }
            Ok(Box::new(LoggedRunning(
                self.0,
                format!("receiver {}", self.1),
            )))
        }
    }
    struct FakeReceivers(Log, tokio::sync::mpsc::UnboundedSender<Arc<dyn Consumer>>);
    impl crate::component::ReceiverFactory for FakeReceivers {
        fn type_name(&self) -> &'static str {
            "in"
        }
        fn signals(&self) -> &'static [Signal] {
            &Signal::ALL
        }
        fn build(
            &self,
            settings: &ComponentSettings,
        ) -> Result<Box<dyn crate::component::Receiver>, crate::config::ConfigError> {
            settings.parse::<Tag>()?;
            Ok(Box::new(FakeReceiver(
                self.0.clone(),
                settings.id.clone(),
                self.1.clone(),
            )))
        }
    }

    /// A processor that names itself in each batch's span names, so the path data took shows.
    struct Naming {
        log: Log,
        name: String,
        next: Arc<dyn Consumer>,
    }
    #[async_trait]
    impl Consumer for Naming {
        async fn consume(&self, mut batch: Batch) -> Result<(), ConsumeError> {
            let name = self.name.clone();
            batch
                .modify(|request| {
                    if let crate::batch::Request::Traces(traces) = request {
                        for span in traces
                            .resource_spans
                            .iter_mut()
                            .flat_map(|r| &mut r.scope_spans)
                            .flat_map(|s| &mut s.spans)
                        {
                            span.name.push_str(&format!(" {name}"));
                        }
                    }
                })
                .map_err(|e| ConsumeError::Rejected(e.to_string()))?;
            self.next.consume(batch).await
        }
    }
    #[async_trait]
    impl Running for Naming {
        async fn shutdown(&self) {
            note(&self.log, format!("stop processor {}", self.name));
        }
    }
    struct NamingProcessor(Log, String);
    #[async_trait]
    impl crate::component::Processor for NamingProcessor {
        async fn start(
            self: Box<Self>,
            ctx: ProcessorContext,
        ) -> Result<Arc<dyn RunningProcessor>, StartError> {
            note(&self.0, format!("start processor {}", self.1));
            Ok(Arc::new(Naming {
                log: self.0,
                name: self.1,
                next: ctx.next,
            }))
        }
    }
    struct NamingProcessors(Log);
    impl crate::component::ProcessorFactory for NamingProcessors {
        fn type_name(&self) -> &'static str {
            "naming"
        }
        fn signals(&self) -> &'static [Signal] {
            &Signal::ALL
        }
        fn build(
            &self,
            settings: &ComponentSettings,
        ) -> Result<Box<dyn crate::component::Processor>, crate::config::ConfigError> {
            let tag = settings.parse::<Tag>()?;
            Ok(Box::new(NamingProcessor(
                self.0.clone(),
                format!("{}{}", settings.id, tag.tag),
            )))
        }
    }

    /// An exporter that records the span names it sends, tagged with its `tag` setting.
    struct Recording(Log, String);
    #[async_trait]
    impl Exporter for Recording {
        async fn export(&self, mut batch: Batch) -> Result<(), ExportError> {
            if let Ok(crate::batch::Request::Traces(traces)) = batch.request() {
                for span in traces
                    .resource_spans
                    .iter()
                    .flat_map(|r| &r.scope_spans)
                    .flat_map(|s| &s.spans)
                {
                    note(&self.0, format!("{} got {}", self.1, span.name));
                }
            }
            Ok(())
        }
    }
    struct RecordingExporters(Log);
    impl crate::component::ExporterFactory for RecordingExporters {
        fn type_name(&self) -> &'static str {
            "out"
        }
        fn signals(&self) -> &'static [Signal] {
            &Signal::ALL
        }
        fn build(
            &self,
            settings: &ComponentSettings,
        ) -> Result<Box<dyn Exporter>, crate::config::ConfigError> {
            let tag = settings.parse::<Tag>()?;
            Ok(Box::new(Recording(
                self.0.clone(),
                format!("{}{}", settings.id, tag.tag),
            )))
        }
    }

    struct Harness {
        log: Log,
        registry: crate::component::Registry,
        receivers: tokio::sync::mpsc::UnboundedReceiver<Arc<dyn Consumer>>,
    }

    impl Harness {
        fn new() -> Harness {
            let log: Log = Arc::default();
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            let mut registry = crate::component::Registry::new();
            registry.add_receiver(FakeReceivers(log.clone(), tx));
            registry.add_processor(NamingProcessors(log.clone()));
            registry.add_exporter(RecordingExporters(log.clone()));
            Harness {
                log,
                registry,
                receivers: rx,
            }
        }

        fn plan(&self, text: &str) -> Plan {
            let config =
                crate::config::load_str(std::path::Path::new("t.toml"), text, |_| None).unwrap();
            crate::graph::plan(&config, &self.registry).unwrap_or_else(|e| panic!("{e:?}"))
        }

        fn take_log(&self) -> Vec<String> {
            std::mem::take(&mut *self.log.lock().unwrap())
        }

        /// Waits until the exporters have recorded `count` spans.
        async fn sent(&self, count: usize) -> Vec<String> {
            loop {
                let sent: Vec<String> = self
                    .log
                    .lock()
                    .unwrap()
                    .iter()
                    .filter(|e| e.contains(" got "))
                    .cloned()
                    .collect();
                if sent.len() >= count {
                    return sent;
                }
                tokio::task::yield_now().await;
            }
        }
    }

    fn config(processors: &str, exporter_tag: &str) -> String {
        format!(
            "[receivers.in]\n\n[processors.a]\ntype = \"naming\"\n[processors.b]\ntype = \"naming\"\n\n\
             [exporters.out]\ntag = \"{exporter_tag}\"\n\n\
             [pipelines.traces]\nreceivers = [\"in\"]\nprocessors = [{processors}]\nexporters = [\"out\"]\n"
        )
    }

    fn span(name: &str) -> Batch {
        let mut batch = one_span();
        batch
            .modify(|request| {
                if let crate::batch::Request::Traces(traces) = request {
                    traces.resource_spans[0].scope_spans[0].spans[0].name = name.to_string();
                }
            })
            .unwrap();
        batch
    }

    #[tokio::test]
    async fn a_reload_rebuilds_only_what_changed_and_relinks_the_rest() {
        let mut harness = Harness::new();
        let deadline = || Instant::now() + std::time::Duration::from_secs(5);
        let mut service = Service::start(harness.plan(&config("\"b\"", "-old")), &Telemetry::new())
            .await
            .unwrap();
        let receiver = harness.receivers.recv().await.unwrap();
        receiver.consume(span("first")).await.unwrap();
        assert_eq!(harness.sent(1).await, ["out-old got first b"]);
        harness.take_log();

        // A processor added in front of the kept one, and the exporter's settings changed.
        let summary = service
            .reload(harness.plan(&config("\"a\", \"b\"", "-new")), deadline())
            .await
            .unwrap();
        assert_eq!(summary.started, ["processor a in traces"]);
        assert_eq!(summary.replaced, ["exporter out"]);
        assert!(summary.kept.contains(&"receiver in".to_string()));
        assert!(summary.kept.contains(&"processor b in traces".to_string()));
        // The receiver was not restarted, processor b was not restarted.
        assert_eq!(harness.take_log(), ["start processor a"]);

        // The receiver's consumer from before the reload now feeds the new chain.
        receiver.consume(span("second")).await.unwrap();
        assert_eq!(harness.sent(1).await, ["out-new got second a b"]);
        harness.take_log();

        // Removing the processor again stops it, once.
        service
            .reload(harness.plan(&config("\"b\"", "-new")), deadline())
            .await
            .unwrap();
        assert_eq!(harness.take_log(), ["stop processor a"]);
        service.shutdown(deadline()).await;
        assert_eq!(harness.take_log(), ["stop receiver in", "stop processor b"]);
    }

    #[tokio::test]
    async fn a_pipeline_that_changes_signal_flushes_and_stops_its_old_processors() {
        let harness = Harness::new();
        let deadline = || Instant::now() + std::time::Duration::from_secs(5);
        let text = |signal: &str| {
            format!(
                "[receivers.in]\n[processors.b]\ntype = \"naming\"\n[exporters.out]\n\
                 [pipelines.main]\nsignal = \"{signal}\"\nreceivers = [\"in\"]\n\
                 processors = [\"b\"]\nexporters = [\"out\"]\n"
            )
        };
        let mut service = Service::start(harness.plan(&text("traces")), &Telemetry::new())
            .await
            .unwrap();
        harness.take_log();
        service
            .reload(harness.plan(&text("logs")), deadline())
            .await
            .unwrap();
        let log = harness.take_log();
        assert!(log.contains(&"stop processor b".to_string()), "{log:?}");
        assert!(log.contains(&"start processor b".to_string()), "{log:?}");
        service.shutdown(deadline()).await;
    }
}
