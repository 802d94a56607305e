//! The traits every component implements, and the factories that build them from config.
//!
//! Each kind of component has the same two-step shape: a factory turns a configuration table
//! into a built component (pure: this is all `sluice validate` runs), and `start` brings the
//! built component to life inside a running pipeline. The pipeline core knows components only
//! through these traits.

use std::sync::Arc;

use async_trait::async_trait;

use crate::batch::Batch;
use crate::config::{ComponentSettings, ConfigError};
use crate::error::{ConsumeError, ExportError, StartError};
use crate::signal::Signal;
use crate::telemetry::Telemetry;

/// Anything that takes batches: a processor, an exporter's queue, a fan-out.
#[async_trait]
pub trait Consumer: Send + Sync {
    /// Takes a batch. An error tells the caller the batch was not taken and why.
    async fn consume(&self, batch: Batch) -> Result<(), ConsumeError>;
}

/// Where a receiver delivers each signal: the heads of the pipelines it feeds.
#[derive(Clone, Default)]
pub struct SignalConsumers {
    pub traces: Option<Arc<dyn Consumer>>,
    pub metrics: Option<Arc<dyn Consumer>>,
    pub logs: Option<Arc<dyn Consumer>>,
}

impl SignalConsumers {
    /// The consumer for `signal`, if any pipeline of that signal uses the receiver.
    pub fn get(&self, signal: Signal) -> Option<&Arc<dyn Consumer>> {
        match signal {
            Signal::Traces => self.traces.as_ref(),
            Signal::Metrics => self.metrics.as_ref(),
            Signal::Logs => self.logs.as_ref(),
        }
    }

    /// Sets the consumer for `signal`.
    pub fn set(&mut self, signal: Signal, consumer: Arc<dyn Consumer>) {
        match signal {
            Signal::Traces => self.traces = Some(consumer),
            Signal::Metrics => self.metrics = Some(consumer),
            Signal::Logs => self.logs = Some(consumer),
        }
    }
}

/// A component that has been started and must be stopped.
#[async_trait]
pub trait Running: Send + Sync {
    /// Stops the component: a receiver stops accepting and finishes requests in flight, a
    /// processor flushes what it holds into the next consumer.
    async fn shutdown(&self);
}

/// What a receiver is given when it starts.
pub struct ReceiverContext {
    /// The receiver's id: its table name in the config.
    pub id: String,
    pub consumers: SignalConsumers,
    pub telemetry: Telemetry,
}

/// A receiver built from config, ready to start.
#[async_trait]
pub trait Receiver: Send {
    /// Binds its listeners and starts serving; returns once it is listening.
    async fn start(self: Box<Self>, ctx: ReceiverContext) -> Result<Box<dyn Running>, StartError>;
}

/// Builds receivers of one type.
pub trait ReceiverFactory: Send + Sync {
    /// The `type` name in config.
    fn type_name(&self) -> &'static str;
    /// The signals the receiver can produce.
    fn signals(&self) -> &'static [Signal];
    /// Checks the configuration and builds the receiver without starting anything.
    fn build(&self, settings: &ComponentSettings) -> Result<Box<dyn Receiver>, ConfigError>;

    /// Whether the receiver is configured by a top-level section named after its type (the
    /// `[gateway]` table) instead of under `[receivers]`. Such a receiver is a service in its
    /// own right: it runs even when no pipeline takes its data.
    fn is_section(&self) -> bool {
        false
    }
}

/// What a processor is given when it starts in one pipeline.
pub struct ProcessorContext {
    /// The processor's id: its table name in the config.
    pub id: String,
    /// The pipeline this instance runs in.
    pub pipeline: String,
    pub signal: Signal,
    /// Where processed batches go.
    pub next: Arc<dyn Consumer>,
    pub telemetry: Telemetry,
}

/// A processor instance running in one pipeline.
pub trait RunningProcessor: Consumer + Running {}
impl<T: Consumer + Running> RunningProcessor for T {}

/// A processor built from config, ready to start in one pipeline.
#[async_trait]
pub trait Processor: Send {
    /// Starts the processor in front of `ctx.next`.
    async fn start(
        self: Box<Self>,
        ctx: ProcessorContext,
    ) -> Result<Arc<dyn RunningProcessor>, StartError>;
}

/// Builds processors of one type. A processor used by several pipelines is built once per pipeline.
pub trait ProcessorFactory: Send + Sync {
    /// The `type` name in config.
    fn type_name(&self) -> &'static str;
    /// The signals the processor works on.
    fn signals(&self) -> &'static [Signal];
    /// Checks the configuration and builds the processor without starting anything.
    fn build(&self, settings: &ComponentSettings) -> Result<Box<dyn Processor>, ConfigError>;
}

/// What an exporter is given when it starts.
pub struct ExporterContext {
    /// The exporter's id: its table name in the config.
    pub id: String,
    pub telemetry: Telemetry,
}

/// An exporter: sends batches to one backend. The pipeline core puts a bounded queue and
/// workers in front of it, so `export` is called concurrently by several workers and may take
/// as long as the backend does without holding anyone else up.
#[async_trait]
pub trait Exporter: Send + Sync {
    /// Prepares the exporter (opens connections lazily where possible: a backend that is down
    /// at start-up must not stop the process from starting).
    async fn start(&mut self, _ctx: &ExporterContext) -> Result<(), StartError> {
        Ok(())
    }

    /// Sends one batch.
    async fn export(&self, batch: Batch) -> Result<(), ExportError>;

    /// Tests the connection for `sluice check`: sends the smallest valid export of `signal` (an
    /// empty request) to the backend. Returns what was verified, e.g. `"http://tempo:4317:
    /// reachable, export accepted"`, or the failure in words a user can act on (DNS, connection
    /// refused, TLS, authentication, wrong protocol or path), starting with the endpoint.
    /// Exporters without a remote backend (debug, prometheus) keep this default, which checks
    /// nothing and says so. Called on a built exporter that was never started.
    async fn check(&self, _signal: Signal) -> Result<String, ExportError> {
        Ok("nothing to check (no remote backend)".to_string())
    }

    /// Releases what the exporter holds, after the last `export` has returned.
    async fn shutdown(&self) {}
}

/// Builds exporters of one type. One exporter is built per id and shared by every pipeline
/// that uses it.
pub trait ExporterFactory: Send + Sync {
    /// The `type` name in config.
    fn type_name(&self) -> &'static str;
    /// The signals the exporter can send.
    fn signals(&self) -> &'static [Signal];
    /// Checks the configuration and builds the exporter without starting anything. The keys
    /// the core handles for every exporter (`queue`) are removed before this sees the table.
    fn build(&self, settings: &ComponentSettings) -> Result<Box<dyn Exporter>, ConfigError>;
}

/// Every component factory the binary knows, by type name.
#[derive(Default)]
pub struct Registry {
    receivers: Vec<Box<dyn ReceiverFactory>>,
    processors: Vec<Box<dyn ProcessorFactory>>,
    exporters: Vec<Box<dyn ExporterFactory>>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Registry {
        Registry::default()
    }

    /// Adds a receiver type.
    pub fn add_receiver(&mut self, factory: impl ReceiverFactory + 'static) {
        self.receivers.push(Box::new(factory));
    }

    /// Adds a processor type.
    pub fn add_processor(&mut self, factory: impl ProcessorFactory + 'static) {
        self.processors.push(Box::new(factory));
    }

    /// Adds an exporter type.
    pub fn add_exporter(&mut self, factory: impl ExporterFactory + 'static) {
        self.exporters.push(Box::new(factory));
    }

    /// The receiver factory for `type_name`.
    pub fn receiver(&self, type_name: &str) -> Option<&dyn ReceiverFactory> {
        self.receivers
            .iter()
            .find(|f| f.type_name() == type_name)
            .map(|f| &**f)
    }

    /// The processor factory for `type_name`.
    pub fn processor(&self, type_name: &str) -> Option<&dyn ProcessorFactory> {
        self.processors
            .iter()
            .find(|f| f.type_name() == type_name)
            .map(|f| &**f)
    }

    /// The exporter factory for `type_name`.
    pub fn exporter(&self, type_name: &str) -> Option<&dyn ExporterFactory> {
        self.exporters
            .iter()
            .find(|f| f.type_name() == type_name)
            .map(|f| &**f)
    }

    /// The names of the top-level sections receivers define (`gateway`).
    pub fn section_names(&self) -> Vec<&'static str> {
        self.receivers
            .iter()
            .filter(|f| f.is_section())
            .map(|f| f.type_name())
            .collect()
    }

    /// The type names of a kind of component, for error messages.
    pub fn type_names(&self, kind: crate::config::ComponentKind) -> Vec<&'static str> {
        use crate::config::ComponentKind;
        match kind {
            ComponentKind::Receiver => self.receivers.iter().map(|f| f.type_name()).collect(),
            ComponentKind::Processor => self.processors.iter().map(|f| f.type_name()).collect(),
            ComponentKind::Exporter => self.exporters.iter().map(|f| f.type_name()).collect(),
        }
    }
}
