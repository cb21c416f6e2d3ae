//! RFC 8705 §3: the token's `cnf["x5t#S256"]` must name the certificate on this connection.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::Value;

use crate::certificate::{CertificateError, Thumbprint};
use crate::decision::DenyReason;

/// How strictly tokens must be bound to the client certificate.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BindingMode {
    /// Every token must be bound, and to this connection's certificate (the reference behaviour).
    #[default]
    Required,
    /// Tokens that carry `cnf.x5t#S256` must match; unbound tokens pass (migration).
    WhenPresent,
    /// No binding check.
    Disabled,
}

/// The certificate found for the request: absent, unusable, or its thumbprint.
pub type CertificateOutcome = Result<Option<Thumbprint>, CertificateError>;

/// Checks the binding in the reference order; the first failure wins:
/// certificate absent -> certificate not decodable -> no `cnf` -> `cnf` a string that is not JSON
/// -> `cnf` not an object -> no non-empty string `x5t#S256` -> mismatch (constant time).
///
/// `dpop_bound`: the token's `cnf.jkt` named the key of a verified DPoP proof. Such a token is
/// bound (for `required`), and its certificate binding is checked only when it has one too.
pub fn check(
    mode: BindingMode,
    certificate: &CertificateOutcome,
    cnf: Option<&Value>,
    dpop_bound: bool,
) -> Result<(), DenyReason> {
    match mode {
        BindingMode::Disabled => Ok(()),
        BindingMode::WhenPresent if claimed_thumbprint(cnf).is_err() => Ok(()),
        BindingMode::Required
            if dpop_bound && claimed_thumbprint(cnf) == Err(DenyReason::X5tMissing) =>
        {
            Ok(())
        }
        BindingMode::WhenPresent | BindingMode::Required => {
            let thumbprint = match certificate {
                Ok(Some(thumbprint)) => thumbprint,
                Ok(None) => return Err(DenyReason::CertMissing),
                Err(_) => return Err(DenyReason::CertInvalid),
            };
            let claimed = claimed_thumbprint(cnf)?;
            if thumbprint.matches_x5t_s256(&claimed) {
                Ok(())
            } else {
                Err(DenyReason::BindingMismatch)
            }
        }
    }
}

/// The confirmation methods a token's `cnf` names. Every member of `cnf` is one (RFC 7800
/// §3.1): `x5t#S256` (RFC 8705), `jkt` (RFC 9449), and others certbound never verifies (`jwk`,
/// `jku`, `kid`, `jwe`, anything unknown).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Confirmation {
    pub x5t_s256: bool,
    pub jkt: bool,
    /// A member certbound does not verify: such a token is never accepted.
    pub unverifiable: bool,
}

/// Reads the methods a token's `cnf` names: `None` when it has no `cnf` (or `null`), the only
/// unbound token; `Err(CnfInvalid)` when `cnf` is not an object (or a JSON string of one), or
/// names no method at all.
pub fn confirmation(cnf: Option<&Value>) -> Result<Option<Confirmation>, DenyReason> {
    let parsed;
    let object = match cnf {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(text)) => {
            parsed = serde_json::from_str::<Value>(text).map_err(|_| DenyReason::CnfInvalid)?;
            &parsed
        }
        Some(other) => other,
    };
    let object = object.as_object().ok_or(DenyReason::CnfInvalid)?;
    if object.is_empty() {
        return Err(DenyReason::CnfInvalid);
    }
    let mut methods = Confirmation::default();
    for name in object.keys() {
        match name.as_str() {
            "x5t#S256" => methods.x5t_s256 = true,
            "jkt" => methods.jkt = true,
            _ => methods.unverifiable = true,
        }
    }
    Ok(Some(methods))
}

/// The `jkt` (RFC 9449 §6) a token's `cnf` claims, if it is a well-formed `cnf` with a non-empty
/// string `jkt`. A malformed `cnf` is reported by the certificate check, in the reference order.
pub fn claimed_jkt(cnf: Option<&Value>) -> Option<String> {
    let parsed;
    let object = match cnf? {
        Value::String(text) => {
            parsed = serde_json::from_str::<Value>(text).ok()?;
            &parsed
        }
        other => other,
    };
    match object.get("jkt") {
        Some(Value::String(jkt)) if !jkt.is_empty() => Some(jkt.clone()),
        _ => None,
    }
}

/// The `x5t#S256` a token claims: borrowed from the claims, or owned when an introspection
/// server sent `cnf` as a JSON string.
fn claimed_thumbprint(cnf: Option<&Value>) -> Result<Cow<'_, str>, DenyReason> {
    fn thumbprint(object: &Value) -> Result<&str, DenyReason> {
        match object
            .as_object()
            .ok_or(DenyReason::CnfInvalid)?
            .get("x5t#S256")
        {
            Some(Value::String(x5t)) if !x5t.is_empty() => Ok(x5t),
            _ => Err(DenyReason::X5tMissing),
        }
    }
    match cnf {
        None | Some(Value::Null) => Err(DenyReason::CnfMissing),
        Some(Value::String(text)) => {
            let parsed = serde_json::from_str::<Value>(text).map_err(|_| DenyReason::CnfInvalid)?;
            thumbprint(&parsed).map(|x5t| Cow::Owned(x5t.to_owned()))
        }
        Some(object) => thumbprint(object).map(Cow::Borrowed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const VECTOR: &str = "ZoQN2hVOihE8Md0K0y9_OjZqgOgTaXnY9aEB09Kdb3I";

    fn cert() -> CertificateOutcome {
        Ok(Some(Thumbprint::of_der(&[1, 2, 3, 4, 5, 6, 7, 8])))
    }

    fn required(certificate: &CertificateOutcome, cnf: Value) -> Result<(), DenyReason> {
        check(BindingMode::Required, certificate, Some(&cnf), false)
    }

    #[test]
    fn a_dpop_bound_token_counts_as_bound_and_a_doubly_bound_one_needs_both() {
        let jkt_only = json!({"jkt": "abc"});
        assert_eq!(
            check(BindingMode::Required, &Ok(None), Some(&jkt_only), true),
            Ok(())
        );
        assert_eq!(
            check(BindingMode::Required, &Ok(None), Some(&jkt_only), false),
            Err(DenyReason::CertMissing)
        );
        let both = json!({"jkt": "abc", "x5t#S256": VECTOR});
        assert_eq!(
            check(BindingMode::Required, &Ok(None), Some(&both), true),
            Err(DenyReason::CertMissing)
        );
        assert_eq!(
            check(BindingMode::Required, &cert(), Some(&both), true),
            Ok(())
        );
        assert_eq!(claimed_jkt(Some(&both)).as_deref(), Some("abc"));
        assert_eq!(
            claimed_jkt(Some(&json!(r#"{"jkt":"s"}"#))).as_deref(),
            Some("s")
        );
        assert_eq!(claimed_jkt(Some(&json!({"jkt": ""}))), None);
        assert_eq!(claimed_jkt(Some(&json!("not json"))), None);
        assert_eq!(claimed_jkt(None), None);
    }

    #[test]
    fn matching_thumbprint_is_accepted() {
        assert_eq!(required(&cert(), json!({"x5t#S256": VECTOR})), Ok(()));
    }

    #[test]
    fn cnf_as_a_json_string_is_accepted() {
        let cnf = json!(format!(r#"{{"x5t#S256":"{VECTOR}"}}"#));
        assert_eq!(required(&cert(), cnf), Ok(()));
    }

    #[test]
    fn each_failure_in_reference_order() {
        let good = json!({"x5t#S256": VECTOR});
        assert_eq!(
            required(&Ok(None), good.clone()),
            Err(DenyReason::CertMissing)
        );
        assert_eq!(
            required(&Err(CertificateError::NotX509), good.clone()),
            Err(DenyReason::CertInvalid)
        );
        assert_eq!(
            check(BindingMode::Required, &cert(), None, false),
            Err(DenyReason::CnfMissing)
        );
        assert_eq!(required(&cert(), Value::Null), Err(DenyReason::CnfMissing));
        assert_eq!(
            required(&cert(), json!("not json")),
            Err(DenyReason::CnfInvalid)
        );
        assert_eq!(required(&cert(), json!(["x"])), Err(DenyReason::CnfInvalid));
        assert_eq!(required(&cert(), json!("[1]")), Err(DenyReason::CnfInvalid));
        assert_eq!(required(&cert(), json!({})), Err(DenyReason::X5tMissing));
        assert_eq!(
            required(&cert(), json!({"jkt": "abc"})),
            Err(DenyReason::X5tMissing)
        );
        assert_eq!(
            required(&cert(), json!({"x5t#S256": ""})),
            Err(DenyReason::X5tMissing)
        );
        assert_eq!(
            required(&cert(), json!({"x5t#S256": 42})),
            Err(DenyReason::X5tMissing)
        );
        assert_eq!(
            required(
                &cert(),
                json!({"x5t#S256": "47DEQpj8HBSa-_TImW-5JCeuQeRkm5NMpJWZG3hSuFU"})
            ),
            Err(DenyReason::BindingMismatch)
        );
    }

    #[test]
    fn certificate_problems_come_before_cnf_problems() {
        assert_eq!(
            check(BindingMode::Required, &Ok(None), None, false),
            Err(DenyReason::CertMissing)
        );
    }

    #[test]
    fn when_present_skips_unbound_tokens_only() {
        assert_eq!(
            check(BindingMode::WhenPresent, &Ok(None), None, false),
            Ok(())
        );
        assert_eq!(
            check(
                BindingMode::WhenPresent,
                &Ok(None),
                Some(&json!({"x5t#S256": VECTOR})),
                false
            ),
            Err(DenyReason::CertMissing)
        );
        assert_eq!(
            check(
                BindingMode::WhenPresent,
                &cert(),
                Some(&json!({"x5t#S256": "wrong"})),
                false
            ),
            Err(DenyReason::BindingMismatch)
        );
    }

    #[test]
    fn every_member_of_cnf_is_a_confirmation_method() {
        assert_eq!(confirmation(None), Ok(None));
        assert_eq!(confirmation(Some(&Value::Null)), Ok(None));
        let read = |v: Value| confirmation(Some(&v));
        assert_eq!(
            read(json!({"x5t#S256": VECTOR})),
            Ok(Some(Confirmation {
                x5t_s256: true,
                ..Confirmation::default()
            }))
        );
        assert_eq!(
            read(json!(r#"{"jkt":"a"}"#)),
            Ok(Some(Confirmation {
                jkt: true,
                ..Confirmation::default()
            }))
        );
        for foreign in ["jwk", "jku", "kid", "jwe", "x5t", "X5T#S256", "osc"] {
            let methods = read(json!({ foreign: "v", "x5t#S256": VECTOR }))
                .unwrap()
                .unwrap();
            assert!(methods.unverifiable, "{foreign}");
        }
        assert_eq!(read(json!({})), Err(DenyReason::CnfInvalid));
        assert_eq!(read(json!("{}")), Err(DenyReason::CnfInvalid));
        assert_eq!(read(json!("nope")), Err(DenyReason::CnfInvalid));
        assert_eq!(read(json!([1])), Err(DenyReason::CnfInvalid));
        assert_eq!(read(json!(true)), Err(DenyReason::CnfInvalid));
    }

    #[test]
    fn disabled_checks_nothing() {
        assert_eq!(check(BindingMode::Disabled, &Ok(None), None, false), Ok(()));
    }
}
