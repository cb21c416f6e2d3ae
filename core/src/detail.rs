//! What a deny compared, so its fix is obvious: the token's value beside the configured ones
//! (an issuer that differs only by a trailing slash, case or scheme; `aud` beside the accepted
//! audiences; `alg`, `kid`, `exp` beside what was allowed; which certificate sources were looked
//! at). For the decision log and `certbound explain`.
//!
//! Computed only for a deny, after the decision, from the request and the configuration: the
//! allow path pays nothing. Values from the token are attacker-controlled: each is cut to
//! [`MAX_VALUE`] characters and each list to [`MAX_ITEMS`] items, and the whole to
//! [`MAX_DETAIL`] bytes, so a line stays bounded; the log escapes what is left. Never the token
//! itself, a certificate or a secret.

use std::fmt::Write as _;

use serde_json::{Map, Value};

use crate::binding::BindingMode;
use crate::decision::{Decision, DenyReason, Outcome};
use crate::jwa::Algorithm;
use crate::policy::{Credential, KeyLookup, Policy, request_htu};
use crate::request::{AccessRequest, CertificateSource, PeerCertificate};
use crate::routes;
use crate::token;

/// Characters kept of one value from the token or the request.
pub const MAX_VALUE: usize = 80;
/// Items kept of one list.
pub const MAX_ITEMS: usize = 5;
/// Bytes kept of a whole detail.
pub const MAX_DETAIL: usize = 600;

impl Policy {
    /// The near-miss behind a deny, as one line, or `None` when the reason says it all (or the
    /// outcome is not a deny). `keys` and `now` are those the decision was made with.
    pub fn deny_detail(
        &self,
        keys: &dyn KeyLookup,
        request: &AccessRequest,
        decision: &Decision,
        now: i64,
    ) -> Option<String> {
        let Outcome::Deny(reason) = decision.outcome else {
            return None;
        };
        let mut out = String::new();
        self.describe(&mut out, keys, request, decision, reason, now)?;
        Some(bounded(out, MAX_DETAIL))
    }

    fn describe(
        &self,
        out: &mut String,
        keys: &dyn KeyLookup,
        request: &AccessRequest,
        decision: &Decision,
        reason: DenyReason,
        now: i64,
    ) -> Option<()> {
        use DenyReason::*;
        // Most denials say it all (and attack traffic is mostly those): nothing more is parsed.
        // Keep this list in step with the arms below (a reason missing here gets no detail).
        let described = matches!(
            reason,
            IssuerUnknown
                | AudienceMismatch
                | AlgorithmNotAllowed
                | TypInvalid
                | KeyUnknown
                | KeyTypeMismatch
                | SignatureInvalid
                | TokenExpired
                | TokenNotYetValid
                | TokenIssuedInFuture
                | ClaimsInvalid
                | CertMissing
                | CertInvalid
                | BindingMismatch
                | CnfMissing
                | X5tMissing
                | IssuerNotAllowed
                | AudienceNotAllowed
                | GroupMissing
                | ScopeMissing
                | DpopUrlMismatch
                | DpopDowngrade
                | CnfUnverified
                | TokenTooLarge
                | HeaderTooLarge
                | PolicyInvalid
        );
        if !described {
            return None;
        }
        // Reasons found before the token is read: sizes and the route's own settings.
        match reason {
            TokenTooLarge => {
                let token = crate::bearer::credentials(&request.authorization, true)
                    .map_or(0, |(_, token)| token.len());
                return write!(
                    out,
                    "token of {token} bytes; limits.max_token_bytes {}",
                    self.max_token_bytes
                )
                .ok();
            }
            HeaderTooLarge => {
                let header =
                    |name: &str, value: Option<&str>| Some((name.to_owned(), value?.len()));
                let over = [
                    header("authorization", request.authorization.value()),
                    header("x-forwarded-client-cert", request.xfcc.as_deref()),
                    header("client-cert", request.client_cert.as_deref()),
                    self.certificate_header
                        .as_ref()
                        .and_then(|h| header(&h.name, request.certificate_header.as_deref())),
                    Some((
                        "the peer certificate".to_owned(),
                        request.peer_certificate.len(),
                    )),
                ]
                .into_iter()
                .flatten()
                .find(|(_, len)| *len > self.max_header_bytes)?;
                return write!(
                    out,
                    "{} of {} bytes; limits.max_header_bytes {}",
                    over.0, over.1, self.max_header_bytes
                )
                .ok();
            }
            PolicyInvalid => {
                let value = request.context_extensions.get(routes::EXT_BINDING)?;
                return write!(
                    out,
                    "context_extensions {} {} is not required, when_present or disabled",
                    routes::EXT_BINDING,
                    quoted(value)
                )
                .ok();
            }
            _ => {}
        }
        let facts = &decision.facts;
        // An introspection answer is kept as the facts' claims without a configured issuer
        // index; a verified JWT's claims come with one.
        let introspected = facts.claims.is_some() && facts.issuer_index.is_none();
        // The token's claims and headers as sent, for the reasons found before or while
        // verifying (no verified claims yet).
        let jwt = match (&facts.claims, self.credential(request)) {
            (None, Ok(Credential::Jwt(token) | Credential::Introspect(token))) => {
                token::parse(token).ok()
            }
            _ => None,
        };
        let claims: Option<&Map<String, Value>> = match (&facts.claims, &jwt) {
            (Some(claims), _) => Some(claims),
            (None, Some(jwt)) => Some(&jwt.claims),
            (None, None) => None,
        };
        let issuer = facts.issuer_index.and_then(|i| self.issuers.get(i));
        let claim = |name: &str| claims.and_then(|c| c.get(name));
        match reason {
            IssuerUnknown => {
                let iss = claim("iss").and_then(Value::as_str).unwrap_or_default();
                let configured: Vec<&str> = match (&self.introspection, introspected) {
                    (Some(i), true) => i.issuer.iter().map(String::as_str).collect(),
                    _ => self.issuers.iter().map(|i| &*i.issuer).collect(),
                };
                match configured
                    .iter()
                    .find_map(|c| Some((*c, near_miss(iss, c)?)))
                {
                    Some((near, how)) => write!(
                        out,
                        "iss differs from the configured issuer {} only by {how}; iss must equal \
                         it exactly",
                        quoted(near)
                    ),
                    None => write!(
                        out,
                        "iss {} is not a configured issuer {}",
                        quoted(iss),
                        list(configured.iter().copied())
                    ),
                }
            }
            AudienceMismatch => {
                let accepted = match (&self.introspection, introspected) {
                    (Some(i), true) => &i.audiences,
                    _ => &issuer?.audiences,
                };
                write!(
                    out,
                    "token aud {}; accepted audiences {}",
                    audiences(claim("aud")),
                    list(accepted.iter().map(String::as_str))
                )
            }
            AlgorithmNotAllowed => {
                let alg = facts.alg.as_deref().unwrap_or("(none)");
                match issuer {
                    Some(issuer) => write!(
                        out,
                        "token alg {}; issuer's algorithms {}",
                        quoted(alg),
                        list(issuer.algorithms.iter().map(|a| a.as_str()))
                    ),
                    None => write!(
                        out,
                        "token alg {}; certbound verifies only {} (never none or HMAC)",
                        quoted(alg),
                        list(Algorithm::ALL.iter().map(|a| a.as_str()))
                    ),
                }
            }
            TypInvalid => {
                // A `typ` that is not a string is refused before parsing completes.
                let typ = self
                    .credential(request)
                    .ok()
                    .and_then(|c| match c {
                        Credential::Jwt(t) | Credential::Introspect(t) => t.split('.').next(),
                    })
                    .and_then(|header| token::decode_part(header).ok())
                    .and_then(|header| header.get("typ").cloned());
                write!(
                    out,
                    "token typ {}; the issuer requires at+jwt (RFC 9068)",
                    match &typ {
                        None => "(none)".into(),
                        Some(Value::String(t)) => quoted(t),
                        Some(other) => bounded(other.to_string(), MAX_VALUE),
                    }
                )
            }
            KeyUnknown | KeyTypeMismatch | SignatureInvalid => {
                let index = facts.issuer_index?;
                let set = keys.key_set(index)?;
                let published = set.kids().map(|k| k.unwrap_or("(no kid)"));
                let kid = facts.kid.as_deref().map_or("(none)".into(), quoted);
                let alg = facts.alg.as_deref().unwrap_or("(none)");
                match reason {
                    KeyUnknown => write!(
                        out,
                        "token kid {kid} alg {alg}; published kids {}",
                        list(published)
                    ),
                    KeyTypeMismatch => write!(
                        out,
                        "token kid {kid} alg {alg}; the key published under that kid is {}",
                        set.kinds_of(facts.kid.as_deref()?)
                    ),
                    _ => write!(
                        out,
                        "token kid {kid} alg {alg}: no published key verifies the signature \
                         (published kids {})",
                        list(published)
                    ),
                }
            }
            TokenExpired | TokenNotYetValid | TokenIssuedInFuture => {
                let name = match reason {
                    TokenExpired => "exp",
                    TokenNotYetValid => "nbf",
                    _ => "iat",
                };
                let at = claim(name).and_then(Value::as_f64)? as i64;
                write!(
                    out,
                    "{name} {at} is {} s {} now (leeway {} s)",
                    (at - now).abs(),
                    if at <= now { "before" } else { "after" },
                    self.leeway_seconds
                )
            }
            ClaimsInvalid => {
                let missing: Vec<&str> = ["iss", "exp"]
                    .into_iter()
                    .filter(|n| claim(n).is_none())
                    .collect();
                let not_numbers: Vec<&str> = ["exp", "nbf", "iat"]
                    .into_iter()
                    .filter(|n| claim(n).is_some_and(|v| !v.is_number()))
                    .collect();
                write!(
                    out,
                    "claims absent {}; not numbers {}",
                    list(missing.into_iter()),
                    list(not_numbers.into_iter())
                )
            }
            CertMissing | CertInvalid => {
                let _ = write!(out, "certificate sources looked at:");
                for source in &self.certificate_sources {
                    let _ = write!(out, " {}", self.source_state(*source, request));
                    if reason == CertInvalid && facts.certificate_source == Some(*source) {
                        let _ = write!(out, " (not a certificate)");
                    }
                }
                Ok(())
            }
            BindingMismatch => {
                let cnf = cnf_x5t(claim("cnf")).unwrap_or_default();
                write!(
                    out,
                    "certificate x5t#S256 {} from {}; token cnf.x5t#S256 {}",
                    facts
                        .thumbprint
                        .as_ref()
                        .map_or("(none)".into(), |t| t.as_base64url().to_owned()),
                    facts.certificate_source.map_or("(none)", |s| s.name()),
                    quoted(&cnf)
                )
            }
            CnfUnverified => {
                let mode = self.binding_for(request).unwrap_or(self.binding);
                write!(
                    out,
                    "token cnf {}; binding mode {mode:?}; DPoP {}",
                    claim("cnf").map_or("absent".into(), |c| bounded(c.to_string(), MAX_VALUE)),
                    if self.dpop.is_some() {
                        "enabled"
                    } else {
                        "not enabled"
                    }
                )
            }
            CnfMissing | X5tMissing => {
                let mode = self.binding_for(request).unwrap_or(self.binding);
                write!(
                    out,
                    "token cnf {}; binding mode {mode:?} (rule {})",
                    claim("cnf").map_or("absent".into(), |c| bounded(c.to_string(), MAX_VALUE)),
                    quoted(facts.rule.as_deref().unwrap_or("default"))
                )
            }
            IssuerNotAllowed | AudienceNotAllowed | GroupMissing => {
                let applied = self.routes.select(request).ok()?;
                let r = &applied.requirements;
                let rule = quoted(&applied.rule);
                match reason {
                    IssuerNotAllowed => write!(
                        out,
                        "token issuer {}; rule {rule} accepts issuers {}",
                        quoted(facts.issuer.as_deref().unwrap_or_default()),
                        list(r.issuers.iter().map(String::as_str))
                    ),
                    AudienceNotAllowed => write!(
                        out,
                        "token aud {}; rule {rule} requires one of {}",
                        audiences(claim("aud")),
                        list(r.audiences.iter().map(String::as_str))
                    ),
                    _ => write!(
                        out,
                        "rule {rule} requires {} of groups {}; token {} {}",
                        if r.groups_match_all { "all" } else { "any" },
                        list(r.groups.iter().map(String::as_str)),
                        self.routes.groups_claim,
                        list(routes::token_groups(claims?, &self.routes.groups_claim).into_iter())
                    ),
                }
            }
            ScopeMissing => write!(
                out,
                "missing scopes {}; token scopes {}",
                list(facts.missing_scopes.iter().map(String::as_str)),
                list(
                    claims
                        .map(routes::token_scopes)
                        .unwrap_or_default()
                        .into_iter()
                )
            ),
            DpopUrlMismatch => {
                let htu = self
                    .dpop
                    .as_ref()
                    .and_then(|d| request_htu(d, request))
                    .unwrap_or_else(|| "(not a valid URL)".into());
                let proof_htu = request
                    .dpop_proofs
                    .first()
                    .and_then(|p| p.split('.').nth(1))
                    .and_then(|c| token::decode_part(c).ok())
                    .and_then(|c| c.get("htu").and_then(Value::as_str).map(str::to_owned))
                    .unwrap_or_default();
                write!(
                    out,
                    "proof htu {}; request htu {}",
                    quoted(&proof_htu),
                    quoted(&htu)
                )
            }
            DpopDowngrade => write!(
                out,
                "the token is DPoP-bound (cnf.jkt){}",
                if self.dpop.is_none() {
                    "; DPoP is not enabled (dpop.enabled)"
                } else {
                    " and was sent with the Bearer scheme"
                }
            ),
            _ => return None,
        }
        .ok()
    }

    /// The binding mode of the route this request selects, if it sets one.
    fn binding_for(&self, request: &AccessRequest) -> Option<BindingMode> {
        self.routes.select(request).ok()?.requirements.binding
    }

    /// `peer: absent`, `header x-client-cert: present`: what one source had in this request.
    fn source_state(&self, source: CertificateSource, request: &AccessRequest) -> String {
        let state = |present: bool| if present { "present" } else { "absent" };
        match source {
            CertificateSource::Peer => format!(
                "peer: {}",
                state(!matches!(request.peer_certificate, PeerCertificate::Absent))
            ),
            CertificateSource::Xfcc => {
                format!(
                    "xfcc x-forwarded-client-cert: {}",
                    state(request.xfcc.is_some())
                )
            }
            CertificateSource::ClientCert => {
                format!(
                    "client_cert client-cert: {}",
                    state(request.client_cert.is_some())
                )
            }
            CertificateSource::Header => format!(
                "header {}: {}",
                self.certificate_header
                    .as_ref()
                    .map_or("(not configured)", |h| h.name.as_str()),
                state(request.certificate_header.is_some())
            ),
        }
    }
}

/// How `iss` differs from the configured issuer `configured` when only by a trailing slash,
/// ASCII case or the scheme (`http` vs `https`), or `None`.
pub fn near_miss(iss: &str, configured: &str) -> Option<&'static str> {
    if iss == configured {
        return None;
    }
    let strip_slash = |s: &str| s.trim_end_matches('/').to_owned();
    let strip_scheme = |s: &str| {
        s.split_once("://")
            .map_or(s.to_owned(), |(_, rest)| rest.to_owned())
    };
    let (a, b) = (strip_slash(iss), strip_slash(configured));
    let slash = a != iss || b != configured;
    if a == b {
        return Some("a trailing slash");
    }
    if a.eq_ignore_ascii_case(&b) {
        return Some(if slash {
            "case and a trailing slash"
        } else {
            "case"
        });
    }
    if strip_scheme(&a).eq_ignore_ascii_case(&strip_scheme(&b)) {
        return Some("the scheme (http or https)");
    }
    None
}

/// The token's `cnf.x5t#S256` (`cnf` as an object or as a JSON string).
fn cnf_x5t(cnf: Option<&Value>) -> Option<String> {
    let cnf = match cnf? {
        Value::String(s) => serde_json::from_str::<Value>(s).ok()?,
        other => other.clone(),
    };
    cnf.get("x5t#S256")?.as_str().map(str::to_owned)
}

/// `aud` as a list, whether a string or an array.
fn audiences(aud: Option<&Value>) -> String {
    match aud {
        None => "absent".into(),
        Some(Value::String(s)) => list(std::iter::once(s.as_str())),
        Some(Value::Array(items)) => {
            list(items.iter().map(|v| v.as_str().unwrap_or("(not a string)")))
        }
        Some(_) => "(not a string or an array)".into(),
    }
}

/// `"value"`, cut to [`MAX_VALUE`] characters (`…` marks a cut).
fn quoted(value: &str) -> String {
    format!("\"{}\"", bounded(value.to_owned(), MAX_VALUE))
}

/// `["a", "b", … +3 more]`: at most [`MAX_ITEMS`] items, each [`quoted`].
fn list<'a>(items: impl Iterator<Item = &'a str>) -> String {
    let items: Vec<&str> = items.collect();
    let mut out = String::from("[");
    for (i, item) in items.iter().take(MAX_ITEMS).enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        out.push_str(&quoted(item));
    }
    if items.len() > MAX_ITEMS {
        let _ = write!(out, ", … +{} more", items.len() - MAX_ITEMS);
    }
    out.push(']');
    out
}

/// `value` cut to at most `max` characters (`max` bytes for long details), `…` marking a cut.
fn bounded(mut value: String, max: usize) -> String {
    if let Some((at, _)) = value.char_indices().nth(max) {
        value.truncate(at);
        value.push('…');
    }
    if value.len() > MAX_DETAIL {
        let mut at = MAX_DETAIL;
        while !value.is_char_boundary(at) {
            at -= 1;
        }
        value.truncate(at);
        value.push('…');
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn near_misses_name_the_difference() {
        let c = "https://idp.example.com";
        assert_eq!(
            near_miss("https://idp.example.com/", c),
            Some("a trailing slash")
        );
        assert_eq!(
            near_miss(c, "https://idp.example.com/"),
            Some("a trailing slash")
        );
        assert_eq!(near_miss("https://IDP.example.com", c), Some("case"));
        assert_eq!(
            near_miss("https://IDP.example.com/", c),
            Some("case and a trailing slash")
        );
        assert_eq!(
            near_miss("http://idp.example.com", c),
            Some("the scheme (http or https)")
        );
        assert_eq!(near_miss(c, c), None);
        assert_eq!(near_miss("https://other.example.com", c), None);
        assert_eq!(near_miss("", c), None);
    }

    #[test]
    fn values_and_lists_are_bounded() {
        let long = "x".repeat(1000);
        assert_eq!(quoted(&long).chars().count(), MAX_VALUE + 3);
        let many: Vec<String> = (0..50).map(|i| format!("aud-{i}")).collect();
        let shown = list(many.iter().map(String::as_str));
        assert!(shown.ends_with(", … +45 more]"), "{shown}");
        assert!(bounded("é".repeat(2000), 5000).len() <= MAX_DETAIL + 3);
        assert_eq!(quoted("ünï"), "\"ünï\"");
    }
}
