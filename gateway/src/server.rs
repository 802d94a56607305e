//! The gateway's HTTP server: authentication, routing with fallback, proxying (streams chunk
//! by chunk), and one [`RequestEvent`] per request.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::routing::{any, get};
use axum::serve::ListenerExt;
use bytes::{Bytes, BytesMut};
use http::{HeaderName, HeaderValue, Method, Response, StatusCode, header};
use http_body::Frame;
use http_body_util::{BodyExt, Limited};
use prometheus::{IntCounter, IntGauge};
use serde_json::{Map, Value, json};
use sluice_pipeline::Telemetry;
use sluice_pipeline::config::{ConfigError, KeyPath};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::auth::{Identity, Keys};
use crate::config::{CaptureContent, GatewayConfig, SamplerKind};
use crate::event::{
    Attempt, Content, EventError, Message, Operation, RequestEvent, RequestParameters, Timings,
    TraceIds, TraceMetadata, Usage, now_unix_nano,
};
use crate::openai::{content_text, error_message, error_response, json_response, parse_usage};
use crate::sse::SseParser;
use crate::trace::{
    Sampler, encode_hex, format_traceparent, new_span_id, new_trace_id, parse_traceparent,
    span_id_from_name, trace_id_from_name,
};
use crate::upstream::{HttpClient, Outcome, Provider, http_client};

/// The largest upstream body (non-streaming answer or error) the gateway reads.
const MAX_UPSTREAM_BODY: usize = 64 * 1024 * 1024;

/// The key id of requests refused with 401.
pub const UNAUTHENTICATED: &str = "unauthenticated";

/// At most one "events dropped" warning per this many seconds.
const DROP_LOG_INTERVAL_SECS: u64 = 10;

/// Errors building or running the gateway.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("invalid gateway configuration: {}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))]
    Config(Vec<ConfigError>),
    #[error("setting up TLS for upstream providers: {0}")]
    Tls(#[from] rustls::Error),
    #[error("registering the gateway's metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("gateway server: {0}")]
    Io(#[from] std::io::Error),
    #[error("gateway server task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// The gateway: configured, not yet serving.
pub struct Gateway {
    shared: Arc<Shared>,
}

struct Shared {
    capture_content: CaptureContent,
    capture_headers: Vec<HeaderName>,
    max_request_bytes: usize,
    keys: Keys,
    routes: HashMap<String, Vec<Target>>,
    /// The route of `*`, for models no other route names.
    wildcard: Option<Vec<Target>>,
    /// The routed model names, for `GET /v1/models`.
    model_names: Vec<String>,
    client: HttpClient,
    sampler: Sampler,
    events: mpsc::Sender<RequestEvent>,
    events_dropped: IntCounter,
    in_flight: IntGauge,
    /// Unix seconds of the last "events dropped" warning.
    last_drop_log: AtomicU64,
}

struct Target {
    provider: Arc<Provider>,
    model: Option<String>,
}

impl Gateway {
    /// A gateway serving `config`, sending one event per request into `events` (never
    /// waiting: when it is full, the event is dropped and counted) and registering its own
    /// metrics (`sluice_gateway_events_dropped_total`, `sluice_gateway_requests_in_flight`)
    /// in `telemetry`'s registry.
    pub fn new(
        config: GatewayConfig,
        events: mpsc::Sender<RequestEvent>,
        telemetry: Telemetry,
    ) -> Result<Gateway, GatewayError> {
        let errors = config.validate(&KeyPath::of(&["gateway"]));
        if !errors.is_empty() {
            return Err(GatewayError::Config(errors));
        }
        let mut providers = HashMap::new();
        for (name, provider) in &config.providers {
            let provider = Provider::new(name, provider).map_err(|message| {
                GatewayError::Config(vec![ConfigError::new(
                    KeyPath::of(&["gateway", "providers", name]),
                    message,
                )])
            })?;
            providers.insert(name.clone(), Arc::new(provider));
        }
        let mut routes = HashMap::new();
        let mut wildcard = None;
        let mut model_names = Vec::new();
        for route in &config.routes {
            let targets: Vec<Target> = route
                .targets
                .iter()
                .filter_map(|target| {
                    Some(Target {
                        provider: providers.get(&target.provider)?.clone(),
                        model: target.model.clone(),
                    })
                })
                .collect();
            if route.model == "*" {
                wildcard = Some(targets);
            } else {
                model_names.push(route.model.clone());
                routes.insert(route.model.clone(), targets);
            }
        }
        // Registered by name, once per process: a gateway rebuilt by a reload shares them.
        let events_dropped = telemetry.metric("sluice_gateway_events_dropped_total", || {
            IntCounter::new(
                "sluice_gateway_events_dropped_total",
                "Gateway request events dropped because the pipeline's event channel was full.",
            )
            .expect("a static, valid metric name")
        });
        let in_flight = telemetry.metric("sluice_gateway_requests_in_flight", || {
            IntGauge::new(
                "sluice_gateway_requests_in_flight",
                "Requests the gateway is handling (streams until their last byte).",
            )
            .expect("a static, valid metric name")
        });
        // The sampler in effect, for /status and dashboards: 1 for the sampler named, its
        // ratio as the value (1 always on, 0 always off).
        let sampler = telemetry.metric("sluice_gateway_trace_sampler", || {
            prometheus::GaugeVec::new(
                prometheus::Opts::new(
                    "sluice_gateway_trace_sampler",
                    "The gateway's trace sampler (label) and the share of root traces it keeps.",
                ),
                &["sampler"],
            )
            .expect("a static, valid metric name")
        });
        sampler.reset();
        let (sampler_name, kept) = match config.tracing.sampler {
            SamplerKind::AlwaysOn => ("always_on", 1.0),
            SamplerKind::AlwaysOff => ("always_off", 0.0),
            SamplerKind::Traceidratio => ("traceidratio", config.tracing.sampler_arg),
            SamplerKind::ParentbasedAlwaysOn => ("parentbased_always_on", 1.0),
            SamplerKind::ParentbasedAlwaysOff => ("parentbased_always_off", 0.0),
            SamplerKind::ParentbasedTraceidratio => {
                ("parentbased_traceidratio", config.tracing.sampler_arg)
            }
        };
        sampler.with_label_values(&[sampler_name]).set(kept);
        let shared = Shared {
            capture_content: config.capture_content,
            capture_headers: config
                .capture_headers
                .iter()
                .filter_map(|h| HeaderName::from_bytes(h.as_bytes()).ok())
                .filter(|h| *h != header::AUTHORIZATION)
                .collect(),
            max_request_bytes: config.max_request_bytes,
            keys: Keys::new(&config.keys),
            routes,
            wildcard,
            model_names,
            client: http_client()?,
            sampler: Sampler::from_config(&config.tracing),
            events,
            events_dropped,
            in_flight,
            last_drop_log: AtomicU64::new(0),
        };
        Ok(Gateway {
            shared: Arc::new(shared),
        })
    }

    /// How many requests are being handled right now (streams until their last byte): the
    /// `sluice_gateway_requests_in_flight` gauge, for reporting it elsewhere too.
    pub fn requests_in_flight(&self) -> impl Fn() -> i64 + Send + Sync + 'static {
        let gauge = self.shared.in_flight.clone();
        move || gauge.get()
    }

    /// The gateway's routes, for serving them some other way (or in tests without a socket).
    pub fn router(&self) -> Router {
        let handler = |operation: Operation| {
            move |State(shared): State<Arc<Shared>>, request: Request| async move {
                handle(shared, operation, request).await
            }
        };
        Router::new()
            .route("/v1/chat/completions", any(handler(Operation::Chat)))
            .route("/v1/completions", any(handler(Operation::TextCompletion)))
            .route("/v1/embeddings", any(handler(Operation::Embeddings)))
            .route("/v1/models", get(handler(Operation::Models)))
            .fallback(handler(Operation::Other))
            .with_state(self.shared.clone())
    }

    /// Serves on `listener` until [`RunningGateway::shutdown`].
    pub fn serve(self, listener: TcpListener) -> Result<RunningGateway, GatewayError> {
        let local_addr = listener.local_addr()?;
        let shutdown = CancellationToken::new();
        let router = self.router();
        let listener = listener.tap_io(|tcp| {
            // Small requests and answers: do not let Nagle hold them back.
            let _ = tcp.set_nodelay(true);
        });
        let signal = shutdown.clone().cancelled_owned();
        let task = tokio::spawn(async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(signal)
                .await
        });
        Ok(RunningGateway {
            local_addr,
            shutdown,
            task,
        })
    }
}

/// A serving gateway.
pub struct RunningGateway {
    local_addr: SocketAddr,
    shutdown: CancellationToken,
    task: JoinHandle<std::io::Result<()>>,
}

impl RunningGateway {
    /// The address the gateway listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting connections, lets in-flight requests (streams included) finish, and
    /// returns once they have.
    pub async fn shutdown(self) -> Result<(), GatewayError> {
        self.shutdown.cancel();
        self.task.await??;
        Ok(())
    }
}

/// The event of one request while it is handled; emitted once, when the request ends.
struct Pending {
    shared: Arc<Shared>,
    event: RequestEvent,
    /// Keeps the in-flight gauge up until the event is emitted.
    _in_flight: InFlight,
}

struct InFlight(IntGauge);

impl InFlight {
    fn new(gauge: &IntGauge) -> InFlight {
        gauge.inc();
        InFlight(gauge.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Pending {
    fn start(shared: Arc<Shared>, operation: Operation, request: &Request) -> Pending {
        let start = now_unix_nano();
        let headers = request.headers();
        let tracestate = headers.get("tracestate").and_then(|v| v.to_str().ok());
        let inbound = headers
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_traceparent(v, tracestate));
        let (trace_id, parent_span_id, parent_sampled) = match &inbound {
            Some(inbound) => (
                inbound.trace_id,
                Some(inbound.parent_span_id),
                Some(inbound.sampled),
            ),
            None => (new_trace_id(), None, None),
        };
        let sampled = shared.sampler.should_sample(&trace_id, parent_sampled);
        let mut captured = Vec::new();
        for name in &shared.capture_headers {
            for value in headers.get_all(name) {
                captured.push((
                    name.as_str().to_string(),
                    String::from_utf8_lossy(value.as_bytes()).into_owned(),
                ));
            }
        }
        let event = RequestEvent {
            request_id: encode_hex(&fastrand::u128(..).to_be_bytes()),
            operation,
            http_method: request.method().as_str().to_string(),
            http_path: request.uri().path().to_string(),
            timings: Timings {
                start_unix_nano: start,
                ..Timings::default()
            },
            requested_model: None,
            response_model: None,
            provider: None,
            attempts: Vec::new(),
            key_id: crate::auth::ANONYMOUS.to_string(),
            status_code: 0,
            error: None,
            usage: Usage::default(),
            stream: false,
            finish_reasons: Vec::new(),
            response_id: None,
            parameters: RequestParameters::default(),
            trace: TraceIds {
                trace_id,
                parent_span_id,
                server_span_id: new_span_id(),
                routing_span_id: new_span_id(),
                tracestate: inbound.as_ref().and_then(|i| i.tracestate.clone()),
            },
            inbound_trace: inbound,
            sampled,
            user_id: None,
            session_id: None,
            trace_metadata: None,
            headers: captured,
            content: None,
        };
        let in_flight = InFlight::new(&shared.in_flight);
        Pending {
            shared,
            event,
            _in_flight: in_flight,
        }
    }

    /// Answers with an error the gateway itself decided on.
    fn refuse(
        self,
        status: StatusCode,
        error_type: &str,
        message: &str,
        openai_type: &str,
    ) -> Response<Body> {
        let response = error_response(status, message, openai_type, Some(error_type));
        self.finish(response, Some((error_type, message)))
    }

    /// Emits the event for `response` and returns the response, tagged with the request id.
    fn finish(
        mut self,
        mut response: Response<Body>,
        error: Option<(&str, &str)>,
    ) -> Response<Body> {
        self.event.status_code = response.status().as_u16();
        self.event.error = error.map(|(error_type, message)| EventError {
            error_type: error_type.to_string(),
            message: message.to_string(),
        });
        self.tag(&mut response);
        self.emit();
        response
    }

    fn tag(&self, response: &mut Response<Body>) {
        if let Ok(value) = HeaderValue::from_str(&self.event.request_id) {
            response.headers_mut().insert("x-request-id", value);
        }
    }

    fn emit(mut self) {
        self.event.timings.end_unix_nano = now_unix_nano();
        let shared = self.shared.clone();
        if shared.events.try_send(self.event).is_err() {
            shared.events_dropped.inc();
            let now = now_unix_nano() / 1_000_000_000;
            let last = shared.last_drop_log.load(Ordering::Relaxed);
            if now >= last + DROP_LOG_INTERVAL_SECS
                && shared
                    .last_drop_log
                    .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
            {
                tracing::warn!(
                    dropped_total = shared.events_dropped.get(),
                    "gateway request events dropped: the pipeline is not keeping up"
                );
            }
        }
    }

    /// Applies what the body says about tracing when no `traceparent` came with the request.
    fn apply_body_trace(&mut self) {
        if self.event.inbound_trace.is_some() {
            return;
        }
        let Some(metadata) = &self.event.trace_metadata else {
            return;
        };
        if let Some(name) = &metadata.trace_id {
            self.event.trace.trace_id = trace_id_from_name(name);
        }
        if let Some(name) = &metadata.parent_span_id {
            self.event.trace.parent_span_id = Some(span_id_from_name(name));
        }
        self.event.sampled = self
            .shared
            .sampler
            .should_sample(&self.event.trace.trace_id, None);
    }
}

async fn handle(shared: Arc<Shared>, operation: Operation, request: Request) -> Response<Body> {
    let mut pending = Pending::start(shared.clone(), operation, &request);
    if operation == Operation::Other {
        return pending.refuse(
            StatusCode::NOT_FOUND,
            "not_found",
            &format!("no endpoint {} {}", request.method(), request.uri().path()),
            "invalid_request_error",
        );
    }
    let expected = if operation == Operation::Models {
        Method::GET
    } else {
        Method::POST
    };
    if request.method() != expected {
        let message = format!("{} needs {expected}", request.uri().path());
        let response = error_response(
            StatusCode::METHOD_NOT_ALLOWED,
            &message,
            "invalid_request_error",
            Some("method_not_allowed"),
        );
        return pending.finish(response, Some(("method_not_allowed", &message)));
    }
    let Some(identity) = shared
        .keys
        .authenticate(request.headers().get(header::AUTHORIZATION))
    else {
        pending.event.key_id = UNAUTHENTICATED.to_string();
        return pending.refuse(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "Incorrect or missing API key: send Authorization: Bearer <key>",
            "invalid_request_error",
        );
    };
    pending.event.key_id = identity.key_id.clone();
    if let Err(wait) = identity.take_request() {
        let seconds = wait.as_secs_f64().ceil().max(1.0) as u64;
        let message = format!(
            "Rate limit reached for key {}: retry in {seconds}s",
            identity.key_id
        );
        let mut response = error_response(
            StatusCode::TOO_MANY_REQUESTS,
            &message,
            "requests",
            Some("rate_limit_exceeded"),
        );
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        return pending.finish(response, Some(("rate_limited", &message)));
    }
    if operation == Operation::Models {
        return list_models(&shared, &identity, pending);
    }

    let bytes = match Limited::new(request.into_body(), shared.max_request_bytes)
        .collect()
        .await
    {
        Ok(body) => body.to_bytes(),
        Err(error) if error.is::<http_body_util::LengthLimitError>() => {
            let message = format!(
                "the request body is larger than {} bytes",
                shared.max_request_bytes
            );
            let response = error_response(
                StatusCode::PAYLOAD_TOO_LARGE,
                &message,
                "invalid_request_error",
                Some("request_too_large"),
            );
            return pending.finish(response, Some(("invalid_request", &message)));
        }
        Err(error) => {
            let message = format!("reading the request body: {error}");
            return pending.refuse(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                &message,
                "invalid_request_error",
            );
        }
    };
    let mut body = match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(body)) => body,
        _ => {
            return pending.refuse(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "the request body must be a JSON object",
                "invalid_request_error",
            );
        }
    };
    let Some(model) = body
        .get("model")
        .and_then(Value::as_str)
        .map(str::to_string)
    else {
        return pending.refuse(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "you must provide a model parameter",
            "invalid_request_error",
        );
    };
    pending.event.requested_model = Some(model.clone());
    inspect_body(&mut pending, &mut body);
    pending.apply_body_trace();

    if !identity.allows(&model) {
        let message = format!("key {} may not use model {model}", identity.key_id);
        return pending.refuse(
            StatusCode::FORBIDDEN,
            "forbidden",
            &message,
            "invalid_request_error",
        );
    }
    let Some(targets) = shared.routes.get(&model).or(shared.wildcard.as_ref()) else {
        let message =
            format!("The model `{model}` does not exist or you do not have access to it.");
        return pending.refuse(
            StatusCode::NOT_FOUND,
            "model_not_found",
            &message,
            "invalid_request_error",
        );
    };
    pending.event.timings.routing_done_unix_nano = Some(now_unix_nano());

    let stream = pending.event.stream;
    let strip_usage = stream
        && matches!(operation, Operation::Chat | Operation::TextCompletion)
        && body
            .get("stream_options")
            .and_then(|o| o.get("include_usage"))
            .and_then(Value::as_bool)
            != Some(true);
    if strip_usage {
        match body.get_mut("stream_options") {
            Some(Value::Object(options)) => {
                options.insert("include_usage".into(), Value::Bool(true));
            }
            _ => {
                body.insert("stream_options".into(), json!({"include_usage": true}));
            }
        }
    }
    let mut body = Value::Object(body);
    proxy(pending, operation, &mut body, targets, &model, strip_usage).await
}

/// Reads what the event needs from the request body, and removes the gateway's own fields
/// (`trace`, `session_id`) before it goes upstream.
fn inspect_body(pending: &mut Pending, body: &mut Map<String, Value>) {
    let event = &mut pending.event;
    event.stream = body.get("stream").and_then(Value::as_bool) == Some(true);
    event.user_id = body.get("user").and_then(Value::as_str).map(str::to_string);
    event.session_id = match body.remove("session_id") {
        Some(Value::String(id)) => Some(id),
        Some(Value::Null) | None => None,
        Some(other) => Some(other.to_string()),
    };
    if let Some(trace) = body.remove("trace") {
        event.trace_metadata = Some(trace_metadata(trace));
    }
    let mut parameters = RequestParameters {
        max_tokens: body
            .get("max_completion_tokens")
            .and_then(Value::as_u64)
            .or_else(|| body.get("max_tokens").and_then(Value::as_u64)),
        temperature: body.get("temperature").and_then(Value::as_f64),
        top_p: body.get("top_p").and_then(Value::as_f64),
        other: Map::new(),
    };
    for (key, value) in body.iter() {
        // Content stays out of the parameters: it is only in `content`, and only when captured.
        let skip = matches!(
            key.as_str(),
            "model"
                | "messages"
                | "prompt"
                | "input"
                | "suffix"
                | "prediction"
                | "stream"
                | "user"
                | "max_tokens"
                | "max_completion_tokens"
                | "temperature"
                | "top_p"
        );
        if !skip {
            parameters.other.insert(key.clone(), value.clone());
        }
    }
    event.parameters = parameters;
    if pending.shared.capture_content == CaptureContent::Full {
        let mut content = Content::default();
        match event.operation {
            Operation::Chat => {
                if let Some(messages) = body.get("messages").and_then(Value::as_array) {
                    content.input_messages = messages.iter().map(message).collect();
                }
            }
            Operation::TextCompletion => content.prompt = texts(body.get("prompt")),
            Operation::Embeddings => content.embedding_input = texts(body.get("input")),
            Operation::Models | Operation::Other => {}
        }
        event.content = Some(content);
    }
}

fn trace_metadata(trace: Value) -> TraceMetadata {
    let mut metadata = TraceMetadata::default();
    let Value::Object(fields) = trace else {
        return metadata;
    };
    for (key, value) in fields {
        let text = match value {
            Value::String(text) => text,
            other => other.to_string(),
        };
        match key.as_str() {
            "trace_id" => metadata.trace_id = Some(text),
            "trace_name" => metadata.trace_name = Some(text),
            "span_name" => metadata.span_name = Some(text),
            "generation_name" => metadata.generation_name = Some(text),
            "parent_span_id" => metadata.parent_span_id = Some(text),
            _ => {
                metadata.metadata.insert(key, text);
            }
        }
    }
    metadata
}

fn message(value: &Value) -> Message {
    let mut content = content_text(&value["content"]);
    if let Some(calls) = value.get("tool_calls").filter(|c| !c.is_null()) {
        if !content.is_empty() {
            content.push('\n');
        }
        content.push_str(&calls.to_string());
    }
    Message {
        role: value["role"].as_str().unwrap_or_default().to_string(),
        content,
    }
}

fn texts(value: Option<&Value>) -> Vec<String> {
    match value {
        Some(Value::String(text)) => vec![text.clone()],
        Some(Value::Array(items)) if items.iter().all(Value::is_number) => {
            vec![Value::Array(items.clone()).to_string()]
        }
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| {
                item.as_str()
                    .map_or_else(|| item.to_string(), str::to_string)
            })
            .collect(),
        _ => Vec::new(),
    }
}

fn list_models(shared: &Shared, identity: &Identity, pending: Pending) -> Response<Body> {
    let data: Vec<Value> = shared
        .model_names
        .iter()
        .filter(|model| identity.allows(model))
        .map(|model| json!({"id": model, "object": "model", "created": 0, "owned_by": "sluice"}))
        .collect();
    let response = json_response(StatusCode::OK, &json!({"object": "list", "data": data}));
    pending.finish(response, None)
}

/// Whether an upstream status moves the route on to its next target.
fn moves_on(status: StatusCode) -> bool {
    status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error()
}

/// Tries the route's targets in order and answers with the first usable response.
async fn proxy(
    mut pending: Pending,
    operation: Operation,
    body: &mut Value,
    targets: &[Target],
    model: &str,
    strip_usage: bool,
) -> Response<Body> {
    let shared = pending.shared.clone();
    let sampled = pending.event.sampled;
    let trace_id = pending.event.trace.trace_id;
    let tracestate = pending
        .event
        .trace
        .tracestate
        .as_deref()
        .and_then(|s| HeaderValue::from_str(s).ok());
    for (index, target) in targets.iter().enumerate() {
        let last = index + 1 == targets.len();
        let provider = &target.provider;
        let upstream_model = target.model.as_deref().unwrap_or(model);
        body["model"] = Value::String(upstream_model.to_string());
        let span_id = new_span_id();
        let mut trace_headers = Vec::with_capacity(2);
        if let Ok(value) = HeaderValue::from_str(&format_traceparent(&trace_id, &span_id, sampled))
        {
            trace_headers.push((HeaderName::from_static("traceparent"), value));
        }
        if let Some(tracestate) = &tracestate {
            trace_headers.push((HeaderName::from_static("tracestate"), tracestate.clone()));
        }
        let (server_address, server_port) = provider.server();
        let mut attempt = Attempt {
            provider: provider.reference(),
            model: upstream_model.to_string(),
            server_address,
            server_port,
            span_id,
            start_unix_nano: now_unix_nano(),
            end_unix_nano: 0,
            status_code: None,
            error_type: None,
            error_message: None,
            fallback: index > 0,
        };
        pending.event.provider = Some(provider.reference());
        let deadline = Instant::now() + provider.timeout();
        let response = match provider
            .call(&shared.client, operation, body, &trace_headers, deadline)
            .await
        {
            Outcome::Answered(response) => response,
            Outcome::Failed {
                error_type,
                message,
            } => {
                attempt.end_unix_nano = now_unix_nano();
                attempt.error_type = Some(error_type.to_string());
                attempt.error_message = Some(message.clone());
                pending.event.attempts.push(attempt);
                if last {
                    let status = if error_type == "timeout" {
                        StatusCode::GATEWAY_TIMEOUT
                    } else {
                        StatusCode::BAD_GATEWAY
                    };
                    return pending.refuse(status, error_type, &message, "server_error");
                }
                continue;
            }
        };
        let answered = now_unix_nano();
        let status = response.status();
        attempt.status_code = Some(status.as_u16());
        let is_stream = response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        if status.is_success() && is_stream {
            return stream_response(pending, attempt, response, strip_usage);
        }
        let (parts, upstream_body) = response.into_parts();
        let read = Limited::new(upstream_body, MAX_UPSTREAM_BODY).collect();
        let bytes = match tokio::time::timeout_at(deadline, read).await {
            Ok(Ok(body)) => body.to_bytes(),
            Ok(Err(error)) => {
                let message = format!("reading the answer of provider {}: {error}", provider.name);
                attempt_failed(&mut pending, attempt, "connection_error", &message);
                if last {
                    return pending.refuse(
                        StatusCode::BAD_GATEWAY,
                        "connection_error",
                        &message,
                        "server_error",
                    );
                }
                continue;
            }
            Err(_) => {
                let message = format!(
                    "provider {} did not finish its answer within {:?}",
                    provider.name,
                    provider.timeout()
                );
                attempt_failed(&mut pending, attempt, "timeout", &message);
                if last {
                    return pending.refuse(
                        StatusCode::GATEWAY_TIMEOUT,
                        "timeout",
                        &message,
                        "server_error",
                    );
                }
                continue;
            }
        };
        let now = now_unix_nano();
        attempt.end_unix_nano = now;
        if !status.is_success() {
            let error_type = status.as_u16().to_string();
            let message = error_message(&bytes)
                .unwrap_or_else(|| format!("provider {} answered {status}", provider.name));
            attempt.error_type = Some(error_type.clone());
            attempt.error_message = Some(message.clone());
            pending.event.attempts.push(attempt);
            if moves_on(status) && !last {
                continue;
            }
            // Other 4xx (and the last target's failure) go back to the client as they came.
            let mut response = Response::new(Body::from(bytes));
            *response.status_mut() = status;
            for name in [header::CONTENT_TYPE, header::RETRY_AFTER] {
                if let Some(value) = parts.headers.get(&name) {
                    response.headers_mut().insert(name, value.clone());
                }
            }
            return pending.finish(response, Some((&error_type, &message)));
        }
        // Unstreamed, the first chunk is the response head: what the client waited for.
        pending.event.timings.first_chunk_unix_nano = Some(answered);
        pending.event.timings.last_chunk_unix_nano = Some(now);
        pending.event.attempts.push(attempt);
        if let Ok(answer) = serde_json::from_slice::<Value>(&bytes) {
            observe_answer(&mut pending.event, &answer);
        }
        let mut response = Response::new(Body::from(bytes));
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            parts
                .headers
                .get(header::CONTENT_TYPE)
                .cloned()
                .unwrap_or(HeaderValue::from_static("application/json")),
        );
        return pending.finish(response, None);
    }
    // Routes are validated to have at least one target; this answers a route left empty.
    pending.refuse(
        StatusCode::BAD_GATEWAY,
        "no_target",
        "the route has no targets",
        "server_error",
    )
}

fn attempt_failed(pending: &mut Pending, mut attempt: Attempt, error_type: &str, message: &str) {
    attempt.end_unix_nano = now_unix_nano();
    attempt.error_type = Some(error_type.to_string());
    attempt.error_message = Some(message.to_string());
    pending.event.attempts.push(attempt);
}

/// Reads a non-streaming answer into the event.
fn observe_answer(event: &mut RequestEvent, answer: &Value) {
    event.response_id = answer["id"].as_str().map(str::to_string);
    event.response_model = answer["model"].as_str().map(str::to_string);
    if let Some(usage) = parse_usage(&answer["usage"]) {
        event.usage = usage;
    }
    let choices = answer["choices"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    event.finish_reasons = choices
        .iter()
        .filter_map(|c| c["finish_reason"].as_str().map(str::to_string))
        .collect();
    if let Some(content) = &mut event.content {
        content.output_messages = choices
            .iter()
            .map(|choice| match choice.get("message") {
                Some(message) => self::message(message),
                None => Message {
                    role: "assistant".into(),
                    content: choice["text"].as_str().unwrap_or_default().to_string(),
                },
            })
            .collect();
    }
}

/// Starts proxying a stream: the client gets the events as they arrive, the event is emitted
/// when the stream ends (or the client goes away).
fn stream_response(
    pending: Pending,
    attempt: Attempt,
    response: Response<Body>,
    strip_usage: bool,
) -> Response<Body> {
    let (parts, upstream) = response.into_parts();
    let capture = pending.event.content.is_some();
    let request_id = HeaderValue::from_str(&pending.event.request_id).ok();
    let mut proxied = Response::new(Body::new(ProxyStream {
        upstream,
        parser: SseParser::default(),
        strip_usage,
        pending: Some(pending),
        attempt: Some(attempt),
        outputs: Vec::new(),
        finish_reasons: Vec::new(),
        capture,
        ended: false,
        failed: None,
    }));
    *proxied.status_mut() = parts.status;
    let headers = proxied.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Some(request_id) = request_id {
        headers.insert("x-request-id", request_id);
    }
    proxied
}

/// The body of a proxied stream: passes each complete server-sent event on as it arrives,
/// learns from it, and leaves out the usage-only chunk when the gateway asked for it.
struct ProxyStream {
    upstream: Body,
    parser: SseParser,
    strip_usage: bool,
    pending: Option<Pending>,
    attempt: Option<Attempt>,
    /// Per choice index, the text streamed so far (only when content is captured).
    outputs: Vec<String>,
    finish_reasons: Vec<(u64, String)>,
    capture: bool,
    ended: bool,
    failed: Option<String>,
}

impl ProxyStream {
    /// Learns from one event; returns whether to pass it on.
    fn observe(&mut self, data: &str) -> bool {
        let Some(pending) = self.pending.as_mut() else {
            return true;
        };
        let event = &mut pending.event;
        let now = now_unix_nano();
        if event.timings.first_chunk_unix_nano.is_none() {
            event.timings.first_chunk_unix_nano = Some(now);
        }
        event.timings.last_chunk_unix_nano = Some(now);
        if data == "[DONE]" {
            return true;
        }
        let Ok(chunk) = serde_json::from_str::<Value>(data) else {
            return true;
        };
        if event.response_id.is_none() {
            event.response_id = chunk["id"].as_str().map(str::to_string);
        }
        if event.response_model.is_none() {
            event.response_model = chunk["model"].as_str().map(str::to_string);
        }
        let choices = chunk["choices"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        for choice in choices {
            let index = choice["index"].as_u64().unwrap_or(0);
            if let Some(reason) = choice["finish_reason"].as_str() {
                self.finish_reasons.push((index, reason.to_string()));
            }
            if self.capture {
                let text = choice["delta"]["content"]
                    .as_str()
                    .or_else(|| choice["text"].as_str())
                    .unwrap_or_default();
                let slot = usize::try_from(index).unwrap_or(usize::MAX).min(1024);
                if self.outputs.len() <= slot {
                    self.outputs.resize(slot + 1, String::new());
                }
                self.outputs[slot].push_str(text);
            }
        }
        if let Some(usage) = parse_usage(&chunk["usage"]) {
            event.usage = usage;
            if self.strip_usage && choices.is_empty() {
                return false;
            }
        }
        true
    }

    fn complete(&mut self) {
        let Some(mut pending) = self.pending.take() else {
            return;
        };
        let now = now_unix_nano();
        self.finish_reasons.sort_by_key(|(index, _)| *index);
        pending.event.finish_reasons = self.finish_reasons.drain(..).map(|(_, r)| r).collect();
        if let Some(content) = &mut pending.event.content {
            content.output_messages = self
                .outputs
                .drain(..)
                .map(|text| Message {
                    role: "assistant".into(),
                    content: text,
                })
                .collect();
        }
        let error = if let Some(message) = self.failed.take() {
            Some(("stream_error", message))
        } else if !self.ended {
            Some((
                "client_closed",
                "the client closed the connection before the stream ended".to_string(),
            ))
        } else {
            None
        };
        if let Some(mut attempt) = self.attempt.take() {
            attempt.end_unix_nano = now;
            if let Some((error_type, message)) = &error {
                attempt.error_type = Some(error_type.to_string());
                attempt.error_message = Some(message.clone());
            }
            pending.event.attempts.push(attempt);
        }
        pending.event.status_code = StatusCode::OK.as_u16();
        pending.event.error = error.map(|(error_type, message)| EventError {
            error_type: error_type.to_string(),
            message,
        });
        pending.emit();
    }
}

impl http_body::Body for ProxyStream {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = &mut *self;
        loop {
            if this.ended {
                return Poll::Ready(None);
            }
            match Pin::new(&mut this.upstream).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(frame))) => {
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    this.parser.push(&data);
                    let mut out = BytesMut::new();
                    while let Some(event) = this.parser.next_event() {
                        let keep = match &event.data {
                            Some(data) => this.observe(data),
                            None => true,
                        };
                        if keep {
                            out.extend_from_slice(&event.raw);
                        }
                    }
                    if !out.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(out.freeze()))));
                    }
                }
                Poll::Ready(Some(Err(error))) => {
                    this.failed = Some(format!("the upstream stream broke: {error}"));
                    this.ended = true;
                    this.complete();
                    return Poll::Ready(Some(Err(error)));
                }
                Poll::Ready(None) => {
                    this.ended = true;
                    let tail = this.parser.finish();
                    let keep = match tail.as_ref().and_then(|e| e.data.as_deref()) {
                        Some(data) => this.observe(data),
                        None => true,
                    };
                    this.complete();
                    if let Some(tail) = tail.filter(|_| keep) {
                        return Poll::Ready(Some(Ok(Frame::data(tail.raw))));
                    }
                    return Poll::Ready(None);
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended
    }
}

impl Drop for ProxyStream {
    fn drop(&mut self) {
        // The client went away mid-stream (or the server shut down): still one event.
        self.complete();
    }
}
