//! Who is calling: API keys, their model allow-lists and their request rates.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::HeaderValue;
use sha2::{Digest, Sha256};

use crate::config::KeyConfig;

/// The key id of requests that carried no bearer token (only when no keys are configured).
pub const ANONYMOUS: &str = "anonymous";

/// The configured keys, looked up by the SHA-256 of the secret so that the secrets
/// themselves are not kept in a map whose probing time depends on their bytes.
pub(crate) struct Keys {
    by_digest: HashMap<[u8; 32], Arc<KeyEntry>>,
}

/// One configured key.
pub(crate) struct KeyEntry {
    pub id: String,
    models: Option<HashSet<String>>,
    bucket: Option<Mutex<TokenBucket>>,
}

/// The caller of one request.
#[derive(Clone)]
pub(crate) struct Identity {
    /// What telemetry shows.
    pub key_id: String,
    /// The configured key, when keys are configured.
    entry: Option<Arc<KeyEntry>>,
}

impl Identity {
    /// Whether this caller may use `model`.
    pub fn allows(&self, model: &str) -> bool {
        match self.entry.as_ref().and_then(|e| e.models.as_ref()) {
            Some(models) => models.contains(model),
            None => true,
        }
    }

    /// Takes one request from the caller's budget; when it is spent, how long until the
    /// next request is allowed.
    pub fn take_request(&self) -> Result<(), Duration> {
        match self.entry.as_ref().and_then(|e| e.bucket.as_ref()) {
            // A poisoned lock only means another request panicked mid-update; the bucket's
            // numbers are still usable.
            Some(bucket) => bucket
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .take(Instant::now()),
            None => Ok(()),
        }
    }
}

impl Keys {
    pub fn new(keys: &[KeyConfig]) -> Keys {
        let by_digest = keys
            .iter()
            .map(|key| {
                let entry = KeyEntry {
                    id: key.id.clone(),
                    models: key.models.as_ref().map(|m| m.iter().cloned().collect()),
                    bucket: key
                        .requests_per_minute
                        .filter(|rpm| *rpm > 0)
                        .map(|rpm| Mutex::new(TokenBucket::per_minute(rpm))),
                };
                (digest(key.key.as_bytes()), Arc::new(entry))
            })
            .collect();
        Keys { by_digest }
    }

    /// Identifies the caller from its `Authorization` header; `None` when keys are
    /// configured and the header does not carry one of them.
    pub fn authenticate(&self, authorization: Option<&HeaderValue>) -> Option<Identity> {
        let token = authorization.and_then(bearer_token);
        if self.by_digest.is_empty() {
            let key_id = match token {
                Some(token) => short_hash(token),
                None => ANONYMOUS.to_string(),
            };
            return Some(Identity {
                key_id,
                entry: None,
            });
        }
        let entry = self.by_digest.get(&digest(token?))?;
        Some(Identity {
            key_id: entry.id.clone(),
            entry: Some(entry.clone()),
        })
    }
}

/// The token of an `Authorization: Bearer <token>` header.
fn bearer_token(value: &HeaderValue) -> Option<&[u8]> {
    let value = value.as_bytes();
    let (scheme, token) = value.split_at_checked(7)?;
    if !scheme.eq_ignore_ascii_case(b"bearer ") {
        return None;
    }
    let token = token.trim_ascii();
    (!token.is_empty()).then_some(token)
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// The first 12 hex digits of the token's SHA-256: stable, short, and not the token.
pub(crate) fn short_hash(token: &[u8]) -> String {
    crate::trace::encode_hex(&digest(token)[..6])
}

/// A token bucket holding a minute's worth of requests, refilled continuously.
struct TokenBucket {
    capacity: f64,
    tokens: f64,
    per_second: f64,
    updated: Instant,
}

impl TokenBucket {
    fn per_minute(rpm: u32) -> TokenBucket {
        let capacity = f64::from(rpm);
        TokenBucket {
            capacity,
            tokens: capacity,
            per_second: capacity / 60.0,
            updated: Instant::now(),
        }
    }

    fn take(&mut self, now: Instant) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.capacity);
        self.updated = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64(
                (1.0 - self.tokens) / self.per_second,
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: &str, secret: &str, rpm: Option<u32>, models: Option<&[&str]>) -> KeyConfig {
        KeyConfig {
            id: id.into(),
            key: secret.into(),
            models: models.map(|m| m.iter().map(|s| s.to_string()).collect()),
            requests_per_minute: rpm,
        }
    }

    fn header(text: &str) -> HeaderValue {
        HeaderValue::from_str(text).unwrap()
    }

    #[test]
    fn configured_keys_are_required_and_identified_by_id() {
        let keys = Keys::new(&[key("team-a", "s3cret", None, Some(&["gpt-4o"]))]);
        let identity = keys.authenticate(Some(&header("Bearer s3cret"))).unwrap();
        assert_eq!(identity.key_id, "team-a");
        assert!(identity.allows("gpt-4o"));
        assert!(!identity.allows("gpt-5"));
        assert!(keys.authenticate(Some(&header("bearer s3cret"))).is_some());
        assert!(keys.authenticate(Some(&header("Bearer wrong"))).is_none());
        assert!(keys.authenticate(Some(&header("Basic s3cret"))).is_none());
        assert!(keys.authenticate(None).is_none());
    }

    #[test]
    fn without_keys_tokens_are_hashed_and_missing_ones_are_anonymous() {
        let keys = Keys::new(&[]);
        let a = keys.authenticate(Some(&header("Bearer sk-abc"))).unwrap();
        assert_eq!(a.key_id.len(), 12);
        assert!(!a.key_id.contains("abc"));
        let again = keys.authenticate(Some(&header("Bearer sk-abc"))).unwrap();
        assert_eq!(a.key_id, again.key_id);
        assert_eq!(keys.authenticate(None).unwrap().key_id, ANONYMOUS);
    }

    #[test]
    fn the_bucket_allows_a_minutes_worth_then_says_when_to_retry() {
        let mut bucket = TokenBucket::per_minute(2);
        let now = bucket.updated;
        assert!(bucket.take(now).is_ok());
        assert!(bucket.take(now).is_ok());
        let wait = bucket.take(now).unwrap_err();
        assert_eq!(wait.as_secs(), 30);
        assert!(bucket.take(now + Duration::from_secs(30)).is_ok());
    }
}
