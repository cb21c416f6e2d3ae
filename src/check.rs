//! The Check use case: the core's decision over the current key snapshots, plus the async steps
//! the core cannot take itself: RFC 7662 introspection of opaque tokens, and a bounded refetch
//! when a JWT names an unknown `kid`.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use crate::telemetry::ChildSpan;

use crate::introspection::{IntrospectionError, Introspector, JWT_REFUSAL_MEMORY_SECONDS};
use crate::keys::KeyStore;
use crate::metrics::Metrics;
use crate::replay::Replay;
use certbound_core::clock::Clock;
use certbound_core::{
    AccessRequest, Decision, DenyReason, Outcome, Policy, TokenCache, UnavailableReason, token,
};

/// Decides checks; shared by every connection.
pub struct Checker {
    parts: CheckerParts,
    /// When the last "inactive JWT that verifies locally" hint was logged.
    last_inactive_hint: AtomicI64,
}

/// What a [`Checker`] is made of.
pub struct CheckerParts {
    pub policy: Policy,
    pub keys: Arc<KeyStore>,
    pub introspector: Option<Arc<Introspector>>,
    /// Verified JWTs by token hash (`token_cache.max_entries: 0` turns it off).
    pub token_cache: Option<TokenCache>,
    pub clock: Arc<dyn Clock>,
    /// Longest a Check waits for an unknown-`kid` refetch before answering with what it has.
    pub unknown_kid_wait: Duration,
    /// With DPoP enabled: where verified proofs are recorded before a request is let through.
    pub replay: Option<Arc<Replay>>,
    pub metrics: Arc<Metrics>,
}

impl Checker {
    pub fn new(parts: CheckerParts) -> Self {
        Self {
            parts,
            last_inactive_hint: AtomicI64::new(i64::MIN),
        }
    }

    pub fn replay(&self) -> Option<&Arc<Replay>> {
        self.parts.replay.as_ref()
    }

    pub fn token_cache(&self) -> Option<&TokenCache> {
        self.parts.token_cache.as_ref()
    }

    pub fn policy(&self) -> &Policy {
        &self.parts.policy
    }

    pub fn keys(&self) -> &Arc<KeyStore> {
        &self.parts.keys
    }

    pub fn introspector(&self) -> Option<&Arc<Introspector>> {
        self.parts.introspector.as_ref()
    }

    /// Decides one request; with DPoP, an allowed request's proof is recorded against replay
    /// first (a replayed proof is refused, an unreachable store fails closed).
    pub async fn check(&self, request: &AccessRequest) -> Decision {
        let decision = self.decide(request).await;
        let (Some(key), Some(replay)) = (decision.replay_key(), &self.parts.replay) else {
            return decision;
        };
        let span = ChildSpan::start("certbound.dpop_replay");
        span.set("certbound.store", replay.name());
        let result = replay.record(&key, self.parts.clock.now()).await;
        let label = match &result {
            Ok(true) => "first_use",
            Ok(false) => "replayed",
            Err(error) => {
                tracing::warn!(store = replay.name(), %error, "DPoP replay check failed");
                "error"
            }
        };
        span.set("certbound.result", label);
        self.parts.metrics.replay_check(replay.name(), label);
        decision.after_replay_check(result)
    }

    /// The decision without recording a DPoP proof against replay (for `explain`, which must
    /// not use up a proof in a store that replicas share).
    ///
    /// The rare paths that wait on the network (introspection, an unknown `kid`'s refetch) are
    /// futures of their own, boxed when taken: kept inline, their state (an HTTP client's
    /// request, a timer) would make every check's future kilobytes larger, and each layer of
    /// the Check (tonic, the service, the authorizer) copies its future when it starts it.
    pub async fn decide(&self, request: &AccessRequest) -> Decision {
        // Only with introspection configured: routing and the bearer parse are not free.
        if let Some(introspector) = &self.parts.introspector
            && let Some(token) = self.parts.policy.needs_introspection(request)
            && let Some(decision) = Box::pin(self.introspect(introspector, request, token)).await
        {
            return decision;
        }
        let generation = self.parts.keys.generation();
        let decision = self.decide_jwt(request);
        let (Outcome::Deny(DenyReason::KeyUnknown), Some(index)) =
            (&decision.outcome, decision.facts.issuer_index)
        else {
            return decision;
        };
        Box::pin(self.refetch_and_decide(request, decision, index, generation)).await
    }

    /// The decision on the introspection endpoint's answer; `None` when the token is to be
    /// verified locally instead (a JWT, and the endpoint does not introspect JWTs).
    async fn introspect(
        &self,
        introspector: &Introspector,
        request: &AccessRequest,
        token: &str,
    ) -> Option<Decision> {
        let now = self.parts.clock.now();
        let jwt = token::looks_like_jwt(token);
        if jwt && introspector.refuses_jwts(now) {
            return None;
        }
        let span = ChildSpan::start("certbound.introspection");
        let answer = introspector.introspect(token, now).await;
        span.set(
            "certbound.result",
            match &answer {
                Ok(_) => "answered",
                Err(_) => "error",
            },
        );
        match answer {
            Ok(answer) => {
                let decision = self.parts.policy.decide_introspected(request, &answer, now);
                if jwt && matches!(decision.outcome, Outcome::Deny(DenyReason::TokenInactive)) {
                    self.hint_inactive_jwt(request, now);
                }
                Some(decision)
            }
            Err(IntrospectionError::UnsupportedTokenType) if jwt => {
                if introspector.remember_jwts_refused(now) {
                    tracing::warn!(
                        minutes = JWT_REFUSAL_MEMORY_SECONDS / 60,
                        "the introspection endpoint does not introspect JWTs \
                         (unsupported_token_type): verifying JWTs locally against the \
                         issuers' keys, and asking again after this many minutes"
                    );
                }
                None
            }
            Err(error) => {
                tracing::warn!(%error, "introspection failed");
                Some(Decision::unavailable(
                    UnavailableReason::IntrospectionUnavailable,
                ))
            }
        }
    }

    /// A JWT named a `kid` its issuer's key set does not have: the key set is fetched again
    /// (at most `unknown_kid_wait`), then the JWT decided again; else `decision` stands.
    async fn refetch_and_decide(
        &self,
        request: &AccessRequest,
        decision: Decision,
        index: usize,
        generation: u64,
    ) -> Decision {
        // The fetch runs in its own task so that a Check giving up does not cancel it.
        let keys = Arc::clone(&self.parts.keys);
        let span = ChildSpan::start("certbound.key_refetch");
        if let Some(issuer) = decision.facts.issuer.clone() {
            span.set("certbound.issuer", issuer);
        }
        let refetch =
            tokio::spawn(async move { keys.refetch_unknown_kid(index, generation).await });
        match tokio::time::timeout(self.parts.unknown_kid_wait, refetch).await {
            Ok(Ok(true)) => {
                span.set("certbound.refetched", true);
                self.decide_jwt(request)
            }
            _ => {
                span.set("certbound.refetched", false);
                decision
            }
        }
    }

    /// `active: false` for a JWT that verifies locally: most likely revoked, but some servers
    /// answer so for every JWT (they do not introspect JWTs). The deny stands (an inactive answer
    /// is authoritative); a log line, at most once a minute, says what to look at.
    fn hint_inactive_jwt(&self, request: &AccessRequest, now: i64) {
        let last = self.last_inactive_hint.load(Ordering::Relaxed);
        if now < last.saturating_add(60) {
            return;
        }
        let local = self.decide_jwt(request);
        if matches!(local.outcome, Outcome::Allow(_))
            && self
                .last_inactive_hint
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                issuer = local.facts.issuer.as_deref().unwrap_or_default(),
                "the introspection endpoint answered active=false for a JWT that verifies \
                 locally: it may be revoked, or the server may not introspect JWTs (then set \
                 introspection.introspect_jwts: false); denied"
            );
        }
    }

    /// The near-miss behind a deny (the token's value beside the configured ones), for the
    /// decision log and `explain`; `None` for an allow or a reason that says it all.
    pub fn deny_detail(&self, request: &AccessRequest, decision: &Decision) -> Option<String> {
        self.parts.policy.deny_detail(
            self.parts.keys.as_ref(),
            request,
            decision,
            self.parts.clock.now(),
        )
    }

    fn decide_jwt(&self, request: &AccessRequest) -> Decision {
        let now = self.parts.clock.now();
        self.parts.policy.decide_cached(
            self.parts.keys.as_ref(),
            self.parts.token_cache.as_ref(),
            request,
            now,
        )
    }
}
