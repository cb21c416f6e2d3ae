//! End-to-end through a real Envoy 1.40 with certbound's dynamic module loaded
//! (`libcertbound_envoy.so`), using `deploy/envoy/module.yaml` as shipped: a real mTLS listener,
//! keys fetched by the module through Envoy's `idp` cluster over TLS from an IdP in this test, and
//! an echoing upstream. The same case matrix as the ext_authz end-to-end tests, over HTTP/1.1
//! and HTTP/2, peer and XFCC modes.
//!
//! Ignored by a plain `cargo test` (they need Envoy and the built module); `scripts/test.sh`
//! builds the module and runs them with `--include-ignored`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::envoy::*;
use common::{ClientCert, Idp, Signer, now};
use serde_json::{Value, json};

const ISSUER_HOST: &str = "idp.example.com";
const ISSUER: &str = "https://idp.example.com";
const AUDIENCE: &str = "https://api.example.com";

/// Claims of a valid token from the shipped configuration's issuer, bound to `x5t` when given.
fn claims(x5t: Option<&str>) -> Value {
    let mut c = common::claims(ISSUER, x5t);
    c["aud"] = json!(AUDIENCE);
    c
}

struct ModuleStack {
    pki: Pki,
    idp: Idp,
    signer: Signer,
    _upstream: EchoUpstream,
    envoy: Process,
    port: u16,
    admin: u16,
}

impl ModuleStack {
    /// Envoy from `deploy/envoy/module.yaml`, with `tweak` applied to its text (for a variant's
    /// documented changes), the IdP serving `signers`.
    async fn start(signers: &[&Signer], tweak: impl Fn(String) -> String) -> Self {
        Self::start_with(signers, tweak, |_| {}).await
    }

    /// [`ModuleStack::start`], with the IdP set up by `idp_setup` before Envoy starts.
    async fn start_with(
        signers: &[&Signer],
        tweak: impl Fn(String) -> String,
        idp_setup: impl FnOnce(&Idp),
    ) -> Self {
        let pki = Pki::new("module");
        let idp = Idp::start_tls(signers, &pki, ISSUER_HOST).await;
        idp_setup(&idp);
        let upstream = EchoUpstream::start().await;
        let ports = EnvoyPorts {
            listener: free_port(),
            admin: free_port(),
            upstream: Some(upstream.addr),
            idp: Some(idp.addr),
            ..Default::default()
        };
        let config = tweak(envoy_config("module", &ports, &pki));
        let envoy = start_envoy(&config, &ports, pki.dir.path()).await;
        Self {
            pki,
            idp,
            signer: signers[0].clone(),
            _upstream: upstream,
            envoy,
            port: ports.listener,
            admin: ports.admin,
        }
    }

    fn token_for(&self, cert: Option<&ClientCert>) -> String {
        self.signer
            .sign(&claims(cert.map(ClientCert::x5t).as_deref()))
    }

    async fn get(
        &self,
        cert: Option<&ClientCert>,
        http: Http,
        path: &str,
        token: Option<&str>,
    ) -> Seen {
        let auth = token.map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> =
            auth.iter().map(|a| ("authorization", a.as_str())).collect();
        self.get_with(cert, http, path, &headers).await
    }

    async fn get_with(
        &self,
        cert: Option<&ClientCert>,
        http: Http,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Seen {
        let client = https_client(&self.pki, cert, http);
        match get_path(&client, self.port, http, path, headers).await {
            Ok(seen) => seen,
            Err(error) => panic!("request failed: {error:?}\n--- envoy\n{}", self.envoy.log()),
        }
    }

    /// Waits until the module has fetched keys through the idp cluster (counted by Envoy).
    async fn wait_keys_loaded(&self) {
        for _ in 0..400 {
            if self
                .counter("key_refreshes.issuer.https://idp.example.com.result.success")
                .await
                > 0
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("the module never loaded keys:\n{}", self.envoy.log());
    }

    /// An Envoy counter the module defined (`dynamicmodulescustom.<name>`), 0 when absent.
    /// The module adds its `checks` to Envoy's counter in batches (within 100 ms of a check):
    /// those are read once they have settled.
    async fn counter(&self, name: &str) -> u64 {
        if !name.starts_with("checks.") {
            return self.counter_now(name).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut last = None;
        for _ in 0..50 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let now = self.counter_now(name).await;
            if last == Some(now) {
                return now;
            }
            last = Some(now);
        }
        panic!("{name} never settled:\n{}", self.envoy.log());
    }

    async fn counter_now(&self, name: &str) -> u64 {
        let url = format!(
            "http://127.0.0.1:{}/stats?filter=dynamicmodulescustom",
            self.admin
        );
        let text = reqwest::get(&url).await.unwrap().text().await.unwrap();
        text.lines()
            .find_map(|line| line.strip_prefix(&format!("dynamicmodulescustom.{name}: ")))
            .map_or(0, |v| v.trim().parse().unwrap())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Envoy 1.40 and the built module: run scripts/test.sh"]
async fn module_reference_scenarios_over_http1_and_http2() {
    let k1 = Signer::es256("k1");
    let s = ModuleStack::start(&[&k1], |c| c).await;
    s.wait_keys_loaded().await;
    let a = s.pki.client("client-a");
    let b = s.pki.client("client-b");
    let self_signed = ClientCert::self_signed("self-signed-client");
    let token_a = s.token_for(Some(&a));
    let token_b = s.token_for(Some(&b));
    let unbound = s.token_for(None);
    let with = |f: &dyn Fn(&mut Value)| {
        let mut c = claims(Some(&a.x5t()));
        f(&mut c);
        s.signer.sign(&c)
    };
    let expired = with(&|c| c["exp"] = json!(now() - 3600));
    let wrong_aud = with(&|c| c["aud"] = json!("https://elsewhere.test"));
    let wrong_iss = with(&|c| c["iss"] = json!("https://evil.test"));
    let forged = Signer::es256("k1").sign(&claims(Some(&a.x5t())));
    let admin = with(&|c| c["scope"] = json!("read admin"));

    for http in BOTH {
        // Reference: valid token, matching certificate -> the upstream answers, with the claim
        // headers, without the authorization header.
        let upstream = s
            .get(Some(&a), http, "/items", Some(&token_a))
            .await
            .upstream_headers();
        assert_eq!(
            upstream.get("x-certbound-subject"),
            Some(&json!("alice")),
            "{http:?}"
        );
        assert_eq!(
            upstream.get("x-certbound-client-id"),
            Some(&json!("client-a"))
        );
        assert!(!upstream.contains_key("authorization"), "{upstream:?}");
        // A client cannot supply a claim header: it is replaced.
        let auth = format!("Bearer {token_a}");
        let spoofed = s
            .get_with(
                Some(&a),
                http,
                "/items",
                &[("authorization", &auth), ("x-certbound-subject", "root")],
            )
            .await
            .upstream_headers();
        assert_eq!(spoofed.get("x-certbound-subject"), Some(&json!("alice")));

        // The reference 401s: no token; invalid token; unbound token; another client's
        // certificate (both ways round).
        s.get(Some(&a), http, "/items", None)
            .await
            .assert_unauthorized("Bearer");
        s.get(Some(&a), http, "/items", Some("not-a-jwt"))
            .await
            .assert_invalid_token();
        s.get(Some(&a), http, "/items", Some(&unbound))
            .await
            .assert_invalid_token();
        s.get(Some(&a), http, "/items", Some(&token_b))
            .await
            .assert_invalid_token();
        s.get(Some(&b), http, "/items", Some(&token_a))
            .await
            .assert_invalid_token();
        s.get(Some(&b), http, "/items", Some(&token_b))
            .await
            .upstream_headers();
        // RFC 8705 §2.2: a self-signed client certificate with a token bound to it.
        let token_self = s.token_for(Some(&self_signed));
        s.get(Some(&self_signed), http, "/items", Some(&token_self))
            .await
            .upstream_headers();
        // No certificate; expired; forged; wrong audience; wrong issuer.
        s.get(None, http, "/items", Some(&token_a))
            .await
            .assert_invalid_token();
        for bad in [&expired, &forged, &wrong_aud, &wrong_iss] {
            s.get(Some(&a), http, "/items", Some(bad))
                .await
                .assert_invalid_token();
        }
        // 403 per route: /admin needs scope admin (DynamicModuleFilterPerRoute).
        let seen = s.get(Some(&a), http, "/admin/users", Some(&token_a)).await;
        assert_eq!(seen.status, 403, "{seen:?}");
        assert_eq!(seen.content_type.as_deref(), Some("application/json"));
        assert_eq!(
            seen.www_authenticate.as_deref(),
            Some(r#"Bearer error="insufficient_scope", scope="admin""#)
        );
        assert_eq!(seen.body, r#"{"message":"forbidden"}"#);
        s.get(Some(&a), http, "/admin/users", Some(&admin))
            .await
            .upstream_headers();
    }
    // Envoy's stats count every decision by reason.
    for (name, count) in [
        ("allow.reason.ok", 10),
        ("deny.reason.binding_mismatch", 4),
        ("deny.reason.scope_missing", 2),
        ("deny.reason.token_missing", 2),
        ("deny.reason.cert_missing", 2),
    ] {
        assert_eq!(
            s.counter(&format!("checks.decision.{name}")).await,
            count,
            "{name}"
        );
    }
    // The shipped access log format shows the module's decision, reason and issuer, and no token.
    let lines = [
        format!("200 certbound=allow reason=ok iss={ISSUER} "),
        "401 certbound=deny reason=token_missing iss=- ".to_owned(),
        format!("403 certbound=deny reason=scope_missing iss={ISSUER} "),
    ];
    assert_access_log(&s.envoy, &lines, &token_a).await;
}

/// `module.dynamic_metadata` as Envoy sees it: the shipped list sets only the fields its access
/// log reads, `true` sets every field, `false` none. An access log that also prints `sub` and
/// `x5t#S256` shows which were set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Envoy 1.40 and the built module: run scripts/test.sh"]
async fn module_sets_only_the_dynamic_metadata_fields_configured() {
    const SHIPPED: &str = "dynamic_metadata: [decision, reason, iss, rule]";
    let k1 = Signer::es256("k1");
    for (setting, expected) in [
        (
            SHIPPED,
            "certbound=allow reason=ok iss={ISSUER} rule=default sub=- x5t=- ",
        ),
        (
            "dynamic_metadata: true",
            "certbound=allow reason=ok iss={ISSUER} rule=default sub=alice x5t={X5T} ",
        ),
        (
            "dynamic_metadata: false",
            "certbound=- reason=- iss=- rule=- sub=- x5t=- ",
        ),
    ] {
        let s = ModuleStack::start(&[&k1], |config| {
            assert!(config.contains(SHIPPED), "the shipped module.yaml changed");
            config.replace(SHIPPED, setting).replace(
                "rule=%DYNAMIC_METADATA(certbound:rule)%",
                "rule=%DYNAMIC_METADATA(certbound:rule)% sub=%DYNAMIC_METADATA(certbound:sub)% \
                 x5t=%DYNAMIC_METADATA(certbound:x5t#S256)%",
            )
        })
        .await;
        s.wait_keys_loaded().await;
        let a = s.pki.client("client-a");
        let token = s.token_for(Some(&a));
        s.get(Some(&a), Http::One, "/items", Some(&token))
            .await
            .upstream_headers();
        let line = format!(
            "200 {}",
            expected
                .replace("{ISSUER}", ISSUER)
                .replace("{X5T}", &a.x5t())
        );
        assert_access_log(&s.envoy, &[line], &token).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Envoy 1.40 and the built module: run scripts/test.sh"]
async fn module_xfcc_mode_uses_the_sanitized_header_and_rejects_a_forged_one() {
    let k1 = Signer::es256("k1");
    // The module.yaml variant documented for a proxy behind a gateway that terminates mTLS.
    let s = ModuleStack::start(&[&k1], |c| {
        c.replace(
            "forward_client_cert_details: SANITIZE\n",
            "forward_client_cert_details: SANITIZE_SET\n                set_current_client_cert_details: { cert: true }\n",
        )
        .replace("sources: [peer]", "sources: [xfcc]")
    })
    .await;
    s.wait_keys_loaded().await;
    let a = s.pki.client("client-a");
    let token = s.token_for(Some(&a));
    for http in BOTH {
        let upstream = s
            .get(Some(&a), http, "/items", Some(&token))
            .await
            .upstream_headers();
        assert_eq!(upstream.get("x-certbound-subject"), Some(&json!("alice")));
        // No certificate, but a forged XFCC naming client A's certificate: dropped by Envoy.
        let forged = format!("Cert=\"{}\"", a.url_encoded());
        let auth = format!("Bearer {token}");
        s.get_with(
            None,
            http,
            "/items",
            &[
                ("authorization", &auth),
                ("x-forwarded-client-cert", &forged),
            ],
        )
        .await
        .assert_invalid_token();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Envoy 1.40 and the built module: run scripts/test.sh"]
async fn module_answers_503_while_the_issuers_keys_cannot_be_had() {
    let k1 = Signer::es256("k1");
    let s = ModuleStack::start_with(&[&k1], |c| c, |idp| idp.set_status(503)).await;
    let a = s.pki.client("client-a");
    let token = s.token_for(Some(&a));
    for http in BOTH {
        let seen = s.get(Some(&a), http, "/items", Some(&token)).await;
        assert_eq!(seen.status, 503, "{seen:?}");
        assert_eq!(seen.content_type.as_deref(), Some("application/json"));
        assert_eq!(seen.body, r#"{"message":"service unavailable"}"#);
        // A request without a token is still a plain 401: no keys are needed to refuse it.
        s.get(Some(&a), http, "/items", None)
            .await
            .assert_unauthorized("Bearer");
    }
    // The IdP comes back: the retry (1 s, 2 s, ... at most min_refresh) loads the keys.
    s.idp.set_status(200);
    s.wait_keys_loaded().await;
    s.get(Some(&a), Http::One, "/items", Some(&token))
        .await
        .upstream_headers();
    assert!(
        s.counter("key_refreshes.issuer.https://idp.example.com.result.failure")
            .await
            >= 1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Envoy 1.40 and the built module: run scripts/test.sh"]
async fn module_picks_up_a_rotation_by_one_unknown_kid_refetch() {
    let k1 = Signer::es256("k1");
    let k2 = Signer::es256("k2");
    let s = ModuleStack::start(&[&k1], |c| c).await;
    s.wait_keys_loaded().await;
    let a = s.pki.client("client-a");
    s.get(Some(&a), Http::One, "/items", Some(&s.token_for(Some(&a))))
        .await
        .upstream_headers();
    let fetches_before = s.idp.jwks_hits();

    // The IdP rotates to k2 and signs with it: ten concurrent first requests with the new kid
    // all pass, after one refetch (single-flight), each waiting for it on its own stream.
    s.idp.set_keys(&[&k1, &k2]);
    let token = k2.sign(&claims(Some(&a.x5t())));
    let requests = (0..10).map(|_| s.get(Some(&a), Http::Two, "/items", Some(&token)));
    for seen in futures_util::future::join_all(requests).await {
        seen.upstream_headers();
    }
    assert_eq!(
        s.idp.jwks_hits(),
        fetches_before + 1,
        "one refetch for all of them"
    );

    // A kid the IdP does not publish, within refetch_min_interval (30 s) of that refetch: no
    // new fetch, key_unknown at once.
    let unknown = Signer::es256("k3").sign(&claims(Some(&a.x5t())));
    s.get(Some(&a), Http::One, "/items", Some(&unknown))
        .await
        .assert_invalid_token();
    s.get(Some(&a), Http::One, "/items", Some(&unknown))
        .await
        .assert_invalid_token();
    assert_eq!(s.idp.jwks_hits(), fetches_before + 1, "rate-limited");
    assert_eq!(
        s.counter("checks.decision.deny.reason.key_unknown").await,
        2
    );
}

#[test]
#[ignore = "needs Envoy 1.40 and the built module: run scripts/test.sh"]
fn envoy_refuses_a_module_config_with_a_key_only_the_service_reads() {
    let pki = Pki::new("refuse");
    let ports = EnvoyPorts {
        listener: 8443,
        admin: 9901,
        upstream: Some("127.0.0.1:8080".parse().unwrap()),
        idp: Some("127.0.0.1:8081".parse().unwrap()),
        ..Default::default()
    };
    let shipped = envoy_config("module", &ports, &pki);
    validate_envoy(&shipped, pki.dir.path()).expect("the shipped module config validates");
    let with_listen = with_filter_config(
        &shipped,
        "issuers:\n  - issuer: https://idp.example.com\n    audiences: [a]\n    jwks_uri: https://idp.example.com/jwks\n    cluster: idp\nlisten: 0.0.0.0:50051\n",
    );
    let error = validate_envoy(&with_listen, pki.dir.path()).expect_err("refused");
    assert!(
        error.contains("line 6: listen: only the ext_authz service reads this key"),
        "{error}"
    );
    let no_cluster = with_filter_config(
        &shipped,
        "issuers:\n  - issuer: https://idp.example.com\n    audiences: [a]\n    jwks_uri: https://idp.example.com/jwks\n",
    );
    let error = validate_envoy(&no_cluster, pki.dir.path()).expect_err("refused");
    assert!(error.contains("issuers[0].cluster: required"), "{error}");
}

/// What a hostile-input case expects of the module.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    Allow,
    /// 401/403 with `x-certbound-reason: <reason>` (`policy.reason_header: true`).
    Deny(&'static str),
    /// 503 `{"message":"service unavailable"}`.
    Unavailable,
}

/// The adversarial table against the module: a subset of `tests/adversarial.rs` that covers
/// every reason the module can give (not `request_invalid`: Envoy always has a request; not
/// `token_inactive` or `introspection_unavailable`: the module does not introspect; not
/// `policy_invalid`: per-route settings are validated when Envoy loads them; not `overloaded`:
/// the module runs inline; not `proxy_untrusted`: only the HTTP authorization API has callers to
/// trust). Fails on any wrong allow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Envoy 1.40 and the built module: run scripts/test.sh"]
async fn module_gives_the_hostile_table_its_exact_answers_and_no_wrong_allow() {
    use Expect::{Allow, Deny, Unavailable};
    use base64::Engine;
    use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};

    let k1 = Signer::es256("k1");
    let other = Signer::es256("o1");
    let dir = tempfile::tempdir().unwrap();
    let other_jwks = dir.path().join("other-jwks.json");
    std::fs::write(&other_jwks, json!({"keys": [other.jwk]}).to_string()).unwrap();
    let filter_config = format!(
        "issuers:
  - issuer: {ISSUER}
    audiences: [{AUDIENCE}]
    jwks_uri: {ISSUER}/.well-known/jwks.json
    cluster: idp
  - issuer: https://other.example.com
    audiences: [{AUDIENCE}]
    jwks_file: {}
  - issuer: https://down.example.com
    audiences: [{AUDIENCE}]
    jwks_uri: https://down.example.com/no-such-document
    cluster: idp
certificate:
  sources: [peer, client_cert]
limits:
  max_token_bytes: 2048
  max_header_bytes: 4096
policy:
  reason_header: true
  rules:
    - {{name: health, path: /healthz, allow_anonymous: true}}
    - {{name: partner, path_prefix: /partner, audiences: ['https://partner.example.com']}}
    - {{name: other-only, path_prefix: /other-only, issuers: ['https://other.example.com']}}
    - {{name: ops, path_prefix: /ops, groups: [ops]}}
upstream:
  remove_authorization: true
",
        other_jwks.display()
    );
    let s = ModuleStack::start(&[&k1], |c| with_filter_config(&c, &filter_config)).await;
    s.wait_keys_loaded().await;

    let a = s.pki.client("client-a");
    let b = s.pki.client("client-b");
    let x5t = a.x5t();
    let now = now();
    let base = || claims(Some(&x5t));
    let with = |f: &dyn Fn(&mut Value)| {
        let mut c = base();
        f(&mut c);
        k1.sign(&c)
    };
    let b64 = |v: &Value| URL_SAFE_NO_PAD.encode(v.to_string());
    let raw =
        |header: Value, claims: Value| format!("{}.{}.c2lnbmF0dXJl", b64(&header), b64(&claims));
    let bearer = |t: &str| format!("Bearer {t}");
    let good = k1.sign(&base());
    let der_header = format!(":{}:", STANDARD.encode(&a.der));
    // An RSA token naming the EC key's kid.
    let rsa_as_k1 = Signer::rs256("k1").sign(&base());

    // (name, client certificate, path, headers, expected)
    type Case<'a> = (
        &'a str,
        Option<&'a ClientCert>,
        &'a str,
        Vec<(&'a str, String)>,
        Expect,
    );
    let auth = |t: &str| vec![("authorization", bearer(t))];
    let cases: Vec<Case> = vec![
        ("valid and bound", Some(&a), "/items", auth(&good), Allow),
        (
            "lower-case scheme",
            Some(&a),
            "/items",
            vec![("authorization", format!("bearer {good}"))],
            Allow,
        ),
        ("anonymous route", None, "/healthz", vec![], Allow),
        (
            "RFC 9440 client-cert source",
            None,
            "/items",
            {
                let mut h = auth(&good);
                h.push(("client-cert", der_header.clone()));
                h
            },
            Allow,
        ),
        (
            "exp inside the leeway",
            Some(&a),
            "/items",
            auth(&with(&|c| c["exp"] = json!(now - 50))),
            Allow,
        ),
        (
            "no authorization",
            Some(&a),
            "/items",
            vec![],
            Deny("token_missing"),
        ),
        (
            "Basic scheme",
            Some(&a),
            "/items",
            vec![("authorization", "Basic YTpi".into())],
            Deny("token_missing"),
        ),
        (
            "three parts",
            Some(&a),
            "/items",
            vec![("authorization", format!("Bearer {good} x"))],
            Deny("token_missing"),
        ),
        (
            "two authorization headers",
            Some(&a),
            "/items",
            vec![
                ("authorization", bearer(&good)),
                ("authorization", bearer(&good)),
            ],
            Deny("authorization_duplicate"),
        ),
        (
            "token over max_token_bytes",
            Some(&a),
            "/items",
            auth(&with(&|c| c["pad"] = json!("x".repeat(2100)))),
            Deny("token_too_large"),
        ),
        (
            "header over max_header_bytes",
            Some(&a),
            "/items",
            {
                let mut h = auth(&good);
                h.push(("client-cert", format!(":{}:", "A".repeat(5000))));
                h
            },
            Deny("header_too_large"),
        ),
        (
            "not a JWT",
            Some(&a),
            "/items",
            auth("a.b"),
            Deny("token_malformed"),
        ),
        (
            "alg none",
            Some(&a),
            "/items",
            auth(&raw(json!({"alg": "none"}), base())),
            Deny("alg_not_allowed"),
        ),
        (
            "alg HS256",
            Some(&a),
            "/items",
            auth(&raw(json!({"alg": "HS256", "kid": "k1"}), base())),
            Deny("alg_not_allowed"),
        ),
        (
            "unknown crit",
            Some(&a),
            "/items",
            auth(&raw(
                json!({"alg": "ES256", "kid": "k1", "crit": ["exp"]}),
                base(),
            )),
            Deny("crit_unsupported"),
        ),
        (
            "typ not a string",
            Some(&a),
            "/items",
            auth(&raw(json!({"alg": "ES256", "kid": "k1", "typ": 5}), base())),
            Deny("typ_invalid"),
        ),
        (
            "unknown issuer",
            Some(&a),
            "/items",
            auth(&with(&|c| c["iss"] = json!("https://evil.test"))),
            Deny("issuer_unknown"),
        ),
        (
            "unknown kid",
            Some(&a),
            "/items",
            auth(&Signer::es256("k9").sign(&base())),
            Deny("key_unknown"),
        ),
        (
            "RS256 with the kid of an EC key",
            Some(&a),
            "/items",
            auth(&rsa_as_k1),
            Deny("key_type_mismatch"),
        ),
        (
            "forged signature",
            Some(&a),
            "/items",
            auth(&Signer::es256("k1").sign(&base())),
            Deny("signature_invalid"),
        ),
        (
            "jku to an attacker",
            Some(&a),
            "/items",
            auth(&raw(
                json!({"alg": "ES256", "kid": "k1", "jku": "https://evil.test/jwks"}),
                base(),
            )),
            Deny("signature_invalid"),
        ),
        (
            "exp missing",
            Some(&a),
            "/items",
            auth(&with(&|c| {
                c.as_object_mut().unwrap().remove("exp");
            })),
            Deny("claims_invalid"),
        ),
        (
            "expired past the leeway",
            Some(&a),
            "/items",
            auth(&with(&|c| c["exp"] = json!(now - 70))),
            Deny("token_expired"),
        ),
        (
            "not yet valid",
            Some(&a),
            "/items",
            auth(&with(&|c| c["nbf"] = json!(now + 3600))),
            Deny("token_not_yet_valid"),
        ),
        (
            "issued in the future",
            Some(&a),
            "/items",
            auth(&with(&|c| c["iat"] = json!(now + 3600))),
            Deny("token_issued_in_future"),
        ),
        (
            "another audience",
            Some(&a),
            "/items",
            auth(&with(&|c| c["aud"] = json!("https://elsewhere.test"))),
            Deny("audience_mismatch"),
        ),
        (
            "route for another issuer",
            Some(&a),
            "/other-only",
            auth(&good),
            Deny("issuer_not_allowed"),
        ),
        (
            "route for another audience",
            Some(&a),
            "/partner",
            auth(&good),
            Deny("audience_not_allowed"),
        ),
        (
            "bound token, no certificate",
            None,
            "/items",
            auth(&good),
            Deny("cert_missing"),
        ),
        (
            "client-cert that is not X.509",
            None,
            "/items",
            {
                let mut h = auth(&good);
                h.push(("client-cert", ":Zm9v:".into()));
                h
            },
            Deny("cert_invalid"),
        ),
        (
            "unbound token",
            Some(&a),
            "/items",
            auth(&k1.sign(&claims(None))),
            Deny("cnf_missing"),
        ),
        (
            "cnf a string, not JSON",
            Some(&a),
            "/items",
            auth(&with(&|c| c["cnf"] = json!("not json"))),
            Deny("cnf_invalid"),
        ),
        (
            "cnf without x5t#S256",
            Some(&a),
            "/items",
            auth(&with(&|c| c["cnf"] = json!({}))),
            Deny("x5t_missing"),
        ),
        (
            "cnf names a jwk (a method certbound does not verify)",
            Some(&a),
            "/items",
            auth(&with(&|c| {
                c["cnf"] = json!({"x5t#S256": x5t.clone(), "jwk": {"kty": "OKP"}})
            })),
            Deny("cnf_unverified"),
        ),
        (
            "DPoP-bound token as Bearer, DPoP off",
            Some(&a),
            "/items",
            auth(&with(&|c| c["cnf"] = json!({"jkt": "abc"}))),
            Deny("dpop_downgrade"),
        ),
        (
            "double-encoded dot-segment (Envoy's normalize_path leaves %25)",
            Some(&a),
            "/items/%252e%252e/admin",
            auth(&good),
            Deny("path_unsafe"),
        ),
        (
            "padded x5t#S256",
            Some(&a),
            "/items",
            auth(&with(&|c| {
                c["cnf"] = json!({"x5t#S256": format!("{x5t}=")})
            })),
            Deny("binding_mismatch"),
        ),
        (
            "another client's certificate",
            Some(&b),
            "/items",
            auth(&good),
            Deny("binding_mismatch"),
        ),
        (
            "route scope missing",
            Some(&a),
            "/admin",
            auth(&good),
            Deny("scope_missing"),
        ),
        (
            "route group missing",
            Some(&a),
            "/ops",
            auth(&good),
            Deny("group_missing"),
        ),
        (
            "issuer whose keys cannot be had",
            Some(&a),
            "/items",
            auth(&with(&|c| c["iss"] = json!("https://down.example.com"))),
            Unavailable,
        ),
        (
            "token of the file-keyed issuer",
            Some(&a),
            "/other-only",
            auth(&{
                let mut c = base();
                c["iss"] = json!("https://other.example.com");
                other.sign(&c)
            }),
            Allow,
        ),
    ];

    let mut wrong = Vec::new();
    let mut reasons = std::collections::BTreeSet::new();
    for (name, cert, path, headers, expect) in &cases {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let seen = s.get_with(*cert, Http::One, path, &headers).await;
        let got = match seen.status {
            200 => Allow,
            503 => Unavailable,
            400 | 401 | 403 => match seen.reason.as_deref() {
                Some(reason) => Deny(Box::leak(reason.to_owned().into_boxed_str())),
                None => Deny("(no reason header)"),
            },
            _ => Deny("(unexpected status)"),
        };
        if let Deny(reason) = expect {
            reasons.insert(*reason);
            let status = if ["scope_missing", "group_missing"].contains(reason) {
                403
            } else if *reason == "path_unsafe" {
                400
            } else {
                401
            };
            assert_eq!(seen.status, status, "{name}: {seen:?}");
            assert_eq!(
                seen.content_type.as_deref(),
                Some("application/json"),
                "{name}"
            );
        }
        if got != *expect {
            wrong.push(format!(
                "{name}: expected {expect:?}, got {got:?} ({} {:?})",
                seen.status, seen.body
            ));
        }
    }
    let wrong_allows = wrong.iter().filter(|w| w.contains("got Allow")).count();
    assert!(
        wrong.is_empty(),
        "{} of {} cases answered wrongly ({wrong_allows} wrong allows):\n{}",
        wrong.len(),
        cases.len(),
        wrong.join("\n")
    );
    // Every deny reason the module can give is in the table (DPoP's in the DPoP test's).
    let unreachable = [
        "request_invalid",
        "proxy_untrusted",
        "token_inactive",
        "policy_invalid",
    ];
    // Protected resources' reasons: through the module in tests/resources_e2e.rs.
    let resources = [
        "resource_audience_mismatch",
        "dpop_required",
        "acr_insufficient",
        "auth_time_missing",
        "auth_time_too_old",
        "resource_unknown",
        "method_not_allowed",
    ];
    for reason in certbound_core::DenyReason::ALL {
        let code = reason.as_str();
        assert!(
            reasons.contains(code)
                || unreachable.contains(&code)
                || resources.contains(&code)
                || code.starts_with("dpop_"),
            "no case for {code}"
        );
    }
}

/// DPoP in the module, with the in-memory replay store: proofs from the npm `dpop` package, a
/// replay refused, and server nonces (the 401's `DPoP-Nonce`, and a fresh one added to the
/// upstream's answer when the client's nonce is from the previous slot).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Envoy 1.40, the built module and node with the npm dpop package: run scripts/test.sh"]
async fn module_enforces_dpop_with_npm_dpop_proofs() {
    let k1 = Signer::es256("k1");
    let secret = tempfile::NamedTempFile::new().unwrap();
    const SECRET: &[u8] = b"a shared secret of 32 bytes.....";
    std::fs::write(secret.path(), SECRET).unwrap();
    let filter_config = format!(
        "issuers:
  - issuer: {ISSUER}
    audiences: [{AUDIENCE}]
    jwks_uri: {ISSUER}/.well-known/jwks.json
    cluster: idp
    algorithms: [ES256]
certificate:
  sources: [peer]
dpop:
  enabled: true
  nonce:
    secret_file: {}
policy:
  reason_header: true
upstream:
  remove_authorization: true
",
        secret.path().display()
    );
    let s = ModuleStack::start(&[&k1], |c| with_filter_config(&c, &filter_config)).await;
    s.wait_keys_loaded().await;
    let htu = format!("https://127.0.0.1:{}/items", s.port);
    let mut client = common::external::NodeDpop::start("ES256");
    let mut c = claims(None);
    c["cnf"] = json!({"jkt": client.jkt});
    let token = k1.sign(&c);
    let auth = format!("DPoP {token}");

    for http in BOTH {
        // No nonce yet: 401 use_dpop_nonce with one.
        let proof = client.proof("GET", &htu, &token, None);
        let seen = s
            .get_with(
                None,
                http,
                "/items",
                &[("authorization", &auth), ("dpop", &proof)],
            )
            .await;
        seen.assert_challenge_starts_with(r#"DPoP error="use_dpop_nonce", algs=""#);
        let nonce = seen.dpop_nonce.clone().expect("DPoP-Nonce on the 401");
        // With it: allowed, once.
        let proof = client.proof("GET", &htu, &token, Some(&nonce));
        let headers = [("authorization", auth.as_str()), ("dpop", proof.as_str())];
        let seen = s.get_with(None, http, "/items", &headers).await;
        assert_eq!(seen.status, 200, "{http:?}: {seen:?}\n{}", s.envoy.log());
        let seen = s.get_with(None, http, "/items", &headers).await;
        seen.assert_challenge_starts_with(r#"DPoP error="invalid_dpop_proof""#);
        // A nonce of the previous slot still works, and the answer carries the current one.
        let keys = certbound_core::dpop::NonceKeys::new(SECRET, 60);
        let proof = client.proof("GET", &htu, &token, Some(&keys.issue(now() - 60)));
        let seen = s
            .get_with(
                None,
                http,
                "/items",
                &[("authorization", &auth), ("dpop", &proof)],
            )
            .await;
        assert_eq!(seen.status, 200, "{seen:?}");
        assert_eq!(seen.dpop_nonce, Some(keys.issue(now())), "{seen:?}");
    }
    // Hostile proofs (made field by field), each with its reason; none allowed.
    let key = common::dpop::DpopKey::es256();
    let other = common::dpop::DpopKey::es256();
    let bound_to = |jkt: &str| {
        let mut c = claims(None);
        c["cnf"] = json!({"jkt": jkt});
        k1.sign(&c)
    };
    let token = bound_to(&key.jkt());
    let to_other = bound_to(&other.jkt());
    let unbound = k1.sign(&claims(None));
    let keys = certbound_core::dpop::NonceKeys::new(SECRET, 60);
    let nonce = keys.issue(now());
    let b = |token: &str| key.build("GET", &htu, token).claim("nonce", json!(nonce));
    let good = b(&token).sign();
    let dpop = |t: &str| format!("DPoP {t}");
    let private_jwk = {
        let mut jwk = key.jwk.clone();
        jwk["d"] = json!("c2VjcmV0");
        jwk
    };
    let cases: Vec<(&str, String, Option<String>, &str)> = vec![
        ("no proof", dpop(&token), None, "dpop_proof_missing"),
        (
            "not a JWS",
            dpop(&token),
            Some("x.y".into()),
            "dpop_proof_invalid",
        ),
        (
            "typ JWT",
            dpop(&token),
            Some(b(&token).header("typ", json!("JWT")).sign()),
            "dpop_typ_invalid",
        ),
        (
            "alg none",
            dpop(&token),
            Some(b(&token).unsigned()),
            "dpop_alg_not_allowed",
        ),
        (
            "alg HS256",
            dpop(&token),
            Some(b(&token).hmac()),
            "dpop_alg_not_allowed",
        ),
        (
            "private jwk",
            dpop(&token),
            Some(b(&token).header("jwk", private_jwk).sign()),
            "dpop_jwk_invalid",
        ),
        (
            "another key's jwk",
            dpop(&token),
            Some(b(&token).header("jwk", other.jwk.clone()).sign()),
            "dpop_signature_invalid",
        ),
        (
            "htm POST",
            dpop(&token),
            Some(b(&token).claim("htm", json!("POST")).sign()),
            "dpop_method_mismatch",
        ),
        (
            "htu elsewhere",
            dpop(&token),
            Some(
                b(&token)
                    .claim("htu", json!("https://evil.example/items"))
                    .sign(),
            ),
            "dpop_url_mismatch",
        ),
        (
            "iat stale",
            dpop(&token),
            Some(b(&token).claim("iat", json!(now() - 3600)).sign()),
            "dpop_iat_too_old",
        ),
        (
            "iat ahead",
            dpop(&token),
            Some(b(&token).claim("iat", json!(now() + 3600)).sign()),
            "dpop_iat_in_future",
        ),
        (
            "no ath",
            dpop(&token),
            Some(b(&token).without_claim("ath").sign()),
            "dpop_ath_mismatch",
        ),
        (
            "no nonce",
            dpop(&token),
            Some(key.build("GET", &htu, &token).sign()),
            "dpop_nonce_required",
        ),
        (
            "token bound to another key",
            dpop(&to_other),
            Some(b(&to_other).sign()),
            "dpop_key_mismatch",
        ),
        (
            "Bearer downgrade",
            format!("Bearer {token}"),
            None,
            "dpop_downgrade",
        ),
        (
            "unbound token",
            dpop(&unbound),
            Some(b(&unbound).sign()),
            "dpop_token_unbound",
        ),
        ("good", dpop(&token), Some(good.clone()), "ok"),
        ("replayed", dpop(&token), Some(good), "dpop_replayed"),
    ];
    let mut reasons = std::collections::BTreeSet::new();
    for (name, auth, proof, reason) in &cases {
        let mut headers = vec![("authorization", auth.as_str())];
        if let Some(proof) = proof {
            headers.push(("dpop", proof.as_str()));
        }
        let seen = s.get_with(None, Http::Two, "/items", &headers).await;
        if *reason == "ok" {
            assert_eq!(seen.status, 200, "{name}: {seen:?}");
            continue;
        }
        seen.assert_challenge_starts_with("DPoP error=");
        assert_eq!(seen.reason.as_deref(), Some(*reason), "{name}: {seen:?}");
        reasons.insert(*reason);
    }
    for reason in certbound_core::DenyReason::ALL {
        let code = reason.as_str();
        // dpop_required is a protected resource's: tests/resources_e2e.rs.
        assert!(
            !code.starts_with("dpop_") || code == "dpop_required" || reasons.contains(code),
            "no module case for {code}"
        );
    }
    assert!(s.counter("checks.decision.deny.reason.dpop_replayed").await >= 2);
    assert!(s.counter("checks.decision.allow.reason.ok").await >= 2);
}
