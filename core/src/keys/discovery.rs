//! OpenID Connect Discovery 1.0: where an issuer publishes its keys.

use serde_json::Value;

/// Why a discovery document gave no usable `jwks_uri`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DiscoveryError {
    #[error("not a JSON object")]
    NotJson,
    /// §4.3: the document must be about the issuer that was asked about. A trailing slash or
    /// `localhost` for `127.0.0.1` is a different issuer, so both values are shown.
    #[error("its issuer {found:?} is not the configured issuer {expected:?}")]
    IssuerMismatch { expected: String, found: String },
    #[error("it has no jwks_uri")]
    NoJwksUri,
}

/// `{issuer}/.well-known/openid-configuration`.
pub fn discovery_url(issuer: &str) -> String {
    format!(
        "{}/.well-known/openid-configuration",
        issuer.trim_end_matches('/')
    )
}

/// The `jwks_uri` of a discovery document for `issuer` (its `issuer` must match exactly).
pub fn jwks_uri(document: &[u8], issuer: &str) -> Result<String, DiscoveryError> {
    let document: Value = serde_json::from_slice(document).map_err(|_| DiscoveryError::NotJson)?;
    let document = document.as_object().ok_or(DiscoveryError::NotJson)?;
    match document.get("issuer").and_then(Value::as_str) {
        Some(found) if found == issuer => {}
        found => {
            return Err(DiscoveryError::IssuerMismatch {
                expected: issuer.to_owned(),
                found: found.unwrap_or("(none)").to_owned(),
            });
        }
    }
    document
        .get("jwks_uri")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or(DiscoveryError::NoJwksUri)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_must_name_the_configured_issuer() {
        let doc = br#"{"issuer":"http://localhost:3000","jwks_uri":"http://localhost:3000/jwks"}"#;
        assert_eq!(
            jwks_uri(doc, "http://localhost:3000"),
            Ok("http://localhost:3000/jwks".into())
        );
        let err = jwks_uri(doc, "http://127.0.0.1:3000").expect_err("mismatch");
        let text = err.to_string();
        assert!(
            text.contains("\"http://localhost:3000\"")
                && text.contains("\"http://127.0.0.1:3000\""),
            "{text}"
        );
        let err = jwks_uri(doc, "http://localhost:3000/").expect_err("trailing slash");
        assert!(err.to_string().contains("\"http://localhost:3000/\""));
        assert_eq!(jwks_uri(b"[]", "x"), Err(DiscoveryError::NotJson));
        assert_eq!(
            jwks_uri(br#"{"issuer":"x"}"#, "x"),
            Err(DiscoveryError::NoJwksUri)
        );
    }

    #[test]
    fn the_discovery_url_is_below_the_issuer() {
        assert_eq!(
            discovery_url("https://idp.test/realms/a/"),
            "https://idp.test/realms/a/.well-known/openid-configuration"
        );
    }
}
