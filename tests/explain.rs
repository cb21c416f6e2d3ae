//! `certbound explain`: the real decision, step by step, for an allow and for each kind of deny.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;

use certbound::explain::{ExplainRequest, explain};
use common::*;
use serde_json::json;

const POLICY: &str = "policy:\n  rules:\n    - path_prefix: /admin\n      scopes: [admin]\n    - path_prefix: /ops\n      groups: [ops]\n    - path_prefix: /partner\n      audiences: [https://partner.test]\n";

struct World {
    idp: Idp,
    signer: Signer,
    cert: ClientCert,
    checker: std::sync::Arc<certbound::check::Checker>,
    yaml: String,
}

async fn world() -> World {
    let signer = Signer::es256("k1");
    let idp = Idp::start(&[&signer]).await;
    let yaml = config_for(&idp, POLICY);
    let settings = certbound::config::Settings::from_yaml(&yaml, Vec::new(), None).unwrap();
    let checker = certbound::server::App::build(&settings).unwrap().checker();
    checker.keys().load_all().await;
    World {
        idp,
        signer,
        cert: ClientCert::self_signed("a"),
        checker,
        yaml,
    }
}

async fn run(w: &World, token: &str, cert: Option<&ClientCert>, path: &str) -> (bool, String) {
    let request = ExplainRequest {
        token: token.into(),
        certificate: cert.map(|c| c.pem.clone().into_bytes()),
        method: "GET".into(),
        scheme: "https".into(),
        path: path.into(),
        host: "api.test".into(),
        dpop: None,
    };
    let explanation = explain(&w.checker, &request).await;
    let allowed = matches!(
        explanation.decision.outcome,
        certbound_core::Outcome::Allow(_)
    );
    (allowed, explanation.report)
}

#[tokio::test]
async fn an_allow_is_explained_step_by_step() {
    let w = world().await;
    let token = w.signer.sign(&claims(&w.idp.issuer, Some(&w.cert.x5t())));
    let (allowed, report) = run(&w, &token, Some(&w.cert), "/items").await;
    assert!(allowed, "{report}");
    for line in [
        "rule: default",
        "token: JWT alg=ES256 kid=k1",
        &format!("issuer: {} (configured", w.idp.issuer),
        "candidates for this kid and alg: [\"k1(EcP256)\"]",
        "signature: valid",
        "  sub: \"alice\"",
        "  exp: ",
        "token check: passed",
        &format!("certificate: x5t#S256 {}", w.cert.x5t()),
        &format!("token cnf.x5t#S256: {}", w.cert.x5t()),
        "binding: certificate matches the token",
        "decision: ALLOW (gRPC status 0)",
        "upstream header x-certbound-subject: alice",
    ] {
        assert!(report.contains(line), "missing {line:?} in:\n{report}");
    }
}

#[tokio::test]
async fn each_kind_of_deny_is_explained_with_its_reason_and_answer() {
    let w = world().await;
    let iss = w.idp.issuer.clone();
    let x5t = w.cert.x5t();
    let sign = |edit: &dyn Fn(&mut serde_json::Value)| {
        let mut c = claims(&iss, Some(&x5t));
        edit(&mut c);
        w.signer.sign(&c)
    };
    let other = ClientCert::self_signed("b");
    let garbage = ClientCert {
        pem: "-----BEGIN CERTIFICATE-----\nAQIDBAUGBwg=\n-----END CERTIFICATE-----\n".into(),
        der: vec![],
        key_pem: String::new(),
    };
    let header_token = |header: serde_json::Value| {
        use base64::Engine;
        let b64 = |v: &serde_json::Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
        };
        format!("{}.{}.c2ln", b64(&header), b64(&claims(&iss, Some(&x5t))))
    };
    // A refused algorithm is named with the kid and the issuer the token claims.
    let hs256_detail = format!("JWT rejected (alg_not_allowed): alg=HS256 kid=k-hmac iss={iss}");
    let slash_detail = format!("near match: {iss:?} differs only by a trailing slash");
    let cases: Vec<(&str, String, Option<&ClientCert>, &str, &str)> = vec![
        (
            "token_malformed",
            "abc.def".into(),
            Some(&w.cert),
            "/",
            "JWT rejected (token_malformed)",
        ),
        (
            "alg_not_allowed",
            "eyJhbGciOiJub25lIn0.e30.".into(),
            Some(&w.cert),
            "/",
            "JWT rejected (alg_not_allowed): alg=none",
        ),
        (
            "alg_not_allowed",
            header_token(json!({"alg": "HS256", "kid": "k-hmac"})),
            Some(&w.cert),
            "/",
            &hs256_detail,
        ),
        (
            "issuer_unknown",
            sign(&|c| c["iss"] = json!("https://evil.test")),
            Some(&w.cert),
            "/",
            "is not a configured issuer",
        ),
        (
            "issuer_unknown",
            sign(&|c| c["iss"] = json!(format!("{iss}/"))),
            Some(&w.cert),
            "/",
            &slash_detail,
        ),
        (
            "signature_invalid",
            Signer::es256("k1").sign(&claims(&iss, Some(&x5t))),
            Some(&w.cert),
            "/",
            "signature: not verified (signature_invalid)",
        ),
        (
            "key_unknown",
            Signer::es256("k9").sign(&claims(&iss, Some(&x5t))),
            Some(&w.cert),
            "/",
            "candidates for this kid and alg: []",
        ),
        (
            "token_expired",
            sign(&|c| c["exp"] = json!(now() - 3600)),
            Some(&w.cert),
            "/",
            "signature: valid",
        ),
        (
            "audience_mismatch",
            sign(&|c| c["aud"] = json!("x")),
            Some(&w.cert),
            "/",
            "  aud: \"x\"",
        ),
        (
            "cnf_missing",
            sign(&|c| {
                c.as_object_mut().unwrap().remove("cnf");
            }),
            Some(&w.cert),
            "/",
            "cnf: absent",
        ),
        (
            "cert_missing",
            sign(&|_| {}),
            None,
            "/",
            "certificate: none",
        ),
        (
            "binding_mismatch",
            sign(&|_| {}),
            Some(&other),
            "/",
            "binding: no match",
        ),
        (
            "scope_missing",
            sign(&|_| {}),
            Some(&w.cert),
            "/admin",
            "www-authenticate: Bearer error=\"insufficient_scope\", scope=\"admin\"",
        ),
        (
            "group_missing",
            sign(&|_| {}),
            Some(&w.cert),
            "/ops",
            "groups in token (groups): []",
        ),
        (
            "audience_not_allowed",
            sign(&|_| {}),
            Some(&w.cert),
            "/partner",
            "rule: rules[2]",
        ),
        (
            "token_missing",
            String::new(),
            Some(&w.cert),
            "/",
            "token: unusable (token_missing)",
        ),
        (
            "token_too_large",
            "a".repeat(17 * 1024),
            Some(&w.cert),
            "/",
            "token: unusable (token_too_large)",
        ),
        (
            "crit_unsupported",
            header_token(json!({"alg": "ES256", "crit": ["x"]})),
            Some(&w.cert),
            "/",
            "JWT rejected (crit_unsupported)",
        ),
        (
            "key_type_mismatch",
            Signer::ed25519("k1").sign(&claims(&iss, Some(&x5t))),
            Some(&w.cert),
            "/",
            "signature: not verified (key_type_mismatch)",
        ),
        (
            "claims_invalid",
            sign(&|c| c["exp"] = json!("soon")),
            Some(&w.cert),
            "/",
            "exp: not a number",
        ),
        (
            "token_not_yet_valid",
            sign(&|c| c["nbf"] = json!(now() + 3600)),
            Some(&w.cert),
            "/",
            "  nbf: ",
        ),
        (
            "token_issued_in_future",
            sign(&|c| c["iat"] = json!(now() + 3600)),
            Some(&w.cert),
            "/",
            "  iat: ",
        ),
        (
            "cnf_invalid",
            sign(&|c| c["cnf"] = json!([1])),
            Some(&w.cert),
            "/",
            "cnf: [1]",
        ),
        (
            "x5t_missing",
            sign(&|c| c["cnf"] = json!({})),
            Some(&w.cert),
            "/",
            "cnf: {}",
        ),
        (
            "dpop_downgrade",
            sign(&|c| c["cnf"] = json!({"jkt": "x"})),
            Some(&w.cert),
            "/",
            "cnf: {\"jkt\":\"x\"}",
        ),
        (
            "cnf_unverified",
            sign(&|c| c["cnf"] = json!({"jku": "https://k.test"})),
            Some(&w.cert),
            "/",
            "cnf: {\"jku\":\"https://k.test\"}",
        ),
        (
            "path_unsafe",
            sign(&|_| {}),
            Some(&w.cert),
            "/public/..%2fadmin",
            "path: refused: an encoded / or \\ (%2F, %5C), or a raw \\",
        ),
        (
            "path_unsafe",
            sign(&|_| {}),
            Some(&w.cert),
            "//admin/x",
            "path: its canonical spelling is \"/admin/x\"",
        ),
        (
            "cert_invalid",
            sign(&|_| {}),
            Some(&garbage),
            "/",
            "certificate: unusable",
        ),
    ];
    for (reason, token, cert, path, detail) in cases {
        let (allowed, report) = run(&w, &token, cert, path).await;
        assert!(!allowed, "{reason}: {report}");
        assert!(
            report.contains(&format!("reason {reason} ")),
            "{reason}: {report}"
        );
        assert!(
            report.contains(detail),
            "{reason}: missing {detail:?} in:\n{report}"
        );
        let status = if reason.ends_with("_missing")
            && (reason == "scope_missing" || reason == "group_missing")
        {
            403
        } else if reason == "path_unsafe" {
            400
        } else {
            401
        };
        assert!(
            report.contains(&format!("decision: DENY {status} ")),
            "{reason}: {report}"
        );
    }
}

#[tokio::test]
async fn the_command_exits_0_for_allow_and_1_for_deny() {
    let w = world().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("certbound.yaml");
    std::fs::write(&config, &w.yaml).unwrap();
    let cert = dir.path().join("client.pem");
    std::fs::write(&cert, &w.cert.pem).unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(
        &token_file,
        w.signer.sign(&claims(&w.idp.issuer, Some(&w.cert.x5t()))),
    )
    .unwrap();

    let run = move |token: &str, path: &str| {
        // The IdP runs on this test's runtime; the command runs on its own thread meanwhile.
        let output = Command::new(env!("CARGO_BIN_EXE_certbound"))
            .args(["explain", "--config"])
            .arg(&config)
            .args(["--token", token, "--cert"])
            .arg(&cert)
            .args(["--path", path])
            .output()
            .unwrap();
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
        )
    };
    let token_arg = format!("@{}", token_file.display());
    let (code, out) = tokio::task::spawn_blocking(move || {
        let allow = run(&token_arg, "/items");
        let deny = run(&token_arg, "/admin");
        (allow, deny)
    })
    .await
    .map(|(allow, deny)| ((allow.0, deny.0), format!("{}\n{}", allow.1, deny.1)))
    .unwrap();
    assert_eq!(code, (Some(0), Some(1)), "{out}");
    assert!(out.contains("decision: ALLOW"), "{out}");
    assert!(
        out.contains("decision: DENY 403 reason scope_missing"),
        "{out}"
    );
}

/// `--dpop` and `--url` through the command: each RFC 9449 step is shown and the one that
/// fails is named; explain never records the proof against replay.
#[tokio::test]
async fn a_dpop_proof_is_explained_and_the_failing_step_named() {
    let signer = Signer::es256("k1");
    let idp = Idp::start(&[&signer]).await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("certbound.yaml");
    std::fs::write(&config, config_for(&idp, "dpop:\n  enabled: true\n")).unwrap();
    let key = common::dpop::DpopKey::es256();
    let mut c = claims(&idp.issuer, None);
    c["cnf"] = json!({"jkt": key.jkt()});
    let token = signer.sign(&c);
    let url = "https://API.example.com:443/items?page=2";
    let good = key.proof("GET", "https://api.example.com/items", &token);
    let stale = key
        .build("GET", "https://api.example.com/items", &token)
        .claim("iat", json!(now() - 3600))
        .sign();
    let wrong_url = key.proof("GET", "https://api.example.com/other", &token);
    let proof_file = dir.path().join("proof");
    std::fs::write(&proof_file, &good).unwrap();

    let run = move |proof: String, method: &'static str| {
        let output = Command::new(env!("CARGO_BIN_EXE_certbound"))
            .args(["explain", "--config"])
            .arg(&config)
            .args([
                "--token", &token, "--dpop", &proof, "--url", url, "--method", method,
            ])
            .output()
            .unwrap();
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
        )
    };
    let from_file = format!("@{}", proof_file.display());
    let results = tokio::task::spawn_blocking(move || {
        [
            run(good.clone(), "GET"),
            run(from_file, "GET"),
            run(stale, "GET"),
            run(wrong_url, "GET"),
            run(good, "POST"),
        ]
    })
    .await
    .unwrap();
    let [allow, again, stale, wrong_url, post] = results;
    assert_eq!(allow.0, Some(0), "{}", allow.1);
    for line in [
        "request: GET /items?page=2 (host \"API.example.com:443\", scheme https)",
        "dpop: proof of ",
        "request htm GET htu https://api.example.com/items",
        "header: typ=\"dpop+jwt\" alg=\"ES256\" jwk kty=\"EC\" crv=\"P-256\"",
        "ath: ",
        "(matches the token)",
        "proof check: passed (key thumbprint ",
        "token cnf.jkt: ",
        "replay: not checked by explain",
        "decision: ALLOW",
    ] {
        assert!(allow.1.contains(line), "missing {line:?} in:\n{}", allow.1);
    }
    assert_eq!(
        again.0,
        Some(0),
        "explain does not use up the proof:\n{}",
        again.1
    );
    assert_eq!(stale.0, Some(1));
    assert!(
        stale.1.contains("proof check: failed (dpop_iat_too_old)"),
        "{}",
        stale.1
    );
    assert!(stale.1.contains("(now -360"), "{}", stale.1);
    assert!(
        wrong_url
            .1
            .contains("proof check: failed (dpop_url_mismatch)"),
        "{}",
        wrong_url.1
    );
    assert!(
        post.1
            .contains("proof check: failed (dpop_method_mismatch)")
            && post
                .1
                .contains("decision: DENY 401 reason dpop_method_mismatch")
            && post
                .1
                .contains("www-authenticate: DPoP error=\"invalid_dpop_proof\""),
        "{}",
        post.1
    );
}
