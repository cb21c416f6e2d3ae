//! The decision core: pure and synchronous over a key snapshot, with the clock passed in.
//!
//! It knows bearer parsing, certificates and thumbprints, XFCC, JWT verification, the `cnf`
//! binding and what an allow sends upstream. It never names tonic, prost, reqwest or sockets.

pub mod bearer;
pub mod binding;
pub mod certificate;
pub mod token;
pub mod xfcc;

use std::sync::Arc;

use serde::Deserialize;
use serde_json::{Map, Value};

pub use bearer::Authorization;
pub use binding::{BindingMode, CertificateOutcome};
pub use certificate::Thumbprint;
pub use token::{IssuerPolicy, VerifiedToken};

use crate::keys::KeySet;

/// Where a client certificate may be read from, in the configured order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CertificateSource {
    /// `attributes.source.certificate` (needs `include_peer_certificate: true` in Envoy).
    Peer,
    /// `Cert=` (or `Hash=`) of the last `x-forwarded-client-cert` element; trust it only behind
    /// a proxy that sanitizes the header.
    Xfcc,
}

/// The request as the core sees it: converted once from Envoy's `CheckRequest`.
#[derive(Clone, Debug, Default)]
pub struct AccessRequest {
    pub authorization: Authorization,
    /// URL-encoded PEM of the peer's leaf certificate; empty when there was none.
    pub peer_certificate: String,
    /// The `x-forwarded-client-cert` header, if sent.
    pub xfcc: Option<String>,
    /// `x-request-id`, for logs.
    pub request_id: Option<String>,
    pub method: String,
    pub path: String,
    pub host: String,
}

/// Why a request was denied: stable, machine-readable, used in logs, metrics and metadata.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DenyReason {
    /// Envoy sent no HTTP attributes.
    RequestInvalid,
    TokenMissing,
    AuthorizationDuplicate,
    TokenTooLarge,
    TokenMalformed,
    AlgorithmNotAllowed,
    CritUnsupported,
    TypInvalid,
    IssuerUnknown,
    /// Introspection said `active: false`.
    TokenInactive,
    KeyUnknown,
    KeyTypeMismatch,
    SignatureInvalid,
    ClaimsInvalid,
    TokenExpired,
    TokenNotYetValid,
    TokenIssuedInFuture,
    AudienceMismatch,
    CertMissing,
    CertInvalid,
    CnfMissing,
    CnfInvalid,
    X5tMissing,
    BindingMismatch,
}

impl DenyReason {
    pub const ALL: [DenyReason; 24] = {
        use DenyReason::*;
        [
            RequestInvalid,
            TokenMissing,
            AuthorizationDuplicate,
            TokenTooLarge,
            TokenMalformed,
            AlgorithmNotAllowed,
            CritUnsupported,
            TypInvalid,
            IssuerUnknown,
            TokenInactive,
            KeyUnknown,
            KeyTypeMismatch,
            SignatureInvalid,
            ClaimsInvalid,
            TokenExpired,
            TokenNotYetValid,
            TokenIssuedInFuture,
            AudienceMismatch,
            CertMissing,
            CertInvalid,
            CnfMissing,
            CnfInvalid,
            X5tMissing,
            BindingMismatch,
        ]
    };

    pub fn as_str(self) -> &'static str {
        use DenyReason::*;
        match self {
            RequestInvalid => "request_invalid",
            TokenMissing => "token_missing",
            AuthorizationDuplicate => "authorization_duplicate",
            TokenTooLarge => "token_too_large",
            TokenMalformed => "token_malformed",
            AlgorithmNotAllowed => "alg_not_allowed",
            CritUnsupported => "crit_unsupported",
            TypInvalid => "typ_invalid",
            IssuerUnknown => "issuer_unknown",
            TokenInactive => "token_inactive",
            KeyUnknown => "key_unknown",
            KeyTypeMismatch => "key_type_mismatch",
            SignatureInvalid => "signature_invalid",
            ClaimsInvalid => "claims_invalid",
            TokenExpired => "token_expired",
            TokenNotYetValid => "token_not_yet_valid",
            TokenIssuedInFuture => "token_issued_in_future",
            AudienceMismatch => "audience_mismatch",
            CertMissing => "cert_missing",
            CertInvalid => "cert_invalid",
            CnfMissing => "cnf_missing",
            CnfInvalid => "cnf_invalid",
            X5tMissing => "x5t_missing",
            BindingMismatch => "binding_mismatch",
        }
    }

    /// Whether the client sent no bearer token at all: RFC 6750 §3 then gives no error code.
    pub fn is_missing_credentials(self) -> bool {
        matches!(self, DenyReason::TokenMissing | DenyReason::RequestInvalid)
    }
}

/// Why no decision could be made: the response is 503 and Envoy's failure mode applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UnavailableReason {
    /// The issuer's keys are not loaded, or older than `keys.max_stale_seconds`.
    KeysUnavailable,
    /// The introspection endpoint could not give an answer.
    IntrospectionUnavailable,
}

impl UnavailableReason {
    pub fn as_str(self) -> &'static str {
        match self {
            UnavailableReason::KeysUnavailable => "keys_unavailable",
            UnavailableReason::IntrospectionUnavailable => "introspection_unavailable",
        }
    }
}

/// What an allowed request carries to the upstream.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Upstream {
    /// Headers to set, overwriting anything the client sent under these names.
    pub set_headers: Vec<(String, String)>,
    /// Headers to strip: mapped headers whose claim is absent (so a client cannot supply them),
    /// and `authorization` when configured.
    pub remove_headers: Vec<String>,
}

/// The outcome of one check.
#[derive(Clone, Debug)]
pub enum Outcome {
    Allow(Upstream),
    Deny(DenyReason),
    Unavailable(UnavailableReason),
}

/// What was learnt while deciding, for logs, metadata and the upstream.
#[derive(Clone, Debug, Default)]
pub struct Facts {
    /// Index of the token's issuer in the configuration.
    pub issuer_index: Option<usize>,
    pub issuer: Option<String>,
    pub kid: Option<String>,
    /// Verified claims (only after the signature checked out).
    pub claims: Option<Arc<Map<String, Value>>>,
    pub thumbprint: Option<Thumbprint>,
    pub certificate_source: Option<CertificateSource>,
}

impl Facts {
    pub fn claim_str(&self, name: &str) -> Option<&str> {
        self.claims.as_ref()?.get(name)?.as_str()
    }
}

/// A decision: the outcome and the facts behind it.
#[derive(Clone, Debug)]
pub struct Decision {
    pub outcome: Outcome,
    pub facts: Facts,
}

impl Decision {
    pub fn deny(reason: DenyReason) -> Self {
        Self {
            outcome: Outcome::Deny(reason),
            facts: Facts::default(),
        }
    }

    pub fn unavailable(reason: UnavailableReason) -> Self {
        Self {
            outcome: Outcome::Unavailable(reason),
            facts: Facts::default(),
        }
    }

    /// The stable reason code of a deny or unavailable outcome, `"ok"` for an allow.
    pub fn reason(&self) -> &'static str {
        match &self.outcome {
            Outcome::Allow(_) => "ok",
            Outcome::Deny(reason) => reason.as_str(),
            Outcome::Unavailable(reason) => reason.as_str(),
        }
    }
}

/// What to forward upstream on an allow.
#[derive(Clone, Debug, Default)]
pub struct UpstreamPolicy {
    /// (claim, header) pairs; header names lower-case.
    pub claim_headers: Vec<(String, String)>,
    pub remove_authorization: bool,
}

/// Which tokens go to RFC 7662 introspection, and what its answers must say.
#[derive(Clone, Debug, Default)]
pub struct IntrospectionPolicy {
    /// Introspect every token, JWTs included (else only tokens that are not three-part JWTs).
    pub introspect_jwts: bool,
    /// When set, the answer's `iss` must equal it.
    pub issuer: Option<String>,
    /// When not empty, the answer's `aud` must contain one of these.
    pub audiences: Vec<String>,
}

/// How a bearer token is to be validated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Credential<'t> {
    /// Verify locally as a JWT against the issuer's keys.
    Jwt(&'t str),
    /// Ask the authorization server (RFC 7662).
    Introspect(&'t str),
}

/// Everything the core needs from configuration, validated.
#[derive(Clone, Debug)]
pub struct Policy {
    pub issuers: Vec<IssuerPolicy>,
    pub leeway_seconds: i64,
    pub binding: BindingMode,
    pub certificate_sources: Vec<CertificateSource>,
    pub upstream: UpstreamPolicy,
    /// Tokens longer than this are denied before any parsing.
    pub max_token_bytes: usize,
    pub introspection: Option<IntrospectionPolicy>,
}

/// The key snapshots the core reads; the key store implements it.
pub trait KeyLookup {
    /// The current key set of issuer `index`, or `None` when none could be loaded.
    fn key_set(&self, index: usize) -> Option<Arc<KeySet>>;
}

impl Policy {
    /// Takes the bearer token and says how it is to be validated.
    pub fn credential<'r>(&self, request: &'r AccessRequest) -> Result<Credential<'r>, DenyReason> {
        let token = bearer::bearer_token(&request.authorization).map_err(|e| match e {
            bearer::BearerError::Missing => DenyReason::TokenMissing,
            bearer::BearerError::Duplicate => DenyReason::AuthorizationDuplicate,
        })?;
        if token.len() > self.max_token_bytes {
            return Err(DenyReason::TokenTooLarge);
        }
        Ok(match &self.introspection {
            Some(i) if i.introspect_jwts || !token::looks_like_jwt(token) => {
                Credential::Introspect(token)
            }
            _ => Credential::Jwt(token),
        })
    }

    /// Decides one request whose token is a JWT, against the key snapshots at `now` (Unix seconds).
    pub fn decide(&self, keys: &dyn KeyLookup, request: &AccessRequest, now: i64) -> Decision {
        self.finish(|facts| {
            let token = match self.credential(request)? {
                Credential::Jwt(token) => token,
                // The caller introspects these; without an answer there is nothing to accept.
                Credential::Introspect(_) => return Err(DenyReason::TokenMalformed.into()),
            };
            let claims = self.verify_jwt(keys, token, now, facts)?;
            self.authorize(request, claims, facts)
        })
    }

    /// Decides one request whose token the authorization server described (RFC 7662 answer).
    /// Expiry and binding are checked here on every call, cached answer or not.
    pub fn decide_introspected(
        &self,
        request: &AccessRequest,
        answer: &Arc<Map<String, Value>>,
        now: i64,
    ) -> Decision {
        self.finish(|facts| {
            let policy = self.introspection.clone().unwrap_or_default();
            if answer.get("active") != Some(&Value::Bool(true)) {
                return Err(DenyReason::TokenInactive.into());
            }
            facts.issuer = answer.get("iss").and_then(Value::as_str).map(str::to_owned);
            facts.claims = Some(Arc::clone(answer));
            token::check_introspected(answer, &policy, now, self.leeway_seconds)?;
            self.authorize(request, Arc::clone(answer), facts)
        })
    }

    fn finish(&self, decide: impl FnOnce(&mut Facts) -> Result<Upstream, Refusal>) -> Decision {
        let mut facts = Facts::default();
        let outcome = match decide(&mut facts) {
            Ok(upstream) => Outcome::Allow(upstream),
            Err(Refusal::Deny(reason)) => Outcome::Deny(reason),
            Err(Refusal::Unavailable(reason)) => Outcome::Unavailable(reason),
        };
        Decision { outcome, facts }
    }

    fn verify_jwt(
        &self,
        keys: &dyn KeyLookup,
        token: &str,
        now: i64,
        facts: &mut Facts,
    ) -> Result<Arc<Map<String, Value>>, Refusal> {
        let jwt = token::parse(token)?;
        facts.kid = jwt.kid.clone();
        let issuer_name = jwt.issuer().ok_or(DenyReason::ClaimsInvalid)?;
        let index = self
            .issuers
            .iter()
            .position(|i| i.issuer == issuer_name)
            .ok_or(DenyReason::IssuerUnknown)?;
        let issuer = &self.issuers[index];
        facts.issuer_index = Some(index);
        facts.issuer = Some(issuer.issuer.clone());
        let key_set = keys
            .key_set(index)
            .ok_or(Refusal::Unavailable(UnavailableReason::KeysUnavailable))?;
        let verified = jwt.verify(index, issuer, &key_set, now, self.leeway_seconds)?;
        facts.claims = Some(Arc::clone(&verified.claims));
        Ok(verified.claims)
    }

    /// What every validated token goes through: the certificate binding, then the upstream view.
    fn authorize(
        &self,
        request: &AccessRequest,
        claims: Arc<Map<String, Value>>,
        facts: &mut Facts,
    ) -> Result<Upstream, Refusal> {
        if self.binding != BindingMode::Disabled {
            let certificate = self.client_certificate(request, facts);
            if let Ok(Some(thumbprint)) = certificate {
                facts.thumbprint = Some(thumbprint);
            }
            binding::check(self.binding, &certificate, claims.get("cnf"))?;
        }
        Ok(self.upstream_for(&claims))
    }

    /// Reads the certificate from the configured sources, in order; the first one present wins.
    pub fn client_certificate(
        &self,
        request: &AccessRequest,
        facts: &mut Facts,
    ) -> CertificateOutcome {
        for source in &self.certificate_sources {
            let found = match source {
                CertificateSource::Peer => {
                    certificate::decode_url_encoded_pem(&request.peer_certificate)
                }
                CertificateSource::Xfcc => xfcc_certificate(request.xfcc.as_deref()),
            };
            match found {
                Ok(None) => continue,
                other => {
                    facts.certificate_source = Some(*source);
                    return other;
                }
            }
        }
        Ok(None)
    }

    fn upstream_for(&self, claims: &Map<String, Value>) -> Upstream {
        let mut upstream = Upstream::default();
        for (claim, header) in &self.upstream.claim_headers {
            match claims.get(claim).and_then(header_value) {
                Some(value) => upstream.set_headers.push((header.clone(), value)),
                None => upstream.remove_headers.push(header.clone()),
            }
        }
        if self.upstream.remove_authorization {
            upstream.remove_headers.push("authorization".into());
        }
        upstream
    }
}

/// A claim rendered as a header value; `None` when absent or not safely representable.
fn header_value(value: &Value) -> Option<String> {
    let text = match value {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Array(items) => items
            .iter()
            .map(|item| match item {
                Value::String(s) => Some(s.clone()),
                Value::Number(n) => Some(n.to_string()),
                _ => None,
            })
            .collect::<Option<Vec<_>>>()?
            .join(","),
        Value::Null | Value::Object(_) => return None,
    };
    // Control characters (CR, LF, NUL) would let a claim smuggle headers.
    (!text.is_empty() && !text.chars().any(char::is_control)).then_some(text)
}

/// The certificate of the last XFCC element: the peer of the proxy nearest to us.
fn xfcc_certificate(header: Option<&str>) -> CertificateOutcome {
    let Some(header) = header.filter(|h| !h.trim().is_empty()) else {
        return Ok(None);
    };
    if header.len() > certificate::MAX_CERTIFICATE_INPUT * 2 {
        return Err(certificate::CertificateError::TooLarge);
    }
    let elements = xfcc::parse(header).map_err(|_| certificate::CertificateError::BadEncoding)?;
    let Some(last) = elements.last() else {
        return Ok(None);
    };
    if let Some(cert) = last.get("cert").filter(|c| !c.is_empty()) {
        return certificate::decode_url_encoded_pem(cert);
    }
    match last.get("hash") {
        Some(hash) => Thumbprint::from_hex(hash)
            .map(Some)
            .ok_or(certificate::CertificateError::BadEncoding),
        None => Ok(None),
    }
}

enum Refusal {
    Deny(DenyReason),
    Unavailable(UnavailableReason),
}

impl From<DenyReason> for Refusal {
    fn from(reason: DenyReason) -> Self {
        Refusal::Deny(reason)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_codes_are_unique() {
        let mut codes: Vec<_> = DenyReason::ALL.iter().map(|r| r.as_str()).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), DenyReason::ALL.len());
    }

    #[test]
    fn claims_render_as_safe_header_values() {
        use serde_json::json;
        assert_eq!(header_value(&json!("alice")), Some("alice".into()));
        assert_eq!(header_value(&json!(42)), Some("42".into()));
        assert_eq!(header_value(&json!(["a", "b"])), Some("a,b".into()));
        assert_eq!(header_value(&json!("a\r\nx-admin: true")), None);
        assert_eq!(header_value(&json!({"a": 1})), None);
        assert_eq!(header_value(&json!(null)), None);
        assert_eq!(header_value(&json!("")), None);
    }

    #[test]
    fn xfcc_uses_the_last_element_and_falls_back_to_hash() {
        let hash = "66840dda154e8a113c31dd0ad32f7f3a366a80e8136979d8f5a101d3d29d6f72";
        let header = format!("Hash=00;Cert=\"garbage\",Hash={hash}");
        assert_eq!(
            xfcc_certificate(Some(&header)),
            Ok(Some(Thumbprint::of_der(&[1, 2, 3, 4, 5, 6, 7, 8])))
        );
        assert_eq!(xfcc_certificate(None), Ok(None));
        assert_eq!(xfcc_certificate(Some("By=spiffe://x")), Ok(None));
        assert!(xfcc_certificate(Some("Cert=\"unterminated")).is_err());
        assert!(xfcc_certificate(Some("Hash=zz")).is_err());
    }
}
