//! Sluice's AI gateway: an OpenAI-compatible proxy in front of model providers. Every request
//! it handles, refused ones included, becomes one [`RequestEvent`] on a bounded channel; the
//! `gateway` receiver turns those events into spans, metrics and log records.

mod auth;
pub mod config;
pub mod event;
pub mod mock;
mod openai;
mod server;
mod sse;
pub mod trace;
mod upstream;

pub use auth::ANONYMOUS;
pub use config::GatewayConfig;
pub use event::RequestEvent;
pub use mock::{MockProvider, mock_router};
pub use server::{Gateway, GatewayError, RunningGateway, UNAUTHENTICATED};
