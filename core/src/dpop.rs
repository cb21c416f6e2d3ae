//! DPoP (RFC 9449) at a resource server: the proof a client sends in the `DPoP` header, checked
//! against the request and the access token (§4.3), the RFC 7638 thumbprint of its key that the
//! token's `cnf.jkt` must name (§6), and the stateless nonces a server may require (§8).
//!
//! Replay (§11.1) needs state across requests: a verified proof yields a [`ReplayKey`] that the
//! adapter records in its replay store ([`crate::replay`]) before it lets the request through.

use std::fmt;

use aws_lc_rs::hmac;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::decision::DenyReason;
use crate::jwa::Algorithm;
use crate::keys::VerificationKey;

/// Longest proof considered (a compact JWS with an RSA-4096 `jwk` is ~2 KiB).
pub const MAX_PROOF_BYTES: usize = 8 * 1024;
/// Longest `jti` accepted (RFC 9449 suggests 96 bits of randomness; UUIDs are 36 characters).
const MAX_JTI_BYTES: usize = 256;
/// JWK members that only a private key has: a proof carrying one is refused (§4.3 step 7).
const PRIVATE_MEMBERS: [&str; 8] = ["d", "p", "q", "dp", "dq", "qi", "oth", "k"];

/// What certbound requires of DPoP proofs, validated from `dpop:`.
#[derive(Clone)]
pub struct DpopPolicy {
    /// Algorithms a proof may use (asymmetric only).
    pub algorithms: Vec<Algorithm>,
    /// How old a proof's `iat` may be.
    pub max_age_seconds: i64,
    /// How far a proof's `iat` may be in the future (clock skew).
    pub future_seconds: i64,
    /// The public base URL requests are reached at (`https://api.example.com`), when Envoy's
    /// view of scheme and host is not what clients use (a further proxy in front).
    pub public_base_url: Option<String>,
    /// Take scheme and host from `x-forwarded-proto` / `x-forwarded-host` (only behind a proxy
    /// that sets them).
    pub trust_forwarded_headers: bool,
    /// Server-provided nonces, when required.
    pub nonces: Option<NonceKeys>,
    /// `algs="..."` of the challenges: the accepted algorithms, space-separated.
    pub algs: std::sync::Arc<str>,
}

impl fmt::Debug for DpopPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DpopPolicy")
            .field("algorithms", &self.algorithms)
            .field("max_age_seconds", &self.max_age_seconds)
            .field("future_seconds", &self.future_seconds)
            .field("public_base_url", &self.public_base_url)
            .field("trust_forwarded_headers", &self.trust_forwarded_headers)
            .field("nonces", &self.nonces.is_some())
            .finish()
    }
}

/// A proof once it checked out: its key's thumbprint, and what to record against replay.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedProof {
    /// RFC 7638 SHA-256 thumbprint of the proof's `jwk`, base64url.
    pub jkt: String,
    pub replay: ReplayKey,
    /// The nonce the proof carried, when nonces are required.
    pub nonce: Option<String>,
}

/// A proof's identity for replay detection: SHA-256 of its key's thumbprint and its `jti`
/// (scoped by key, §11.1), kept until no proof with its `iat` would be accepted any more.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplayKey {
    pub digest: [u8; 32],
    /// SHA-256 of the proof key's thumbprint: whose proof it is (for per-key quotas).
    pub holder: [u8; 32],
    pub expires_at: i64,
}

impl ReplayKey {
    /// The digest as lower-case hex (a Redis key, say).
    pub fn hex(&self) -> String {
        self.digest.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// The RFC 7638 JWK thumbprint (SHA-256, base64url): the required members of the key, in
/// lexicographic order, as JSON without whitespace. `None` for a key type it does not define.
pub fn jwk_thumbprint(jwk: &Map<String, Value>) -> Option<String> {
    let member = |name: &str| jwk.get(name).and_then(Value::as_str);
    let members: &[&str] = match member("kty")? {
        "EC" => &["crv", "kty", "x", "y"],
        "RSA" => &["e", "kty", "n"],
        "OKP" => &["crv", "kty", "x"],
        _ => return None,
    };
    let mut canonical = String::from("{");
    for (i, name) in members.iter().enumerate() {
        if i > 0 {
            canonical.push(',');
        }
        // serde_json escapes exactly as JSON requires; the values are base64url or names anyway.
        canonical.push_str(&serde_json::to_string(name).ok()?);
        canonical.push(':');
        canonical.push_str(&serde_json::to_string(member(name)?).ok()?);
    }
    canonical.push('}');
    Some(URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes())))
}

/// `base64url(SHA-256(ASCII of the access token))`: a proof's `ath` (§4.2).
pub fn access_token_hash(token: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(token.as_bytes()))
}

/// A URI for comparison as RFC 9449 §4.3 step 9 asks: without query and fragment, normalised as
/// RFC 3986 §6.2.2 and §6.2.3 say: scheme and host in lower case, the default port dropped, an
/// empty path as `/`, dot segments removed, percent-encodings in upper case and those of
/// unreserved characters decoded. `None` when it is not an absolute http(s) URI.
pub fn normalize_htu(uri: &str) -> Option<String> {
    let uri = uri.split(['?', '#']).next().unwrap_or_default();
    let url = url::Url::parse(uri).ok()?;
    if !matches!(url.scheme(), "http" | "https") {
        return None;
    }
    let host = url.host_str()?;
    let mut out = format!("{}://{host}", url.scheme());
    if let Some(port) = url.port() {
        out.push_str(&format!(":{port}"));
    }
    // §6.2.2.1 and §6.2.2.2 on the path (the url crate already lower-cased scheme and host,
    // dropped the default port, removed dot segments and made an empty path "/").
    let path = url.path().as_bytes();
    let mut i = 0;
    while i < path.len() {
        // Exactly two hex digits (`%+F` is not an encoding: no sign is read).
        match crate::path::percent_decoded(path, i) {
            Some(byte) if crate::path::is_unreserved(byte) => {
                out.push(char::from(byte));
                i += 3;
            }
            Some(byte) => {
                crate::path::push_encoded(&mut out, byte);
                i += 3;
            }
            // A `%` that starts no encoding is itself encoded: left bare, it could meet a
            // decoded character and read as an encoding next time (`%%66` -> `%f`).
            None if path[i] == b'%' => {
                out.push_str("%25");
                i += 1;
            }
            None => {
                out.push(char::from(path[i]));
                i += 1;
            }
        }
    }
    Some(out)
}

/// Stateless server nonces (§8): an HMAC of a time slot, accepted by every replica that shares
/// the secret. A nonce is valid during its slot and the next one.
#[derive(Clone)]
pub struct NonceKeys {
    key: hmac::Key,
    /// Length of a slot in seconds.
    pub slot_seconds: i64,
}

impl NonceKeys {
    /// Keys from a shared secret (at least 16 bytes).
    pub fn new(secret: &[u8], slot_seconds: i64) -> Self {
        Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
            slot_seconds: slot_seconds.max(1),
        }
    }

    fn for_slot(&self, slot: i64) -> String {
        let tag = hmac::sign(&self.key, &slot.to_be_bytes());
        let mut raw = slot.to_be_bytes().to_vec();
        raw.extend_from_slice(&tag.as_ref()[..16]);
        URL_SAFE_NO_PAD.encode(raw)
    }

    fn slot(&self, now: i64) -> i64 {
        now.div_euclid(self.slot_seconds)
    }

    /// The nonce to hand out now.
    pub fn issue(&self, now: i64) -> String {
        self.for_slot(self.slot(now))
    }

    /// Whether `nonce` was issued in this slot or the previous one (constant-time compare).
    pub fn accepts(&self, nonce: &str, now: i64) -> bool {
        let current = self.slot(now);
        [current, current - 1]
            .iter()
            .any(|slot| bool::from(self.for_slot(*slot).as_bytes().ct_eq(nonce.as_bytes())))
    }

    /// Whether a valid `nonce` is from an earlier slot than now's: the client should get a
    /// fresh one with the answer.
    pub fn is_aging(&self, nonce: &str, now: i64) -> bool {
        !bool::from(self.issue(now).as_bytes().ct_eq(nonce.as_bytes()))
    }
}

/// What a proof is checked against.
pub struct ProofContext<'a> {
    /// The `DPoP` header's values (exactly one is a usable proof).
    pub proofs: &'a [String],
    pub method: &'a str,
    /// The request's URI, normalised ([`normalize_htu`]).
    pub htu: &'a str,
    pub access_token: &'a str,
    pub now: i64,
}

fn decode_object(part: &str) -> Result<Map<String, Value>, DenyReason> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| DenyReason::DpopProofInvalid)?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(DenyReason::DpopProofInvalid),
    }
}

impl DpopPolicy {
    /// Checks a proof as RFC 9449 §4.3 lists the steps (the binding to the token's `cnf.jkt`
    /// is the caller's, with the returned thumbprint).
    pub fn verify_proof(&self, context: &ProofContext<'_>) -> Result<VerifiedProof, DenyReason> {
        // Step 1: exactly one DPoP header holding one compact JWS (Envoy joins repeated headers
        // with commas, which a JWS never contains).
        let proof = match context.proofs {
            [] => return Err(DenyReason::DpopProofMissing),
            [one] if !one.contains(',') => one.trim(),
            _ => return Err(DenyReason::DpopProofInvalid),
        };
        if proof.len() > MAX_PROOF_BYTES {
            return Err(DenyReason::DpopProofInvalid);
        }
        // Step 2: well-formed JWS.
        let mut parts = proof.split('.');
        let (Some(header_b64), Some(claims_b64), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(DenyReason::DpopProofInvalid);
        };
        let header = decode_object(header_b64)?;
        let claims = decode_object(claims_b64)?;
        // Step 4: typ.
        if header.get("typ").and_then(Value::as_str) != Some("dpop+jwt") {
            return Err(DenyReason::DpopTypInvalid);
        }
        // Step 5: an asymmetric algorithm this server accepts (never none or MAC).
        let alg = header
            .get("alg")
            .and_then(Value::as_str)
            .and_then(Algorithm::from_name)
            .filter(|alg| self.algorithms.contains(alg))
            .ok_or(DenyReason::DpopAlgNotAllowed)?;
        if header.contains_key("crit") {
            return Err(DenyReason::DpopProofInvalid);
        }
        // Step 7: a public key only.
        let Some(Value::Object(jwk)) = header.get("jwk") else {
            return Err(DenyReason::DpopJwkInvalid);
        };
        if PRIVATE_MEMBERS.iter().any(|m| jwk.contains_key(*m)) {
            return Err(DenyReason::DpopJwkInvalid);
        }
        let jwk_value = Value::Object(jwk.clone());
        let key = VerificationKey::from_jwk(&jwk_value).map_err(|_| DenyReason::DpopJwkInvalid)?;
        if !key.accepts(alg) {
            return Err(DenyReason::DpopJwkInvalid);
        }
        let jkt = jwk_thumbprint(jwk).ok_or(DenyReason::DpopJwkInvalid)?;
        // Step 6: the signature, by that key.
        let signing_input = &proof[..header_b64.len() + 1 + claims_b64.len()];
        if signature.is_empty() || !key.verify(alg, signing_input.as_bytes(), signature) {
            return Err(DenyReason::DpopSignatureInvalid);
        }
        // Step 3: the required claims.
        let string = |name: &str| claims.get(name).and_then(Value::as_str);
        let jti = string("jti")
            .filter(|j| !j.is_empty() && j.len() <= MAX_JTI_BYTES)
            .ok_or(DenyReason::DpopProofInvalid)?;
        let htm = string("htm").ok_or(DenyReason::DpopProofInvalid)?;
        let htu = string("htu").ok_or(DenyReason::DpopProofInvalid)?;
        let iat = claims
            .get("iat")
            .and_then(|v| v.as_i64().or_else(|| v.as_f64().map(|f| f as i64)))
            .ok_or(DenyReason::DpopProofInvalid)?;
        // Step 8: the method.
        if htm != context.method {
            return Err(DenyReason::DpopMethodMismatch);
        }
        // Step 9: the URI, without query and fragment, normalised on both sides.
        if normalize_htu(htu).as_deref() != Some(context.htu) {
            return Err(DenyReason::DpopUrlMismatch);
        }
        // Step 10: the nonce, when this server requires one.
        let nonce = match &self.nonces {
            None => None,
            Some(keys) => match string("nonce") {
                Some(nonce) if keys.accepts(nonce, context.now) => Some(nonce.to_owned()),
                _ => return Err(DenyReason::DpopNonceRequired),
            },
        };
        // Step 11: the time of creation, within the window.
        if iat > context.now.saturating_add(self.future_seconds) {
            return Err(DenyReason::DpopIatInFuture);
        }
        if iat < context.now.saturating_sub(self.max_age_seconds) {
            return Err(DenyReason::DpopIatTooOld);
        }
        // Step 12: the access token hash.
        let ath = access_token_hash(context.access_token);
        if !string("ath").is_some_and(|a| bool::from(a.as_bytes().ct_eq(ath.as_bytes()))) {
            return Err(DenyReason::DpopAthMismatch);
        }
        let mut replay = Sha256::new();
        replay.update(jkt.as_bytes());
        replay.update([0]);
        replay.update(jti.as_bytes());
        Ok(VerifiedProof {
            replay: ReplayKey {
                digest: replay.finalize().into(),
                holder: Sha256::digest(jkt.as_bytes()).into(),
                // A proof with this iat is accepted until iat + max_age, and by a replica whose
                // clock lags by up to the leeway until iat + max_age + leeway: kept that long.
                expires_at: iat
                    .saturating_add(self.max_age_seconds)
                    .saturating_add(self.future_seconds)
                    .saturating_add(1),
            },
            jkt,
            nonce,
        })
    }
}

/// Whether a token's `cnf.jkt` names the proof's key, in constant time.
pub fn jkt_matches(claimed: &str, proof_jkt: &str) -> bool {
    bool::from(claimed.as_bytes().ct_eq(proof_jkt.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
    use serde_json::json;

    const NOW: i64 = 1_800_000_000;
    const HTU: &str = "https://api.test/items";

    /// RFC 7638 §3.1's example RSA key and its thumbprint.
    #[test]
    fn the_rfc_7638_example_thumbprint() {
        let jwk = json!({
            "kty": "RSA",
            "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
            "e": "AQAB",
            "alg": "RS256",
            "kid": "2011-04-29"
        });
        assert_eq!(
            jwk_thumbprint(jwk.as_object().expect("object")).as_deref(),
            Some("NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs")
        );
        assert_eq!(jwk_thumbprint(&Map::new()), None);
    }

    #[test]
    fn htu_is_compared_after_rfc_3986_normalisation() {
        let cases = [
            ("https://api.test/items", "https://api.test/items"),
            ("HTTPS://API.Test/items", "https://api.test/items"),
            ("https://api.test:443/items", "https://api.test/items"),
            ("http://api.test:80/items", "http://api.test/items"),
            ("https://api.test:8443/items", "https://api.test:8443/items"),
            ("https://api.test", "https://api.test/"),
            (
                "https://api.test/items?page=1#top",
                "https://api.test/items",
            ),
            ("https://api.test/a%2fb", "https://api.test/a%2Fb"),
            ("https://api.test/%7Euser/%61", "https://api.test/~user/a"),
            ("https://api.test/a/./b/../c", "https://api.test/a/c"),
            // Not an encoding: a sign is not a hex digit, and one digit is not two.
            ("https://api.test/a%+Fb", "https://api.test/a%25+Fb"),
            ("https://api.test/a%-1b", "https://api.test/a%25-1b"),
            // Found by the htu fuzzer: a decoded `f` after a bare `%` is not a new encoding.
            ("https://api.test/a%%66", "https://api.test/a%25f"),
        ];
        for (input, expected) in cases {
            assert_eq!(normalize_htu(input).as_deref(), Some(expected), "{input}");
        }
        assert_eq!(normalize_htu("ftp://api.test/x"), None);
        assert_eq!(normalize_htu("/items"), None);
        assert_ne!(
            normalize_htu("https://api.test/Items"),
            normalize_htu("https://api.test/items"),
            "the path's case matters"
        );
    }

    #[test]
    fn nonces_are_valid_for_their_slot_and_the_next() {
        let keys = NonceKeys::new(b"a shared secret of 32 bytes....", 60);
        let nonce = keys.issue(NOW);
        assert!(keys.accepts(&nonce, NOW));
        assert!(keys.accepts(&nonce, NOW + 60));
        assert!(!keys.accepts(&nonce, NOW + 120));
        assert!(!keys.accepts("garbage", NOW));
        let other = NonceKeys::new(b"another secret of 32 bytes.....", 60);
        assert!(!other.accepts(&nonce, NOW), "another secret's nonce");
        assert!(keys.is_aging(&nonce, NOW + 60));
        assert!(!keys.is_aging(&keys.issue(NOW + 60), NOW + 60));
    }

    struct Client {
        pair: EcdsaKeyPair,
        jwk: Value,
    }

    impl Client {
        fn new() -> Self {
            let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).expect("key");
            let point = pair.public_key().as_ref().to_vec();
            let jwk = json!({"kty": "EC", "crv": "P-256",
                             "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
                             "y": URL_SAFE_NO_PAD.encode(&point[33..65])});
            Self { pair, jwk }
        }

        fn jkt(&self) -> String {
            jwk_thumbprint(self.jwk.as_object().expect("object")).expect("thumbprint")
        }

        fn sign(&self, header: &Value, claims: &Value) -> String {
            let input = format!(
                "{}.{}",
                URL_SAFE_NO_PAD.encode(header.to_string()),
                URL_SAFE_NO_PAD.encode(claims.to_string())
            );
            let rng = aws_lc_rs::rand::SystemRandom::new();
            let signature = self.pair.sign(&rng, input.as_bytes()).expect("sign");
            format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature.as_ref()))
        }

        fn header(&self) -> Value {
            json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": self.jwk})
        }

        fn claims(&self) -> Value {
            json!({"jti": "j-1", "htm": "GET", "htu": HTU, "iat": NOW,
                   "ath": access_token_hash("the-token")})
        }

        fn proof_with(&self, edit: impl Fn(&mut Value, &mut Value)) -> String {
            let (mut header, mut claims) = (self.header(), self.claims());
            edit(&mut header, &mut claims);
            self.sign(&header, &claims)
        }
    }

    fn policy() -> DpopPolicy {
        DpopPolicy {
            algorithms: vec![Algorithm::ES256, Algorithm::EdDSA],
            max_age_seconds: 300,
            future_seconds: 5,
            public_base_url: None,
            trust_forwarded_headers: false,
            nonces: None,
            algs: "ES256 EdDSA".into(),
        }
    }

    fn check(policy: &DpopPolicy, proofs: &[String]) -> Result<VerifiedProof, DenyReason> {
        policy.verify_proof(&ProofContext {
            proofs,
            method: "GET",
            htu: HTU,
            access_token: "the-token",
            now: NOW,
        })
    }

    #[test]
    fn a_good_proof_gives_its_keys_thumbprint_and_a_replay_key() {
        let client = Client::new();
        let proof = client.proof_with(|_, _| {});
        let verified = check(&policy(), &[proof]).expect("valid");
        assert_eq!(verified.jkt, client.jkt());
        // The window (300 s) plus the leeway (5 s), so a replica whose clock lags still sees it.
        assert_eq!(verified.replay.expires_at, NOW + 306);
        let again = check(&policy(), &[client.proof_with(|_, _| {})]).expect("valid");
        assert_eq!(
            verified.replay, again.replay,
            "same key and jti: same replay key"
        );
        let other_jti = check(
            &policy(),
            &[client.proof_with(|_, c| c["jti"] = json!("j-2"))],
        );
        assert_ne!(verified.replay, other_jti.expect("valid").replay);
    }

    #[test]
    fn each_step_of_rfc_9449_refuses_with_its_reason() {
        let client = Client::new();
        let p = |edit: &dyn Fn(&mut Value, &mut Value)| vec![client.proof_with(edit)];
        let cases: Vec<(Vec<String>, DenyReason)> = vec![
            (vec![], DenyReason::DpopProofMissing),
            (
                vec![client.proof_with(|_, _| {}), client.proof_with(|_, _| {})],
                DenyReason::DpopProofInvalid,
            ),
            (
                vec![format!("{},{}", client.proof_with(|_, _| {}), "x")],
                DenyReason::DpopProofInvalid,
            ),
            (vec!["not.a.jws!".into()], DenyReason::DpopProofInvalid),
            (vec!["a.b".into()], DenyReason::DpopProofInvalid),
            (
                p(&|h, _| h["typ"] = json!("JWT")),
                DenyReason::DpopTypInvalid,
            ),
            (
                p(&|h, _| {
                    h.as_object_mut().expect("object").remove("typ");
                }),
                DenyReason::DpopTypInvalid,
            ),
            (
                p(&|h, _| h["alg"] = json!("none")),
                DenyReason::DpopAlgNotAllowed,
            ),
            (
                p(&|h, _| h["alg"] = json!("HS256")),
                DenyReason::DpopAlgNotAllowed,
            ),
            (
                p(&|h, _| h["alg"] = json!("RS256")),
                DenyReason::DpopAlgNotAllowed,
            ),
            (
                p(&|h, _| h["alg"] = json!("EdDSA")),
                DenyReason::DpopJwkInvalid,
            ),
            (
                p(&|h, _| h["jwk"]["d"] = json!("c2VjcmV0")),
                DenyReason::DpopJwkInvalid,
            ),
            (
                p(&|h, _| {
                    h.as_object_mut().expect("object").remove("jwk");
                }),
                DenyReason::DpopJwkInvalid,
            ),
            (
                p(&|h, _| h["jwk"] = json!({"kty": "oct", "k": "c2VjcmV0"})),
                DenyReason::DpopJwkInvalid,
            ),
            (
                p(&|h, _| h["jwk"] = Client::new().jwk),
                DenyReason::DpopSignatureInvalid,
            ),
            (
                p(&|_, c| {
                    c.as_object_mut().expect("object").remove("jti");
                }),
                DenyReason::DpopProofInvalid,
            ),
            (
                p(&|_, c| c["jti"] = json!("")),
                DenyReason::DpopProofInvalid,
            ),
            (
                p(&|_, c| c["htm"] = json!("POST")),
                DenyReason::DpopMethodMismatch,
            ),
            (
                p(&|_, c| c["htm"] = json!("get")),
                DenyReason::DpopMethodMismatch,
            ),
            (
                p(&|_, c| c["htu"] = json!("https://api.test/other")),
                DenyReason::DpopUrlMismatch,
            ),
            (
                p(&|_, c| c["htu"] = json!("https://evil.test/items")),
                DenyReason::DpopUrlMismatch,
            ),
            (
                p(&|_, c| c["iat"] = json!(NOW - 301)),
                DenyReason::DpopIatTooOld,
            ),
            (
                p(&|_, c| c["iat"] = json!(NOW + 6)),
                DenyReason::DpopIatInFuture,
            ),
            (
                p(&|_, c| {
                    c.as_object_mut().expect("object").remove("ath");
                }),
                DenyReason::DpopAthMismatch,
            ),
            (
                p(&|_, c| c["ath"] = json!(access_token_hash("another-token"))),
                DenyReason::DpopAthMismatch,
            ),
        ];
        for (proofs, reason) in cases {
            assert_eq!(check(&policy(), &proofs).err(), Some(reason), "{reason:?}");
        }
        // The edges of the window, and query, fragment and normalisation in htu, are accepted.
        for edit in [
            &(|_: &mut Value, c: &mut Value| c["iat"] = json!(NOW - 300))
                as &dyn Fn(&mut Value, &mut Value),
            &|_, c| c["iat"] = json!(NOW + 5),
            &|_, c| c["htu"] = json!("HTTPS://API.TEST:443/items?x=1#f"),
        ] {
            assert!(check(&policy(), &p(edit)).is_ok());
        }
    }

    #[test]
    fn a_required_nonce_must_be_current() {
        let client = Client::new();
        let keys = NonceKeys::new(b"a shared secret of 32 bytes....", 60);
        let policy = DpopPolicy {
            nonces: Some(keys.clone()),
            ..policy()
        };
        let missing = client.proof_with(|_, _| {});
        assert_eq!(
            check(&policy, &[missing]).err(),
            Some(DenyReason::DpopNonceRequired)
        );
        let stale = keys.issue(NOW - 120);
        let proof = client.proof_with(|_, c| c["nonce"] = json!(stale));
        assert_eq!(
            check(&policy, &[proof]).err(),
            Some(DenyReason::DpopNonceRequired)
        );
        let fresh = keys.issue(NOW);
        let proof = client.proof_with(|_, c| c["nonce"] = json!(fresh));
        assert_eq!(check(&policy, &[proof]).expect("valid").nonce, Some(fresh));
    }
}
