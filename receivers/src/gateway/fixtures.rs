//! Request events as the gateway emits them, for the conversion tests.

use std::collections::BTreeMap;

use sluice_gateway::event::{
    Attempt, Content, EventError, InboundTraceContext, Message, Operation, ProviderKind,
    ProviderRef, RequestEvent, RequestParameters, Timings, TraceIds, TraceMetadata, Usage,
};

/// The start of every fixture request: 2024-05-01T00:00:00Z.
pub(crate) const T0: u64 = 1_714_521_600_000_000_000;
const MS: u64 = 1_000_000;

/// A prompt that must never leave the gateway unless content capture is on.
pub(crate) const SECRET_PROMPT: &str = "the-distinctive-prompt-7f3a";

const TRACE_ID: [u8; 16] = [
    0x0a, 0xf7, 0x65, 0x19, 0x16, 0xcd, 0x43, 0xdd, 0x84, 0x48, 0xeb, 0x21, 0x1c, 0x80, 0x31, 0x9c,
];
const CALLER_SPAN: [u8; 8] = [0xca, 0x11, 0xe2, 0xca, 0x11, 0xe2, 0xca, 0x11];

fn openai() -> ProviderRef {
    ProviderRef {
        name: "openai".into(),
        kind: ProviderKind::Openai,
    }
}

fn local() -> ProviderRef {
    ProviderRef {
        name: "local".into(),
        kind: ProviderKind::Mock,
    }
}

fn base(request_id: &str, operation: Operation, path: &str) -> RequestEvent {
    RequestEvent {
        request_id: request_id.into(),
        operation,
        http_method: "POST".into(),
        http_path: path.into(),
        timings: Timings {
            start_unix_nano: T0,
            routing_done_unix_nano: None,
            first_chunk_unix_nano: None,
            last_chunk_unix_nano: None,
            end_unix_nano: T0 + MS,
        },
        requested_model: None,
        response_model: None,
        provider: None,
        attempts: Vec::new(),
        key_id: "team-a".into(),
        status_code: 200,
        error: None,
        usage: Usage::default(),
        stream: false,
        finish_reasons: Vec::new(),
        response_id: None,
        parameters: RequestParameters::default(),
        trace: TraceIds {
            trace_id: TRACE_ID,
            parent_span_id: None,
            server_span_id: [0x5e; 8],
            routing_span_id: [0x20; 8],
            tracestate: None,
        },
        inbound_trace: None,
        sampled: true,
        user_id: None,
        session_id: None,
        trace_metadata: None,
        headers: Vec::new(),
        content: None,
    }
}

/// A streamed chat through OpenAI, child of the caller's span, with every request-level field.
pub(crate) fn streamed_chat() -> RequestEvent {
    let mut event = base("req-chat", Operation::Chat, "/v1/chat/completions");
    event.timings = Timings {
        start_unix_nano: T0,
        routing_done_unix_nano: Some(T0 + MS),
        first_chunk_unix_nano: Some(T0 + 200 * MS),
        last_chunk_unix_nano: Some(T0 + 880 * MS),
        end_unix_nano: T0 + 900 * MS,
    };
    event.requested_model = Some("gpt-4o".into());
    event.response_model = Some("gpt-4o-2024-08-06".into());
    event.provider = Some(openai());
    event.attempts = vec![Attempt {
        provider: openai(),
        model: "gpt-4o".into(),
        server_address: Some("api.openai.com".into()),
        server_port: Some(443),
        span_id: [0xa1; 8],
        start_unix_nano: T0 + 2 * MS,
        end_unix_nano: T0 + 880 * MS,
        status_code: Some(200),
        error_type: None,
        error_message: None,
        fallback: false,
    }];
    event.usage = Usage {
        input_tokens: Some(12),
        output_tokens: Some(40),
        cached_input_tokens: Some(0),
        reasoning_tokens: None,
    };
    event.stream = true;
    event.finish_reasons = vec!["stop".into()];
    event.response_id = Some("chatcmpl-1".into());
    event.parameters = RequestParameters {
        max_tokens: Some(100),
        temperature: Some(0.5),
        top_p: None,
        other: [("seed".to_string(), serde_json::json!(7))]
            .into_iter()
            .collect(),
    };
    event.trace.parent_span_id = Some(CALLER_SPAN);
    event.trace.tracestate = Some("vendor=x".into());
    event.inbound_trace = Some(InboundTraceContext {
        trace_id: TRACE_ID,
        parent_span_id: CALLER_SPAN,
        sampled: true,
        tracestate: Some("vendor=x".into()),
    });
    event.user_id = Some("user_12345".into());
    event.session_id = Some("session_abc".into());
    event.trace_metadata = Some(TraceMetadata {
        metadata: BTreeMap::from([("environment".to_string(), "staging".to_string())]),
        ..TraceMetadata::default()
    });
    event.headers = vec![
        ("x-team".into(), "search".into()),
        ("x-team".into(), "ads".into()),
    ];
    event
}

/// What a chat's content looks like when `capture_content = "full"`.
pub(crate) fn chat_content() -> Content {
    Content {
        input_messages: vec![
            Message {
                role: "system".into(),
                content: "Answer in one word.".into(),
            },
            Message {
                role: "user".into(),
                content: SECRET_PROMPT.into(),
            },
        ],
        output_messages: vec![Message {
            role: "assistant".into(),
            content: "Blue.".into(),
        }],
        ..Content::default()
    }
}

/// An embeddings request answered by the mock, a root span.
pub(crate) fn embeddings() -> RequestEvent {
    let mut event = base("req-emb", Operation::Embeddings, "/v1/embeddings");
    event.timings = Timings {
        start_unix_nano: T0,
        routing_done_unix_nano: Some(T0 + MS),
        first_chunk_unix_nano: Some(T0 + 30 * MS),
        last_chunk_unix_nano: Some(T0 + 30 * MS),
        end_unix_nano: T0 + 31 * MS,
    };
    event.requested_model = Some("text-embedding-3-small".into());
    event.response_model = Some("text-embedding-3-small".into());
    event.provider = Some(local());
    event.attempts = vec![Attempt {
        provider: local(),
        model: "text-embedding-3-small".into(),
        server_address: None,
        server_port: None,
        span_id: [0xa1; 8],
        start_unix_nano: T0 + 2 * MS,
        end_unix_nano: T0 + 30 * MS,
        status_code: Some(200),
        error_type: None,
        error_message: None,
        fallback: false,
    }];
    event.usage.input_tokens = Some(8);
    event.parameters.other = [("encoding_format".to_string(), serde_json::json!("float"))]
        .into_iter()
        .collect();
    event
}

/// A request with a bad key: refused before routing.
pub(crate) fn unauthorized() -> RequestEvent {
    let mut event = base("req-401", Operation::Chat, "/v1/chat/completions");
    event.key_id = "unauthenticated".into();
    event.status_code = 401;
    event.error = Some(EventError {
        error_type: "unauthorized".into(),
        message: "Incorrect or missing API key".into(),
    });
    event
}

/// A non-streamed chat whose first target answered 503 and whose fallback answered.
pub(crate) fn fallback() -> RequestEvent {
    let mut event = base("req-fallback", Operation::Chat, "/v1/chat/completions");
    event.timings = Timings {
        start_unix_nano: T0,
        routing_done_unix_nano: Some(T0 + MS),
        first_chunk_unix_nano: Some(T0 + 150 * MS),
        last_chunk_unix_nano: Some(T0 + 150 * MS),
        end_unix_nano: T0 + 151 * MS,
    };
    event.requested_model = Some("gpt-4o".into());
    event.response_model = Some("mock-large".into());
    event.provider = Some(local());
    event.attempts = vec![
        Attempt {
            provider: openai(),
            model: "gpt-4o".into(),
            server_address: Some("api.openai.com".into()),
            server_port: Some(443),
            span_id: [0xa1; 8],
            start_unix_nano: T0 + 2 * MS,
            end_unix_nano: T0 + 50 * MS,
            status_code: Some(503),
            error_type: Some("503".into()),
            error_message: Some("upstream overloaded".into()),
            fallback: false,
        },
        Attempt {
            provider: local(),
            model: "mock-large".into(),
            server_address: None,
            server_port: None,
            span_id: [0xa2; 8],
            start_unix_nano: T0 + 51 * MS,
            end_unix_nano: T0 + 150 * MS,
            status_code: Some(200),
            error_type: None,
            error_message: None,
            fallback: true,
        },
    ];
    event.usage = Usage {
        input_tokens: Some(5),
        output_tokens: Some(9),
        cached_input_tokens: None,
        reasoning_tokens: None,
    };
    event.finish_reasons = vec!["stop".into()];
    event.response_id = Some("chatcmpl-mock".into());
    event
}

/// A request for a model no route has.
pub(crate) fn model_not_found(model: &str) -> RequestEvent {
    let mut event = base("req-404", Operation::Chat, "/v1/chat/completions");
    event.requested_model = Some(model.into());
    event.status_code = 404;
    event.error = Some(EventError {
        error_type: "model_not_found".into(),
        message: format!("The model `{model}` does not exist"),
    });
    event
}
