//! Errors that cross component boundaries.

use thiserror::Error;

/// Why a consumer did not take a batch.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ConsumeError {
    /// The pipeline cannot take more right now (a full queue, a memory limit). Receivers answer
    /// retryably (HTTP 503 with Retry-After, gRPC UNAVAILABLE) so the client sends it again.
    #[error("pipeline is at capacity: {0}")]
    Backpressure(String),
    /// The data can never be accepted (it is malformed or not allowed). Not retryable.
    #[error("data rejected: {0}")]
    Rejected(String),
    /// The pipeline is shutting down and takes no more data. Retryable.
    #[error("pipeline is shutting down")]
    ShuttingDown,
}

impl ConsumeError {
    /// Whether the sender should try again later.
    pub fn is_retryable(&self) -> bool {
        !matches!(self, ConsumeError::Rejected(_))
    }
}

/// Why an exporter failed to send a batch.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ExportError {
    /// A failure that may pass: connection refused, timeout, 429/502/503/504, gRPC UNAVAILABLE.
    #[error("{message}")]
    Retryable {
        message: String,
        /// How long the backend asked us to wait (Retry-After, gRPC RetryInfo).
        throttle: Option<std::time::Duration>,
    },
    /// The backend refused the data for good (400, INVALID_ARGUMENT): sending again won't help.
    #[error("{0}")]
    Permanent(String),
}

impl ExportError {
    /// A retryable failure with no throttle hint.
    pub fn retryable(message: impl Into<String>) -> ExportError {
        ExportError::Retryable {
            message: message.into(),
            throttle: None,
        }
    }

    /// A permanent failure.
    pub fn permanent(message: impl Into<String>) -> ExportError {
        ExportError::Permanent(message.into())
    }
}

/// A component that failed to start (a port in use, a file that cannot be opened).
#[derive(Debug, Error)]
#[error("{component}: {message}")]
pub struct StartError {
    pub component: String,
    pub message: String,
}

/// An error and its sources, `: `-separated. hyper's and tonic's top-level messages ("client
/// error (Connect)") say little without their causes ("Connection refused").
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_chain_joins_every_cause() {
        let inner =
            std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "Connection refused");
        let outer = std::io::Error::other(StartError {
            component: "exporters.x".into(),
            message: inner.to_string(),
        });
        assert_eq!(error_chain(&outer), "exporters.x: Connection refused");
    }
}
