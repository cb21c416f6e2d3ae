//! The Check use case: the core's decision over the current key snapshots, plus the async steps
//! the core cannot take itself: RFC 7662 introspection of opaque tokens, and a bounded refetch
//! when a JWT names an unknown `kid`.

use std::sync::Arc;
use std::time::Duration;

use crate::introspection::Introspector;
use crate::keys::KeyStore;
use certbound_core::clock::Clock;
use certbound_core::{
    AccessRequest, Decision, DenyReason, Outcome, Policy, TokenCache, UnavailableReason,
};

/// Decides checks; shared by every connection.
pub struct Checker {
    policy: Policy,
    keys: Arc<KeyStore>,
    introspector: Option<Arc<Introspector>>,
    /// Verified JWTs by token hash (`token_cache.max_entries: 0` turns it off).
    token_cache: Option<TokenCache>,
    clock: Arc<dyn Clock>,
    /// Longest a Check waits for an unknown-`kid` refetch before answering with what it has.
    unknown_kid_wait: Duration,
}

impl Checker {
    pub fn new(
        policy: Policy,
        keys: Arc<KeyStore>,
        introspector: Option<Arc<Introspector>>,
        token_cache: Option<TokenCache>,
        clock: Arc<dyn Clock>,
        unknown_kid_wait: Duration,
    ) -> Self {
        Self {
            policy,
            keys,
            introspector,
            token_cache,
            clock,
            unknown_kid_wait,
        }
    }

    pub fn token_cache(&self) -> Option<&TokenCache> {
        self.token_cache.as_ref()
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    pub fn keys(&self) -> &Arc<KeyStore> {
        &self.keys
    }

    pub fn introspector(&self) -> Option<&Arc<Introspector>> {
        self.introspector.as_ref()
    }

    pub async fn check(&self, request: &AccessRequest) -> Decision {
        // Only with introspection configured: routing and the bearer parse are not free.
        if let Some(introspector) = &self.introspector
            && let Some(token) = self.policy.needs_introspection(request)
        {
            let now = self.clock.now();
            return match introspector.introspect(token, now).await {
                Ok(answer) => self.policy.decide_introspected(request, &answer, now),
                Err(error) => {
                    tracing::warn!(%error, "introspection failed");
                    Decision::unavailable(UnavailableReason::IntrospectionUnavailable)
                }
            };
        }
        let generation = self.keys.generation();
        let decision = self.decide_jwt(request);
        let (Outcome::Deny(DenyReason::KeyUnknown), Some(index)) =
            (&decision.outcome, decision.facts.issuer_index)
        else {
            return decision;
        };
        // The fetch runs in its own task so that a Check giving up does not cancel it.
        let keys = Arc::clone(&self.keys);
        let refetch =
            tokio::spawn(async move { keys.refetch_unknown_kid(index, generation).await });
        match tokio::time::timeout(self.unknown_kid_wait, refetch).await {
            Ok(Ok(true)) => self.decide_jwt(request),
            _ => decision,
        }
    }

    fn decide_jwt(&self, request: &AccessRequest) -> Decision {
        let now = self.clock.now();
        self.policy
            .decide_cached(self.keys.as_ref(), self.token_cache.as_ref(), request, now)
    }
}
