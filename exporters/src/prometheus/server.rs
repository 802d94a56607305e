//! The scrape endpoint: `GET /metrics` over HTTP/1.1, rendered from a snapshot of the store.
//!
//! A rendered body is cached with the store's generation and reused by every scrape until the
//! store changes or a series is due to expire, so concurrent scrapers (an HA pair of
//! Prometheus servers, an agent next to them) cost one render. Rendering and gzip run on the
//! blocking pool, off the async workers.

use std::convert::Infallible;
use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use flate2::Compression;
use flate2::write::GzEncoder;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

use super::exposition::{self, Format};
use super::store::Store;

/// A rendered scrape body, valid while the store's generation is unchanged and no series has
/// expired.
struct Cached {
    generation: u64,
    valid_until: Option<Instant>,
    format: Format,
    body: Bytes,
    gzipped: Option<Bytes>,
}

/// What the scrape handler shares.
pub(crate) struct Scraper {
    store: Arc<Store>,
    open_metrics: bool,
    /// Held while rendering, so that scrapes arriving together wait for one render.
    cache: Mutex<Vec<Cached>>,
}

impl Scraper {
    pub(crate) fn new(store: Arc<Store>, open_metrics: bool) -> Scraper {
        Scraper {
            store,
            open_metrics,
            cache: Mutex::new(Vec::new()),
        }
    }

    /// The body for `format`, gzipped when asked: from the cache when still valid.
    pub(crate) fn body(&self, format: Format, gzip: bool, now: Instant) -> Bytes {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        let generation = self.store.generation();
        cache.retain(|c| {
            c.generation == generation && c.valid_until.is_none_or(|until| now < until)
        });
        let index = match cache.iter().position(|c| c.format == format) {
            Some(index) => index,
            None => {
                let snapshot = self.store.snapshot(now);
                let body = Bytes::from(exposition::render(&snapshot, format));
                // Marked with the generation read before the snapshot: an export racing with it
                // makes the next scrape render again rather than serve a stale body.
                cache.push(Cached {
                    generation,
                    valid_until: snapshot.next_expiry,
                    format,
                    body,
                    gzipped: None,
                });
                cache.len() - 1
            }
        };
        let cached = &mut cache[index];
        if !gzip {
            return cached.body.clone();
        }
        if cached.gzipped.is_none() {
            cached.gzipped = Some(gzip_bytes(&cached.body));
        }
        cached.gzipped.clone().unwrap_or_default()
    }

    /// The format to answer a scrape with `Accept: accept`.
    pub(crate) fn negotiate(&self, accept: Option<&str>) -> Format {
        if self.open_metrics && accept.is_some_and(prefers_open_metrics) {
            Format::OpenMetrics
        } else {
            Format::Text
        }
    }
}

fn gzip_bytes(body: &[u8]) -> Bytes {
    let mut encoder = GzEncoder::new(Vec::with_capacity(body.len() / 8), Compression::fast());
    // Writing into a Vec cannot fail.
    let _ = encoder.write_all(body);
    Bytes::from(encoder.finish().unwrap_or_default())
}

/// The media types of an `Accept` header with their quality, in order.
fn media_ranges(accept: &str) -> impl Iterator<Item = (&str, Option<&str>, f32)> {
    accept.split(',').map(|range| {
        let mut parts = range.split(';').map(str::trim);
        let media = parts.next().unwrap_or("");
        let mut version = None;
        let mut quality = 1.0;
        for parameter in parts {
            match parameter.split_once('=') {
                Some(("q", q)) => quality = q.trim().parse().unwrap_or(0.0),
                Some(("version", v)) => version = Some(v.trim()),
                _ => {}
            }
        }
        (media, version, quality)
    })
}

/// Whether OpenMetrics 1.0 (or the 0.0.1 draft Prometheus also asks for) is preferred over
/// the text format.
fn prefers_open_metrics(accept: &str) -> bool {
    let mut open_metrics = 0.0f32;
    let mut text = 0.0f32;
    for (media, version, quality) in media_ranges(accept) {
        match media {
            "application/openmetrics-text" if matches!(version, None | Some("1.0.0" | "0.0.1")) => {
                open_metrics = open_metrics.max(quality)
            }
            "text/plain" | "*/*" | "text/*" => text = text.max(quality),
            _ => {}
        }
    }
    open_metrics > 0.0 && open_metrics >= text
}

/// Whether `Accept-Encoding` allows gzip.
fn accepts_gzip(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|coding| {
            let mut parts = coding.split(';').map(str::trim);
            let name = parts.next().unwrap_or("");
            let quality = parts
                .find_map(|p| p.strip_prefix("q="))
                .map_or(1.0, |q| q.parse::<f32>().unwrap_or(0.0));
            (name.eq_ignore_ascii_case("gzip") || name == "*") && quality > 0.0
        })
}

type Body = Full<Bytes>;

fn plain(status: StatusCode, text: &'static str) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

async fn handle(scraper: Arc<Scraper>, request: Request<Incoming>) -> Response<Body> {
    if request.uri().path() != "/metrics" {
        return plain(
            StatusCode::NOT_FOUND,
            "not found: metrics are at /metrics\n",
        );
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        let mut response = plain(StatusCode::METHOD_NOT_ALLOWED, "use GET\n");
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    let accept = request
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok());
    let format = scraper.negotiate(accept);
    let gzip = accepts_gzip(request.headers());
    let renderer = scraper.clone();
    let body = match tokio::task::spawn_blocking(move || {
        renderer.body(format, gzip, Instant::now())
    })
    .await
    {
        Ok(body) => body,
        Err(error) => {
            tracing::error!("rendering the scrape failed: {error}");
            return plain(StatusCode::INTERNAL_SERVER_ERROR, "rendering failed\n");
        }
    };
    let head = request.method() == Method::HEAD;
    let mut response = Response::new(Full::new(if head { Bytes::new() } else { body }));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(format.content_type()),
    );
    if gzip {
        headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
    headers.insert(
        header::VARY,
        HeaderValue::from_static("Accept, Accept-Encoding"),
    );
    response
}

/// The running scrape endpoint and its expiry task.
pub(crate) struct Server {
    local_addr: SocketAddr,
    accept: JoinHandle<()>,
    sweeper: JoinHandle<()>,
}

impl Server {
    /// Serves `scraper` on `listener`, and removes expired series every `sweep_every` so that
    /// memory is freed when nobody scrapes.
    pub(crate) fn start(
        listener: TcpListener,
        scraper: Arc<Scraper>,
        sweep_every: Duration,
    ) -> std::io::Result<Server> {
        let local_addr = listener.local_addr()?;
        let store = scraper.store.clone();
        let sweeper = tokio::spawn(async move {
            let mut ticker = tokio::time::interval(sweep_every);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                let store = store.clone();
                // Sweeping locks the shards one by one; keep it off the async workers.
                let _ = tokio::task::spawn_blocking(move || store.sweep(Instant::now())).await;
            }
        });
        let accept = tokio::spawn(accept_loop(listener, scraper));
        Ok(Server {
            local_addr,
            accept,
            sweeper,
        })
    }

    /// The address the endpoint listens on.
    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops listening and closes every connection (a scrape in progress is cut: the scraper
    /// sees a failed scrape, as it would from a stopped process).
    pub(crate) async fn shutdown(self) {
        self.accept.abort();
        self.sweeper.abort();
        let _ = self.accept.await;
        let _ = self.sweeper.await;
    }
}

/// Accepts connections until aborted; dropping it aborts every connection task with it.
async fn accept_loop(listener: TcpListener, scraper: Arc<Scraper>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _) = match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        // Out of file descriptors and the like: wait a little, don't spin.
                        tracing::warn!("prometheus exporter: accepting a connection: {error}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let scraper = scraper.clone();
                connections.spawn(async move {
                    let service = service_fn(move |request| {
                        let scraper = scraper.clone();
                        async move { Ok::<_, Infallible>(handle(scraper, request).await) }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_accept_headers_choose_open_metrics() {
        // Prometheus 2.x and 3.x.
        assert!(prefers_open_metrics(
            "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
        ));
        assert!(prefers_open_metrics(
            "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.5,application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=1.0.0;escaping=allow-utf-8;q=0.3,text/plain;version=0.0.4;q=0.2,*/*;q=0.1"
        ));
        assert!(!prefers_open_metrics("text/plain;version=0.0.4"));
        assert!(!prefers_open_metrics("*/*"));
        assert!(!prefers_open_metrics(
            "text/plain;version=0.0.4,application/openmetrics-text;q=0.5"
        ));
        assert!(!prefers_open_metrics(
            "application/openmetrics-text;version=2.0.0"
        ));
    }

    #[test]
    fn gzip_is_used_only_when_accepted() {
        let headers = |value: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(header::ACCEPT_ENCODING, HeaderValue::from_static(value));
            h
        };
        assert!(accepts_gzip(&headers("gzip")));
        assert!(accepts_gzip(&headers("deflate, gzip;q=0.5")));
        assert!(!accepts_gzip(&headers("gzip;q=0")));
        assert!(!accepts_gzip(&headers("identity")));
        assert!(!accepts_gzip(&HeaderMap::new()));
    }
}
