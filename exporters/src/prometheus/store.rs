//! The exporter's in-memory state: the latest cumulative value of every series, which exports
//! update and scrapes read.
//!
//! Families are spread over [`SHARDS`] mutexes by name. An export locks one shard per metric for
//! as long as it takes to apply that metric's points; a scrape copies one shard at a time (the
//! label text is reference-counted, so a copy is cheap) and renders outside every lock. Neither
//! waits on the other for longer than one shard's copy.
//!
//! Deltas are added up into cumulative series. A series built from several inputs (the
//! overflow series, or a metric whose attributes are cut down by an allowlist) remembers each
//! input's last cumulative value by a hash of its labels, so that it adds what changed instead
//! of the whole value again.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec};
use sluice_pipeline::Telemetry;

/// How many mutexes the families are spread over.
const SHARDS: usize = 16;

/// The Prometheus type of a family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Counter,
    Gauge,
    Histogram,
    Summary,
    /// `target_info`: a gauge in the text format, `info` in OpenMetrics.
    Info,
}

/// How a data point's value relates to the previous ones of its series.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Temporality {
    /// The latest value replaces the previous one.
    Gauge,
    /// The total since `start`; a new `start` (or, when monotonic, a smaller value) is a reset.
    Cumulative { monotonic: bool },
    /// The change since the previous point: added to the series.
    Delta,
}

/// What identifies a metric family and is shown about it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct FamilyDesc {
    /// The exposed name, without a counter's `_total`.
    pub name: String,
    pub kind: Kind,
    pub help: String,
    /// The unit suffix the name ends with (OpenMetrics `# UNIT`), empty when none.
    pub unit: String,
    /// The OTLP metric name, for messages.
    pub otlp_name: String,
    /// Whether several inputs may add up into one series (an attribute allowlist applies).
    pub aggregate: bool,
    /// Whether counter samples are `<name>_total` in the text format.
    pub total_suffix: bool,
}

/// One data point, ready to apply to its series.
#[derive(Debug, Clone)]
pub(crate) struct SeriesUpdate {
    /// The series' labels as exposition text: `a="1",b="2"`.
    pub labels: String,
    /// A hash of every label of the input series (before an allowlist cut any).
    pub source: u64,
    pub value: Value,
    pub start: u64,
    pub time: u64,
    pub temporality: Temporality,
}

/// The value of a series.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    Number(f64),
    Histogram(Histogram),
    Exponential(ExpHistogram),
    Summary(Summary),
}

/// An explicit-bucket histogram: `counts[i]` counts values in `(bounds[i-1], bounds[i]]`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Histogram {
    pub bounds: Arc<[f64]>,
    pub counts: Vec<u64>,
    pub count: u64,
    pub sum: Option<f64>,
}

/// A base-2 exponential histogram, as OTLP has it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ExpHistogram {
    pub scale: i32,
    pub zero_threshold: f64,
    pub zero_count: u64,
    pub positive: Buckets,
    pub negative: Buckets,
    pub count: u64,
    pub sum: Option<f64>,
}

/// Consecutive exponential buckets from index `offset`.
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct Buckets {
    pub offset: i32,
    pub counts: Vec<u64>,
}

/// A summary: count, sum and quantiles as `(quantile, value)`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Summary {
    pub count: u64,
    pub sum: f64,
    pub quantiles: Vec<(f64, f64)>,
}

impl Value {
    /// Adds `other` (a change) to this value. `false` when they cannot be added (different
    /// kinds or bucket layouts): the caller starts over from `other`.
    fn add(&mut self, other: &Value) -> bool {
        match (self, other) {
            (Value::Number(a), Value::Number(b)) => *a += b,
            (Value::Histogram(a), Value::Histogram(b)) => {
                if a.bounds != b.bounds {
                    return false;
                }
                for (x, y) in a.counts.iter_mut().zip(&b.counts) {
                    *x += y;
                }
                a.count += b.count;
                a.sum = add_sums(a.sum, b.sum);
            }
            (Value::Exponential(a), Value::Exponential(b)) => {
                let mut b = b.clone();
                let scale = a.scale.min(b.scale);
                a.downscale(scale);
                b.downscale(scale);
                a.positive.add(&b.positive);
                a.negative.add(&b.negative);
                a.zero_threshold = a.zero_threshold.max(b.zero_threshold);
                a.zero_count += b.zero_count;
                a.count += b.count;
                a.sum = add_sums(a.sum, b.sum);
            }
            (Value::Summary(a), Value::Summary(b)) => {
                // Quantiles of several inputs cannot be combined: the sum of summaries has none.
                a.count += b.count;
                a.sum += b.sum;
                a.quantiles.clear();
            }
            _ => return false,
        }
        true
    }

    /// The change from `previous` to this value; `None` when it went down (a reset) or the
    /// layouts differ, in which case the whole value is the change.
    fn since(&self, previous: &Value, monotonic: bool) -> Option<Value> {
        match (self, previous) {
            (Value::Number(a), Value::Number(b)) => {
                (!monotonic || a >= b).then_some(Value::Number(a - b))
            }
            (Value::Histogram(a), Value::Histogram(b)) => {
                if a.bounds != b.bounds || a.count < b.count {
                    return None;
                }
                let counts = a
                    .counts
                    .iter()
                    .zip(&b.counts)
                    .map(|(x, y)| x.checked_sub(*y))
                    .collect::<Option<Vec<u64>>>()?;
                Some(Value::Histogram(Histogram {
                    bounds: a.bounds.clone(),
                    counts,
                    count: a.count - b.count,
                    sum: a.sum.zip(b.sum).map(|(x, y)| x - y),
                }))
            }
            (Value::Exponential(a), Value::Exponential(b)) => {
                if a.scale != b.scale || a.count < b.count || a.zero_count < b.zero_count {
                    return None;
                }
                Some(Value::Exponential(ExpHistogram {
                    scale: a.scale,
                    zero_threshold: a.zero_threshold,
                    zero_count: a.zero_count - b.zero_count,
                    positive: a.positive.since(&b.positive)?,
                    negative: a.negative.since(&b.negative)?,
                    count: a.count - b.count,
                    sum: a.sum.zip(b.sum).map(|(x, y)| x - y),
                }))
            }
            (Value::Summary(a), Value::Summary(b)) => {
                if a.count < b.count {
                    return None;
                }
                Some(Value::Summary(Summary {
                    count: a.count - b.count,
                    sum: a.sum - b.sum,
                    quantiles: Vec::new(),
                }))
            }
            _ => None,
        }
    }
}

fn add_sums(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a + b),
        _ => None,
    }
}

impl ExpHistogram {
    /// Merges buckets until the scale is `scale` (each step down merges pairs).
    fn downscale(&mut self, scale: i32) {
        if scale >= self.scale {
            return;
        }
        let by = (self.scale - scale) as u32;
        self.positive.downscale(by);
        self.negative.downscale(by);
        self.scale = scale;
    }

    /// The upper bound of bucket `index`: base^(index + 1), base = 2^(2^-scale).
    pub(crate) fn upper_bound(&self, index: i32) -> f64 {
        let exponent = f64::from(index + 1);
        if self.scale <= 0 {
            (exponent * f64::from(1u32 << (-self.scale).min(31) as u32)).exp2()
        } else {
            (exponent / f64::from(1u32 << self.scale.min(31) as u32)).exp2()
        }
    }
}

impl Buckets {
    fn downscale(&mut self, by: u32) {
        if self.counts.is_empty() || by == 0 {
            return;
        }
        let by = by.min(31);
        let first = self.offset >> by;
        let last = (self.offset + self.counts.len() as i32 - 1) >> by;
        let mut counts = vec![0; (last - first + 1) as usize];
        for (i, count) in self.counts.iter().enumerate() {
            let index = (self.offset + i as i32) >> by;
            counts[(index - first) as usize] += count;
        }
        self.offset = first;
        self.counts = counts;
    }

    fn add(&mut self, other: &Buckets) {
        if other.counts.is_empty() {
            return;
        }
        if self.counts.is_empty() {
            *self = other.clone();
            return;
        }
        let first = self.offset.min(other.offset);
        let end =
            (self.offset + self.counts.len() as i32).max(other.offset + other.counts.len() as i32);
        let mut counts = vec![0; (end - first) as usize];
        for b in [&*self, other] {
            for (i, count) in b.counts.iter().enumerate() {
                counts[(b.offset - first) as usize + i] += count;
            }
        }
        self.offset = first;
        self.counts = counts;
    }

    fn since(&self, previous: &Buckets) -> Option<Buckets> {
        let mut counts = self.counts.clone();
        for (i, count) in previous.counts.iter().enumerate() {
            if *count == 0 {
                continue;
            }
            let at = previous.offset + i as i32 - self.offset;
            let slot = usize::try_from(at).ok().and_then(|at| counts.get_mut(at))?;
            *slot = slot.checked_sub(*count)?;
        }
        Some(Buckets {
            offset: self.offset,
            counts,
        })
    }
}

/// The internal metrics of one exporter's store.
#[derive(Clone)]
pub(crate) struct StoreMetrics {
    exporter: String,
    dropped: IntCounterVec,
    series: IntGaugeVec,
}

impl StoreMetrics {
    pub(crate) fn new(telemetry: &Telemetry, exporter: &str) -> StoreMetrics {
        StoreMetrics {
            exporter: exporter.to_string(),
            dropped: telemetry.counter_vec(
                "sluice_prometheus_series_dropped_total",
                "Data points of new series a prometheus exporter folded into the metric's \
                 otel_metric_overflow series because the metric had max_series_per_metric series.",
                &["exporter", "metric"],
            ),
            series: telemetry.gauge_vec(
                "sluice_prometheus_series",
                "Series a prometheus exporter exposes per metric, the overflow series included.",
                &["exporter", "metric"],
            ),
        }
    }
}

/// One series' state.
#[derive(Debug)]
struct Series {
    value: Value,
    start: u64,
    time: u64,
    updated: Instant,
    /// The inputs of a series several inputs add up into, by label hash.
    sources: Option<HashMap<u64, Source>>,
}

/// The last cumulative value of one input of an aggregated series.
#[derive(Debug)]
struct Source {
    value: Value,
    start: u64,
    time: u64,
    updated: Instant,
}

impl Series {
    fn new(update: SeriesUpdate, now: Instant, aggregated: bool) -> Series {
        let mut series = Series {
            value: update.value.clone(),
            start: update.start,
            time: update.time,
            updated: now,
            sources: aggregated.then(HashMap::new),
        };
        if let Some(sources) = &mut series.sources
            && matches!(update.temporality, Temporality::Cumulative { .. })
        {
            sources.insert(
                update.source,
                Source {
                    value: update.value,
                    start: update.start,
                    time: update.time,
                    updated: now,
                },
            );
        }
        series
    }

    /// Applies one point. Returns whether the point was used.
    fn apply(&mut self, update: SeriesUpdate, now: Instant) -> bool {
        if self.sources.is_some() {
            return self.apply_aggregated(update, now);
        }
        match update.temporality {
            Temporality::Gauge | Temporality::Cumulative { .. } => {
                // An older point of the same run arriving late must not move the series back.
                if update.start == self.start && update.time < self.time {
                    return false;
                }
                self.value = update.value;
            }
            Temporality::Delta => {
                // A delta that overlaps what was added already is a duplicate or out of order;
                // a start of 0 (unknown) is taken as following on.
                if update.start != 0 && update.start < self.time {
                    return false;
                }
                if !self.value.add(&update.value) {
                    self.value = update.value;
                    self.start = update.start;
                }
                self.time = update.time;
                self.updated = now;
                return true;
            }
        }
        self.start = update.start;
        self.time = update.time;
        self.updated = now;
        true
    }

    fn apply_aggregated(&mut self, update: SeriesUpdate, now: Instant) -> bool {
        let sources = self.sources.as_mut().expect("checked by the caller");
        let change = match update.temporality {
            Temporality::Gauge => {
                self.value = update.value;
                self.time = self.time.max(update.time);
                self.updated = now;
                return true;
            }
            Temporality::Delta => update.value,
            Temporality::Cumulative { monotonic } => match sources.entry(update.source) {
                Entry::Occupied(mut entry) => {
                    let source = entry.get_mut();
                    if update.start == source.start && update.time < source.time {
                        return false;
                    }
                    let change = if update.start == source.start {
                        update.value.since(&source.value, monotonic)
                    } else {
                        None
                    };
                    let change = change.unwrap_or_else(|| update.value.clone());
                    source.value = update.value;
                    source.start = update.start;
                    source.time = update.time;
                    source.updated = now;
                    change
                }
                Entry::Vacant(entry) => {
                    entry.insert(Source {
                        value: update.value.clone(),
                        start: update.start,
                        time: update.time,
                        updated: now,
                    });
                    update.value
                }
            },
        };
        if !self.value.add(&change) {
            self.value = change;
        }
        self.time = self.time.max(update.time);
        self.updated = now;
        true
    }

    /// Drops inputs not seen since `cutoff`; whether the series itself is still alive.
    fn sweep(&mut self, cutoff: Instant) -> bool {
        if let Some(sources) = &mut self.sources {
            sources.retain(|_, s| s.updated >= cutoff);
        }
        self.updated >= cutoff
    }
}

/// One metric family's series.
struct Family {
    desc: Arc<FamilyDesc>,
    series: HashMap<Arc<str>, Series>,
    overflow: Option<Series>,
    dropped: IntCounter,
    series_gauge: IntGauge,
    /// Whether a type conflict with this family was reported already.
    conflict_reported: bool,
}

impl Family {
    fn exposed_series(&self) -> usize {
        self.series.len() + usize::from(self.overflow.is_some())
    }
}

#[derive(Default)]
struct Shard {
    families: HashMap<String, Family>,
}

/// Every series of one exporter.
pub(crate) struct Store {
    shards: Box<[Mutex<Shard>]>,
    max_series: usize,
    expiration: Duration,
    /// The labels of every overflow series: the constant labels and `otel_metric_overflow`.
    overflow_labels: Arc<str>,
    metrics: StoreMetrics,
    /// Changes whenever what a scrape shows may have changed, for the scrape cache.
    generation: AtomicU64,
}

/// A copy of the families for rendering, sorted by name, series sorted by labels.
#[derive(Debug, Default)]
pub(crate) struct Snapshot {
    pub families: Vec<FamilySnapshot>,
    /// When the next series expires, if any: until then an unchanged store renders the same.
    pub next_expiry: Option<Instant>,
}

#[derive(Debug)]
pub(crate) struct FamilySnapshot {
    pub desc: Arc<FamilyDesc>,
    pub series: Vec<(Arc<str>, Value)>,
}

impl Store {
    /// An empty store; `const_labels` is the rendered constant label text (may be empty).
    pub(crate) fn new(
        max_series: usize,
        expiration: Duration,
        const_labels: &str,
        metrics: StoreMetrics,
    ) -> Store {
        let overflow_labels = if const_labels.is_empty() {
            "otel_metric_overflow=\"true\"".to_string()
        } else {
            format!("{const_labels},otel_metric_overflow=\"true\"")
        };
        Store {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            max_series,
            expiration,
            overflow_labels: overflow_labels.into(),
            metrics,
            generation: AtomicU64::new(0),
        }
    }

    fn shard(&self, name: &str) -> MutexGuard<'_, Shard> {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        name.hash(&mut hasher);
        let index = hasher.finish() as usize % self.shards.len();
        // A panic while holding the lock leaves consistent data (every update is applied whole
        // or not at all before anything can panic), so a poisoned lock is still usable.
        self.shards[index]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A number that changes whenever the exposed series may have.
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Applies one metric's points.
    pub(crate) fn apply(&self, desc: Arc<FamilyDesc>, updates: Vec<SeriesUpdate>, now: Instant) {
        if updates.is_empty() {
            return;
        }
        let mut shard = self.shard(&desc.name);
        let family = match shard.families.entry(desc.name.clone()) {
            Entry::Occupied(entry) => entry.into_mut(),
            Entry::Vacant(entry) => {
                let labels = [self.metrics.exporter.as_str(), desc.name.as_str()];
                entry.insert(Family {
                    dropped: self.metrics.dropped.with_label_values(&labels),
                    series_gauge: self.metrics.series.with_label_values(&labels),
                    desc: desc.clone(),
                    series: HashMap::new(),
                    overflow: None,
                    conflict_reported: false,
                })
            }
        };
        if family.desc.kind != desc.kind {
            if !family.conflict_reported {
                family.conflict_reported = true;
                tracing::warn!(
                    metric = %desc.otlp_name,
                    name = %desc.name,
                    "metric dropped: its Prometheus name is taken by a metric of another type"
                );
            }
            return;
        }
        let aggregated = family.desc.aggregate;
        for update in updates {
            let key: &str = &update.labels;
            if let Some(series) = family.series.get_mut(key) {
                series.apply(update, now);
            } else if family.series.len() < self.max_series {
                let key: Arc<str> = Arc::from(key);
                let update = intern_bounds(&family.series, update);
                family
                    .series
                    .insert(key, Series::new(update, now, aggregated));
            } else {
                family.dropped.inc();
                match &mut family.overflow {
                    Some(series) => {
                        series.apply(update, now);
                    }
                    None => family.overflow = Some(Series::new(update, now, true)),
                }
            }
        }
        family.series_gauge.set(family.exposed_series() as i64);
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Removes series (and inputs of aggregated series) not updated for the expiration time.
    pub(crate) fn sweep(&self, now: Instant) {
        let Some(cutoff) = now.checked_sub(self.expiration) else {
            return;
        };
        let mut removed = false;
        for shard in self.shards.iter() {
            let mut shard = shard.lock().unwrap_or_else(|p| p.into_inner());
            removed |= self.sweep_shard(&mut shard, cutoff);
        }
        if removed {
            self.generation.fetch_add(1, Ordering::AcqRel);
        }
    }

    fn sweep_shard(&self, shard: &mut Shard, cutoff: Instant) -> bool {
        let mut removed = false;
        shard.families.retain(|_, family| {
            let before = family.exposed_series();
            family.series.retain(|_, series| series.sweep(cutoff));
            if let Some(overflow) = &mut family.overflow
                && !overflow.sweep(cutoff)
            {
                family.overflow = None;
            }
            let after = family.exposed_series();
            if after != before {
                removed = true;
                family.series_gauge.set(after as i64);
            }
            if after == 0 {
                let labels = [self.metrics.exporter.as_str(), family.desc.name.as_str()];
                let _ = self.metrics.series.remove_label_values(&labels);
                return false;
            }
            true
        });
        removed
    }

    /// Removes expired series and copies the rest, shard by shard.
    pub(crate) fn snapshot(&self, now: Instant) -> Snapshot {
        let cutoff = now.checked_sub(self.expiration);
        let mut snapshot = Snapshot::default();
        let mut removed = false;
        for shard in self.shards.iter() {
            let mut shard = shard.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(cutoff) = cutoff {
                removed |= self.sweep_shard(&mut shard, cutoff);
            }
            for family in shard.families.values() {
                let mut series: Vec<(Arc<str>, Value)> =
                    Vec::with_capacity(family.exposed_series());
                for (labels, s) in &family.series {
                    series.push((labels.clone(), s.value.clone()));
                    snapshot.next_expiry =
                        earliest(snapshot.next_expiry, s.updated + self.expiration);
                }
                if let Some(overflow) = &family.overflow {
                    series.push((self.overflow_labels.clone(), overflow.value.clone()));
                    snapshot.next_expiry =
                        earliest(snapshot.next_expiry, overflow.updated + self.expiration);
                }
                snapshot.families.push(FamilySnapshot {
                    desc: family.desc.clone(),
                    series,
                });
            }
        }
        if removed {
            self.generation.fetch_add(1, Ordering::AcqRel);
        }
        snapshot
            .families
            .sort_by(|a, b| a.desc.name.cmp(&b.desc.name));
        for family in &mut snapshot.families {
            family.series.sort_by(|a, b| a.0.cmp(&b.0));
        }
        snapshot
    }
}

fn earliest(a: Option<Instant>, b: Instant) -> Option<Instant> {
    Some(a.map_or(b, |a| a.min(b)))
}

/// Shares the bucket bounds of a new histogram series with an existing series of the family
/// when they are equal: most series of a metric have the same bounds.
fn intern_bounds(series: &HashMap<Arc<str>, Series>, mut update: SeriesUpdate) -> SeriesUpdate {
    if let Value::Histogram(new) = &mut update.value
        && let Some(Series {
            value: Value::Histogram(existing),
            ..
        }) = series.values().next()
        && existing.bounds == new.bounds
    {
        new.bounds = existing.bounds.clone();
    }
    update
}
