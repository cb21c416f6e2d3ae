//! Protected resources through the ext_authz service and the HTTP authorization API, in
//! process: the RFC 9728 metadata answered by the Check itself (a non-OK status with a 200
//! `denied_response`), `resource_metadata` in the challenges (parsed with the independent
//! parser in tests/common/challenge.rs), RFC 8707 audiences, RFC 9470 step-up, and what the
//! HTTP API answers a metadata fetch and a check of a metadata path.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::challenge;
use common::{Answer, Certbound, ClientCert, Idp, Signer, claims, config_for, http_mut, request};
use serde_json::{Value, json};

const MCP: &str = "https://mcp.example.com/mcp";
const METADATA_URL: &str = "https://mcp.example.com/.well-known/oauth-protected-resource/mcp";

fn resources() -> String {
    format!(
        "resources:\n  - id: {MCP}\n    path_prefix: /mcp\npolicy:\n  rules:\n    - path_prefix: /mcp/admin\n      acr_values: [urn:example:mfa]\n      max_age_seconds: 300\n"
    )
}

struct World {
    signer: Signer,
    idp: Idp,
    cert: ClientCert,
    certbound: Certbound,
}

impl World {
    async fn start(extra: &str) -> Self {
        let signer = Signer::es256("k1");
        let idp = Idp::start(&[&signer]).await;
        // The issuer accepts the resource's identifier and the usual test audience.
        let yaml = config_for(&idp, extra).replace(
            "audiences: [https://api.test]",
            &format!("audiences: [https://api.test, {MCP}]"),
        );
        let certbound = Certbound::start(&yaml).await;
        Self {
            signer,
            idp,
            cert: ClientCert::self_signed("a"),
            certbound,
        }
    }

    fn token(&self, edit: impl FnOnce(&mut Value)) -> String {
        let mut claims = claims(&self.idp.issuer, Some(&self.cert.x5t()));
        claims["aud"] = json!(MCP);
        edit(&mut claims);
        self.signer.sign(&claims)
    }

    async fn call(&self, method: &str, path: &str, token: Option<&str>) -> Answer {
        let auth = token.map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> =
            auth.iter().map(|a| ("authorization", a.as_str())).collect();
        let mut req = request(&headers, &self.cert.url_encoded());
        let http = http_mut(&mut req);
        http.method = method.into();
        http.path = path.into();
        // The client controls Host: the metadata URL must not come from it.
        http.host = "attacker.example".into();
        self.certbound.check(req).await
    }
}

fn parsed(answer: &Answer) -> Vec<challenge::Challenge> {
    let value = answer.headers.get("www-authenticate").expect("a challenge");
    challenge::parse(value).unwrap_or_else(|e| panic!("{value:?}: {e}"))
}

#[tokio::test]
async fn the_check_itself_answers_the_metadata_with_a_non_ok_status_and_a_200() {
    let world = World::start(&resources()).await;
    let token = world.token(|_| {});
    for token in [None, Some(token.as_str())] {
        let answer = world
            .call("GET", "/.well-known/oauth-protected-resource/mcp", token)
            .await;
        // Non-OK: Envoy never lets it through; the denied_response's 200 is what the client gets.
        assert_eq!(answer.grpc_code, Some(7), "{answer:?}");
        assert_eq!(answer.kind, "denied");
        assert_eq!(answer.http_status, Some(200));
        assert_eq!(answer.headers["content-type"], "application/json");
        assert_eq!(answer.headers["cache-control"], "public, max-age=300");
        assert!(!answer.headers.contains_key("www-authenticate"));
        let document: Value = serde_json::from_str(&answer.body).unwrap();
        assert_eq!(document["resource"], MCP);
        assert_eq!(document["authorization_servers"], json!([world.idp.issuer]));
        assert_eq!(document["tls_client_certificate_bound_access_tokens"], true);
        assert_eq!(answer.metadata["decision"], "metadata");
        assert_eq!(answer.reason(), "resource_metadata");
    }
    let unknown = world
        .call("GET", "/.well-known/oauth-protected-resource/other", None)
        .await;
    assert_eq!(
        (unknown.grpc_code, unknown.http_status),
        (Some(5), Some(404))
    );
    assert_eq!(unknown.reason(), "resource_unknown");
    let post = world
        .call("POST", "/.well-known/oauth-protected-resource/mcp", None)
        .await;
    assert_eq!(post.http_status, Some(405));
    assert_eq!(post.headers["allow"], "GET, HEAD, OPTIONS");
    // A CORS preflight: 204 through the Check too, never an OK status.
    let preflight = world
        .call("OPTIONS", "/.well-known/oauth-protected-resource/mcp", None)
        .await;
    assert_eq!(
        (preflight.grpc_code, preflight.http_status),
        (Some(7), Some(204))
    );
    assert_eq!(preflight.headers["access-control-allow-origin"], "*");
    assert_eq!(preflight.body, "");
    // Another well-known path is decided like any path.
    let other = world
        .call("GET", "/.well-known/openid-configuration", None)
        .await;
    other.assert_unauthorized("token_missing", "Bearer");
    assert_eq!(
        world
            .certbound
            .metric(r#"certbound_checks_total{decision="metadata",reason="resource_metadata"}"#),
        3
    );
}

#[tokio::test]
async fn challenges_under_the_resource_point_at_its_metadata_and_audiences_are_checked() {
    let world = World::start(&resources()).await;
    let missing = world.call("GET", "/mcp", None).await;
    assert_eq!(missing.http_status, Some(401));
    let challenges = parsed(&missing);
    assert_eq!(challenges.len(), 1);
    assert!(challenges[0].scheme.eq_ignore_ascii_case("bearer"));
    assert_eq!(challenges[0].param("resource_metadata"), Some(METADATA_URL));
    // RFC 8707: a token for another resource.
    let other = world.token(|c| c["aud"] = json!("https://api.test"));
    let refused = world.call("GET", "/mcp/tools", Some(&other)).await;
    assert_eq!(refused.reason(), "resource_audience_mismatch");
    assert_eq!(refused.http_status, Some(401));
    let challenges = parsed(&refused);
    assert_eq!(challenges[0].param("error"), Some("invalid_token"));
    assert_eq!(challenges[0].param("resource_metadata"), Some(METADATA_URL));
    // The same token outside the resource is fine.
    world
        .call("GET", "/api/items", Some(&other))
        .await
        .assert_allowed();
    world
        .call("GET", "/mcp/tools", Some(&world.token(|_| {})))
        .await
        .assert_allowed();
    // Outside the resource a challenge has no resource_metadata.
    world
        .call("GET", "/api/items", None)
        .await
        .assert_unauthorized("token_missing", "Bearer");
}

#[tokio::test]
async fn step_up_refusals_carry_acr_values_and_max_age() {
    let world = World::start(&resources()).await;
    let now = common::now();
    let cases = [
        (
            "acr_insufficient",
            json!({"acr": "urn:example:pwd", "auth_time": now}),
        ),
        ("auth_time_missing", json!({"acr": "urn:example:mfa"})),
        (
            "auth_time_too_old",
            json!({"acr": "urn:example:mfa", "auth_time": now - 3600}),
        ),
    ];
    for (reason, extra) in cases {
        let token = world.token(|c| {
            for (k, v) in extra.as_object().unwrap() {
                c[k] = v.clone();
            }
        });
        let answer = world.call("GET", "/mcp/admin/users", Some(&token)).await;
        assert_eq!(answer.reason(), reason, "{answer:?}");
        assert_eq!(
            (answer.grpc_code, answer.http_status),
            (Some(16), Some(401))
        );
        let challenges = parsed(&answer);
        assert_eq!(
            challenges[0].param("error"),
            Some("insufficient_user_authentication")
        );
        assert_eq!(challenges[0].param("acr_values"), Some("urn:example:mfa"));
        assert_eq!(challenges[0].param("max_age"), Some("300"));
        assert_eq!(challenges[0].param("resource_metadata"), Some(METADATA_URL));
        assert_eq!(
            world.certbound.metric(&format!(
                r#"certbound_checks_total{{decision="deny",reason="{reason}"}}"#
            )),
            1
        );
    }
    let strong = world.token(|c| {
        c["acr"] = json!("urn:example:mfa");
        c["auth_time"] = json!(now - 10);
    });
    world
        .call("GET", "/mcp/admin/users", Some(&strong))
        .await
        .assert_allowed();
}

/// certbound's HTTP API beside the gRPC service.
async fn http_api(
    world: &World,
    yaml: &str,
) -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let settings = certbound::config::Settings::from_yaml(yaml, Vec::new(), None).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let app = std::sync::Arc::clone(&world.certbound.app);
    tokio::spawn(async move {
        certbound::forward_auth::serve(
            app.authorizer(),
            settings.forward_auth.unwrap(),
            settings.connections,
            app.metrics(),
            listener,
            async {
                let _ = stopped.await;
            },
        )
        .await
    });
    (addr, stop)
}

#[tokio::test]
async fn the_http_api_serves_a_routed_metadata_fetch_but_never_passes_a_check_of_one() {
    let extra = format!("forward_auth: {{listen: 127.0.0.1:0}}\n{}", resources());
    let world = World::start(&extra).await;
    let yaml = config_for(&world.idp, &extra).replace(
        "audiences: [https://api.test]",
        &format!("audiences: [https://api.test, {MCP}]"),
    );
    let (addr, _stop) = http_api(&world, &yaml).await;
    let client = reqwest::Client::new();
    // The proxy routes the well-known path to certbound's listener: the document.
    let fetch = client
        .get(format!(
            "http://{addr}/.well-known/oauth-protected-resource/mcp"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(fetch.status(), 200);
    assert_eq!(fetch.headers()["content-type"], "application/json");
    assert_eq!(fetch.headers()["cache-control"], "public, max-age=300");
    let document: Value = fetch.json().await.unwrap();
    assert_eq!(document["resource"], MCP);
    let unknown = client
        .get(format!(
            "http://{addr}/.well-known/oauth-protected-resource/x"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);
    // A check whose original request is the metadata path: never 2xx (the proxy would pass it).
    let check = |path: &str| {
        client
            .get(format!("http://{addr}/auth"))
            .header("x-forwarded-method", "GET")
            .header("x-forwarded-uri", path)
            .header("x-forwarded-host", "mcp.example.com")
            .header("x-forwarded-proto", "https")
            .send()
    };
    let misrouted = check("/.well-known/oauth-protected-resource/mcp")
        .await
        .unwrap();
    assert_eq!(misrouted.status(), 404);
    // A check under the resource: the 401 points at the metadata.
    let refused = check("/mcp").await.unwrap();
    assert_eq!(refused.status(), 401);
    let value = refused.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_owned();
    let challenges = challenge::parse(&value).unwrap();
    assert_eq!(challenges[0].param("resource_metadata"), Some(METADATA_URL));
}

#[tokio::test]
async fn explain_names_the_resource_the_step_up_and_the_metadata_answer() {
    use certbound::explain::{ExplainRequest, explain};
    let world = World::start(&resources()).await;
    let checker = world.certbound.checker();
    let ask = |path: &str, token: String| ExplainRequest {
        token,
        certificate: Some(world.cert.pem.clone().into_bytes()),
        method: "GET".into(),
        scheme: "https".into(),
        path: path.into(),
        host: "mcp.example.com".into(),
        dpop: None,
    };
    let weak = world.token(|c| c["acr"] = json!("urn:example:pwd"));
    let report = explain(&checker, &ask("/mcp/admin", weak)).await.report;
    for expected in [
        "step-up (RFC 9470): acr one of [\"urn:example:mfa\"], auth_time within 300 s",
        &format!("resource: {MCP} (path_prefix /mcp, metadata at {METADATA_URL})"),
        "acr: \"urn:example:pwd\"",
        "DENY 401 reason acr_insufficient",
        "insufficient_user_authentication",
    ] {
        assert!(report.contains(expected), "{expected:?} not in:\n{report}");
    }
    let report = explain(
        &checker,
        &ask("/.well-known/oauth-protected-resource/mcp", String::new()),
    )
    .await
    .report;
    assert!(report.contains("decision: METADATA 200"), "{report}");
}
