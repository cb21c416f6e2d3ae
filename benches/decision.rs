//! Micro-benchmarks of the decision core: parsing, thumbprints, JWT verification per algorithm,
//! and a whole decision with the verified-token cache cold and warm.
//!
//! `cargo bench --bench decision` (results in BENCHMARKS.md). Compare ratios within one run:
//! this machine's cores are shared and noisy.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use certbound::config::Settings;
use certbound_core::keys::KeySet;
use certbound_core::{
    AccessRequest, Authorization, KeyLookup, Policy, TokenCache, bearer, certificate, xfcc,
};
use criterion::{Criterion, criterion_group, criterion_main};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

const ISSUER: &str = "https://idp.bench";
const NOW: i64 = 1_800_000_000;

struct Keys(Arc<KeySet>);

impl KeyLookup for Keys {
    fn key_set(&self, _: usize) -> Option<Arc<KeySet>> {
        Some(Arc::clone(&self.0))
    }
}

struct Signer {
    alg: Algorithm,
    key: EncodingKey,
    jwk: Value,
}

fn signer(alg: &'static rcgen::SignatureAlgorithm, kid: &str) -> Signer {
    let pair = rcgen::KeyPair::generate_for(alg).unwrap();
    let pem = pair.serialize_pem();
    if alg == &rcgen::PKCS_ECDSA_P256_SHA256 {
        let raw = pair.public_key_raw();
        Signer {
            alg: Algorithm::ES256,
            key: EncodingKey::from_ec_pem(pem.as_bytes()).unwrap(),
            jwk: json!({"kty": "EC", "crv": "P-256", "kid": kid,
                        "x": URL_SAFE_NO_PAD.encode(&raw[1..33]), "y": URL_SAFE_NO_PAD.encode(&raw[33..65])}),
        }
    } else if alg == &rcgen::PKCS_ED25519 {
        Signer {
            alg: Algorithm::EdDSA,
            key: EncodingKey::from_ed_pem(pem.as_bytes()).unwrap(),
            jwk: json!({"kty": "OKP", "crv": "Ed25519", "kid": kid, "x": URL_SAFE_NO_PAD.encode(pair.public_key_raw())}),
        }
    } else {
        use rcgen::PublicKeyData;
        use x509_parser::prelude::FromDer;
        let spki = pair.subject_public_key_info();
        let (_, spki) = x509_parser::x509::SubjectPublicKeyInfo::from_der(&spki).unwrap();
        let x509_parser::public_key::PublicKey::RSA(rsa) = spki.parsed().unwrap() else {
            panic!("RSA expected")
        };
        let strip = |b: &[u8]| {
            b.iter()
                .skip_while(|&&x| x == 0)
                .copied()
                .collect::<Vec<_>>()
        };
        Signer {
            alg: Algorithm::RS256,
            key: EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap(),
            jwk: json!({"kty": "RSA", "kid": kid, "n": URL_SAFE_NO_PAD.encode(strip(rsa.modulus)),
                        "e": URL_SAFE_NO_PAD.encode(strip(rsa.exponent))}),
        }
    }
}

fn client_certificate() -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["client.bench".into()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let pem = cert.pem();
    let encoded = pem
        .replace('\n', "%0A")
        .replace(' ', "%20")
        .replace('+', "%2B")
        .replace('/', "%2F")
        .replace('=', "%3D");
    (
        encoded,
        certificate::decode_pem(&pem).unwrap().to_base64url(),
    )
}

fn policy() -> Policy {
    let yaml = format!(
        "issuers:\n  - issuer: {ISSUER}\n    audiences: [https://api.bench]\n    jwks_uri: https://idp.bench/jwks.json\n"
    );
    Settings::from_yaml(&yaml, Vec::new(), None).unwrap().policy
}

fn token(signer: &Signer, x5t: &str) -> String {
    let mut header = Header::new(signer.alg);
    header.kid = signer.jwk["kid"].as_str().map(str::to_owned);
    let claims = json!({"iss": ISSUER, "aud": "https://api.bench", "sub": "alice", "client_id": "c",
        "scope": "read write", "iat": NOW - 10, "exp": NOW + 3600, "jti": "j", "cnf": {"x5t#S256": x5t}});
    jsonwebtoken::encode(&header, &claims, &signer.key).unwrap()
}

fn request(token: &str, cert: &str) -> AccessRequest {
    AccessRequest {
        authorization: Authorization::One(format!("Bearer {token}")),
        peer_certificate: certbound_core::PeerCertificate::UrlEncodedPem(cert.to_owned()),
        method: "GET".into(),
        path: "/items".into(),
        host: "api.bench".into(),
        ..Default::default()
    }
}

fn benches(c: &mut Criterion) {
    let (cert, x5t) = client_certificate();
    let es = signer(&rcgen::PKCS_ECDSA_P256_SHA256, "es");
    let rs = signer(&rcgen::PKCS_RSA_SHA256, "rs");
    let ed = signer(&rcgen::PKCS_ED25519, "ed");
    let jwks = json!({"keys": [es.jwk, rs.jwk, ed.jwk]});
    let keys = Keys(Arc::new(
        KeySet::from_jwks(jwks.to_string().as_bytes()).unwrap().0,
    ));
    let policy = policy();

    let header = Authorization::One(format!("Bearer {}", token(&es, &x5t)));
    c.bench_function("bearer_parse", |b| {
        b.iter(|| bearer::bearer_token(black_box(&header)).unwrap().len())
    });
    c.bench_function("certificate_decode_and_thumbprint", |b| {
        b.iter(|| certificate::decode_url_encoded_pem(black_box(&cert)).unwrap())
    });
    let xfcc_header = format!(
        "By=spiffe://cluster.local/ns/gw/sa/gateway;Hash=abcd;Cert=\"{cert}\";Subject=\"CN=client,O=Bench\\, Inc.\";URI=spiffe://client"
    );
    c.bench_function("xfcc_parse", |b| {
        b.iter(|| xfcc::parse(black_box(&xfcc_header)).unwrap().len())
    });

    let mut group = c.benchmark_group("decision_uncached");
    for (name, signer) in [("ES256", &es), ("RS256", &rs), ("EdDSA", &ed)] {
        let req = request(&token(signer, &x5t), &cert);
        group.bench_function(name, |b| {
            b.iter(|| {
                let d = policy.decide(&keys, black_box(&req), NOW);
                assert_eq!(d.reason(), "ok");
            })
        });
    }
    group.finish();

    let cache = TokenCache::new(1000, 300);
    let req = request(&token(&es, &x5t), &cert);
    c.bench_function("decision_cached_ES256", |b| {
        b.iter(|| {
            let d = policy.decide_cached(&keys, Some(&cache), black_box(&req), NOW);
            assert_eq!(d.reason(), "ok");
        })
    });
}

criterion_group!(name = decision; config = Criterion::default().sample_size(30); targets = benches);
criterion_main!(decision);
