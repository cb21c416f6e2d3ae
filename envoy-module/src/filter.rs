//! One HTTP stream: the request as the core sees it (read from Envoy's headers and the
//! connection's certificate digest), the core's decision, and the answer, the same bytes as the
//! ext_authz service's.

use std::cell::RefCell;
use std::sync::Arc;
use std::time::Instant;

use certbound_core::{
    AccessRequest, Authorization, CertificateSource, Decision, DenyReason, Outcome,
    PeerCertificate, Thumbprint, UnavailableReason,
};

use crate::abi::{
    self, ATTRIBUTE_PEER_CERTIFICATE_SHA256, Level, RequestHeaders, Stream, StreamScheduler,
    StreamWaker,
};
use crate::grpc;
use crate::module::{EVENT_RESUME, FilterConfig, Park, ReplayChecked};
use crate::replay::{EVENT_REPLAY, EVENT_REPLAY_FLUSH};

/// Dynamic metadata namespace (`%DYNAMIC_METADATA(certbound:reason)%` in access logs).
pub const METADATA_NAMESPACE: &str = "certbound";

thread_local! {
    /// The request being checked on this worker: refilled by every stream (each field is
    /// overwritten), so that its strings keep their allocations from one request to the next.
    static REQUEST: RefCell<AccessRequest> = RefCell::new(AccessRequest::default());
}

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
    /// Boxed: rare, and a stream's filter stays small.
    parked: Option<Box<Parked>>,
    replaying: Option<Box<Replaying>>,
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
    pub fn on_request_headers(&mut self, stream: &mut Stream<'_>) -> bool {
        REQUEST.with(|cell| match cell.try_borrow_mut() {
            Ok(mut request) => self.check(stream, &mut request),
            // Not expected (hooks do not nest); correct either way.
            Err(_) => self.check(stream, &mut AccessRequest::default()),
        })
    }

    fn check(&mut self, stream: &mut Stream<'_>, request: &mut AccessRequest) -> bool {
        let started = Instant::now();
        let route_is_ours = match stream.route_settings() {
            Ok(Some(route)) => {
                request.context_extensions.clone_from(&route.extensions);
                true
            }
            Ok(None) => {
                request.context_extensions.clear();
                true
            }
            Err(_) => {
                request.context_extensions.clear();
                false
            }
        };
        read_request(stream, &self.config, request);
        if !route_is_ours {
            // Not ours to read: fail closed rather than drop the route's requirements.
            let decision = Decision::deny(DenyReason::PolicyInvalid);
            return self.answer(stream, request, decision, started);
        }
        let generation = self.config.keys.generation();
        let decision = self.config.decide(request);
        if let (Outcome::Deny(DenyReason::KeyUnknown), Some(index)) =
            (&decision.outcome, decision.facts.issuer_index)
            && let Some(waker) = self.waker(stream)
        {
            match self.config.park_for_refetch(index, generation, waker) {
                Park::Parked(waiter) => {
                    self.parked = Some(Box::new(Parked {
                        request: request.clone(),
                        waiter,
                        started,
                    }));
                    return false;
                }
                Park::DecideAgain => {
                    let decision = self.config.decide(request);
                    return self.answer(stream, request, decision, started);
                }
                Park::No => {}
            }
        }
        self.answer(stream, request, decision, started)
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
                self.replaying = Some(Box::new(Replaying {
                    id,
                    decision,
                    request: request.clone(),
                    started,
                }));
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
        if event == EVENT_REPLAY_FLUSH {
            if let Some(replay) = &self.config.replay {
                replay.flush(self.replaying.as_ref().map(|replaying| replaying.id));
            }
            return;
        }
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

/// The request as the core sees it, written over `request` (every field but the route's
/// `context_extensions`, set by the caller). Only what the policy reads is taken: the headers
/// from one read of all of them, the certificate's digest when the peer's certificate counts.
fn read_request(stream: &mut Stream<'_>, config: &FilterConfig, request: &mut AccessRequest) {
    // Every field is named: a field added to AccessRequest must be filled here (or the build
    // fails on the pattern), never left over from the previous request.
    let AccessRequest {
        authorization,
        peer_certificate,
        xfcc,
        request_id,
        traceparent,
        client_cert,
        certificate_header,
        method,
        path,
        host,
        scheme,
        dpop_proofs,
        forwarded_proto,
        forwarded_host,
        context_extensions: _,
        cors_preflight,
    } = request;
    let policy = &config.policy;
    let sources = &policy.certificate_sources;
    let mut digest = match std::mem::take(peer_certificate) {
        PeerCertificate::Sha256Hex(text) | PeerCertificate::UrlEncodedPem(text) => text,
        PeerCertificate::Absent => String::new(),
    };
    *peer_certificate = if sources.contains(&CertificateSource::Peer)
        && stream.attribute_into(ATTRIBUTE_PEER_CERTIFICATE_SHA256, &mut digest)
        && !digest.is_empty()
    {
        PeerCertificate::Sha256Hex(digest)
    } else {
        PeerCertificate::Absent
    };
    let debug = abi::log_enabled(Level::Debug);
    stream.with_request_headers(|headers| {
        let mut values = headers.values("authorization");
        let next = match (values.next(), values.next()) {
            (None, _) => Authorization::Absent,
            (Some(value), None) => {
                let mut text = match std::mem::take(authorization) {
                    Authorization::One(text) => text,
                    _ => String::new(),
                };
                put(&mut text, value);
                Authorization::One(text)
            }
            (Some(_), Some(_)) => Authorization::Multiple,
        };
        *authorization = next;
        if sources.contains(&CertificateSource::Xfcc) {
            put_joined(xfcc, headers, "x-forwarded-client-cert");
        } else {
            *xfcc = None;
        }
        let wanted = sources.contains(&CertificateSource::ClientCert);
        put_first(
            client_cert,
            wanted.then(|| headers.first("client-cert")).flatten(),
        );
        let header = match &policy.certificate_header {
            Some(header) if sources.contains(&CertificateSource::Header) => {
                headers.first(&header.name)
            }
            _ => None,
        };
        put_first(certificate_header, header);
        put(method, headers.first(":method").unwrap_or_default());
        put(path, headers.first(":path").unwrap_or_default());
        put(host, headers.first(":authority").unwrap_or_default());
        let dpop = policy.dpop.as_deref();
        if dpop.is_some() {
            put(scheme, headers.first(":scheme").unwrap_or_default());
            put_each(dpop_proofs, headers.values("dpop"));
        } else {
            scheme.clear();
            dpop_proofs.clear();
        }
        let trust_forwarded = dpop.is_some_and(|d| d.trust_forwarded_headers);
        put_first(
            forwarded_proto,
            trust_forwarded
                .then(|| headers.first("x-forwarded-proto"))
                .flatten(),
        );
        put_first(
            forwarded_host,
            trust_forwarded
                .then(|| headers.first("x-forwarded-host"))
                .flatten(),
        );
        // Only the debug log reads it.
        put_first(
            request_id,
            debug.then(|| headers.first("x-request-id")).flatten(),
        );
        *traceparent = None;
        *cors_preflight = policy.routes.allow_cors_preflight
            && method.eq_ignore_ascii_case("OPTIONS")
            && headers.contains("origin")
            && headers.contains("access-control-request-method");
    });
}

/// `text` becomes `value` (bytes that are not UTF-8 replaced: a token or certificate with them
/// is invalid anyway), keeping its allocation.
fn put(text: &mut String, value: &[u8]) {
    text.clear();
    match std::str::from_utf8(value) {
        Ok(value) => text.push_str(value),
        Err(_) => text.push_str(&String::from_utf8_lossy(value)),
    }
}

/// A header's first value, or `None`.
fn put_first(slot: &mut Option<String>, value: Option<&[u8]>) {
    match value {
        Some(value) => put(slot.get_or_insert_with(String::new), value),
        None => *slot = None,
    }
}

/// Every value of a header, each one separately.
fn put_each<'a>(slots: &mut Vec<String>, values: impl Iterator<Item = &'a [u8]>) {
    let mut count = 0;
    for value in values {
        match slots.get_mut(count) {
            Some(slot) => put(slot, value),
            None => {
                let mut text = String::new();
                put(&mut text, value);
                slots.push(text);
            }
        }
        count += 1;
    }
    slots.truncate(count);
}

/// Every value of a header joined with `,` (as a proxy would fold them), or `None`.
fn put_joined(slot: &mut Option<String>, headers: &RequestHeaders<'_>, name: &str) {
    let mut values = headers.values(name).peekable();
    if values.peek().is_none() {
        *slot = None;
        return;
    }
    let text = slot.get_or_insert_with(String::new);
    text.clear();
    for (i, value) in values.enumerate() {
        if i > 0 {
            text.push(',');
        }
        text.push_str(&String::from_utf8_lossy(value));
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
    if !config.dynamic_metadata.is_empty() {
        let fields = config.dynamic_metadata.select(decision.metadata_fields());
        stream.set_metadata(METADATA_NAMESPACE, fields);
    }
    if let Some(id) = config.counters.checks
        && !config.count_check(decision)
    {
        stream.increment_counter(id, [decision.outcome_name(), decision.reason()]);
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
