//! Sluice exporters: where pipeline data leaves the process.
//!
//! - [`otlp_grpc`]: OTLP over gRPC (tonic).
//! - [`otlp_http`]: OTLP over HTTP, protobuf or JSON (hyper).
//! - [`debug`]: prints batches to stdout.
//! - [`prometheus`]: serves metrics for Prometheus to scrape.

pub mod debug;
pub mod otlp_common;
pub mod otlp_env;
pub mod otlp_grpc;
pub mod otlp_http;
pub mod prometheus;
pub mod tls;

#[cfg(test)]
mod test_data;

/// Adds every exporter of this crate to `registry`.
pub fn register(registry: &mut sluice_pipeline::Registry) {
    registry.add_exporter(otlp_grpc::OtlpGrpcFactory);
    registry.add_exporter(otlp_http::OtlpHttpFactory);
    registry.add_exporter(debug::DebugFactory);
    registry.add_exporter(prometheus::PrometheusFactory);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every TOML example in the README builds with its exporter's factory.
    #[test]
    fn readme_examples_build() {
        let mut registry = sluice_pipeline::Registry::new();
        register(&mut registry);
        let readme = include_str!("../README.md");
        let mut built = Vec::new();
        for block in readme.split("```toml").skip(1) {
            let example = block.split("```").next().expect("split yields one part");
            let file: toml::Table = toml::from_str(example).expect("example is valid TOML");
            for (id, table) in file["exporters"].as_table().expect("[exporters.x] tables") {
                let mut table = table.as_table().expect("exporter table").clone();
                let type_name = match table.remove("type") {
                    Some(toml::Value::String(t)) => t,
                    _ => id.clone(),
                };
                let mut settings = test_data::settings(&type_name, "");
                settings.id = id.clone();
                settings.table = table;
                let factory = registry.exporter(&type_name).expect("a registered type");
                if let Err(error) = factory.build(&settings) {
                    panic!("README example {id}: {error}");
                }
                built.push(type_name);
            }
        }
        assert_eq!(built, ["otlp_grpc", "otlp_http", "debug", "prometheus"]);
    }
}
