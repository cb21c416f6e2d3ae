//! Micro-benchmarks of the decision core: parsing, thumbprints, JWT verification per algorithm,
//! a whole decision with the verified-token cache cold and warm, and the DPoP path (a proof
//! checked on every request, the token from the cache; recording proofs against replay).
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
    Settings::from_yaml(&yaml, Vec::new(), None)
        .unwrap()
        .decision
        .policy
}

/// [`policy`] with the API a protected resource (RFC 9728): its 401s carry `resource_metadata`.
fn resource_policy() -> Policy {
    let yaml = format!(
        "issuers:\n  - issuer: {ISSUER}\n    audiences: [https://api.bench]\n    jwks_uri: https://idp.bench/jwks.json\nresources:\n  - id: https://api.bench\n"
    );
    Settings::from_yaml(&yaml, Vec::new(), None)
        .unwrap()
        .decision
        .policy
}

fn dpop_policy() -> Policy {
    let yaml = format!(
        "issuers:\n  - issuer: {ISSUER}\n    audiences: [https://api.bench]\n    jwks_uri: https://idp.bench/jwks.json\ndpop:\n  enabled: true\n"
    );
    Settings::from_yaml(&yaml, Vec::new(), None)
        .unwrap()
        .decision
        .policy
}

/// A client's DPoP key (P-256) and its RFC 7638 thumbprint.
struct DpopKey {
    pair: aws_lc_rs::signature::EcdsaKeyPair,
    jwk: Value,
    jkt: String,
}

fn dpop_key() -> DpopKey {
    use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
    let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap();
    let point = pair.public_key().as_ref().to_vec();
    let jwk = json!({"kty": "EC", "crv": "P-256", "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
                     "y": URL_SAFE_NO_PAD.encode(&point[33..65])});
    let jkt = certbound_core::dpop::jwk_thumbprint(jwk.as_object().unwrap()).unwrap();
    DpopKey { pair, jwk, jkt }
}

fn dpop_proof(key: &DpopKey, token: &str, jti: &str) -> String {
    let header = json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": key.jwk});
    let claims = json!({"jti": jti, "htm": "GET", "htu": "https://api.bench/items", "iat": NOW,
                        "ath": certbound_core::dpop::access_token_hash(token)});
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let signature = key.pair.sign(&rng, input.as_bytes()).unwrap();
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature.as_ref()))
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

    // The 401 path, answer included (the challenge is built per deny), without and with a
    // protected resource whose challenges carry `resource_metadata`.
    let mut group = c.benchmark_group("deny_401");
    let other_cert = client_certificate().0;
    let no_token = AccessRequest {
        authorization: Authorization::Absent,
        ..request("", &cert)
    };
    let mismatch = request(&token(&es, &x5t), &other_cert);
    for (name, policy) in [("plain", policy.clone()), ("resource", resource_policy())] {
        group.bench_function(format!("no_token/{name}"), |b| {
            b.iter(|| {
                let d = policy.decide(&keys, black_box(&no_token), NOW);
                d.http_answer(false).unwrap().headers.len()
            })
        });
        let cache = TokenCache::new(1000, 300);
        group.bench_function(format!("binding_mismatch_cached/{name}"), |b| {
            b.iter(|| {
                let d = policy.decide_cached(&keys, Some(&cache), black_box(&mismatch), NOW);
                assert_eq!(d.reason(), "binding_mismatch");
                d.http_answer(false).unwrap().headers.len()
            })
        });
    }
    group.finish();

    // DPoP: the token (cnf.jkt) from the cache, the proof verified every time.
    let dpop = dpop_policy();
    let client = dpop_key();
    let claims = json!({"iss": ISSUER, "aud": "https://api.bench", "sub": "alice", "client_id": "c",
        "scope": "read", "iat": NOW - 10, "exp": NOW + 3600, "cnf": {"jkt": client.jkt}});
    let mut header = Header::new(es.alg);
    header.kid = Some("es".into());
    let dpop_token = jsonwebtoken::encode(&header, &claims, &es.key).unwrap();
    let proof = dpop_proof(&client, &dpop_token, "bench-1");
    let dpop_request = AccessRequest {
        authorization: Authorization::One(format!("DPoP {dpop_token}")),
        dpop_proofs: vec![proof.clone()],
        method: "GET".into(),
        path: "/items".into(),
        host: "api.bench".into(),
        scheme: "https".into(),
        ..Default::default()
    };
    let settings = dpop.dpop.clone().unwrap();
    c.bench_function("dpop_proof_verify_ES256", |b| {
        let proofs = [proof.clone()];
        let context = certbound_core::dpop::ProofContext {
            proofs: &proofs,
            method: "GET",
            htu: "https://api.bench/items",
            access_token: &dpop_token,
            now: NOW,
        };
        b.iter(|| settings.verify_proof(black_box(&context)).unwrap())
    });
    let cache = TokenCache::new(1000, 300);
    c.bench_function("decision_dpop_cached_ES256", |b| {
        b.iter(|| {
            let d = dpop.decide_cached(&keys, Some(&cache), black_box(&dpop_request), NOW);
            assert_eq!(d.reason(), "ok");
        })
    });
    c.bench_function("replay_memory_record", |b| {
        use certbound_core::replay::ReplayStore;
        // Steady state: 1,000 new proofs per (simulated) second, each kept 30 s, so about
        // 30,000 live entries in a store of 65,536 that sweeps expired ones when a shard fills.
        let store = certbound_core::replay::MemoryReplayStore::new(1 << 16, 1 << 16);
        let mut n = 0u64;
        b.iter(|| {
            n += 1;
            let now = NOW + (n / 1000) as i64;
            let digest: [u8; 32] = sha2::Digest::finalize(sha2::Digest::chain_update(
                <sha2::Sha256 as sha2::Digest>::new(),
                n.to_be_bytes(),
            ))
            .into();
            let key = certbound_core::dpop::ReplayKey {
                digest,
                holder: [n as u8; 32],
                expires_at: now + 30,
                live_from: now,
            };
            assert_eq!(store.record(black_box(&key), now), Ok(true));
        })
    });
}

criterion_group!(name = decision; config = Criterion::default().sample_size(30); targets = benches);
criterion_main!(decision);
