//! Sluice's receivers: the components that take telemetry in and hand it to pipelines.

pub mod gateway;
pub mod otlp;

/// Adds every receiver type of this crate to `registry`.
pub fn register(registry: &mut sluice_pipeline::Registry) {
    registry.add_receiver(otlp::OtlpReceiverFactory);
    registry.add_receiver(gateway::GatewayReceiverFactory);
}
