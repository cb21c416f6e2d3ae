//! The bundled local setup (`deploy/local`) gives the outcomes the README promises.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Answer, request};

fn read(name: &str) -> String {
    std::fs::read_to_string(format!("deploy/local/{name}"))
        .unwrap()
        .trim()
        .to_string()
}

async fn check(
    checker: &certbound::check::Checker,
    token: Option<&str>,
    cert: Option<&str>,
) -> Answer {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", a.as_str())).collect();
    let cert = cert
        .map(|c| common::url_encode_pem(&read(c)))
        .unwrap_or_default();
    let access = certbound::grpc::convert::access_request(request(&headers, &cert)).unwrap();
    let decision = checker.check(&access).await;
    Answer::from(certbound::grpc::convert::check_response(
        &decision,
        Default::default(),
    ))
}

#[tokio::test]
async fn demo_token_and_certificates_give_the_documented_outcomes() {
    let settings =
        certbound::config::Settings::load("deploy/local/certbound.yaml".as_ref()).unwrap();
    let checker = certbound::server::App::build(&settings).unwrap().checker();
    checker.keys().load_all().await;
    assert!(checker.keys().all_loaded());
    let bound = read("demo-token.jwt");
    let unbound = read("demo-token-unbound.jwt");

    let allowed = check(&checker, Some(&bound), Some("demo-client.pem")).await;
    allowed.assert_allowed();
    assert_eq!(
        allowed
            .headers
            .get("x-certbound-subject")
            .map(String::as_str),
        Some("demo-user")
    );
    assert_eq!(allowed.headers_to_remove, ["authorization"]);

    check(&checker, None, Some("demo-client.pem"))
        .await
        .assert_unauthorized("token_missing", "Bearer");
    check(&checker, Some(&unbound), Some("demo-client.pem"))
        .await
        .assert_invalid_token("cnf_missing");
    check(&checker, Some(&bound), Some("demo-other-client.pem"))
        .await
        .assert_invalid_token("binding_mismatch");
    check(&checker, Some(&bound), None)
        .await
        .assert_invalid_token("cert_missing");
}

#[test]
fn demo_request_files_carry_the_demo_token_and_certificates() {
    let allow = read("requests/allow.json");
    assert!(allow.contains(&read("demo-token.jwt")));
    assert!(allow.contains(&common::url_encode_pem(&read("demo-client.pem"))));
    let wrong = read("requests/wrong-certificate.json");
    assert!(wrong.contains(&common::url_encode_pem(&read("demo-other-client.pem"))));
    assert!(read("requests/unbound-token.json").contains(&read("demo-token-unbound.jwt")));
    assert!(!read("requests/no-token.json").contains("authorization"));
    assert!(read("requests/no-certificate.json").contains(r#""certificate": """#));
}
