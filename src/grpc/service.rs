//! `envoy.service.auth.v3.Authorization/Check`.

use std::sync::Arc;
use std::time::Instant;

use tonic::{Request, Response, Status};

use super::pb::envoy::service::auth::v3::authorization_server::Authorization;
use super::pb::envoy::service::auth::v3::{CheckRequest, CheckResponse};
use super::{AnswerGate, convert};
use crate::decision_log;
use crate::server::App;
use certbound_core::{AccessRequest, Decision, Thumbprint, UnavailableReason};

/// The ext_authz gRPC service over the running [`App`].
#[derive(Clone)]
pub struct AuthorizationService {
    app: Arc<App>,
    gate: Option<Arc<AnswerGate>>,
}

impl AuthorizationService {
    pub fn new(app: Arc<App>) -> Self {
        Self { app, gate: None }
    }

    /// Orders expensive Checks behind the writing of earlier answers (single-threaded runtime;
    /// see [`AnswerGate`]).
    pub fn with_gate(self, gate: Option<Arc<AnswerGate>>) -> Self {
        Self { gate, ..self }
    }
}

#[tonic::async_trait]
impl Authorization for AuthorizationService {
    async fn check(
        &self,
        request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        let started = Instant::now();
        let metrics = self.app.metrics();
        let checker = self.app.checker();
        let (decision, access) = match self.app.limiter.try_acquire() {
            // Shed load at once rather than queue: Envoy's timeout would only make it worse.
            Err(_) => (Decision::unavailable(UnavailableReason::Overloaded), None),
            Ok(_permit) => match convert::access_request(request.into_inner()) {
                Ok(access) => {
                    metrics.checks_in_flight.inc();
                    if let Some(gate) = &self.gate {
                        gate.enter().await;
                    }
                    let decision = checker.check(&access).await;
                    if let Some(gate) = &self.gate {
                        gate.leave(decision.facts.signature_checked);
                    }
                    metrics.checks_in_flight.dec();
                    (decision, Some(access))
                }
                Err(reason) => (Decision::deny(reason), None),
            },
        };
        let elapsed = started.elapsed();
        metrics.record_check(&decision, elapsed.as_secs_f64());
        if let Some(hit) = decision.facts.token_cache {
            crate::metrics::Metrics::count(&metrics.token_cache, if hit { "hit" } else { "miss" });
        }
        log_decision(&decision, access.as_ref(), elapsed.as_micros() as u64);
        let options = convert::ResponseOptions {
            reason_header: checker.policy().reason_header,
        };
        Ok(Response::new(convert::check_response(&decision, options)))
    }
}

/// One line per decision. Never the token, the certificate or a secret.
fn log_decision(decision: &Decision, request: Option<&AccessRequest>, latency_us: u64) {
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
        latency_us,
    });
}
