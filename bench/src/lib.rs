//! Sluice's throughput benchmark: OTLP/gRPC load through the real `sluice` binary (`otlp`
//! receiver, `batch`, `otlp_grpc` exporter) into a counting sink, measuring the CPU time and
//! memory of the sluice process. BENCHMARKS.md at the workspace root describes the runs.

pub mod load;
pub mod payload;
pub mod procfs;
pub mod run;
pub mod sink;
pub mod sluice;
