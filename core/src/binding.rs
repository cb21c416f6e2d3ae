//! RFC 8705 §3: the token's `cnf["x5t#S256"]` must name the certificate on this connection.

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
pub fn check(
    mode: BindingMode,
    certificate: &CertificateOutcome,
    cnf: Option<&Value>,
) -> Result<(), DenyReason> {
    match mode {
        BindingMode::Disabled => Ok(()),
        BindingMode::WhenPresent if claimed_thumbprint(cnf).is_err() => Ok(()),
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

/// The `x5t#S256` a token claims. Introspection servers may send `cnf` as a JSON string.
fn claimed_thumbprint(cnf: Option<&Value>) -> Result<String, DenyReason> {
    let parsed;
    let object = match cnf {
        None | Some(Value::Null) => return Err(DenyReason::CnfMissing),
        Some(Value::String(text)) => {
            parsed = serde_json::from_str::<Value>(text).map_err(|_| DenyReason::CnfInvalid)?;
            &parsed
        }
        Some(other) => other,
    };
    let object = object.as_object().ok_or(DenyReason::CnfInvalid)?;
    match object.get("x5t#S256") {
        Some(Value::String(x5t)) if !x5t.is_empty() => Ok(x5t.clone()),
        _ => Err(DenyReason::X5tMissing),
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
        check(BindingMode::Required, certificate, Some(&cnf))
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
            check(BindingMode::Required, &cert(), None),
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
            check(BindingMode::Required, &Ok(None), None),
            Err(DenyReason::CertMissing)
        );
    }

    #[test]
    fn when_present_skips_unbound_tokens_only() {
        assert_eq!(check(BindingMode::WhenPresent, &Ok(None), None), Ok(()));
        assert_eq!(
            check(
                BindingMode::WhenPresent,
                &Ok(None),
                Some(&json!({"x5t#S256": VECTOR}))
            ),
            Err(DenyReason::CertMissing)
        );
        assert_eq!(
            check(
                BindingMode::WhenPresent,
                &cert(),
                Some(&json!({"x5t#S256": "wrong"}))
            ),
            Err(DenyReason::BindingMismatch)
        );
    }

    #[test]
    fn disabled_checks_nothing() {
        assert_eq!(check(BindingMode::Disabled, &Ok(None), None), Ok(()));
    }
}
