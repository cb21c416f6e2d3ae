//! DPoP proofs (RFC 9449) made at test time: a client key pair, and proofs built field by field
//! so that tests can break any one of them.

use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

/// A client's DPoP key (ES256).
pub struct DpopKey {
    pair: EcdsaKeyPair,
    /// The public JWK, as a proof's header carries it.
    pub jwk: Value,
}

impl DpopKey {
    pub fn es256() -> Self {
        let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap();
        let point = pair.public_key().as_ref().to_vec();
        let jwk = json!({"kty": "EC", "crv": "P-256",
                         "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
                         "y": URL_SAFE_NO_PAD.encode(&point[33..65])});
        Self { pair, jwk }
    }

    /// The RFC 7638 thumbprint a bound token's `cnf.jkt` carries, computed here independently of
    /// certbound's own code.
    pub fn jkt(&self) -> String {
        let canonical = format!(
            r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#,
            self.jwk["x"].as_str().unwrap(),
            self.jwk["y"].as_str().unwrap()
        );
        URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()))
    }

    /// A good proof for `htm` `htu` presenting `token`, with a fresh `jti`.
    pub fn proof(&self, htm: &str, htu: &str, token: &str) -> String {
        self.build(htm, htu, token).sign()
    }

    /// A proof to edit before signing.
    pub fn build(&self, htm: &str, htu: &str, token: &str) -> Proof<'_> {
        let header = json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": self.jwk});
        let claims = json!({
            "jti": format!("{:032x}", rand_u128()),
            "htm": htm,
            "htu": htu,
            "iat": super::now(),
            "ath": ath(token),
        });
        Proof {
            key: self,
            header: into_map(header),
            claims: into_map(claims),
        }
    }

    fn sign_input(&self, input: &str) -> Vec<u8> {
        let rng = aws_lc_rs::rand::SystemRandom::new();
        self.pair
            .sign(&rng, input.as_bytes())
            .unwrap()
            .as_ref()
            .to_vec()
    }
}

/// `base64url(SHA-256(token))`.
pub fn ath(token: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(token.as_bytes()))
}

fn into_map(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => unreachable!(),
    }
}

fn rand_u128() -> u128 {
    let mut bytes = [0u8; 16];
    aws_lc_rs::rand::fill(&mut bytes).unwrap();
    u128::from_be_bytes(bytes)
}

/// A proof being built.
pub struct Proof<'a> {
    key: &'a DpopKey,
    pub header: Map<String, Value>,
    pub claims: Map<String, Value>,
}

impl Proof<'_> {
    pub fn header(mut self, name: &str, value: Value) -> Self {
        self.header.insert(name.into(), value);
        self
    }

    pub fn claim(mut self, name: &str, value: Value) -> Self {
        self.claims.insert(name.into(), value);
        self
    }

    pub fn without_claim(mut self, name: &str) -> Self {
        self.claims.remove(name);
        self
    }

    pub fn without_header(mut self, name: &str) -> Self {
        self.header.remove(name);
        self
    }

    fn input(&self) -> String {
        format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(Value::Object(self.header.clone()).to_string()),
            URL_SAFE_NO_PAD.encode(Value::Object(self.claims.clone()).to_string())
        )
    }

    /// Signed with the key (whatever `alg` the header now says).
    pub fn sign(self) -> String {
        let input = self.input();
        let signature = self.key.sign_input(&input);
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature))
    }

    /// `alg: none`, no signature.
    pub fn unsigned(self) -> String {
        let proof = self.header("alg", json!("none"));
        format!("{}.", proof.input())
    }

    /// `alg: HS256`, MACed with the public JWK's `x` as the secret (the classic key confusion).
    pub fn hmac(self) -> String {
        let proof = self.header("alg", json!("HS256"));
        let secret = proof.key.jwk["x"].as_str().unwrap().as_bytes().to_vec();
        let input = proof.input();
        let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &secret);
        let tag = aws_lc_rs::hmac::sign(&key, input.as_bytes());
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()))
    }
}
