//! A whole stack for end-to-end tables: real Envoy 1.40 from a shipped config, certbound in one
//! of its shapes (the dynamic module inside Envoy, or the ext_authz service binary), an IdP, and
//! the recording upstream.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use serde_json::{Value, json};

use super::envoy::*;
use super::raw::{self, Step};
use super::{ClientCert, Idp, Signer};

/// A token of one kind, bound to the client's certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Token {
    /// Signed by a key the IdP does not publish: certbound refetches, the request waits.
    UnknownKid,
    /// A published `kid`, signed by another key.
    Forged,
    Valid,
    /// Signed by [`Stack::rotated`], a key the IdP publishes only once [`Stack::rotate`] is
    /// called: the request waits for the refetch that finds it, then passes.
    RotatedIn,
}

/// One stack under test.
pub struct Stack {
    pub name: &'static str,
    pub pki: Pki,
    pub idp: Idp,
    pub signer: Signer,
    /// The key [`Stack::rotate`] adds to the IdP's JWKS.
    pub rotated: Signer,
    pub issuer: String,
    pub audience: &'static str,
    pub upstream: RecordingUpstream,
    pub port: u16,
    pub envoy: Process,
    pub certbound: Option<Process>,
    /// ext_authz `with_request_body`: Envoy buffers the body before the check.
    pub buffers_body: bool,
}

/// Inserts `lines` right after the HTTP connection manager's `codec_type: AUTO`, indented alike.
pub fn after_codec_type(config: &str, lines: &[&str]) -> String {
    let line = config
        .lines()
        .find(|l| l.trim() == "codec_type: AUTO")
        .expect("codec_type line");
    let pad = " ".repeat(line.len() - line.trim_start().len());
    let added: String = lines.iter().map(|l| format!("{pad}{l}\n")).collect();
    config.replacen(&format!("{line}\n"), &format!("{line}\n{added}"), 1)
}

/// Lets Envoy deliver WebSocket upgrades (HTTP/1.1) and extended CONNECT (HTTP/2).
pub fn with_upgrades(config: String) -> String {
    after_codec_type(
        &config,
        &[
            "upgrade_configs: [{upgrade_type: websocket}]",
            "http2_protocol_options: {allow_connect: true}",
        ],
    )
}

/// The shipped configs' edge path settings removed, as Envoy runs when an operator leaves them
/// out: certbound's own canonical matching is then all there is.
pub fn without_edge_path_settings(config: String) -> String {
    let settings = [
        "normalize_path: true",
        "merge_slashes: true",
        "path_with_escaped_slashes_action: REJECT_REQUEST",
    ];
    for setting in settings {
        assert!(
            config.contains(setting),
            "the shipped config lost {setting}"
        );
    }
    config
        .lines()
        .filter(|l| !settings.contains(&l.trim()))
        .map(|l| format!("{l}\n"))
        .collect()
}

impl Stack {
    /// `deploy/envoy/module.yaml`, its filter_config's certbound settings followed by `extra`,
    /// the Envoy config text then passed through `tweak`.
    pub async fn module(
        name: &'static str,
        extra: &str,
        tweak: impl FnOnce(String) -> String,
    ) -> Self {
        let signer = Signer::es256("k1");
        let pki = Pki::new(name);
        let idp = Idp::start_tls(&[&signer], &pki, "idp.example.com").await;
        let upstream = RecordingUpstream::start().await;
        let ports = EnvoyPorts {
            listener: free_port(),
            admin: free_port(),
            upstream: Some(upstream.addr),
            idp: Some(idp.addr),
            ..Default::default()
        };
        let filter = format!(
            "issuers:\n  - issuer: https://idp.example.com\n    audiences: [https://api.example.com]\n    jwks_uri: https://idp.example.com/.well-known/jwks.json\n    cluster: idp\n    algorithms: [ES256]\ncertificate:\n  sources: [peer]\nupstream:\n  remove_authorization: true\n{extra}"
        );
        let config = tweak(with_filter_config(
            &envoy_config("module", &ports, &pki),
            &filter,
        ));
        let envoy = start_envoy(&config, &ports, pki.dir.path()).await;
        Self {
            name,
            pki,
            idp,
            signer,
            rotated: Signer::es256("rotated-in"),
            issuer: "https://idp.example.com".into(),
            audience: "https://api.example.com",
            upstream,
            port: ports.listener,
            envoy,
            certbound: None,
            buffers_body: false,
        }
    }

    /// `deploy/envoy/self-signed.yaml` calling the certbound binary configured with `extra`,
    /// the Envoy config text passed through `tweak`.
    pub async fn service(
        name: &'static str,
        extra: &str,
        tweak: impl FnOnce(String) -> String,
    ) -> Self {
        let signer = Signer::es256("k1");
        let pki = Pki::new(name);
        let idp = Idp::start(&[&signer]).await;
        let upstream = RecordingUpstream::start().await;
        let yaml = super::config_for(&idp, extra);
        let (certbound, addr) = start_certbound(&yaml, pki.dir.path()).await;
        let ports = EnvoyPorts {
            listener: free_port(),
            admin: free_port(),
            certbound: Some(addr),
            upstream: Some(upstream.addr),
            ..Default::default()
        };
        let config = tweak(envoy_config("self-signed", &ports, &pki));
        let envoy = start_envoy(&config, &ports, pki.dir.path()).await;
        Self {
            name,
            pki,
            issuer: idp.issuer.clone(),
            idp,
            signer,
            rotated: Signer::es256("rotated-in"),
            audience: super::AUDIENCE,
            upstream,
            port: ports.listener,
            envoy,
            certbound: Some(certbound),
            buffers_body: config.contains("with_request_body"),
        }
    }

    /// Claims of a valid token bound to `cert`, for this stack's issuer and audience.
    pub fn claims(&self, cert: &ClientCert) -> Value {
        let mut claims = super::claims(&self.issuer, Some(&cert.x5t()));
        claims["aud"] = json!(self.audience);
        claims
    }

    pub fn token(&self, kind: Token, cert: &ClientCert) -> String {
        let claims = self.claims(cert);
        match kind {
            Token::Valid => self.signer.sign(&claims),
            Token::Forged => Signer::es256("k1").sign(&claims),
            Token::UnknownKid => Signer::es256("never-published").sign(&claims),
            Token::RotatedIn => self.rotated.sign(&claims),
        }
    }

    /// The IdP starts publishing [`Stack::rotated`] beside the first key.
    pub fn rotate(&self) {
        self.idp.set_keys(&[&self.signer, &self.rotated]);
    }

    /// Fails the test with every failure of a table and Envoy's log.
    #[track_caller]
    pub fn assert_no_failures(&self, failures: &[String]) {
        assert!(
            failures.is_empty(),
            "{} failures:\n{}\n--- envoy\n{}",
            failures.len(),
            failures.join("\n"),
            self.envoy.log()
        );
    }

    /// Waits until a valid GET passes (keys loaded, Envoy up).
    pub async fn assert_serving(&self, cert: &ClientCert) {
        let path = format!("/serving/{}", unique());
        let auth = format!("Bearer {}", self.token(Token::Valid, cert));
        for _ in 0..100 {
            let response = raw::http1(
                &self.pki,
                Some(cert),
                self.port,
                vec![Step::Send(raw::head(
                    "GET",
                    &path,
                    &[("authorization", &auth)],
                ))],
                Duration::from_secs(6),
            )
            .await;
            if response.header("x-upstream") == Some("seen") {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "{}: a valid request never passed:\n{}",
            self.name,
            self.envoy.log()
        );
    }
}

/// A number no other call in this process got.
pub fn unique() -> String {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    NEXT.fetch_add(1, Ordering::SeqCst).to_string()
}
