//! The clients of a running Sluice's admin API: `sluice status`, `sluice tap` and
//! `sluice reload`. They speak plain HTTP/1.1 to `service.admin` and turn what goes wrong
//! (nothing listening, a missing or wrong token) into a sentence saying what to check.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, ValueEnum};
use http_body_util::{BodyExt, Empty};
use hyper::body::{Bytes, Incoming};
use hyper::header::{AUTHORIZATION, HOST, USER_AGENT};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::net::TcpStream;
use tokio::signal::unix::{SignalKind, signal};
use tokio::task::JoinHandle;

/// The admin address when neither `--admin` nor `--config` says otherwise: the default of
/// `service.admin`.
const DEFAULT_ADMIN: &str = "127.0.0.1:13133";

/// The environment variable `--token` defaults to.
const TOKEN_ENV: &str = "SLUICE_ADMIN_TOKEN";

/// How long connecting may take. The admin API is normally on loopback, where a refusal is
/// immediate; this only bounds an address that drops packets.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long `/status` may take to answer once connected: it only reads counters.
const STATUS_TIMEOUT: Duration = Duration::from_secs(10);

/// How long `POST /reload` may take: a reload drains the components it replaces, for up to
/// the new config's `service.shutdown_timeout` (10 s by default).
const RELOAD_TIMEOUT: Duration = Duration::from_secs(120);

/// The longest last-error message a status row shows; `--json` has the whole text.
const LAST_ERROR_WIDTH: usize = 120;

/// Where the admin API is and how to authenticate: the options every admin command takes.
#[derive(Args, Debug)]
pub struct AdminArgs {
    /// The admin API's address, host:port [default: `service.admin` of --config, else
    /// 127.0.0.1:13133].
    #[arg(long, value_name = "ADDR", value_parser = parse_admin)]
    admin: Option<String>,
    /// The configuration sluice runs, to find `service.admin` (and `service.admin_token`).
    #[arg(short, long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// The bearer token when `service.admin_token` is set [default: $SLUICE_ADMIN_TOKEN, else
    /// `service.admin_token` of --config].
    #[arg(long, value_name = "TOKEN")]
    token: Option<String>,
}

/// `sluice status`.
#[derive(Args, Debug)]
pub struct StatusArgs {
    #[command(flatten)]
    admin: AdminArgs,
    /// Print the admin API's JSON as it is, instead of the table.
    #[arg(long)]
    json: bool,
}

/// How `sluice tap` prints items.
#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum TapFormat {
    /// One JSON object per line (NDJSON), the item in OTLP/JSON form.
    Json,
    /// One readable line per item.
    Text,
}

/// `sluice tap`.
#[derive(Args, Debug)]
pub struct TapArgs {
    /// The component whose outgoing items to show: an id, or receiver/ID, processor/ID,
    /// exporter/ID when several kinds share the id.
    #[arg(value_name = "COMPONENT")]
    component: String,
    /// Stop after N items.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    limit: Option<u64>,
    /// json (NDJSON) or text.
    #[arg(long, value_enum, default_value = "json")]
    format: TapFormat,
    /// Only items whose attribute (or resource attribute, or `name`) KEY has VALUE.
    #[arg(long = "where", value_name = "KEY=VALUE", value_parser = parse_condition)]
    condition: Option<String>,
    /// At most N items per second; sluice skips the rest and says how many [default: 100].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    rate: Option<u64>,
    #[command(flatten)]
    admin: AdminArgs,
}

/// `sluice reload`.
#[derive(Args, Debug)]
pub struct ReloadArgs {
    #[command(flatten)]
    admin: AdminArgs,
}

/// Accepts `host:port`, with or without `http://`.
fn parse_admin(text: &str) -> Result<String, String> {
    if text.starts_with("https://") {
        return Err("the admin API speaks plain HTTP: write host:port".to_string());
    }
    let address = text.strip_prefix("http://").unwrap_or(text);
    let address = address.strip_suffix('/').unwrap_or(address);
    match address.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
            Ok(address.to_string())
        }
        _ => Err(format!(
            "{text:?} is not host:port, e.g. \"127.0.0.1:13133\""
        )),
    }
}

fn parse_condition(text: &str) -> Result<String, String> {
    match text.split_once('=') {
        Some((key, _)) if !key.is_empty() => Ok(text.to_string()),
        _ => Err(format!("{text:?} is not KEY=VALUE")),
    }
}

/// What can go wrong talking to the admin API.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error(
        "cannot reach the admin API at {address}: {reason} — is sluice running, and is \
         service.admin set to this address?"
    )]
    Unreachable { address: String, reason: String },
    #[error(
        "{address} did not answer as the admin API ({reason}) — is service.admin set to this address?"
    )]
    NotHttp { address: String, reason: String },
    #[error(
        "the admin API at {address} needs a token (401): pass --token TOKEN or set \
         SLUICE_ADMIN_TOKEN to the service.admin_token of its configuration"
    )]
    TokenMissing { address: String },
    #[error(
        "the admin API at {address} refused the token (401): it is not the service.admin_token \
         of the running configuration (given by {source_of_token})"
    )]
    TokenWrong {
        address: String,
        source_of_token: &'static str,
    },
    #[error("the token cannot be sent in an HTTP header: it has control characters")]
    TokenInvalid,
    #[error("the admin API at {address} did not answer within {} s", .after.as_secs())]
    Timeout { address: String, after: Duration },
    #[error("lost the connection to the admin API at {address} ({reason}): did sluice stop?")]
    Lost { address: String, reason: String },
    #[error("the admin API at {address} answered {status}: {body}")]
    Unexpected {
        address: String,
        status: StatusCode,
        body: String,
    },
    #[error("cannot listen for Ctrl-C: {0}")]
    Signal(String),
    #[error("{0}")]
    Config(String),
    #[error("the admin API is disabled in {0} (service.admin = \"\"): pass --admin ADDR")]
    AdminDisabled(PathBuf),
}

impl AdminError {
    /// The exit code: 2 for a configuration that cannot be read, as `sluice validate`; 1 else.
    fn exit_code(&self) -> ExitCode {
        match self {
            AdminError::Config(_) | AdminError::AdminDisabled(_) => ExitCode::from(2),
            _ => ExitCode::FAILURE,
        }
    }
}

/// The words for an error connecting, as an operator would say them.
fn connect_failure(error: &std::io::Error) -> String {
    use std::io::ErrorKind;
    match error.kind() {
        ErrorKind::ConnectionRefused => "connection refused".to_string(),
        ErrorKind::AddrNotAvailable => "address not available".to_string(),
        ErrorKind::HostUnreachable => "host unreachable".to_string(),
        ErrorKind::NetworkUnreachable => "network unreachable".to_string(),
        _ => error.to_string(),
    }
}

/// Who chose the token, to say where to fix a wrong one.
#[derive(Debug, Clone, Copy)]
enum TokenSource {
    Flag,
    Env,
    Config,
}

impl TokenSource {
    fn describe(self) -> &'static str {
        match self {
            TokenSource::Flag => "--token",
            TokenSource::Env => "SLUICE_ADMIN_TOKEN",
            TokenSource::Config => "service.admin_token of --config",
        }
    }
}

/// A client of one admin address.
#[derive(Debug)]
struct AdminClient {
    address: String,
    token: Option<(String, TokenSource)>,
}

/// Aborts the task driving a connection when the response using it is done with.
struct ConnectionTask(JoinHandle<()>);

impl Drop for ConnectionTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A response, with the connection it arrives on.
struct Answer {
    response: Response<Incoming>,
    _connection: ConnectionTask,
}

impl AdminClient {
    /// Resolves the address and token from the flags, the environment and the config file.
    fn from_args(args: AdminArgs) -> Result<AdminClient, AdminError> {
        let loaded = match &args.config {
            Some(file) => Some(
                sluice_pipeline::config::load(file)
                    .map_err(|errors| AdminError::Config(format!("{errors}")))?,
            ),
            None => None,
        };
        let address = match (args.admin, &loaded, &args.config) {
            (Some(address), _, _) => address,
            (None, Some(config), Some(file)) => match config.service.admin {
                Some(address) => address.to_string(),
                None => return Err(AdminError::AdminDisabled(file.clone())),
            },
            _ => DEFAULT_ADMIN.to_string(),
        };
        let from_env = std::env::var(TOKEN_ENV).ok().filter(|t| !t.is_empty());
        let from_config = loaded.and_then(|c| c.service.admin_token);
        let token = args
            .token
            .map(|t| (t, TokenSource::Flag))
            .or(from_env.map(|t| (t, TokenSource::Env)))
            .or(from_config.map(|t| (t, TokenSource::Config)));
        Ok(AdminClient { address, token })
    }

    /// Sends `method path` and returns the response once its head has arrived. A 401 is
    /// an error; other statuses are the caller's to read.
    async fn send(&self, method: Method, path: &str) -> Result<Answer, AdminError> {
        let stream =
            match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&self.address)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => {
                    return Err(AdminError::Unreachable {
                        address: self.address.clone(),
                        reason: connect_failure(&e),
                    });
                }
                Err(_) => {
                    return Err(AdminError::Unreachable {
                        address: self.address.clone(),
                        reason: format!("no answer within {} s", CONNECT_TIMEOUT.as_secs()),
                    });
                }
            };
        let not_http = |e: hyper::Error| AdminError::NotHttp {
            address: self.address.clone(),
            reason: e.to_string(),
        };
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(not_http)?;
        let connection = ConnectionTask(tokio::spawn(async move {
            // Its failure shows as the request's or the body's error.
            let _ = connection.await;
        }));
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, &self.address)
            .header(USER_AGENT, concat!("sluice/", env!("CARGO_PKG_VERSION")));
        if let Some((token, _)) = &self.token {
            request = request.header(AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = request
            .body(Empty::<Bytes>::new())
            .map_err(|_| AdminError::TokenInvalid)?;
        let response = sender.send_request(request).await.map_err(not_http)?;
        if response.status() == StatusCode::UNAUTHORIZED {
            return Err(match &self.token {
                None => AdminError::TokenMissing {
                    address: self.address.clone(),
                },
                Some((_, source)) => AdminError::TokenWrong {
                    address: self.address.clone(),
                    source_of_token: source.describe(),
                },
            });
        }
        Ok(Answer {
            response,
            _connection: connection,
        })
    }

    /// Sends `method path` and reads the whole answer within `timeout`.
    async fn fetch(
        &self,
        method: Method,
        path: &str,
        timeout: Duration,
    ) -> Result<(StatusCode, String), AdminError> {
        let exchange = async {
            let answer = self.send(method, path).await?;
            let status = answer.response.status();
            let body = answer
                .response
                .into_body()
                .collect()
                .await
                .map_err(|e| AdminError::Lost {
                    address: self.address.clone(),
                    reason: e.to_string(),
                })?
                .to_bytes();
            Ok((status, String::from_utf8_lossy(&body).into_owned()))
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .unwrap_or_else(|_| {
                Err(AdminError::Timeout {
                    address: self.address.clone(),
                    after: timeout,
                })
            })
    }

    fn unexpected(&self, status: StatusCode, body: &str) -> AdminError {
        AdminError::Unexpected {
            address: self.address.clone(),
            status,
            body: body.trim_end().to_string(),
        }
    }
}

/// Writes `text` to stdout. A reader that closed it early (`sluice status --json | head`) is
/// not an error, so unlike `print!` this does not panic then.
fn print_out(text: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush());
}

/// Runs `work` on a runtime of its own, printing its error.
fn run_client(work: impl std::future::Future<Output = Result<ExitCode, AdminError>>) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(work) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("{error}");
            error.exit_code()
        }
    }
}

/// `sluice status`: the running pipelines as a table, or the admin API's JSON.
pub fn status(args: StatusArgs) -> ExitCode {
    run_client(async move {
        let client = AdminClient::from_args(args.admin)?;
        let (status, body) = client.fetch(Method::GET, "/status", STATUS_TIMEOUT).await?;
        if status != StatusCode::OK {
            return Err(client.unexpected(status, &body));
        }
        if args.json {
            print_out(&body);
            return Ok(ExitCode::SUCCESS);
        }
        let report: StatusReport = serde_json::from_str(&body).map_err(|e| {
            client.unexpected(status, &format!("/status is not the JSON expected: {e}"))
        })?;
        print_out(&render_status(&report));
        Ok(ExitCode::SUCCESS)
    })
}

/// `sluice reload`: asks the running process to load its config file again.
pub fn reload(args: ReloadArgs) -> ExitCode {
    run_client(async move {
        let client = AdminClient::from_args(args.admin)?;
        let (status, body) = client
            .fetch(Method::POST, "/reload", RELOAD_TIMEOUT)
            .await?;
        match status {
            StatusCode::OK => {
                print_out(&body);
                Ok(ExitCode::SUCCESS)
            }
            // The reload was refused: the body is why (the config's errors).
            StatusCode::BAD_REQUEST => {
                eprint!("{body}");
                Ok(ExitCode::FAILURE)
            }
            _ => Err(client.unexpected(status, &body)),
        }
    })
}

/// Percent-encodes a query parameter value: everything but RFC 3986's unreserved characters.
fn query_encode(text: &str) -> String {
    let mut encoded = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            encoded.push(byte as char);
        } else {
            let _ = write!(encoded, "%{byte:02X}");
        }
    }
    encoded
}

fn tap_path(args: &TapArgs) -> String {
    let format = match args.format {
        TapFormat::Json => "json",
        TapFormat::Text => "text",
    };
    let mut path = format!(
        "/tap?component={}&format={format}",
        query_encode(&args.component)
    );
    if let Some(limit) = args.limit {
        let _ = write!(path, "&limit={limit}");
    }
    if let Some(condition) = &args.condition {
        let _ = write!(path, "&where={}", query_encode(condition));
    }
    if let Some(rate) = args.rate {
        let _ = write!(path, "&rate={rate}");
    }
    path
}

/// Whether a tap line is an item, not the server's note about skipped items.
fn is_item(line: &[u8]) -> bool {
    !(line.starts_with(b"{\"skipped\":") || line.starts_with(b"# skipped"))
}

/// `sluice tap`: prints the items leaving a component until `--limit`, Ctrl-C, or the
/// server going away.
pub fn tap(args: TapArgs) -> ExitCode {
    run_client(async move {
        let path = tap_path(&args);
        // Listening for Ctrl-C from the start, not from the first poll of a `ctrl_c()`
        // future: a SIGINT right after "tapping" is printed still ends the tap normally.
        let mut interrupt =
            signal(SignalKind::interrupt()).map_err(|e| AdminError::Signal(e.to_string()))?;
        let client = AdminClient::from_args(args.admin)?;
        let answer = tokio::time::timeout(STATUS_TIMEOUT, client.send(Method::GET, &path))
            .await
            .unwrap_or_else(|_| {
                Err(AdminError::Timeout {
                    address: client.address.clone(),
                    after: STATUS_TIMEOUT,
                })
            })?;
        let status = answer.response.status();
        if status == StatusCode::NOT_FOUND || status == StatusCode::BAD_REQUEST {
            // The server's message names the known components, or the bad parameter.
            let body = answer
                .response
                .into_body()
                .collect()
                .await
                .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
                .unwrap_or_default();
            eprintln!("{}", body.trim_end());
            return Ok(ExitCode::FAILURE);
        }
        if status != StatusCode::OK {
            return Err(client.unexpected(status, ""));
        }
        // The server watches the component from before it answered: from here on, nothing
        // that leaves it is missed.
        eprintln!(
            "tapping {} at {} (Ctrl-C to stop)",
            args.component, client.address
        );
        let stream = stream_lines(answer.response.into_body(), &client.address);
        tokio::select! {
            outcome = stream => match outcome {
                Ok(items) => match args.limit {
                    Some(limit) if items >= limit => Ok(ExitCode::SUCCESS),
                    _ => {
                        eprintln!("the tap ended after {items} item(s): sluice is stopping");
                        Ok(ExitCode::FAILURE)
                    }
                },
                Err(StreamEnd::StdoutClosed) => Ok(ExitCode::SUCCESS),
                Err(StreamEnd::Failed(error)) => Err(error),
            },
            _ = interrupt.recv() => Ok(ExitCode::SUCCESS),
        }
    })
}

/// Why a tap stopped before its end.
enum StreamEnd {
    /// Whoever reads our output is gone (`sluice tap x | head`): not an error.
    StdoutClosed,
    Failed(AdminError),
}

/// Copies the body to stdout a whole line at a time; returns the number of items.
async fn stream_lines(mut body: Incoming, address: &str) -> Result<u64, StreamEnd> {
    let mut stdout = std::io::stdout().lock();
    let mut pending: Vec<u8> = Vec::new();
    let mut items = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            StreamEnd::Failed(AdminError::Lost {
                address: address.to_string(),
                reason: e.to_string(),
            })
        })?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        pending.extend_from_slice(&data);
        let Some(end) = pending.iter().rposition(|&b| b == b'\n') else {
            continue;
        };
        let complete: Vec<u8> = pending.drain(..=end).collect();
        items += complete
            .split(|&b| b == b'\n')
            .filter(|line| !line.is_empty() && is_item(line))
            .count() as u64;
        stdout
            .write_all(&complete)
            .and_then(|()| stdout.flush())
            .map_err(|_| StreamEnd::StdoutClosed)?;
    }
    if !pending.is_empty() {
        pending.push(b'\n');
        items += u64::from(is_item(&pending));
        stdout
            .write_all(&pending)
            .and_then(|()| stdout.flush())
            .map_err(|_| StreamEnd::StdoutClosed)?;
    }
    Ok(items)
}

/// `/status` as far as the table needs it. Every field has a default, so a server of
/// another version still renders.
#[derive(Deserialize, Default, Debug)]
#[serde(default)]
struct StatusReport {
    version: String,
    uptime_seconds: u64,
    ready: bool,
    config: ConfigReport,
    receivers: BTreeMap<String, Counters>,
    processors: BTreeMap<String, Counters>,
    exporters: BTreeMap<String, ExporterReport>,
    gauges: BTreeMap<String, f64>,
}

#[derive(Deserialize, Default, Debug)]
#[serde(default)]
struct ConfigReport {
    path: String,
    sha256: String,
    loaded_at: String,
    last_reload_error: Option<String>,
    last_reload_error_time: Option<String>,
    pipelines: BTreeMap<String, PipelineReport>,
}

#[derive(Deserialize, Default, Debug)]
#[serde(default)]
struct PipelineReport {
    signal: String,
    receivers: Vec<String>,
    processors: Vec<String>,
    exporters: Vec<String>,
}

#[derive(Deserialize, Default, Debug)]
#[serde(default)]
struct Counters {
    accepted: Option<u64>,
    refused: Option<u64>,
    dropped: Option<u64>,
}

#[derive(Deserialize, Default, Debug)]
#[serde(default)]
struct ExporterReport {
    enabled: Option<bool>,
    state: String,
    last_error: Option<String>,
    last_error_time: Option<String>,
    consecutive_failures: u64,
    queue: QueueReport,
    sent: u64,
    failed: u64,
    dropped: u64,
}

#[derive(Deserialize, Default, Debug)]
#[serde(default)]
struct QueueReport {
    size: i64,
    capacity: i64,
}

/// "3d 4h", "2h 5m", "1m 30s", "42s": the two largest units, enough to read at a glance.
fn humanise_seconds(seconds: u64) -> String {
    let units = [
        (seconds / 86_400, "d"),
        (seconds / 3_600 % 24, "h"),
        (seconds / 60 % 60, "m"),
        (seconds % 60, "s"),
    ];
    let first = units.iter().position(|(n, _)| *n > 0).unwrap_or(3);
    units[first..]
        .iter()
        .take(2)
        .map(|(n, unit)| format!("{n}{unit}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// `text` on one line and at most `width` characters, ending in "…" when cut.
fn truncate(text: &str, width: usize) -> String {
    let one_line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.chars().count() <= width {
        return one_line;
    }
    let mut cut: String = one_line.chars().take(width.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// "512/1000 (51%)"; "0/0" for a queue without a bound to compare with.
fn queue_fill(queue: &QueueReport) -> String {
    if queue.capacity <= 0 {
        return format!("{}/{}", queue.size, queue.capacity);
    }
    let percent = queue.size.max(0) * 100 / queue.capacity;
    format!("{}/{} ({percent}%)", queue.size, queue.capacity)
}

/// A gauge key `name{a="x",b="y"}` split into its name and labels.
fn parse_gauge_key(key: &str) -> (&str, BTreeMap<&str, &str>) {
    let Some((name, rest)) = key.split_once('{') else {
        return (key, BTreeMap::new());
    };
    let mut labels = BTreeMap::new();
    let mut rest = rest.strip_suffix('}').unwrap_or(rest);
    while let Some((label, after)) = rest.split_once("=\"") {
        // A value ends at the quote before the next label or the end.
        let (value, next) = match after.find("\",") {
            Some(end) => (&after[..end], &after[end + 2..]),
            None => (after.strip_suffix('"').unwrap_or(after), ""),
        };
        labels.insert(label, value);
        rest = next;
    }
    (name, labels)
}

fn whole(value: f64) -> String {
    if value.fract() == 0.0 && value.abs() < 1e15 {
        format!("{}", value as i64)
    } else {
        format!("{value}")
    }
}

/// The gauges worth a line of their own: tail-sampling buffers, gateway requests in flight,
/// series per Prometheus exporter. `(what, value)` pairs.
fn notable_gauges(gauges: &BTreeMap<String, f64>) -> Vec<(String, String)> {
    let mut traces: BTreeMap<String, f64> = BTreeMap::new();
    let mut spans: BTreeMap<String, f64> = BTreeMap::new();
    let mut series: BTreeMap<String, f64> = BTreeMap::new();
    let mut in_flight = None;
    for (key, &value) in gauges {
        let (name, labels) = parse_gauge_key(key);
        let label = |name: &str| labels.get(name).copied().unwrap_or("").to_string();
        match name {
            "sluice_processor_tail_sampling_buffered_traces" => {
                *traces.entry(label("processor")).or_default() += value;
            }
            "sluice_processor_tail_sampling_buffered_spans" => {
                *spans.entry(label("processor")).or_default() += value;
            }
            "sluice_prometheus_series" => {
                *series.entry(label("exporter")).or_default() += value;
            }
            "sluice_gateway_requests_in_flight" => {
                *in_flight.get_or_insert(0.0) += value;
            }
            _ => {}
        }
    }
    let mut lines = Vec::new();
    let sampled: std::collections::BTreeSet<&String> = traces.keys().chain(spans.keys()).collect();
    for processor in sampled {
        lines.push((
            format!("processor/{processor}"),
            format!(
                "{} traces, {} spans buffered (tail sampling)",
                whole(traces.get(processor).copied().unwrap_or(0.0)),
                whole(spans.get(processor).copied().unwrap_or(0.0))
            ),
        ));
    }
    if let Some(in_flight) = in_flight {
        lines.push((
            "gateway".to_string(),
            format!("{} requests in flight", whole(in_flight)),
        ));
    }
    for (exporter, count) in series {
        lines.push((
            format!("exporter/{exporter}"),
            format!("{} series (prometheus)", whole(count)),
        ));
    }
    lines
}

/// One row of a pipeline's table, and the note under it.
struct Row {
    cells: [String; 8],
    note: Option<String>,
}

const HEADINGS: [&str; 8] = [
    "COMPONENT",
    "STATE",
    "QUEUE",
    "ACCEPTED",
    "REFUSED",
    "SENT",
    "FAILED",
    "DROPPED",
];

/// Columns from this one on hold numbers and are aligned right.
const FIRST_NUMBER_COLUMN: usize = 3;

fn dash() -> String {
    "-".to_string()
}

fn pipeline_rows(pipeline: &PipelineReport, report: &StatusReport) -> Vec<Row> {
    let mut rows = Vec::new();
    for id in &pipeline.receivers {
        let counters = report.receivers.get(id);
        let count = |value: Option<u64>| value.unwrap_or(0).to_string();
        rows.push(Row {
            cells: [
                format!("receiver/{id}"),
                dash(),
                dash(),
                count(counters.and_then(|c| c.accepted)),
                count(counters.and_then(|c| c.refused)),
                dash(),
                dash(),
                dash(),
            ],
            note: None,
        });
    }
    for id in &pipeline.processors {
        let dropped = report
            .processors
            .get(id)
            .and_then(|c| c.dropped)
            .unwrap_or(0);
        rows.push(Row {
            cells: [
                format!("processor/{id}"),
                dash(),
                dash(),
                dash(),
                dash(),
                dash(),
                dash(),
                dropped.to_string(),
            ],
            note: None,
        });
    }
    for id in &pipeline.exporters {
        let Some(exporter) = report.exporters.get(id) else {
            rows.push(Row {
                cells: [
                    format!("exporter/{id}"),
                    "unknown".to_string(),
                    dash(),
                    dash(),
                    dash(),
                    dash(),
                    dash(),
                    dash(),
                ],
                note: None,
            });
            continue;
        };
        let state = if exporter.enabled == Some(false) {
            format!("{} (disabled)", exporter.state)
        } else {
            exporter.state.clone()
        };
        let note = match (&exporter.last_error, exporter.state.as_str()) {
            (Some(error), "Error") => {
                let when = exporter
                    .last_error_time
                    .as_deref()
                    .map(|t| format!(" at {t}"))
                    .unwrap_or_default();
                Some(format!(
                    "last error{when} ({} failure(s) in a row): {}",
                    exporter.consecutive_failures,
                    truncate(error, LAST_ERROR_WIDTH)
                ))
            }
            _ => None,
        };
        rows.push(Row {
            cells: [
                format!("exporter/{id}"),
                state,
                queue_fill(&exporter.queue),
                dash(),
                dash(),
                exporter.sent.to_string(),
                exporter.failed.to_string(),
                exporter.dropped.to_string(),
            ],
            note,
        });
    }
    rows
}

fn write_table(out: &mut String, rows: &[Row]) {
    let mut widths = HEADINGS.map(str::len);
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(&row.cells) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: &[&str]| {
        let mut line = String::from(" ");
        for (column, (cell, width)) in cells.iter().zip(widths).enumerate() {
            let padding = " ".repeat(width - cell.chars().count());
            line.push(' ');
            if column >= FIRST_NUMBER_COLUMN {
                line.push_str(&padding);
                line.push_str(cell);
            } else {
                line.push_str(cell);
                line.push_str(&padding);
            }
            line.push(' ');
        }
        line.trim_end().to_string()
    };
    let _ = writeln!(out, "{}", line(&HEADINGS));
    for row in rows {
        let _ = writeln!(out, "{}", line(&row.cells.each_ref().map(String::as_str)));
        if let Some(note) = &row.note {
            let _ = writeln!(out, "      {note}");
        }
    }
}

/// The readable form of `/status`: a header, a table per pipeline, the notable gauges.
fn render_status(report: &StatusReport) -> String {
    let mut out = String::new();
    let config = &report.config;
    let _ = writeln!(
        out,
        "sluice {}, up {}, {}",
        report.version,
        humanise_seconds(report.uptime_seconds),
        if report.ready { "ready" } else { "NOT READY" }
    );
    let short_sha: String = config.sha256.chars().take(12).collect();
    let _ = writeln!(
        out,
        "config {} (sha256 {short_sha}), loaded {}",
        config.path, config.loaded_at
    );
    if let Some(error) = &config.last_reload_error {
        let when = config
            .last_reload_error_time
            .as_deref()
            .map(|t| format!(" at {t}"))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "last reload refused{when}; still running the config above:"
        );
        for line in error.lines() {
            let _ = writeln!(out, "  {line}");
        }
    }
    for (name, pipeline) in &config.pipelines {
        let _ = writeln!(out, "\npipeline {name} ({})", pipeline.signal);
        write_table(&mut out, &pipeline_rows(pipeline, report));
    }
    let notable = notable_gauges(&report.gauges);
    if !notable.is_empty() {
        out.push_str("\nstate\n");
        let width = notable
            .iter()
            .map(|(what, _)| what.len())
            .max()
            .unwrap_or(0);
        for (what, value) in notable {
            let _ = writeln!(out, "  {what:<width$}  {value}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `/status` answer as the admin API writes it: two pipelines sharing a processor, one
    /// exporter connected, one failing with a long error, one disabled, a refused reload.
    const STATUS: &str = r#"{
  "version": "0.1.0",
  "started_at": "2025-06-01T10:00:00Z",
  "uptime_seconds": 7384,
  "ready": true,
  "config": {
    "path": "/etc/sluice/sluice.toml",
    "sha256": "3f2a9c1b7d4e5f60718293a4b5c6d7e8f90123456789abcdef0123456789abcd",
    "loaded_at": "2025-06-01T10:00:00Z",
    "last_reload_error": "the new configuration is invalid; nothing changed:\n/etc/sluice/sluice.toml:7: exporters.tempo.endpoint: missing",
    "last_reload_error_time": "2025-06-01T11:00:00Z",
    "pipelines": {
      "logs": {"signal": "logs", "receivers": ["otlp"], "processors": [], "exporters": ["archive"]},
      "traces": {"signal": "traces", "receivers": ["otlp", "gateway"], "processors": ["batch", "tail"], "exporters": ["tempo", "backup"]}
    }
  },
  "receivers": {
    "gateway": {"accepted": 12},
    "otlp": {"accepted": 1200, "refused": 3}
  },
  "processors": {"tail": {"dropped": 40}},
  "exporters": {
    "archive": {"type": "otlp_http", "enabled": false, "state": "Disconnected", "last_error": null, "last_error_time": null, "consecutive_failures": 0, "last_success_time": null, "queue": {"size": 0, "capacity": 1000}, "sent": 0, "failed": 0, "dropped": 5},
    "backup": {"type": "otlp_grpc", "enabled": true, "state": "Error", "last_error": "export to http://10.0.0.9:4317 failed: connection refused (nothing listens on that port); the batch will be retried after a back-off of several seconds", "last_error_time": "2025-06-01T12:03:04.567Z", "consecutive_failures": 7, "last_success_time": null, "queue": {"size": 512, "capacity": 1000}, "sent": 0, "failed": 300, "dropped": 2},
    "tempo": {"type": "otlp_grpc", "enabled": true, "state": "Connected", "last_error": "an old failure", "last_error_time": "2025-06-01T10:01:00Z", "consecutive_failures": 0, "last_success_time": "2025-06-01T12:00:00Z", "queue": {"size": 3, "capacity": 1000}, "sent": 1160, "failed": 0, "dropped": 0}
  },
  "gauges": {
    "sluice_exporter_queue_size{exporter=\"tempo\"}": 3.0,
    "sluice_gateway_requests_in_flight{}": 2.0,
    "sluice_processor_tail_sampling_buffered_spans{processor=\"tail\"}": 340.0,
    "sluice_processor_tail_sampling_buffered_traces{processor=\"tail\"}": 12.0,
    "sluice_prometheus_series{exporter=\"prom\",metric=\"a\"}": 2000.0,
    "sluice_prometheus_series{exporter=\"prom\",metric=\"b\"}": 1.0
  }
}"#;

    fn rendered() -> String {
        render_status(&serde_json::from_str(STATUS).unwrap())
    }

    #[test]
    fn the_status_table_shows_every_pipeline_with_its_components_counters() {
        let expected = "\
sluice 0.1.0, up 2h 3m, ready
config /etc/sluice/sluice.toml (sha256 3f2a9c1b7d4e), loaded 2025-06-01T10:00:00Z
last reload refused at 2025-06-01T11:00:00Z; still running the config above:
  the new configuration is invalid; nothing changed:
  /etc/sluice/sluice.toml:7: exporters.tempo.endpoint: missing

pipeline logs (logs)
  COMPONENT         STATE                    QUEUE        ACCEPTED  REFUSED  SENT  FAILED  DROPPED
  receiver/otlp     -                        -                1200        3     -       -        -
  exporter/archive  Disconnected (disabled)  0/1000 (0%)         -        -     0       0        5

pipeline traces (traces)
  COMPONENT         STATE      QUEUE           ACCEPTED  REFUSED  SENT  FAILED  DROPPED
  receiver/otlp     -          -                   1200        3     -       -        -
  receiver/gateway  -          -                     12        0     -       -        -
  processor/batch   -          -                      -        -     -       -        0
  processor/tail    -          -                      -        -     -       -       40
  exporter/tempo    Connected  3/1000 (0%)            -        -  1160       0        0
  exporter/backup   Error      512/1000 (51%)         -        -     0     300        2
      last error at 2025-06-01T12:03:04.567Z (7 failure(s) in a row): export to http://10.0.0.9:4317 failed: connection refused (nothing listens on that port); the batch will be retried aft…

state
  processor/tail  12 traces, 340 spans buffered (tail sampling)
  gateway         2 requests in flight
  exporter/prom   2001 series (prometheus)
";
        assert_eq!(rendered(), expected, "\n{}", rendered());
    }

    #[test]
    fn a_last_error_shows_only_while_the_exporter_is_in_error() {
        let text = rendered();
        assert!(!text.contains("an old failure"), "{text}");
        assert_eq!(text.matches("last error").count(), 1);
    }

    #[test]
    fn a_server_that_reports_less_still_renders() {
        let report: StatusReport =
            serde_json::from_str(r#"{"version": "0.0.9", "config": {"pipelines": {"p": {"signal": "metrics", "exporters": ["gone"]}}}}"#)
                .unwrap();
        let text = render_status(&report);
        assert!(
            text.starts_with("sluice 0.0.9, up 0s, NOT READY\n"),
            "{text}"
        );
        assert!(text.contains("exporter/gone  unknown"), "{text}");
        assert!(!text.contains("last reload"), "{text}");
        assert!(!text.contains("\nstate\n"), "{text}");
    }

    #[test]
    fn uptime_reads_in_its_two_largest_units() {
        assert_eq!(humanise_seconds(0), "0s");
        assert_eq!(humanise_seconds(42), "42s");
        assert_eq!(humanise_seconds(90), "1m 30s");
        assert_eq!(humanise_seconds(3600), "1h 0m");
        assert_eq!(humanise_seconds(3 * 86_400 + 4 * 3600 + 59), "3d 4h");
    }

    #[test]
    fn queue_fill_is_a_percentage_of_the_capacity() {
        let fill = |size, capacity| queue_fill(&QueueReport { size, capacity });
        assert_eq!(fill(0, 1000), "0/1000 (0%)");
        assert_eq!(fill(999, 1000), "999/1000 (99%)");
        assert_eq!(fill(1000, 1000), "1000/1000 (100%)");
        assert_eq!(fill(5, 0), "5/0", "no division by a zero capacity");
    }

    #[test]
    fn truncation_keeps_one_line_and_cuts_on_a_character() {
        assert_eq!(truncate("short\nerror", 20), "short error");
        assert_eq!(truncate("ééééé", 3), "éé…");
    }

    #[test]
    fn gauge_keys_split_into_name_and_labels() {
        let (name, labels) = parse_gauge_key("m{exporter=\"a,b\",metric=\"x\"}");
        assert_eq!(name, "m");
        assert_eq!(labels["exporter"], "a,b");
        assert_eq!(labels["metric"], "x");
        assert_eq!(parse_gauge_key("g{}"), ("g", BTreeMap::new()));
    }

    #[test]
    fn admin_addresses_are_host_and_port() {
        assert_eq!(parse_admin("127.0.0.1:13133").unwrap(), "127.0.0.1:13133");
        assert_eq!(parse_admin("http://localhost:9/").unwrap(), "localhost:9");
        assert_eq!(parse_admin("[::1]:13133").unwrap(), "[::1]:13133");
        assert!(parse_admin("localhost").is_err());
        assert!(
            parse_admin("https://h:1")
                .unwrap_err()
                .contains("plain HTTP")
        );
    }

    #[test]
    fn tap_parameters_are_encoded_for_the_query() {
        let args = TapArgs {
            component: "processor/batch".to_string(),
            limit: Some(2),
            format: TapFormat::Text,
            condition: Some("gen_ai.request.model=gpt 4o+&x".to_string()),
            rate: Some(5),
            admin: AdminArgs {
                admin: None,
                config: None,
                token: None,
            },
        };
        assert_eq!(
            tap_path(&args),
            "/tap?component=processor%2Fbatch&format=text&limit=2\
             &where=gen_ai.request.model%3Dgpt%204o%2B%26x&rate=5"
        );
    }

    #[test]
    fn skipped_notes_are_not_items() {
        assert!(!is_item(b"{\"skipped\":3}"));
        assert!(!is_item(
            b"# skipped 3 items (viewer behind or over the rate)"
        ));
        assert!(is_item(b"{\"component\":\"processor/batch\"}"));
    }
}
