//! End to end: the `prometheus` exporter scraped by a real Prometheus server.

mod common;
