//! End-to-end acknowledgement: a receiver's client is answered only once its data is safe.
//!
//! With `acknowledgements = true` on a pipeline, the core attaches an [`AckToken`] to each batch
//! entering it and waits for the token's outcome before the receiver answers. Tokens travel
//! with the data: merged batches carry all their tokens, split batches share them, a fan-out
//! gives each exporter a share. The outcome is known when the last share is released:
//! delivered, unless some holder marked it failed first. An exporter's queue releases its share
//! once the backend accepted the data (memory queue) or once it is written to the disk queue,
//! and marks it failed when it drops the data. Data a processor drops on purpose (sampling) is
//! released as delivered: it was handled as configured.

use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

/// One share of an acknowledgement, carried by a batch.
#[derive(Clone, Debug)]
pub struct AckToken {
    state: Arc<AckState>,
}

#[derive(Debug)]
struct AckState {
    failure: Mutex<Option<String>>,
    outcome: Mutex<Option<oneshot::Sender<Result<(), String>>>>,
}

impl Drop for AckState {
    fn drop(&mut self) {
        let failure = self
            .failure
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let sender = self
            .outcome
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(sender) = sender {
            // The waiter may have given up (its client went away); nobody is left to tell.
            let _ = sender.send(failure.map_or(Ok(()), Err));
        }
    }
}

impl AckToken {
    /// A token and the waiter that learns its outcome.
    pub fn new() -> (AckToken, AckWaiter) {
        let (sender, receiver) = oneshot::channel();
        let token = AckToken {
            state: Arc::new(AckState {
                failure: Mutex::new(None),
                outcome: Mutex::new(Some(sender)),
            }),
        };
        (token, AckWaiter { receiver })
    }

    /// Marks the data as not delivered, for `reason`. The first failure is the one reported.
    pub fn fail(&self, reason: &str) {
        let mut failure = self.state.failure.lock().unwrap_or_else(|p| p.into_inner());
        failure.get_or_insert_with(|| reason.to_string());
    }
}

/// Learns whether the data of an [`AckToken`] was delivered.
pub struct AckWaiter {
    receiver: oneshot::Receiver<Result<(), String>>,
}

impl AckWaiter {
    /// Waits until every share of the token is released; the failure reason if any was marked.
    pub async fn outcome(self) -> Result<(), String> {
        // The sender lives in the shared state and always sends when the state is dropped.
        self.receiver
            .await
            .unwrap_or_else(|_| Err("acknowledgement lost".to_string()))
    }
}

/// The acknowledgement tokens a batch carries. Empty (and allocation-free) unless the
/// pipeline asks for acknowledgements.
#[derive(Clone, Debug, Default)]
pub struct Acks(Vec<AckToken>);

impl Acks {
    /// Adds a token.
    pub fn push(&mut self, token: AckToken) {
        self.0.push(token);
    }

    /// Adds every token of `other`.
    pub fn extend(&mut self, other: Acks) {
        self.0.extend(other.0);
    }

    /// Whether there are no tokens.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Marks every token failed; they are reported when released.
    pub fn fail(&self, reason: &str) {
        for token in &self.0 {
            token.fail(reason);
        }
    }

    /// Marks every token failed and releases them.
    pub fn fail_now(self, reason: &str) {
        self.fail(reason);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_outcome_is_known_when_the_last_share_is_released() {
        let (token, mut waiter) = AckToken::new();
        let share = token.clone();
        drop(token);
        assert!(
            waiter.receiver.try_recv().is_err(),
            "no outcome while a share is held"
        );
        drop(share);
        assert_eq!(waiter.outcome().await, Ok(()));
    }

    #[tokio::test]
    async fn a_failure_marked_by_any_share_is_reported() {
        let (token, waiter) = AckToken::new();
        let mut acks = Acks::default();
        acks.push(token.clone());
        let other_share = acks.clone();
        acks.fail_now("queue full");
        drop(token);
        drop(other_share);
        assert_eq!(waiter.outcome().await, Err("queue full".to_string()));
    }
}
