//! Sluice's processors: the components between receivers and exporters of a pipeline.

pub mod batch;

/// Adds every processor type of this crate to `registry`.
pub fn register(registry: &mut sluice_pipeline::Registry) {
    registry.add_processor(batch::BatchProcessorFactory);
}
