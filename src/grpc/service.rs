//! `envoy.service.auth.v3.Authorization/Check`.

use std::sync::Arc;
use std::time::Instant;

use tonic::{Request, Response, Status};

use super::convert;
use super::pb::envoy::service::auth::v3::authorization_server::Authorization;
use super::pb::envoy::service::auth::v3::{CheckRequest, CheckResponse};
use crate::authz::{AccessRequest, Decision, Outcome};
use crate::check::Checker;

/// The ext_authz gRPC service over a shared [`Checker`].
#[derive(Clone)]
pub struct AuthorizationService {
    checker: Arc<Checker>,
    options: convert::ResponseOptions,
}

impl AuthorizationService {
    pub fn new(checker: Arc<Checker>) -> Self {
        let options = convert::ResponseOptions {
            reason_header: checker.policy().reason_header,
        };
        Self { checker, options }
    }
}

#[tonic::async_trait]
impl Authorization for AuthorizationService {
    async fn check(
        &self,
        request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        let started = Instant::now();
        let (decision, access) = match convert::access_request(request.into_inner()) {
            Ok(access) => (self.checker.check(&access).await, Some(access)),
            Err(reason) => (Decision::deny(reason), None),
        };
        log_decision(&decision, access.as_ref(), started);
        Ok(Response::new(convert::check_response(
            &decision,
            self.options,
        )))
    }
}

/// One line per decision. Never the token, the certificate or a secret.
fn log_decision(decision: &Decision, request: Option<&AccessRequest>, started: Instant) {
    let facts = &decision.facts;
    let outcome = match decision.outcome {
        Outcome::Allow(_) => "allow",
        Outcome::Deny(_) => "deny",
        Outcome::Unavailable(_) => "unavailable",
    };
    let thumbprint = facts.thumbprint.map(|t| t.to_base64url());
    tracing::info!(
        target: "certbound::decision",
        decision = outcome,
        reason = decision.reason(),
        rule = facts.rule.as_deref(),
        issuer = facts.issuer.as_deref(),
        kid = facts.kid.as_deref(),
        sub = facts.claim_str("sub"),
        client_id = facts.claim_str("client_id"),
        x5t = thumbprint.as_deref(),
        request_id = request.and_then(|r| r.request_id.as_deref()),
        method = request.map(|r| r.method.as_str()),
        // Without the query: it may carry an access_token (RFC 6750 §2.3).
        path = request.map(|r| r.path.split('?').next().unwrap_or_default()),
        latency_us = started.elapsed().as_micros() as u64,
        "check"
    );
}
