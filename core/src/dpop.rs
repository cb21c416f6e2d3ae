//! DPoP (RFC 9449) at a resource server: the proof a client sends in the `DPoP` header, checked
//! against the request and the access token (§4.3), the RFC 7638 thumbprint of its key that the
//! token's `cnf.jkt` must name (§6), and the stateless nonces a server may require (§8).
//!
//! Replay (§11.1) needs state across requests: a verified proof yields a [`ReplayKey`] that the
//! adapter records in its replay store ([`crate::replay`]) before it lets the request through.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use aws_lc_rs::hmac;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::decision::DenyReason;
use crate::jwa::{Algorithm, KeyKind};
use crate::keys::{JwkMembers, PublicKey, key_attributes, key_fits, key_material};

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
    /// Proof keys parsed before, by thumbprint (shared by the policy's clones).
    pub proof_keys: ProofKeys,
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
    /// The earliest time any replica could have accepted the proof (its `iat` less the
    /// leeway, for the proof's clock and for a replica's): a store that lost what it held
    /// before some moment cannot say whether a proof live before then was used.
    pub live_from: i64,
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
    thumbprint_digest(jwk).map(|digest| URL_SAFE_NO_PAD.encode(digest))
}

/// The SHA-256 of [`jwk_thumbprint`], hashed as it is written out (no canonical copy).
fn thumbprint_digest(jwk: &(impl JwkMembers + ?Sized)) -> Option<[u8; 32]> {
    let members: &[&str] = match jwk.string("kty")? {
        "EC" => &["crv", "kty", "x", "y"],
        "RSA" => &["e", "kty", "n"],
        "OKP" => &["crv", "kty", "x"],
        _ => return None,
    };
    let mut hash = Sha256::new();
    hash.update(b"{");
    for (i, name) in members.iter().enumerate() {
        if i > 0 {
            hash.update(b",");
        }
        hash.update(b"\"");
        hash.update(name.as_bytes());
        hash.update(b"\":");
        json_string(&mut hash, jwk.string(name)?)?;
    }
    hash.update(b"}");
    Some(hash.finalize().into())
}

/// `value` as a JSON string, escaped exactly as serde_json escapes (the values are base64url
/// anyway: only a hostile key needs the escaping).
fn json_string(hash: &mut Sha256, value: &str) -> Option<()> {
    if value.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\') {
        hash.update(serde_json::to_string(value).ok()?.as_bytes());
    } else {
        hash.update(b"\"");
        hash.update(value.as_bytes());
        hash.update(b"\"");
    }
    Some(())
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

/// Parsed proof keys by the SHA-256 of their RFC 7638 thumbprint, so that a client's key is
/// parsed (and checked to be on its curve) once, not for every proof. The thumbprint covers
/// every member the key is made of ([`key_material`]), so one thumbprint is one key; what else
/// the `jwk` says (`alg`, `use`, `key_ops`) is checked on every proof. Bounded: when full, one
/// entry makes room (a flood of fresh keys costs their parsing, nothing else).
#[derive(Clone, Default)]
pub struct ProofKeys(Arc<Mutex<HashMap<[u8; 32], CachedKey>>>);

type CachedKey = Arc<ProofKey>;

/// A proof key as kept: parsed, with what every proof by it needs of its thumbprint.
struct ProofKey {
    kind: KeyKind,
    key: PublicKey,
    /// The thumbprint, base64url (the `jkt` a token's `cnf` names).
    jkt: String,
    /// SHA-256 of `jkt`: whose proofs these are, for the replay store's per-key quota.
    holder: [u8; 32],
}

/// Most proof keys kept parsed.
const PROOF_KEYS: usize = 4096;

impl ProofKeys {
    fn get_or_parse(
        &self,
        thumbprint: &[u8; 32],
        jwk: &ProofJwk<'_>,
    ) -> Result<CachedKey, &'static str> {
        let lock = || self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(key) = lock().get(thumbprint) {
            return Ok(Arc::clone(key));
        }
        let (kind, key) = key_material(jwk)?;
        let jkt = URL_SAFE_NO_PAD.encode(thumbprint);
        let key = Arc::new(ProofKey {
            kind,
            key,
            holder: Sha256::digest(jkt.as_bytes()).into(),
            jkt,
        });
        let mut keys = lock();
        if keys.len() >= PROOF_KEYS
            && let Some(any) = keys.keys().next().copied()
        {
            keys.remove(&any);
        }
        keys.insert(*thumbprint, Arc::clone(&key));
        Ok(key)
    }

    /// How many keys are kept (for tests).
    pub fn len(&self) -> usize {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A JSON value as far as a proof's checks read it: what `serde_json::Value`'s `as_str`,
/// `as_i64` and `as_f64` would give, read in place from the decoded proof (no map, no copy of
/// an unescaped string).
#[derive(Debug, Default)]
enum Member<'a> {
    #[default]
    Absent,
    Str(Cow<'a, str>),
    Int(i64),
    Float(f64),
    /// Any other JSON value (skipped).
    Other,
}

impl Member<'_> {
    fn as_str(&self) -> Option<&str> {
        match self {
            Self::Str(s) => Some(s),
            _ => None,
        }
    }

    /// `as_i64`, else `as_f64` truncated (as the claims' `iat` was always read).
    fn as_i64_lossy(&self) -> Option<i64> {
        match self {
            Self::Int(i) => Some(*i),
            Self::Float(f) => Some(*f as i64),
            _ => None,
        }
    }
}

struct MemberVisitor;

impl<'de> Visitor<'de> for MemberVisitor {
    type Value = Member<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Member::Str(Cow::Borrowed(v)))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Member::Str(Cow::Owned(v.to_owned())))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(Member::Str(Cow::Owned(v)))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Member::Int(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        Ok(i64::try_from(v).map_or(Member::Float(v as f64), Member::Int))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        Ok(Member::Float(v))
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Member::Other)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Member::Other)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Member::Other)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Member::Other)
    }
}

impl<'de> de::Deserialize<'de> for Member<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(MemberVisitor)
    }
}

/// A member name: matched whether or not it was written with escapes.
struct Name<'a>(Cow<'a, str>);

impl<'de> de::Deserialize<'de> for Name<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        match Member::deserialize(deserializer)? {
            Member::Str(name) => Ok(Name(name)),
            _ => Err(de::Error::custom("a member name is a string")),
        }
    }
}

/// Reads a JSON object member by member into `T` (the last of repeated members wins, as in a
/// `serde_json::Map`); anything but an object is refused.
trait ObjectFields<'de>: Default {
    fn field<A: MapAccess<'de>>(&mut self, name: &str, map: &mut A) -> Result<(), A::Error>;
}

struct ObjectVisitor<T>(std::marker::PhantomData<T>);

impl<'de, T: ObjectFields<'de>> Visitor<'de> for ObjectVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<T, A::Error> {
        let mut fields = T::default();
        while let Some(Name(name)) = map.next_key::<Name<'de>>()? {
            fields.field(&name, &mut map)?;
        }
        Ok(fields)
    }
}

/// Parses `bytes` (a decoded JWS part) as a JSON object into `T`.
fn parse_object<'de, T: ObjectFields<'de>>(bytes: &'de [u8]) -> Result<T, DenyReason> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let fields = deserializer
        .deserialize_any(ObjectVisitor::<T>(std::marker::PhantomData))
        .map_err(|_| DenyReason::DpopProofInvalid)?;
    deserializer
        .end()
        .map_err(|_| DenyReason::DpopProofInvalid)?;
    Ok(fields)
}

/// The `jwk` header member, when it is an object.
#[derive(Debug, Default)]
struct ProofJwk<'a> {
    kty: Member<'a>,
    crv: Member<'a>,
    x: Member<'a>,
    y: Member<'a>,
    n: Member<'a>,
    e: Member<'a>,
    alg: Member<'a>,
    use_: Member<'a>,
    /// `key_ops` when it is an array: whether it holds `"verify"`.
    key_ops: Option<bool>,
    /// A member only a private key has (§4.3 step 7).
    private: bool,
}

impl<'de> ObjectFields<'de> for ProofJwk<'de> {
    fn field<A: MapAccess<'de>>(&mut self, name: &str, map: &mut A) -> Result<(), A::Error> {
        let slot = match name {
            "kty" => &mut self.kty,
            "crv" => &mut self.crv,
            "x" => &mut self.x,
            "y" => &mut self.y,
            "n" => &mut self.n,
            "e" => &mut self.e,
            "alg" => &mut self.alg,
            "use" => &mut self.use_,
            "key_ops" => {
                self.key_ops = map.next_value::<KeyOps>()?.0;
                return Ok(());
            }
            _ => {
                self.private |= PRIVATE_MEMBERS.contains(&name);
                map.next_value::<IgnoredAny>()?;
                return Ok(());
            }
        };
        *slot = map.next_value()?;
        Ok(())
    }
}

impl JwkMembers for ProofJwk<'_> {
    fn string(&self, name: &str) -> Option<&str> {
        match name {
            "kty" => &self.kty,
            "crv" => &self.crv,
            "x" => &self.x,
            "y" => &self.y,
            "n" => &self.n,
            "e" => &self.e,
            "alg" => &self.alg,
            "use" => &self.use_,
            _ => return None,
        }
        .as_str()
    }

    fn key_ops_verify(&self) -> Option<bool> {
        self.key_ops
    }
}

/// `key_ops`: `Some(holds "verify")` for an array, `None` for anything else.
struct KeyOps(Option<bool>);

impl<'de> de::Deserialize<'de> for KeyOps {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Ops;
        impl<'de> Visitor<'de> for Ops {
            type Value = KeyOps;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<KeyOps, A::Error> {
                let mut verify = false;
                while let Some(op) = seq.next_element::<Member<'de>>()? {
                    verify |= op.as_str() == Some("verify");
                }
                Ok(KeyOps(Some(verify)))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<KeyOps, A::Error> {
                MemberVisitor.visit_map(map).map(|_| KeyOps(None))
            }
            fn visit_borrowed_str<E: de::Error>(self, _: &'de str) -> Result<KeyOps, E> {
                Ok(KeyOps(None))
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<KeyOps, E> {
                Ok(KeyOps(None))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<KeyOps, E> {
                Ok(KeyOps(None))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<KeyOps, E> {
                Ok(KeyOps(None))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<KeyOps, E> {
                Ok(KeyOps(None))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<KeyOps, E> {
                Ok(KeyOps(None))
            }
            fn visit_unit<E: de::Error>(self) -> Result<KeyOps, E> {
                Ok(KeyOps(None))
            }
        }
        deserializer.deserialize_any(Ops)
    }
}

/// The `jwk` member: absent, an object, or something else.
#[derive(Debug, Default)]
enum JwkMember<'a> {
    #[default]
    Absent,
    Object(Box<ProofJwk<'a>>),
    Other,
}

impl<'de> de::Deserialize<'de> for JwkMember<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Jwk;
        impl<'de> Visitor<'de> for Jwk {
            type Value = JwkMember<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                ObjectVisitor::<ProofJwk<'de>>(std::marker::PhantomData)
                    .visit_map(map)
                    .map(|jwk| JwkMember::Object(Box::new(jwk)))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
                MemberVisitor.visit_seq(seq).map(|_| JwkMember::Other)
            }
            fn visit_borrowed_str<E: de::Error>(self, _: &'de str) -> Result<Self::Value, E> {
                Ok(JwkMember::Other)
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
                Ok(JwkMember::Other)
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
                Ok(JwkMember::Other)
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
                Ok(JwkMember::Other)
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
                Ok(JwkMember::Other)
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
                Ok(JwkMember::Other)
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(JwkMember::Other)
            }
        }
        deserializer.deserialize_any(Jwk)
    }
}

/// A proof's JOSE header, as far as it is read.
#[derive(Debug, Default)]
struct ProofHeader<'a> {
    typ: Member<'a>,
    alg: Member<'a>,
    crit: bool,
    jwk: JwkMember<'a>,
}

impl<'de> ObjectFields<'de> for ProofHeader<'de> {
    fn field<A: MapAccess<'de>>(&mut self, name: &str, map: &mut A) -> Result<(), A::Error> {
        match name {
            "typ" => self.typ = map.next_value()?,
            "alg" => self.alg = map.next_value()?,
            "jwk" => self.jwk = map.next_value()?,
            _ => {
                self.crit |= name == "crit";
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(())
    }
}

/// A proof's claims, as far as they are read.
#[derive(Debug, Default)]
struct ProofClaims<'a> {
    jti: Member<'a>,
    htm: Member<'a>,
    htu: Member<'a>,
    iat: Member<'a>,
    ath: Member<'a>,
    nonce: Member<'a>,
}

impl<'de> ObjectFields<'de> for ProofClaims<'de> {
    fn field<A: MapAccess<'de>>(&mut self, name: &str, map: &mut A) -> Result<(), A::Error> {
        let slot = match name {
            "jti" => &mut self.jti,
            "htm" => &mut self.htm,
            "htu" => &mut self.htu,
            "iat" => &mut self.iat,
            "ath" => &mut self.ath,
            "nonce" => &mut self.nonce,
            _ => {
                map.next_value::<IgnoredAny>()?;
                return Ok(());
            }
        };
        *slot = map.next_value()?;
        Ok(())
    }
}

/// Whether `htu` names `normalized` (a URI [`normalize_htu`] made): compared as is first, since
/// normalising is idempotent (the `htu` fuzz target holds it to that) and clients send the
/// normal form; otherwise normalised.
fn htu_matches(htu: &str, normalized: &str) -> bool {
    let bare = htu.split(['?', '#']).next().unwrap_or_default();
    bare == normalized || normalize_htu(htu).as_deref() == Some(normalized)
}

impl DpopPolicy {
    /// Checks a proof as RFC 9449 §4.3 lists the steps (the binding to the token's `cnf.jkt`
    /// is the caller's, with the returned thumbprint).
    ///
    /// Each part is decoded once and read in place; the key is parsed once per thumbprint
    /// ([`ProofKeys`]).
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
        // Both parts decoded into one buffer (header, then claims).
        let mut decoded = Vec::with_capacity((header_b64.len() + claims_b64.len()) / 4 * 3 + 6);
        URL_SAFE_NO_PAD
            .decode_vec(header_b64, &mut decoded)
            .map_err(|_| DenyReason::DpopProofInvalid)?;
        let header_len = decoded.len();
        URL_SAFE_NO_PAD
            .decode_vec(claims_b64, &mut decoded)
            .map_err(|_| DenyReason::DpopProofInvalid)?;
        let (header_bytes, claims_bytes) = decoded.split_at(header_len);
        let header: ProofHeader<'_> = parse_object(header_bytes)?;
        let claims: ProofClaims<'_> = parse_object(claims_bytes)?;
        // Step 4: typ.
        if header.typ.as_str() != Some("dpop+jwt") {
            return Err(DenyReason::DpopTypInvalid);
        }
        // Step 5: an asymmetric algorithm this server accepts (never none or MAC).
        let alg = header
            .alg
            .as_str()
            .and_then(Algorithm::from_name)
            .filter(|alg| self.algorithms.contains(alg))
            .ok_or(DenyReason::DpopAlgNotAllowed)?;
        if header.crit {
            return Err(DenyReason::DpopProofInvalid);
        }
        // Step 7: a public key only.
        let JwkMember::Object(jwk) = &header.jwk else {
            return Err(DenyReason::DpopJwkInvalid);
        };
        if jwk.private {
            return Err(DenyReason::DpopJwkInvalid);
        }
        let pinned = key_attributes(jwk.as_ref()).map_err(|_| DenyReason::DpopJwkInvalid)?;
        let thumbprint = thumbprint_digest(jwk.as_ref()).ok_or(DenyReason::DpopJwkInvalid)?;
        let key = self
            .proof_keys
            .get_or_parse(&thumbprint, jwk)
            .map_err(|_| DenyReason::DpopJwkInvalid)?;
        let ProofKey {
            kind,
            key: public_key,
            ..
        } = key.as_ref();
        key_fits(pinned, *kind).map_err(|_| DenyReason::DpopJwkInvalid)?;
        if alg.key_kind() != *kind || pinned.is_some_and(|pin| !alg.satisfies_pin(pin)) {
            return Err(DenyReason::DpopJwkInvalid);
        }
        // Step 6: the signature, by that key.
        let signing_input = &proof[..header_b64.len() + 1 + claims_b64.len()];
        if signature.is_empty() || !public_key.verify(alg, signing_input.as_bytes(), signature) {
            return Err(DenyReason::DpopSignatureInvalid);
        }
        // Step 3: the required claims.
        let jti = claims
            .jti
            .as_str()
            .filter(|j| !j.is_empty() && j.len() <= MAX_JTI_BYTES)
            .ok_or(DenyReason::DpopProofInvalid)?;
        let htm = claims.htm.as_str().ok_or(DenyReason::DpopProofInvalid)?;
        let htu = claims.htu.as_str().ok_or(DenyReason::DpopProofInvalid)?;
        let iat = claims
            .iat
            .as_i64_lossy()
            .ok_or(DenyReason::DpopProofInvalid)?;
        // Step 8: the method.
        if htm != context.method {
            return Err(DenyReason::DpopMethodMismatch);
        }
        // Step 9: the URI, without query and fragment, normalised on both sides.
        if !htu_matches(htu, context.htu) {
            return Err(DenyReason::DpopUrlMismatch);
        }
        // Step 10: the nonce, when this server requires one.
        let nonce = match &self.nonces {
            None => None,
            Some(keys) => match claims.nonce.as_str() {
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
        // Step 12: the access token hash (encoded on the stack: 43 characters).
        let mut ath = [0u8; 43];
        let ath_len = URL_SAFE_NO_PAD
            .encode_slice(Sha256::digest(context.access_token.as_bytes()), &mut ath)
            .map_err(|_| DenyReason::DpopAthMismatch)?;
        if !claims
            .ath
            .as_str()
            .is_some_and(|a| bool::from(a.as_bytes().ct_eq(&ath[..ath_len])))
        {
            return Err(DenyReason::DpopAthMismatch);
        }
        let mut replay = Sha256::new();
        replay.update(key.jkt.as_bytes());
        replay.update([0]);
        replay.update(jti.as_bytes());
        Ok(VerifiedProof {
            replay: ReplayKey {
                digest: replay.finalize().into(),
                holder: key.holder,
                // A proof with this iat is accepted until iat + max_age, and by a replica whose
                // clock lags by up to the leeway until iat + max_age + leeway: kept that long.
                expires_at: iat
                    .saturating_add(self.max_age_seconds)
                    .saturating_add(self.future_seconds)
                    .saturating_add(1),
                live_from: iat
                    .saturating_sub(self.future_seconds)
                    .saturating_sub(self.future_seconds),
            },
            jkt: key.jkt.clone(),
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
            proof_keys: ProofKeys::default(),
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

    /// The proof is read in place, member by member: it must read as a `serde_json::Value`
    /// would (the last of repeated members wins, escaped names and values are unescaped,
    /// numbers beyond i64 saturate), and each key is parsed once.
    #[test]
    fn proofs_read_in_place_as_a_json_value_reads_them() {
        let client = Client::new();
        let policy = policy();
        let raw = |header: &str, claims: &str| {
            let input = format!(
                "{}.{}",
                URL_SAFE_NO_PAD.encode(header),
                URL_SAFE_NO_PAD.encode(claims)
            );
            let rng = aws_lc_rs::rand::SystemRandom::new();
            let signature = client.pair.sign(&rng, input.as_bytes()).expect("sign");
            vec![format!(
                "{input}.{}",
                URL_SAFE_NO_PAD.encode(signature.as_ref())
            )]
        };
        let jwk = client.jwk.to_string();
        let ath = access_token_hash("the-token");
        let claims =
            format!(r#"{{"jti":"j-1","htm":"GET","htu":"{HTU}","iat":{NOW},"ath":"{ath}"}}"#);
        // Escaped member names and values.
        let escaped = format!(r#"{{"t\u0079p":"dpop\u002bjwt","alg":"ES256","jwk":{jwk}}}"#);
        assert!(check(&policy, &raw(&escaped, &claims)).is_ok());
        // Repeated members: the last one counts.
        let repeated = format!(r#"{{"typ":"JWT","typ":"dpop+jwt","alg":"ES256","jwk":{jwk}}}"#);
        assert!(check(&policy, &raw(&repeated, &claims)).is_ok());
        let repeated = format!(r#"{{"typ":"dpop+jwt","typ":"JWT","alg":"ES256","jwk":{jwk}}}"#);
        assert_eq!(
            check(&policy, &raw(&repeated, &claims)).err(),
            Some(DenyReason::DpopTypInvalid)
        );
        let header = format!(r#"{{"typ":"dpop+jwt","alg":"ES256","jwk":{jwk}}}"#);
        // Trailing bytes, or not an object: not a proof.
        for bad in [format!("{header} x"), "[1]".to_owned(), "\"s\"".to_owned()] {
            assert_eq!(
                check(&policy, &raw(&bad, &claims)).err(),
                Some(DenyReason::DpopProofInvalid),
                "{bad}"
            );
        }
        // key_ops without verify, or a use other than sig: not a key for this.
        for extra in [
            r#""key_ops":["sign"]"#,
            r#""use":"enc""#,
            r#""alg":"ES384""#,
        ] {
            let mut jwk = client.jwk.to_string();
            jwk.insert_str(1, &format!("{extra},"));
            let header = format!(r#"{{"typ":"dpop+jwt","alg":"ES256","jwk":{jwk}}}"#);
            assert_eq!(
                check(&policy, &raw(&header, &claims)).err(),
                Some(DenyReason::DpopJwkInvalid),
                "{extra}"
            );
        }
        let mut jwk_ok = client.jwk.to_string();
        jwk_ok.insert_str(1, r#""key_ops":["verify"],"use":"sig","alg":"ES256","#);
        let header_ok = format!(r#"{{"typ":"dpop+jwt","alg":"ES256","jwk":{jwk_ok}}}"#);
        assert!(check(&policy, &raw(&header_ok, &claims)).is_ok());
        // A float iat counts by its integer part; one past i64 is far in the future.
        let float_iat = claims.replace(&format!("{NOW}"), &format!("{NOW}.9"));
        assert!(check(&policy, &raw(&header, &float_iat)).is_ok());
        let huge_iat = claims.replace(&format!("{NOW}"), "18446744073709551615");
        assert_eq!(
            check(&policy, &raw(&header, &huge_iat)).err(),
            Some(DenyReason::DpopIatInFuture)
        );
        // One parsed key for all of this client's proofs, shared by the policy's clones.
        assert_eq!(policy.proof_keys.len(), 1);
        let clone = policy.clone();
        assert!(check(&clone, &raw(&header, &claims)).is_ok());
        assert_eq!(policy.proof_keys.len(), 1);
        assert!(check(&policy, &[Client::new().proof_with(|_, _| {})]).is_ok());
        assert_eq!(policy.proof_keys.len(), 2);
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
