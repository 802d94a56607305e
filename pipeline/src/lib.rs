//! The Sluice pipeline core: the data model, the component traits, configuration, and the graph
//! that wires components into running pipelines. Components depend on this crate; it knows
//! them only through the traits in [`component`].

pub mod ack;
pub mod admin;
pub mod batch;
pub mod component;
pub mod config;
pub mod config_tests;
pub mod disk_queue;
pub mod error;
pub mod signal;
pub mod telemetry;
pub mod wire;

pub use batch::{Batch, Request};
pub use component::{
    Consumer, Exporter, ExporterContext, ExporterFactory, Processor, ProcessorContext,
    ProcessorFactory, Receiver, ReceiverContext, ReceiverFactory, Registry, Running,
    RunningProcessor, SignalConsumers,
};
pub use config::{ComponentSettings, ConfigError};
pub use error::{ConsumeError, ExportError, StartError};
pub use signal::Signal;
pub use telemetry::Telemetry;
pub mod graph;
pub mod queue;
pub mod retry;
pub mod service;
pub mod status;
pub mod tap;
pub mod tap_render;
