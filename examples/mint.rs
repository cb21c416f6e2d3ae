//! Mints access tokens for the soak test while it rotates keys: keeps ES256 keys in
//! `DIR/keys/`, publishes the newest two in `DIR/jwks.json` (so a rotation overlaps), and prints
//! a token signed with `--kid` (created when new), bound to `--cert` unless `--unbound`.
//!
//! `cargo run --release --example mint -- --dir DIR --kid k1 --cert client.pem [--unbound]`
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;

fn main() {
    let mut dir = PathBuf::from(".");
    let mut kid = String::from("k1");
    let mut cert = None;
    let mut unbound = false;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        match flag.as_str() {
            "--dir" => dir = args.next().unwrap().into(),
            "--kid" => kid = args.next().unwrap(),
            "--cert" => cert = Some(PathBuf::from(args.next().unwrap())),
            "--unbound" => unbound = true,
            other => panic!("unknown flag {other}"),
        }
    }
    let keys = dir.join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    let path = keys.join(format!("{kid}.pem"));
    if !path.exists() {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        std::fs::write(&path, pair.serialize_pem()).unwrap();
    }
    // Publish the newest two keys.
    let mut published: Vec<_> = std::fs::read_dir(&keys)
        .unwrap()
        .map(|e| e.unwrap())
        .map(|e| (e.metadata().unwrap().modified().unwrap(), e.path()))
        .collect();
    published.sort();
    let jwks: Vec<_> = published
        .iter()
        .rev()
        .take(2)
        .map(|(_, p)| {
            let pair = rcgen::KeyPair::from_pem(&std::fs::read_to_string(p).unwrap()).unwrap();
            let raw = pair.public_key_raw();
            json!({"kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig",
                   "kid": p.file_stem().unwrap().to_string_lossy(),
                   "x": URL_SAFE_NO_PAD.encode(&raw[1..33]), "y": URL_SAFE_NO_PAD.encode(&raw[33..65])})
        })
        .collect();
    let tmp = dir.join("jwks.json.tmp");
    std::fs::write(&tmp, json!({ "keys": jwks }).to_string()).unwrap();
    std::fs::rename(&tmp, dir.join("jwks.json")).unwrap();

    let key = EncodingKey::from_ec_pem(&std::fs::read(&path).unwrap()).unwrap();
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some(kid.clone());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let mut claims = json!({"iss": "https://idp.example.com", "aud": "https://api.example.com",
        "sub": "soak", "client_id": "soak", "iat": now - 5, "exp": now + 7200, "jti": format!("soak-{kid}")});
    if !unbound {
        let pem = std::fs::read_to_string(cert.expect("--cert")).unwrap();
        let x5t = certbound_core::certificate::decode_pem(&pem)
            .unwrap()
            .to_base64url();
        claims["cnf"] = json!({"x5t#S256": x5t});
    }
    println!("{}", jsonwebtoken::encode(&header, &claims, &key).unwrap());
}
