//! JWT access tokens (RFC 9068) verified against an issuer's key snapshot (RFC 8725 rules).

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::Algorithm;
use serde_json::{Map, Value};

use crate::decision::DenyReason;
use crate::keys::KeySet;

/// What certbound requires of one issuer's tokens.
#[derive(Clone, Debug)]
pub struct IssuerPolicy {
    /// Exact `iss` value.
    pub issuer: String,
    /// `aud` must contain at least one of these.
    pub audiences: Vec<String>,
    /// Algorithms this issuer may use; never HMAC or `none`.
    pub algorithms: Vec<Algorithm>,
    /// Require `typ` `at+jwt` (RFC 9068 §2.1), which stops ID tokens being replayed.
    pub require_typ: bool,
}

/// A token whose signature and claims were verified.
#[derive(Clone, Debug)]
pub struct VerifiedToken {
    /// Index of the issuer in the configured list.
    pub issuer: usize,
    pub kid: Option<String>,
    pub claims: Arc<Map<String, Value>>,
}

impl VerifiedToken {
    pub fn claim_str(&self, name: &str) -> Option<&str> {
        self.claims.get(name).and_then(Value::as_str)
    }

    /// The `exp` claim (present on every verified token).
    pub fn expires_at(&self) -> Option<i64> {
        self.claims.get("exp").and_then(numeric_date)
    }
}

/// A JWT split into its parts, header and claims decoded but nothing verified yet.
#[derive(Debug)]
pub struct UnverifiedJwt<'t> {
    pub alg: Algorithm,
    pub kid: Option<String>,
    pub typ: Option<String>,
    pub claims: Map<String, Value>,
    signing_input: &'t str,
    signature: &'t str,
}

/// Whether a token has the JWS compact shape (three dot-separated parts).
pub fn looks_like_jwt(token: &str) -> bool {
    token.split('.').count() == 3
}

/// Decodes a compact JWS: header checks that need no key happen here.
pub fn parse(token: &str) -> Result<UnverifiedJwt<'_>, DenyReason> {
    let mut parts = token.split('.');
    let (Some(header_b64), Some(claims_b64), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(DenyReason::TokenMalformed);
    };
    let header = decode_object(header_b64)?;
    let alg_name = header
        .get("alg")
        .and_then(Value::as_str)
        .ok_or(DenyReason::TokenMalformed)?;
    if alg_name.eq_ignore_ascii_case("none") {
        return Err(DenyReason::AlgorithmNotAllowed);
    }
    let alg: Algorithm = alg_name
        .parse()
        .map_err(|_| DenyReason::AlgorithmNotAllowed)?;
    if crate::keys::KeyKind::for_algorithm(alg).is_none() {
        // HS256/384/512: a public key must never be used as an HMAC secret.
        return Err(DenyReason::AlgorithmNotAllowed);
    }
    // certbound understands no JWS extensions, so any `crit` header is fatal (RFC 7515 §4.1.11).
    if header.contains_key("crit") {
        return Err(DenyReason::CritUnsupported);
    }
    if signature.is_empty() {
        return Err(DenyReason::TokenMalformed);
    }
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(kid)) => Some(kid.clone()),
        Some(_) => return Err(DenyReason::TokenMalformed),
    };
    let typ = match header.get("typ") {
        None => None,
        Some(Value::String(typ)) => Some(typ.clone()),
        Some(_) => return Err(DenyReason::TypInvalid),
    };
    let claims = decode_object(claims_b64)?;
    Ok(UnverifiedJwt {
        alg,
        kid,
        typ,
        claims,
        signing_input: &token[..header_b64.len() + 1 + claims_b64.len()],
        signature,
    })
}

fn decode_object(part: &str) -> Result<Map<String, Value>, DenyReason> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| DenyReason::TokenMalformed)?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(DenyReason::TokenMalformed),
    }
}

/// RFC 7519 NumericDate: a JSON number of seconds; fractions are truncated.
fn numeric_date(value: &Value) -> Option<i64> {
    match value {
        Value::Number(n) => n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)),
        _ => None,
    }
}

impl UnverifiedJwt<'_> {
    /// The unverified `iss`, used only to choose whose keys verify the token.
    pub fn issuer(&self) -> Option<&str> {
        self.claims.get("iss").and_then(Value::as_str)
    }

    /// Verifies header rules, signature and claims for one issuer, at `now` (Unix seconds).
    ///
    /// `Err(KeyUnknown)` means the token's `kid` is not in the snapshot: the caller may refetch.
    pub fn verify(
        self,
        issuer_index: usize,
        policy: &IssuerPolicy,
        keys: &KeySet,
        now: i64,
        leeway: i64,
    ) -> Result<VerifiedToken, DenyReason> {
        if !policy.algorithms.contains(&self.alg) {
            return Err(DenyReason::AlgorithmNotAllowed);
        }
        if policy.require_typ
            && !self.typ.as_deref().is_some_and(|t| {
                t.eq_ignore_ascii_case("at+jwt") || t.eq_ignore_ascii_case("application/at+jwt")
            })
        {
            return Err(DenyReason::TypInvalid);
        }
        self.verify_signature(keys)?;
        check_time_claims(&self.claims, now, leeway, true)?;
        check_audience(&self.claims, &policy.audiences)?;
        Ok(VerifiedToken {
            issuer: issuer_index,
            kid: self.kid,
            claims: Arc::new(self.claims),
        })
    }

    fn verify_signature(&self, keys: &KeySet) -> Result<(), DenyReason> {
        let mut candidates = keys.candidates(self.kid.as_deref(), self.alg).peekable();
        if candidates.peek().is_none() {
            return Err(match &self.kid {
                Some(kid) if !keys.has_kid(kid) => DenyReason::KeyUnknown,
                Some(_) => DenyReason::KeyTypeMismatch,
                None => DenyReason::KeyUnknown,
            });
        }
        let verified = candidates
            .any(|key| key.verify(self.alg, self.signing_input.as_bytes(), self.signature));
        if verified {
            Ok(())
        } else {
            Err(DenyReason::SignatureInvalid)
        }
    }
}

/// Checks an RFC 7662 answer's claims: `exp` and `nbf` when present, `iss` and `aud` when the
/// policy asks for them (`active` is the caller's to check).
pub fn check_introspected(
    answer: &Map<String, Value>,
    policy: &crate::policy::IntrospectionPolicy,
    now: i64,
    leeway: i64,
) -> Result<(), DenyReason> {
    check_time_claims(answer, now, leeway, false)?;
    if let Some(issuer) = &policy.issuer
        && answer.get("iss").and_then(Value::as_str) != Some(issuer.as_str())
    {
        return Err(DenyReason::IssuerUnknown);
    }
    if !policy.audiences.is_empty() {
        check_audience(answer, &policy.audiences)?;
    }
    Ok(())
}

fn check_time_claims(
    claims: &Map<String, Value>,
    now: i64,
    leeway: i64,
    exp_required: bool,
) -> Result<(), DenyReason> {
    let date = |name: &str| match claims.get(name) {
        None => Ok(None),
        Some(value) => numeric_date(value)
            .map(Some)
            .ok_or(DenyReason::ClaimsInvalid),
    };
    match date("exp")? {
        Some(exp) if now >= exp.saturating_add(leeway) => return Err(DenyReason::TokenExpired),
        Some(_) => {}
        None if exp_required => return Err(DenyReason::ClaimsInvalid),
        None => {}
    }
    if let Some(nbf) = date("nbf")?
        && now.saturating_add(leeway) < nbf
    {
        return Err(DenyReason::TokenNotYetValid);
    }
    if let Some(iat) = date("iat")?
        && now.saturating_add(leeway) < iat
    {
        return Err(DenyReason::TokenIssuedInFuture);
    }
    Ok(())
}

/// Whether the `aud` claim (a string or an array) contains one of `accepted`.
pub fn has_audience(claims: &Map<String, Value>, accepted: &[String]) -> bool {
    let matches = |aud: &str| accepted.iter().any(|a| a == aud);
    match claims.get("aud") {
        Some(Value::String(aud)) => matches(aud),
        Some(Value::Array(auds)) => auds.iter().filter_map(Value::as_str).any(matches),
        _ => false,
    }
}

fn check_audience(claims: &Map<String, Value>, accepted: &[String]) -> Result<(), DenyReason> {
    if has_audience(claims, accepted) {
        Ok(())
    } else {
        Err(DenyReason::AudienceMismatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;

    const NOW: i64 = 1_800_000_000;

    struct Signer {
        kid: &'static str,
        alg: Algorithm,
        key: EncodingKey,
        jwk: Value,
    }

    fn es256(kid: &'static str) -> Signer {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let raw = pair.public_key_raw();
        Signer {
            kid,
            alg: Algorithm::ES256,
            key: EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).expect("pem"),
            jwk: json!({"kty": "EC", "crv": "P-256", "kid": kid,
                        "x": URL_SAFE_NO_PAD.encode(&raw[1..33]),
                        "y": URL_SAFE_NO_PAD.encode(&raw[33..65])}),
        }
    }

    fn ed25519(kid: &'static str) -> Signer {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("key");
        Signer {
            kid,
            alg: Algorithm::EdDSA,
            key: EncodingKey::from_ed_pem(pair.serialize_pem().as_bytes()).expect("pem"),
            jwk: json!({"kty": "OKP", "crv": "Ed25519", "kid": kid,
                        "x": URL_SAFE_NO_PAD.encode(pair.public_key_raw())}),
        }
    }

    fn key_set(signers: &[&Signer]) -> KeySet {
        let doc = json!({"keys": signers.iter().map(|s| s.jwk.clone()).collect::<Vec<_>>()});
        KeySet::from_jwks(doc.to_string().as_bytes())
            .expect("jwks")
            .0
    }

    fn policy() -> IssuerPolicy {
        IssuerPolicy {
            issuer: "https://idp.test".into(),
            audiences: vec!["https://api.test".into()],
            algorithms: vec![Algorithm::ES256, Algorithm::EdDSA],
            require_typ: false,
        }
    }

    fn claims() -> Value {
        json!({"iss": "https://idp.test", "aud": "https://api.test", "sub": "alice",
               "exp": NOW + 300, "iat": NOW - 10, "nbf": NOW - 10})
    }

    fn sign_with(signer: &Signer, header: Header, claims: &Value) -> String {
        jsonwebtoken::encode(&header, claims, &signer.key).expect("sign")
    }

    fn sign(signer: &Signer, claims: &Value) -> String {
        let mut header = Header::new(signer.alg);
        header.kid = Some(signer.kid.into());
        sign_with(signer, header, claims)
    }

    fn raw_token(header: Value, claims: &Value, signature: &str) -> String {
        format!(
            "{}.{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string()),
            signature
        )
    }

    fn check(token: &str, keys: &KeySet) -> Result<VerifiedToken, DenyReason> {
        parse(token)?.verify(0, &policy(), keys, NOW, 60)
    }

    #[test]
    fn a_well_formed_token_verifies() {
        let s = es256("k1");
        let verified = check(&sign(&s, &claims()), &key_set(&[&s])).expect("valid");
        assert_eq!(verified.claim_str("sub"), Some("alice"));
        assert_eq!(verified.kid.as_deref(), Some("k1"));
    }

    #[test]
    fn eddsa_verifies() {
        let s = ed25519("ed");
        assert!(check(&sign(&s, &claims()), &key_set(&[&s])).is_ok());
    }

    #[test]
    fn alg_none_is_rejected_in_any_case() {
        for alg in ["none", "None", "NONE", "nOnE"] {
            let token = raw_token(json!({"alg": alg}), &claims(), "");
            assert_eq!(
                parse(&token).err(),
                Some(DenyReason::AlgorithmNotAllowed),
                "{alg}"
            );
        }
    }

    #[test]
    fn hmac_algorithms_are_rejected() {
        let token = raw_token(json!({"alg": "HS256", "kid": "k1"}), &claims(), "c2ln");
        assert_eq!(parse(&token).err(), Some(DenyReason::AlgorithmNotAllowed));
    }

    #[test]
    fn algorithms_outside_the_issuer_pin_are_rejected() {
        let s = es256("k1");
        let mut p = policy();
        p.algorithms = vec![Algorithm::RS256];
        let token = sign(&s, &claims());
        let result = parse(&token).and_then(|t| t.verify(0, &p, &key_set(&[&s]), NOW, 60));
        assert_eq!(result.err(), Some(DenyReason::AlgorithmNotAllowed));
    }

    #[test]
    fn crit_headers_are_rejected() {
        let token = raw_token(
            json!({"alg": "ES256", "crit": ["exp"], "exp": 1}),
            &claims(),
            "c2ln",
        );
        assert_eq!(parse(&token).err(), Some(DenyReason::CritUnsupported));
    }

    #[test]
    fn malformed_tokens_are_rejected() {
        for token in [
            "",
            "a",
            "a.b",
            "a.b.c.d",
            "!!.!!.!!",
            "e30.e30.",
            "W10.e30.c2ln",
        ] {
            assert_eq!(
                parse(token).err(),
                Some(DenyReason::TokenMalformed),
                "{token}"
            );
        }
    }

    #[test]
    fn forged_signature_is_rejected() {
        let s = es256("k1");
        let other = es256("k1");
        let token = sign(&other, &claims());
        assert_eq!(
            check(&token, &key_set(&[&s])).err(),
            Some(DenyReason::SignatureInvalid)
        );
    }

    #[test]
    fn tampered_claims_are_rejected() {
        let s = es256("k1");
        let token = sign(&s, &claims());
        let mut parts: Vec<&str> = token.split('.').collect();
        let mut c = claims();
        c["sub"] = json!("mallory");
        let tampered = URL_SAFE_NO_PAD.encode(c.to_string());
        parts[1] = &tampered;
        let forged = parts.join(".");
        assert_eq!(
            check(&forged, &key_set(&[&s])).err(),
            Some(DenyReason::SignatureInvalid)
        );
    }

    #[test]
    fn unknown_kid_asks_for_a_refetch() {
        let s = es256("new");
        let old = es256("old");
        assert_eq!(
            check(&sign(&s, &claims()), &key_set(&[&old])).err(),
            Some(DenyReason::KeyUnknown)
        );
    }

    #[test]
    fn kid_of_another_key_type_is_rejected() {
        let ec = es256("same");
        let ed = ed25519("same");
        let token = sign(&ed, &claims());
        assert_eq!(
            check(&token, &key_set(&[&ec])).err(),
            Some(DenyReason::KeyTypeMismatch)
        );
    }

    #[test]
    fn missing_kid_tries_each_key_of_the_right_type() {
        let a = es256("a");
        let b = es256("b");
        let token = sign_with(&b, Header::new(Algorithm::ES256), &claims());
        assert!(check(&token, &key_set(&[&a, &b])).is_ok());
    }

    #[test]
    fn exp_is_required_and_numeric() {
        let s = es256("k1");
        let keys = key_set(&[&s]);
        let mut c = claims();
        c.as_object_mut().expect("object").remove("exp");
        assert_eq!(
            check(&sign(&s, &c), &keys).err(),
            Some(DenyReason::ClaimsInvalid)
        );
        c["exp"] = json!("2099-01-01");
        assert_eq!(
            check(&sign(&s, &c), &keys).err(),
            Some(DenyReason::ClaimsInvalid)
        );
    }

    #[test]
    fn expiry_honours_the_leeway_edge() {
        let s = es256("k1");
        let keys = key_set(&[&s]);
        let mut c = claims();
        c["exp"] = json!(NOW - 59);
        assert!(check(&sign(&s, &c), &keys).is_ok());
        c["exp"] = json!(NOW - 60);
        assert_eq!(
            check(&sign(&s, &c), &keys).err(),
            Some(DenyReason::TokenExpired)
        );
    }

    #[test]
    fn nbf_and_iat_honour_the_leeway() {
        let s = es256("k1");
        let keys = key_set(&[&s]);
        let mut c = claims();
        c["nbf"] = json!(NOW + 60);
        assert!(check(&sign(&s, &c), &keys).is_ok());
        c["nbf"] = json!(NOW + 61);
        assert_eq!(
            check(&sign(&s, &c), &keys).err(),
            Some(DenyReason::TokenNotYetValid)
        );
        let mut c = claims();
        c["iat"] = json!(NOW + 61);
        assert_eq!(
            check(&sign(&s, &c), &keys).err(),
            Some(DenyReason::TokenIssuedInFuture)
        );
    }

    #[test]
    fn audience_may_be_a_string_or_an_array() {
        let s = es256("k1");
        let keys = key_set(&[&s]);
        let mut c = claims();
        c["aud"] = json!(["other", "https://api.test"]);
        assert!(check(&sign(&s, &c), &keys).is_ok());
        c["aud"] = json!(["other"]);
        assert_eq!(
            check(&sign(&s, &c), &keys).err(),
            Some(DenyReason::AudienceMismatch)
        );
        c.as_object_mut().expect("object").remove("aud");
        assert_eq!(
            check(&sign(&s, &c), &keys).err(),
            Some(DenyReason::AudienceMismatch)
        );
    }

    #[test]
    fn typ_is_enforced_when_required() {
        let s = es256("k1");
        let keys = key_set(&[&s]);
        let mut p = policy();
        p.require_typ = true;
        for (typ, ok) in [
            (Some("at+jwt"), true),
            (Some("application/at+jwt"), true),
            (Some("AT+JWT"), true),
            (Some("JWT"), false),
            (None, false),
        ] {
            let mut header = Header::new(Algorithm::ES256);
            header.kid = Some("k1".into());
            header.typ = typ.map(str::to_owned);
            let token = sign_with(&s, header, &claims());
            let result = parse(&token).and_then(|t| t.verify(0, &p, &keys, NOW, 60));
            assert_eq!(result.is_ok(), ok, "{typ:?}");
        }
    }
}
