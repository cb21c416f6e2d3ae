//! A decision: its outcome (allow, deny with a reason, or unavailable), and the facts behind it.

use std::sync::Arc;

use serde_json::{Map, Value};

use crate::certificate::Thumbprint;
use crate::request::CertificateSource;

/// Declares [`DenyReason`] once: each variant with its stable code, and the list of all.
macro_rules! deny_reasons {
    ($($(#[doc = $doc:literal])* $variant:ident => $code:literal,)*) => {
        /// Why a request was denied: stable, machine-readable, used in logs, metrics and metadata.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum DenyReason {
            $($(#[doc = $doc])* $variant,)*
        }

        impl DenyReason {
            /// Every reason, in declaration order.
            pub const ALL: &'static [DenyReason] = &[$(DenyReason::$variant,)*];

            /// The stable code (`token_missing`, `binding_mismatch`, ...).
            pub fn as_str(self) -> &'static str {
                match self {
                    $(DenyReason::$variant => $code,)*
                }
            }
        }
    };
}

deny_reasons! {
    /// Envoy sent no HTTP attributes, or a forward-auth check does not say which request it is
    /// for (no original URI or method).
    RequestInvalid => "request_invalid",
    /// The HTTP authorization API was called by a peer outside `forward_auth.trusted_peers`:
    /// its forwarded headers and certificate header cannot be believed (403).
    ProxyUntrusted => "proxy_untrusted",
    /// The path cannot be resolved the same way by every upstream (an encoded `/` or `\`, a
    /// `..` above the root, a dot-segment with parameters, double or invalid percent-encoding):
    /// 400, whatever the route, so no spelling can reach a rule it should not.
    PathUnsafe => "path_unsafe",
    TokenMissing => "token_missing",
    AuthorizationDuplicate => "authorization_duplicate",
    TokenTooLarge => "token_too_large",
    /// A header certbound reads is over `limits.max_header_bytes`.
    HeaderTooLarge => "header_too_large",
    TokenMalformed => "token_malformed",
    AlgorithmNotAllowed => "alg_not_allowed",
    CritUnsupported => "crit_unsupported",
    TypInvalid => "typ_invalid",
    IssuerUnknown => "issuer_unknown",
    /// Introspection said `active: false`.
    TokenInactive => "token_inactive",
    KeyUnknown => "key_unknown",
    KeyTypeMismatch => "key_type_mismatch",
    SignatureInvalid => "signature_invalid",
    ClaimsInvalid => "claims_invalid",
    TokenExpired => "token_expired",
    TokenNotYetValid => "token_not_yet_valid",
    TokenIssuedInFuture => "token_issued_in_future",
    AudienceMismatch => "audience_mismatch",
    /// The route accepts only other issuers.
    IssuerNotAllowed => "issuer_not_allowed",
    /// The route requires another audience.
    AudienceNotAllowed => "audience_not_allowed",
    CertMissing => "cert_missing",
    CertInvalid => "cert_invalid",
    CnfMissing => "cnf_missing",
    CnfInvalid => "cnf_invalid",
    X5tMissing => "x5t_missing",
    BindingMismatch => "binding_mismatch",
    /// The token's `cnf` names a confirmation method certbound does not verify for this request
    /// (`jwk`, `jku`, `kid`, an unknown one, or `x5t#S256` where binding is `disabled`): a
    /// sender-constrained token is never accepted as a plain bearer token.
    CnfUnverified => "cnf_unverified",
    /// A required scope is missing (403).
    ScopeMissing => "scope_missing",
    /// No required group (or not all of them) (403).
    GroupMissing => "group_missing",
    /// The route's policy cannot be applied (a bad `context_extensions` value): fail closed.
    PolicyInvalid => "policy_invalid",
    /// `Authorization: DPoP` without a `DPoP` proof header.
    DpopProofMissing => "dpop_proof_missing",
    /// More than one `DPoP` header, or a proof that is not a compact JWS with the required
    /// claims (`jti`, `htm`, `htu`, `iat`).
    DpopProofInvalid => "dpop_proof_invalid",
    /// The proof's `typ` is not `dpop+jwt`.
    DpopTypInvalid => "dpop_typ_invalid",
    /// The proof's `alg` is not one of `dpop.algorithms` (never `none` or MAC).
    DpopAlgNotAllowed => "dpop_alg_not_allowed",
    /// The proof's `jwk` is missing, not a usable public key, carries private members, or does
    /// not fit its `alg`.
    DpopJwkInvalid => "dpop_jwk_invalid",
    DpopSignatureInvalid => "dpop_signature_invalid",
    /// `htm` is not the request's method.
    DpopMethodMismatch => "dpop_method_mismatch",
    /// `htu` is not the request's URI (normalised, without query and fragment).
    DpopUrlMismatch => "dpop_url_mismatch",
    /// `iat` is older than `dpop.max_age_seconds`.
    DpopIatTooOld => "dpop_iat_too_old",
    /// `iat` is further in the future than `dpop.leeway_seconds`.
    DpopIatInFuture => "dpop_iat_in_future",
    /// `ath` is missing or is not the hash of the access token.
    DpopAthMismatch => "dpop_ath_mismatch",
    /// Nonces are required and the proof has none, or a stale one: the answer carries a fresh
    /// `DPoP-Nonce`.
    DpopNonceRequired => "dpop_nonce_required",
    /// The proof's `jti` was already used with this key within its window.
    DpopReplayed => "dpop_replayed",
    /// The token's `cnf.jkt` does not name the proof's key.
    DpopKeyMismatch => "dpop_key_mismatch",
    /// `Authorization: DPoP` with a token that is not DPoP-bound (no `cnf.jkt`).
    DpopTokenUnbound => "dpop_token_unbound",
    /// A DPoP-bound token presented with the `Bearer` scheme (RFC 9449 §7.2).
    DpopDowngrade => "dpop_downgrade",
    /// Under a protected resource (`resources`), the token's `aud` does not name it (RFC 8707):
    /// a token issued for another resource.
    ResourceAudienceMismatch => "resource_audience_mismatch",
    /// The resource says `dpop_bound_access_tokens_required` and the token is not DPoP-bound
    /// (with a verified proof).
    DpopRequired => "dpop_required",
    /// RFC 9470: the token's `acr` is not one of the rule's `acr_values`.
    AcrInsufficient => "acr_insufficient",
    /// RFC 9470: the rule has `max_age_seconds` and the token has no `auth_time`.
    AuthTimeMissing => "auth_time_missing",
    /// RFC 9470: the token's `auth_time` is older than the rule's `max_age_seconds`.
    AuthTimeTooOld => "auth_time_too_old",
    /// A path under `/.well-known/oauth-protected-resource` that names no configured resource
    /// (404).
    ResourceUnknown => "resource_unknown",
    /// A metadata path asked with a method other than GET or HEAD (405).
    MethodNotAllowed => "method_not_allowed",
}

impl DenyReason {
    /// Whether the client sent no bearer token at all: RFC 6750 §3 then gives no error code.
    pub fn is_missing_credentials(self) -> bool {
        matches!(self, DenyReason::TokenMissing | DenyReason::RequestInvalid)
    }

    /// A valid, bound token without the rights the route needs: 403, not 401.
    pub fn is_forbidden(self) -> bool {
        matches!(
            self,
            DenyReason::ScopeMissing | DenyReason::GroupMissing | DenyReason::ProxyUntrusted
        )
    }

    /// A request that cannot be routed safely: 400 `invalid_request` (RFC 6750 §3.1).
    pub fn is_bad_request(self) -> bool {
        matches!(self, DenyReason::PathUnsafe)
    }

    /// RFC 9470 step-up: 401 `insufficient_user_authentication`.
    pub fn is_step_up(self) -> bool {
        matches!(
            self,
            DenyReason::AcrInsufficient | DenyReason::AuthTimeMissing | DenyReason::AuthTimeTooOld
        )
    }

    /// A refusal that is not about credentials at all (an unknown metadata document, a method
    /// metadata is not served with): no challenge.
    pub fn is_not_about_credentials(self) -> bool {
        matches!(
            self,
            DenyReason::ResourceUnknown | DenyReason::MethodNotAllowed
        )
    }

    /// A fault of the DPoP proof itself (RFC 9449 §7.1 `invalid_dpop_proof`), not of the token
    /// or its binding (`invalid_token`).
    pub fn is_dpop_proof(self) -> bool {
        use DenyReason::*;
        matches!(
            self,
            DpopProofMissing
                | DpopProofInvalid
                | DpopTypInvalid
                | DpopAlgNotAllowed
                | DpopJwkInvalid
                | DpopSignatureInvalid
                | DpopMethodMismatch
                | DpopUrlMismatch
                | DpopIatTooOld
                | DpopIatInFuture
                | DpopAthMismatch
                | DpopReplayed
        )
    }
}

/// Why no decision could be made: the response is 503 and Envoy's failure mode applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UnavailableReason {
    /// The issuer's keys are not loaded, or older than `keys.max_stale_seconds`.
    KeysUnavailable,
    /// The introspection endpoint could not give an answer.
    IntrospectionUnavailable,
    /// `limits.max_concurrent_checks` checks are already being decided.
    Overloaded,
    /// The shared DPoP replay store (Redis) did not answer: a proof cannot be checked unused.
    ReplayStoreUnavailable,
}

impl UnavailableReason {
    pub fn as_str(self) -> &'static str {
        match self {
            UnavailableReason::KeysUnavailable => "keys_unavailable",
            UnavailableReason::IntrospectionUnavailable => "introspection_unavailable",
            UnavailableReason::Overloaded => "overloaded",
            UnavailableReason::ReplayStoreUnavailable => "replay_store_unavailable",
        }
    }
}

/// What an allowed request carries to the upstream.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Upstream {
    /// Headers to set, overwriting anything the client sent under these names. Names are
    /// shared with the configuration (no copy per request).
    pub set_headers: Vec<(Arc<str>, String)>,
    /// Headers to strip: mapped headers whose claim is absent (so a client cannot supply them),
    /// and `authorization` when configured.
    pub remove_headers: Vec<Arc<str>>,
    /// Headers for the client's response (a fresh `DPoP-Nonce`).
    pub response_headers: Vec<(String, String)>,
    /// Claim headers left out (and removed) because the claim had no safe header form: a
    /// non-ASCII string, an object, an array with a comma or such a string in it. Counted.
    pub dropped_headers: Vec<Arc<str>>,
}

/// The outcome of one check.
#[derive(Clone, Debug)]
pub enum Outcome {
    Allow(Upstream),
    Deny(DenyReason),
    Unavailable(UnavailableReason),
    /// A request for a resource's RFC 9728 metadata: answered here with the document (200),
    /// or an `OPTIONS` (a browser's CORS preflight) with what it may do (204); never passed to
    /// the upstream.
    Metadata(MetadataAnswer),
}

/// Which answer a metadata path gets.
#[derive(Clone, Debug)]
pub struct MetadataAnswer {
    pub resource: Arc<crate::resource::Resource>,
    /// `OPTIONS`: 204 with `Allow` and the CORS headers, no document.
    pub options: bool,
}

/// What was learnt while deciding, for logs, metadata and the upstream.
#[derive(Clone, Debug, Default)]
pub struct Facts {
    /// Index of the token's issuer in the configuration.
    pub issuer_index: Option<usize>,
    /// The token's issuer: as the token claims it until the signature checked out.
    pub issuer: Option<Arc<str>>,
    /// The JWT's `kid` and `alg` headers, as sent (`alg` is not known on a cache hit).
    pub kid: Option<Arc<str>>,
    pub alg: Option<String>,
    /// Verified claims (only after the signature checked out).
    pub claims: Option<Arc<Map<String, Value>>>,
    pub thumbprint: Option<Thumbprint>,
    pub certificate_source: Option<CertificateSource>,
    /// The route rule that applied (`default` when none matched).
    pub rule: Option<Arc<str>>,
    /// Required scopes the token lacked (for the RFC 6750 `scope` attribute).
    pub missing_scopes: Vec<String>,
    /// Whether the verified-token cache answered (`None` when it was not consulted).
    pub token_cache: Option<bool>,
    /// Whether this decision checked a signature (the expensive step a cache hit skips).
    pub signature_checked: bool,
    /// DPoP, when enabled: what the challenge and the replay store need.
    pub dpop: Option<DpopFacts>,
    /// The protected resource (`resources`) the request's path is under: its challenges carry
    /// `resource_metadata`.
    pub resource: Option<Arc<crate::resource::Resource>>,
    /// The step-up requirement a token fell short of, for the RFC 9470 challenge.
    pub step_up: Option<Arc<crate::routes::StepUp>>,
}

/// What a decision learnt about DPoP.
#[derive(Clone, Debug, Default)]
pub struct DpopFacts {
    /// The request used `Authorization: DPoP` (the challenge answers in that scheme).
    pub scheme: bool,
    /// The accepted proof algorithms, for the challenge's `algs`.
    pub algs: Arc<str>,
    /// The verified proof's record against replay: the adapter stores it before allowing.
    pub replay: Option<crate::dpop::ReplayKey>,
    /// The verified proof's key thumbprint (`cnf.jkt`), for logs and metadata.
    pub jkt: Option<String>,
    /// A fresh server nonce for a `DPoP-Nonce` header.
    pub nonce: Option<String>,
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

    /// `allow`, `deny` or `unavailable`: for logs, metrics and metadata.
    pub fn outcome_name(&self) -> &'static str {
        match self.outcome {
            Outcome::Allow(_) => "allow",
            Outcome::Deny(_) => "deny",
            Outcome::Unavailable(_) => "unavailable",
            Outcome::Metadata(_) => "metadata",
        }
    }

    /// The HTTP status Envoy sends the client.
    pub fn http_status(&self) -> u16 {
        match &self.outcome {
            Outcome::Metadata(answer) if answer.options => 204,
            Outcome::Allow(_) | Outcome::Metadata(_) => 200,
            Outcome::Deny(reason) if reason.is_forbidden() => 403,
            Outcome::Deny(reason) if reason.is_bad_request() => 400,
            Outcome::Deny(DenyReason::ResourceUnknown) => 404,
            Outcome::Deny(DenyReason::MethodNotAllowed) => 405,
            Outcome::Deny(_) => 401,
            Outcome::Unavailable(_) => 503,
        }
    }

    /// The `WWW-Authenticate` challenge of a deny: RFC 6750's `Bearer`, or RFC 9449's `DPoP`
    /// (with `algs`) when the request used the DPoP scheme or its token is DPoP-bound. With DPoP
    /// enabled, a request without credentials is offered both schemes. Under a protected
    /// resource every challenge carries RFC 9728's `resource_metadata`; a step-up refusal carries
    /// RFC 9470's `acr_values` / `max_age`.
    pub fn challenge(&self) -> Option<String> {
        let Outcome::Deny(reason) = &self.outcome else {
            return None;
        };
        if reason.is_not_about_credentials() {
            return None;
        }
        let dpop = self.facts.dpop.as_ref();
        let resource = self.facts.resource.as_deref();
        // `, resource_metadata="..."`, built once per configuration.
        let metadata = resource.map_or("", |r| r.challenge_param());
        if reason.is_missing_credentials() {
            let bearer = resource.map_or("Bearer", |r| r.bearer_challenge());
            return Some(match dpop {
                Some(dpop) => format!(r#"{bearer}, DPoP algs="{}"{metadata}"#, dpop.algs),
                None => bearer.to_owned(),
            });
        }
        // Built in one buffer, pieces pushed (a 401 is a common answer: no formatting machinery
        // and one allocation).
        let in_dpop = dpop.filter(|d| {
            d.scheme
                || matches!(
                    reason,
                    DenyReason::DpopDowngrade
                        | DenyReason::DpopRequired
                        | DenyReason::DpopNonceRequired
                )
                || reason.is_dpop_proof()
        });
        let mut out = String::with_capacity(112 + metadata.len());
        out.push_str(if in_dpop.is_some() {
            "DPoP "
        } else {
            "Bearer "
        });
        if reason.is_forbidden() {
            out.push_str(r#"error="insufficient_scope""#);
            if let [first, rest @ ..] = self.facts.missing_scopes.as_slice() {
                out.push_str(r#", scope=""#);
                out.push_str(first);
                for scope in rest {
                    out.push(' ');
                    out.push_str(scope);
                }
                out.push('"');
            }
        } else if reason.is_step_up() {
            out.push_str(r#"error="insufficient_user_authentication""#);
            if let Some(step_up) = self.facts.step_up.as_deref()
                && !step_up.challenge.is_empty()
            {
                out.push_str(", ");
                out.push_str(&step_up.challenge);
            }
        } else {
            out.push_str(if reason.is_bad_request() {
                r#"error="invalid_request""#
            } else if *reason == DenyReason::DpopNonceRequired {
                r#"error="use_dpop_nonce""#
            } else if reason.is_dpop_proof() {
                r#"error="invalid_dpop_proof""#
            } else {
                r#"error="invalid_token""#
            });
        }
        if let Some(dpop) = in_dpop {
            out.push_str(r#", algs=""#);
            out.push_str(&dpop.algs);
            out.push('"');
        }
        out.push_str(metadata);
        Some(out)
    }

    /// The replay record of an allowed request's verified DPoP proof: store it before allowing.
    pub fn replay_key(&self) -> Option<crate::dpop::ReplayKey> {
        match self.outcome {
            Outcome::Allow(_) => self.facts.dpop.as_ref()?.replay,
            _ => None,
        }
    }

    /// Applies the replay store's answer: a proof seen before is refused (`dpop_replayed`), and
    /// when the store cannot say, nothing is accepted unchecked (503).
    pub fn after_replay_check(
        mut self,
        result: Result<bool, crate::replay::ReplayError>,
    ) -> Decision {
        match result {
            Ok(true) => {}
            Ok(false) => self.outcome = Outcome::Deny(DenyReason::DpopReplayed),
            Err(_) => {
                self.outcome = Outcome::Unavailable(UnavailableReason::ReplayStoreUnavailable)
            }
        }
        self
    }

    /// The stable reason code of a deny or unavailable outcome, `"ok"` for an allow.
    pub fn reason(&self) -> &'static str {
        match &self.outcome {
            Outcome::Allow(_) => "ok",
            Outcome::Deny(reason) => reason.as_str(),
            Outcome::Unavailable(reason) => reason.as_str(),
            Outcome::Metadata(_) => "resource_metadata",
        }
    }
}
