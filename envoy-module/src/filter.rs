//! One HTTP stream: the request as the core sees it (read from Envoy's headers and the
//! connection's certificate digest), the core's decision, and the answer, the same bytes as the
//! ext_authz service's.

use std::sync::Arc;
use std::time::Instant;

use certbound_core::{
    AccessRequest, Authorization, CertificateSource, Decision, DenyReason, Outcome,
    PeerCertificate, Thumbprint, UnavailableReason,
};

use crate::abi::{
    self, ATTRIBUTE_PEER_CERTIFICATE_SHA256, Level, Stream, StreamScheduler, StreamWaker,
};
use crate::grpc;
use crate::module::{EVENT_RESUME, FilterConfig, Park, ReplayChecked, RouteSettings};
use crate::replay::EVENT_REPLAY;

/// Dynamic metadata namespace (`%DYNAMIC_METADATA(certbound:reason)%` in access logs).
pub const METADATA_NAMESPACE: &str = "certbound";

/// A request waiting for an unknown-`kid` refetch.
struct Parked {
    request: AccessRequest,
    waiter: u64,
    started: Instant,
}

/// An allowed request waiting for the shared replay store (Redis) to record its DPoP proof.
struct Replaying {
    id: u64,
    decision: Decision,
    request: AccessRequest,
    started: Instant,
}

/// This module's state for one stream.
pub struct Filter {
    config: Arc<FilterConfig>,
    parked: Option<Parked>,
    replaying: Option<Replaying>,
    /// Kept until the stream ends once created (deleting it inside its own event is avoided).
    scheduler: Option<StreamScheduler>,
    /// Headers an allow adds to the client's response (a fresh `DPoP-Nonce`).
    response_headers: Vec<(String, String)>,
    /// Set only by an allow: until then no byte of the request (body, trailers) may pass.
    allowed: bool,
}

impl Filter {
    pub fn new(config: Arc<FilterConfig>) -> Self {
        Self {
            config,
            parked: None,
            replaying: None,
            scheduler: None,
            response_headers: Vec::new(),
            allowed: false,
        }
    }

    /// Whether the request's body and trailers may go on: only after an allow. While the decision
    /// waits (a key refetch), and after a refusal or a caught panic, they are held (Envoy buffers
    /// them up to its limit, then stops reading from the client until the decision).
    pub fn request_may_pass(&self) -> bool {
        self.allowed
    }

    /// Decides the request; `true` lets it continue to the upstream, `false` stops it (answered,
    /// or parked until an unknown-`kid` refetch ends).
    pub fn on_request_headers(&mut self, stream: &Stream<'_>) -> bool {
        let started = Instant::now();
        let Ok(route) = stream.route_settings() else {
            // Not ours to read: fail closed rather than drop the route's requirements.
            let request = read_request(stream, &self.config, None);
            let decision = Decision::deny(DenyReason::PolicyInvalid);
            return self.answer(stream, &request, decision, started);
        };
        let request = read_request(stream, &self.config, route);
        let generation = self.config.keys.generation();
        let decision = self.config.decide(&request);
        if let (Outcome::Deny(DenyReason::KeyUnknown), Some(index)) =
            (&decision.outcome, decision.facts.issuer_index)
            && let Some(waker) = self.waker(stream)
        {
            match self.config.park_for_refetch(index, generation, waker) {
                Park::Parked(waiter) => {
                    self.parked = Some(Parked {
                        request,
                        waiter,
                        started,
                    });
                    return false;
                }
                Park::DecideAgain => {
                    let decision = self.config.decide(&request);
                    return self.answer(stream, &request, decision, started);
                }
                Park::No => {}
            }
        }
        self.answer(stream, &request, decision, started)
    }

    /// Records an allowed request's DPoP proof against replay, then answers; `false` also while
    /// the shared store (Redis) has not answered yet (the stream waits for its event).
    fn answer(
        &mut self,
        stream: &Stream<'_>,
        request: &AccessRequest,
        decision: Decision,
        started: Instant,
    ) -> bool {
        let config = Arc::clone(&self.config);
        match config.check_replay(decision, || self.waker(stream)) {
            ReplayChecked::Final(decision) => self.deliver(stream, request, &decision, started),
            ReplayChecked::Waiting(id, decision) => {
                self.replaying = Some(Replaying {
                    id,
                    decision,
                    request: request.clone(),
                    started,
                });
                false
            }
        }
    }

    /// Applies a final decision: `true` lets the request continue.
    fn deliver(
        &mut self,
        stream: &Stream<'_>,
        request: &AccessRequest,
        decision: &Decision,
        started: Instant,
    ) -> bool {
        if let Outcome::Allow(upstream) = &decision.outcome {
            self.response_headers.clone_from(&upstream.response_headers);
        }
        self.allowed = answer(stream, &self.config, request, decision, started);
        self.allowed
    }

    /// A waker for this stream's scheduler (made once, kept until the stream ends).
    fn waker(&mut self, stream: &Stream<'_>) -> Option<StreamWaker> {
        if self.scheduler.is_none() {
            self.scheduler = stream.scheduler();
        }
        self.scheduler.as_ref().map(StreamScheduler::waker)
    }

    /// The upstream answered: add what the allow asked for (a fresh `DPoP-Nonce`).
    pub fn on_response_headers(&mut self, stream: &Stream<'_>) {
        for (name, value) in self.response_headers.drain(..) {
            stream.set_response_header(&name, &value);
        }
    }

    /// The refetch this stream waited for ended, or its wait is over: decide again with the keys
    /// there are now, and answer or resume.
    pub fn on_scheduled(&mut self, stream: &Stream<'_>, event: u64) {
        if event == EVENT_REPLAY {
            let Some(replaying) = self.replaying.take() else {
                return;
            };
            match self
                .config
                .replay_answered(replaying.id, &replaying.decision)
            {
                Some(decision) => {
                    if self.deliver(stream, &replaying.request, &decision, replaying.started) {
                        stream.continue_decoding();
                    }
                }
                // Not in yet: keep waiting.
                None => self.replaying = Some(replaying),
            }
            return;
        }
        if event != EVENT_RESUME {
            return;
        }
        let Some(parked) = self.parked.take() else {
            return;
        };
        self.config.unpark(parked.waiter);
        let decision = self.config.decide(&parked.request);
        if self.answer(stream, &parked.request, decision, parked.started) {
            stream.continue_decoding();
        }
    }

    /// The stream is gone: a parked request stops waiting before its scheduler is deleted.
    pub fn destroy(self) {
        if let Some(parked) = &self.parked {
            self.config.unpark(parked.waiter);
        }
        if let (Some(replaying), Some(replay)) = (&self.replaying, &self.config.replay) {
            replay.forget(replaying.id);
        }
        drop(self.scheduler);
    }
}

/// The request as the core sees it. Only what the policy reads is fetched from Envoy.
fn read_request(
    stream: &Stream<'_>,
    config: &FilterConfig,
    route: Option<&RouteSettings>,
) -> AccessRequest {
    let first = |name: &str| stream.request_header(name).into_iter().next();
    let mut authorization = stream.request_header("authorization");
    let authorization = match authorization.len() {
        0 => Authorization::Absent,
        1 => Authorization::One(authorization.swap_remove(0)),
        _ => Authorization::Multiple,
    };
    let sources = &config.policy.certificate_sources;
    let peer_certificate = if sources.contains(&CertificateSource::Peer) {
        match stream.attribute(ATTRIBUTE_PEER_CERTIFICATE_SHA256) {
            Some(hex) if !hex.is_empty() => PeerCertificate::Sha256Hex(hex),
            _ => PeerCertificate::Absent,
        }
    } else {
        PeerCertificate::Absent
    };
    let xfcc = if sources.contains(&CertificateSource::Xfcc) {
        let values = stream.request_header("x-forwarded-client-cert");
        (!values.is_empty()).then(|| values.join(","))
    } else {
        None
    };
    let client_cert = if sources.contains(&CertificateSource::ClientCert) {
        first("client-cert")
    } else {
        None
    };
    let certificate_header = match &config.policy.certificate_header {
        Some(header) if sources.contains(&CertificateSource::Header) => first(&header.name),
        _ => None,
    };
    let method = first(":method").unwrap_or_default();
    let dpop = config.policy.dpop.as_deref();
    let dpop_proofs = match dpop {
        Some(_) => stream.request_header("dpop"),
        None => Vec::new(),
    };
    let forwarded = |name| {
        if dpop.is_some_and(|d| d.trust_forwarded_headers) {
            first(name)
        } else {
            None
        }
    };
    let cors_preflight = config.policy.routes.allow_cors_preflight
        && method.eq_ignore_ascii_case("OPTIONS")
        && first("origin").is_some()
        && first("access-control-request-method").is_some();
    AccessRequest {
        authorization,
        peer_certificate,
        xfcc,
        // Only the debug log reads it.
        request_id: abi::log_enabled(Level::Debug)
            .then(|| first("x-request-id"))
            .flatten(),
        traceparent: None,
        client_cert,
        certificate_header,
        method,
        path: first(":path").unwrap_or_default(),
        host: first(":authority").unwrap_or_default(),
        scheme: if dpop.is_some() {
            first(":scheme").unwrap_or_default()
        } else {
            String::new()
        },
        dpop_proofs,
        forwarded_proto: forwarded("x-forwarded-proto"),
        forwarded_host: forwarded("x-forwarded-host"),
        context_extensions: route
            .map(|route| route.extensions.clone())
            .unwrap_or_default(),
        cors_preflight,
    }
}

/// Applies the decision: an allow sets the upstream's headers and continues (`true`); anything
/// else answers the client now (`false`). Metadata and counters either way.
fn answer(
    stream: &Stream<'_>,
    config: &FilterConfig,
    request: &AccessRequest,
    decision: &Decision,
    started: Instant,
) -> bool {
    stream.set_metadata(METADATA_NAMESPACE, &decision.metadata());
    if let Some(id) = config.counters.checks {
        stream.increment_counter(id, &[decision.outcome_name(), decision.reason()]);
    }
    log_decision(config, request, decision, started);
    match &decision.outcome {
        Outcome::Allow(upstream) => {
            for name in &upstream.remove_headers {
                stream.remove_request_header(name);
            }
            for (name, value) in &upstream.set_headers {
                stream.set_request_header(name, value);
            }
            true
        }
        // A refusal, or a resource's metadata document: answered here, never passed upstream.
        Outcome::Deny(_) | Outcome::Unavailable(_) | Outcome::Metadata(_) => {
            match decision.http_answer(config.policy.reason_header) {
                Some(refusal) => {
                    let headers: Vec<(&str, &str)> = refusal
                        .headers
                        .iter()
                        .map(|(name, value)| (*name, value.as_str()))
                        .collect();
                    let details = format!("certbound_{}", decision.reason());
                    refuse(stream, refusal.status, &headers, &refusal.body, &details);
                }
                None => answer_internal_error(stream),
            }
            false
        }
    }
}

/// A check that could not be completed (a panic was caught): 503, never an allow.
pub fn answer_internal_error(stream: &Stream<'_>) {
    let decision = Decision::unavailable(UnavailableReason::KeysUnavailable);
    let answer = decision.http_answer(false);
    let (status, body) = answer
        .as_ref()
        .map_or((503, certbound_core::answer::UNAVAILABLE_BODY), |a| {
            (a.status, a.body.as_ref())
        });
    refuse(
        stream,
        status,
        &[("content-type", "application/json")],
        body,
        "certbound_internal_error",
    );
}

/// Sends a refusal: a local reply, or for a gRPC request a gRPC error with the same headers
/// (the client must never read `grpc-status: 0`).
fn refuse(stream: &Stream<'_>, status: u16, headers: &[(&str, &str)], body: &str, details: &str) {
    let content_type = stream.request_header("content-type");
    if content_type.first().is_some_and(|t| grpc::is_grpc(t)) {
        stream.send_grpc_refusal(grpc::status_for(status), headers, body);
    } else {
        stream.send_response(status, headers, body, details);
    }
}

/// One debug line per decision (Envoy's access log is the per-request record). Never the token,
/// the certificate or a secret; the path without its query. A deny's `detail` is the near-miss
/// (the token's value beside the configured ones), as in the service's decision log.
fn log_decision(
    config: &FilterConfig,
    request: &AccessRequest,
    decision: &Decision,
    started: Instant,
) {
    if !abi::log_enabled(Level::Debug) {
        return;
    }
    let now = certbound_core::clock::Clock::now(&certbound_core::clock::SystemClock);
    let detail = config
        .policy
        .deny_detail(&config.keys, request, decision, now);
    let facts = &decision.facts;
    let field = |value: Option<&str>| format!("{:?}", value.unwrap_or(""));
    abi::log(
        Level::Debug,
        &format!(
            "certbound: decision={} reason={} rule={} issuer={} kid={} alg={} sub={} x5t={} request_id={} method={:?} path={:?} detail={} latency_us={}",
            decision.outcome_name(),
            decision.reason(),
            field(facts.rule.as_deref()),
            field(facts.issuer.as_deref()),
            field(facts.kid.as_deref()),
            field(facts.alg.as_deref()),
            field(facts.claim_str("sub")),
            field(facts.thumbprint.as_ref().map(Thumbprint::as_base64url)),
            field(request.request_id.as_deref()),
            request.method,
            request.path.split('?').next().unwrap_or_default(),
            field(detail.as_deref()),
            started.elapsed().as_micros()
        ),
    );
}
