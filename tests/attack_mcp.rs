//! Requests that reached the MCP server wrongly through what `deploy/mcp` shipped (attack review
//! of the MCP example at fa1c664). Each test sends the request through the shipped files (only
//! ports, addresses and file paths swapped, as tests/mcp_e2e.rs does) to a recording upstream
//! standing in for the MCP server, and fails if the upstream gets a request certbound should
//! have refused.
//!
//! 1. DPoP `htu` host not pinned behind Envoy: `certbound.yaml`, `certbound-dpop.yaml` and the
//!    module's `filter_config` in `envoy-module.yaml` set no `dpop.public_base_url`, and the Envoy
//!    configs route every `:authority` (`domains: ["*"]`), so certbound compared a proof's `htu`
//!    with the scheme and host the client itself wrote. A DPoP-bound token with a proof made for
//!    `https://evil.example/mcp` (the token and proof a client sent to another origin: a
//!    malicious or compromised server, a logging intermediary) was accepted at the MCP server when
//!    the replaying attacker sent `Host: evil.example` (HTTP/1.1) or `:authority: evil.example`
//!    (h2). RFC 9449 §4.3 step 9: `htu` must match the URI of the request *at this server*. Every
//!    setup now pins the origin (`public_base_url`), as the NGINX one did.
//!
//! Ignored by a plain `cargo test` (they need Envoy, and the module test the built module), like
//! tests/mcp_e2e.rs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::dpop::DpopKey;
use common::envoy::{
    EnvoyPorts, Http, Pki, Process, RecordingUpstream, free_port, module_dir, start_certbound,
    start_envoy,
};
use common::proxies::{point, repo};
use common::{Idp, Signer, now};
use serde_json::json;

const EVIL: &str = "evil.example";

fn deploy(name: &str) -> String {
    std::fs::read_to_string(repo("deploy/mcp").join(name)).unwrap()
}

/// The shipped MCP example in front of a recording upstream: Envoy (`envoy-service.yaml` with
/// `certbound.yaml`, or `envoy-module.yaml`), an IdP of this test in place of the example's
/// authorization server.
struct Stack {
    port: u16,
    signer: Signer,
    issuer: String,
    upstream: RecordingUpstream,
    _envoy: Process,
    _certbound: Option<Process>,
    _idp: Idp,
    _pki: Pki,
}

impl Stack {
    /// The resource identifier, `https://localhost:PORT/mcp`.
    fn resource(&self) -> String {
        format!("https://localhost:{}/mcp", self.port)
    }

    /// Envoy and the ext_authz service on the shipped certbound.yaml.
    async fn service() -> Self {
        let pki = Pki::new("attack-mcp-service");
        let dir = pki.dir.path().to_owned();
        let signer = Signer::es256("mcp-k1");
        let idp = Idp::start(&[&signer]).await;
        let upstream = RecordingUpstream::start().await;
        let (port, admin) = (free_port(), free_port());
        let yaml = point(
            &deploy("certbound.yaml"),
            &origin_swaps(&idp, &pki, port),
            &[],
        );
        let (certbound, addr) = start_certbound(&yaml, &dir).await;
        let config = point(
            &deploy("envoy-service.yaml"),
            &envoy_swaps(&pki, port, admin, upstream.addr, Some(addr.port()), None),
            &[],
        );
        let ports = EnvoyPorts {
            listener: port,
            admin,
            ..Default::default()
        };
        let envoy = start_envoy(&config, &ports, &dir).await;
        Self {
            port,
            issuer: idp.issuer.clone(),
            signer,
            upstream,
            _envoy: envoy,
            _certbound: Some(certbound),
            _idp: idp,
            _pki: pki,
        }
    }

    /// Envoy with the dynamic module (`envoy-module.yaml`), keys fetched through its `idp`
    /// cluster over TLS.
    async fn module() -> Self {
        let pki = Pki::new("attack-mcp-module");
        let dir = pki.dir.path().to_owned();
        let signer = Signer::es256("mcp-k1");
        let idp = Idp::start_tls(&[&signer], &pki, "localhost").await;
        let upstream = RecordingUpstream::start().await;
        let (port, admin) = (free_port(), free_port());
        assert!(module_dir().join("libcertbound_envoy.so").exists());
        let mut swaps = envoy_swaps(&pki, port, admin, upstream.addr, None, Some(idp.addr));
        swaps.extend(origin_swaps(&idp, &pki, port));
        let config = point(&deploy("envoy-module.yaml"), &swaps, &[]);
        let ports = EnvoyPorts {
            listener: port,
            admin,
            ..Default::default()
        };
        let envoy = start_envoy(&config, &ports, &dir).await;
        Self {
            port,
            issuer: idp.issuer.clone(),
            signer,
            upstream,
            _envoy: envoy,
            _certbound: None,
            _idp: idp,
            _pki: pki,
        }
    }

    /// A token as the example's authorization server issues it to `mcp-dpop`: RFC 9068, for the
    /// resource, bound to `key`.
    fn token(&self, key: &DpopKey) -> String {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.kid = Some(self.signer.kid.clone());
        header.typ = Some("at+jwt".into());
        self.signer.sign_with(
            header,
            &json!({
                "iss": self.issuer, "sub": "mcp-dpop", "client_id": "mcp-dpop",
                "aud": self.resource(), "scope": "mcp:tools",
                "iat": now(), "exp": now() + 300, "jti": format!("t-{}", now()),
                "cnf": {"jkt": key.jkt()},
            }),
        )
    }

    /// `tools/list` to `/mcp`, reaching Envoy as `https://{authority}:{port}/mcp`, with the
    /// token under the DPoP scheme and `proof`: the status.
    async fn call(&self, authority: &str, http: Http, token: &str, proof: &str) -> u16 {
        let addr: SocketAddr = format!("127.0.0.1:{}", self.port).parse().unwrap();
        let builder = reqwest::Client::builder()
            .resolve(authority, addr)
            // The demo server certificate names localhost; the attacker does not care.
            .danger_accept_invalid_certs(true)
            .timeout(Duration::from_secs(10));
        let client = match http {
            Http::One => builder.http1_only(),
            Http::Two => builder.http2_prior_knowledge(),
        }
        .build()
        .unwrap();
        let response = client
            .post(format!("https://{authority}:{}/mcp", self.port))
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .header("authorization", format!("DPoP {token}"))
            .header("dpop", proof)
            .body(r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#)
            .send()
            .await
            .unwrap();
        response.status().as_u16()
    }

    /// Waits until a good request passes (the module fetches its keys after Envoy is up).
    async fn wait_allowed(&self, key: &DpopKey) {
        let token = self.token(key);
        let htu = self.resource();
        let mut status = 0;
        for _ in 0..200 {
            status = self
                .call(
                    "localhost",
                    Http::One,
                    &token,
                    &key.proof("POST", &htu, &token),
                )
                .await;
            if status == 200 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("a good DPoP request was never allowed (last status {status})");
    }
}

/// The ports and file paths the shipped Envoy configs name, for this test's.
/// The authorization server's URLs, the public origin (`dpop.public_base_url`, the resource id)
/// and the CA certbound trusts, as the test runs them.
fn origin_swaps(idp: &Idp, pki: &Pki, port: u16) -> Vec<(&'static str, String)> {
    vec![
        ("https://localhost:9443/jwks", idp.jwks_uri()),
        ("https://localhost:9443", idp.issuer.clone()),
        (
            "https://localhost:8443",
            format!("https://localhost:{port}"),
        ),
        (
            "deploy/local/demo-ca.pem",
            pki.path("ca.crt").display().to_string(),
        ),
    ]
}

fn envoy_swaps(
    pki: &Pki,
    port: u16,
    admin: u16,
    upstream: SocketAddr,
    certbound: Option<u16>,
    idp: Option<SocketAddr>,
) -> Vec<(&'static str, String)> {
    let mut swaps = vec![
        ("port_value: 8443", format!("port_value: {port}")),
        ("port_value: 9901", format!("port_value: {admin}")),
        (
            "port_value: 8080",
            format!("port_value: {}", upstream.port()),
        ),
        (
            "deploy/local/demo-server.pem",
            pki.path("server.crt").display().to_string(),
        ),
        (
            "deploy/local/demo-server.key",
            pki.path("server.key").display().to_string(),
        ),
    ];
    if let Some(certbound) = certbound {
        swaps.push(("port_value: 50051", format!("port_value: {certbound}")));
    }
    if let Some(idp) = idp {
        swaps.push(("port_value: 9443", format!("port_value: {}", idp.port())));
    }
    swaps
}

/// A proof made for `https://evil.example:PORT/mcp`, replayed here with that authority, over
/// HTTP/1.1 and h2: each must be refused before the MCP server sees it.
async fn a_proof_for_another_host_is_refused(stack: &Stack) {
    let key = DpopKey::es256();
    stack.wait_allowed(&key).await;
    let seen_before = stack.upstream.received("/mcp").len();
    let token = stack.token(&key);
    let htu = format!("https://{EVIL}:{}/mcp", stack.port);
    let mut passed = Vec::new();
    for http in [Http::One, Http::Two] {
        let proof = key.proof("POST", &htu, &token);
        let status = stack.call(EVIL, http, &token, &proof).await;
        if status != 401 {
            passed.push(format!("{http:?}: {status}"));
        }
    }
    let reached = stack.upstream.received("/mcp").len() - seen_before;
    assert!(
        passed.is_empty() && reached == 0,
        "a DPoP proof made for {htu} was accepted at the MCP server ({passed:?}; {reached} \
         request(s) reached it): is dpop.public_base_url still set?"
    );
}

#[tokio::test]
#[ignore = "needs Envoy 1.40: run scripts/test.sh"]
async fn a_dpop_proof_for_another_host_is_refused_behind_envoy_and_the_service() {
    let stack = Stack::service().await;
    a_proof_for_another_host_is_refused(&stack).await;
}

#[tokio::test]
#[ignore = "needs Envoy 1.40 and the built module: run scripts/test.sh"]
async fn a_dpop_proof_for_another_host_is_refused_behind_envoy_and_the_module() {
    let stack = Stack::module().await;
    a_proof_for_another_host_is_refused(&stack).await;
}
