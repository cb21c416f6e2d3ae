//! Shared fixtures: keys and certificates generated at test time, an identity provider served
//! over real HTTP on 127.0.0.1, and certbound started in-process on port 0.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tonic::transport::Channel;

use certbound::grpc::pb::envoy::config::core::v3::{HeaderMap as ProtoHeaderMap, HeaderValue};
use certbound::grpc::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use certbound::grpc::pb::envoy::service::auth::v3::check_response::HttpResponse;
use certbound::grpc::pb::envoy::service::auth::v3::{
    AttributeContext, CheckRequest, CheckResponse, attribute_context,
};

pub mod challenge;
pub mod dpop;
pub mod envoy;
pub mod external;
pub mod hostile;
pub mod paths;
pub mod proxies;
pub mod raw;
pub mod stack;
pub mod topologies;
pub mod upstream_paths;

pub const AUDIENCE: &str = "https://api.test";

pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A signing key of the test IdP, with its public JWK.
#[derive(Clone)]
pub struct Signer {
    pub kid: String,
    pub alg: Algorithm,
    key: EncodingKey,
    pub jwk: Value,
    /// Signs with an `alg` name jsonwebtoken does not know (ES512, Ed25519), through aws-lc-rs.
    raw: Option<(&'static str, RawSign)>,
}

/// Signs a JWS signing input with a key jsonwebtoken cannot use.
type RawSign = Arc<dyn Fn(&[u8]) -> Vec<u8> + Send + Sync>;

impl Signer {
    pub fn es256(kid: &str) -> Self {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let raw = pair.public_key_raw();
        Self {
            kid: kid.into(),
            alg: Algorithm::ES256,
            key: EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).unwrap(),
            jwk: json!({"kty": "EC", "crv": "P-256", "kid": kid, "use": "sig", "alg": "ES256",
                        "x": URL_SAFE_NO_PAD.encode(&raw[1..33]),
                        "y": URL_SAFE_NO_PAD.encode(&raw[33..65])}),
            raw: None,
        }
    }

    /// ES512 (P-521), signed through aws-lc-rs.
    pub fn es512(kid: &str) -> Self {
        use aws_lc_rs::signature::{ECDSA_P521_SHA512_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
        let pair = EcdsaKeyPair::generate(&ECDSA_P521_SHA512_FIXED_SIGNING).unwrap();
        let point = pair.public_key().as_ref().to_vec();
        let rng = aws_lc_rs::rand::SystemRandom::new();
        Self {
            jwk: json!({"kty": "EC", "crv": "P-521", "kid": kid, "use": "sig", "alg": "ES512",
                        "x": URL_SAFE_NO_PAD.encode(&point[1..67]),
                        "y": URL_SAFE_NO_PAD.encode(&point[67..])}),
            raw: Some((
                "ES512",
                Arc::new(move |m: &[u8]| pair.sign(&rng, m).unwrap().as_ref().to_vec()),
            )),
            ..Self::es256(kid)
        }
    }

    /// EdDSA over Ed25519 under RFC 9864's fully specified name, `alg: Ed25519`.
    pub fn ed25519_fully_specified(kid: &str) -> Self {
        use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
        let pair = Ed25519KeyPair::generate().unwrap();
        Self {
            jwk: json!({"kty": "OKP", "crv": "Ed25519", "kid": kid, "alg": "Ed25519",
                        "x": URL_SAFE_NO_PAD.encode(pair.public_key().as_ref())}),
            raw: Some((
                "Ed25519",
                Arc::new(move |m: &[u8]| pair.sign(m).as_ref().to_vec()),
            )),
            ..Self::es256(kid)
        }
    }

    pub fn ed25519(kid: &str) -> Self {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        Self {
            kid: kid.into(),
            alg: Algorithm::EdDSA,
            key: EncodingKey::from_ed_pem(pair.serialize_pem().as_bytes()).unwrap(),
            jwk: json!({"kty": "OKP", "crv": "Ed25519", "kid": kid,
                        "x": URL_SAFE_NO_PAD.encode(pair.public_key_raw())}),
            raw: None,
        }
    }

    pub fn rs256(kid: &str) -> Self {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap();
        use rcgen::PublicKeyData;
        use x509_parser::prelude::FromDer;
        let spki_der = pair.subject_public_key_info();
        let (_, spki) = x509_parser::x509::SubjectPublicKeyInfo::from_der(&spki_der).unwrap();
        let x509_parser::public_key::PublicKey::RSA(rsa) = spki.parsed().unwrap() else {
            panic!("not an RSA key");
        };
        let strip = |b: &[u8]| {
            b.iter()
                .skip_while(|&&x| x == 0)
                .copied()
                .collect::<Vec<_>>()
        };
        Self {
            kid: kid.into(),
            alg: Algorithm::RS256,
            key: EncodingKey::from_rsa_pem(pair.serialize_pem().as_bytes()).unwrap(),
            jwk: json!({"kty": "RSA", "kid": kid,
                        "n": URL_SAFE_NO_PAD.encode(strip(rsa.modulus)),
                        "e": URL_SAFE_NO_PAD.encode(strip(rsa.exponent))}),
            raw: None,
        }
    }

    /// The private key, for tokens built by hand.
    pub fn encoding_key(&self) -> EncodingKey {
        self.key.clone()
    }

    /// Signs claims with this key and its `kid`.
    pub fn sign(&self, claims: &Value) -> String {
        if let Some((alg, sign)) = &self.raw {
            let input = format!(
                "{}.{}",
                URL_SAFE_NO_PAD.encode(json!({"alg": alg, "kid": self.kid}).to_string()),
                URL_SAFE_NO_PAD.encode(claims.to_string())
            );
            return format!("{input}.{}", URL_SAFE_NO_PAD.encode(sign(input.as_bytes())));
        }
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.clone());
        self.sign_with(header, claims)
    }

    pub fn sign_with(&self, header: Header, claims: &Value) -> String {
        jsonwebtoken::encode(&header, claims, &self.key).unwrap()
    }
}

/// A client certificate generated at test time.
#[derive(Clone)]
pub struct ClientCert {
    pub pem: String,
    pub der: Vec<u8>,
    pub key_pem: String,
}

impl ClientCert {
    pub fn self_signed(name: &str) -> Self {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec![format!("{name}.test")]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let cert = params.self_signed(&key).unwrap();
        Self {
            pem: cert.pem(),
            der: cert.der().to_vec(),
            key_pem: key.serialize_pem(),
        }
    }

    /// The RFC 8705 thumbprint.
    pub fn x5t(&self) -> String {
        certbound_core::Thumbprint::of_der(&self.der).to_base64url()
    }

    /// The PEM as Envoy URL-encodes it in `attributes.source.certificate`.
    /// Base64 of the DER, as Traefik, Caddy and HAProxy put it in a header.
    pub fn der_base64(&self) -> String {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(&self.der)
    }

    pub fn url_encoded(&self) -> String {
        url_encode_pem(&self.pem)
    }
}

pub fn url_encode_pem(pem: &str) -> String {
    certbound_core::certificate::envoy_url_encode(pem)
}

/// Claims of a valid access token from `issuer`, bound to `x5t` when given.
pub fn claims(issuer: &str, x5t: Option<&str>) -> Value {
    let now = now();
    let mut claims = json!({
        "iss": issuer, "aud": AUDIENCE, "sub": "alice", "client_id": "client-a",
        "scope": "read write", "iat": now - 5, "nbf": now - 5, "exp": now + 600,
        "jti": format!("jti-{now}"),
    });
    if let Some(x5t) = x5t {
        claims["cnf"] = json!({"x5t#S256": x5t});
    }
    claims
}

/// The client credentials the test IdP expects at its introspection endpoint.
pub const INTROSPECTION_CLIENT: (&str, &str) = ("certbound", "s3cret:with/odd chars");

struct IdpState {
    jwks: Mutex<Value>,
    /// Introspection answers by token; unknown tokens are inactive.
    answers: Mutex<std::collections::HashMap<String, Value>>,
    introspection_hits: AtomicUsize,
    introspection_status: AtomicU16,
    /// HTTP status the IdP answers with (200 = healthy).
    status: AtomicU16,
    delay_ms: AtomicU64,
    jwks_hits: AtomicUsize,
    discovery_hits: AtomicUsize,
    issuer: Mutex<String>,
    max_age: Mutex<Option<u64>>,
    /// Answer JWT-shaped tokens with 400 `unsupported_token_type`, as some servers do.
    refuse_jwts: std::sync::atomic::AtomicBool,
}

/// An identity provider on 127.0.0.1 serving discovery and JWKS over real HTTP.
pub struct Idp {
    pub addr: SocketAddr,
    pub issuer: String,
    state: Arc<IdpState>,
    shutdown: Option<oneshot::Sender<()>>,
}

impl Idp {
    pub async fn start(signers: &[&Signer]) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let issuer = format!("http://{addr}");
        Self::serve(listener, addr, issuer, signers)
    }

    /// An IdP at `https://{name}`, served over TLS with a certificate `pki` issues for `name`, on
    /// 127.0.0.1 (clients reach it as `name` through their own routing, like Envoy's cluster).
    pub async fn start_tls(signers: &[&Signer], pki: &envoy::Pki, name: &str) -> Self {
        use tokio_rustls::rustls;
        use tokio_rustls::rustls::pki_types::pem::PemObject;
        use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let server = pki.server(&[name]);
        let chain = vec![CertificateDer::from_pem_slice(server.pem.as_bytes()).unwrap()];
        let key = PrivateKeyDer::from_pem_slice(server.key_pem.as_bytes()).unwrap();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let listener = TlsListener {
            tcp,
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
        };
        Self::serve(listener, addr, format!("https://{name}"), signers)
    }

    fn serve<L: axum::serve::Listener>(
        listener: L,
        addr: SocketAddr,
        issuer: String,
        signers: &[&Signer],
    ) -> Self
    where
        L::Addr: std::fmt::Debug,
    {
        let state = Arc::new(IdpState {
            jwks: Mutex::new(Value::Null),
            answers: Mutex::new(Default::default()),
            introspection_hits: AtomicUsize::new(0),
            introspection_status: AtomicU16::new(200),
            status: AtomicU16::new(200),
            delay_ms: AtomicU64::new(0),
            jwks_hits: AtomicUsize::new(0),
            discovery_hits: AtomicUsize::new(0),
            issuer: Mutex::new(issuer.clone()),
            max_age: Mutex::new(None),
            refuse_jwts: Default::default(),
        });
        let app = Router::new()
            .route("/.well-known/openid-configuration", routing::get(discovery))
            .route("/jwks.json", routing::get(jwks))
            .route("/.well-known/jwks.json", routing::get(jwks))
            .route("/introspect", axum::routing::post(introspect))
            .with_state(state.clone());
        let (tx, rx) = oneshot::channel::<()>();
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = rx.await;
                })
                .await
                .unwrap();
        });
        let idp = Self {
            addr,
            issuer,
            state,
            shutdown: Some(tx),
        };
        idp.set_keys(signers);
        idp
    }

    pub fn jwks_uri(&self) -> String {
        format!("{}/jwks.json", self.issuer)
    }

    pub fn set_keys(&self, signers: &[&Signer]) {
        let keys: Vec<Value> = signers.iter().map(|s| s.jwk.clone()).collect();
        *self.state.jwks.lock().unwrap() = json!({ "keys": keys });
    }

    pub fn set_jwks_document(&self, document: Value) {
        *self.state.jwks.lock().unwrap() = document;
    }

    /// The `issuer` the discovery document names (the IdP's own by default).
    pub fn set_discovery_issuer(&self, issuer: &str) {
        *self.state.issuer.lock().unwrap() = issuer.to_owned();
    }

    pub fn set_status(&self, status: u16) {
        self.state.status.store(status, Ordering::SeqCst);
    }

    pub fn set_delay(&self, delay: Duration) {
        self.state
            .delay_ms
            .store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    pub fn introspect_url(&self) -> String {
        format!("{}/introspect", self.issuer)
    }

    /// What the introspection endpoint answers for `token`.
    pub fn set_answer(&self, token: &str, answer: Value) {
        self.state
            .answers
            .lock()
            .unwrap()
            .insert(token.to_string(), answer);
    }

    pub fn set_introspection_status(&self, status: u16) {
        self.state
            .introspection_status
            .store(status, Ordering::SeqCst);
    }

    /// Refuse to introspect JWTs (400 `unsupported_token_type`).
    pub fn refuse_jwts(&self) {
        self.state.refuse_jwts.store(true, Ordering::SeqCst);
    }

    pub fn introspection_hits(&self) -> usize {
        self.state.introspection_hits.load(Ordering::SeqCst)
    }

    pub fn set_max_age(&self, max_age: Option<u64>) {
        *self.state.max_age.lock().unwrap() = max_age;
    }

    pub fn jwks_hits(&self) -> usize {
        self.state.jwks_hits.load(Ordering::SeqCst)
    }

    pub fn discovery_hits(&self) -> usize {
        self.state.discovery_hits.load(Ordering::SeqCst)
    }
}

impl Drop for Idp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// TCP with a TLS handshake on each connection; failed handshakes are dropped.
struct TlsListener {
    tcp: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((stream, addr)) = self.tcp.accept().await else {
                continue;
            };
            if let Ok(tls) = self.acceptor.accept(stream).await {
                return (tls, addr);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

async fn answer(state: &IdpState, body: Value) -> axum::response::Response {
    let delay = state.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let status = StatusCode::from_u16(state.status.load(Ordering::SeqCst)).unwrap();
    if status != StatusCode::OK {
        return (status, "unavailable").into_response();
    }
    let mut headers = HeaderMap::new();
    headers.insert("content-type", "application/json".parse().unwrap());
    if let Some(max_age) = *state.max_age.lock().unwrap() {
        headers.insert(
            "cache-control",
            format!("max-age={max_age}").parse().unwrap(),
        );
    }
    (headers, body.to_string()).into_response()
}

async fn discovery(State(state): State<Arc<IdpState>>) -> axum::response::Response {
    state.discovery_hits.fetch_add(1, Ordering::SeqCst);
    let issuer = state.issuer.lock().unwrap().clone();
    let body = json!({"issuer": issuer, "jwks_uri": format!("{issuer}/jwks.json"),
                      "introspection_endpoint": format!("{issuer}/introspect")});
    answer(&state, body).await
}

/// RFC 7662: form POST with `token`, client authenticated by Basic or by form fields.
async fn introspect(
    State(state): State<Arc<IdpState>>,
    headers: HeaderMap,
    axum::Form(form): axum::Form<std::collections::HashMap<String, String>>,
) -> axum::response::Response {
    state.introspection_hits.fetch_add(1, Ordering::SeqCst);
    let delay = state.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let status = StatusCode::from_u16(state.introspection_status.load(Ordering::SeqCst)).unwrap();
    if status != StatusCode::OK {
        return (status, "failing").into_response();
    }
    let (id, secret) = INTROSPECTION_CLIENT;
    let enc = |v: &str| {
        percent_encoding::utf8_percent_encode(v, percent_encoding::NON_ALPHANUMERIC).to_string()
    };
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", enc(id), enc(secret)))
    );
    let by_basic =
        headers.get("authorization").and_then(|v| v.to_str().ok()) == Some(basic.as_str());
    let by_post = form.get("client_id").map(String::as_str) == Some(id)
        && form.get("client_secret").map(String::as_str) == Some(secret);
    if !(by_basic || by_post) {
        return (StatusCode::UNAUTHORIZED, "bad client credentials").into_response();
    }
    if form.get("token_type_hint").map(String::as_str) != Some("access_token") {
        return (StatusCode::BAD_REQUEST, "token_type_hint missing").into_response();
    }
    let token = form.get("token").cloned().unwrap_or_default();
    if state.refuse_jwts.load(Ordering::SeqCst) && token.split('.').count() == 3 {
        let body = json!({"error": "unsupported_token_type",
                          "error_description": "JWT access tokens cannot be introspected"});
        return (StatusCode::BAD_REQUEST, axum::Json(body)).into_response();
    }
    let answer = state
        .answers
        .lock()
        .unwrap()
        .get(&token)
        .cloned()
        .unwrap_or(json!({"active": false}));
    axum::Json(answer).into_response()
}

async fn jwks(State(state): State<Arc<IdpState>>) -> axum::response::Response {
    state.jwks_hits.fetch_add(1, Ordering::SeqCst);
    let body = state.jwks.lock().unwrap().clone();
    answer(&state, body).await
}

/// certbound running in-process on 127.0.0.1:0.
pub struct Certbound {
    pub addr: SocketAddr,
    pub app: Arc<certbound::server::App>,
    pub client: AuthorizationClient<Channel>,
    pub channel: Channel,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Certbound {
    /// Starts certbound with this YAML configuration and waits until it reports SERVING.
    pub async fn start(yaml: &str) -> Self {
        let this = Self::start_unready(yaml).await;
        this.wait_serving(Duration::from_secs(10)).await;
        this
    }

    /// Starts certbound without waiting for its keys.
    pub async fn start_unready(yaml: &str) -> Self {
        Self::start_with_clock(yaml, Arc::new(certbound_core::clock::SystemClock)).await
    }

    /// Starts certbound with an injected clock, without waiting for its keys.
    pub async fn start_with_clock(
        yaml: &str,
        clock: Arc<dyn certbound_core::clock::Clock>,
    ) -> Self {
        let settings =
            certbound::config::Settings::from_yaml(yaml, Vec::new(), None).expect("valid config");
        let app = certbound::server::App::build_with_clock(&settings, clock).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(certbound::server::serve(
            app.clone(),
            listener,
            None,
            async {
                let _ = rx.await;
            },
        ));
        let channel = Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        Self {
            addr,
            app,
            client: AuthorizationClient::new(channel.clone()),
            channel,
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    /// The sum of the Prometheus samples of `selector`'s metric that carry all its labels
    /// (`certbound_checks_total{decision="deny",reason="x"}` counts every issuer and rule), 0
    /// when there is none.
    pub fn metric(&self, selector: &str) -> u64 {
        metric_in(&self.app.metrics_text(), selector)
    }

    /// The current checker (its key store, introspector and policy).
    pub fn checker(&self) -> Arc<certbound::check::Checker> {
        self.app.checker()
    }

    pub async fn health(&self, service: &str) -> i32 {
        let mut health = tonic_health::pb::health_client::HealthClient::new(self.channel.clone());
        health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .map(|r| r.into_inner().status)
            .unwrap_or(-1)
    }

    pub async fn wait_serving(&self, within: Duration) {
        self.wait_health(
            tonic_health::pb::health_check_response::ServingStatus::Serving,
            within,
        )
        .await;
    }

    /// Waits until gRPC health for "" reports `status`.
    pub async fn wait_health(
        &self,
        status: tonic_health::pb::health_check_response::ServingStatus,
        within: Duration,
    ) {
        let deadline = tokio::time::Instant::now() + within;
        while self.health("").await != status as i32 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "certbound did not become {status:?} within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn check(&self, request: CheckRequest) -> Answer {
        let response = self
            .client
            .clone()
            .check(request)
            .await
            .expect("Check answered");
        Answer::from(response.into_inner())
    }

    /// Stops the server and waits for it to drain.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
    }
}

impl Drop for Certbound {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// The admin endpoints of `app` on 127.0.0.1:0: their base URL, and the sender that stops them.
pub async fn admin(app: Arc<certbound::server::App>) -> (String, oneshot::Sender<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = oneshot::channel::<()>();
    tokio::spawn(certbound::admin::serve(app, listener, async {
        let _ = rx.await;
    }));
    (url, tx)
}

/// GET `url`: the status and the body.
pub async fn get(url: &str) -> (u16, String) {
    let response = reqwest::get(url).await.unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

/// A configuration for one issuer whose keys come from `idp`'s JWKS URL.
pub fn config_for(idp: &Idp, extra: &str) -> String {
    format!(
        "listen: 127.0.0.1:0\nissuers:\n  - issuer: {}\n    audiences: [{AUDIENCE}]\n    jwks_uri: {}\n{extra}",
        idp.issuer,
        idp.jwks_uri()
    )
}

/// A CheckRequest as Envoy builds it: headers in `request.http.headers`, URL-encoded peer PEM.
pub fn request(headers: &[(&str, &str)], certificate: &str) -> CheckRequest {
    let http = attribute_context::HttpRequest {
        id: "1234".into(),
        method: "GET".into(),
        path: "/api/items?x=1".into(),
        host: "api.test".into(),
        scheme: "https".into(),
        protocol: "HTTP/1.1".into(),
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .chain([
                (":path".into(), "/api/items?x=1".into()),
                (":method".into(), "GET".into()),
            ])
            .collect(),
        ..Default::default()
    };
    CheckRequest {
        attributes: Some(AttributeContext {
            source: Some(attribute_context::Peer {
                certificate: certificate.into(),
                principal: "CN=client".into(),
                ..Default::default()
            }),
            request: Some(attribute_context::Request {
                time: None,
                http: Some(http),
            }),
            ..Default::default()
        }),
    }
}

/// A Check from `cert`'s connection carrying a token of `issuer`, signed by `signer` and bound
/// to `cert`. Each call signs a new token.
pub fn bound_request(signer: &Signer, issuer: &str, cert: &ClientCert) -> CheckRequest {
    let auth = format!("Bearer {}", signer.sign(&claims(issuer, Some(&cert.x5t()))));
    request(&[("authorization", &auth)], &cert.url_encoded())
}

/// The HTTP attributes of a request, to edit.
pub fn http_mut(request: &mut CheckRequest) -> &mut attribute_context::HttpRequest {
    request
        .attributes
        .as_mut()
        .unwrap()
        .request
        .as_mut()
        .unwrap()
        .http
        .as_mut()
        .unwrap()
}

/// A CheckRequest as Envoy builds it with `encode_raw_headers: true`.
pub fn raw_request(headers: &[(&str, &[u8])], certificate: &str) -> CheckRequest {
    let mut request = request(&[], certificate);
    let http = http_mut(&mut request);
    http.headers.clear();
    http.header_map = Some(ProtoHeaderMap {
        headers: headers
            .iter()
            .map(|(k, v)| HeaderValue {
                key: k.to_string(),
                value: String::new(),
                raw_value: v.to_vec(),
            })
            .collect(),
    });
    request
}

/// What a CheckResponse tells Envoy, flattened for assertions.
#[derive(Debug)]
pub struct Answer {
    pub grpc_code: Option<i32>,
    pub message: String,
    pub kind: &'static str,
    pub http_status: Option<i32>,
    pub headers: BTreeMap<String, String>,
    pub headers_to_remove: Vec<String>,
    /// Headers for the client's answer (`ok_response.response_headers_to_add`).
    pub response_headers: BTreeMap<String, String>,
    pub body: String,
    pub metadata: BTreeMap<String, String>,
}

impl From<CheckResponse> for Answer {
    fn from(response: CheckResponse) -> Self {
        let mut response_headers = BTreeMap::new();
        let (kind, http_status, header_options, body, headers_to_remove) =
            match response.http_response {
                Some(HttpResponse::OkResponse(ok)) => {
                    response_headers = ok
                        .response_headers_to_add
                        .into_iter()
                        .filter_map(|o| o.header)
                        .map(|h| (h.key, h.value))
                        .collect();
                    ("ok", None, ok.headers, String::new(), ok.headers_to_remove)
                }
                Some(HttpResponse::DeniedResponse(d)) => (
                    "denied",
                    d.status.map(|s| s.code),
                    d.headers,
                    d.body,
                    Vec::new(),
                ),
                Some(HttpResponse::ErrorResponse(e)) => (
                    "error",
                    e.status.map(|s| s.code),
                    e.headers,
                    e.body,
                    Vec::new(),
                ),
                None => ("none", None, Vec::new(), String::new(), Vec::new()),
            };
        let headers = header_options
            .into_iter()
            .filter_map(|o| o.header)
            .map(|h| (h.key, h.value))
            .collect();
        let metadata = response
            .dynamic_metadata
            .map(|s| {
                s.fields
                    .into_iter()
                    .filter_map(|(k, v)| match v.kind {
                        Some(prost_types::value::Kind::StringValue(s)) => Some((k, s)),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        Self {
            grpc_code: response.status.as_ref().map(|s| s.code),
            message: response.status.map(|s| s.message).unwrap_or_default(),
            kind,
            http_status,
            headers,
            headers_to_remove,
            response_headers,
            body,
            metadata,
        }
    }
}

impl Answer {
    pub fn reason(&self) -> &str {
        self.metadata
            .get("reason")
            .map(String::as_str)
            .unwrap_or("")
    }

    /// Asserts the exact 401 the reference gives, with the RFC 6750 challenge.
    #[track_caller]
    pub fn assert_unauthorized(&self, reason: &str, challenge: &str) {
        assert_eq!(self.grpc_code, Some(16), "{self:?}");
        assert_eq!(self.kind, "denied", "{self:?}");
        assert_eq!(self.http_status, Some(401), "{self:?}");
        assert_eq!(self.body, r#"{"message":"unauthorized"}"#);
        assert_eq!(
            self.headers.get("content-type").map(String::as_str),
            Some("application/json")
        );
        assert_eq!(
            self.headers.get("www-authenticate").map(String::as_str),
            Some(challenge),
            "{self:?}"
        );
        assert_eq!(self.reason(), reason, "{self:?}");
        assert_eq!(self.message, reason);
    }

    #[track_caller]
    pub fn assert_invalid_token(&self, reason: &str) {
        self.assert_unauthorized(reason, r#"Bearer error="invalid_token""#);
    }

    /// A 401 with RFC 9449's `DPoP error="invalid_token"` challenge (any `algs`).
    #[track_caller]
    pub fn assert_invalid_token_dpop(&self, reason: &str) {
        assert_eq!(self.grpc_code, Some(16), "{self:?}");
        assert_eq!(self.http_status, Some(401), "{self:?}");
        assert_eq!(self.reason(), reason, "{self:?}");
        let challenge = self.headers.get("www-authenticate").map(String::as_str);
        assert!(
            challenge.is_some_and(|c| c.starts_with(r#"DPoP error="invalid_token", algs=""#)),
            "{self:?}"
        );
    }

    #[track_caller]
    pub fn assert_allowed(&self) {
        assert_eq!(self.grpc_code, Some(0), "{self:?}");
        assert_eq!(self.kind, "ok", "{self:?}");
    }

    #[track_caller]
    pub fn assert_unavailable(&self) {
        assert_eq!(self.grpc_code, Some(14), "{self:?}");
        // A denial Envoy enforces whatever its failure_mode_allow (never error_response).
        assert_eq!(self.kind, "denied", "{self:?}");
        assert_eq!(self.http_status, Some(503), "{self:?}");
        assert_eq!(self.body, r#"{"message":"service unavailable"}"#);
        assert_eq!(
            self.headers.get("content-type").map(String::as_str),
            Some("application/json")
        );
    }
}

/// [`Certbound::metric`] over a Prometheus text scrape (a certbound process's `/metrics`).
pub fn metric_in(text: &str, selector: &str) -> u64 {
    let split = |series: &str| -> (String, Vec<String>) {
        match series.split_once('{') {
            Some((name, labels)) => (
                name.to_owned(),
                labels
                    .trim_end_matches('}')
                    .split(',')
                    .filter(|l| !l.is_empty())
                    .map(str::to_owned)
                    .collect(),
            ),
            None => (series.to_owned(), Vec::new()),
        }
    };
    let (name, wanted) = split(selector);
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (series_name, labels) = split(series);
            (series_name == name && wanted.iter().all(|w| labels.contains(w)))
                .then(|| value.parse::<f64>().ok())
                .flatten()
        })
        .map(|v| v as u64)
        .sum()
}
