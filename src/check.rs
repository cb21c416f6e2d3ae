//! The Check use case: the core's decision over the current key snapshots, plus the one async
//! step the core cannot take itself, a bounded refetch when a token names an unknown `kid`.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::authz::{AccessRequest, Decision, DenyReason, Outcome, Policy};
use crate::keys::KeyStore;

/// Decides checks; shared by every connection.
pub struct Checker {
    policy: Policy,
    keys: Arc<KeyStore>,
    /// Longest a Check waits for an unknown-`kid` refetch before answering with what it has.
    unknown_kid_wait: Duration,
}

impl Checker {
    pub fn new(policy: Policy, keys: Arc<KeyStore>, unknown_kid_wait: Duration) -> Self {
        Self {
            policy,
            keys,
            unknown_kid_wait,
        }
    }

    pub fn keys(&self) -> &Arc<KeyStore> {
        &self.keys
    }

    pub async fn check(&self, request: &AccessRequest) -> Decision {
        let decision = self.policy.decide(self.keys.as_ref(), request, unix_now());
        let (Outcome::Deny(DenyReason::KeyUnknown), Some(index)) =
            (&decision.outcome, decision.facts.issuer_index)
        else {
            return decision;
        };
        // The fetch runs in its own task so that a Check giving up does not cancel it.
        let keys = Arc::clone(&self.keys);
        let refetch = tokio::spawn(async move { keys.refetch_unknown_kid(index).await });
        match tokio::time::timeout(self.unknown_kid_wait, refetch).await {
            Ok(Ok(true)) => self.policy.decide(self.keys.as_ref(), request, unix_now()),
            _ => decision,
        }
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
