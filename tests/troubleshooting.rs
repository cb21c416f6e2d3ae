//! The book's troubleshooting table (docs/src/troubleshooting.md), row by row: each mistake is
//! made for real (a real IdP on 127.0.0.1, a real token, certbound in-process) and the row's
//! reason must be what certbound reports in its decision log line and in `certbound explain`,
//! with the near-miss the row's fix relies on in the line's `detail` (never the token). A last
//! test checks that the book's rows and the rows tested here are the same.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::{Mutex, Once};
use std::time::Duration;

use certbound::explain::{ExplainRequest, explain};
use common::dpop::DpopKey;
use common::*;
use serde_json::{Value, json};

/// The decision log lines (JSON) certbound wrote in this test binary.
static LINES: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Sends the decision log to [`LINES`], formatted as `certbound serve` writes it.
fn capture_decision_log() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(
                "certbound::decision=info",
            ))
            .with_writer(std::io::sink)
            .try_init();
        certbound::decision_log::install(certbound::config::LogFormat::Json, |line| {
            LINES
                .lock()
                .unwrap()
                .push(String::from_utf8_lossy(line).into_owned());
        });
    });
}

/// The decision line whose `field` is `value`, waiting up to 5 s for it.
async fn logged(field: &str, value: &str) -> Value {
    for _ in 0..250 {
        let found = LINES.lock().unwrap().iter().find_map(|line| {
            let json: Value = serde_json::from_str(line).expect("a JSON line");
            (json[field] == value).then_some(json)
        });
        if let Some(json) = found {
            return json;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no decision line with {field}={value:?}");
}

/// One row: the mistake (configuration and request) and what certbound must report.
struct Row {
    reason: &'static str,
    yaml: String,
    scheme: &'static str,
    token: Option<String>,
    cert: Option<ClientCert>,
    dpop: Option<String>,
    path: &'static str,
    /// The route's `context_extensions` (Envoy's per-route `check_settings`).
    extensions: Vec<(&'static str, &'static str)>,
    /// Part of the decision line's `detail` and of `explain`'s `detail:` line.
    detail: Option<String>,
    /// Whether `certbound explain` can show it (it never records a DPoP proof against replay).
    explain: bool,
}

impl Row {
    fn new(reason: &'static str, yaml: String) -> Self {
        Self {
            reason,
            yaml,
            scheme: "Bearer",
            token: None,
            cert: None,
            dpop: None,
            path: "/api/items?x=1",
            extensions: Vec::new(),
            detail: None,
            explain: true,
        }
    }

    fn token(mut self, token: String, cert: Option<&ClientCert>) -> Self {
        self.token = Some(token);
        self.cert = cert.cloned();
        self
    }

    fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    /// Makes the mistake through the gRPC service and through `explain`, and checks both.
    async fn assert_reported(self) {
        let certbound = Certbound::start(&self.yaml).await;
        self.assert_reported_by(&certbound).await;
    }

    async fn assert_reported_by(self, certbound: &Certbound) {
        capture_decision_log();
        let id = format!("row-{}", self.reason);
        let mut headers = vec![("x-request-id", id.clone())];
        if let Some(token) = &self.token {
            headers.push(("authorization", format!("{} {token}", self.scheme)));
        }
        if let Some(proof) = &self.dpop {
            headers.push(("dpop", proof.clone()));
        }
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let certificate = self.cert.as_ref().map(ClientCert::url_encoded);
        let mut check = request(&headers, certificate.as_deref().unwrap_or_default());
        let http = http_mut(&mut check);
        http.path = self.path.into();
        http.headers.insert(":path".into(), self.path.into());
        check.attributes.as_mut().unwrap().context_extensions = self
            .extensions
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let answer = certbound.check(check).await;
        assert!(
            answer.reason() == self.reason || answer.message == self.reason,
            "{answer:?}"
        );

        let line = logged("request_id", &id).await;
        assert_eq!(line["reason"], self.reason, "{line}");
        let detail = line["detail"].as_str().unwrap_or_default();
        if let Some(expected) = &self.detail {
            assert!(
                detail.contains(expected.as_str()),
                "{expected:?} not in {line}"
            );
        }
        if let Some(token) = &self.token {
            assert!(
                !line.to_string().contains(&token[..40]),
                "token logged: {line}"
            );
        }

        if self.explain {
            let explained = explain(
                &certbound.checker(),
                &ExplainRequest {
                    token: self.token.clone().unwrap_or_default(),
                    certificate: self.cert.as_ref().map(|c| c.pem.clone().into_bytes()),
                    method: "GET".into(),
                    scheme: "https".into(),
                    path: self.path.into(),
                    host: "api.test".into(),
                    dpop: self.dpop.clone(),
                },
            )
            .await;
            let report = explained.report;
            assert!(
                report.contains(&format!(" reason {} (gRPC status", self.reason)),
                "{report}"
            );
            if let Some(expected) = &self.detail {
                let shown = report
                    .lines()
                    .find_map(|l| l.strip_prefix("  detail: "))
                    .unwrap_or_else(|| panic!("no detail line in:\n{report}"));
                assert!(
                    shown.contains(expected.as_str()),
                    "{expected:?} not in:\n{report}"
                );
            }
        }
    }
}

/// An IdP publishing one ES256 key (`k1`), its signer, and a client certificate.
async fn setup() -> (Idp, Signer, ClientCert) {
    let signer = Signer::es256("k1");
    let idp = Idp::start(&[&signer]).await;
    (idp, signer, ClientCert::self_signed("client"))
}

fn bound(idp: &Idp, cert: &ClientCert) -> Value {
    claims(&idp.issuer, Some(&cert.x5t()))
}

#[tokio::test]
async fn issuer_unknown_names_the_near_miss() {
    let (idp, signer, cert) = setup().await;
    // The issuer configured with a trailing slash the IdP does not put in `iss`.
    let yaml = format!(
        "listen: 127.0.0.1:0\nissuers:\n  - issuer: {}/\n    audiences: [{AUDIENCE}]\n    \
         jwks_uri: {}\n",
        idp.issuer,
        idp.jwks_uri()
    );
    Row::new("issuer_unknown", yaml)
        .token(signer.sign(&bound(&idp, &cert)), Some(&cert))
        .detail(format!(
            "iss differs from the configured issuer \"{}/\" only by a trailing slash",
            idp.issuer
        ))
        .assert_reported()
        .await;
}

#[tokio::test]
async fn audience_mismatch_shows_aud_beside_the_configured_audiences() {
    let (idp, signer, cert) = setup().await;
    let mut claims = bound(&idp, &cert);
    claims["aud"] = json!(["https://api.test/", "account"]);
    Row::new("audience_mismatch", config_for(&idp, ""))
        .token(signer.sign(&claims), Some(&cert))
        .detail(format!(
            "token aud [\"https://api.test/\", \"account\"]; accepted audiences [\"{AUDIENCE}\"]"
        ))
        .assert_reported()
        .await;
}

#[tokio::test]
async fn alg_not_allowed_shows_the_issuers_algorithms() {
    let (idp, _, cert) = setup().await;
    let rsa = Signer::rs256("r1");
    idp.set_keys(&[&rsa]);
    let yaml =
        config_for(&idp, "").replace("    jwks_uri:", "    algorithms: [ES256]\n    jwks_uri:");
    Row::new("alg_not_allowed", yaml)
        .token(rsa.sign(&bound(&idp, &cert)), Some(&cert))
        .detail("token alg \"RS256\"; issuer's algorithms [\"ES256\"]")
        .assert_reported()
        .await;
}

#[tokio::test]
async fn typ_invalid_shows_the_tokens_typ() {
    let (idp, signer, cert) = setup().await;
    let yaml =
        config_for(&idp, "").replace("    jwks_uri:", "    require_typ: at+jwt\n    jwks_uri:");
    Row::new("typ_invalid", yaml)
        .token(signer.sign(&bound(&idp, &cert)), Some(&cert))
        .detail("token typ \"JWT\"; the issuer requires at+jwt")
        .assert_reported()
        .await;
}

#[tokio::test]
async fn key_unknown_shows_the_published_kids() {
    let (idp, _, cert) = setup().await;
    // Signed by a key the JWKS does not publish (another tenant's, or a rotation not yet seen).
    let other = Signer::es256("k9");
    Row::new("key_unknown", config_for(&idp, ""))
        .token(other.sign(&bound(&idp, &cert)), Some(&cert))
        .detail("token kid \"k9\" alg ES256; published kids [\"k1\"]")
        .assert_reported()
        .await;
}

#[tokio::test]
async fn token_expired_shows_exp_beside_now() {
    let (idp, signer, cert) = setup().await;
    let mut claims = bound(&idp, &cert);
    claims["exp"] = json!(now() - 3600);
    Row::new("token_expired", config_for(&idp, ""))
        .token(signer.sign(&claims), Some(&cert))
        .detail(" s before now (leeway ")
        .assert_reported()
        .await;
}

#[tokio::test]
async fn token_not_yet_valid_shows_nbf_beside_now() {
    let (idp, signer, cert) = setup().await;
    let mut claims = bound(&idp, &cert);
    // A clock an hour ahead at the IdP.
    claims["nbf"] = json!(now() + 3600);
    Row::new("token_not_yet_valid", config_for(&idp, ""))
        .token(signer.sign(&claims), Some(&cert))
        .detail(" s after now (leeway ")
        .assert_reported()
        .await;
}

#[tokio::test]
async fn token_issued_in_future_shows_iat_beside_now() {
    let (idp, signer, cert) = setup().await;
    let mut claims = bound(&idp, &cert);
    claims["iat"] = json!(now() + 3600);
    Row::new("token_issued_in_future", config_for(&idp, ""))
        .token(signer.sign(&claims), Some(&cert))
        .detail(" s after now (leeway ")
        .assert_reported()
        .await;
}

#[tokio::test]
async fn key_type_mismatch_shows_the_published_keys_type() {
    let (idp, _, cert) = setup().await;
    // The IdP publishes `k1` as an RSA key and signs with an EC key under the same kid.
    idp.set_keys(&[&Signer::rs256("k1")]);
    let ec = Signer::es256("k1");
    Row::new("key_type_mismatch", config_for(&idp, ""))
        .token(ec.sign(&bound(&idp, &cert)), Some(&cert))
        .detail("token kid \"k1\" alg ES256; the key published under that kid is Rsa")
        .assert_reported()
        .await;
}

#[tokio::test]
async fn cnf_unverified_shows_the_binding_mode() {
    let (idp, signer, cert) = setup().await;
    // Binding turned off while the IdP issues certificate-bound tokens.
    Row::new(
        "cnf_unverified",
        config_for(&idp, "binding:\n  mode: disabled\n"),
    )
    .token(signer.sign(&bound(&idp, &cert)), Some(&cert))
    .detail(format!(
        "token cnf {{\"x5t#S256\":\"{}\"}}; binding mode Disabled; DPoP not enabled",
        cert.x5t()
    ))
    .assert_reported()
    .await;
}

#[tokio::test]
async fn token_too_large_shows_the_size_and_the_limit() {
    let (idp, signer, cert) = setup().await;
    // A user in many groups: the IdP's token outgrows the limit.
    let mut claims = bound(&idp, &cert);
    claims["groups"] = json!((0..40).map(|i| format!("group-{i:03}")).collect::<Vec<_>>());
    let token = signer.sign(&claims);
    let detail = format!(
        "token of {} bytes; limits.max_token_bytes 1024",
        token.len()
    );
    Row::new(
        "token_too_large",
        config_for(&idp, "limits:\n  max_token_bytes: 1024\n"),
    )
    .token(token, Some(&cert))
    .detail(detail)
    .assert_reported()
    .await;
}

#[tokio::test]
async fn header_too_large_names_the_header_and_the_limit() {
    let (idp, signer, cert) = setup().await;
    let token = signer.sign(&bound(&idp, &cert));
    let detail = format!(
        "authorization of {} bytes; limits.max_header_bytes 256",
        "Bearer ".len() + token.len()
    );
    Row::new(
        "header_too_large",
        config_for(&idp, "limits:\n  max_header_bytes: 256\n"),
    )
    .token(token, Some(&cert))
    .detail(detail)
    .assert_reported()
    .await;
}

#[tokio::test]
async fn policy_invalid_names_the_route_setting() {
    let (idp, signer, cert) = setup().await;
    let mut row = Row::new("policy_invalid", config_for(&idp, ""))
        .token(signer.sign(&bound(&idp, &cert)), Some(&cert))
        .detail("context_extensions certbound.binding \"sometimes\" is not required, when_present or disabled");
    row.extensions = vec![("certbound.binding", "sometimes")];
    // `explain` has no route settings to take them from.
    row.explain = false;
    row.assert_reported().await;
}

#[tokio::test]
async fn cert_missing_names_the_sources_looked_at() {
    let (idp, signer, cert) = setup().await;
    // Envoy without include_peer_certificate: the token is bound, no certificate arrives.
    Row::new("cert_missing", config_for(&idp, ""))
        .token(signer.sign(&bound(&idp, &cert)), None)
        .detail("certificate sources looked at: peer: absent")
        .assert_reported()
        .await;
}

#[tokio::test]
async fn binding_mismatch_shows_both_thumbprints() {
    let (idp, signer, cert) = setup().await;
    let other = ClientCert::self_signed("other");
    let row = Row::new("binding_mismatch", config_for(&idp, ""))
        .token(signer.sign(&bound(&idp, &cert)), Some(&other));
    row.detail(format!(
        "certificate x5t#S256 {} from peer; token cnf.x5t#S256 \"{}\"",
        other.x5t(),
        cert.x5t()
    ))
    .assert_reported()
    .await;
}

#[tokio::test]
async fn cnf_missing_says_the_token_is_unbound() {
    let (idp, signer, cert) = setup().await;
    Row::new("cnf_missing", config_for(&idp, ""))
        .token(signer.sign(&claims(&idp.issuer, None)), Some(&cert))
        .detail("token cnf absent; binding mode Required (rule \"default\")")
        .assert_reported()
        .await;
}

const RULE: &str = "policy:\n  rules:\n    - name: api\n      path_prefix: /api\n";

#[tokio::test]
async fn audience_not_allowed_shows_the_rules_audiences() {
    let (idp, signer, cert) = setup().await;
    let yaml = config_for(
        &idp,
        &format!("{RULE}      audiences: [https://partner.test]\n"),
    );
    Row::new("audience_not_allowed", yaml)
        .token(signer.sign(&bound(&idp, &cert)), Some(&cert))
        .detail(format!(
            "token aud [\"{AUDIENCE}\"]; rule \"api\" requires one of [\"https://partner.test\"]"
        ))
        .assert_reported()
        .await;
}

#[tokio::test]
async fn issuer_not_allowed_shows_the_rules_issuers() {
    let (idp, signer, cert) = setup().await;
    // Two issuers; the rule names only the partner's, the client's token comes from the other.
    let yaml = config_for(
        &idp,
        &format!("{RULE}      issuers: [https://partner-idp.test]\n"),
    )
    .replace(
        "policy:",
        &format!(
            "  - issuer: https://partner-idp.test\n    audiences: [{AUDIENCE}]\n    jwks_uri: {}\n\
             policy:",
            idp.jwks_uri()
        ),
    );
    Row::new("issuer_not_allowed", yaml)
        .token(signer.sign(&bound(&idp, &cert)), Some(&cert))
        .detail("rule \"api\" accepts issuers [\"https://partner-idp.test\"]")
        .assert_reported()
        .await;
}

#[tokio::test]
async fn scope_missing_shows_the_tokens_scopes() {
    let (idp, signer, cert) = setup().await;
    let yaml = config_for(&idp, &format!("{RULE}      scopes: [items:read]\n"));
    Row::new("scope_missing", yaml)
        .token(signer.sign(&bound(&idp, &cert)), Some(&cert))
        .detail("missing scopes [\"items:read\"]; token scopes [\"read\", \"write\"]")
        .assert_reported()
        .await;
}

#[tokio::test]
async fn group_missing_shows_the_groups_claim_read() {
    let (idp, signer, cert) = setup().await;
    let yaml = config_for(&idp, &format!("{RULE}      groups: [ops]\n"));
    // The IdP puts them under `roles`; certbound reads `groups` (policy.groups_claim).
    let mut claims = bound(&idp, &cert);
    claims["roles"] = json!(["ops"]);
    Row::new("group_missing", yaml)
        .token(signer.sign(&claims), Some(&cert))
        .detail("rule \"api\" requires any of groups [\"ops\"]; token groups []")
        .assert_reported()
        .await;
}

#[tokio::test]
async fn dpop_url_mismatch_shows_both_urls() {
    let (idp, signer, _) = setup().await;
    let key = DpopKey::es256();
    let mut claims = claims(&idp.issuer, None);
    claims["cnf"] = json!({"jkt": key.jkt()});
    let token = signer.sign(&claims);
    // The client signs the public URL; Envoy sees another host (a load balancer in front).
    let proof = key.proof("GET", "https://public.example.com/api/items", &token);
    let mut row = Row::new(
        "dpop_url_mismatch",
        config_for(&idp, "dpop:\n  enabled: true\n"),
    )
    .token(token, None)
    .detail(
        "proof htu \"https://public.example.com/api/items\"; request htu \
             \"https://api.test/api/items\"",
    );
    row.scheme = "DPoP";
    row.dpop = Some(proof);
    row.assert_reported().await;
}

#[tokio::test]
async fn dpop_downgrade_says_dpop_is_off() {
    let (idp, signer, _) = setup().await;
    let mut claims = claims(&idp.issuer, None);
    claims["cnf"] = json!({"jkt": DpopKey::es256().jkt()});
    Row::new("dpop_downgrade", config_for(&idp, ""))
        .token(signer.sign(&claims), None)
        .detail("the token is DPoP-bound (cnf.jkt); DPoP is not enabled (dpop.enabled)")
        .assert_reported()
        .await;
}

#[tokio::test]
async fn path_unsafe_is_reported() {
    let (idp, signer, cert) = setup().await;
    let mut row = Row::new("path_unsafe", config_for(&idp, ""))
        .token(signer.sign(&bound(&idp, &cert)), Some(&cert));
    row.path = "/api%2Fitems";
    row.assert_reported().await;
}

#[tokio::test]
async fn keys_unavailable_when_the_jwks_cannot_be_fetched() {
    let (idp, signer, cert) = setup().await;
    idp.set_status(500);
    let row = Row::new("keys_unavailable", config_for(&idp, ""))
        .token(signer.sign(&bound(&idp, &cert)), Some(&cert));
    let certbound = Certbound::start_unready(&row.yaml).await;
    row.assert_reported_by(&certbound).await;
}

#[tokio::test]
async fn replay_store_unavailable_when_redis_cannot_be_reached() {
    let (idp, signer, _) = setup().await;
    let key = DpopKey::es256();
    let mut claims = claims(&idp.issuer, None);
    claims["cnf"] = json!({"jkt": key.jkt()});
    let token = signer.sign(&claims);
    let proof = key.proof("GET", "https://api.test/api/items", &token);
    // Nothing listens there.
    let port = common::envoy::free_port();
    let yaml = config_for(
        &idp,
        &format!(
            "dpop:\n  enabled: true\n  replay:\n    store: redis\n    url: \
             redis://127.0.0.1:{port}\n    timeout_ms: 200\n"
        ),
    );
    let mut row = Row::new("replay_store_unavailable", yaml).token(token, None);
    row.scheme = "DPoP";
    row.dpop = Some(proof);
    // `explain` does not record proofs, so it does not reach the store.
    row.explain = false;
    row.assert_reported().await;
}

#[tokio::test]
async fn proxy_untrusted_when_the_proxy_is_not_a_trusted_peer() {
    capture_decision_log();
    let (idp, signer, cert) = setup().await;
    let yaml = config_for(
        &idp,
        "forward_auth: {listen: 127.0.0.1:0, trusted_peers: [\"10.0.0.0/8\"]}\n",
    );
    let certbound = Certbound::start(&yaml).await;
    let settings = certbound::config::Settings::from_yaml(&yaml, Vec::new(), None).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (_stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let app = std::sync::Arc::clone(&certbound.app);
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
    let token = signer.sign(&bound(&idp, &cert));
    let answer = reqwest::Client::new()
        .get(format!("http://{addr}/auth"))
        .header("x-forwarded-method", "GET")
        .header("x-forwarded-uri", "/api/items")
        .header("authorization", format!("Bearer {token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 403);
    // A peer the proxy does not vouch for carries no request fields: found by its reason.
    let line = logged("reason", "proxy_untrusted").await;
    assert_eq!(line["decision"], "deny", "{line}");
}

/// Every reason the table names (its second column) is a row tested above, and every row tested
/// above is in the table.
#[test]
fn the_books_rows_are_the_rows_tested() {
    let book = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/src/troubleshooting.md"),
    )
    .unwrap();
    let start = book.find("## Common denials").expect("the table's heading");
    let mut in_book: Vec<String> = book[start..]
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .skip(2)
        .filter_map(|row| {
            let reason = row.split('|').nth(2)?.trim();
            Some(reason.strip_prefix('`')?.strip_suffix('`')?.to_owned())
        })
        .collect();
    in_book.sort();
    let source = include_str!("troubleshooting.rs");
    let mut tested: Vec<String> = source
        .match_indices(concat!("Row::", "new("))
        .filter_map(|(at, m)| {
            let rest = source[at + m.len()..].trim_start().strip_prefix('"')?;
            let reason = &rest[..rest.find('"')?];
            reason
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b == b'_')
                .then(|| reason.to_owned())
        })
        .collect();
    tested.push("proxy_untrusted".into());
    tested.sort();
    tested.dedup();
    assert_eq!(in_book, tested, "book rows vs rows tested");
    let known: Vec<&str> = certbound_core::DenyReason::ALL
        .iter()
        .map(|r| r.as_str())
        .chain(["keys_unavailable", "replay_store_unavailable"])
        .collect();
    for reason in &in_book {
        assert!(
            known.contains(&reason.as_str()),
            "{reason} is not a reason certbound gives"
        );
    }
}

/// The same line from the real `certbound serve` (its own log writer, text format): the
/// near-miss escaped inside the quoted `detail`, and no token.
#[tokio::test]
async fn the_served_binary_logs_the_detail() {
    let (idp, signer, cert) = setup().await;
    let yaml = format!(
        "issuers:\n  - issuer: {}/\n    audiences: [{AUDIENCE}]\n    jwks_uri: {}\n",
        idp.issuer,
        idp.jwks_uri()
    );
    let dir = tempfile::tempdir().unwrap();
    let (process, addr) = common::envoy::start_certbound(&yaml, dir.path()).await;
    let token = signer.sign(&bound(&idp, &cert));
    let auth = format!("Bearer {token}");
    let channel = common::envoy::channel(addr, None).await.unwrap();
    let mut client = certbound::grpc::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient::new(channel);
    let answer = Answer::from(
        client
            .check(request(&[("authorization", &auth)], &cert.url_encoded()))
            .await
            .unwrap()
            .into_inner(),
    );
    assert_eq!(answer.reason(), "issuer_unknown");
    let expected = format!(
        "reason=\"issuer_unknown\" rule=\"default\" issuer=\"{issuer}\" kid=\"k1\" alg=\"ES256\" \
         request_id=\"1234\" method=\"GET\" path=\"/api/items\" detail=\"iss differs from the \
         configured issuer \\\"{issuer}/\\\" only by a trailing slash; iss must equal it exactly\"",
        issuer = idp.issuer
    );
    for _ in 0..250 {
        if process.log().contains(&expected) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let log = process.log();
    assert!(log.contains(&expected), "{expected}\nnot in:\n{log}");
    assert!(!log.contains(&token[..40]), "token logged");
}

/// The detail quotes the token, and the token is the attacker's: a huge `iss` and `aud` full of
/// line breaks, terminal escapes and bidi controls stay on one bounded, escaped line.
#[tokio::test]
async fn hostile_token_values_stay_bounded_and_escaped() {
    capture_decision_log();
    let (idp, signer, cert) = setup().await;
    let hostile = format!(
        "https://evil.test/\n2026-12-07T00:00:00Z  INFO certbound::decision: check decision=\"allow\"\u{1b}[2J\u{202e}{}",
        "x".repeat(5000)
    );
    let mut claims = bound(&idp, &cert);
    claims["iss"] = json!(hostile);
    let certbound = Certbound::start(&config_for(&idp, "")).await;
    let token = signer.sign(&claims);
    let auth = format!("Bearer {token}");
    let id = "row-hostile-iss";
    let answer = certbound
        .check(request(
            &[("authorization", &auth), ("x-request-id", id)],
            &cert.url_encoded(),
        ))
        .await;
    assert_eq!(answer.reason(), "issuer_unknown");
    let line = logged("request_id", id).await;
    let raw = LINES
        .lock()
        .unwrap()
        .iter()
        .find(|l| l.contains(id))
        .cloned()
        .unwrap();
    assert_eq!(raw.matches('\n').count(), 1, "{raw:?}");
    assert!(
        !raw.chars()
            .any(|c| (c.is_control() && c != '\n') || c == '\u{202e}'),
        "{raw:?}"
    );
    assert!(raw.len() < 4096, "{} bytes", raw.len());
    let detail = line["detail"].as_str().unwrap();
    assert!(
        detail.starts_with("iss \"https://evil.test/\n2026"),
        "{detail:?}"
    );
    assert!(detail.chars().count() < 300, "{detail:?}");
    assert!(detail.contains('…'), "cut: {detail:?}");
}
