//! The traces a `tail_sampling` instance holds until their decision, the decisions it
//! remembers, and the sampled spans waiting to be sent.
//!
//! Everything here is synchronous and driven by the caller's clock, so the rules (deadlines,
//! bounds, early decisions, the decision cache) are tested without a runtime.
//!
//! Memory is bounded three ways: at most `num_traces` traces and `max_buffered_spans` spans
//! are buffered (when either is reached the oldest trace is decided at once, not thrown
//! away), and a trace reaching `max_spans_per_trace` spans is decided at once, so one huge
//! trace cannot push every other trace out early. The decision cache is bounded by its sizes.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use prometheus::{IntCounter, IntGauge};
use tokio::time::Instant;

use super::policy::{Policy, TraceView, Vote};
use super::spans::{
    BufferedSpan, Released, TraceId, string_attribute_field, summarize, without_attribute,
};

/// The attribute `record_policy` adds to sampled spans: the name of the policy that sampled.
pub const POLICY_ATTRIBUTE: &str = "sluice.sampling.policy";

/// The limits of one instance (checked by the config).
#[derive(Debug, Clone)]
pub struct Limits {
    pub decision_wait: Duration,
    pub num_traces: usize,
    pub max_buffered_spans: usize,
    pub max_spans_per_trace: usize,
    pub sampled_cache_size: usize,
    pub non_sampled_cache_size: usize,
    pub record_policy: bool,
}

/// Why a trace was decided before its `decision_wait` was over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Early {
    /// `num_traces` traces were buffered and a new one arrived.
    NumTraces,
    /// `max_buffered_spans` spans were buffered.
    MaxBufferedSpans,
    /// The trace reached `max_spans_per_trace` spans.
    MaxSpansPerTrace,
    /// The processor is shutting down.
    Shutdown,
}

impl Early {
    pub const ALL: [Early; 4] = [
        Early::NumTraces,
        Early::MaxBufferedSpans,
        Early::MaxSpansPerTrace,
        Early::Shutdown,
    ];

    /// The `reason` label.
    pub fn label(self) -> &'static str {
        match self {
            Early::NumTraces => "num_traces",
            Early::MaxBufferedSpans => "max_buffered_spans",
            Early::MaxSpansPerTrace => "max_spans_per_trace",
            Early::Shutdown => "shutdown",
        }
    }
}

/// The counters and gauges the buffer keeps up to date.
#[derive(Clone)]
pub struct Metrics {
    /// Per policy, per [`Vote::index`].
    pub policy_votes: Vec<[IntCounter; 3]>,
    pub traces_sampled: IntCounter,
    pub traces_not_sampled: IntCounter,
    /// Per [`Early`], in the order of [`Early::ALL`].
    pub decided_early: [IntCounter; 4],
    pub late_sampled: IntCounter,
    pub late_not_sampled: IntCounter,
    /// Spans not sampled (and dropped).
    pub dropped_spans: IntCounter,
    /// Shared by every instance of the processor id: moved by differences, never set.
    pub buffered_traces: IntGauge,
    pub buffered_spans: IntGauge,
}

/// What a trace was decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decision {
    /// Sampled by the policy at this index.
    Sampled(u32),
    NotSampled,
}

struct Trace {
    spans: Vec<BufferedSpan>,
    /// Tells this trace's entry in the arrival order from a stale one for an earlier trace
    /// with the same id.
    generation: u64,
}

/// Decided traces, remembered so that their late spans follow the decision. Two FIFO-bounded
/// sets: a flood of dropped traces does not push out what was sampled.
struct DecisionCache {
    decisions: HashMap<TraceId, Decision>,
    sampled: VecDeque<TraceId>,
    not_sampled: VecDeque<TraceId>,
    sampled_size: usize,
    not_sampled_size: usize,
}

impl DecisionCache {
    fn new(sampled_size: usize, not_sampled_size: usize) -> DecisionCache {
        DecisionCache {
            decisions: HashMap::new(),
            sampled: VecDeque::new(),
            not_sampled: VecDeque::new(),
            sampled_size,
            not_sampled_size,
        }
    }

    fn get(&self, id: &TraceId) -> Option<Decision> {
        self.decisions.get(id).copied()
    }

    fn insert(&mut self, id: TraceId, decision: Decision) {
        let sampled = matches!(decision, Decision::Sampled(_));
        let (order, size) = if sampled {
            (&mut self.sampled, self.sampled_size)
        } else {
            (&mut self.not_sampled, self.not_sampled_size)
        };
        if size == 0 {
            self.decisions.remove(&id);
            return;
        }
        let previous = self.decisions.insert(id, decision);
        if previous.is_some_and(|p| matches!(p, Decision::Sampled(_)) == sampled) {
            // Already in this set's order; keeps its place.
            return;
        }
        order.push_back(id);
        if order.len() > size
            && let Some(oldest) = order.pop_front()
            && self
                .decisions
                .get(&oldest)
                .is_some_and(|d| matches!(d, Decision::Sampled(_)) == sampled)
        {
            self.decisions.remove(&oldest);
        }
    }
}

/// The state of one instance.
pub struct Buffer {
    limits: Limits,
    policies: Vec<Policy>,
    /// Each policy's name as an encoded `sluice.sampling.policy` attribute, for
    /// `record_policy`.
    policy_attributes: Vec<Arc<[u8]>>,
    traces: HashMap<TraceId, Trace>,
    /// Buffered traces in the order their first span arrived, with their deadlines; entries
    /// of traces decided early stay until they reach the front and are skipped then.
    order: VecDeque<(Instant, TraceId, u64)>,
    next_generation: u64,
    spans: usize,
    cache: DecisionCache,
    /// Sampled spans waiting to be sent.
    released: Vec<Released>,
    metrics: Metrics,
    /// What the shared gauges were last moved to by this instance.
    published: (i64, i64),
}

impl Buffer {
    /// An empty buffer deciding with `policies`.
    pub fn new(limits: Limits, policies: Vec<Policy>, metrics: Metrics) -> Buffer {
        Buffer {
            policy_attributes: policies
                .iter()
                .map(|p| string_attribute_field(POLICY_ATTRIBUTE, &p.name).into())
                .collect(),
            cache: DecisionCache::new(limits.sampled_cache_size, limits.non_sampled_cache_size),
            limits,
            policies,
            traces: HashMap::new(),
            order: VecDeque::new(),
            next_generation: 0,
            spans: 0,
            released: Vec::new(),
            metrics,
            published: (0, 0),
        }
    }

    /// The number of buffered traces.
    pub fn trace_count(&self) -> usize {
        self.traces.len()
    }

    /// The number of sampled spans waiting to be sent.
    pub fn released_count(&self) -> usize {
        self.released.len()
    }

    /// Takes in spans that arrived at `now`: a span of a buffered trace joins it, a span of a
    /// decided trace follows the cached decision (a late span), any other starts a trace.
    pub fn add(&mut self, now: Instant, spans: impl IntoIterator<Item = (TraceId, BufferedSpan)>) {
        for (id, buffered) in spans {
            if let Some(trace) = self.traces.get_mut(&id) {
                trace.spans.push(buffered);
                self.spans += 1;
                if trace.spans.len() >= self.limits.max_spans_per_trace {
                    self.decide(id, now, Some(Early::MaxSpansPerTrace));
                }
            } else if let Some(decision) = self.cache.get(&id) {
                match decision {
                    Decision::Sampled(policy) => {
                        self.metrics.late_sampled.inc();
                        self.release(buffered, policy);
                    }
                    Decision::NotSampled => {
                        self.metrics.late_not_sampled.inc();
                        self.metrics.dropped_spans.inc();
                    }
                }
            } else {
                while self.traces.len() >= self.limits.num_traces
                    && self.decide_oldest(now, Early::NumTraces)
                {}
                let generation = self.next_generation;
                self.next_generation += 1;
                self.order
                    .push_back((now + self.limits.decision_wait, id, generation));
                self.traces.insert(
                    id,
                    Trace {
                        spans: vec![buffered],
                        generation,
                    },
                );
                self.spans += 1;
                if self.limits.max_spans_per_trace <= 1 {
                    self.decide(id, now, Some(Early::MaxSpansPerTrace));
                }
            }
            while self.spans > self.limits.max_buffered_spans
                && self.decide_oldest(now, Early::MaxBufferedSpans)
            {}
        }
        self.publish();
    }

    /// When the next buffered trace is due, if any.
    pub fn next_deadline(&mut self) -> Option<Instant> {
        self.skip_stale();
        self.order.front().map(|(deadline, _, _)| *deadline)
    }

    /// Decides every trace whose `decision_wait` is over at `now`.
    pub fn decide_due(&mut self, now: Instant) {
        while let Some(&(deadline, id, _)) = self.order.front() {
            if deadline > now {
                break;
            }
            if self.skip_stale() {
                continue;
            }
            self.order.pop_front();
            self.decide(id, now, None);
        }
        self.publish();
    }

    /// Decides every buffered trace now (on shutdown).
    pub fn decide_all(&mut self, now: Instant) {
        while let Some((_, id, _)) = self.order.pop_front() {
            if self.traces.contains_key(&id) {
                self.decide(id, now, Some(Early::Shutdown));
            }
        }
        self.publish();
    }

    /// Takes the sampled spans waiting to be sent, in the order they were released.
    pub fn take_released(&mut self) -> Vec<Released> {
        std::mem::take(&mut self.released)
    }

    /// Pops entries at the front of the order whose trace was decided early. Returns whether
    /// it popped any.
    fn skip_stale(&mut self) -> bool {
        let mut skipped = false;
        while let Some((_, id, generation)) = self.order.front() {
            match self.traces.get(id) {
                Some(trace) if trace.generation == *generation => break,
                _ => {
                    self.order.pop_front();
                    skipped = true;
                }
            }
        }
        skipped
    }

    /// Decides the trace whose first span arrived first. Returns false when none is buffered.
    fn decide_oldest(&mut self, now: Instant, reason: Early) -> bool {
        self.skip_stale();
        match self.order.pop_front() {
            Some((_, id, _)) => {
                self.decide(id, now, Some(reason));
                true
            }
            None => false,
        }
    }

    /// Decides trace `id`: samples it (releasing its spans) or drops it, and remembers the
    /// decision.
    fn decide(&mut self, id: TraceId, now: Instant, early: Option<Early>) {
        let Some(trace) = self.traces.remove(&id) else {
            return;
        };
        self.spans -= trace.spans.len();
        if let Some(reason) = early {
            self.metrics.decided_early[reason as usize].inc();
        }
        let mut summaries = Vec::with_capacity(trace.spans.len());
        let mut attributes = Vec::new();
        summarize(&trace.spans, &mut summaries, &mut attributes);
        let view = TraceView {
            id: &id,
            spans: &summaries,
            attributes: &attributes,
        };
        let mut sampled_by = None;
        let mut dropped = false;
        for (i, policy) in self.policies.iter_mut().enumerate() {
            let vote = policy.evaluate(&view, now);
            self.metrics.policy_votes[i][vote.index()].inc();
            match vote {
                Vote::Sampled if sampled_by.is_none() => sampled_by = Some(i as u32),
                Vote::Dropped => dropped = true,
                _ => {}
            }
        }
        drop(attributes);
        let decision = match sampled_by {
            Some(policy) if !dropped => Decision::Sampled(policy),
            _ => Decision::NotSampled,
        };
        self.cache.insert(id, decision);
        match decision {
            Decision::Sampled(policy) => {
                self.metrics.traces_sampled.inc();
                self.released.reserve(trace.spans.len());
                for span in trace.spans {
                    self.release(span, policy);
                }
            }
            Decision::NotSampled => {
                self.metrics.traces_not_sampled.inc();
                self.metrics.dropped_spans.inc_by(trace.spans.len() as u64);
            }
        }
    }

    fn release(&mut self, mut span: BufferedSpan, policy: u32) {
        let extra = if self.limits.record_policy {
            // The attribute is appended; one the span already had would be a duplicate key.
            span.bytes = without_attribute(&span.bytes, POLICY_ATTRIBUTE);
            Some(self.policy_attributes[policy as usize].clone())
        } else {
            None
        };
        self.released.push(Released { span, extra });
    }

    /// Moves the shared gauges by how much this instance's counts changed.
    fn publish(&mut self) {
        let now = (self.traces.len() as i64, self.spans as i64);
        self.metrics.buffered_traces.add(now.0 - self.published.0);
        self.metrics.buffered_spans.add(now.1 - self.published.1);
        self.published = now;
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        // An instance that goes away takes its share out of the shared gauges.
        self.metrics.buffered_traces.sub(self.published.0);
        self.metrics.buffered_spans.sub(self.published.1);
    }
}
