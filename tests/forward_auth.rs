//! The HTTP authorization API in-process, over real HTTP on 127.0.0.1: the same decisions as
//! the gRPC API (one use case, one set of metrics), who may call it, HTTP/1.1 and h2c, TLS with
//! a client CA, and the certificate header encodings each proxy uses.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;

use common::envoy::Pki;
use common::{Certbound, ClientCert, Idp, Signer, claims, config_for};
use tokio::sync::oneshot;

/// certbound with the HTTP API on its own port, beside the gRPC one.
struct Api {
    certbound: Certbound,
    addr: SocketAddr,
    _stop: oneshot::Sender<()>,
}

impl Api {
    async fn start(idp: &Idp, forward_auth: &str, extra: &str) -> Self {
        let yaml = config_for(
            idp,
            &format!("forward_auth: {{listen: 127.0.0.1:0, {forward_auth}}}\n{extra}"),
        );
        let certbound = Certbound::start(&yaml).await;
        let settings = certbound::config::Settings::from_yaml(&yaml, Vec::new(), None).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let app = Arc::clone(&certbound.app);
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
        Self {
            certbound,
            addr,
            _stop: stop,
        }
    }

    async fn ask(&self, client: &reqwest::Client, headers: &[(&str, String)]) -> Answer {
        let mut request = client.get(format!("http://{}/auth", self.addr));
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        Answer::of(request.send().await.unwrap()).await
    }
}

#[derive(Debug)]
struct Answer {
    status: u16,
    version: reqwest::Version,
    headers: reqwest::header::HeaderMap,
    body: String,
}

impl Answer {
    async fn of(response: reqwest::Response) -> Self {
        Self {
            status: response.status().as_u16(),
            version: response.version(),
            headers: response.headers().clone(),
            body: response.text().await.unwrap(),
        }
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }
}

fn original(path: &str) -> Vec<(&'static str, String)> {
    vec![
        ("x-forwarded-method", "GET".into()),
        ("x-forwarded-uri", path.into()),
        ("x-forwarded-host", "api.test".into()),
        ("x-forwarded-proto", "https".into()),
    ]
}

const TRAEFIK_HEADER: &str = "certificate: {sources: [header], header: {name: x-forwarded-tls-client-cert, encoding: der_base64}}\nupstream: {claim_headers: {sub: x-certbound-subject}}\n";

#[tokio::test]
async fn a_bound_token_is_allowed_with_the_claim_headers_and_counted_like_any_check() {
    let signer = Signer::es256("k1");
    let idp = Idp::start(&[&signer]).await;
    let api = Api::start(&idp, "", TRAEFIK_HEADER).await;
    let cert = ClientCert::self_signed("client");
    let token = signer.sign(&claims(&idp.issuer, Some(&cert.x5t())));
    let mut headers = original("/items?page=1");
    headers.push(("authorization", format!("Bearer {token}")));
    headers.push(("x-forwarded-tls-client-cert", cert.der_base64()));
    let client = reqwest::Client::new();
    let allowed = api.ask(&client, &headers).await;
    assert_eq!(allowed.status, 200, "{allowed:?}");
    assert_eq!(allowed.header("x-certbound-subject"), Some("alice"));
    assert_eq!(allowed.body, "");
    // A chain (Traefik sends the client's certificate first) is the same client.
    let other = ClientCert::self_signed("intermediate");
    headers.pop();
    headers.push((
        "x-forwarded-tls-client-cert",
        format!("{},{}", cert.der_base64(), other.der_base64()),
    ));
    assert_eq!(api.ask(&client, &headers).await.status, 200);
    // Another certificate: certbound's 401, as the gRPC API would answer it.
    headers.pop();
    headers.push(("x-forwarded-tls-client-cert", other.der_base64()));
    let denied = api.ask(&client, &headers).await;
    assert_eq!(denied.status, 401);
    assert_eq!(denied.body, r#"{"message":"unauthorized"}"#);
    assert_eq!(denied.header("content-type"), Some("application/json"));
    assert!(
        denied
            .header("www-authenticate")
            .unwrap()
            .starts_with(r#"Bearer error="invalid_token""#)
    );
    // An empty header (Caddy's, without a certificate) is no certificate.
    headers.pop();
    headers.push(("x-forwarded-tls-client-cert", String::new()));
    assert_eq!(api.ask(&client, &headers).await.status, 401);
    let metric = |line: &str| api.certbound.metric(line);
    assert_eq!(
        metric(r#"certbound_checks_total{decision="allow",reason="ok"}"#),
        2
    );
    assert_eq!(
        metric(r#"certbound_checks_total{decision="deny",reason="binding_mismatch"}"#),
        1
    );
    assert_eq!(
        metric(r#"certbound_checks_total{decision="deny",reason="cert_missing"}"#),
        1
    );
}

#[tokio::test]
async fn only_trusted_peers_may_ask_and_a_check_must_name_its_request() {
    let signer = Signer::es256("k1");
    let idp = Idp::start(&[&signer]).await;
    let client = reqwest::Client::new();
    // Loopback is not in the list: this test's own requests come from an untrusted peer.
    let api = Api::start(&idp, r#"trusted_peers: ["10.0.0.0/8"]"#, TRAEFIK_HEADER).await;
    let answer = api.ask(&client, &original("/items")).await;
    assert_eq!(answer.status, 403, "{answer:?}");
    assert_eq!(answer.body, r#"{"message":"forbidden"}"#);
    assert_eq!(
        api.certbound
            .metric(r#"certbound_checks_total{decision="deny",reason="proxy_untrusted"}"#),
        1
    );
    // A trusted peer that does not say which request it asks about: refused, never a check of
    // the API's own path.
    let api = Api::start(&idp, "", TRAEFIK_HEADER).await;
    let answer = api
        .ask(&client, &[("x-forwarded-method", "GET".into())])
        .await;
    assert_eq!(answer.status, 401);
    assert_eq!(
        api.certbound
            .metric(r#"certbound_checks_total{decision="deny",reason="request_invalid"}"#),
        1
    );
}

#[tokio::test]
async fn h2c_works_and_path_rules_and_unsafe_paths_apply_to_the_original_path() {
    let signer = Signer::es256("k1");
    let idp = Idp::start(&[&signer]).await;
    let policy = "policy:\n  rules:\n    - path_prefix: /public/\n      allow_anonymous: true\n";
    let api = Api::start(&idp, "", &format!("{TRAEFIK_HEADER}{policy}")).await;
    let h2c = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let public = api.ask(&h2c, &original("/public/x")).await;
    assert_eq!(public.version, reqwest::Version::HTTP_2);
    assert_eq!(public.status, 200);
    // The API's own path (/auth) is not what the rules see, nor a spelling that climbs out: a
    // path that is not canonical is refused, whatever the upstream would make of it.
    let climbing = api.ask(&h2c, &original("/public/..%2fadmin")).await;
    assert_eq!(climbing.status, 400, "{climbing:?}");
    let admin = api.ask(&h2c, &original("/public/../admin")).await;
    assert_eq!(admin.status, 400, "{admin:?}");
    let canonical = api.ask(&h2c, &original("/admin")).await;
    assert_eq!(canonical.status, 401, "{canonical:?}");
}

#[tokio::test]
async fn envoy_http_service_mode_reads_the_original_path_under_the_prefix() {
    let signer = Signer::es256("k1");
    let idp = Idp::start(&[&signer]).await;
    let policy = "policy:\n  rules:\n    - path_prefix: /public/\n      allow_anonymous: true\n";
    let api = Api::start(&idp, "path_prefix: /certbound", policy).await;
    let client = reqwest::Client::new();
    let ask = |path: &'static str| {
        let client = client.clone();
        let url = format!("http://{}{path}", api.addr);
        async move { client.get(url).send().await.unwrap().status().as_u16() }
    };
    assert_eq!(ask("/certbound/public/x").await, 200);
    assert_eq!(ask("/certbound/items").await, 401);
    // Outside the prefix the check names no request.
    assert_eq!(ask("/public/x").await, 401);
}

#[tokio::test]
async fn over_tls_a_client_ca_decides_who_may_connect() {
    let signer = Signer::es256("k1");
    let idp = Idp::start(&[&signer]).await;
    let pki = Pki::new("forward-auth-tls");
    let proxy = pki.client("proxy");
    let (cert, key) = (pki.path("server.crt"), pki.path("server.key"));
    let tls = format!(
        "tls: {{cert_file: {}, key_file: {}, client_ca_file: {}}}",
        cert.display(),
        key.display(),
        pki.path("ca.crt").display()
    );
    let policy = "policy:\n  rules:\n    - path_prefix: /public/\n      allow_anonymous: true\n";
    let api = Api::start(&idp, &tls, policy).await;
    let ca = reqwest::Certificate::from_pem(pki.ca_pem.as_bytes()).unwrap();
    let with = |identity: Option<&ClientCert>| {
        let mut builder = reqwest::Client::builder().tls_certs_only([ca.clone()]);
        if let Some(cert) = identity {
            let pem = format!("{}{}", cert.pem, cert.key_pem);
            builder = builder.identity(reqwest::Identity::from_pem(pem.as_bytes()).unwrap());
        }
        builder.build().unwrap()
    };
    let url = format!("https://localhost:{}/auth", api.addr.port());
    let send = |client: reqwest::Client| {
        let url = url.clone();
        async move {
            let mut request = client.get(url);
            for (name, value) in original("/public/x") {
                request = request.header(name, value);
            }
            request.send().await.map(|r| r.status().as_u16())
        }
    };
    // reqwest resolves localhost to 127.0.0.1 here.
    assert_eq!(send(with(Some(&proxy))).await.unwrap(), 200);
    assert!(
        send(with(None)).await.is_err(),
        "a peer without a certificate from the client CA must not get in"
    );
    let stranger = ClientCert::self_signed("stranger");
    assert!(send(with(Some(&stranger))).await.is_err());
}

#[test]
fn a_header_source_needs_a_usable_header_and_the_listener_has_an_environment_override() {
    let base = "issuers:\n  - issuer: https://idp.test\n    audiences: [a]\n    jwks_uri: https://idp.test/jwks\n";
    let error = certbound::config::Settings::from_yaml(
        &format!("{base}certificate: {{sources: [header]}}\n"),
        Vec::new(),
        None,
    )
    .unwrap_err();
    assert_eq!(error.key, "certificate.header");
    let error = certbound::config::Settings::from_yaml(
        &format!("{base}certificate: {{sources: [header], header: {{name: authorization, encoding: pem_url}}}}\n"),
        Vec::new(),
        None,
    )
    .unwrap_err();
    assert_eq!(error.key, "certificate.header.name");
    let env = [(
        "CERTBOUND_FORWARD_AUTH__LISTEN".to_owned(),
        "127.0.0.1:9393".to_owned(),
    )];
    let settings = certbound::config::Settings::from_yaml(base, env, None).unwrap();
    assert_eq!(
        settings.forward_auth.unwrap().listen.to_string(),
        "127.0.0.1:9393"
    );
}
