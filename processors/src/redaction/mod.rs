//! The `redaction` processor: removes attributes that are not allowed and masks (or hashes,
//! or drops) secrets found in values, before the data leaves the process.
//!
//! Keys are filtered as the OpenTelemetry Collector's redaction processor does: an attribute
//! is kept when its key is in `ignored_keys` (untouched), or when it is allowed
//! (`allow_all_keys`, or listed in `allowed_keys`) and its key matches no `blocked_keys`
//! pattern. With neither `allow_all_keys` nor `allowed_keys`, no key is allowed: the list
//! fails closed. The values of kept attributes (strings at any depth of arrays and key-value
//! lists) are scanned by the built-in detectors and the `blocked_values` patterns in one pass.

mod scanner;
mod walk;

use std::collections::HashSet;
use std::sync::Arc;

use async_trait::async_trait;
use prometheus::IntCounter;
use regex::RegexSet;
use serde::Deserialize;
use sluice_pipeline::{
    Batch, ComponentSettings, ConfigError, ConsumeError, Consumer, Processor, ProcessorContext,
    ProcessorFactory, Running, RunningProcessor, Signal, StartError,
};

pub use scanner::{Detector, MASK};
use scanner::{Replacement, Scanner, ScannerError};
pub use walk::Tally;

/// What to do with a secret found in a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Replace the secret (only the matching part of the value) with `****`.
    #[default]
    Mask,
    /// Replace the secret with the hex HMAC-SHA256 of it keyed with `hash_key`.
    Hash,
    /// Remove the whole attribute whose value holds a secret (a log body is cleared).
    DropAttribute,
}

/// Which diagnostic attributes the processor adds to what it changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Summary {
    /// None.
    #[default]
    Silent,
    /// `redaction.masked.count` and `redaction.redacted.count`.
    Info,
    /// The counts, and the keys: `redaction.masked.keys` and `redaction.redacted.keys`.
    Debug,
}

/// Configuration of the `redaction` processor (`[processors.redaction]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedactionConfig {
    /// Keep attributes whatever their key (values are still scanned). Without it, only the
    /// keys in `allowed_keys` are kept: with neither, every attribute is removed.
    #[serde(default = "default_allow_all_keys")]
    pub allow_all_keys: bool,
    /// The attribute keys kept (exact names) when `allow_all_keys` is false; every other
    /// attribute is removed.
    #[serde(default)]
    pub allowed_keys: Vec<String>,
    /// Attribute keys (exact names) passed on untouched: never removed, never scanned.
    #[serde(default)]
    pub ignored_keys: Vec<String>,
    /// Regular expressions on keys: an attribute whose key matches one is removed, also when
    /// allowed, and so is a matching entry of a key-value list value.
    #[serde(default)]
    pub blocked_keys: Vec<String>,
    /// Regular expressions on string values: the matching part of a value is masked.
    #[serde(default)]
    pub blocked_values: Vec<String>,
    /// Regular expressions on string values: a secret found inside a match of one of these is
    /// left as it is (they take precedence over `blocked_values` and the detectors).
    #[serde(default)]
    pub allowed_values: Vec<String>,
    /// The built-in detectors to run: `api_key`, `aws_key`, `bearer`, `jwt`, `email`,
    /// `credit_card`, `ip`. All by default; `[]` for none.
    #[serde(default = "default_detectors")]
    pub detectors: Vec<Detector>,
    /// What to do with a secret found in a value: `mask`, `hash` or `drop_attribute`.
    #[serde(default)]
    pub action: Action,
    /// The secret key of `action = "hash"` (at least 16 bytes); write `"${REDACTION_KEY}"` to
    /// take it from the environment.
    #[serde(default)]
    pub hash_key: Option<String>,
    /// Diagnostic attributes added to changed items: `silent`, `info` or `debug`.
    #[serde(default)]
    pub summary: Summary,
}

fn default_allow_all_keys() -> bool {
    false
}

fn default_detectors() -> Vec<Detector> {
    Detector::ALL.to_vec()
}

/// The shortest `hash_key` accepted: HMAC keys shorter than the hash's 32 bytes weaken it, and
/// a short key is easily guessed from hashed values of known secrets.
pub const MIN_HASH_KEY_LEN: usize = 16;

impl RedactionConfig {
    /// Parses and checks the `[processors.<id>]` table, compiling every pattern.
    pub fn from_settings(settings: &ComponentSettings) -> Result<Redactor, ConfigError> {
        let config: RedactionConfig = settings.parse()?;
        Redactor::new(config, settings)
    }
}

/// The compiled rules of one `redaction` processor.
pub struct Redactor {
    allow_all_keys: bool,
    allowed_keys: HashSet<String>,
    ignored_keys: HashSet<String>,
    blocked_keys: Option<RegexSet>,
    scanner: Scanner,
    action: Action,
    replacement: Replacement,
    summary: Summary,
}

impl Redactor {
    fn new(config: RedactionConfig, settings: &ComponentSettings) -> Result<Redactor, ConfigError> {
        for (index, pattern) in config.blocked_keys.iter().enumerate() {
            scanner::compile(pattern).map_err(|message| {
                ConfigError::new(settings.path().key("blocked_keys").index(index), message)
            })?;
        }
        let blocked_keys = if config.blocked_keys.is_empty() {
            None
        } else {
            Some(
                RegexSet::new(&config.blocked_keys)
                    .map_err(|e| settings.error("blocked_keys", e.to_string()))?,
            )
        };
        let scanner = Scanner::new(
            &config.detectors,
            &config.blocked_values,
            &config.allowed_values,
        )
        .map_err(|error| {
            let (key, e) = match &error {
                ScannerError::Blocked(e) => ("blocked_values", e),
                ScannerError::Allowed(e) => ("allowed_values", e),
            };
            ConfigError::new(settings.path().key(key).index(e.index), e.message.clone())
        })?;
        let replacement = match (config.action, &config.hash_key) {
            (Action::Hash, None) => {
                return Err(settings.error(
                    "hash_key",
                    "action = \"hash\" needs a hash_key (a secret of at least 16 bytes; write \
                     \"${VAR}\" to take it from the environment)",
                ));
            }
            (Action::Hash, Some(key)) if key.len() < MIN_HASH_KEY_LEN => {
                return Err(settings.error(
                    "hash_key",
                    format!(
                        "is {} bytes long: use a secret of at least {MIN_HASH_KEY_LEN} bytes",
                        key.len()
                    ),
                ));
            }
            (Action::Hash, Some(key)) => Replacement::hash(key.as_bytes()),
            _ => Replacement::Mask,
        };
        if !config.allow_all_keys && config.allowed_keys.is_empty() {
            tracing::warn!(
                processor = %settings.id,
                "redaction: neither allow_all_keys nor allowed_keys is set, so every attribute \
                 not in ignored_keys is removed (the allow list fails closed)"
            );
        }
        Ok(Redactor {
            allow_all_keys: config.allow_all_keys,
            allowed_keys: config.allowed_keys.into_iter().collect(),
            ignored_keys: config.ignored_keys.into_iter().collect(),
            blocked_keys,
            scanner,
            action: config.action,
            replacement,
            summary: config.summary,
        })
    }

    /// Applies the rules to every item of `request`, returning what was changed.
    pub fn redact(&self, request: &mut sluice_pipeline::Request) -> Tally {
        walk::redact_request(self, request)
    }

    /// The rule names masked counts are kept by (see [`Tally::masked`]).
    pub fn rule_names(&self) -> &[&'static str] {
        self.scanner.rule_names()
    }
}

/// Builds `redaction` processors.
pub struct RedactionProcessorFactory;

impl ProcessorFactory for RedactionProcessorFactory {
    fn type_name(&self) -> &'static str {
        "redaction"
    }

    fn signals(&self) -> &'static [Signal] {
        &Signal::ALL
    }

    fn build(&self, settings: &ComponentSettings) -> Result<Box<dyn Processor>, ConfigError> {
        Ok(Box::new(RedactionProcessor {
            redactor: Arc::new(RedactionConfig::from_settings(settings)?),
        }))
    }
}

/// A `redaction` processor built from config, ready to start in a pipeline.
pub struct RedactionProcessor {
    redactor: Arc<Redactor>,
}

#[async_trait]
impl Processor for RedactionProcessor {
    async fn start(
        self: Box<Self>,
        ctx: ProcessorContext,
    ) -> Result<Arc<dyn RunningProcessor>, StartError> {
        let signal = ctx.signal.as_str();
        let masked = ctx.telemetry.counter_vec(
            "sluice_processor_redaction_masked_total",
            "Secrets the redaction processor masked, hashed or dropped an attribute for, by the \
             rule that found them (a detector or blocked_values).",
            &["processor", "signal", "rule"],
        );
        let removed = ctx.telemetry.counter_vec(
            "sluice_processor_redaction_removed_total",
            "Attributes the redaction processor removed, by reason: not_allowed, blocked_key, \
             or value (action = drop_attribute).",
            &["processor", "signal", "reason"],
        );
        let counters = Counters {
            masked: self
                .redactor
                .rule_names()
                .iter()
                .map(|rule| masked.with_label_values(&[&ctx.id, signal, rule]))
                .collect(),
            not_allowed: removed.with_label_values(&[&ctx.id, signal, "not_allowed"]),
            blocked_key: removed.with_label_values(&[&ctx.id, signal, "blocked_key"]),
            dropped_for_value: removed.with_label_values(&[&ctx.id, signal, "value"]),
            dropped_items: ctx.telemetry.processor_dropped(&ctx.id, ctx.signal),
        };
        Ok(Arc::new(RunningRedaction {
            id: ctx.id,
            redactor: self.redactor,
            next: ctx.next,
            counters,
        }))
    }
}

struct Counters {
    /// By rule, in the order of [`Redactor::rule_names`].
    masked: Vec<IntCounter>,
    not_allowed: IntCounter,
    blocked_key: IntCounter,
    dropped_for_value: IntCounter,
    dropped_items: IntCounter,
}

/// A `redaction` processor running in one pipeline. It works in the caller's task: a batch
/// is redacted and handed on before `consume` returns.
pub struct RunningRedaction {
    id: String,
    redactor: Arc<Redactor>,
    next: Arc<dyn Consumer>,
    counters: Counters,
}

#[async_trait]
impl Consumer for RunningRedaction {
    async fn consume(&self, mut batch: Batch) -> Result<(), ConsumeError> {
        if batch.is_empty() {
            return self.next.consume(batch).await;
        }
        let tally = match batch.modify(|request| self.redactor.redact(request)) {
            Ok(tally) => tally,
            Err(error) => {
                // Receivers validate what they accept, so this is data no one can read:
                // passing it on unredacted is not an option.
                self.counters
                    .dropped_items
                    .inc_by(batch.item_count() as u64);
                return Err(ConsumeError::Rejected(format!(
                    "redaction processor {}: cannot decode the batch: {error}",
                    self.id
                )));
            }
        };
        for (counter, &count) in self.counters.masked.iter().zip(&tally.masked) {
            if count > 0 {
                counter.inc_by(count);
            }
        }
        self.counters.not_allowed.inc_by(tally.not_allowed);
        self.counters.blocked_key.inc_by(tally.blocked_key);
        self.counters
            .dropped_for_value
            .inc_by(tally.dropped_for_value);
        self.next.consume(batch).await
    }
}

#[async_trait]
impl Running for RunningRedaction {
    async fn shutdown(&self) {}
}

#[cfg(test)]
mod tests;
