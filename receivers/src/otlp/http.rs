//! OTLP/HTTP: `POST /v1/traces`, `/v1/metrics` and `/v1/logs`, protobuf or JSON, plain or gzip.
//!
//! Status codes follow the OTLP/HTTP specification; every error response carries a
//! `google.rpc.Status` in the request's encoding (protobuf when the request's is not one OTLP
//! defines).

use std::io::Read;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use axum::serve::ListenerExt;
use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use http_body_util::BodyExt;
use opentelemetry_proto::tonic::collector::{
    logs::v1::ExportLogsServiceResponse, metrics::v1::ExportMetricsServiceResponse,
    trace::v1::ExportTraceServiceResponse,
};
use prost::Message;
use sluice_pipeline::{Batch, Signal};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::json;
use super::status::{Failure, RETRY_AFTER, rpc_status_json, rpc_status_protobuf};
use super::{Shared, Transport};

const PROTOBUF: &str = "application/x-protobuf";
const JSON: &str = "application/json";

/// Serves OTLP/HTTP on `listener` until `stop` is cancelled, then finishes the requests in flight.
pub(crate) fn spawn(
    listener: TcpListener,
    shared: Arc<Shared>,
    stop: CancellationToken,
) -> JoinHandle<()> {
    let app = axum::Router::new().fallback(handle).with_state(shared);
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!("cannot set TCP_NODELAY on an OTLP/HTTP connection: {e}");
        }
    });
    tokio::spawn(async move {
        let result = axum::serve(listener, app)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await;
        if let Err(e) = result {
            tracing::error!("OTLP/HTTP server failed: {e}");
        }
    })
}

/// The encoding of a request body, which is also the encoding of its response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Protobuf,
    Json,
}

impl Format {
    fn content_type(self) -> &'static str {
        match self {
            Format::Protobuf => PROTOBUF,
            Format::Json => JSON,
        }
    }

    /// The request's format, if its Content-Type names one OTLP defines (parameters such as
    /// `charset` are allowed).
    fn of(headers: &HeaderMap) -> Option<Format> {
        let value = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
        let media_type = value.split(';').next().unwrap_or_default().trim();
        if media_type.eq_ignore_ascii_case(PROTOBUF) {
            Some(Format::Protobuf)
        } else if media_type.eq_ignore_ascii_case(JSON) {
            Some(Format::Json)
        } else {
            None
        }
    }
}

async fn handle(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    // Errors about the request itself are answered in its format where it has a known one.
    let format = Format::of(request.headers());
    let reply_format = format.unwrap_or(Format::Protobuf);
    let signal = match request.uri().path() {
        "/v1/traces" => Signal::Traces,
        "/v1/metrics" => Signal::Metrics,
        "/v1/logs" => Signal::Logs,
        path => {
            let message = format!(
                "unknown path {path}: OTLP/HTTP is served on /v1/traces, /v1/metrics and /v1/logs"
            );
            return plain_error(
                StatusCode::NOT_FOUND,
                tonic::Code::NotFound,
                &message,
                reply_format,
            );
        }
    };
    if request.method() != Method::POST {
        let message = format!("method {} not allowed: use POST", request.method());
        let mut response = plain_error(
            StatusCode::METHOD_NOT_ALLOWED,
            tonic::Code::Unimplemented,
            &message,
            reply_format,
        );
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("POST"));
        return response;
    }

    let result = match format {
        Some(format) => export(&shared, signal, format, request).await,
        None => Err(unsupported_content_type(request.headers())),
    };
    match result {
        Ok(()) => success(signal, reply_format),
        Err(failure) => {
            if !matches!(failure, Failure::Refused(_)) {
                shared.log_bad_request(Transport::Http, &failure);
            }
            failure_response(&failure, reply_format)
        }
    }
}

/// Reads, decodes and delivers one export request.
async fn export(
    shared: &Shared,
    signal: Signal,
    format: Format,
    request: Request,
) -> Result<(), Failure> {
    let gzip = is_gzip(request.headers())?;
    shared.check_consumer(signal)?;
    let limit = shared.max_request_body_size;
    let declared_len = content_length(request.headers());
    if declared_len.is_some_and(|len| len > limit) {
        return Err(Failure::TooLarge { limit });
    }
    let mut body = read_body(request.into_body(), limit, declared_len).await?;
    if gzip {
        body = gunzip(&body, limit)?;
    }
    let batch = match format {
        Format::Protobuf => {
            Batch::from_encoded(signal, body).map_err(|e| Failure::Malformed(e.to_string()))?
        }
        Format::Json => {
            Batch::from_request(json::decode(signal, &body).map_err(Failure::Malformed)?)
        }
    };
    shared.deliver(Transport::Http, batch).await
}

fn unsupported_content_type(headers: &HeaderMap) -> Failure {
    let given = match headers.get(header::CONTENT_TYPE) {
        Some(value) => format!(
            "Content-Type {:?}",
            String::from_utf8_lossy(value.as_bytes())
        ),
        None => "a request without Content-Type".to_string(),
    };
    Failure::UnsupportedMedia(format!(
        "unsupported media type: {given}; use {PROTOBUF} or {JSON}"
    ))
}

/// Whether the body is gzip-compressed; no Content-Encoding or `identity` means plain.
fn is_gzip(headers: &HeaderMap) -> Result<bool, Failure> {
    let Some(value) = headers.get(header::CONTENT_ENCODING) else {
        return Ok(false);
    };
    let encoding = value.to_str().unwrap_or_default().trim();
    if encoding.eq_ignore_ascii_case("gzip") {
        Ok(true)
    } else if encoding.is_empty() || encoding.eq_ignore_ascii_case("identity") {
        Ok(false)
    } else {
        Err(Failure::UnsupportedMedia(format!(
            "unsupported Content-Encoding {:?}; use gzip or send the body uncompressed",
            String::from_utf8_lossy(value.as_bytes())
        )))
    }
}

fn content_length(headers: &HeaderMap) -> Option<usize> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Collects the body, refusing it as soon as it grows past `limit`.
async fn read_body(
    mut body: Body,
    limit: usize,
    declared_len: Option<usize>,
) -> Result<Bytes, Failure> {
    let mut first: Option<Bytes> = None;
    let mut joined: Option<BytesMut> = None;
    let mut total = 0usize;
    while let Some(frame) = body.frame().await {
        let frame =
            frame.map_err(|e| Failure::Malformed(format!("cannot read the request body: {e}")))?;
        let Ok(data) = frame.into_data() else {
            continue; // trailers carry nothing OTLP uses
        };
        total += data.len();
        if total > limit {
            return Err(Failure::TooLarge { limit });
        }
        // Most bodies arrive in one chunk and are kept as is; only several chunks are copied.
        match (&mut first, &mut joined) {
            (None, None) => first = Some(data),
            (Some(_), None) => {
                let capacity = declared_len.unwrap_or(0).max(total);
                let mut buf = BytesMut::with_capacity(capacity);
                if let Some(first) = first.take() {
                    buf.extend_from_slice(&first);
                }
                buf.extend_from_slice(&data);
                joined = Some(buf);
            }
            (_, Some(buf)) => buf.extend_from_slice(&data),
        }
    }
    Ok(match (first, joined) {
        (_, Some(buf)) => buf.freeze(),
        (Some(first), None) => first,
        (None, None) => Bytes::new(),
    })
}

/// Decompresses a gzip body (several members allowed), refusing output past `limit`.
fn gunzip(compressed: &[u8], limit: usize) -> Result<Bytes, Failure> {
    // The gzip trailer states the uncompressed size (mod 2^32); trust it only as far as a
    // plausible ratio, so a forged trailer cannot make a tiny request allocate the limit.
    let stated = match compressed {
        [.., a, b, c, d] => u32::from_le_bytes([*a, *b, *c, *d]) as usize,
        _ => 0,
    };
    let capacity = stated
        .min(limit)
        .min(compressed.len().saturating_mul(64))
        .max(compressed.len());
    let mut out = Vec::with_capacity(capacity);
    let decoder = flate2::read::MultiGzDecoder::new(compressed);
    match decoder.take(limit as u64 + 1).read_to_end(&mut out) {
        Ok(_) if out.len() > limit => Err(Failure::TooLarge { limit }),
        Ok(_) => Ok(Bytes::from(out)),
        Err(e) => Err(Failure::Malformed(format!("invalid gzip body: {e}"))),
    }
}

/// The 200 response: the signal's `Export*ServiceResponse`, in the request's format.
fn success(signal: Signal, format: Format) -> Response {
    let body = match format {
        Format::Protobuf => Bytes::from(match signal {
            Signal::Traces => ExportTraceServiceResponse::default().encode_to_vec(),
            Signal::Metrics => ExportMetricsServiceResponse::default().encode_to_vec(),
            Signal::Logs => ExportLogsServiceResponse::default().encode_to_vec(),
        }),
        // Requests are taken or refused whole, so there is never a partial success to report.
        Format::Json => Bytes::from_static(b"{}"),
    };
    response(StatusCode::OK, format, body)
}

fn failure_response(failure: &Failure, format: Format) -> Response {
    let body = match format {
        Format::Protobuf => failure.to_protobuf_body(),
        Format::Json => failure.to_json_body(),
    };
    let mut response = response(failure.http_status(), format, body);
    if failure.is_retryable() {
        response.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from(RETRY_AFTER.as_secs()),
        );
    }
    response
}

fn plain_error(status: StatusCode, code: tonic::Code, message: &str, format: Format) -> Response {
    let body = match format {
        Format::Protobuf => rpc_status_protobuf(code, message),
        Format::Json => rpc_status_json(code, message),
    };
    response(status, format, body)
}

fn response(status: StatusCode, format: Format, body: Bytes) -> Response {
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(format.content_type()),
    );
    response
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(data).unwrap();
        encoder.finish().unwrap()
    }

    #[test]
    fn gunzip_returns_the_original_bytes() {
        let data = b"hello hello hello hello".repeat(100);
        assert_eq!(gunzip(&gzip(&data), 1 << 20).unwrap(), Bytes::from(data));
    }

    #[test]
    fn gunzip_refuses_output_past_the_limit() {
        let data = vec![0u8; 10_000];
        assert_eq!(
            gunzip(&gzip(&data), 9_999),
            Err(Failure::TooLarge { limit: 9_999 })
        );
        assert!(gunzip(&gzip(&data), 10_000).is_ok());
    }

    #[test]
    fn gunzip_rejects_a_truncated_stream() {
        let compressed = gzip(&b"some data to compress".repeat(50));
        let truncated = &compressed[..compressed.len() / 2];
        assert!(matches!(
            gunzip(truncated, 1 << 20),
            Err(Failure::Malformed(_))
        ));
    }

    #[test]
    fn gunzip_rejects_bytes_that_are_not_gzip() {
        assert!(matches!(
            gunzip(b"plainly not gzip", 1 << 20),
            Err(Failure::Malformed(_))
        ));
    }

    #[test]
    fn content_type_parameters_and_case_are_ignored() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("Application/JSON; charset=utf-8"),
        );
        assert_eq!(Format::of(&headers), Some(Format::Json));
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-protobuf"),
        );
        assert_eq!(Format::of(&headers), Some(Format::Protobuf));
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        assert_eq!(Format::of(&headers), None);
    }

    #[test]
    fn identity_and_missing_content_encoding_mean_plain() {
        let mut headers = HeaderMap::new();
        assert_eq!(is_gzip(&headers), Ok(false));
        headers.insert(
            header::CONTENT_ENCODING,
            HeaderValue::from_static("identity"),
        );
        assert_eq!(is_gzip(&headers), Ok(false));
        headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("GZIP"));
        assert_eq!(is_gzip(&headers), Ok(true));
        headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("br"));
        assert!(matches!(
            is_gzip(&headers),
            Err(Failure::UnsupportedMedia(_))
        ));
    }
}
