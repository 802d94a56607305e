use std::sync::atomic::AtomicUsize;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use sluice_pipeline::Request;
use sluice_pipeline::config::ComponentKind;

use super::sampler::Memory;
use super::*;

fn settings(toml: &str) -> ComponentSettings {
    ComponentSettings::new(
        ComponentKind::Processor,
        "memory_limiter",
        "memory_limiter",
        toml::from_str(toml).expect("test TOML is valid"),
    )
}

#[test]
fn defaults_are_the_documented_ones() {
    let config = MemoryLimiterConfig::from_settings(&settings("limit_mib = 1000")).unwrap();
    assert_eq!(config.check_interval, Duration::from_secs(1));
    assert_eq!(config.spike_limit_mib, None);
    assert_eq!(
        config.limits(),
        Limits {
            soft: 800 * MIB,
            hard: 1000 * MIB
        },
        "the spike allowance is 20% of the limit"
    );
}

#[test]
fn readme_example_parses() {
    let readme = include_str!("../../README.md");
    let section = readme
        .split("\n## `memory_limiter`")
        .nth(1)
        .expect("the README has a memory_limiter section");
    let example = section
        .split("```toml\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("the memory_limiter section has a TOML example");
    let file: toml::Table = toml::from_str(example).unwrap();
    let table = file["processors"]["memory_limiter"]
        .as_table()
        .unwrap()
        .clone();
    let config = MemoryLimiterConfig::from_settings(&ComponentSettings {
        table,
        ..settings("limit_mib = 1")
    })
    .unwrap();
    assert_eq!(
        config.limits(),
        Limits {
            soft: 1536 * MIB,
            hard: 2048 * MIB
        }
    );
}

#[test]
fn config_errors_name_the_key() {
    for (toml, key) in [
        ("", "processors.memory_limiter"),
        ("limit_mib = 0", "processors.memory_limiter.limit_mib"),
        (
            "limit_mib = 100\nspike_limit_mib = 100",
            "processors.memory_limiter.spike_limit_mib",
        ),
        (
            "limit_mib = 100\ncheck_interval = \"0s\"",
            "processors.memory_limiter.check_interval",
        ),
        (
            "limit_mib = 100\nlimit_percentage = 80",
            "processors.memory_limiter.limit_percentage",
        ),
    ] {
        let error = MemoryLimiterConfig::from_settings(&settings(toml)).unwrap_err();
        assert_eq!(error.path.to_string(), key, "{toml}: {}", error.message);
    }
}

/// Memory whose size the test sets, counting reads and releases.
#[derive(Default)]
struct FakeMemory {
    rss: AtomicU64,
    reads: AtomicUsize,
    releases: AtomicUsize,
    /// What a release brings the memory down to, if anything.
    after_release: AtomicU64,
}

#[derive(Clone, Default)]
struct SharedMemory(Arc<FakeMemory>);

impl Memory for SharedMemory {
    fn resident_bytes(&self) -> std::io::Result<u64> {
        self.0.reads.fetch_add(1, Ordering::SeqCst);
        Ok(self.0.rss.load(Ordering::SeqCst))
    }

    fn release(&self) {
        self.0.releases.fetch_add(1, Ordering::SeqCst);
        let after = self.0.after_release.load(Ordering::SeqCst);
        if after > 0 {
            self.0.rss.store(after, Ordering::SeqCst);
        }
    }
}

impl SharedMemory {
    fn set_mib(&self, mib: u64) {
        self.0.rss.store(mib * MIB, Ordering::SeqCst);
    }
}

/// The next component: counts what it takes.
#[derive(Default)]
struct Count(AtomicUsize);

#[async_trait]
impl Consumer for Count {
    async fn consume(&self, batch: Batch) -> Result<(), ConsumeError> {
        self.0.fetch_add(batch.item_count(), Ordering::SeqCst);
        Ok(())
    }
}

fn spans(count: usize) -> Batch {
    Batch::from_request(Request::Traces(ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            scope_spans: vec![ScopeSpans {
                spans: vec![Span::default(); count],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }))
}

const INTERVAL: Duration = Duration::from_millis(100);

/// limit 100 MiB, spike 20: soft 80 MiB.
fn config() -> MemoryLimiterConfig {
    MemoryLimiterConfig {
        check_interval: INTERVAL,
        limit_mib: 100,
        spike_limit_mib: Some(20),
    }
}

async fn start(
    sampler: &Arc<Sampler>,
    config: MemoryLimiterConfig,
    id: &str,
    telemetry: &Telemetry,
    next: Arc<Count>,
) -> Arc<dyn RunningProcessor> {
    Box::new(MemoryLimiterProcessor::with_sampler(
        config,
        Arc::clone(sampler),
    ))
    .start(ProcessorContext {
        id: id.to_string(),
        pipeline: "traces".to_string(),
        signal: Signal::Traces,
        next,
        telemetry: telemetry.clone(),
    })
    .await
    .unwrap()
}

/// Lets the sampler take its next reading (time is paused: this advances it exactly).
async fn next_check() {
    tokio::time::sleep(INTERVAL + Duration::from_millis(1)).await;
}

fn gauge(telemetry: &Telemetry, series: &str) -> f64 {
    let text = telemetry.render();
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series} in\n{text}"))
}

#[tokio::test(start_paused = true)]
async fn refuses_retryably_above_the_soft_limit_and_accepts_again_below_it() {
    let memory = SharedMemory::default();
    memory.set_mib(50);
    let sampler = Sampler::start(memory.clone());
    let telemetry = Telemetry::new();
    let next = Arc::new(Count::default());
    let limiter = start(
        &sampler,
        config(),
        "memory_limiter",
        &telemetry,
        next.clone(),
    )
    .await;
    let state = "sluice_memory_limiter_state{processor=\"memory_limiter\"}";

    limiter.consume(spans(3)).await.unwrap();
    assert_eq!(next.0.load(Ordering::SeqCst), 3);
    assert_eq!(gauge(&telemetry, state), 0.0);
    assert_eq!(
        gauge(&telemetry, "sluice_memory_limiter_rss_bytes"),
        (50 * MIB) as f64
    );

    // Exactly at the soft limit still passes; one byte above does not.
    memory.0.rss.store(80 * MIB, Ordering::SeqCst);
    next_check().await;
    limiter.consume(spans(1)).await.unwrap();
    memory.0.rss.store(80 * MIB + 1, Ordering::SeqCst);
    next_check().await;
    let refused = limiter.consume(spans(5)).await.unwrap_err();
    assert!(
        matches!(refused, ConsumeError::Backpressure(_)),
        "{refused}"
    );
    assert!(refused.is_retryable());
    assert!(
        refused
            .to_string()
            .contains("above the soft limit of 80 MiB"),
        "{refused}"
    );
    assert_eq!(
        next.0.load(Ordering::SeqCst),
        4,
        "the refused batch did not pass"
    );
    assert_eq!(gauge(&telemetry, state), 1.0);
    assert_eq!(
        gauge(
            &telemetry,
            "sluice_memory_limiter_refused_items_total{processor=\"memory_limiter\",signal=\"traces\"}"
        ),
        5.0
    );
    assert_eq!(
        memory.0.releases.load(Ordering::SeqCst),
        0,
        "not above the hard limit"
    );

    memory.set_mib(79);
    next_check().await;
    limiter.consume(spans(2)).await.unwrap();
    assert_eq!(next.0.load(Ordering::SeqCst), 6);
    assert_eq!(gauge(&telemetry, state), 0.0);
    limiter.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn above_the_hard_limit_memory_is_released_and_data_refused() {
    let memory = SharedMemory::default();
    memory.set_mib(10);
    let sampler = Sampler::start(memory.clone());
    let telemetry = Telemetry::new();
    let next = Arc::new(Count::default());
    let limiter = start(&sampler, config(), "m", &telemetry, next.clone()).await;

    // Releasing brings the process back between the limits: still refusing, at Soft.
    memory.0.after_release.store(90 * MIB, Ordering::SeqCst);
    memory.set_mib(120);
    next_check().await;
    assert_eq!(memory.0.releases.load(Ordering::SeqCst), 1);
    assert!(limiter.consume(spans(1)).await.is_err());
    assert_eq!(
        gauge(&telemetry, "sluice_memory_limiter_state{processor=\"m\"}"),
        1.0
    );

    // Releasing does not help: Hard, and a release on every check while it lasts.
    memory.0.after_release.store(0, Ordering::SeqCst);
    memory.set_mib(120);
    next_check().await;
    next_check().await;
    assert_eq!(memory.0.releases.load(Ordering::SeqCst), 3);
    assert_eq!(
        gauge(&telemetry, "sluice_memory_limiter_state{processor=\"m\"}"),
        2.0
    );
    assert!(limiter.consume(spans(1)).await.is_err());
    assert_eq!(next.0.load(Ordering::SeqCst), 0);
    limiter.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_process_already_over_the_limit_refuses_its_first_batch() {
    let memory = SharedMemory::default();
    memory.set_mib(95);
    let sampler = Sampler::start(memory.clone());
    let next = Arc::new(Count::default());
    let limiter = start(&sampler, config(), "m", &Telemetry::new(), next.clone()).await;
    assert!(matches!(
        limiter.consume(spans(1)).await,
        Err(ConsumeError::Backpressure(_))
    ));
    limiter.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn limiters_share_one_reading_per_check_at_the_shortest_interval() {
    let memory = SharedMemory::default();
    memory.set_mib(10);
    let sampler = Sampler::start(memory.clone());
    let telemetry = Telemetry::new();
    let slow = MemoryLimiterConfig {
        check_interval: Duration::from_secs(10),
        ..config()
    };
    // Three pipelines with limiters of their own limits and intervals.
    let a = start(&sampler, slow.clone(), "a", &telemetry, Arc::default()).await;
    let b = start(&sampler, config(), "b", &telemetry, Arc::default()).await;
    let tight = MemoryLimiterConfig {
        limit_mib: 40,
        spike_limit_mib: None,
        ..slow
    };
    let c = start(&sampler, tight, "c", &telemetry, Arc::default()).await;
    let reads_after_start = memory.0.reads.load(Ordering::SeqCst);
    assert_eq!(reads_after_start, 3, "one reading per registration");

    memory.set_mib(35);
    // Ten checks at b's 100ms, not a's or c's 10s: one read each, shared by all three.
    tokio::time::sleep(10 * INTERVAL + Duration::from_millis(1)).await;
    assert_eq!(
        memory.0.reads.load(Ordering::SeqCst),
        reads_after_start + 10
    );
    // 35 MiB: under a's and b's soft limits (80), over c's (32) but under its hard limit
    // (above it, each check would also release memory and read again).
    assert!(a.consume(spans(1)).await.is_ok());
    assert!(b.consume(spans(1)).await.is_ok());
    assert!(c.consume(spans(1)).await.is_err());

    // Once every limiter has shut down, the sampler stops reading.
    a.shutdown().await;
    b.shutdown().await;
    c.shutdown().await;
    drop(sampler);
    let reads = memory.0.reads.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(memory.0.reads.load(Ordering::SeqCst), reads);
}

#[tokio::test]
async fn limiters_of_the_process_share_its_sampler() {
    let first = Sampler::process();
    let second = Sampler::process();
    assert!(Arc::ptr_eq(&first, &second));
    assert!(first.last_rss() == 0 || first.last_rss() > MIB);
}

#[tokio::test(start_paused = true)]
async fn refuses_with_shutting_down_after_shutdown() {
    let memory = SharedMemory::default();
    let sampler = Sampler::start(memory);
    let limiter = start(&sampler, config(), "m", &Telemetry::new(), Arc::default()).await;
    limiter.shutdown().await;
    assert_eq!(
        limiter.consume(spans(1)).await,
        Err(ConsumeError::ShuttingDown)
    );
}
