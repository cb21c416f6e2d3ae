//! DEMO-ONLY DPoP material for `scripts/demo.sh --dpop`, made fresh on every run (no key is
//! kept): an IdP key (its JWKS), a client DPoP key, an access token bound to that key
//! (`cnf.jkt`, RFC 9449), and proofs of possession for the demo's URL.
//!
//! `cargo run --example dpop_demo -- DIR HTU` writes into DIR: `jwks.json`, `token.jwt`,
//! `proof.jwt` (GET HTU) and `proof-other-url.jwt` (GET HTU + `/other`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

fn main() {
    let mut args = std::env::args().skip(1);
    let dir = args.next().expect("usage: dpop_demo DIR HTU");
    let htu = args.next().expect("usage: dpop_demo DIR HTU");
    let dir = Path::new(&dir);
    std::fs::create_dir_all(dir).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;

    // The identity provider's key: only its public half leaves this program (jwks.json).
    let idp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let raw = idp.public_key_raw();
    let jwks = json!({"keys": [{"kty": "EC", "crv": "P-256", "kid": "demo-dpop", "alg": "ES256",
        "x": URL_SAFE_NO_PAD.encode(&raw[1..33]), "y": URL_SAFE_NO_PAD.encode(&raw[33..65])}]});
    std::fs::write(dir.join("jwks.json"), jwks.to_string()).unwrap();

    // The client's DPoP key and its RFC 7638 thumbprint.
    let client = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap();
    let point = client.public_key().as_ref().to_vec();
    let (x, y) = (
        URL_SAFE_NO_PAD.encode(&point[1..33]),
        URL_SAFE_NO_PAD.encode(&point[33..65]),
    );
    let jwk = json!({"kty": "EC", "crv": "P-256", "x": x, "y": y});
    let canonical = format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#);
    let jkt = URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()));

    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some("demo-dpop".into());
    header.typ = Some("at+jwt".into());
    let claims = json!({
        "iss": "https://idp.example.com", "aud": "https://api.example.com", "sub": "demo-user",
        "client_id": "demo-dpop-client", "scope": "items:read", "iat": now, "nbf": now,
        "exp": now + 3600, "jti": format!("demo-dpop-{now}"), "cnf": {"jkt": jkt},
    });
    let key = EncodingKey::from_ec_pem(idp.serialize_pem().as_bytes()).unwrap();
    let token = jsonwebtoken::encode(&header, &claims, &key).unwrap();
    std::fs::write(dir.join("token.jwt"), &token).unwrap();

    let ath = URL_SAFE_NO_PAD.encode(Sha256::digest(token.as_bytes()));
    let proof = |htu: &str, jti: &str| {
        sign(
            &client,
            &json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": jwk}),
            &json!({"jti": jti, "htm": "GET", "htu": htu, "iat": now, "ath": ath}),
        )
    };
    std::fs::write(dir.join("proof.jwt"), proof(&htu, &format!("p1-{now}"))).unwrap();
    std::fs::write(
        dir.join("proof-other-url.jwt"),
        proof(&format!("{htu}/other"), &format!("p2-{now}")),
    )
    .unwrap();
    println!("DPoP demo material in {} (cnf.jkt {jkt})", dir.display());
}

/// A compact JWS (ES256, fixed-width signature) over `header` and `claims`.
fn sign(key: &EcdsaKeyPair, header: &Value, claims: &Value) -> String {
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let signature = key.sign(&SystemRandom::new(), input.as_bytes()).unwrap();
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature.as_ref()))
}
