//! Protected resources through a real Envoy 1.40, both shapes (the dynamic module, and the
//! ext_authz service binary): the RFC 9728 metadata answered without a token and never reaching
//! the upstream (no extra Envoy route), an unknown resource 404, `resource_metadata` in the
//! 401s (parsed with the independent RFC 9110 parser), RFC 8707 audiences and RFC 9470 step-up.
//!
//! Ignored by a plain `cargo test` (they need Envoy and the built module); `scripts/test.sh`
//! runs them with `--include-ignored`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::challenge;
use common::envoy::{Http, https_client};
use common::stack::Stack;
use serde_json::{Value, json};

const MCP: &str = "https://mcp.example.com/mcp";
const METADATA_URL: &str = "https://mcp.example.com/.well-known/oauth-protected-resource/mcp";
const METADATA_PATH: &str = "/.well-known/oauth-protected-resource/mcp";

const RESOURCES: &str = "resources:\n  - id: https://mcp.example.com/mcp\n    resource_name: Example MCP\npolicy:\n  reason_header: true\n  rules:\n    - path_prefix: /mcp/admin\n      acr_values: [urn:example:mfa]\n      max_age_seconds: 300\n";

struct Got {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: String,
}

impl Got {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    fn reason(&self) -> Option<&str> {
        self.header("x-certbound-reason")
    }

    fn challenge(&self) -> challenge::Challenge {
        let value = self.header("www-authenticate").expect("a challenge");
        challenge::single(value, "bearer")
    }
}

async fn send(
    stack: &Stack,
    client: &reqwest::Client,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> Got {
    let url = format!("https://127.0.0.1:{}{path}", stack.port);
    let mut request = client.request(method.parse().unwrap(), url);
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    if let Some(body) = body {
        request = request.body(body.to_owned());
    }
    let response = request.send().await.unwrap();
    Got {
        status: response.status().as_u16(),
        headers: response.headers().clone(),
        body: response.text().await.unwrap(),
    }
}

async fn scenarios(stack: Stack) {
    let cert = stack.pki.client("client-a");
    stack.assert_serving(&cert).await;
    let token = |edit: &dyn Fn(&mut Value)| {
        let mut claims = stack.claims(&cert);
        claims["aud"] = json!([stack.audience, MCP]);
        edit(&mut claims);
        stack.signer.sign(&claims)
    };
    let valid = token(&|_| {});
    for http in [Http::One, Http::Two] {
        let client = https_client(&stack.pki, Some(&cert), http);
        let name = format!("{} {http:?}", stack.name);
        // The metadata: without a token, with one, with a body: the document, from certbound.
        for (method, token, body) in [
            ("GET", None, None),
            ("GET", Some(valid.as_str()), None),
            ("GET", Some("garbage"), Some("a body")),
        ] {
            let got = send(&stack, &client, method, METADATA_PATH, token, body).await;
            assert_eq!(got.status, 200, "{name}: {}", got.body);
            assert_eq!(
                got.header("content-type"),
                Some("application/json"),
                "{name}"
            );
            assert_eq!(
                got.header("cache-control"),
                Some("public, max-age=300"),
                "{name}"
            );
            assert_eq!(
                got.header("x-upstream"),
                None,
                "{name}: reached the upstream"
            );
            let document: Value = serde_json::from_str(&got.body).unwrap();
            assert_eq!(document["resource"], MCP, "{name}");
            assert_eq!(
                document["authorization_servers"],
                json!([stack.issuer]),
                "{name}"
            );
            assert_eq!(document["tls_client_certificate_bound_access_tokens"], true);
            assert_eq!(document["bearer_methods_supported"], json!(["header"]));
            assert_eq!(document["resource_name"], "Example MCP");
        }
        let post = send(&stack, &client, "POST", METADATA_PATH, None, Some("x")).await;
        assert_eq!(
            (post.status, post.header("allow")),
            (405, Some("GET, HEAD, OPTIONS")),
            "{name}"
        );
        assert_eq!(post.reason(), Some("method_not_allowed"), "{name}");
        // A browser-based client's CORS preflight (the MCP SDK's discovery sends
        // MCP-Protocol-Version): 204 with what it may do, from certbound.
        let preflight = client
            .request(
                reqwest::Method::OPTIONS,
                format!("https://127.0.0.1:{}{METADATA_PATH}", stack.port),
            )
            .header("origin", "https://app.example.org")
            .header("access-control-request-method", "GET")
            .header("access-control-request-headers", "mcp-protocol-version")
            .send()
            .await
            .unwrap();
        assert_eq!(preflight.status(), 204, "{name}");
        let cors = |header: &str| {
            preflight
                .headers()
                .get(header)
                .map(|v| v.to_str().unwrap().to_owned())
        };
        assert_eq!(cors("access-control-allow-origin").as_deref(), Some("*"));
        assert_eq!(
            cors("access-control-allow-methods").as_deref(),
            Some("GET, HEAD, OPTIONS"),
            "{name}"
        );
        assert_eq!(cors("access-control-allow-headers").as_deref(), Some("*"));
        assert_eq!(cors("x-upstream"), None, "{name}: reached the upstream");
        let unknown = send(
            &stack,
            &client,
            "GET",
            "/.well-known/oauth-protected-resource/other",
            Some(&valid),
            None,
        )
        .await;
        assert_eq!(unknown.status, 404, "{name}");
        assert_eq!(unknown.reason(), Some("resource_unknown"), "{name}");
        assert_eq!(unknown.header("x-upstream"), None, "{name}");
        // Another well-known path is decided like any path.
        let other = send(&stack, &client, "GET", "/.well-known/other", None, None).await;
        assert_eq!(other.status, 401, "{name}");
        assert_eq!(other.challenge().params, [], "{name}: outside the resource");

        // 401s under the resource point at the metadata.
        let missing = send(&stack, &client, "GET", "/mcp", None, None).await;
        assert_eq!(missing.status, 401, "{name}");
        assert_eq!(
            missing.challenge().param("resource_metadata"),
            Some(METADATA_URL),
            "{name}"
        );
        // RFC 8707: a token for another resource.
        let elsewhere = stack.signer.sign(&stack.claims(&cert));
        let refused = send(&stack, &client, "GET", "/mcp/tools", Some(&elsewhere), None).await;
        assert_eq!(refused.status, 401, "{name}");
        assert_eq!(
            refused.reason(),
            Some("resource_audience_mismatch"),
            "{name}"
        );
        let parsed = refused.challenge();
        assert_eq!(parsed.param("error"), Some("invalid_token"), "{name}");
        assert_eq!(
            parsed.param("resource_metadata"),
            Some(METADATA_URL),
            "{name}"
        );
        let allowed = send(&stack, &client, "GET", "/mcp/tools", Some(&valid), None).await;
        assert_eq!(
            (allowed.status, allowed.header("x-upstream")),
            (200, Some("seen")),
            "{name}"
        );
        // RFC 9470 step-up: each way a token falls short.
        let now = common::now();
        let short = [
            ("acr_insufficient", valid.clone()),
            (
                "auth_time_missing",
                token(&|c| c["acr"] = json!("urn:example:mfa")),
            ),
            (
                "auth_time_too_old",
                token(&|c| {
                    c["acr"] = json!("urn:example:mfa");
                    c["auth_time"] = json!(now - 3600);
                }),
            ),
        ];
        for (reason, weak) in &short {
            let weak = send(&stack, &client, "GET", "/mcp/admin", Some(weak), None).await;
            assert_eq!((weak.status, weak.reason()), (401, Some(*reason)), "{name}");
            let parsed = weak.challenge();
            assert_eq!(
                parsed.param("error"),
                Some("insufficient_user_authentication"),
                "{name}"
            );
            assert_eq!(parsed.param("acr_values"), Some("urn:example:mfa"));
            assert_eq!(parsed.param("max_age"), Some("300"));
            assert_eq!(parsed.param("resource_metadata"), Some(METADATA_URL));
        }
        let strong = token(&|c| {
            c["acr"] = json!("urn:example:mfa");
            c["auth_time"] = json!(common::now() - 5);
        });
        let stepped = send(&stack, &client, "GET", "/mcp/admin", Some(&strong), None).await;
        assert_eq!(stepped.status, 200, "{name}: {}", stepped.body);
    }
    let reached: Vec<_> = stack
        .upstream
        .all()
        .into_iter()
        .filter(|r| r.target.starts_with("/.well-known"))
        .map(|r| r.target)
        .collect();
    assert!(
        reached.is_empty(),
        "{}: reached the upstream: {reached:?}",
        stack.name
    );
}

#[tokio::test]
#[ignore = "needs Envoy 1.40 and the built module: run scripts/test.sh"]
async fn the_module_serves_metadata_and_points_every_401_at_it() {
    scenarios(Stack::module("resources-module", RESOURCES, |c| c).await).await;
}

#[tokio::test]
#[ignore = "needs Envoy 1.40: run scripts/test.sh"]
async fn the_service_serves_metadata_through_the_check_and_points_every_401_at_it() {
    scenarios(Stack::service("resources-service", RESOURCES, |c| c).await).await;
}

/// A resource that requires DPoP-bound tokens refuses a certificate-bound Bearer token
/// (`dpop_required`) with a DPoP challenge pointing at the metadata, in both shapes.
async fn dpop_required(stack: Stack) {
    let cert = stack.pki.client("client-a");
    stack.assert_serving(&cert).await;
    let mut claims = stack.claims(&cert);
    claims["aud"] = json!([stack.audience, MCP]);
    let bearer = stack.signer.sign(&claims);
    let client = https_client(&stack.pki, Some(&cert), Http::One);
    let got = send(&stack, &client, "GET", "/mcp", Some(&bearer), None).await;
    assert_eq!(
        (got.status, got.reason()),
        (401, Some("dpop_required")),
        "{}",
        stack.name
    );
    let parsed = challenge::single(got.header("www-authenticate").unwrap(), "dpop");
    assert_eq!(parsed.param("error"), Some("invalid_token"));
    assert_eq!(parsed.param("resource_metadata"), Some(METADATA_URL));
    let metadata = send(&stack, &client, "GET", METADATA_PATH, None, None).await;
    let document: Value = serde_json::from_str(&metadata.body).unwrap();
    assert_eq!(document["dpop_bound_access_tokens_required"], true);
    assert!(stack.upstream.received("/mcp").is_empty(), "{}", stack.name);
}

const DPOP_ONLY: &str = "dpop: {enabled: true}\nresources:\n  - id: https://mcp.example.com/mcp\n    dpop_bound_access_tokens_required: true\npolicy: {reason_header: true}\n";

#[tokio::test]
#[ignore = "needs Envoy 1.40 and the built module: run scripts/test.sh"]
async fn the_module_refuses_bearer_tokens_where_dpop_is_required() {
    dpop_required(Stack::module("resources-dpop-module", DPOP_ONLY, |c| c).await).await;
}

#[tokio::test]
#[ignore = "needs Envoy 1.40: run scripts/test.sh"]
async fn the_service_refuses_bearer_tokens_where_dpop_is_required() {
    dpop_required(Stack::service("resources-dpop-service", DPOP_ONLY, |c| c).await).await;
}
