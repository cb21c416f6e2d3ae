//! In-process gRPC tests: certbound on port 0, a tonic client, keys served over real HTTP.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::*;
use jsonwebtoken::{Algorithm, Header};
use serde_json::json;

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
            cert: ClientCert::self_signed("client-a"),
        }
    }

    fn bound_token(&self) -> String {
        self.signer
            .sign(&claims(&self.idp.issuer, Some(&self.cert.x5t())))
    }

    async fn check(&self, headers: &[(&str, &str)], certificate: &str) -> Answer {
        self.certbound.check(request(headers, certificate)).await
    }

    async fn check_token(&self, token: &str) -> Answer {
        let auth = format!("Bearer {token}");
        self.check(&[("authorization", &auth)], &self.cert.url_encoded())
            .await
    }
}

#[tokio::test]
async fn reference_scenario_valid_token_with_matching_certificate_is_allowed() {
    let w = World::start("").await;
    let answer = w.check_token(&w.bound_token()).await;
    answer.assert_allowed();
    assert_eq!(
        answer
            .headers
            .get("x-certbound-subject")
            .map(String::as_str),
        Some("alice")
    );
    assert_eq!(
        answer
            .headers
            .get("x-certbound-client-id")
            .map(String::as_str),
        Some("client-a")
    );
    assert_eq!(
        answer.metadata.get("sub").map(String::as_str),
        Some("alice")
    );
    assert_eq!(answer.metadata.get("iss"), Some(&w.idp.issuer));
    assert_eq!(
        answer.metadata.get("client_id").map(String::as_str),
        Some("client-a")
    );
    assert_eq!(
        answer.metadata.get("scope").map(String::as_str),
        Some("read write")
    );
    assert_eq!(answer.metadata.get("x5t#S256"), Some(&w.cert.x5t()));
    assert_eq!(
        answer.metadata.get("decision").map(String::as_str),
        Some("allow")
    );
}

#[tokio::test]
async fn reference_scenario_missing_token_is_401_without_error_code() {
    let w = World::start("").await;
    w.check(&[], &w.cert.url_encoded())
        .await
        .assert_unauthorized("token_missing", "Bearer");
}

#[tokio::test]
async fn reference_scenario_invalid_token_is_401_invalid_token() {
    let w = World::start("").await;
    w.check_token("not-a-jwt")
        .await
        .assert_invalid_token("token_malformed");
}

#[tokio::test]
async fn reference_scenario_unbound_token_is_401() {
    let w = World::start("").await;
    let token = w.signer.sign(&claims(&w.idp.issuer, None));
    w.check_token(&token)
        .await
        .assert_invalid_token("cnf_missing");
}

#[tokio::test]
async fn reference_scenario_thumbprint_mismatch_is_401() {
    let w = World::start("").await;
    let other = ClientCert::self_signed("client-b");
    let auth = format!("Bearer {}", w.bound_token());
    w.check(&[("authorization", &auth)], &other.url_encoded())
        .await
        .assert_invalid_token("binding_mismatch");
}

#[tokio::test]
async fn bound_token_without_a_certificate_is_401() {
    let w = World::start("").await;
    let auth = format!("Bearer {}", w.bound_token());
    w.check(&[("authorization", &auth)], "")
        .await
        .assert_invalid_token("cert_missing");
}

#[tokio::test]
async fn rsa_and_eddsa_tokens_verify_too() {
    let es = Signer::es256("es");
    let rs = Signer::rs256("rs");
    let ed = Signer::ed25519("ed");
    let idp = Idp::start(&[&es, &rs, &ed]).await;
    let certbound = Certbound::start(&config_for(&idp, "")).await;
    let cert = ClientCert::self_signed("c");
    for signer in [&es, &rs, &ed] {
        certbound
            .check(bound_request(signer, &idp.issuer, &cert))
            .await
            .assert_allowed();
    }
}

/// What a current IdP (oidc-provider) signs with: ES512 (P-521), and EdDSA under RFC 9864's
/// fully specified name `Ed25519`; by default and when pinned.
#[tokio::test]
async fn es512_and_ed25519_tokens_verify_by_default_and_when_pinned() {
    let p521 = Signer::es512("p521");
    let ed = Signer::ed25519_fully_specified("ed");
    let idp = Idp::start(&[&p521, &ed]).await;
    let cert = ClientCert::self_signed("c");
    for extra in ["", "    algorithms: [ES512, Ed25519, EdDSA]\n"] {
        let certbound = Certbound::start(&config_for(&idp, extra)).await;
        for signer in [&p521, &ed] {
            certbound
                .check(bound_request(signer, &idp.issuer, &cert))
                .await
                .assert_allowed();
        }
    }
    let only_es256 = Certbound::start(&config_for(&idp, "    algorithms: [ES256]\n")).await;
    only_es256
        .check(bound_request(&p521, &idp.issuer, &cert))
        .await
        .assert_invalid_token("alg_not_allowed");
}

/// An algorithm refusal names what the token claimed (alg, kid, issuer) in the decision's facts,
/// which the decision log and `explain` print.
#[tokio::test]
async fn alg_not_allowed_names_the_algorithm_kid_and_issuer() {
    let p521 = Signer::es512("p521");
    let idp = Idp::start(&[&p521]).await;
    let certbound = Certbound::start(&config_for(&idp, "    algorithms: [ES256]\n")).await;
    let cert = ClientCert::self_signed("c");
    let access =
        certbound::grpc::convert::access_request(bound_request(&p521, &idp.issuer, &cert), None)
            .unwrap();
    let decision = certbound.checker().check(&access).await;
    assert_eq!(decision.reason(), "alg_not_allowed");
    let facts = &decision.facts;
    assert_eq!(facts.alg.as_deref(), Some("ES512"));
    assert_eq!(facts.kid.as_deref(), Some("p521"));
    assert_eq!(facts.issuer.as_deref(), Some(idp.issuer.as_str()));
}

#[tokio::test]
async fn remove_authorization_strips_it_and_absent_claims_clear_their_headers() {
    let w = World::start(
        "upstream:\n  claim_headers: {sub: x-sub, email: x-email}\n  remove_authorization: true\n",
    )
    .await;
    let answer = w.check_token(&w.bound_token()).await;
    answer.assert_allowed();
    assert_eq!(
        answer.headers.get("x-sub").map(String::as_str),
        Some("alice")
    );
    assert!(
        answer
            .headers_to_remove
            .contains(&"authorization".to_string())
    );
    // The DPoP proof goes with the token (an MCP server behind certbound saw it: tests/mcp_e2e.rs).
    assert!(answer.headers_to_remove.contains(&"dpop".to_string()));
    // No email claim: a client-supplied x-email must not reach the upstream.
    assert!(answer.headers_to_remove.contains(&"x-email".to_string()));
}

#[tokio::test]
async fn when_present_mode_lets_unbound_tokens_through_but_checks_bound_ones() {
    let w = World::start("binding:\n  mode: when_present\n").await;
    let unbound = w.signer.sign(&claims(&w.idp.issuer, None));
    w.check_token(&unbound).await.assert_allowed();
    let bound_elsewhere = w.signer.sign(&claims(
        &w.idp.issuer,
        Some(&ClientCert::self_signed("x").x5t()),
    ));
    w.check_token(&bound_elsewhere)
        .await
        .assert_invalid_token("binding_mismatch");
}

#[tokio::test]
async fn xfcc_source_reads_the_last_element() {
    let w = World::start("certificate:\n  sources: [xfcc]\n").await;
    let auth = format!("Bearer {}", w.bound_token());
    let other = ClientCert::self_signed("other");
    let xfcc = format!(
        "By=spiffe://a;Cert=\"{}\",By=spiffe://b;Cert=\"{}\"",
        other.url_encoded(),
        w.cert.url_encoded()
    );
    // The peer certificate is ignored: only xfcc is configured.
    w.check(
        &[("authorization", &auth), ("x-forwarded-client-cert", &xfcc)],
        "",
    )
    .await
    .assert_allowed();
    let swapped = format!("Cert=\"{}\"", other.url_encoded());
    w.check(
        &[
            ("authorization", &auth),
            ("x-forwarded-client-cert", &swapped),
        ],
        &w.cert.url_encoded(),
    )
    .await
    .assert_invalid_token("binding_mismatch");
}

#[tokio::test]
async fn xfcc_is_not_read_unless_configured() {
    let w = World::start("").await;
    let auth = format!("Bearer {}", w.bound_token());
    let spoofed = format!("Cert=\"{}\"", w.cert.url_encoded());
    w.check(
        &[
            ("authorization", &auth),
            ("x-forwarded-client-cert", &spoofed),
        ],
        "",
    )
    .await
    .assert_invalid_token("cert_missing");
}

#[tokio::test]
async fn raw_header_map_is_read_when_headers_are_empty() {
    let w = World::start("").await;
    let auth = format!("Bearer {}", w.bound_token());
    w.certbound
        .check(raw_request(
            &[("authorization", auth.as_bytes())],
            &w.cert.url_encoded(),
        ))
        .await
        .assert_allowed();
}

#[tokio::test]
async fn unknown_issuer_is_401() {
    let w = World::start("").await;
    let token = w
        .signer
        .sign(&claims("https://evil.test", Some(&w.cert.x5t())));
    w.check_token(&token)
        .await
        .assert_invalid_token("issuer_unknown");
}

/// Every bad input gets the exact 401 and a stable reason; none is allowed.
#[tokio::test]
async fn bad_inputs_are_denied_with_their_reason() {
    let w = World::start("").await;
    let iss = w.idp.issuer.clone();
    let x5t = w.cert.x5t();
    let cert = w.cert.url_encoded();
    let now = now();
    let with = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut c = claims(&iss, Some(&x5t));
        f(&mut c);
        w.signer.sign(&c)
    };
    let header_token = |header: serde_json::Value| {
        let body = URL_SAFE_NO_PAD.encode(claims(&iss, Some(&x5t)).to_string());
        format!(
            "{}.{}.c2lnbmF0dXJl",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            body
        )
    };
    let other_signer = Signer::es256("k1");
    let mut typ_header = Header::new(Algorithm::ES256);
    typ_header.kid = Some("k1".into());
    typ_header.typ = Some("JWT".into());
    let bound = w.bound_token();

    // (case, authorization header or None, certificate, expected reason)
    let cases: Vec<(&str, Option<String>, String, &str)> = vec![
        ("no header", None, cert.clone(), "token_missing"),
        (
            "empty header",
            Some(String::new()),
            cert.clone(),
            "token_missing",
        ),
        (
            "basic scheme",
            Some("Basic dXNlcjpwYXNz".into()),
            cert.clone(),
            "token_missing",
        ),
        (
            "bearer without token",
            Some("Bearer".into()),
            cert.clone(),
            "token_missing",
        ),
        (
            "three parts",
            Some(format!("Bearer {bound} extra")),
            cert.clone(),
            "token_missing",
        ),
        (
            "two headers joined",
            Some(format!("Bearer {bound},Bearer {bound}")),
            cert.clone(),
            "authorization_duplicate",
        ),
        (
            "not a jwt",
            Some("Bearer abc".into()),
            cert.clone(),
            "token_malformed",
        ),
        (
            "four parts",
            Some(format!("Bearer {bound}.x")),
            cert.clone(),
            "token_malformed",
        ),
        (
            "garbage base64",
            Some("Bearer !!.!!.!!".into()),
            cert.clone(),
            "token_malformed",
        ),
        (
            "huge token",
            Some(format!("Bearer {}", "a".repeat(17 * 1024))),
            cert.clone(),
            "token_too_large",
        ),
        (
            "alg none",
            Some(format!("Bearer {}", header_token(json!({"alg": "none"})))),
            cert.clone(),
            "alg_not_allowed",
        ),
        (
            "alg NONE",
            Some(format!("Bearer {}", header_token(json!({"alg": "NONE"})))),
            cert.clone(),
            "alg_not_allowed",
        ),
        (
            "alg HS256",
            Some(format!(
                "Bearer {}",
                header_token(json!({"alg": "HS256", "kid": "k1"}))
            )),
            cert.clone(),
            "alg_not_allowed",
        ),
        (
            "unknown alg",
            Some(format!("Bearer {}", header_token(json!({"alg": "ES999"})))),
            cert.clone(),
            "alg_not_allowed",
        ),
        (
            "crit header",
            Some(format!(
                "Bearer {}",
                header_token(json!({"alg": "ES256", "crit": ["x"], "x": 1}))
            )),
            cert.clone(),
            "crit_unsupported",
        ),
        (
            "forged signature",
            Some(format!(
                "Bearer {}",
                other_signer.sign(&claims(&iss, Some(&x5t)))
            )),
            cert.clone(),
            "signature_invalid",
        ),
        (
            "unknown kid",
            Some(format!(
                "Bearer {}",
                Signer::es256("k9").sign(&claims(&iss, Some(&x5t)))
            )),
            cert.clone(),
            "key_unknown",
        ),
        (
            "expired",
            Some(format!("Bearer {}", with(&|c| c["exp"] = json!(now - 120)))),
            cert.clone(),
            "token_expired",
        ),
        (
            "not yet valid",
            Some(format!(
                "Bearer {}",
                with(&|c| c["nbf"] = json!(now + 3600))
            )),
            cert.clone(),
            "token_not_yet_valid",
        ),
        (
            "issued in the future",
            Some(format!(
                "Bearer {}",
                with(&|c| c["iat"] = json!(now + 3600))
            )),
            cert.clone(),
            "token_issued_in_future",
        ),
        (
            "no exp",
            Some(format!(
                "Bearer {}",
                with(&|c| {
                    c.as_object_mut().unwrap().remove("exp");
                })
            )),
            cert.clone(),
            "claims_invalid",
        ),
        (
            "string exp",
            Some(format!(
                "Bearer {}",
                with(&|c| c["exp"] = json!("tomorrow"))
            )),
            cert.clone(),
            "claims_invalid",
        ),
        (
            "no iss",
            Some(format!(
                "Bearer {}",
                with(&|c| {
                    c.as_object_mut().unwrap().remove("iss");
                })
            )),
            cert.clone(),
            "claims_invalid",
        ),
        (
            "iss with trailing slash",
            Some(format!(
                "Bearer {}",
                with(&|c| c["iss"] = json!(format!("{iss}/")))
            )),
            cert.clone(),
            "issuer_unknown",
        ),
        (
            "wrong audience",
            Some(format!(
                "Bearer {}",
                with(&|c| c["aud"] = json!("https://other.test"))
            )),
            cert.clone(),
            "audience_mismatch",
        ),
        (
            "no audience",
            Some(format!(
                "Bearer {}",
                with(&|c| {
                    c.as_object_mut().unwrap().remove("aud");
                })
            )),
            cert.clone(),
            "audience_mismatch",
        ),
        (
            "unbound",
            Some(format!(
                "Bearer {}",
                with(&|c| {
                    c.as_object_mut().unwrap().remove("cnf");
                })
            )),
            cert.clone(),
            "cnf_missing",
        ),
        (
            "cnf null",
            Some(format!("Bearer {}", with(&|c| c["cnf"] = json!(null)))),
            cert.clone(),
            "cnf_missing",
        ),
        (
            "cnf array",
            Some(format!(
                "Bearer {}",
                with(&|c| c["cnf"] = json!([x5t.clone()]))
            )),
            cert.clone(),
            "cnf_invalid",
        ),
        (
            "cnf non-JSON string",
            Some(format!("Bearer {}", with(&|c| c["cnf"] = json!("x5t")))),
            cert.clone(),
            "cnf_invalid",
        ),
        (
            "cnf jkt only",
            Some(format!(
                "Bearer {}",
                with(&|c| c["cnf"] = json!({"jkt": "abc"}))
            )),
            cert.clone(),
            "dpop_downgrade",
        ),
        (
            "x5t empty",
            Some(format!(
                "Bearer {}",
                with(&|c| c["cnf"] = json!({"x5t#S256": ""}))
            )),
            cert.clone(),
            "x5t_missing",
        ),
        (
            "x5t padded",
            Some(format!(
                "Bearer {}",
                with(&|c| c["cnf"] = json!({"x5t#S256": format!("{x5t}=")}))
            )),
            cert.clone(),
            "binding_mismatch",
        ),
        (
            "x5t uppercase",
            Some(format!(
                "Bearer {}",
                with(&|c| c["cnf"] = json!({"x5t#S256": x5t.to_uppercase()}))
            )),
            cert.clone(),
            "binding_mismatch",
        ),
        (
            "x5t of empty input",
            Some(format!(
                "Bearer {}",
                with(&|c| c["cnf"] =
                    json!({"x5t#S256": "47DEQpj8HBSa-_TImW-5JCeuQeRkm5NMpJWZG3hSuFU"}))
            )),
            String::new(),
            "cert_missing",
        ),
        (
            "no certificate",
            Some(format!("Bearer {bound}")),
            String::new(),
            "cert_missing",
        ),
        (
            "blank certificate",
            Some(format!("Bearer {bound}")),
            "  ".into(),
            "cert_missing",
        ),
        (
            "garbage certificate",
            Some(format!("Bearer {bound}")),
            "garbage".into(),
            "cert_invalid",
        ),
        (
            "base64 not x509",
            Some(format!("Bearer {bound}")),
            url_encode_pem(
                "-----BEGIN CERTIFICATE-----\nAQIDBAUGBwg=\n-----END CERTIFICATE-----\n",
            ),
            "cert_invalid",
        ),
        (
            "certificate url-encoded twice",
            Some(format!("Bearer {bound}")),
            cert.replace('%', "%25"),
            "cert_invalid",
        ),
        (
            "64 KiB certificate",
            Some(format!("Bearer {bound}")),
            "A".repeat(64 * 1024),
            "cert_invalid",
        ),
    ];
    assert!(cases.len() >= 25);
    for (name, authorization, certificate, reason) in cases {
        let headers: Vec<(&str, &str)> = authorization
            .as_deref()
            .map(|a| vec![("authorization", a)])
            .unwrap_or_default();
        let answer = w.check(&headers, &certificate).await;
        let challenge = if reason == "token_missing" {
            "Bearer"
        } else {
            r#"Bearer error="invalid_token""#
        };
        assert_eq!(answer.reason(), reason, "case {name:?}: {answer:?}");
        answer.assert_unauthorized(reason, challenge);
    }
    // typ enforcement is per issuer; a JWT-typed token passes here and the same suite
    // with require_typ is covered in the unit tests.
    let typed = w.signer.sign_with(typ_header, &claims(&iss, Some(&x5t)));
    w.check_token(&typed).await.assert_allowed();
}

#[tokio::test]
async fn check_request_without_http_attributes_is_a_401_deny() {
    let w = World::start("").await;
    let empty = w.certbound.check(Default::default()).await;
    empty.assert_unauthorized("request_invalid", "Bearer");
}

#[tokio::test]
async fn duplicate_raw_authorization_headers_are_denied() {
    let w = World::start("").await;
    let auth = format!("Bearer {}", w.bound_token());
    w.certbound
        .check(raw_request(
            &[
                ("authorization", auth.as_bytes()),
                ("authorization", auth.as_bytes()),
            ],
            &w.cert.url_encoded(),
        ))
        .await
        .assert_invalid_token("authorization_duplicate");
}

#[tokio::test]
async fn keys_that_cannot_be_loaded_give_503_and_not_serving() {
    let signer = Signer::es256("k1");
    let idp = Idp::start(&[&signer]).await;
    idp.set_status(500);
    let certbound = Certbound::start_unready(&config_for(&idp, "")).await;
    assert_eq!(
        certbound.health("").await,
        2,
        "NOT_SERVING while keys are missing"
    );
    assert_eq!(
        certbound
            .health("envoy.service.auth.v3.Authorization")
            .await,
        2
    );
    assert_eq!(
        certbound.health("liveness").await,
        1,
        "alive while not ready"
    );
    let cert = ClientCert::self_signed("c");
    let bound = bound_request(&signer, &idp.issuer, &cert);
    let answer = certbound.check(bound.clone()).await;
    answer.assert_unavailable();
    assert_eq!(answer.reason(), "keys_unavailable");
    idp.set_status(200);
    certbound
        .wait_serving(std::time::Duration::from_secs(10))
        .await;
    certbound.check(bound).await.assert_allowed();
}

#[tokio::test]
async fn health_reports_serving_for_both_names_once_keys_are_loaded() {
    let w = World::start("").await;
    assert_eq!(w.certbound.health("").await, 1);
    assert_eq!(
        w.certbound
            .health("envoy.service.auth.v3.Authorization")
            .await,
        1
    );
}

#[tokio::test]
async fn keys_via_oidc_discovery() {
    let signer = Signer::es256("k1");
    let idp = Idp::start(&[&signer]).await;
    let yaml = format!(
        "issuers:\n  - issuer: {}\n    audiences: [{AUDIENCE}]\n    algorithms: [ES256]\n",
        idp.issuer
    );
    let certbound = Certbound::start(&yaml).await;
    assert_eq!(idp.discovery_hits(), 1);
    let cert = ClientCert::self_signed("c");
    certbound
        .check(bound_request(&signer, &idp.issuer, &cert))
        .await
        .assert_allowed();
}

#[tokio::test]
async fn unknown_kid_triggers_one_refetch_and_then_verifies() {
    let old = Signer::es256("old");
    let new = Signer::es256("new");
    let idp = Idp::start(&[&old]).await;
    let certbound = Certbound::start(&config_for(&idp, "")).await;
    let hits = idp.jwks_hits();
    idp.set_keys(&[&old, &new]);
    let cert = ClientCert::self_signed("c");
    let auth = format!(
        "Bearer {}",
        new.sign(&claims(&idp.issuer, Some(&cert.x5t())))
    );
    certbound
        .check(request(&[("authorization", &auth)], &cert.url_encoded()))
        .await
        .assert_allowed();
    assert_eq!(idp.jwks_hits(), hits + 1);
    // A further unknown kid within the refetch interval does not fetch again.
    let stranger = Signer::es256("stranger");
    let auth = format!(
        "Bearer {}",
        stranger.sign(&claims(&idp.issuer, Some(&cert.x5t())))
    );
    certbound
        .check(request(&[("authorization", &auth)], &cert.url_encoded()))
        .await
        .assert_invalid_token("key_unknown");
    assert_eq!(idp.jwks_hits(), hits + 1);
}

#[tokio::test]
async fn reflection_lists_the_three_services_over_v1_and_v1alpha() {
    use tokio_stream::StreamExt;
    let w = World::start("").await;

    let mut v1 = tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient::new(
        w.certbound.channel.clone(),
    );
    let req = tonic_reflection::pb::v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            tonic_reflection::pb::v1::server_reflection_request::MessageRequest::ListServices(
                String::new(),
            ),
        ),
    };
    let mut stream = v1
        .server_reflection_info(tokio_stream::iter([req]))
        .await
        .unwrap()
        .into_inner();
    let response = stream.next().await.unwrap().unwrap();
    let Some(
        tonic_reflection::pb::v1::server_reflection_response::MessageResponse::ListServicesResponse(
            list,
        ),
    ) = response.message_response
    else {
        panic!("list expected");
    };
    let mut names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    names.sort();
    assert!(
        names.contains(&"envoy.service.auth.v3.Authorization".to_string()),
        "{names:?}"
    );
    assert!(
        names.contains(&"grpc.health.v1.Health".to_string()),
        "{names:?}"
    );
    assert!(
        names.contains(&"grpc.reflection.v1.ServerReflection".to_string()),
        "{names:?}"
    );

    let mut v1alpha =
        tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient::new(
            w.certbound.channel.clone(),
        );
    let req = tonic_reflection::pb::v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest::FileContainingSymbol(
                "envoy.service.auth.v3.Authorization".into(),
            ),
        ),
    };
    let mut stream = v1alpha
        .server_reflection_info(tokio_stream::iter([req]))
        .await
        .unwrap()
        .into_inner();
    let response = stream.next().await.unwrap().unwrap();
    assert!(
        matches!(
            response.message_response,
            Some(tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse::FileDescriptorResponse(_))
        ),
        "{response:?}"
    );
}

#[tokio::test]
async fn graceful_stop_drains_and_stops() {
    let w = World::start("").await;
    let token = w.bound_token();
    w.check_token(&token).await.assert_allowed();
    w.certbound.stop().await;
}
