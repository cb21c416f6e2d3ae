//! Replays the fuzz corpus (`fuzz/corpus/<target>/`) through the fuzz entry points as an ordinary
//! test, plus generated seeds: CI proves the parsers still hold on everything found so far
//! without needing a nightly toolchain. Long runs: scripts/fuzz.sh.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use certbound::fuzzing;
use prost::Message;

type Target = fn(&[u8]);

const TARGETS: [(&str, Target); 9] = [
    ("xfcc", fuzzing::xfcc),
    ("certificate", fuzzing::certificate),
    ("bearer", fuzzing::bearer),
    ("jwt", fuzzing::jwt),
    ("check_request", fuzzing::check_request),
    ("dpop_proof", fuzzing::dpop_proof),
    ("htu", fuzzing::htu),
    ("path", fuzzing::path),
    ("forward_auth", fuzzing::forward_auth),
];

#[test]
fn the_corpus_replays_without_panics_or_allows() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    let mut replayed = 0;
    for (name, target) in TARGETS {
        let dir = root.join(name);
        for entry in std::fs::read_dir(&dir).unwrap() {
            let data = std::fs::read(entry.unwrap().path()).unwrap();
            target(&data);
            replayed += 1;
        }
    }
    assert!(replayed >= 10, "only {replayed} corpus files");
}

#[test]
fn generated_check_requests_never_allow() {
    let cert = common::ClientCert::self_signed("fuzz");
    let signer = common::Signer::es256("fuzz");
    let token = signer.sign(&common::claims("https://idp.fuzz", Some(&cert.x5t())));
    let auth = format!("Bearer {token}");
    let xfcc = format!("Cert=\"{}\"", cert.url_encoded());
    let requests = [
        common::request(&[("authorization", &auth)], &cert.url_encoded()),
        common::request(
            &[("authorization", &auth), ("x-forwarded-client-cert", &xfcc)],
            "",
        ),
        common::raw_request(&[("authorization", auth.as_bytes())], &cert.url_encoded()),
        Default::default(),
    ];
    for request in requests {
        let bytes = request.encode_to_vec();
        fuzzing::check_request(&bytes);
        // Truncations and bit flips of a valid request: still never an allow, never a panic.
        for cut in (0..bytes.len()).step_by(7) {
            fuzzing::check_request(&bytes[..cut]);
        }
        for i in (0..bytes.len()).step_by(13) {
            let mut flipped = bytes.clone();
            flipped[i] ^= 0x5a;
            fuzzing::check_request(&flipped);
        }
    }
}
