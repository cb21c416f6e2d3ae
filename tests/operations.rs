//! Operating certbound: admin endpoints and metrics, reload without restart (in-process and on
//! the real binary with SIGHUP and a changed file), TLS and mTLS on the gRPC listener, limits,
//! and JSON logs that carry the request's trace identifiers (and never a token).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::envoy::{Pki, channel, start_certbound, start_certbound_with};
use common::*;
use serde_json::json;

#[tokio::test]
async fn admin_endpoints_report_health_readiness_and_metrics() {
    let signer = Signer::es256("k1");
    let idp = Idp::start(&[&signer]).await;
    idp.set_status(500);
    let certbound = Certbound::start_unready(&config_for(&idp, "")).await;
    let (url, _stop) = admin(Arc::clone(&certbound.app)).await;
    assert_eq!(get(&format!("{url}/healthz")).await.0, 200);
    assert_eq!(
        get(&format!("{url}/readyz")).await.0,
        503,
        "not ready without keys"
    );

    idp.set_status(200);
    certbound.checker().keys().refresh(0).await.unwrap();
    assert_eq!(get(&format!("{url}/readyz")).await, (200, "ready\n".into()));

    let cert = ClientCert::self_signed("c");
    certbound
        .check(bound_request(&signer, &idp.issuer, &cert))
        .await
        .assert_allowed();
    certbound
        .check(request(&[], &cert.url_encoded()))
        .await
        .assert_unauthorized("token_missing", "Bearer");

    let (status, text) = get(&format!("{url}/metrics")).await;
    assert_eq!(status, 200);
    let issuer = &idp.issuer;
    for expected in [
        // The configured issuer and the rule that applied (bounded by the configuration); a
        // check that never reached an issuer has none.
        format!(
            r#"certbound_checks_total{{decision="allow",reason="ok",issuer="{issuer}",rule="default"}} 1"#
        ),
        r#"certbound_checks_total{decision="deny",reason="token_missing",issuer="",rule="default"} 1"#
            .to_string(),
        r#"certbound_check_duration_seconds_count{decision="allow"} 1"#.to_string(),
        format!(r#"certbound_key_refreshes_total{{issuer="{issuer}",result="success"}} 1"#),
        format!(r#"certbound_key_refreshes_total{{issuer="{issuer}",result="failure"}} 1"#),
        format!(r#"certbound_keys_loaded{{issuer="{issuer}"}} 1"#),
        format!(r#"certbound_key_set_age_seconds{{issuer="{issuer}"}}"#),
        "certbound_checks_in_flight 0".to_string(),
    ] {
        assert!(text.contains(&expected), "missing {expected} in:\n{text}");
    }
}

/// A token's own `iss` never becomes a label: one request per issuer an attacker invents would
/// otherwise add a series each. Only configured issuers and rules are labels.
#[tokio::test]
async fn decision_labels_come_from_the_configuration_never_from_the_token() {
    let signer = Signer::es256("k1");
    let idp = Idp::start(&[&signer]).await;
    let certbound = Certbound::start(&config_for(
        &idp,
        "policy:\n  rules:\n    - name: items\n      path_prefix: /items\n",
    ))
    .await;
    let cert = ClientCert::self_signed("client");
    for i in 0..5 {
        let invented = format!("https://attacker.example/{i}");
        certbound
            .check(bound_request(&signer, &invented, &cert))
            .await
            .assert_unauthorized("issuer_unknown", r#"Bearer error="invalid_token""#);
    }
    let text = certbound.app.metrics_text();
    assert!(!text.contains("attacker.example"), "{text}");
    assert_eq!(
        certbound
            .metric(r#"certbound_checks_total{decision="deny",reason="issuer_unknown",issuer=""}"#),
        5
    );
    let mut request = bound_request(&signer, &idp.issuer, &cert);
    http_mut(&mut request).path = "/items/7".into();
    certbound.check(request).await.assert_allowed();
    let labels = format!(
        r#"certbound_checks_total{{decision="allow",reason="ok",issuer="{}",rule="items"}}"#,
        idp.issuer
    );
    assert_eq!(certbound.metric(&labels), 1, "{text}");
}

#[tokio::test]
async fn introspection_metrics_count_calls_and_cache_hits() {
    let idp = Idp::start(&[]).await;
    let secret = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(secret.path(), INTROSPECTION_CLIENT.1).unwrap();
    let yaml = format!(
        "introspection:\n  endpoint: {}\n  client_id: certbound\n  client_secret_file: {}\n",
        idp.introspect_url(),
        secret.path().display()
    );
    let certbound = Certbound::start(&yaml).await;
    let cert = ClientCert::self_signed("c");
    idp.set_answer(
        "opaque",
        json!({"active": true, "cnf": {"x5t#S256": cert.x5t()}}),
    );
    for _ in 0..3 {
        certbound
            .check(request(
                &[("authorization", "Bearer opaque")],
                &cert.url_encoded(),
            ))
            .await
            .assert_allowed();
    }
    let text = certbound.app.metrics_text();
    assert!(
        text.contains(r#"certbound_introspection_requests_total{result="active"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"certbound_introspection_cache_total{result="hit"} 2"#),
        "{text}"
    );
    assert!(
        text.contains(r#"certbound_introspection_cache_total{result="miss"} 1"#),
        "{text}"
    );
}

#[tokio::test]
async fn reload_swaps_the_policy_and_checks_holding_the_old_one_are_unaffected() {
    let signer = Signer::es256("k1");
    let idp = Idp::start(&[&signer]).await;
    let certbound = Certbound::start(&config_for(&idp, "")).await;
    let cert = ClientCert::self_signed("c");
    let unbound = format!("Bearer {}", signer.sign(&claims(&idp.issuer, None)));
    let req = || request(&[("authorization", &unbound)], &cert.url_encoded());
    certbound
        .check(req())
        .await
        .assert_invalid_token("cnf_missing");

    // A check that started before the reload holds the old checker.
    let in_flight = certbound.checker();
    let settings = certbound::config::Settings::from_yaml(
        &config_for(&idp, "binding:\n  mode: disabled\n"),
        Vec::new(),
        None,
    )
    .unwrap();
    certbound.app.reload(settings).await.unwrap();
    certbound.check(req()).await.assert_allowed();
    let access = certbound::grpc::convert::access_request(req(), None).unwrap();
    let old = in_flight.check(&access).await;
    assert_eq!(old.reason(), "cnf_missing");
    // The key store was reused: same keys, no new fetch needed.
    assert!(Arc::ptr_eq(in_flight.keys(), certbound.checker().keys()));
}

#[tokio::test]
async fn reload_to_issuers_whose_keys_cannot_load_is_refused() {
    let signer = Signer::es256("k1");
    let idp = Idp::start(&[&signer]).await;
    let certbound = Certbound::start(&config_for(&idp, "")).await;
    let down = Idp::start(&[]).await;
    down.set_status(500);
    let settings =
        certbound::config::Settings::from_yaml(&config_for(&down, ""), Vec::new(), None).unwrap();
    let error = certbound.app.reload(settings).await.unwrap_err();
    assert!(error.contains("could not be loaded"), "{error}");
    let cert = ClientCert::self_signed("c");
    certbound
        .check(bound_request(&signer, &idp.issuer, &cert))
        .await
        .assert_allowed();
}

#[tokio::test]
async fn oversized_headers_are_denied_before_parsing() {
    let signer = Signer::es256("k1");
    let idp = Idp::start(&[&signer]).await;
    let certbound =
        Certbound::start(&config_for(&idp, "limits:\n  max_header_bytes: 4096\n")).await;
    let cert = ClientCert::self_signed("c");
    let huge = format!("Bearer {}", "a".repeat(5000));
    certbound
        .check(request(&[("authorization", &huge)], &cert.url_encoded()))
        .await
        .assert_invalid_token("header_too_large");
    let auth = format!(
        "Bearer {}",
        signer.sign(&claims(&idp.issuer, Some(&cert.x5t())))
    );
    let xfcc = "x".repeat(5000);
    certbound
        .check(request(
            &[("authorization", &auth), ("x-forwarded-client-cert", &xfcc)],
            &cert.url_encoded(),
        ))
        .await
        .assert_invalid_token("header_too_large");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checks_over_the_concurrency_limit_are_shed_with_503() {
    let idp = Idp::start(&[]).await;
    let secret = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(secret.path(), INTROSPECTION_CLIENT.1).unwrap();
    let yaml = format!(
        "introspection:\n  endpoint: {}\n  client_id: certbound\n  client_secret_file: {}\nlimits:\n  max_concurrent_checks: 1\n",
        idp.introspect_url(),
        secret.path().display()
    );
    let certbound = Arc::new(Certbound::start(&yaml).await);
    let cert = ClientCert::self_signed("c");
    idp.set_answer(
        "slow",
        json!({"active": true, "cnf": {"x5t#S256": cert.x5t()}}),
    );
    idp.set_delay(Duration::from_millis(1500));
    let first = {
        let certbound = Arc::clone(&certbound);
        let req = request(&[("authorization", "Bearer slow")], &cert.url_encoded());
        tokio::spawn(async move { certbound.check(req).await })
    };
    // Wait until the first check holds the only permit (it is waiting on the slow endpoint).
    while idp.introspection_hits() == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let second = certbound
        .check(request(
            &[("authorization", "Bearer slow")],
            &cert.url_encoded(),
        ))
        .await;
    second.assert_unavailable();
    assert_eq!(second.reason(), "overloaded");
    first.await.unwrap().assert_allowed();
}

fn tls_settings_yaml(pki: &Pki, idp: &Idp, with_client_ca: bool) -> String {
    let server = pki.server(&["certbound.auth.svc", "localhost"]);
    let (crt, key) = pki.write("certbound-server", &server);
    let ca = if with_client_ca {
        format!("  client_ca_file: {}\n", pki.path("ca.crt").display())
    } else {
        String::new()
    };
    format!(
        "{}tls:\n  cert_file: {}\n  key_file: {}\n{ca}",
        config_for(idp, "admin_listen: ''\n"),
        crt.display(),
        key.display()
    )
}

fn client_tls(pki: &Pki, identity: Option<&ClientCert>) -> tonic::transport::ClientTlsConfig {
    let mut tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(&pki.ca_pem))
        .domain_name("certbound.auth.svc");
    if let Some(cert) = identity {
        tls = tls.identity(tonic::transport::Identity::from_pem(
            &cert.pem,
            &cert.key_pem,
        ));
    }
    tls
}

#[tokio::test]
async fn the_grpc_listener_speaks_tls_and_requires_client_certificates_when_configured() {
    let pki = Pki::new("grpc");
    let signer = Signer::es256("k1");
    let idp = Idp::start(&[&signer]).await;
    let envoy_identity = pki.client("envoy");
    let yaml = tls_settings_yaml(&pki, &idp, true);
    let (_process, addr) = start_certbound_with(
        &yaml,
        pki.dir.path(),
        Some(client_tls(&pki, Some(&envoy_identity))),
    )
    .await;

    // Envoy's certificate: the Check is answered.
    let ch = channel(addr, Some(client_tls(&pki, Some(&envoy_identity))))
        .await
        .unwrap();
    let mut client = certbound::grpc::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient::new(ch);
    let answer = Answer::from(client.check(request(&[], "")).await.unwrap().into_inner());
    answer.assert_unauthorized("token_missing", "Bearer");

    // No client certificate, or plaintext: no Check gets through.
    let without = match channel(addr, Some(client_tls(&pki, None))).await {
        Err(_) => true,
        Ok(ch) => {
            let mut client =
                certbound::grpc::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient::new(ch);
            client.check(request(&[], "")).await.is_err()
        }
    };
    assert!(without, "a client without a certificate must be refused");
    let plaintext = match channel(addr, None).await {
        Err(_) => true,
        Ok(ch) => {
            let mut client =
                certbound::grpc::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient::new(ch);
            client.check(request(&[], "")).await.is_err()
        }
    };
    assert!(plaintext, "plaintext must be refused on a TLS listener");
}

async fn wait_for_log(process: &common::envoy::Process, needle: &str, count: usize) {
    for _ in 0..400 {
        if process.log().matches(needle).count() >= count {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!(
        "log never showed {needle:?} {count} times:\n{}",
        process.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_reloads_on_sighup_and_file_change_and_keeps_running_on_a_bad_config() {
    let pki = Pki::new("reload");
    let signer = Signer::es256("k1");
    let idp = Idp::start(&[&signer]).await;
    let base = config_for(
        &idp,
        "admin_listen: ''\nlog_format: json\nreload:\n  poll_interval_seconds: 1\n",
    );
    let (process, addr) = start_certbound(&base, pki.dir.path()).await;
    let config = pki.dir.path().join("certbound.yaml");
    let ch = channel(addr, None).await.unwrap();
    let client = certbound::grpc::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient::new(ch);
    let cert = ClientCert::self_signed("c");
    let token = signer.sign(&claims(&idp.issuer, None));
    let auth = format!("Bearer {token}");
    let check = |traceparent: &'static str| {
        let mut req = request(
            &[("authorization", &auth), ("traceparent", traceparent)],
            &cert.url_encoded(),
        );
        let http = http_mut(&mut req);
        http.headers.insert("x-request-id".into(), "req-77".into());
        let mut client = client.clone();
        async move { Answer::from(client.check(req).await.unwrap().into_inner()) }
    };
    check("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
        .await
        .assert_invalid_token("cnf_missing");

    // A file change is picked up by the watcher.
    std::fs::write(&config, format!("{base}binding:\n  mode: disabled\n")).unwrap();
    wait_for_log(&process, "configuration reloaded", 1).await;
    check("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
        .await
        .assert_allowed();

    // A bad configuration is rejected; the running one stays.
    std::fs::write(&config, format!("{base}binding:\n  mode: sometimes\n")).unwrap();
    wait_for_log(&process, "configuration reload rejected", 1).await;
    check("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
        .await
        .assert_allowed();

    // SIGHUP reloads too (here back to the original configuration).
    std::fs::write(&config, &base).unwrap();
    wait_for_log(&process, "configuration reloaded", 2).await;
    std::fs::write(&config, format!("{base}binding:\n  mode: disabled\n")).unwrap();
    let status = std::process::Command::new("kill")
        .args(["-HUP", &process.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    wait_for_log(&process, r#"trigger":"SIGHUP"#, 1).await;
    check("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
        .await
        .assert_allowed();

    // JSON log lines carry the request's identifiers; never the token or the certificate.
    let log = process.log();
    let decision = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|l| l["reason"] == "cnf_missing")
        .unwrap_or_else(|| panic!("no JSON decision line in:\n{log}"));
    assert_eq!(decision["request_id"], "req-77");
    assert_eq!(
        decision["traceparent"],
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    );
    assert!(!log.contains(&token), "the token was logged");
    assert!(!log.contains("BEGIN"), "a certificate was logged");
}

/// The test harness stops what it starts: NGINX's master and its workers are gone (and the port
/// free) once its `Process` is dropped, and after `kill()` (a crash) no worker is left listening.
#[tokio::test]
async fn the_harness_stops_a_forking_proxy_and_its_workers() {
    use common::envoy::{free_port, group_members, spawn};
    let dir = tempfile::tempdir().unwrap();
    for crash in [false, true] {
        let port = free_port();
        let config = dir.path().join("nginx.conf");
        std::fs::write(
            &config,
            format!(
                "worker_processes 2;\npid {dir}/nginx.pid;\nevents {{}}\nhttp {{\n  \
                 access_log off;\n  server {{ listen 127.0.0.1:{port}; return 204; }}\n}}\n",
                dir = dir.path().display()
            ),
        )
        .unwrap();
        let mut command = std::process::Command::new("nginx");
        command
            .arg("-p")
            .arg(dir.path())
            .args(["-e", "stderr", "-c"])
            .arg(&config)
            .args(["-g", "daemon off;"]);
        let mut nginx = spawn("nginx", command, dir.path());
        let group = nginx.id();
        let mut members = Vec::new();
        for _ in 0..200 {
            members = group_members(group);
            if members.len() == 3 && std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        assert_eq!(members.len(), 3, "master and 2 workers: {}", nginx.log());
        if crash {
            nginx.kill();
        }
        drop(nginx);
        assert_eq!(group_members(group), Vec::<u32>::new(), "crash: {crash}");
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
            "port {port} still served (crash: {crash})"
        );
    }
}
