//! Calling providers: OpenAI-compatible APIs over HTTP(S), or the in-process mock.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, Uri, header};
use http_body_util::Full;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use tokio::time::Instant;

use crate::config::{OpenaiProviderConfig, ProviderConfig, parse_base_url};
use crate::event::{Operation, ProviderKind, ProviderRef};
use crate::mock::MockProvider;
use sluice_pipeline::error::error_chain;

/// The HTTP client shared by every `openai` provider.
pub(crate) type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// How long an idle upstream connection is kept for reuse.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// Builds the upstream client: HTTP/1.1 and HTTP/2 (by ALPN), rustls with the ring provider
/// and the webpki roots.
pub(crate) fn http_client() -> Result<HttpClient, rustls::Error> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    // Requests are small and latency matters more than packet count.
    http.set_nodelay(true);
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_webpki_roots(Arc::new(rustls::crypto::ring::default_provider()))?
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new())
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .build(https))
}

/// A configured provider, ready to call.
pub(crate) struct Provider {
    pub name: String,
    pub kind: Kind,
}

pub(crate) enum Kind {
    Openai(Openai),
    Mock(MockProvider),
}

pub(crate) struct Openai {
    /// The base URL without a trailing slash.
    base: String,
    headers: HeaderMap,
    timeout: Duration,
    address: String,
    port: u16,
}

/// What became of one attempt.
pub(crate) enum Outcome {
    /// The provider answered (any status); its body is still to be read.
    Answered(Response<Body>),
    /// No answer: `timeout` or `connection_error`.
    Failed {
        error_type: &'static str,
        message: String,
    },
}

impl Provider {
    pub fn new(name: &str, config: &ProviderConfig) -> Result<Provider, String> {
        let kind = match config {
            ProviderConfig::Openai(openai) => Kind::Openai(Openai::new(openai)?),
            ProviderConfig::Mock(mock) => Kind::Mock(MockProvider::new(mock.clone())),
        };
        Ok(Provider {
            name: name.to_string(),
            kind,
        })
    }

    pub fn reference(&self) -> ProviderRef {
        ProviderRef {
            name: self.name.clone(),
            kind: match self.kind {
                Kind::Openai(_) => ProviderKind::Openai,
                Kind::Mock(_) => ProviderKind::Mock,
            },
        }
    }

    /// The upstream's host and port, for `server.address` and `server.port`.
    pub fn server(&self) -> (Option<String>, Option<u16>) {
        match &self.kind {
            Kind::Openai(openai) => (Some(openai.address.clone()), Some(openai.port)),
            Kind::Mock(_) => (None, None),
        }
    }

    /// How long an attempt on this provider may take.
    pub fn timeout(&self) -> Duration {
        match &self.kind {
            Kind::Openai(openai) => openai.timeout,
            Kind::Mock(mock) => mock.timeout(),
        }
    }

    /// Sends `body` to the provider's endpoint for `operation`. Waits at most until
    /// `deadline` for the response head; the caller bounds the body.
    pub async fn call(
        &self,
        client: &HttpClient,
        operation: Operation,
        body: &Value,
        trace_headers: &[(HeaderName, HeaderValue)],
        deadline: Instant,
    ) -> Outcome {
        let timed_out = || Outcome::Failed {
            error_type: "timeout",
            message: format!(
                "provider {} did not answer within {:?}",
                self.name,
                self.timeout()
            ),
        };
        match &self.kind {
            Kind::Mock(mock) => {
                match tokio::time::timeout_at(deadline, mock.respond(operation, body)).await {
                    Ok(response) => Outcome::Answered(response),
                    Err(_) => timed_out(),
                }
            }
            Kind::Openai(openai) => {
                let request = match openai.request(operation, body, trace_headers) {
                    Ok(request) => request,
                    Err(message) => {
                        return Outcome::Failed {
                            error_type: "connection_error",
                            message,
                        };
                    }
                };
                match tokio::time::timeout_at(deadline, client.request(request)).await {
                    Ok(Ok(response)) => Outcome::Answered(response.map(Body::new)),
                    Ok(Err(error)) => Outcome::Failed {
                        error_type: "connection_error",
                        message: format!("provider {}: {}", self.name, error_chain(&error)),
                    },
                    Err(_) => timed_out(),
                }
            }
        }
    }
}

impl Openai {
    fn new(config: &OpenaiProviderConfig) -> Result<Openai, String> {
        let uri = parse_base_url(&config.base_url)?;
        let https = uri.scheme_str() == Some("https");
        let address = uri.host().unwrap_or_default().to_string();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let mut headers = HeaderMap::new();
        for (name, value) in &config.headers {
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|e| format!("header {name:?}: {e}"))?;
            let value = HeaderValue::from_str(value).map_err(|e| format!("header {name}: {e}"))?;
            headers.insert(name, value);
        }
        if let Some(key) = &config.api_key {
            let mut value = HeaderValue::from_str(&format!("Bearer {key}"))
                .map_err(|_| "api_key has characters not allowed in a header".to_string())?;
            value.set_sensitive(true);
            headers.insert(header::AUTHORIZATION, value);
        }
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        Ok(Openai {
            base: config.base_url.trim_end_matches('/').to_string(),
            headers,
            timeout: config.timeout,
            address,
            port,
        })
    }

    fn request(
        &self,
        operation: Operation,
        body: &Value,
        trace_headers: &[(HeaderName, HeaderValue)],
    ) -> Result<Request<Full<Bytes>>, String> {
        let path = match operation {
            Operation::Chat => "/chat/completions",
            Operation::TextCompletion => "/completions",
            Operation::Embeddings => "/embeddings",
            Operation::Models => "/models",
            Operation::Other => return Err("no upstream endpoint for this request".into()),
        };
        let uri: Uri = format!("{}{path}", self.base)
            .parse()
            .map_err(|e| format!("bad upstream URL: {e}"))?;
        let body = serde_json::to_vec(body).map_err(|e| format!("encoding the body: {e}"))?;
        let mut request = Request::post(uri)
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| format!("building the request: {e}"))?;
        let headers = request.headers_mut();
        headers.extend(self.headers.clone());
        for (name, value) in trace_headers {
            headers.insert(name.clone(), value.clone());
        }
        Ok(request)
    }
}
