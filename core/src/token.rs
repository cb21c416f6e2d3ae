//! JWT access tokens (RFC 9068) verified against an issuer's key snapshot (RFC 8725 rules).

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value};

use crate::decision::DenyReason;
use crate::jwa::Algorithm;
use crate::keys::KeySet;

/// What certbound requires of one issuer's tokens.
#[derive(Clone, Debug)]
pub struct IssuerPolicy {
    /// Exact `iss` value.
    pub issuer: Arc<str>,
    /// `aud` must contain at least one of these, outside protected resources.
    pub audiences: Vec<String>,
    /// The audiences of the protected resources this issuer may issue tokens for (RFC 8707):
    /// a token for one of them verifies, and is accepted only under that resource (the
    /// request's path decides: [`crate::Policy`]).
    pub resource_audiences: Vec<String>,
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

/// What a token says about itself before anything is verified: its `alg` and `kid` headers and
/// its `iss` claim, as sent. For logs and `explain` (a denial names them); never trusted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Claimed {
    pub alg: Option<String>,
    pub kid: Option<String>,
    pub iss: Option<String>,
}

/// Decodes a compact JWS: header checks that need no key happen here.
pub fn parse(token: &str) -> Result<UnverifiedJwt<'_>, DenyReason> {
    parse_claimed(token, &mut Claimed::default())
}

/// [`parse`], noting in `claimed` what the token says about itself, whether it parses or not.
pub fn parse_claimed<'t>(
    token: &'t str,
    claimed: &mut Claimed,
) -> Result<UnverifiedJwt<'t>, DenyReason> {
    let mut parts = token.split('.');
    let (Some(header_b64), Some(claims_b64), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(DenyReason::TokenMalformed);
    };
    let header = decode_object(header_b64)?;
    // Decoded now so that a denial for the header can still name the issuer; a claims part that
    // does not decode is reported after the header checks, as before.
    let claims = decode_object(claims_b64);
    let string = |map: &Map<String, Value>, name: &str| {
        map.get(name).and_then(Value::as_str).map(str::to_owned)
    };
    claimed.alg = string(&header, "alg");
    claimed.kid = string(&header, "kid");
    claimed.iss = claims.as_ref().ok().and_then(|c| string(c, "iss"));
    let alg_name = header
        .get("alg")
        .and_then(Value::as_str)
        .ok_or(DenyReason::TokenMalformed)?;
    // `none` (in any case) and the HMAC algorithms are not in the supported set: a public key
    // must never be used as an HMAC secret.
    let alg = Algorithm::from_name(alg_name).ok_or(DenyReason::AlgorithmNotAllowed)?;
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
    Ok(UnverifiedJwt {
        alg,
        kid,
        typ,
        claims: claims?,
        signing_input: &token[..header_b64.len() + 1 + claims_b64.len()],
        signature,
    })
}

/// One base64url part of a compact JWS as a JSON object (for a denial's detail: not verified).
pub fn decode_part(part: &str) -> Result<Map<String, Value>, DenyReason> {
    decode_object(part)
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
        if !has_audience(&self.claims, &policy.audiences)
            && !has_audience(&self.claims, &policy.resource_audiences)
        {
            return Err(DenyReason::AudienceMismatch);
        }
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
    use jsonwebtoken::{Algorithm as Jws, EncodingKey, Header};
    use serde_json::json;

    const NOW: i64 = 1_800_000_000;

    struct Signer {
        kid: &'static str,
        alg: Jws,
        key: EncodingKey,
        jwk: Value,
    }

    fn es256(kid: &'static str) -> Signer {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let raw = pair.public_key_raw();
        Signer {
            kid,
            alg: Jws::ES256,
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
            alg: Jws::EdDSA,
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
            resource_audiences: Vec::new(),
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

    /// A compact JWS with this header, signed by `sign` over the signing input.
    fn signed_raw(header: Value, claims: &Value, sign: impl Fn(&[u8]) -> Vec<u8>) -> String {
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signature = URL_SAFE_NO_PAD.encode(sign(input.as_bytes()));
        format!("{input}.{signature}")
    }

    fn pinned(algorithms: &[Algorithm]) -> IssuerPolicy {
        IssuerPolicy {
            algorithms: algorithms.to_vec(),
            ..policy()
        }
    }

    #[test]
    fn es512_verifies_with_a_p521_key() {
        use aws_lc_rs::signature::{ECDSA_P521_SHA512_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
        let pair = EcdsaKeyPair::generate(&ECDSA_P521_SHA512_FIXED_SIGNING).expect("key");
        let point = pair.public_key().as_ref();
        assert_eq!(point.len(), 133, "0x04 || x || y");
        let jwk = json!({"kty": "EC", "crv": "P-521", "kid": "p521", "alg": "ES512",
                         "x": URL_SAFE_NO_PAD.encode(&point[1..67]),
                         "y": URL_SAFE_NO_PAD.encode(&point[67..])});
        let keys = KeySet::from_jwks(json!({"keys": [jwk]}).to_string().as_bytes())
            .expect("jwks")
            .0;
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let sign = |m: &[u8]| pair.sign(&rng, m).expect("sign").as_ref().to_vec();
        let token = signed_raw(json!({"alg": "ES512", "kid": "p521"}), &claims(), sign);
        let verify = |p: &IssuerPolicy| parse(&token).and_then(|t| t.verify(0, p, &keys, NOW, 60));
        assert!(verify(&pinned(&Algorithm::ALL)).is_ok());
        assert_eq!(
            verify(&pinned(&[Algorithm::ES256])).err(),
            Some(DenyReason::AlgorithmNotAllowed)
        );
        // The same signature presented as ES384 finds no key of that kind.
        let relabelled = signed_raw(json!({"alg": "ES384", "kid": "p521"}), &claims(), sign);
        assert_eq!(
            parse(&relabelled)
                .and_then(|t| t.verify(0, &pinned(&Algorithm::ALL), &keys, NOW, 60))
                .err(),
            Some(DenyReason::KeyTypeMismatch)
        );
    }

    #[test]
    fn ed25519_verifies_under_both_of_its_names() {
        use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
        let pair = Ed25519KeyPair::generate().expect("key");
        // A JWK pinned to the fully specified name verifies tokens under either name.
        let jwk = json!({"kty": "OKP", "crv": "Ed25519", "kid": "ed", "alg": "Ed25519",
                         "x": URL_SAFE_NO_PAD.encode(pair.public_key().as_ref())});
        let keys = KeySet::from_jwks(json!({"keys": [jwk]}).to_string().as_bytes())
            .expect("jwks")
            .0;
        let sign = |m: &[u8]| pair.sign(m).as_ref().to_vec();
        for name in ["Ed25519", "EdDSA"] {
            let token = signed_raw(json!({"alg": name, "kid": "ed"}), &claims(), sign);
            let result =
                parse(&token).and_then(|t| t.verify(0, &pinned(&Algorithm::ALL), &keys, NOW, 60));
            assert!(result.is_ok(), "{name}: {result:?}");
        }
        let token = signed_raw(json!({"alg": "Ed25519", "kid": "ed"}), &claims(), sign);
        let only_eddsa = pinned(&[Algorithm::EdDSA]);
        assert_eq!(
            parse(&token)
                .and_then(|t| t.verify(0, &only_eddsa, &keys, NOW, 60))
                .err(),
            Some(DenyReason::AlgorithmNotAllowed),
            "the issuer's pin is by name"
        );
    }

    #[test]
    fn rsa_pkcs1_and_pss_tokens_from_another_library_verify() {
        use x509_parser::prelude::FromDer;
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).expect("key");
        let spki = rcgen::PublicKeyData::subject_public_key_info(&pair);
        let (_, spki) = x509_parser::x509::SubjectPublicKeyInfo::from_der(&spki).expect("spki");
        let Ok(x509_parser::public_key::PublicKey::RSA(rsa)) = spki.parsed() else {
            panic!("not an RSA key");
        };
        let strip = |b: &[u8]| {
            b.iter()
                .skip_while(|&&x| x == 0)
                .copied()
                .collect::<Vec<_>>()
        };
        let jwk = json!({"kty": "RSA", "kid": "rsa", "n": URL_SAFE_NO_PAD.encode(strip(rsa.modulus)),
                         "e": URL_SAFE_NO_PAD.encode(strip(rsa.exponent))});
        let keys = KeySet::from_jwks(json!({"keys": [jwk]}).to_string().as_bytes())
            .expect("jwks")
            .0;
        let key = EncodingKey::from_rsa_pem(pair.serialize_pem().as_bytes()).expect("pem");
        for alg in [
            Jws::RS256,
            Jws::RS384,
            Jws::RS512,
            Jws::PS256,
            Jws::PS384,
            Jws::PS512,
        ] {
            let mut header = Header::new(alg);
            header.kid = Some("rsa".into());
            let token = jsonwebtoken::encode(&header, &claims(), &key).expect("sign");
            let result =
                parse(&token).and_then(|t| t.verify(0, &pinned(&Algorithm::ALL), &keys, NOW, 60));
            assert!(result.is_ok(), "{alg:?}: {result:?}");
            // A PKCS#1 signature presented as PSS (or SHA-256 as SHA-512) does not verify.
            let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
            let swapped = match alg {
                Jws::RS256 => "PS256",
                _ => "RS512",
            };
            let mut h: Value =
                serde_json::from_slice(&URL_SAFE_NO_PAD.decode(&parts[0]).expect("b64"))
                    .expect("json");
            h["alg"] = json!(swapped);
            parts[0] = URL_SAFE_NO_PAD.encode(h.to_string());
            let forged = parts.join(".");
            assert_eq!(
                parse(&forged)
                    .and_then(|t| t.verify(0, &pinned(&Algorithm::ALL), &keys, NOW, 60))
                    .err(),
                Some(DenyReason::SignatureInvalid),
                "{alg:?} as {swapped}"
            );
        }
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
        let token = sign_with(&b, Header::new(Jws::ES256), &claims());
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
            let mut header = Header::new(Jws::ES256);
            header.kid = Some("k1".into());
            header.typ = typ.map(str::to_owned);
            let token = sign_with(&s, header, &claims());
            let result = parse(&token).and_then(|t| t.verify(0, &p, &keys, NOW, 60));
            assert_eq!(result.is_ok(), ok, "{typ:?}");
        }
    }
}
