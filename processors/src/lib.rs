//! Sluice's processors: the components between receivers and exporters of a pipeline.

pub mod attributes;
pub mod batch;
pub mod cost;
pub mod memory_limiter;
mod otlp_wire;
pub mod probabilistic_sampler;
pub mod redaction;
pub mod resource;
pub mod tail_sampling;

/// Adds every processor type of this crate to `registry`.
pub fn register(registry: &mut sluice_pipeline::Registry) {
    registry.add_processor(attributes::AttributesProcessorFactory);
    registry.add_processor(batch::BatchProcessorFactory);
    registry.add_processor(cost::CostProcessorFactory);
    registry.add_processor(memory_limiter::MemoryLimiterFactory);
    registry.add_processor(probabilistic_sampler::ProbabilisticSamplerFactory);
    registry.add_processor(redaction::RedactionProcessorFactory);
    registry.add_processor(resource::ResourceProcessorFactory);
    registry.add_processor(tail_sampling::TailSamplingFactory);
}
