//! Route policy through the gRPC API: 403 vs 401 ordering, scopes, groups, anonymous routes,
//! per-route binding, Envoy `context_extensions`, RFC 9440 and XFCC `Hash`, the reason header.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use base64::Engine;
use common::*;
use serde_json::json;

const POLICY: &str = "
policy:
  groups_claim: roles
  allow_cors_preflight: true
  rules:
    - name: health
      path: /healthz
      allow_anonymous: true
    - name: admin
      path_prefix: /admin
      scopes: [admin]
      groups: [ops, sre]
    - name: audit
      path_prefix: /audit
      groups: [ops, auditors]
      match_all: true
    - name: legacy
      hosts: ['*.legacy.test']
      binding: when_present
    - name: items-write
      path_regex: /items/[0-9]+
      methods: [PUT, DELETE]
      scopes: [items:write]
  default:
    scopes: [read]
";

struct World {
    idp: Idp,
    signer: Signer,
    certbound: Certbound,
    cert: ClientCert,
}

impl World {
    async fn start(extra: &str) -> Self {
        let signer = Signer::es256("k1");
        let idp = Idp::start(&[&signer]).await;
        let certbound = Certbound::start(&config_for(&idp, extra)).await;
        Self {
            idp,
            signer,
            certbound,
            cert: ClientCert::self_signed("a"),
        }
    }

    fn token(&self, edit: impl Fn(&mut serde_json::Value)) -> String {
        let mut c = claims(&self.idp.issuer, Some(&self.cert.x5t()));
        edit(&mut c);
        self.signer.sign(&c)
    }

    async fn call(
        &self,
        method: &str,
        host: &str,
        path: &str,
        token: Option<&str>,
        ext: &[(&str, &str)],
    ) -> Answer {
        let auth = token.map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> =
            auth.iter().map(|a| ("authorization", a.as_str())).collect();
        let mut req = request(&headers, &self.cert.url_encoded());
        let attrs = req.attributes.as_mut().unwrap();
        let http = attrs.request.as_mut().unwrap().http.as_mut().unwrap();
        http.method = method.into();
        http.host = host.into();
        http.path = path.into();
        attrs.context_extensions = ext
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.certbound.check(req).await
    }
}

#[track_caller]
fn assert_forbidden(answer: &Answer, reason: &str, challenge: &str) {
    assert_eq!(answer.grpc_code, Some(7), "{answer:?}");
    assert_eq!(answer.http_status, Some(403), "{answer:?}");
    assert_eq!(answer.body, r#"{"message":"forbidden"}"#);
    assert_eq!(
        answer.headers.get("content-type").map(String::as_str),
        Some("application/json")
    );
    assert_eq!(
        answer.headers.get("www-authenticate").map(String::as_str),
        Some(challenge),
        "{answer:?}"
    );
    assert_eq!(answer.reason(), reason);
}

#[tokio::test]
async fn missing_scope_is_403_with_the_scope_in_the_challenge() {
    let w = World::start(POLICY).await;
    let token = w.token(|c| c["scope"] = json!("read"));
    let answer = w
        .call("GET", "api.test", "/admin/users", Some(&token), &[])
        .await;
    assert_forbidden(
        &answer,
        "scope_missing",
        r#"Bearer error="insufficient_scope", scope="admin""#,
    );
    let token = w.token(|c| {
        c["scope"] = json!("admin");
        c["roles"] = json!(["ops"]);
    });
    w.call("GET", "api.test", "/admin/users", Some(&token), &[])
        .await
        .assert_allowed();
}

#[tokio::test]
async fn token_and_binding_failures_stay_401_and_come_first() {
    let w = World::start(POLICY).await;
    // No scopes at all, and bound to another certificate: the binding is reported, as a 401.
    let other = ClientCert::self_signed("b");
    let token = w.signer.sign(&{
        let mut c = claims(&w.idp.issuer, Some(&other.x5t()));
        c["scope"] = json!("");
        c
    });
    w.call("GET", "api.test", "/admin", Some(&token), &[])
        .await
        .assert_invalid_token("binding_mismatch");
    // Expired and scopeless: expiry wins.
    let expired = w.token(|c| {
        c["exp"] = json!(now() - 3600);
        c["scope"] = json!("");
    });
    w.call("GET", "api.test", "/admin", Some(&expired), &[])
        .await
        .assert_invalid_token("token_expired");
    // No token on a protected route: 401 without error code.
    w.call("GET", "api.test", "/admin", None, &[])
        .await
        .assert_unauthorized("token_missing", "Bearer");
}

#[tokio::test]
async fn groups_any_of_and_all_of_with_id_name_objects() {
    let w = World::start(POLICY).await;
    let with_roles = |roles: serde_json::Value| {
        w.token(move |c| {
            c["scope"] = json!("admin read");
            c["roles"] = roles.clone();
        })
    };
    let sre = with_roles(json!([{"id": "g-1", "name": "sre"}]));
    w.call("GET", "h", "/admin", Some(&sre), &[])
        .await
        .assert_allowed();
    let none = with_roles(json!(["dev"]));
    assert_forbidden(
        &w.call("GET", "h", "/admin", Some(&none), &[]).await,
        "group_missing",
        r#"Bearer error="insufficient_scope""#,
    );
    let one_of_two = with_roles(json!(["ops"]));
    assert_forbidden(
        &w.call("GET", "h", "/audit", Some(&one_of_two), &[]).await,
        "group_missing",
        r#"Bearer error="insufficient_scope""#,
    );
    let both = with_roles(json!(["ops", {"id": "auditors"}]));
    w.call("GET", "h", "/audit", Some(&both), &[])
        .await
        .assert_allowed();
}

#[tokio::test]
async fn anonymous_routes_need_no_token_and_strip_claim_headers() {
    let w = World::start(POLICY).await;
    let answer = w.call("GET", "h", "/healthz", None, &[]).await;
    answer.assert_allowed();
    assert!(
        answer
            .headers_to_remove
            .contains(&"x-certbound-subject".to_string()),
        "{answer:?}"
    );
    assert_eq!(
        answer.metadata.get("reason").map(String::as_str),
        Some("ok")
    );
    // A garbage token on an anonymous route is not looked at.
    w.call("GET", "h", "/healthz", Some("garbage"), &[])
        .await
        .assert_allowed();
    // /healthz/x is not the exact path.
    w.call("GET", "h", "/healthz/x", None, &[])
        .await
        .assert_unauthorized("token_missing", "Bearer");
}

#[tokio::test]
async fn cors_preflight_passes_when_enabled() {
    let w = World::start(POLICY).await;
    let mut req = request(
        &[
            ("origin", "https://app.test"),
            ("access-control-request-method", "POST"),
        ],
        "",
    );
    http_mut(&mut req).method = "OPTIONS".into();
    w.certbound.check(req).await.assert_allowed();
    // An OPTIONS without the preflight headers is an ordinary request.
    w.call("OPTIONS", "h", "/items", None, &[])
        .await
        .assert_unauthorized("token_missing", "Bearer");
}

#[tokio::test]
async fn rules_match_method_regex_and_host_and_can_relax_binding() {
    let w = World::start(POLICY).await;
    let reader = w.token(|c| c["scope"] = json!("read"));
    w.call("GET", "h", "/items/7", Some(&reader), &[])
        .await
        .assert_allowed();
    assert_forbidden(
        &w.call("PUT", "h", "/items/7", Some(&reader), &[]).await,
        "scope_missing",
        r#"Bearer error="insufficient_scope", scope="items:write""#,
    );
    // The legacy hosts accept unbound tokens (when_present); elsewhere they are refused.
    let unbound = w.signer.sign(&{
        let mut c = claims(&w.idp.issuer, None);
        c["scope"] = json!("read");
        c
    });
    w.call("GET", "app.legacy.test", "/x", Some(&unbound), &[])
        .await
        .assert_allowed();
    w.call("GET", "api.test", "/x", Some(&unbound), &[])
        .await
        .assert_invalid_token("cnf_missing");
}

#[tokio::test]
async fn context_extensions_add_requirements_and_override_binding() {
    let w = World::start(POLICY).await;
    let reader = w.token(|c| c["scope"] = json!("read"));
    let ext_scope = [("certbound.scopes", "reports:read")];
    assert_forbidden(
        &w.call("GET", "h", "/reports", Some(&reader), &ext_scope)
            .await,
        "scope_missing",
        r#"Bearer error="insufficient_scope", scope="reports:read""#,
    );
    let reporter = w.token(|c| c["scope"] = json!("read reports:read"));
    w.call("GET", "h", "/reports", Some(&reporter), &ext_scope)
        .await
        .assert_allowed();

    let ext_group = [("certbound.groups", "finance")];
    assert_forbidden(
        &w.call("GET", "h", "/reports", Some(&reporter), &ext_group)
            .await,
        "group_missing",
        r#"Bearer error="insufficient_scope""#,
    );

    let unbound = w.signer.sign(&{
        let mut c = claims(&w.idp.issuer, None);
        c["scope"] = json!("read");
        c
    });
    w.call(
        "GET",
        "h",
        "/x",
        Some(&unbound),
        &[("certbound.binding", "disabled")],
    )
    .await
    .assert_allowed();
    w.call(
        "GET",
        "h",
        "/x",
        Some(&unbound),
        &[("certbound.binding", "nonsense")],
    )
    .await
    .assert_invalid_token("policy_invalid");
}

#[tokio::test]
async fn rules_can_limit_issuers_and_audiences() {
    let extra =
        "policy:\n  rules:\n    - path_prefix: /partner\n      audiences: [https://partner.test]\n";
    let w = World::start(extra).await;
    let token = w.token(|_| {});
    w.call("GET", "h", "/partner/x", Some(&token), &[])
        .await
        .assert_invalid_token("audience_not_allowed");
    let partner = w.token(|c| c["aud"] = json!(["https://api.test", "https://partner.test"]));
    w.call("GET", "h", "/partner/x", Some(&partner), &[])
        .await
        .assert_allowed();
}

#[tokio::test]
async fn rfc9440_client_cert_header_is_a_certificate_source() {
    let w = World::start("certificate:\n  sources: [client_cert]\n").await;
    let token = w.token(|_| {});
    let auth = format!("Bearer {token}");
    let header = format!(
        ":{}:",
        base64::engine::general_purpose::STANDARD.encode(&w.cert.der)
    );
    w.certbound
        .check(request(
            &[("authorization", &auth), ("client-cert", &header)],
            "",
        ))
        .await
        .assert_allowed();
    w.certbound
        .check(request(
            &[
                ("authorization", &auth),
                ("client-cert", "not-a-byte-sequence"),
            ],
            "",
        ))
        .await
        .assert_invalid_token("cert_invalid");
    // The peer certificate is not consulted when only client_cert is configured.
    w.certbound
        .check(request(&[("authorization", &auth)], &w.cert.url_encoded()))
        .await
        .assert_invalid_token("cert_missing");
}

#[tokio::test]
async fn xfcc_hash_is_used_when_cert_is_absent_and_by_selects_the_element() {
    let w = World::start("certificate:\n  sources: [xfcc]\n  xfcc_by: spiffe://gateway\n").await;
    let token = w.token(|_| {});
    let auth = format!("Bearer {token}");
    let hash: String = sha256_hex(&w.cert.der);
    let xfcc = format!(
        "By=spiffe://gateway;Hash={hash},By=spiffe://sidecar;Hash={}",
        "0".repeat(64)
    );
    w.certbound
        .check(request(
            &[("authorization", &auth), ("x-forwarded-client-cert", &xfcc)],
            "",
        ))
        .await
        .assert_allowed();
    let only_sidecar = format!("By=spiffe://sidecar;Hash={hash}");
    w.certbound
        .check(request(
            &[
                ("authorization", &auth),
                ("x-forwarded-client-cert", &only_sidecar),
            ],
            "",
        ))
        .await
        .assert_invalid_token("cert_missing");
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tokio::test]
async fn the_reason_header_is_off_by_default_and_on_when_configured() {
    let w = World::start("").await;
    let answer = w.call("GET", "h", "/x", None, &[]).await;
    assert!(!answer.headers.contains_key("x-certbound-reason"));
    let w = World::start("policy:\n  reason_header: true\n").await;
    let answer = w.call("GET", "h", "/x", None, &[]).await;
    assert_eq!(
        answer.headers.get("x-certbound-reason").map(String::as_str),
        Some("token_missing")
    );
    assert_eq!(
        answer.metadata.get("reason").map(String::as_str),
        Some("token_missing")
    );
}
