//! `certbound explain`: runs the real decision for one token and certificate offline and says,
//! step by step, what it saw: rule, issuer and key, signature, each claim, the binding, the answer.

use std::fmt::Write as _;

use serde_json::Value;

use crate::check::Checker;
use crate::grpc::convert;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use certbound_core::clock::{Clock, SystemClock};
use certbound_core::dpop::{self, DpopPolicy};
use certbound_core::jwa::Algorithm;
use certbound_core::{
    AccessRequest, Authorization, Credential, Decision, DenyReason, Outcome, PeerCertificate,
    Policy, routes, token,
};

/// What to explain.
pub struct ExplainRequest {
    pub token: String,
    /// PEM (or DER) of the client certificate, if any.
    pub certificate: Option<Vec<u8>>,
    pub method: String,
    /// `https` unless a URL said otherwise.
    pub scheme: String,
    pub path: String,
    pub host: String,
    /// A DPoP proof: the token is presented with the `DPoP` scheme.
    pub dpop: Option<String>,
}

/// `(scheme, host[:port], path?query)` of an absolute http(s) URL.
pub fn split_url(url: &str) -> Result<(String, String, String), String> {
    let bad = || format!("--url {url:?} is not an absolute http(s) URL");
    let (scheme, rest) = url.split_once("://").ok_or_else(bad)?;
    let scheme = scheme.to_ascii_lowercase();
    if !matches!(scheme.as_str(), "http" | "https") {
        return Err(bad());
    }
    let split = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (host, path) = rest.split_at(split);
    if host.is_empty() {
        return Err(bad());
    }
    let path = path.split('#').next().unwrap_or_default();
    let path = match path {
        "" => "/".to_owned(),
        p if p.starts_with('?') => format!("/{p}"),
        p => p.to_owned(),
    };
    Ok((scheme, host.to_owned(), path))
}

/// The decision and the report lines.
pub struct Explanation {
    pub decision: Decision,
    pub report: String,
}

impl ExplainRequest {
    /// The request as Envoy would send it: the certificate URL-encoded in the peer field.
    fn access_request(&self) -> AccessRequest {
        let peer_certificate = match &self.certificate {
            None => PeerCertificate::Absent,
            Some(bytes) => {
                let pem = match std::str::from_utf8(bytes) {
                    Ok(text) if text.contains("-----BEGIN") => text.to_owned(),
                    _ => {
                        let b64 = base64::engine::general_purpose::STANDARD.encode(bytes);
                        format!("-----BEGIN CERTIFICATE-----\n{b64}\n-----END CERTIFICATE-----\n")
                    }
                };
                PeerCertificate::UrlEncodedPem(
                    percent_encoding::utf8_percent_encode(&pem, percent_encoding::NON_ALPHANUMERIC)
                        .to_string(),
                )
            }
        };
        let scheme = if self.dpop.is_some() {
            "DPoP"
        } else {
            "Bearer"
        };
        AccessRequest {
            authorization: Authorization::One(format!("{scheme} {}", self.token)),
            peer_certificate,
            method: self.method.clone(),
            path: self.path.clone(),
            host: self.host.clone(),
            scheme: self.scheme.clone(),
            dpop_proofs: self.dpop.iter().cloned().collect(),
            ..Default::default()
        }
    }
}

/// Runs the real check (keys must be loaded) and describes each step. A DPoP proof is checked
/// like any other, except that it is not recorded against replay.
pub async fn explain(checker: &Checker, input: &ExplainRequest) -> Explanation {
    let request = input.access_request();
    let decision = checker.decide(&request).await;
    let policy = checker.policy();
    let mut out = String::new();
    let now = SystemClock.now();
    let _ = writeln!(
        out,
        "request: {} {} (host {:?}, scheme {})",
        input.method, input.path, input.host, input.scheme
    );

    match policy.routes.select(&request) {
        Ok(applied) => {
            let r = &applied.requirements;
            let _ = writeln!(
                out,
                "rule: {} (anonymous: {}, scopes: {:?}, groups: {:?}{}, binding: {:?})",
                applied.rule,
                r.allow_anonymous,
                r.scopes,
                r.groups,
                if r.groups_match_all {
                    " all of"
                } else {
                    " any of"
                },
                r.binding.unwrap_or(policy.binding)
            );
            if let Some(step_up) = &r.step_up {
                let _ = writeln!(
                    out,
                    "step-up (RFC 9470): acr one of {:?}, auth_time within {}",
                    step_up.acr_values,
                    step_up
                        .max_age_seconds
                        .map_or_else(|| "any time".to_owned(), |s| format!("{s} s"))
                );
            }
        }
        Err(reason) => {
            let _ = writeln!(out, "rule: cannot be applied ({})", reason.as_str());
            if reason == DenyReason::PathUnsafe {
                let escaped = policy.routes.escaped_slashes;
                let why = match certbound_core::path::routable(&request.path, escaped) {
                    Err(rejection) => rejection.describe(),
                    Ok(_) => "its ;parameters change the rule for an upstream that drops them",
                };
                let _ = writeln!(out, "path: refused: {why}");
                if let Ok(canonical) = certbound_core::path::canonical(&request.path, escaped)
                    && canonical != request.path.split('?').next().unwrap_or_default()
                {
                    let _ = writeln!(out, "path: its canonical spelling is {canonical:?}");
                }
            }
        }
    }

    if let Some(resource) = &decision.facts.resource {
        let _ = writeln!(
            out,
            "resource: {} (path_prefix {}, metadata at {}); aud must contain one of {:?}",
            resource.id, resource.path_prefix, resource.metadata_url, resource.audiences
        );
    }

    match policy.credential(&request) {
        Ok(Credential::Jwt(token)) => describe_jwt(&mut out, checker, policy, token, now),
        Ok(Credential::Introspect(_)) => {
            let _ = writeln!(
                out,
                "token: not a JWT (or introspect_jwts is on): checked by RFC 7662 introspection"
            );
            if let Some(claims) = &decision.facts.claims {
                let active = claims
                    .get("active")
                    .map(Value::to_string)
                    .unwrap_or_default();
                let _ = writeln!(out, "  introspection: active={active}");
                describe_claims(&mut out, claims, now);
            }
        }
        Err(reason) => {
            let _ = writeln!(out, "token: unusable ({})", reason.as_str());
        }
    }

    if let Some(dpop) = &policy.dpop {
        describe_dpop(&mut out, dpop, &request, &decision, now);
    } else if input.dpop.is_some() {
        let _ = writeln!(
            out,
            "dpop: not enabled in this configuration (dpop.enabled: false)"
        );
    }
    describe_binding(&mut out, policy, &request, &decision);
    if let Some(claims) = &decision.facts.claims {
        let scopes = routes::token_scopes(claims);
        let _ = writeln!(out, "scopes in token: {scopes:?}");
        let groups = routes::token_groups(claims, &policy.routes.groups_claim);
        let _ = writeln!(
            out,
            "groups in token ({}): {groups:?}",
            policy.routes.groups_claim
        );
    }
    let detail = checker.deny_detail(&request, &decision);
    describe_answer(&mut out, &decision, policy, detail.as_deref());
    Explanation {
        decision,
        report: out,
    }
}

fn describe_jwt(out: &mut String, checker: &Checker, policy: &Policy, token: &str, now: i64) {
    let mut claimed = token::Claimed::default();
    let jwt = match token::parse_claimed(token, &mut claimed) {
        Ok(jwt) => jwt,
        Err(reason) => {
            let _ = writeln!(
                out,
                "token: JWT rejected ({}): alg={} kid={} iss={}",
                reason.as_str(),
                claimed.alg.as_deref().unwrap_or("(none)"),
                claimed.kid.as_deref().unwrap_or("(none)"),
                claimed.iss.as_deref().unwrap_or("(none)"),
            );
            if reason == DenyReason::AlgorithmNotAllowed {
                let _ = writeln!(
                    out,
                    "  certbound verifies only {} (never none or HMAC)",
                    Algorithm::ALL.map(Algorithm::as_str).join(", ")
                );
            }
            return;
        }
    };
    let _ = writeln!(
        out,
        "token: JWT alg={} kid={} typ={}",
        jwt.alg,
        jwt.kid.as_deref().unwrap_or("(none)"),
        jwt.typ.as_deref().unwrap_or("(none)")
    );
    let Some(iss) = jwt.issuer().map(str::to_owned) else {
        let _ = writeln!(out, "issuer: no iss claim");
        return;
    };
    let Some(index) = policy.issuers.iter().position(|i| *i.issuer == *iss) else {
        let configured: Vec<&str> = policy.issuers.iter().map(|i| &*i.issuer).collect();
        let _ = writeln!(
            out,
            "issuer: {iss:?} is not a configured issuer (configured: {configured:?})"
        );
        // `iss` is compared exactly: a trailing slash, the scheme or the case makes another issuer.
        if let Some((near, how)) = configured
            .iter()
            .find_map(|c| Some((c, certbound_core::detail::near_miss(&iss, c)?)))
        {
            let _ = writeln!(
                out,
                "  near match: {near:?} differs only by {how}; `iss` must equal the configured \
                 issuer exactly (fix issuers[].issuer, or the IdP's issuer)"
            );
        }
        return;
    };
    let issuer = &policy.issuers[index];
    let _ = writeln!(
        out,
        "issuer: {iss} (configured; audiences {:?}, algorithms [{}])",
        issuer.audiences,
        issuer
            .algorithms
            .iter()
            .map(|a| a.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    if !issuer.algorithms.contains(&jwt.alg) {
        let _ = writeln!(
            out,
            "  alg {} (kid {}) is not among this issuer's algorithms: alg_not_allowed",
            jwt.alg,
            jwt.kid.as_deref().unwrap_or("(none)")
        );
    }
    let keys = certbound_core::KeyLookup::key_set(checker.keys().as_ref(), index);
    let Some(keys) = keys else {
        let _ = writeln!(out, "keys: none loaded for this issuer (IdP unreachable?)");
        return;
    };
    let candidates: Vec<String> = keys
        .candidates(jwt.kid.as_deref(), jwt.alg)
        .map(|k| format!("{}({:?})", k.kid.as_deref().unwrap_or("-"), k.kind))
        .collect();
    let _ = writeln!(
        out,
        "keys: {} loaded; candidates for this kid and alg: {candidates:?}",
        keys.len()
    );
    let claims = jwt.claims.clone();
    let result = jwt.verify(index, issuer, &keys, now, policy.leeway_seconds);
    let signature = match result {
        Err(
            r @ (DenyReason::SignatureInvalid
            | DenyReason::KeyUnknown
            | DenyReason::KeyTypeMismatch
            | DenyReason::AlgorithmNotAllowed
            | DenyReason::TypInvalid),
        ) => format!("not verified ({})", r.as_str()),
        _ => "valid".to_string(),
    };
    let _ = writeln!(out, "signature: {signature}");
    describe_claims(out, &claims, now);
    if let Err(reason) = result {
        let _ = writeln!(out, "token check: failed ({})", reason.as_str());
    } else {
        let _ = writeln!(out, "token check: passed");
    }
}

fn describe_claims(out: &mut String, claims: &serde_json::Map<String, Value>, now: i64) {
    for name in [
        "iss",
        "sub",
        "aud",
        "client_id",
        "scope",
        "acr",
        "auth_time",
    ] {
        if let Some(value) = claims.get(name) {
            let _ = writeln!(out, "  {name}: {value}");
        }
    }
    for name in ["exp", "nbf", "iat"] {
        match claims.get(name).and_then(Value::as_i64) {
            Some(t) => {
                let _ = writeln!(out, "  {name}: {t} (now {:+} s)", t - now);
            }
            None if claims.contains_key(name) => {
                let _ = writeln!(out, "  {name}: not a number");
            }
            None => {
                let _ = writeln!(out, "  {name}: absent");
            }
        }
    }
    match claims.get("cnf") {
        Some(cnf) => {
            let _ = writeln!(out, "  cnf: {cnf}");
        }
        None => {
            let _ = writeln!(out, "  cnf: absent (token not bound)");
        }
    }
}

/// The proof's fields next to what the request says, then the first RFC 9449 step that fails.
fn describe_dpop(
    out: &mut String,
    dpop: &DpopPolicy,
    request: &AccessRequest,
    decision: &Decision,
    now: i64,
) {
    let Some(proof) = request.dpop_proofs.first() else {
        let _ = writeln!(
            out,
            "dpop: no proof given (--dpop); the token is sent as Bearer"
        );
        return;
    };
    let htu = certbound_core::policy::request_htu(dpop, request);
    let token = certbound_core::bearer::credentials(&request.authorization, true)
        .map(|(_, token)| token)
        .unwrap_or_default();
    let _ = writeln!(
        out,
        "dpop: proof of {} bytes; request htm {} htu {}",
        proof.len(),
        request.method,
        htu.as_deref().unwrap_or("(not a valid URL)")
    );
    let decode = |part: Option<&str>| {
        part.and_then(|p| URL_SAFE_NO_PAD.decode(p).ok())
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
    };
    let mut parts = proof.split('.');
    let (header, claims) = (decode(parts.next()), decode(parts.next()));
    if let Some(header) = &header {
        let field = |name: &str| header.get(name).map_or("(none)".into(), Value::to_string);
        let jwk = header.get("jwk").and_then(Value::as_object);
        let _ = writeln!(
            out,
            "  header: typ={} alg={} jwk kty={} crv={} thumbprint={}",
            field("typ"),
            field("alg"),
            jwk.and_then(|j| j.get("kty"))
                .map_or("(none)".into(), Value::to_string),
            jwk.and_then(|j| j.get("crv"))
                .map_or("-".into(), Value::to_string),
            jwk.and_then(dpop::jwk_thumbprint)
                .unwrap_or_else(|| "(none)".into()),
        );
    }
    if let Some(claims) = &claims {
        let field = |name: &str| claims.get(name).map_or("(none)".into(), Value::to_string);
        let _ = writeln!(out, "  htm: {}  htu: {}", field("htm"), field("htu"));
        match claims.get("iat").and_then(Value::as_i64) {
            Some(iat) => {
                let _ = writeln!(
                    out,
                    "  iat: {iat} (now {:+} s; accepted from -{} s to +{} s)",
                    iat - now,
                    dpop.max_age_seconds,
                    dpop.future_seconds
                );
            }
            None => {
                let _ = writeln!(out, "  iat: {}", field("iat"));
            }
        }
        let ath_matches = claims
            .get("ath")
            .and_then(Value::as_str)
            .is_some_and(|a| a == dpop::access_token_hash(token));
        let _ = writeln!(
            out,
            "  ath: {} ({})",
            field("ath"),
            if ath_matches {
                "matches the token"
            } else {
                "does not match the token"
            }
        );
        let _ = writeln!(
            out,
            "  jti: {}  nonce: {}",
            if claims.get("jti").is_some() {
                "present"
            } else {
                "(none)"
            },
            field("nonce")
        );
    }
    if header.is_none() || claims.is_none() {
        let _ = writeln!(out, "  not a compact JWS with JSON header and claims");
    }
    let context = dpop::ProofContext {
        proofs: &request.dpop_proofs,
        method: &request.method,
        htu: htu.as_deref().unwrap_or_default(),
        access_token: token,
        now,
    };
    match dpop.verify_proof(&context) {
        Ok(proof) => {
            let _ = writeln!(out, "proof check: passed (key thumbprint {})", proof.jkt);
        }
        Err(reason) => {
            let _ = writeln!(out, "proof check: failed ({})", reason.as_str());
        }
    }
    let claimed = decision
        .facts
        .claims
        .as_ref()
        .and_then(|c| certbound_core::binding::claimed_jkt(c.get("cnf")));
    match claimed {
        Some(jkt) => {
            let _ = writeln!(out, "token cnf.jkt: {jkt}");
        }
        None => {
            let _ = writeln!(out, "token cnf.jkt: absent (the token is not DPoP-bound)");
        }
    }
    let _ = writeln!(
        out,
        "replay: not checked by explain (the proof's jti is not recorded)"
    );
}

fn describe_binding(
    out: &mut String,
    policy: &Policy,
    request: &AccessRequest,
    decision: &Decision,
) {
    let mut facts = Default::default();
    match policy.client_certificate(request, &mut facts) {
        Ok(Some(thumbprint)) => {
            let _ = writeln!(out, "certificate: x5t#S256 {thumbprint}");
        }
        Ok(None) => {
            let _ = writeln!(out, "certificate: none");
        }
        Err(error) => {
            let _ = writeln!(out, "certificate: unusable ({error})");
        }
    }
    let claimed = decision
        .facts
        .claims
        .as_ref()
        .and_then(|c| c.get("cnf"))
        .map(|cnf| match cnf {
            Value::String(s) => serde_json::from_str::<Value>(s).unwrap_or(Value::Null),
            other => other.clone(),
        })
        .and_then(|cnf| {
            cnf.get("x5t#S256")
                .and_then(Value::as_str)
                .map(str::to_owned)
        });
    if let Some(claimed) = claimed {
        let _ = writeln!(out, "token cnf.x5t#S256: {claimed}");
        let matches = decision
            .facts
            .thumbprint
            .is_some_and(|t| t.matches_x5t_s256(&claimed));
        let _ = writeln!(
            out,
            "binding: {}",
            if matches {
                "certificate matches the token"
            } else {
                "no match"
            }
        );
    }
}

fn describe_answer(out: &mut String, decision: &Decision, policy: &Policy, detail: Option<&str>) {
    let response = convert::check_response(
        decision,
        convert::ResponseOptions {
            reason_header: policy.reason_header,
        },
    );
    let code = response.status.as_ref().map(|s| s.code).unwrap_or_default();
    match &decision.outcome {
        Outcome::Allow(upstream) => {
            let _ = writeln!(
                out,
                "decision: ALLOW (gRPC status {code}); the upstream handler runs"
            );
            for (k, v) in &upstream.set_headers {
                let _ = writeln!(out, "  upstream header {k}: {v}");
            }
            for k in &upstream.remove_headers {
                let _ = writeln!(out, "  upstream header removed: {k}");
            }
        }
        Outcome::Deny(reason) => {
            // The exact bytes the client gets.
            let body = decision
                .http_answer(false)
                .map_or(convert::UNAUTHORIZED_BODY.to_owned(), |answer| {
                    answer.body.into_owned()
                });
            let _ = writeln!(
                out,
                "decision: DENY {} reason {} (gRPC status {code})",
                decision.http_status(),
                reason.as_str()
            );
            if let Some(detail) = detail {
                // What the decision log's `detail` says, on the terminal without control
                // characters (the token's values may carry them).
                let _ = writeln!(out, "  detail: {}", terminal_safe(detail));
            }
            let _ = writeln!(
                out,
                "  www-authenticate: {}",
                decision.challenge().unwrap_or_default()
            );
            let _ = writeln!(out, "  body: {body}");
        }
        Outcome::Metadata(answer) if answer.options => {
            let _ = writeln!(
                out,
                "decision: METADATA 204 (gRPC status {code}): OPTIONS (a CORS preflight) for the \
                 RFC 9728 document of {}, answered without reaching the upstream",
                answer.resource.id
            );
        }
        Outcome::Metadata(answer) => {
            let _ = writeln!(
                out,
                "decision: METADATA 200 (gRPC status {code}): the RFC 9728 document of {}, \
                 answered without reaching the upstream",
                answer.resource.id
            );
            let _ = writeln!(out, "  body: {}", answer.resource.document);
        }
        Outcome::Unavailable(reason) => {
            let _ = writeln!(
                out,
                "decision: UNAVAILABLE 503 reason {} (gRPC status {code})",
                reason.as_str()
            );
            let _ = writeln!(out, "  body: {}", convert::UNAVAILABLE_BODY);
        }
    }
}

/// `text` with control, line-separator and bidi characters escaped (`\u{1b}`), the rest as is.
fn terminal_safe(text: &str) -> String {
    text.chars()
        .map(|c| {
            let hiding = c.is_control()
                || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}')
                || matches!(c, '\u{2066}'..='\u{2069}');
            if hiding {
                c.escape_unicode().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}
