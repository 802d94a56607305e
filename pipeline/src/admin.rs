//! The admin server: liveness and Sluice's own metrics, on loopback by default.

use std::net::SocketAddr;

use axum::Router;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::error::StartError;
use crate::telemetry::Telemetry;

/// A running admin server.
pub struct AdminServer {
    address: SocketAddr,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl AdminServer {
    /// Binds `address` and serves `/healthz` and `/metrics`.
    pub async fn start(
        address: SocketAddr,
        telemetry: Telemetry,
    ) -> Result<AdminServer, StartError> {
        let listener = TcpListener::bind(address).await.map_err(|e| StartError {
            component: "service.admin".to_string(),
            message: format!("cannot listen on {address}: {e}"),
        })?;
        let address = listener.local_addr().unwrap_or(address);
        let router = Router::new()
            .route("/healthz", get(|| async { "ok\n" }))
            .route(
                "/metrics",
                get(move || {
                    let body = telemetry.render();
                    async move {
                        (
                            [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
                            body,
                        )
                            .into_response()
                    }
                }),
            );
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            let served = axum::serve(listener, router)
                .with_graceful_shutdown(async move { stopped.cancelled().await })
                .await;
            if let Err(e) = served {
                tracing::error!(error = %e, "admin server failed");
            }
        });
        tracing::info!(%address, "admin server listening (/healthz, /metrics)");
        Ok(AdminServer {
            address,
            stop,
            task,
        })
    }

    /// The address it listens on.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Stops serving.
    pub async fn shutdown(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}
