//! The policy: everything the core needs from configuration, validated, and the decision over it.

use std::sync::{Arc, LazyLock};

use serde_json::{Map, Value};

use crate::bearer::{self, Scheme};
use crate::binding::{self, BindingMode, CertificateOutcome};
use crate::certificate::{self, Thumbprint};
use crate::decision::{
    Decision, DenyReason, DpopFacts, Facts, MetadataAnswer, Outcome, UnavailableReason, Upstream,
};
use crate::dpop::{self, DpopPolicy};
use crate::keys::KeySet;
use crate::path;
use crate::request::{AccessRequest, CertificateSource, PeerCertificate};
use crate::resource::{Resources, WellKnown};
use crate::routes::{self, Requirements, RoutePolicy};
use crate::token::{self, IssuerPolicy};
use crate::token_cache::TokenCache;
use crate::xfcc;

/// The request headers that carry the credentials: `upstream.remove_authorization` strips both.
/// Made once, so that stripping them allocates nothing per request.
static CREDENTIAL_HEADERS: LazyLock<[Arc<str>; 2]> =
    LazyLock::new(|| [Arc::from("authorization"), Arc::from("dpop")]);

/// What to forward upstream on an allow.
#[derive(Clone, Debug, Default)]
pub struct UpstreamPolicy {
    /// (claim, header) pairs; header names lower-case.
    pub claim_headers: Vec<(String, Arc<str>)>,
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
    /// Header values (authorization, certificate headers) longer than this are not parsed.
    pub max_header_bytes: usize,
    pub introspection: Option<IntrospectionPolicy>,
    /// Route rules, scopes and groups.
    pub routes: RoutePolicy,
    /// With `xfcc`, take the element added by this `By` identity instead of the last one.
    pub xfcc_by: Option<String>,
    /// With `header`: the proxy's certificate header (lower-case name) and its encoding.
    pub certificate_header: Option<CertificateHeader>,
    /// Tell clients the deny reason in `x-certbound-reason`.
    pub reason_header: bool,
    /// Thumbprints of certificates already decoded (shared by clones of this policy).
    pub certificates: Arc<certificate::CertificateCache>,
    /// DPoP (RFC 9449), when enabled.
    pub dpop: Option<Arc<DpopPolicy>>,
    /// Protected resources (RFC 9728 metadata, RFC 8707 audiences); empty when none.
    pub resources: Arc<Resources>,
}

/// A proxy's certificate header, validated.
#[derive(Clone, Debug)]
pub struct CertificateHeader {
    /// Lower-case.
    pub name: String,
    pub encoding: certificate::HeaderEncoding,
    /// Thumbprints of values already decoded (its own cache: one encoding per cache).
    pub certificates: Arc<certificate::CertificateCache>,
}

/// The key snapshots the core reads; the key store implements it.
pub trait KeyLookup {
    /// The current key set of issuer `index`, or `None` when none could be loaded.
    fn key_set(&self, index: usize) -> Option<Arc<KeySet>>;
}

impl Policy {
    /// Whether the request needs an RFC 7662 answer to be decided.
    pub fn needs_introspection<'r>(&self, request: &'r AccessRequest) -> Option<&'r str> {
        if self.is_metadata_request(request) {
            return None;
        }
        if self
            .routes
            .select(request)
            .is_ok_and(|a| a.requirements.allow_anonymous)
        {
            return None;
        }
        match self.credential(request) {
            Ok(Credential::Introspect(token)) => Some(token),
            _ => None,
        }
    }

    /// Whether the request's path is under `/.well-known/oauth-protected-resource` with
    /// resources configured: answered from the configuration, whatever its credentials.
    pub fn is_metadata_request(&self, request: &AccessRequest) -> bool {
        !self.resources.is_empty()
            && path::routable(&request.path, self.routes.escaped_slashes)
                .is_ok_and(|path| self.resources.well_known(path).is_some())
    }

    /// Takes the bearer token and says how it is to be validated.
    pub fn credential<'r>(&self, request: &'r AccessRequest) -> Result<Credential<'r>, DenyReason> {
        let over = |value: Option<&str>| value.is_some_and(|v| v.len() > self.max_header_bytes);
        if over(request.authorization.value())
            || over(request.xfcc.as_deref())
            || over(request.client_cert.as_deref())
            || over(request.certificate_header.as_deref())
            || request.peer_certificate.len() > self.max_header_bytes
        {
            return Err(DenyReason::HeaderTooLarge);
        }
        let (_, token) = bearer::credentials(&request.authorization, self.dpop.is_some()).map_err(
            |e| match e {
                bearer::BearerError::Missing => DenyReason::TokenMissing,
                bearer::BearerError::Duplicate => DenyReason::AuthorizationDuplicate,
            },
        )?;
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
        self.decide_cached(keys, None, request, now)
    }

    /// [`Policy::decide`] with a verified-token cache: a hit skips the signature and claim checks
    /// (never the binding, the route's requirements or anything after them).
    pub fn decide_cached(
        &self,
        keys: &dyn KeyLookup,
        cache: Option<&TokenCache>,
        request: &AccessRequest,
        now: i64,
    ) -> Decision {
        self.finish(request, |facts, requirements| {
            let token = match self.credential(request)? {
                Credential::Jwt(token) => token,
                // A JWT sent to introspection (`introspect_jwts`) that the caller verifies here
                // instead: the endpoint said it does not introspect JWTs.
                Credential::Introspect(token) if token::looks_like_jwt(token) => token,
                // The caller introspects these; without an answer there is nothing to accept.
                Credential::Introspect(_) => return Err(DenyReason::TokenMalformed.into()),
            };
            let claims = match cache {
                Some(cache) => self.verify_jwt_cached(keys, cache, token, now, facts)?,
                None => self.verify_jwt(keys, token, now, facts)?,
            };
            self.authorize(request, requirements, token, claims, now, facts)
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
        self.finish(request, |facts, requirements| {
            let token = match self.credential(request)? {
                Credential::Jwt(token) | Credential::Introspect(token) => token,
            };
            let default = IntrospectionPolicy::default();
            let policy = self.introspection.as_ref().unwrap_or(&default);
            if answer.get("active") != Some(&Value::Bool(true)) {
                return Err(DenyReason::TokenInactive.into());
            }
            facts.issuer = answer.get("iss").and_then(Value::as_str).map(Arc::from);
            facts.claims = Some(Arc::clone(answer));
            token::check_introspected(answer, policy, now, self.leeway_seconds)?;
            self.authorize(request, requirements, token, Arc::clone(answer), now, facts)
        })
    }

    /// Selects the route, answers anonymous routes, and otherwise runs `decide` with the
    /// route's requirements; collects the facts either way.
    fn finish(
        &self,
        request: &AccessRequest,
        decide: impl FnOnce(&mut Facts, &Requirements) -> Result<Upstream, Refusal>,
    ) -> Decision {
        let mut facts = Facts::default();
        if let Some(dpop) = &self.dpop {
            let scheme = bearer::credentials(&request.authorization, true)
                .is_ok_and(|(scheme, _)| scheme == Scheme::Dpop);
            facts.dpop = Some(DpopFacts {
                scheme,
                algs: Arc::clone(&dpop.algs),
                ..DpopFacts::default()
            });
        }
        let selected = if self.resources.is_empty() {
            self.routes.select(request)
        } else {
            match path::routable(&request.path, self.routes.escaped_slashes) {
                Err(_) => Err(DenyReason::PathUnsafe),
                Ok(path) => {
                    if let Some(answer) = self.resources.well_known(path) {
                        return metadata_decision(answer, request, facts);
                    }
                    match self.resources.for_path_checked(path) {
                        Ok(resource) if !self.resources.well_known_in_other_case(path) => {
                            facts.resource = resource.cloned();
                            self.routes.select_canonical(request, path)
                        }
                        // Its resource would change for an upstream that ignores case.
                        _ => Err(DenyReason::PathUnsafe),
                    }
                }
            }
        };
        let routed = selected.map_err(Refusal::from).and_then(|applied| {
            facts.rule = Some(applied.rule);
            if applied.requirements.allow_anonymous {
                Ok(self.anonymous_upstream())
            } else {
                decide(&mut facts, &applied.requirements)
            }
        });
        let outcome = match routed {
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
        let mut claimed = token::Claimed::default();
        let parsed = token::parse_claimed(token, &mut claimed);
        // Named in logs and metadata even when the token is refused for its header.
        facts.alg = claimed.alg;
        facts.kid = claimed.kid.map(Arc::from);
        facts.issuer = claimed.iss.map(Arc::from);
        let jwt = parsed?;
        let issuer_name = jwt.issuer().ok_or(DenyReason::ClaimsInvalid)?;
        let index = self
            .issuers
            .iter()
            .position(|i| *i.issuer == *issuer_name)
            .ok_or(DenyReason::IssuerUnknown)?;
        let issuer = &self.issuers[index];
        facts.issuer_index = Some(index);
        facts.issuer = Some(issuer.issuer.clone());
        let key_set = keys
            .key_set(index)
            .ok_or(Refusal::Unavailable(UnavailableReason::KeysUnavailable))?;
        facts.signature_checked = true;
        let verified = jwt.verify(index, issuer, &key_set, now, self.leeway_seconds)?;
        facts.claims = Some(Arc::clone(&verified.claims));
        Ok(verified.claims)
    }

    /// The cache-aware path: on a hit the token was verified before, is not past its `exp`
    /// (entries never outlive it) and the key that verified it is still published.
    fn verify_jwt_cached(
        &self,
        keys: &dyn KeyLookup,
        cache: &TokenCache,
        token: &str,
        now: i64,
        facts: &mut Facts,
    ) -> Result<Arc<Map<String, Value>>, Refusal> {
        let key = crate::cache::token_key(token);
        if let Some((issuer, verified)) = cache.get(&key, now) {
            let key_still_published = keys
                .key_set(issuer)
                .is_some_and(|set| verified.kid.as_deref().is_none_or(|kid| set.has_kid(kid)));
            if key_still_published {
                facts.token_cache = Some(true);
                facts.issuer_index = Some(issuer);
                facts.issuer = Some(self.issuers[issuer].issuer.clone());
                facts.kid.clone_from(&verified.kid);
                facts.claims = Some(Arc::clone(&verified.claims));
                return Ok(Arc::clone(&verified.claims));
            }
        }
        facts.token_cache = Some(false);
        let claims = self.verify_jwt(keys, token, now, facts)?;
        if let (Some(issuer), Some(exp)) = (
            facts.issuer_index,
            claims.get("exp").and_then(Value::as_i64),
        ) {
            cache.insert(
                key,
                issuer,
                facts.kid.clone(),
                self.retained_claims(&claims),
                exp,
                now,
            );
        }
        Ok(claims)
    }

    /// The claims anything after verification reads; the rest is not kept in the cache.
    fn retained_claims(&self, claims: &Map<String, Value>) -> Map<String, Value> {
        // Not exp, iat, nbf or jti: checked at verification, and unique per token, they would
        // keep successive tokens of a client from sharing one cached value.
        // `acr` and `auth_time` for RFC 9470 step-up rules.
        const ALWAYS: [&str; 9] = [
            "iss",
            "sub",
            "aud",
            "client_id",
            "scope",
            "scp",
            "cnf",
            "acr",
            "auth_time",
        ];
        claims
            .iter()
            .filter(|(name, _)| {
                ALWAYS.contains(&name.as_str())
                    || **name == self.routes.groups_claim
                    || self
                        .upstream
                        .claim_headers
                        .iter()
                        .any(|(claim, _)| claim == *name)
            })
            .map(|(name, value)| (name.clone(), value.clone()))
            .collect()
    }

    /// What every validated token goes through, in order: the route's issuer and audience
    /// limits and the certificate binding (401 on failure), then scopes and groups (403).
    fn authorize(
        &self,
        request: &AccessRequest,
        requirements: &Requirements,
        token: &str,
        claims: Arc<Map<String, Value>>,
        now: i64,
        facts: &mut Facts,
    ) -> Result<Upstream, Refusal> {
        if !requirements.issuers.is_empty()
            && !facts
                .issuer
                .as_ref()
                .is_some_and(|i| requirements.issuers.iter().any(|r| **r == **i))
        {
            return Err(DenyReason::IssuerNotAllowed.into());
        }
        if !requirements.audiences.is_empty()
            && !token::has_audience(&claims, &requirements.audiences)
        {
            return Err(DenyReason::AudienceNotAllowed.into());
        }
        // RFC 8707: under a protected resource, the token must have been issued for it, by one
        // of the authorization servers its metadata names (when they are configured).
        if let Some(servers) = facts
            .resource
            .as_ref()
            .and_then(|r| r.authorization_servers.as_ref())
            && !facts
                .issuer
                .as_ref()
                .is_some_and(|i| servers.iter().any(|s| **s == **i))
        {
            return Err(DenyReason::IssuerNotAllowed.into());
        }
        match facts.resource.as_ref().filter(|r| !r.audiences.is_empty()) {
            Some(resource) => {
                if !token::has_audience(&claims, &resource.audiences) {
                    return Err(DenyReason::ResourceAudienceMismatch.into());
                }
            }
            // Elsewhere (or under a resource with `audiences: []`), one of the issuer's own
            // audiences: a token issued only for a resource verifies, and is taken nowhere else.
            None => {
                if let Some(issuer) = facts.issuer_index.and_then(|i| self.issuers.get(i))
                    && !issuer.resource_audiences.is_empty()
                    && !token::has_audience(&claims, &issuer.audiences)
                {
                    return Err(DenyReason::AudienceMismatch.into());
                }
            }
        }
        // A sender-constrained token is never taken as a plain bearer token: every method its
        // `cnf` names must be one certbound verifies for this request (RFC 9449 §7.2 for `jkt`).
        let cnf = claims.get("cnf");
        let confirmation = binding::confirmation(cnf);
        if let Ok(Some(methods)) = &confirmation {
            if methods.unverifiable {
                return Err(DenyReason::CnfUnverified.into());
            }
            if methods.jkt && self.dpop.is_none() {
                return Err(DenyReason::DpopDowngrade.into());
            }
        }
        let dpop_bound = match &self.dpop {
            Some(dpop) => self.check_dpop(dpop, request, token, cnf, now, facts)?,
            None => false,
        };
        let mode = requirements.binding.unwrap_or(self.binding);
        if mode != BindingMode::Disabled {
            let certificate = self.client_certificate(request, facts);
            if let Ok(Some(thumbprint)) = certificate {
                facts.thumbprint = Some(thumbprint);
            }
            binding::check(mode, &certificate, cnf, dpop_bound)?;
        }
        // After the certificate checks, so `required` keeps the reference order; in the other
        // modes only a token with no `cnf` at all passes unbound.
        match confirmation {
            Err(reason) => return Err(reason.into()),
            Ok(Some(methods)) if methods.x5t_s256 && mode == BindingMode::Disabled => {
                return Err(DenyReason::CnfUnverified.into());
            }
            Ok(_) => {}
        }
        if let Some(resource) = &facts.resource
            && resource.dpop_required
            && !dpop_bound
        {
            return Err(DenyReason::DpopRequired.into());
        }
        if let Some(step_up) = &requirements.step_up
            && let Err(reason) = step_up.check(&claims, now)
        {
            facts.step_up = Some(Arc::clone(step_up));
            return Err(reason.into());
        }
        let missing = routes::missing_scopes(requirements, &claims);
        if !missing.is_empty() {
            facts.missing_scopes = missing.into_iter().map(str::to_owned).collect();
            return Err(DenyReason::ScopeMissing.into());
        }
        if !routes::groups_satisfied(requirements, &claims, &self.routes.groups_claim) {
            return Err(DenyReason::GroupMissing.into());
        }
        let mut upstream = self.upstream_for(&claims);
        if let Some(nonce) = facts.dpop.as_ref().and_then(|d| d.nonce.clone()) {
            upstream.response_headers.push(("dpop-nonce".into(), nonce));
        }
        Ok(upstream)
    }

    /// RFC 9449 for one request: a DPoP-bound token (`cnf.jkt`) must come with the DPoP scheme
    /// and a valid proof by the key it names; the DPoP scheme needs such a token. Returns whether
    /// the token is bound by a verified proof.
    fn check_dpop(
        &self,
        dpop: &DpopPolicy,
        request: &AccessRequest,
        token: &str,
        cnf: Option<&Value>,
        now: i64,
        facts: &mut Facts,
    ) -> Result<bool, Refusal> {
        let scheme = facts.dpop.as_ref().is_some_and(|d| d.scheme);
        match (scheme, binding::claimed_jkt(cnf)) {
            (false, None) => Ok(false),
            (false, Some(_)) => Err(DenyReason::DpopDowngrade.into()),
            (true, None) => Err(DenyReason::DpopTokenUnbound.into()),
            (true, Some(jkt)) => {
                let htu = request_htu(dpop, request).ok_or(DenyReason::DpopUrlMismatch)?;
                let context = dpop::ProofContext {
                    proofs: &request.dpop_proofs,
                    method: &request.method,
                    htu: &htu,
                    access_token: token,
                    now,
                };
                let dpop_facts = facts.dpop.get_or_insert_with(DpopFacts::default);
                let proof = match dpop.verify_proof(&context) {
                    Ok(proof) => proof,
                    Err(DenyReason::DpopNonceRequired) => {
                        dpop_facts.nonce = dpop.nonces.as_ref().map(|keys| keys.issue(now));
                        return Err(DenyReason::DpopNonceRequired.into());
                    }
                    Err(reason) => return Err(reason.into()),
                };
                dpop_facts.jkt = Some(proof.jkt.clone());
                if !dpop::jkt_matches(&jkt, &proof.jkt) {
                    return Err(DenyReason::DpopKeyMismatch.into());
                }
                dpop_facts.replay = Some(proof.replay);
                // A nonce from the previous slot still works; hand out the current one.
                if let (Some(keys), Some(nonce)) = (&dpop.nonces, &proof.nonce)
                    && keys.is_aging(nonce, now)
                {
                    dpop_facts.nonce = Some(keys.issue(now));
                }
                Ok(true)
            }
        }
    }

    /// An anonymous route: nothing is verified, so no claim header may reach the upstream.
    fn anonymous_upstream(&self) -> Upstream {
        let mut upstream = Upstream::default();
        upstream.remove_headers.extend(
            self.upstream
                .claim_headers
                .iter()
                .map(|(_, header)| header.clone()),
        );
        self.remove_credentials(&mut upstream);
        upstream
    }

    /// `upstream.remove_authorization`: the token, and the DPoP proof that goes with it (RFC
    /// 9449), stay at the edge ([`CREDENTIAL_HEADERS`]).
    fn remove_credentials(&self, upstream: &mut Upstream) {
        if self.upstream.remove_authorization {
            upstream
                .remove_headers
                .extend(CREDENTIAL_HEADERS.iter().cloned());
        }
    }

    /// Reads the certificate from the configured sources, in order; the first one present wins.
    pub fn client_certificate(
        &self,
        request: &AccessRequest,
        facts: &mut Facts,
    ) -> CertificateOutcome {
        for source in &self.certificate_sources {
            let found = match source {
                CertificateSource::Peer => match &request.peer_certificate {
                    PeerCertificate::Absent => Ok(None),
                    PeerCertificate::UrlEncodedPem(pem) => {
                        self.certificates.decode_url_encoded_pem(pem)
                    }
                    PeerCertificate::Sha256Hex(hex) => certificate::decode_sha256_hex(hex),
                },
                CertificateSource::Xfcc => xfcc_certificate(
                    request.xfcc.as_deref(),
                    self.xfcc_by.as_deref(),
                    &self.certificates,
                ),
                CertificateSource::ClientCert => {
                    certificate::decode_rfc9440(request.client_cert.as_deref())
                }
                CertificateSource::Header => {
                    match (&self.certificate_header, &request.certificate_header) {
                        (Some(header), Some(value)) => {
                            header.certificates.decode_with(value, |v| {
                                certificate::decode_header(Some(v), header.encoding)
                            })
                        }
                        _ => Ok(None),
                    }
                }
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
            match claims.get(claim).map(header_value) {
                Some(Some(value)) => upstream.set_headers.push((header.clone(), value)),
                Some(None) => {
                    upstream.remove_headers.push(header.clone());
                    upstream.dropped_headers.push(header.clone());
                }
                None => upstream.remove_headers.push(header.clone()),
            }
        }
        self.remove_credentials(&mut upstream);
        upstream
    }
}

/// The request's URI as a DPoP proof's `htu` must name it, normalised: the configured public
/// base URL, or the forwarded scheme and host when trusted, or Envoy's; then the path without
/// its query.
pub fn request_htu(dpop: &DpopPolicy, request: &AccessRequest) -> Option<String> {
    let path = request.path.split(['?', '#']).next().unwrap_or_default();
    let path = if path.starts_with('/') { path } else { "/" };
    let base = match (&dpop.public_base_url, dpop.trust_forwarded_headers) {
        (Some(base), _) => base.trim_end_matches('/').to_owned(),
        (None, true) if request.forwarded_host.is_some() || request.forwarded_proto.is_some() => {
            // A proxy chain appends to the list: the first entry is what the client used.
            let first = |value: &Option<String>| {
                value
                    .as_deref()
                    .map(|v| v.split(',').next().unwrap_or_default().trim().to_owned())
            };
            let proto = first(&request.forwarded_proto).unwrap_or_else(|| request.scheme.clone());
            let host = first(&request.forwarded_host).unwrap_or_else(|| request.host.clone());
            format!("{proto}://{host}")
        }
        _ => {
            let scheme = if request.scheme.is_empty() {
                "https"
            } else {
                &request.scheme
            };
            format!("{scheme}://{}", request.host)
        }
    };
    dpop::normalize_htu(&format!("{base}{path}"))
}

/// `name` (lower-case) with every byte that is not a letter or digit as `-`, when that differs
/// from `name`: the spelling CGI, WSGI, PHP and many frameworks read it as. `None` for a name
/// that is already that spelling.
pub fn dashed_spelling(name: &str) -> Option<String> {
    if name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        return None;
    }
    Some(
        name.bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() {
                    char::from(b)
                } else {
                    '-'
                }
            })
            .collect(),
    )
}

impl Policy {
    /// Whether a request header `name` (lower-case) is another spelling of a header certbound
    /// reads or sets: it differs only in bytes that are not letters or digits (`_`, `.`, `~`),
    /// which CGI, WSGI, PHP and many frameworks map to the same variable.
    pub fn aliases_a_header(&self, name: &str) -> bool {
        let Some(dashed) = dashed_spelling(name) else {
            return false;
        };
        matches!(
            dashed.as_str(),
            "authorization" | "dpop" | "x-forwarded-client-cert" | "client-cert" | "dpop-nonce"
        ) || dashed.starts_with("x-certbound-")
            || self
                .certificate_header
                .as_ref()
                .is_some_and(|h| h.name == dashed)
            || self
                .upstream
                .claim_headers
                .iter()
                .any(|(_, h)| **h == *dashed)
    }
}

/// A claim rendered as a header value, one encoding everywhere: a string, number or boolean as
/// its text; an array of them joined with `,` (the HTTP list form). Only visible ASCII and inner
/// spaces pass: a non-ASCII string would be read as Latin-1 by one upstream and UTF-8 by
/// another, a control character could smuggle a header, and a text (or element) that holds a
/// comma would read as two. `None` (the header dropped, and counted) when the claim has no such form.
fn header_value(value: &Value) -> Option<String> {
    let scalar = |item: &Value| match item {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    };
    let safe = |text: &str| {
        !text.is_empty()
            && text.bytes().all(|b| b == b' ' || b.is_ascii_graphic())
            && !text.starts_with(' ')
            && !text.ends_with(' ')
    };
    let text = match value {
        Value::Array(items) => {
            let items = items.iter().map(scalar).collect::<Option<Vec<_>>>()?;
            if items.iter().any(|item| item.contains(',') || !safe(item)) {
                return None;
            }
            items.join(",")
        }
        // A text with a comma would read as a list of two.
        other => scalar(other).filter(|text| !text.contains(','))?,
    };
    safe(&text).then_some(text)
}

/// The certificate of the last XFCC element (the peer of the proxy nearest to us), or of the
/// last element added by the proxy whose identity (`By`) is `by`.
fn xfcc_certificate(
    header: Option<&str>,
    by: Option<&str>,
    certificates: &certificate::CertificateCache,
) -> CertificateOutcome {
    let Some(header) = header.filter(|h| !h.trim().is_empty()) else {
        return Ok(None);
    };
    if header.len() > certificate::MAX_CERTIFICATE_INPUT * 2 {
        return Err(certificate::CertificateError::TooLarge);
    }
    let elements = xfcc::parse(header).map_err(|_| certificate::CertificateError::BadEncoding)?;
    let chosen = match by {
        None => elements.last(),
        Some(by) => elements.iter().rev().find(|e| e.get("by") == Some(by)),
    };
    let Some(last) = chosen else {
        return Ok(None);
    };
    if let Some(cert) = last.get("cert").filter(|c| !c.is_empty()) {
        return certificates.decode_url_encoded_pem(cert);
    }
    match last.get("hash") {
        Some(hash) => Thumbprint::from_hex(hash)
            .map(Some)
            .ok_or(certificate::CertificateError::BadEncoding),
        None => Ok(None),
    }
}

/// A request for a metadata path: the document for GET and HEAD, 204 with what is allowed for
/// OPTIONS (a browser-based client's CORS preflight), 405 for other methods, 404 for a path that
/// names no resource. Nothing is verified: the document is public.
fn metadata_decision(answer: WellKnown, request: &AccessRequest, facts: Facts) -> Decision {
    let method = request.method.as_str();
    let outcome = match answer {
        WellKnown::Unknown => Outcome::Deny(DenyReason::ResourceUnknown),
        WellKnown::Document(resource) if method == "GET" || method == "HEAD" => {
            Outcome::Metadata(MetadataAnswer {
                resource,
                options: false,
            })
        }
        WellKnown::Document(resource) if method == "OPTIONS" => Outcome::Metadata(MetadataAnswer {
            resource,
            options: true,
        }),
        WellKnown::Document(_) => Outcome::Deny(DenyReason::MethodNotAllowed),
    };
    Decision { outcome, facts }
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
    fn other_spellings_of_the_headers_certbound_uses_are_aliases() {
        let yaml = "issuers:\n  - issuer: https://idp\n    audiences: [a]\n    jwks_uri: https://idp/jwks\n\
                    upstream: {claim_headers: {sub: x-user}}\n";
        let file: crate::config::FileConfig = serde_yaml_ng::from_str(yaml).unwrap();
        let policy = file.decision_settings(None).unwrap().policy;
        for name in [
            "x_user",
            "x.user",
            "x~user",
            "x_certbound_subject",
            "x.certbound.client.id",
            "x_forwarded_client_cert",
        ] {
            assert!(policy.aliases_a_header(name), "{name}");
        }
        for name in ["x-user", "authorization", "x_trace", "x.other"] {
            assert!(!policy.aliases_a_header(name), "{name}");
        }
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
        // One safe encoding: visible ASCII only, a list only when no element could read as two.
        assert_eq!(header_value(&json!("Zoë")), None);
        assert_eq!(header_value(&json!("a\tb")), None);
        assert_eq!(header_value(&json!(" alice")), None);
        assert_eq!(
            header_value(&json!("Alice Smith")),
            Some("Alice Smith".into())
        );
        assert_eq!(header_value(&json!(["admin", "a,b"])), None);
        assert_eq!(header_value(&json!(["admin", "Zoë"])), None);
        assert_eq!(header_value(&json!(["admin", {"x": 1}])), None);
        assert_eq!(header_value(&json!([true, 3])), Some("true,3".into()));
        assert_eq!(header_value(&json!("a,admin")), None);
    }

    fn xfcc(header: Option<&str>, by: Option<&str>) -> CertificateOutcome {
        xfcc_certificate(header, by, &certificate::CertificateCache::new(4))
    }

    #[test]
    fn xfcc_can_choose_the_element_of_a_by_identity() {
        let hash = "66840dda154e8a113c31dd0ad32f7f3a366a80e8136979d8f5a101d3d29d6f72";
        let header = format!("By=spiffe://gw;Hash={hash},By=spiffe://sidecar;Hash=00");
        let expected = Ok(Some(Thumbprint::of_der(&[1, 2, 3, 4, 5, 6, 7, 8])));
        assert_eq!(xfcc(Some(&header), Some("spiffe://gw")), expected);
        assert!(xfcc(Some(&header), None).is_err());
        assert_eq!(xfcc(Some(&header), Some("spiffe://other")), Ok(None));
    }

    #[test]
    fn xfcc_uses_the_last_element_and_falls_back_to_hash() {
        let hash = "66840dda154e8a113c31dd0ad32f7f3a366a80e8136979d8f5a101d3d29d6f72";
        let header = format!("Hash=00;Cert=\"garbage\",Hash={hash}");
        assert_eq!(
            xfcc(Some(&header), None),
            Ok(Some(Thumbprint::of_der(&[1, 2, 3, 4, 5, 6, 7, 8])))
        );
        assert_eq!(xfcc(None, None), Ok(None));
        assert_eq!(xfcc(Some("By=spiffe://x"), None), Ok(None));
        assert!(xfcc(Some("Cert=\"unterminated"), None).is_err());
        assert!(xfcc(Some("Hash=zz"), None).is_err());
    }
}
