//! Sluice's processors: the components between receivers and exporters of a pipeline.

pub mod batch;
pub mod probabilistic_sampler;

/// Adds every processor type of this crate to `registry`.
pub fn register(registry: &mut sluice_pipeline::Registry) {
    registry.add_processor(batch::BatchProcessorFactory);
    registry.add_processor(probabilistic_sampler::ProbabilisticSamplerFactory);
}
