//! The `[gateway]` table: where the gateway listens, which providers it calls, how it routes
//! model names to them, and which API keys it accepts.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sluice_pipeline::config::{ConfigError, KeyPath, parse_table};

/// The gateway's configuration: the `[gateway]` table.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// The address the OpenAI-compatible API listens on.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Whether prompts and completions go into the request events: `off` (the default) or
    /// `full`.
    #[serde(default)]
    pub capture_content: CaptureContent,
    /// Request headers copied into the events (and so onto span attributes as
    /// `http.request.header.<name>`). Case-insensitive. `authorization` is never captured.
    #[serde(default)]
    pub capture_headers: Vec<String>,
    /// The largest request body accepted, in bytes; larger ones get 413.
    #[serde(default = "default_max_request_bytes")]
    pub max_request_bytes: usize,
    /// How the gateway decides which requests are traced.
    #[serde(default)]
    pub tracing: TracingConfig,
    /// The upstream providers, by name: `[gateway.providers.NAME]`.
    #[serde(default)]
    pub providers: BTreeMap<String, ProviderConfig>,
    /// How model names map to providers: `[[gateway.routes]]`, one per model name.
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    /// The API keys clients may use: `[[gateway.keys]]`. When empty, any bearer token (or
    /// none) is accepted.
    #[serde(default)]
    pub keys: Vec<KeyConfig>,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}

fn default_max_request_bytes() -> usize {
    16 * 1024 * 1024
}

/// Whether content is captured.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CaptureContent {
    /// No prompts or completions anywhere in the events.
    #[default]
    Off,
    /// Prompts and completions in the events.
    Full,
}

/// `[gateway.tracing]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TracingConfig {
    /// The sampler, as in `OTEL_TRACES_SAMPLER`: `always_on`, `always_off`, `traceidratio`,
    /// `parentbased_always_on` (the default), `parentbased_always_off`,
    /// `parentbased_traceidratio`.
    #[serde(default = "default_sampler")]
    pub sampler: SamplerKind,
    /// The sampling ratio of the `*traceidratio` samplers, from 0.0 to 1.0.
    #[serde(default = "default_sampler_arg")]
    pub sampler_arg: f64,
}

fn default_sampler() -> SamplerKind {
    SamplerKind::ParentbasedAlwaysOn
}

fn default_sampler_arg() -> f64 {
    1.0
}

impl Default for TracingConfig {
    fn default() -> Self {
        TracingConfig {
            sampler: default_sampler(),
            sampler_arg: default_sampler_arg(),
        }
    }
}

/// The samplers of the OpenTelemetry SDK specification.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SamplerKind {
    AlwaysOn,
    AlwaysOff,
    Traceidratio,
    ParentbasedAlwaysOn,
    ParentbasedAlwaysOff,
    ParentbasedTraceidratio,
}

/// One upstream provider: `[gateway.providers.NAME]`, its `kind` choosing the rest.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ProviderConfig {
    /// Any OpenAI-compatible HTTP API: OpenAI, vLLM, Ollama, Groq, OpenRouter...
    Openai(OpenaiProviderConfig),
    /// The built-in deterministic mock, run in-process.
    Mock(MockConfig),
}

/// `kind = "openai"`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OpenaiProviderConfig {
    /// The API's base URL, up to and including the version: `https://api.openai.com/v1`.
    /// The gateway appends `/chat/completions`, `/completions` or `/embeddings`.
    pub base_url: String,
    /// Sent as `Authorization: Bearer <api_key>`; omit for upstreams without auth.
    #[serde(default)]
    pub api_key: Option<String>,
    /// How long an attempt may take: until the response headers for streams, until the
    /// whole body otherwise. Past it the attempt fails with `timeout` and the route moves on.
    #[serde(
        default = "default_provider_timeout",
        with = "sluice_pipeline::config::duration"
    )]
    pub timeout: Duration,
    /// Extra headers sent with every request to this provider (`OpenAI-Organization`...).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

fn default_provider_timeout() -> Duration {
    Duration::from_secs(60)
}

/// `kind = "mock"`: deterministic answers with failure injection. Model names choose
/// behaviour: `mock-error-<status>` answers that status, `mock-timeout` never answers,
/// `mock-reasoning*` reports reasoning tokens.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MockConfig {
    /// Delay before the answer (before the first chunk of a stream).
    #[serde(default = "default_zero", with = "sluice_pipeline::config::duration")]
    pub latency: Duration,
    /// Delay between the chunks of a stream.
    #[serde(default = "default_zero", with = "sluice_pipeline::config::duration")]
    pub stream_chunk_delay: Duration,
    /// The share of requests answered with 503, from 0.0 to 1.0.
    #[serde(default)]
    pub failure_rate: f64,
    /// Seeds the failure draws, so a run's sequence of failures is reproducible.
    #[serde(default)]
    pub seed: u64,
    /// The length of the embedding vectors.
    #[serde(default = "default_embedding_dimensions")]
    pub embedding_dimensions: usize,
    /// How long the gateway waits for the mock (matters for `mock-timeout`).
    #[serde(
        default = "default_provider_timeout",
        with = "sluice_pipeline::config::duration"
    )]
    pub timeout: Duration,
}

fn default_zero() -> Duration {
    Duration::ZERO
}

fn default_embedding_dimensions() -> usize {
    1536
}

impl Default for MockConfig {
    fn default() -> Self {
        MockConfig {
            latency: default_zero(),
            stream_chunk_delay: default_zero(),
            failure_rate: 0.0,
            seed: 0,
            embedding_dimensions: default_embedding_dimensions(),
            timeout: default_provider_timeout(),
        }
    }
}

/// One route: `[[gateway.routes]]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// The model name clients ask for; `*` matches any name no other route has.
    pub model: String,
    /// The providers to try, in order; the next is tried after a connection error, a
    /// timeout, a 429 or a 5xx.
    pub targets: Vec<TargetConfig>,
}

/// One target of a route.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TargetConfig {
    /// The provider's name (`[gateway.providers.NAME]`).
    pub provider: String,
    /// The model name sent to the provider; by default, the one the client asked for.
    #[serde(default)]
    pub model: Option<String>,
}

/// One API key: `[[gateway.keys]]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    /// The name telemetry shows for this key (`sluice.api_key.id`).
    pub id: String,
    /// The secret clients send as `Authorization: Bearer <key>`; never exported.
    pub key: String,
    /// The models this key may use; others get 403. All when omitted.
    #[serde(default)]
    pub models: Option<Vec<String>>,
    /// The most requests per minute (a token bucket holding a minute's worth); over it,
    /// 429 with `Retry-After`. Unlimited when omitted.
    #[serde(default)]
    pub requests_per_minute: Option<u32>,
}

impl GatewayConfig {
    /// Parses the `[gateway]` table found at `path` and checks the references inside it.
    pub fn from_table(
        path: &KeyPath,
        table: toml::Table,
    ) -> Result<GatewayConfig, Vec<ConfigError>> {
        let config: GatewayConfig = parse_table(path, table).map_err(|e| vec![e])?;
        let errors = config.validate(path);
        if errors.is_empty() {
            Ok(config)
        } else {
            Err(errors)
        }
    }

    /// Every problem with values and references, each naming its key.
    pub fn validate(&self, path: &KeyPath) -> Vec<ConfigError> {
        let mut errors = Vec::new();
        let ratio = self.tracing.sampler_arg;
        if !(0.0..=1.0).contains(&ratio) {
            errors.push(ConfigError::new(
                path.key("tracing").key("sampler_arg"),
                format!("must be between 0.0 and 1.0, not {ratio}"),
            ));
        }
        for (i, name) in self.capture_headers.iter().enumerate() {
            if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                errors.push(ConfigError::new(
                    path.key("capture_headers").index(i),
                    format!("{name:?} is not a valid header name"),
                ));
            }
        }
        if self.max_request_bytes == 0 {
            errors.push(ConfigError::new(
                path.key("max_request_bytes"),
                "must be more than 0",
            ));
        }
        for (name, provider) in &self.providers {
            let p = path.key("providers").key(name);
            match provider {
                ProviderConfig::Openai(openai) => {
                    if let Err(message) = parse_base_url(&openai.base_url) {
                        errors.push(ConfigError::new(p.key("base_url"), message));
                    }
                    if openai.timeout.is_zero() {
                        errors.push(ConfigError::new(p.key("timeout"), "must be more than 0"));
                    }
                    for (header, value) in &openai.headers {
                        if http::HeaderName::from_bytes(header.as_bytes()).is_err()
                            || http::HeaderValue::from_str(value).is_err()
                        {
                            errors.push(ConfigError::new(
                                p.key("headers").key(header),
                                "not a valid header name and value",
                            ));
                        }
                    }
                }
                ProviderConfig::Mock(mock) => {
                    if !(0.0..=1.0).contains(&mock.failure_rate) {
                        errors.push(ConfigError::new(
                            p.key("failure_rate"),
                            format!("must be between 0.0 and 1.0, not {}", mock.failure_rate),
                        ));
                    }
                    if mock.embedding_dimensions == 0 || mock.embedding_dimensions > 65536 {
                        errors.push(ConfigError::new(
                            p.key("embedding_dimensions"),
                            "must be between 1 and 65536",
                        ));
                    }
                    if mock.timeout.is_zero() {
                        errors.push(ConfigError::new(p.key("timeout"), "must be more than 0"));
                    }
                }
            }
        }
        let mut models = HashSet::new();
        for (i, route) in self.routes.iter().enumerate() {
            let r = path.key("routes").index(i);
            if route.model.is_empty() {
                errors.push(ConfigError::new(r.key("model"), "must not be empty"));
            }
            if !models.insert(route.model.as_str()) {
                errors.push(ConfigError::new(
                    r.key("model"),
                    format!("another route already handles model {:?}", route.model),
                ));
            }
            if route.targets.is_empty() {
                errors.push(ConfigError::new(
                    r.key("targets"),
                    "needs at least one target",
                ));
            }
            for (j, target) in route.targets.iter().enumerate() {
                if !self.providers.contains_key(&target.provider) {
                    errors.push(ConfigError::new(
                        r.key("targets").index(j).key("provider"),
                        format!(
                            "no provider named {:?} (define [gateway.providers.{}])",
                            target.provider, target.provider
                        ),
                    ));
                }
            }
        }
        let mut ids = HashSet::new();
        let mut secrets = HashSet::new();
        for (i, key) in self.keys.iter().enumerate() {
            let k = path.key("keys").index(i);
            if key.id.is_empty() {
                errors.push(ConfigError::new(k.key("id"), "must not be empty"));
            }
            if !ids.insert(key.id.as_str()) {
                errors.push(ConfigError::new(
                    k.key("id"),
                    format!("another key already has id {:?}", key.id),
                ));
            }
            if key.key.is_empty() {
                errors.push(ConfigError::new(k.key("key"), "must not be empty"));
            } else if !secrets.insert(key.key.as_str()) {
                errors.push(ConfigError::new(
                    k.key("key"),
                    "the same key is configured twice",
                ));
            }
            if key.requests_per_minute == Some(0) {
                errors.push(ConfigError::new(
                    k.key("requests_per_minute"),
                    "must be more than 0 (omit it for no limit)",
                ));
            }
        }
        errors
    }
}

/// Checks a provider's base URL: http or https, with a host.
pub(crate) fn parse_base_url(text: &str) -> Result<http::Uri, String> {
    let uri: http::Uri = text
        .parse()
        .map_err(|e| format!("{text:?} is not a URL ({e})"))?;
    match uri.scheme_str() {
        Some("http") | Some("https") => {}
        _ => return Err(format!("{text:?} must start with http:// or https://")),
    }
    if uri.host().is_none() {
        return Err(format!("{text:?} has no host"));
    }
    if uri.query().is_some() {
        return Err(format!("{text:?} must not have a query"));
    }
    Ok(uri)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<GatewayConfig, Vec<ConfigError>> {
        let table: toml::Table = toml::from_str(text).unwrap();
        GatewayConfig::from_table(&KeyPath::of(&["gateway"]), table)
    }

    fn paths(errors: Vec<ConfigError>) -> Vec<String> {
        errors.into_iter().map(|e| e.path.to_string()).collect()
    }

    #[test]
    fn the_issue_example_parses() {
        let config = parse(
            r#"
            listen = "127.0.0.1:8080"
            capture_content = "off"
            capture_headers = ["x-team"]
            [tracing]
            sampler = "parentbased_always_on"
            sampler_arg = 1.0
            [providers.openai]
            kind = "openai"
            base_url = "https://api.openai.com/v1"
            api_key = "sk-test"
            timeout = "60s"
            [providers.local]
            kind = "mock"
            latency = "20ms"
            [[routes]]
            model = "gpt-4o"
            targets = [{ provider = "openai" }, { provider = "local", model = "mock-large" }]
            [[keys]]
            id = "team-a"
            key = "secret"
            models = ["gpt-4o"]
            requests_per_minute = 600
            "#,
        )
        .unwrap();
        assert_eq!(
            config.routes[0].targets[1].model.as_deref(),
            Some("mock-large")
        );
        match &config.providers["local"] {
            ProviderConfig::Mock(mock) => assert_eq!(mock.latency, Duration::from_millis(20)),
            other => panic!("expected mock, got {other:?}"),
        }
        assert_eq!(config.keys[0].requests_per_minute, Some(600));
    }

    #[test]
    fn the_readme_example_parses() {
        let readme = include_str!("../README.md");
        let example = readme
            .split("```toml")
            .nth(1)
            .and_then(|rest| rest.split("```").next())
            .unwrap();
        let mut file: toml::Table = toml::from_str(example).unwrap();
        let Some(toml::Value::Table(gateway)) = file.remove("gateway") else {
            panic!("the example has a [gateway] table");
        };
        let config = GatewayConfig::from_table(&KeyPath::of(&["gateway"]), gateway).unwrap();
        assert_eq!(config.routes.len(), 2);
        assert_eq!(config.keys[0].id, "team-a");
    }

    #[test]
    fn an_empty_table_is_a_gateway_with_defaults() {
        let config = parse("").unwrap();
        assert_eq!(config.listen, default_listen());
        assert_eq!(config.capture_content, CaptureContent::Off);
        assert_eq!(config.tracing.sampler, SamplerKind::ParentbasedAlwaysOn);
    }

    #[test]
    fn a_route_to_an_undefined_provider_names_the_target() {
        let errors = parse(
            r#"
            [providers.local]
            kind = "mock"
            [[routes]]
            model = "a"
            targets = [{ provider = "local" }]
            [[routes]]
            model = "b"
            targets = [{ provider = "local" }, { provider = "nope" }]
            "#,
        )
        .unwrap_err();
        assert_eq!(paths(errors), ["gateway.routes[1].targets[1].provider"]);
    }

    #[test]
    fn unknown_keys_are_errors_with_their_path() {
        let errors = parse("[tracing]\nsamplr = \"always_on\"").unwrap_err();
        assert_eq!(paths(errors), ["gateway.tracing.samplr"]);
        let errors = parse("[[keys]]\nid = \"a\"\nkey = \"k\"\nrpm = 3").unwrap_err();
        assert_eq!(paths(errors), ["gateway.keys[0].rpm"]);
        let errors = parse("[providers.m]\nkind = \"mock\"\nlatncy = \"1s\"").unwrap_err();
        assert!(errors[0].message.contains("latncy"), "{errors:?}");
        assert!(
            errors[0]
                .path
                .to_string()
                .starts_with("gateway.providers.m"),
            "{errors:?}"
        );
    }

    #[test]
    fn bad_values_are_all_reported() {
        let errors = parse(
            r#"
            [tracing]
            sampler = "traceidratio"
            sampler_arg = 1.5
            [providers.up]
            kind = "openai"
            base_url = "ftp://x"
            [providers.m]
            kind = "mock"
            failure_rate = 2.0
            [[routes]]
            model = "a"
            targets = []
            [[keys]]
            id = "a"
            key = "k"
            [[keys]]
            id = "a"
            key = "k"
            requests_per_minute = 0
            "#,
        )
        .unwrap_err();
        assert_eq!(
            paths(errors),
            [
                "gateway.tracing.sampler_arg",
                "gateway.providers.m.failure_rate",
                "gateway.providers.up.base_url",
                "gateway.routes[0].targets",
                "gateway.keys[1].id",
                "gateway.keys[1].key",
                "gateway.keys[1].requests_per_minute",
            ]
        );
    }

    #[test]
    fn an_unknown_provider_kind_is_an_error() {
        let errors = parse("[providers.x]\nkind = \"anthropic\"").unwrap_err();
        assert!(errors[0].message.contains("anthropic"), "{:?}", errors);
    }
}
