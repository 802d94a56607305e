//! Retrying exports: the `retry` table every exporter has, and the backoff it describes.
//!
//! Which failures are worth retrying is the exporter's call (it knows the protocol: gRPC codes,
//! HTTP statuses, `Retry-After`); how long to keep trying and how far apart is decided here, the
//! same for every exporter.

use std::time::Duration;

use serde::Deserialize;

use crate::config::duration;

/// The `retry` table of an exporter: exponential backoff with jitter, as the OpenTelemetry
/// Collector's `retry_on_failure`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetrySettings {
    /// Whether a batch whose export failed retryably is sent again. When off it is dropped and
    /// counted at the first failure.
    #[serde(default = "default_enabled")]
    pub enabled: bool,
    /// The wait before the first retry.
    #[serde(default = "default_initial_interval", with = "duration")]
    pub initial_interval: Duration,
    /// The longest wait between two attempts (a backend's `Retry-After` may ask for longer, and
    /// is honoured).
    #[serde(default = "default_max_interval", with = "duration")]
    pub max_interval: Duration,
    /// How long a batch is retried before it is dropped and counted; `0s` retries forever.
    #[serde(default = "default_max_elapsed_time", with = "duration")]
    pub max_elapsed_time: Duration,
    /// How much each wait grows over the previous one.
    #[serde(default = "default_multiplier")]
    pub multiplier: f64,
    /// How far a wait may be moved at random either side, as a fraction of it, so that many
    /// senders failing together do not retry together.
    #[serde(default = "default_jitter")]
    pub jitter: f64,
}

fn default_enabled() -> bool {
    true
}

fn default_initial_interval() -> Duration {
    Duration::from_secs(1)
}

fn default_max_interval() -> Duration {
    Duration::from_secs(30)
}

fn default_max_elapsed_time() -> Duration {
    Duration::from_secs(300)
}

fn default_multiplier() -> f64 {
    1.5
}

fn default_jitter() -> f64 {
    0.5
}

impl Default for RetrySettings {
    fn default() -> Self {
        RetrySettings {
            enabled: default_enabled(),
            initial_interval: default_initial_interval(),
            max_interval: default_max_interval(),
            max_elapsed_time: default_max_elapsed_time(),
            multiplier: default_multiplier(),
            jitter: default_jitter(),
        }
    }
}

impl RetrySettings {
    /// What is wrong with the settings, as (key, message).
    pub fn problem(&self) -> Option<(&'static str, String)> {
        if !(self.multiplier >= 1.0 && self.multiplier.is_finite()) {
            return Some((
                "multiplier",
                format!("{} must be at least 1", self.multiplier),
            ));
        }
        if !(0.0..=1.0).contains(&self.jitter) {
            return Some(("jitter", format!("{} must be from 0 to 1", self.jitter)));
        }
        if self.initial_interval.is_zero() {
            return Some(("initial_interval", "must be more than 0s".to_string()));
        }
        if self.max_interval < self.initial_interval {
            return Some((
                "max_interval",
                "must be at least initial_interval".to_string(),
            ));
        }
        None
    }

    /// The waits between the attempts at one batch.
    pub fn backoff(&self) -> Backoff {
        Backoff {
            next: self.initial_interval,
            settings: self.clone(),
        }
    }
}

/// The successive waits of one batch's retries.
pub struct Backoff {
    next: Duration,
    settings: RetrySettings,
}

impl Backoff {
    /// The wait before the next attempt, given the backend's own throttle hint: whichever is
    /// longer, so a backend asking for patience gets it and backoff still grows meanwhile.
    pub fn next_wait(&mut self, throttle: Option<Duration>) -> Duration {
        let base = self.next;
        self.next = base
            .mul_f64(self.settings.multiplier)
            .min(self.settings.max_interval);
        let jitter = self.settings.jitter;
        let jittered = if jitter > 0.0 {
            base.mul_f64(1.0 + rand::random_range(-jitter..=jitter))
        } else {
            base
        };
        jittered.max(throttle.unwrap_or_default())
    }

    /// Whether a batch first tried `elapsed` ago may still wait `wait` and try again.
    pub fn may_retry(&self, elapsed: Duration, wait: Duration) -> bool {
        let limit = self.settings.max_elapsed_time;
        limit.is_zero() || elapsed + wait <= limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exact(multiplier: f64) -> RetrySettings {
        RetrySettings {
            jitter: 0.0,
            multiplier,
            initial_interval: Duration::from_secs(1),
            max_interval: Duration::from_secs(5),
            ..RetrySettings::default()
        }
    }

    #[test]
    fn waits_grow_by_the_multiplier_up_to_the_maximum() {
        let mut backoff = exact(2.0).backoff();
        let waits: Vec<u64> = (0..5).map(|_| backoff.next_wait(None).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 5, 5]);
    }

    #[test]
    fn a_longer_throttle_from_the_backend_wins_over_backoff() {
        let mut backoff = exact(2.0).backoff();
        assert_eq!(
            backoff.next_wait(Some(Duration::from_secs(3))),
            Duration::from_secs(3)
        );
        // A shorter hint than the backoff does not shorten it.
        assert_eq!(
            backoff.next_wait(Some(Duration::from_millis(10))),
            Duration::from_secs(2)
        );
    }

    #[test]
    fn jitter_stays_within_its_fraction() {
        let settings = RetrySettings {
            jitter: 0.5,
            initial_interval: Duration::from_secs(10),
            max_interval: Duration::from_secs(10),
            ..RetrySettings::default()
        };
        let mut backoff = settings.backoff();
        let waits: Vec<Duration> = (0..200).map(|_| backoff.next_wait(None)).collect();
        assert!(waits.iter().all(|w| *w >= Duration::from_secs(5)));
        assert!(waits.iter().all(|w| *w <= Duration::from_secs(15)));
        // Random, not constant: 200 draws are not all equal.
        assert!(waits.iter().any(|w| *w != waits[0]));
    }

    #[test]
    fn retrying_stops_at_the_elapsed_limit_unless_it_is_zero() {
        let limited = RetrySettings {
            max_elapsed_time: Duration::from_secs(10),
            ..exact(2.0)
        };
        let backoff = limited.backoff();
        assert!(backoff.may_retry(Duration::from_secs(8), Duration::from_secs(2)));
        assert!(!backoff.may_retry(Duration::from_secs(9), Duration::from_secs(2)));

        let forever = RetrySettings {
            max_elapsed_time: Duration::ZERO,
            ..exact(2.0)
        };
        assert!(
            forever
                .backoff()
                .may_retry(Duration::from_secs(86_400), Duration::from_secs(30))
        );
    }

    #[test]
    fn nonsensical_settings_are_named() {
        let settings = RetrySettings {
            multiplier: 0.5,
            ..RetrySettings::default()
        };
        assert_eq!(settings.problem().map(|p| p.0), Some("multiplier"));
        let settings = RetrySettings {
            jitter: 2.0,
            ..RetrySettings::default()
        };
        assert_eq!(settings.problem().map(|p| p.0), Some("jitter"));
    }
}
