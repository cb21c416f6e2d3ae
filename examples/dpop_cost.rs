//! The cost of checking DPoP proofs, for counting instructions under callgrind and for timing
//! natively next to `openssl speed ecdsap256`: `dpop_cost MODE N [KEYS]` checks N distinct ES256
//! proofs (made up front by KEYS client keys, 16 by default) in one of three ways:
//!
//! - `verify`: the bare ES256 signature check of each proof, with its key parsed beforehand and
//!   its signature decoded: the floor any proof check stands on;
//! - `proof`: [`DpopPolicy::verify_proof`], RFC 9449 §4.3 whole (parsing, key, thumbprint,
//!   signature, claims, `ath`, replay key);
//! - `none`: makes the proofs and checks none (the setup, to subtract);
//! - `replay`: records N distinct proofs' replay keys (one client key) in the in-memory replay
//!   store as `scripts/bench-dpop.sh` sizes it (`max_entries` 2,000,000), growing from empty
//!   as in a benchmark run: what the store costs a check (no proofs are made).
//!
//! Prints one JSON line: the mode, N, and the native CPU time per check in µs (this thread's
//! time on a CPU, from /proc/thread-self/schedstat, so other processes' share of a busy core
//! does not count; meaningless under callgrind). scripts/dpop-instructions.sh runs it under callgrind and prints instructions per
//! check of each mode.

use std::hint::black_box;

use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair,
    ParsedPublicKey,
};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use certbound_core::dpop::{self, DpopPolicy, ProofContext};
use certbound_core::jwa::Algorithm;
use serde_json::json;

const NOW: i64 = 1_800_000_000;
const TOKEN: &str = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJl";

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(mode), Some(n)) = (args.get(1), args.get(2)) else {
        eprintln!("usage: dpop_cost verify|proof|none N [KEYS]");
        std::process::exit(64);
    };
    let n: usize = n.parse().expect("N");
    if mode == "replay" {
        return replay(n);
    }
    let keys: usize = args.get(3).map_or(16, |k| k.parse().expect("KEYS"));
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let clients: Vec<(EcdsaKeyPair, serde_json::Value)> = (0..keys.max(1))
        .map(|_| {
            let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).expect("key");
            let point = pair.public_key().as_ref().to_vec();
            let jwk = json!({"kty": "EC", "crv": "P-256", "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
                             "y": URL_SAFE_NO_PAD.encode(&point[33..65])});
            (pair, jwk)
        })
        .collect();
    let ath = dpop::access_token_hash(TOKEN);
    let proofs: Vec<String> = (0..n)
        .map(|i| {
            let (pair, jwk) = &clients[i % clients.len()];
            let header = json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": jwk});
            let claims = json!({"jti": format!("p{i}"), "htm": "GET",
                "htu": "https://api.bench/items", "iat": NOW, "ath": ath});
            let input = format!(
                "{}.{}",
                URL_SAFE_NO_PAD.encode(header.to_string()),
                URL_SAFE_NO_PAD.encode(claims.to_string())
            );
            let signature = pair.sign(&rng, input.as_bytes()).expect("sign");
            format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature.as_ref()))
        })
        .collect();
    let policy = DpopPolicy {
        algorithms: vec![Algorithm::ES256],
        max_age_seconds: 300,
        future_seconds: 5,
        public_base_url: None,
        trust_forwarded_headers: false,
        nonces: None,
        algs: "ES256".into(),
        proof_keys: Default::default(),
    };
    let start = cpu_ns();
    let mut ok = 0usize;
    match mode.as_str() {
        "verify" => {
            // What `openssl speed` times: the key parsed and the signature decoded beforehand.
            let prepared: Vec<(ParsedPublicKey, &str, Vec<u8>)> = proofs
                .iter()
                .enumerate()
                .map(|(i, proof)| {
                    let (pair, _) = &clients[i % clients.len()];
                    let key =
                        ParsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, pair.public_key().as_ref())
                            .expect("key");
                    let dot = proof.rfind('.').expect("dot");
                    let signature = URL_SAFE_NO_PAD.decode(&proof[dot + 1..]).expect("b64");
                    (key, &proof[..dot], signature)
                })
                .collect();
            let start = cpu_ns();
            for (key, input, signature) in &prepared {
                ok += usize::from(key.verify_sig(input.as_bytes(), signature).is_ok());
            }
            report(mode, n, ok, start);
            return;
        }
        "proof" => {
            for proof in &proofs {
                let context = ProofContext {
                    proofs: std::slice::from_ref(proof),
                    method: "GET",
                    htu: "https://api.bench/items",
                    access_token: TOKEN,
                    now: NOW,
                };
                ok += usize::from(black_box(policy.verify_proof(black_box(&context))).is_ok());
            }
        }
        "none" => ok = n,
        other => panic!("{other}: verify, proof or none"),
    }
    report(mode, n, ok, start);
}

/// `replay N`: N first uses recorded, timed; then one replay of each, checked.
fn replay(n: usize) {
    use certbound_core::dpop::ReplayKey;
    use certbound_core::replay::{MemoryReplayStore, ReplayStore};
    use sha2::{Digest, Sha256};
    let keys: Vec<ReplayKey> = (0..n)
        .map(|i| ReplayKey {
            digest: Sha256::digest(i.to_le_bytes()).into(),
            holder: [1; 32],
            expires_at: NOW + 3600,
            live_from: NOW,
        })
        .collect();
    let store = MemoryReplayStore::new(2_000_000, 2_000_000);
    let start = cpu_ns();
    let ok = keys
        .iter()
        .filter(|key| store.record(black_box(key), NOW) == Ok(true))
        .count();
    report("replay", n, ok, start);
    assert!(keys.iter().all(|key| store.record(key, NOW) == Ok(false)));
}

/// This thread's time on a CPU so far, in ns.
fn cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn report(mode: &str, n: usize, ok: usize, start: u64) {
    assert_eq!(ok, n, "every proof checks out");
    let micros = (cpu_ns() - start) as f64 / 1e3 / n.max(1) as f64;
    println!(r#"{{"mode":"{mode}","n":{n},"us_per_check":{micros:.2}}}"#);
}
