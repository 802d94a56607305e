//! How the receiver reports failures: gRPC statuses, and the `google.rpc.Status` bodies of
//! OTLP/HTTP error responses, both mapped from the same [`Failure`].

use std::time::Duration;

use bytes::Bytes;
use prost::Message;
use sluice_pipeline::{ConsumeError, Signal};
use tonic::Code;
use tonic_types::{ErrorDetail, RetryInfo, StatusExt};

/// How long a client told to retry should wait: short, because a full queue drains quickly.
pub(crate) const RETRY_AFTER: Duration = Duration::from_secs(1);

/// Why a request was not accepted, in terms both transports can answer with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Failure {
    /// The payload is not a valid OTLP request (or its compression is corrupt).
    Malformed(String),
    /// The body is larger than `max_request_body_size`, before or after decompression.
    TooLarge { limit: usize },
    /// The content type or content encoding is not one OTLP/HTTP defines.
    UnsupportedMedia(String),
    /// No pipeline consumes this signal from this receiver.
    NoPipeline { receiver: String, signal: Signal },
    /// The pipeline refused the data: retryable (backpressure, shutting down) or not (rejected).
    Refused(ConsumeError),
}

impl Failure {
    /// The HTTP status code of the OTLP/HTTP response.
    pub(crate) fn http_status(&self) -> http::StatusCode {
        use http::StatusCode;
        match self {
            Failure::Malformed(_) => StatusCode::BAD_REQUEST,
            Failure::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Failure::UnsupportedMedia(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Failure::NoPipeline { .. } => StatusCode::NOT_FOUND,
            Failure::Refused(e) if e.is_retryable() => StatusCode::SERVICE_UNAVAILABLE,
            Failure::Refused(_) => StatusCode::BAD_REQUEST,
        }
    }

    /// The gRPC status code, also carried in the `google.rpc.Status` body of HTTP errors.
    pub(crate) fn grpc_code(&self) -> Code {
        match self {
            Failure::Malformed(_) => Code::InvalidArgument,
            Failure::TooLarge { .. } => Code::ResourceExhausted,
            Failure::UnsupportedMedia(_) => Code::InvalidArgument,
            Failure::NoPipeline { .. } => Code::Unimplemented,
            Failure::Refused(e) if e.is_retryable() => Code::Unavailable,
            Failure::Refused(_) => Code::InvalidArgument,
        }
    }

    /// Whether the client should send the same request again later.
    pub(crate) fn is_retryable(&self) -> bool {
        matches!(self, Failure::Refused(e) if e.is_retryable())
    }

    /// A message for the client saying what is wrong.
    pub(crate) fn message(&self) -> String {
        match self {
            Failure::Malformed(reason) => reason.clone(),
            Failure::TooLarge { limit } => {
                format!("request body is larger than the limit of {limit} bytes")
            }
            Failure::UnsupportedMedia(reason) => reason.clone(),
            Failure::NoPipeline { receiver, signal } => {
                format!("no pipeline takes {signal} from receiver {receiver}")
            }
            Failure::Refused(e) => e.to_string(),
        }
    }

    /// The gRPC status, with a RetryInfo detail when the client should retry.
    pub(crate) fn to_grpc_status(&self) -> tonic::Status {
        if self.is_retryable() {
            tonic::Status::with_error_details_vec(
                self.grpc_code(),
                self.message(),
                [ErrorDetail::from(RetryInfo::new(Some(RETRY_AFTER)))],
            )
        } else {
            tonic::Status::new(self.grpc_code(), self.message())
        }
    }

    /// The `google.rpc.Status` of an OTLP/HTTP error response, protobuf-encoded.
    pub(crate) fn to_protobuf_body(&self) -> Bytes {
        rpc_status_protobuf(self.grpc_code(), &self.message())
    }

    /// The `google.rpc.Status` of an OTLP/HTTP error response, JSON-encoded.
    pub(crate) fn to_json_body(&self) -> Bytes {
        rpc_status_json(self.grpc_code(), &self.message())
    }
}

/// A `google.rpc.Status` without details, protobuf-encoded.
pub(crate) fn rpc_status_protobuf(code: Code, message: &str) -> Bytes {
    let status = tonic_types::Status {
        code: code as i32,
        message: message.to_string(),
        details: Vec::new(),
    };
    Bytes::from(status.encode_to_vec())
}

/// A `google.rpc.Status` without details, in the proto3 JSON mapping.
pub(crate) fn rpc_status_json(code: Code, message: &str) -> Bytes {
    let status = serde_json::json!({ "code": code as i32, "message": message });
    Bytes::from(status.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryable_refusal_maps_to_503_and_unavailable_with_retry_info() {
        let failure = Failure::Refused(ConsumeError::Backpressure("queue full".into()));
        assert_eq!(failure.http_status(), http::StatusCode::SERVICE_UNAVAILABLE);
        let status = failure.to_grpc_status();
        assert_eq!(status.code(), Code::Unavailable);
        let details = status.get_error_details();
        assert_eq!(
            details.retry_info().and_then(|r| r.retry_delay),
            Some(RETRY_AFTER)
        );
    }

    #[test]
    fn permanent_rejection_maps_to_400_and_invalid_argument() {
        let failure = Failure::Refused(ConsumeError::Rejected("not allowed".into()));
        assert_eq!(failure.http_status(), http::StatusCode::BAD_REQUEST);
        assert_eq!(failure.to_grpc_status().code(), Code::InvalidArgument);
        assert!(!failure.is_retryable());
    }

    #[test]
    fn protobuf_body_decodes_as_google_rpc_status() {
        let body = Failure::Malformed("bad bytes".into()).to_protobuf_body();
        let status = tonic_types::Status::decode(body).unwrap();
        assert_eq!(status.code, Code::InvalidArgument as i32);
        assert_eq!(status.message, "bad bytes");
    }

    #[test]
    fn json_body_uses_proto3_json_field_names() {
        let body = Failure::TooLarge { limit: 10 }.to_json_body();
        let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(value["code"], Code::ResourceExhausted as i32);
        assert_eq!(
            value["message"],
            "request body is larger than the limit of 10 bytes"
        );
    }
}
