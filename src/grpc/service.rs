//! `envoy.service.auth.v3.Authorization/Check`.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::convert;
use super::pb::envoy::service::auth::v3::authorization_server::Authorization;
use super::pb::envoy::service::auth::v3::{CheckRequest, CheckResponse};
use crate::answer_gate::AnswerGate;
use crate::authorize::Authorizer;
use crate::telemetry;

/// The ext_authz gRPC service over the Check use case.
#[derive(Clone)]
pub struct AuthorizationService {
    authorizer: Authorizer,
    gate: Option<Arc<AnswerGate>>,
}

impl AuthorizationService {
    pub fn new(authorizer: Authorizer) -> Self {
        Self {
            authorizer,
            gate: None,
        }
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
        let parent = telemetry::enabled()
            .then(|| trace_parent(&request))
            .flatten();
        let request = request.into_inner();
        let authorized = self
            .authorizer
            .authorize(
                |policy| {
                    if convert::carries_an_alias(&request, policy) {
                        return Err(certbound_core::DenyReason::RequestInvalid);
                    }
                    let header = policy.certificate_header.as_ref().map(|h| h.name.as_str());
                    convert::access_request(request, header)
                },
                self.gate.as_deref(),
                parent,
            )
            .await;
        let options = convert::ResponseOptions {
            reason_header: authorized.reason_header,
        };
        Ok(Response::new(convert::check_response(
            &authorized.decision,
            options,
        )))
    }
}

/// The caller's trace: the Check call's own metadata (Envoy's ext_authz span, when Envoy traces),
/// else the checked request's headers. Each is looked into only when one pass over its names
/// finds a trace header ([`telemetry::may_have_parent`]).
fn trace_parent(request: &Request<CheckRequest>) -> Option<opentelemetry::Context> {
    let metadata = request.metadata();
    let names = metadata.keys().filter_map(|key| match key {
        tonic::metadata::KeyRef::Ascii(key) => Some(key.as_str()),
        tonic::metadata::KeyRef::Binary(_) => None,
    });
    telemetry::may_have_parent(names)
        .then(|| {
            telemetry::parent(|name| {
                metadata
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
            })
        })
        .flatten()
        .or_else(|| {
            let headers = &request
                .get_ref()
                .attributes
                .as_ref()?
                .request
                .as_ref()?
                .http
                .as_ref()?
                .headers;
            telemetry::may_have_parent(headers.keys().map(String::as_str))
                .then(|| telemetry::parent(|name| headers.get(name).cloned()))
                .flatten()
        })
}
