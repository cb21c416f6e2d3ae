//! An issuer's verification keys: an immutable snapshot parsed from a JWKS document.

use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED, ECDSA_P384_SHA384_FIXED, ECDSA_P521_SHA512_FIXED, ED25519,
    ParsedPublicKey, RSA_PKCS1_2048_8192_SHA256, RSA_PKCS1_2048_8192_SHA384,
    RSA_PKCS1_2048_8192_SHA512, RSA_PSS_2048_8192_SHA256, RSA_PSS_2048_8192_SHA384,
    RSA_PSS_2048_8192_SHA512, VerificationAlgorithm,
};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::Value;

use crate::jwa::{Algorithm, KeyKind};

/// One usable verification key.
#[derive(Clone, Debug)]
pub struct VerificationKey {
    pub kid: Option<String>,
    pub kind: KeyKind,
    /// The JWK's `alg`, when it pins one.
    pub alg: Option<Algorithm>,
    pub key: PublicKey,
}

/// Key material, parsed once when the JWKS is loaded (and, for EC keys, checked to be on the
/// curve) instead of on every verification.
#[derive(Clone, Debug)]
pub enum PublicKey {
    /// EC and Ed25519 keys: one algorithm each.
    Single(ParsedPublicKey),
    /// RSA keys serve six algorithms; the key is parsed for each, in [`RSA_ALGORITHMS`] order.
    Rsa(Box<[ParsedPublicKey; 6]>),
}

/// The RSA algorithms in the order [`PublicKey::Rsa`] holds their parsed keys.
const RSA_ALGORITHMS: [(Algorithm, &dyn VerificationAlgorithm); 6] = [
    (Algorithm::RS256, &RSA_PKCS1_2048_8192_SHA256),
    (Algorithm::RS384, &RSA_PKCS1_2048_8192_SHA384),
    (Algorithm::RS512, &RSA_PKCS1_2048_8192_SHA512),
    (Algorithm::PS256, &RSA_PSS_2048_8192_SHA256),
    (Algorithm::PS384, &RSA_PSS_2048_8192_SHA384),
    (Algorithm::PS512, &RSA_PSS_2048_8192_SHA512),
];

impl VerificationKey {
    /// Whether this key may verify a signature made with `alg`.
    pub fn accepts(&self, alg: Algorithm) -> bool {
        alg.key_kind() == self.kind && self.alg.is_none_or(|pinned| alg.satisfies_pin(pinned))
    }

    /// Whether `signature` (base64url, as in the JWS) is this key's signature of `message`
    /// with `alg`. False for an algorithm the key does not accept.
    pub fn verify(&self, alg: Algorithm, message: &[u8], signature: &str) -> bool {
        self.accepts(alg) && self.key.verify(alg, message, signature)
    }
}

/// Room for the longest signature (RSA-8192: 1,024 bytes; base64's decoder asks a few more).
const MAX_SIGNATURE_BYTES: usize = 1040;

impl PublicKey {
    /// Whether `signature` (base64url) is this key's signature of `message` with `alg`; the
    /// caller has checked that the key accepts `alg` (an RSA key picks its parsed form by it).
    pub fn verify(&self, alg: Algorithm, message: &[u8], signature: &str) -> bool {
        let key = match self {
            PublicKey::Single(key) => key,
            PublicKey::Rsa(keys) => match RSA_ALGORITHMS.iter().position(|(a, _)| *a == alg) {
                Some(index) => &keys[index],
                None => return false,
            },
        };
        // Decoded on the stack: no allocation per verification.
        let mut decoded = [0u8; MAX_SIGNATURE_BYTES];
        URL_SAFE_NO_PAD
            .decode_slice(signature, &mut decoded)
            .is_ok_and(|len| key.verify_sig(message, &decoded[..len]).is_ok())
    }
}

/// A parsed JWKS: the keys certbound can use, in document order.
#[derive(Clone, Debug, Default)]
pub struct KeySet {
    keys: Vec<VerificationKey>,
}

/// Why a JWKS document was rejected as a whole.
#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    #[error("JWKS is not JSON: {0}")]
    NotJson(#[from] serde_json::Error),
    #[error("JWKS has no \"keys\" array")]
    NoKeysArray,
}

/// A key of the document that was left out, and why (logged once per fetch).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IgnoredKey {
    pub kid: Option<String>,
    pub why: &'static str,
}

impl KeySet {
    /// Parses a JWKS, keeping the keys usable for signature verification.
    ///
    /// Keys marked `use: enc`, of unknown `kty`/`crv`, with a curve that does not match their
    /// coordinates, or with an `alg` that does not fit them, are left out and reported.
    pub fn from_jwks(document: &[u8]) -> Result<(Self, Vec<IgnoredKey>), JwksError> {
        let value: Value = serde_json::from_slice(document)?;
        let entries = value
            .get("keys")
            .and_then(Value::as_array)
            .ok_or(JwksError::NoKeysArray)?;
        let mut keys = Vec::with_capacity(entries.len());
        let mut ignored = Vec::new();
        for entry in entries {
            let kid = entry.get("kid").and_then(Value::as_str).map(str::to_owned);
            match parse_key(entry) {
                Ok(key) => keys.push(VerificationKey { kid, ..key }),
                Err(why) => ignored.push(IgnoredKey { kid, why }),
            }
        }
        Ok((Self { keys }, ignored))
    }

    /// The candidate keys for a token: by `kid` when the token names one, else every key.
    pub fn candidates<'a>(
        &'a self,
        kid: Option<&'a str>,
        alg: Algorithm,
    ) -> impl Iterator<Item = &'a VerificationKey> + 'a {
        self.keys
            .iter()
            .filter(move |k| kid.is_none_or(|kid| k.kid.as_deref() == Some(kid)))
            .filter(move |k| k.accepts(alg))
    }

    /// Whether a key with this `kid` is in the set at all (of any type).
    pub fn has_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|k| k.kid.as_deref() == Some(kid))
    }

    /// The `kid` of each key, in document order (`None` for a key without one).
    pub fn kids(&self) -> impl Iterator<Item = Option<&str>> {
        self.keys.iter().map(|k| k.kid.as_deref())
    }

    /// The kinds of the keys published under `kid` (`EcP256`, `Rsa`, ...), for a denial's detail.
    pub fn kinds_of(&self, kid: &str) -> String {
        let kinds: Vec<String> = self
            .keys
            .iter()
            .filter(|k| k.kid.as_deref() == Some(kid))
            .map(|k| format!("{:?}", k.kind))
            .collect();
        kinds.join(", ")
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

fn str_field<'a>(entry: &'a (impl JwkMembers + ?Sized), name: &str) -> Option<&'a str> {
    entry.string(name)
}

/// The members of a JWK that certbound reads: a parsed JSON value, or a DPoP proof's `jwk`
/// read in place.
pub trait JwkMembers {
    /// A member's value when it is a string.
    fn string(&self, name: &str) -> Option<&str>;
    /// `key_ops` when it is an array: whether it holds `"verify"`.
    fn key_ops_verify(&self) -> Option<bool>;
}

impl JwkMembers for Value {
    fn string(&self, name: &str) -> Option<&str> {
        self.get(name).and_then(Value::as_str)
    }

    fn key_ops_verify(&self) -> Option<bool> {
        let ops = self.get("key_ops").and_then(Value::as_array)?;
        Some(ops.iter().any(|op| op.as_str() == Some("verify")))
    }
}

impl JwkMembers for serde_json::Map<String, Value> {
    fn string(&self, name: &str) -> Option<&str> {
        self.get(name).and_then(Value::as_str)
    }

    fn key_ops_verify(&self) -> Option<bool> {
        let ops = self.get("key_ops").and_then(Value::as_array)?;
        Some(ops.iter().any(|op| op.as_str() == Some("verify")))
    }
}

fn decoded_len(b64: &str) -> Option<usize> {
    URL_SAFE_NO_PAD.decode(b64).ok().map(|bytes| bytes.len())
}

impl VerificationKey {
    /// One JWK (a DPoP proof's `jwk` header, say) as a verification key, or why it is not usable.
    pub fn from_jwk(jwk: &Value) -> Result<Self, &'static str> {
        parse_key(jwk)
    }
}

fn parse_key(entry: &Value) -> Result<VerificationKey, &'static str> {
    let alg = key_attributes(entry)?;
    let (kind, key) = key_material(entry)?;
    key_fits(alg, kind)?;
    Ok(VerificationKey {
        kid: None,
        kind,
        alg,
        key,
    })
}

/// What a JWK says of its use, apart from the key itself: usable for signatures (`use`,
/// `key_ops`), and the algorithm it pins (`alg`), if any.
pub fn key_attributes(
    entry: &(impl JwkMembers + ?Sized),
) -> Result<Option<Algorithm>, &'static str> {
    if str_field(entry, "use").is_some_and(|u| u != "sig") {
        return Err("use is not sig");
    }
    if entry.key_ops_verify() == Some(false) {
        return Err("key_ops has no verify");
    }
    Ok(match str_field(entry, "alg") {
        None => None,
        Some(name) => Some(Algorithm::from_name(name).ok_or("unsupported alg")?),
    })
}

/// Whether a pinned `alg` fits the key's type.
pub fn key_fits(alg: Option<Algorithm>, kind: KeyKind) -> Result<(), &'static str> {
    match alg {
        Some(alg) if alg.key_kind() != kind => Err("alg does not fit the key type"),
        _ => Ok(()),
    }
}

/// The key itself, from the members RFC 7638 hashes into the thumbprint (`kty`, `crv`, `x`,
/// `y`, `n`, `e`): equal thumbprints give equal keys.
pub fn key_material(
    entry: &(impl JwkMembers + ?Sized),
) -> Result<(KeyKind, PublicKey), &'static str> {
    Ok(match str_field(entry, "kty") {
        Some("RSA") => {
            let (n, e) = str_field(entry, "n")
                .zip(str_field(entry, "e"))
                .ok_or("RSA key without n/e")?;
            // RSA keys under 2048 bits are not accepted (RFC 7518 §3.3).
            if decoded_len(n).is_none_or(|len| len < 256) {
                return Err("RSA modulus shorter than 2048 bits");
            }
            let der = rsa_public_key_der(n, e).ok_or("bad RSA components")?;
            let keys = RSA_ALGORITHMS
                .iter()
                .map(|(_, algorithm)| ParsedPublicKey::new(*algorithm, &der))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|_| "bad RSA components")?;
            let keys = keys
                .into_boxed_slice()
                .try_into()
                .map_err(|_| "bad RSA components")?;
            (KeyKind::Rsa, PublicKey::Rsa(keys))
        }
        Some("EC") => {
            let (kind, size, algorithm) = match str_field(entry, "crv") {
                Some("P-256") => (KeyKind::EcP256, 32, &ECDSA_P256_SHA256_FIXED),
                Some("P-384") => (KeyKind::EcP384, 48, &ECDSA_P384_SHA384_FIXED),
                Some("P-521") => (KeyKind::EcP521, 66, &ECDSA_P521_SHA512_FIXED),
                _ => return Err("unsupported EC curve"),
            };
            let (x, y) = str_field(entry, "x")
                .zip(str_field(entry, "y"))
                .ok_or("EC key without x/y")?;
            // The uncompressed SEC1 point: 0x04 || x || y.
            let mut point = vec![0x04];
            for coordinate in [x, y] {
                let coordinate = URL_SAFE_NO_PAD
                    .decode(coordinate)
                    .ok()
                    .filter(|c| c.len() == size)
                    .ok_or("EC coordinates do not match the curve")?;
                point.extend_from_slice(&coordinate);
            }
            let key = ParsedPublicKey::new(algorithm, point)
                .map_err(|_| "EC point is not on the curve")?;
            (kind, PublicKey::Single(key))
        }
        Some("OKP") => {
            if str_field(entry, "crv") != Some("Ed25519") {
                return Err("unsupported OKP curve");
            }
            let x = str_field(entry, "x").ok_or("OKP key without x")?;
            let x = URL_SAFE_NO_PAD
                .decode(x)
                .ok()
                .filter(|x| x.len() == 32)
                .ok_or("Ed25519 key is not 32 bytes")?;
            let key = ParsedPublicKey::new(&ED25519, x).map_err(|_| "bad OKP components")?;
            (KeyKind::Ed25519, PublicKey::Single(key))
        }
        Some("oct") => return Err("symmetric keys are never accepted"),
        _ => return Err("unsupported kty"),
    })
}

/// DER of a PKCS#1 `RSAPublicKey` (`SEQUENCE { n INTEGER, e INTEGER }`) from a JWK's base64url
/// `n` and `e`: the form aws-lc-rs parses.
fn rsa_public_key_der(n: &str, e: &str) -> Option<Vec<u8>> {
    fn length(out: &mut Vec<u8>, len: usize) {
        if len < 0x80 {
            out.push(len as u8);
        } else {
            let bytes: Vec<u8> = len
                .to_be_bytes()
                .into_iter()
                .skip_while(|&b| b == 0)
                .collect();
            out.push(0x80 | bytes.len() as u8);
            out.extend(bytes);
        }
    }
    fn integer(out: &mut Vec<u8>, magnitude: &[u8]) {
        let magnitude = &magnitude[magnitude.iter().take_while(|&&b| b == 0).count()..];
        // A set high bit would make the INTEGER negative: prefix a zero byte.
        let pad = magnitude.first().is_none_or(|&b| b & 0x80 != 0);
        out.push(0x02);
        length(out, magnitude.len() + usize::from(pad));
        if pad {
            out.push(0);
        }
        out.extend_from_slice(magnitude);
    }
    let (n, e) = (
        URL_SAFE_NO_PAD.decode(n).ok()?,
        URL_SAFE_NO_PAD.decode(e).ok()?,
    );
    if n.iter().all(|&b| b == 0) || e.iter().all(|&b| b == 0) {
        return None;
    }
    let mut body = Vec::with_capacity(n.len() + e.len() + 16);
    integer(&mut body, &n);
    integer(&mut body, &e);
    let mut der = vec![0x30];
    length(&mut der, body.len());
    der.extend(body);
    Some(der)
}

#[cfg(test)]
mod tests {
    use super::*;

    const P256_X: &str = "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU";
    const P256_Y: &str = "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0";

    fn jwks(keys: Value) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({ "keys": keys })).expect("json")
    }

    #[test]
    fn keeps_signing_keys_and_reports_the_rest() {
        let doc = jwks(serde_json::json!([
            {"kty": "EC", "crv": "P-256", "x": P256_X, "y": P256_Y, "kid": "sig", "use": "sig"},
            {"kty": "EC", "crv": "P-256", "x": P256_X, "y": P256_Y, "kid": "enc", "use": "enc"},
            {"kty": "EC", "crv": "P-384", "x": P256_X, "y": P256_Y, "kid": "curve"},
            {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"},
            {"kty": "XYZ", "kid": "unknown"},
            {"kty": "EC", "crv": "P-256", "x": P256_X, "y": P256_Y, "kid": "rsa-alg", "alg": "RS256"},
        ]));
        let (set, ignored) = KeySet::from_jwks(&doc).expect("parses");
        assert_eq!(set.len(), 1);
        assert!(set.has_kid("sig"));
        let ignored: Vec<_> = ignored
            .iter()
            .map(|i| i.kid.as_deref().unwrap_or(""))
            .collect();
        assert_eq!(ignored, ["enc", "curve", "hmac", "unknown", "rsa-alg"]);
    }

    #[test]
    fn candidates_follow_kid_and_key_type() {
        let doc = jwks(serde_json::json!([
            {"kty": "EC", "crv": "P-256", "x": P256_X, "y": P256_Y, "kid": "a"},
            {"kty": "EC", "crv": "P-256", "x": P256_X, "y": P256_Y, "kid": "b", "alg": "ES256"},
        ]));
        let (set, _) = KeySet::from_jwks(&doc).expect("parses");
        assert_eq!(set.candidates(Some("a"), Algorithm::ES256).count(), 1);
        assert_eq!(set.candidates(None, Algorithm::ES256).count(), 2);
        assert_eq!(set.candidates(Some("a"), Algorithm::RS256).count(), 0);
        assert_eq!(set.candidates(Some("a"), Algorithm::ES384).count(), 0);
        assert_eq!(set.candidates(Some("zz"), Algorithm::ES256).count(), 0);
    }

    #[test]
    fn ec_points_off_the_curve_are_ignored_at_load() {
        // The right length, but y is not the curve's y for this x.
        let off_curve = "x_FEzRu9m36HLN_tuf659LNpXW6pCyStikYjKIWI5a0";
        let doc = jwks(serde_json::json!([
            {"kty": "EC", "crv": "P-256", "x": P256_X, "y": off_curve, "kid": "off"},
            {"kty": "EC", "crv": "P-256", "x": P256_X, "y": P256_Y, "kid": "on"},
        ]));
        let (set, ignored) = KeySet::from_jwks(&doc).expect("parses");
        assert!(set.has_kid("on") && !set.has_kid("off"));
        assert_eq!(ignored.len(), 1);
        assert_eq!(ignored[0].why, "EC point is not on the curve");
    }

    #[test]
    fn a_parsed_key_verifies_only_its_own_algorithm() {
        let doc = jwks(serde_json::json!([
            {"kty": "EC", "crv": "P-256", "x": P256_X, "y": P256_Y, "kid": "a"},
        ]));
        let (set, _) = KeySet::from_jwks(&doc).expect("parses");
        let key = set
            .candidates(Some("a"), Algorithm::ES256)
            .next()
            .expect("key");
        // Garbage signatures fail; so does any other algorithm, before looking at the signature.
        assert!(!key.verify(Algorithm::ES256, b"m", "AAAA"));
        assert!(!key.verify(Algorithm::ES256, b"m", "not base64!"));
        assert!(!key.verify(Algorithm::RS256, b"m", "AAAA"));
    }

    #[test]
    fn documents_without_keys_are_rejected() {
        assert!(matches!(
            KeySet::from_jwks(b"{}"),
            Err(JwksError::NoKeysArray)
        ));
        assert!(matches!(
            KeySet::from_jwks(b"not json"),
            Err(JwksError::NotJson(_))
        ));
    }
}
