//! Regenerates the DEMO-ONLY material in `deploy/local/`: a JWKS, two client certificates with
//! their keys, a long-lived token bound to the first certificate, an unbound token, and the
//! grpcurl request files of the grpcurl walk-through (docs/src/getting-started.md).
//!
//! `cargo run --example demo_material` (then commit the result). The IdP signing key is not
//! written anywhere: new demo tokens need a new run. `cargo run --example demo_material -- DIR`
//! writes the same material elsewhere (the benchmark scripts use a temp dir).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;

const DIR: &str = "deploy/local";
const ISSUER: &str = "https://idp.example.com";
const AUDIENCE: &str = "https://api.example.com";
/// 2099-01-01: demo tokens must outlive any checkout.
const EXP: i64 = 4_070_908_800;
const IAT: i64 = 1_767_225_600; // 2026-01-01

fn main() {
    let out = std::env::args().nth(1).unwrap_or_else(|| DIR.to_string());
    let dir = Path::new(&out);
    fs::create_dir_all(dir.join("requests")).unwrap();

    let signing = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let raw = signing.public_key_raw();
    let jwks = json!({"keys": [{
        "kty": "EC", "crv": "P-256", "kid": "demo-2026", "use": "sig", "alg": "ES256",
        "x": URL_SAFE_NO_PAD.encode(&raw[1..33]), "y": URL_SAFE_NO_PAD.encode(&raw[33..65]),
    }]});
    write(
        dir,
        "jwks.json",
        &serde_json::to_string_pretty(&jwks).unwrap(),
    );

    let (ca_pem, server) = server_certificate();
    write(dir, "demo-ca.pem", &ca_pem);
    write(dir, "demo-server.pem", &server.0);
    write(dir, "demo-server.key", &server.1);

    let client = certificate("demo-client");
    let other = certificate("demo-other-client");
    write(dir, "demo-client.pem", &client.0);
    write(dir, "demo-client.key", &client.1);
    write(dir, "demo-other-client.pem", &other.0);
    write(dir, "demo-other-client.key", &other.1);
    let x5t = certbound_core::certificate::decode_pem(&client.0)
        .unwrap()
        .to_base64url();

    let key = EncodingKey::from_ec_pem(signing.serialize_pem().as_bytes()).unwrap();
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some("demo-2026".into());
    header.typ = Some("at+jwt".into());
    let claims = |bound: bool| {
        let mut c = json!({
            "iss": ISSUER, "aud": AUDIENCE, "sub": "demo-user", "client_id": "demo-client",
            "scope": "items:read items:write", "iat": IAT, "nbf": IAT, "exp": EXP,
            "jti": if bound { "demo-bound" } else { "demo-unbound" },
        });
        if bound {
            c["cnf"] = json!({"x5t#S256": x5t});
        }
        c
    };
    let bound = jsonwebtoken::encode(&header, &claims(true), &key).unwrap();
    let unbound = jsonwebtoken::encode(&header, &claims(false), &key).unwrap();
    write(dir, "demo-token.jwt", &bound);
    write(dir, "demo-token-unbound.jwt", &unbound);

    let request = |token: Option<&str>, cert: Option<&str>| {
        let mut headers = json!({":method": "GET", ":path": "/items", "x-request-id": "demo-1"});
        if let Some(token) = token {
            headers["authorization"] = json!(format!("Bearer {token}"));
        }
        let cert = cert
            .map(certbound_core::certificate::envoy_url_encode)
            .unwrap_or_default();
        serde_json::to_string_pretty(&json!({"attributes": {
            "source": {"certificate": cert},
            "request": {"http": {"method": "GET", "path": "/items", "host": "api.example.com", "headers": headers}},
        }}))
        .unwrap()
    };
    let requests = dir.join("requests");
    write(
        &requests,
        "allow.json",
        &request(Some(&bound), Some(&client.0)),
    );
    write(&requests, "no-token.json", &request(None, Some(&client.0)));
    write(
        &requests,
        "unbound-token.json",
        &request(Some(&unbound), Some(&client.0)),
    );
    write(
        &requests,
        "wrong-certificate.json",
        &request(Some(&bound), Some(&other.0)),
    );
    write(
        &requests,
        "no-certificate.json",
        &request(Some(&bound), None),
    );
    println!("demo material written to {out} (x5t#S256 of demo-client.pem: {x5t})");
}

fn certificate(name: &str) -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec![format!("{name}.example.com")]).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params.distinguished_name.push(
        rcgen::DnType::OrganizationName,
        "certbound demo (DEMO ONLY)",
    );
    params.not_before = rcgen::date_time_ymd(2026, 1, 1);
    params.not_after = rcgen::date_time_ymd(2099, 1, 1);
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), key.serialize_pem())
}

/// A demo CA and the server certificate it issues for Envoy's listener (127.0.0.1, localhost).
fn server_certificate() -> (String, (String, String)) {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "certbound demo CA (DEMO ONLY)");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.not_before = rcgen::date_time_ymd(2026, 1, 1);
    params.not_after = rcgen::date_time_ymd(2099, 1, 1);
    let ca =
        rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap()).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params =
        rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "localhost (DEMO ONLY)");
    params.not_before = rcgen::date_time_ymd(2026, 1, 1);
    params.not_after = rcgen::date_time_ymd(2099, 1, 1);
    let cert = params.signed_by(&key, &ca).unwrap();
    (ca.pem(), (cert.pem(), key.serialize_pem()))
}

fn write(dir: &Path, name: &str, text: &str) {
    fs::write(dir.join(name), text).unwrap();
}
