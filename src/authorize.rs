//! The Check use case as every adapter calls it: admission under `limits.max_concurrent_checks`,
//! the decision by the checker in force (swapped on reload), then the metrics and the decision
//! log. The gRPC adapter and the HTTP authorization adapter are handed an [`Authorizer`] by the
//! composition root; neither reaches into the root.

use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use opentelemetry::context::FutureExt as _;
use tokio::sync::Semaphore;

use crate::answer_gate::AnswerGate;
use crate::check::Checker;
use crate::decision_log;
use crate::metrics::Metrics;
use crate::telemetry;
use certbound_core::{AccessRequest, Decision, DenyReason, Policy, Thumbprint, UnavailableReason};

/// Decides checks for an adapter; cheap to clone.
#[derive(Clone)]
pub struct Authorizer {
    checker: Arc<ArcSwap<Checker>>,
    /// Bounds concurrent checks across adapters.
    limiter: Arc<Semaphore>,
    metrics: Arc<Metrics>,
}

/// One check's outcome, with what the adapter needs to shape its answer.
pub struct Authorized {
    pub decision: Decision,
    /// `policy.reason_header` of the configuration that decided.
    pub reason_header: bool,
}

impl Authorizer {
    pub fn new(
        checker: Arc<ArcSwap<Checker>>,
        max_concurrent_checks: usize,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            checker,
            limiter: Arc::new(Semaphore::new(max_concurrent_checks)),
            metrics,
        }
    }

    /// Decides one request. `convert` builds it from what the adapter received, under the policy
    /// in force (it names the certificate header, for one); its error is the denial. `gate`
    /// orders expensive checks behind the writing of earlier answers (see [`AnswerGate`]).
    ///
    /// With traces on, the check is a span, a child of `parent` (the caller's trace context).
    pub async fn authorize(
        &self,
        convert: impl FnOnce(&Policy) -> Result<AccessRequest, DenyReason>,
        gate: Option<&AnswerGate>,
        parent: Option<opentelemetry::Context>,
    ) -> Authorized {
        match telemetry::check_span(parent) {
            None => self.decide(convert, gate).await,
            Some(cx) => {
                let authorized = self.decide(convert, gate).with_context(cx.clone()).await;
                telemetry::record(&cx, &authorized.decision);
                authorized
            }
        }
    }

    async fn decide(
        &self,
        convert: impl FnOnce(&Policy) -> Result<AccessRequest, DenyReason>,
        gate: Option<&AnswerGate>,
    ) -> Authorized {
        let started = Instant::now();
        let checker = self.checker.load_full();
        let (decision, access) = match self.limiter.try_acquire() {
            // Shed load at once rather than queue: the proxy's timeout would only make it worse.
            Err(_) => (Decision::unavailable(UnavailableReason::Overloaded), None),
            Ok(_permit) => match convert(checker.policy()) {
                Ok(access) => {
                    self.metrics.checks_in_flight.inc();
                    // Boxed, and only when closed: the wait's timer would otherwise be part
                    // of every check's future (which each layer of a Check copies).
                    if let Some(gate) = gate.filter(|gate| gate.is_closed()) {
                        Box::pin(gate.enter()).await;
                    }
                    let decision = checker.check(&access).await;
                    if let Some(gate) = gate {
                        gate.leave(decision.facts.signature_checked);
                    }
                    self.metrics.checks_in_flight.dec();
                    (decision, Some(access))
                }
                Err(reason) => (Decision::deny(reason), None),
            },
        };
        let elapsed = started.elapsed();
        // The configured issuer (by index), never the token's own claim: bounded labels.
        let issuer = decision
            .facts
            .issuer_index
            .and_then(|i| checker.policy().issuers.get(i))
            .map_or("", |p| &*p.issuer);
        self.metrics
            .record_check(&decision, elapsed.as_secs_f64(), issuer);
        if let Some(hit) = decision.facts.token_cache {
            Metrics::count(&self.metrics.token_cache, if hit { "hit" } else { "miss" });
        }
        // Only for a deny: what the token said beside what is configured (bounded, no token).
        let detail = access
            .as_ref()
            .filter(|_| decision_log::enabled())
            .and_then(|access| checker.deny_detail(access, &decision));
        log_decision(
            &decision,
            access.as_ref(),
            detail.as_deref(),
            elapsed.as_micros() as u64,
        );
        Authorized {
            decision,
            reason_header: checker.policy().reason_header,
        }
    }
}

/// One line per decision. Never the token, the certificate or a secret.
fn log_decision(
    decision: &Decision,
    request: Option<&AccessRequest>,
    detail: Option<&str>,
    latency_us: u64,
) {
    let facts = &decision.facts;
    decision_log::log(&decision_log::Line {
        decision: decision.outcome_name(),
        reason: decision.reason(),
        rule: facts.rule.as_deref(),
        issuer: facts.issuer.as_deref(),
        kid: facts.kid.as_deref(),
        alg: facts.alg.as_deref(),
        sub: facts.claim_str("sub"),
        client_id: facts.claim_str("client_id"),
        x5t: facts.thumbprint.as_ref().map(Thumbprint::as_base64url),
        request_id: request.and_then(|r| r.request_id.as_deref()),
        traceparent: request.and_then(|r| r.traceparent.as_deref()),
        method: request.map(|r| r.method.as_str()),
        // Without the query: it may carry an access_token (RFC 6750 §2.3).
        path: request.map(|r| r.path.split('?').next().unwrap_or_default()),
        detail,
        latency_us,
    });
}
