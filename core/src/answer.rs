//! What a decision answers: the client's response to a refusal, and the metadata for access logs.
//! Every adapter sends exactly these bytes, so the service and the Envoy module answer alike.

use std::borrow::Cow;

use crate::decision::{Decision, DenyReason, Outcome};
use crate::resource::METADATA_CACHE_CONTROL;

pub const UNAUTHORIZED_BODY: &str = r#"{"message":"unauthorized"}"#;
pub const FORBIDDEN_BODY: &str = r#"{"message":"forbidden"}"#;
pub const BAD_REQUEST_BODY: &str = r#"{"message":"bad request"}"#;
pub const UNAVAILABLE_BODY: &str = r#"{"message":"service unavailable"}"#;
pub const NOT_FOUND_BODY: &str = r#"{"message":"not found"}"#;
pub const METHOD_NOT_ALLOWED_BODY: &str = r#"{"message":"method not allowed"}"#;
/// The methods a metadata path answers.
const METADATA_METHODS: &str = "GET, HEAD, OPTIONS";

/// The response a refused request gets instead of reaching the upstream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpAnswer {
    pub status: u16,
    /// Lower-case names; each replaces any header of that name.
    pub headers: Vec<(&'static str, String)>,
    /// A fixed message, or a resource's metadata document.
    pub body: Cow<'static, str>,
}

impl Decision {
    /// The client's response to a deny (401/403 with the RFC 6750 challenge) or to an
    /// unavailable outcome (503); `None` for an allow. With `reason_header`, denies carry
    /// `x-certbound-reason`.
    pub fn http_answer(&self, reason_header: bool) -> Option<HttpAnswer> {
        let json = ("content-type", "application/json".to_owned());
        match &self.outcome {
            Outcome::Allow(_) => None,
            // RFC 9728 §3.2: the document as `application/json`; public, so any origin may
            // read it and caches may keep it a while.
            Outcome::Metadata(answer) if !answer.options => Some(HttpAnswer {
                status: 200,
                headers: vec![
                    json,
                    ("cache-control", METADATA_CACHE_CONTROL.to_owned()),
                    ("access-control-allow-origin", "*".to_owned()),
                ],
                body: Cow::Owned(answer.resource.document.clone()),
            }),
            // OPTIONS, as a browser sends before reading the document from another origin (the
            // MCP SDK's discovery adds `MCP-Protocol-Version`, which needs a preflight): any
            // origin may GET it with any request header, since it carries no credentials.
            Outcome::Metadata(_) => Some(HttpAnswer {
                status: 204,
                headers: vec![
                    ("allow", METADATA_METHODS.to_owned()),
                    ("access-control-allow-origin", "*".to_owned()),
                    ("access-control-allow-methods", METADATA_METHODS.to_owned()),
                    ("access-control-allow-headers", "*".to_owned()),
                    ("access-control-max-age", "86400".to_owned()),
                ],
                body: Cow::Borrowed(""),
            }),
            Outcome::Deny(reason) if reason.is_not_about_credentials() => {
                let mut headers = vec![json];
                if *reason == DenyReason::MethodNotAllowed {
                    headers.push(("allow", METADATA_METHODS.to_owned()));
                }
                if reason_header {
                    headers.push(("x-certbound-reason", reason.as_str().to_owned()));
                }
                Some(HttpAnswer {
                    status: self.http_status(),
                    headers,
                    body: Cow::Borrowed(match reason {
                        DenyReason::MethodNotAllowed => METHOD_NOT_ALLOWED_BODY,
                        _ => NOT_FOUND_BODY,
                    }),
                })
            }
            Outcome::Deny(reason) => {
                let mut headers = vec![
                    json,
                    ("www-authenticate", self.challenge().unwrap_or_default()),
                ];
                if reason_header {
                    headers.push(("x-certbound-reason", reason.as_str().to_owned()));
                }
                if let Some(nonce) = self.facts.dpop.as_ref().and_then(|d| d.nonce.clone()) {
                    headers.push(("dpop-nonce", nonce));
                }
                Some(HttpAnswer {
                    status: self.http_status(),
                    headers,
                    body: Cow::Borrowed(if reason.is_forbidden() {
                        FORBIDDEN_BODY
                    } else if reason.is_bad_request() {
                        BAD_REQUEST_BODY
                    } else {
                        UNAUTHORIZED_BODY
                    }),
                })
            }
            Outcome::Unavailable(_) => Some(HttpAnswer {
                status: 503,
                headers: vec![json],
                body: Cow::Borrowed(UNAVAILABLE_BODY),
            }),
        }
    }

    /// What access logs and later filters may read: the decision and its reason always, the
    /// route rule that decided (its name, or `default`) once one was chosen, the issuer and the
    /// client thumbprint when known, `sub`, `client_id` and `scope` of an allowed token. Never
    /// the token or the certificate.
    pub fn metadata(&self) -> Vec<(&'static str, &str)> {
        self.metadata_fields().into_iter().flatten().collect()
    }

    /// [`Decision::metadata`] without allocating: the fields in the same order
    /// ([`MetadataFields::NAMES`]), `None` for those this decision does not have (for a caller
    /// that copies them straight out).
    pub fn metadata_fields(&self) -> [Option<(&'static str, &str)>; 9] {
        let facts = &self.facts;
        let allowed = matches!(self.outcome, Outcome::Allow(_));
        let claim = |name: &'static str| {
            allowed
                .then(|| facts.claim_str(name))
                .flatten()
                .map(|value| (name, value))
        };
        [
            Some(("decision", self.outcome_name())),
            Some(("reason", self.reason())),
            facts.rule.as_deref().map(|rule| ("rule", rule)),
            facts.issuer.as_deref().map(|issuer| ("iss", issuer)),
            claim("sub"),
            claim("client_id"),
            claim("scope"),
            facts
                .thumbprint
                .as_ref()
                .map(|thumbprint| ("x5t#S256", thumbprint.as_base64url())),
            facts
                .dpop
                .as_ref()
                .and_then(|d| d.jkt.as_deref())
                .map(|jkt| ("jkt", jkt)),
        ]
    }
}

/// Which of [`Decision::metadata_fields`] an adapter hands on (the module's
/// `module.dynamic_metadata`): each field costs Envoy an entry in the stream's metadata
/// `Struct` on every check, so a deployment sets only those something reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MetadataFields(u16);

impl MetadataFields {
    /// The field names, in the order of [`Decision::metadata_fields`].
    pub const NAMES: [&'static str; 9] = [
        "decision",
        "reason",
        "rule",
        "iss",
        "sub",
        "client_id",
        "scope",
        "x5t#S256",
        "jkt",
    ];
    pub const ALL: Self = Self((1 << Self::NAMES.len()) - 1);
    pub const NONE: Self = Self(0);

    /// The fields named; `Err` with the first name that is not one.
    pub fn named<'a>(names: impl IntoIterator<Item = &'a str>) -> Result<Self, &'a str> {
        let mut bits = 0;
        for name in names {
            let index = Self::NAMES.iter().position(|n| *n == name).ok_or(name)?;
            bits |= 1 << index;
        }
        Ok(Self(bits))
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// `fields` with those not selected left out.
    pub fn select<T>(self, fields: [Option<T>; 9]) -> [Option<T>; 9] {
        let mut index = 0;
        fields.map(|field| {
            let keep = self.0 & (1 << index) != 0;
            index += 1;
            field.filter(|_| keep)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decision::{DenyReason, UnavailableReason, Upstream};

    #[test]
    fn metadata_fields_are_selected_by_name() {
        let mut decision = Decision::deny(DenyReason::TokenMissing);
        decision.facts.rule = Some("admin".into());
        decision.facts.issuer = Some("https://idp.example.com".into());
        let fields = decision.metadata_fields();
        for (field, name) in fields.iter().zip(MetadataFields::NAMES) {
            if let Some((key, _)) = field {
                assert_eq!(*key, name, "NAMES follows metadata_fields");
            }
        }
        let logged = MetadataFields::named(["decision", "rule"]).expect("names");
        let kept: Vec<_> = logged.select(fields).into_iter().flatten().collect();
        assert_eq!(kept, [("decision", "deny"), ("rule", "admin")]);
        assert_eq!(
            MetadataFields::ALL.select(fields),
            fields,
            "ALL keeps every field"
        );
        assert!(
            MetadataFields::NONE
                .select(fields)
                .iter()
                .all(Option::is_none)
        );
        assert_eq!(MetadataFields::named(["reason", "subject"]), Err("subject"));
        assert!(MetadataFields::named([]).expect("none").is_empty());
    }

    #[test]
    fn every_deny_is_json_with_a_challenge() {
        for &reason in DenyReason::ALL {
            let answer = Decision::deny(reason).http_answer(false).expect("answer");
            if reason.is_not_about_credentials() {
                assert!(
                    answer
                        .headers
                        .iter()
                        .all(|(name, _)| *name != "www-authenticate")
                );
                assert_eq!(answer.status, Decision::deny(reason).http_status());
                continue;
            }
            assert_eq!(
                answer.headers[0],
                ("content-type", "application/json".into())
            );
            assert_eq!(answer.headers[1].0, "www-authenticate");
            assert_eq!(answer.headers.len(), 2);
            if reason.is_forbidden() {
                assert_eq!((answer.status, answer.body.as_ref()), (403, FORBIDDEN_BODY));
            } else if reason.is_bad_request() {
                assert_eq!(
                    (answer.status, answer.body.as_ref()),
                    (400, BAD_REQUEST_BODY)
                );
                assert_eq!(answer.headers[1].1, r#"Bearer error="invalid_request""#);
            } else {
                assert_eq!(
                    (answer.status, answer.body.as_ref()),
                    (401, UNAUTHORIZED_BODY)
                );
            }
        }
        let with_reason = Decision::deny(DenyReason::BindingMismatch).http_answer(true);
        assert_eq!(
            with_reason.expect("answer").headers[2],
            ("x-certbound-reason", "binding_mismatch".into())
        );
    }

    #[test]
    fn unavailable_is_a_json_503_and_allow_has_no_answer() {
        let answer = Decision::unavailable(UnavailableReason::KeysUnavailable)
            .http_answer(true)
            .expect("answer");
        assert_eq!(answer.status, 503);
        assert_eq!(answer.body, UNAVAILABLE_BODY);
        assert_eq!(
            answer.headers,
            [("content-type", "application/json".into())]
        );
        let allow = Decision {
            outcome: Outcome::Allow(Upstream::default()),
            facts: Default::default(),
        };
        assert_eq!(allow.http_answer(true), None);
        assert_eq!(allow.metadata(), [("decision", "allow"), ("reason", "ok")]);
        assert_eq!(
            allow
                .metadata_fields()
                .into_iter()
                .flatten()
                .collect::<Vec<_>>(),
            allow.metadata()
        );
        assert_eq!(allow.metadata_fields()[2..], [None; 7]);
        let mut public = allow.clone();
        public.facts.rule = Some("public".into());
        assert_eq!(
            public.metadata(),
            [("decision", "allow"), ("reason", "ok"), ("rule", "public")]
        );
    }
}
