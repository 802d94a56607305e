//! Sluice exporters: where pipeline data leaves the process.
//!
//! - [`otlp_grpc`]: OTLP over gRPC (tonic).
//! - [`otlp_http`]: OTLP over HTTP, protobuf or JSON (hyper).
//! - [`debug`]: prints batches to stdout.

pub mod debug;
pub mod otlp_common;
pub mod otlp_grpc;
pub mod otlp_http;

#[cfg(test)]
mod test_data;

/// Adds every exporter of this crate to `registry`.
pub fn register(registry: &mut sluice_pipeline::Registry) {
    registry.add_exporter(otlp_grpc::OtlpGrpcFactory);
    registry.add_exporter(otlp_http::OtlpHttpFactory);
    registry.add_exporter(debug::DebugFactory);
}
