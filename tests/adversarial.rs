//! Adversarial conformance suite: a hostile corpus through the real gRPC API, each case with
//! its exact expected outcome (status and reason). The suite fails on any wrong allow.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use certbound::grpc::pb::envoy::service::auth::v3::CheckRequest;
use common::paths::{CANONICAL_ADMIN_PATHS, PATHS_TO_ADMIN, UNSAFE_PATHS};
use common::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

/// What a case expects: allow, or a deny (401) with this reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    Allow,
    Deny(&'static str),
}

use Expect::{Allow, Deny};

struct Case {
    name: String,
    request: CheckRequest,
    expect: Expect,
}

fn case(name: impl Into<String>, request: CheckRequest, expect: Expect) -> Case {
    Case {
        name: name.into(),
        request,
        expect,
    }
}

/// A certificate whose thumbprint uses `-` or `_`, so that standard base64 differs from base64url.
fn cert_with_url_safe_chars() -> ClientCert {
    loop {
        let cert = ClientCert::self_signed("adv");
        if cert.x5t().contains(['-', '_']) && cert.pem.contains('+') {
            return cert;
        }
    }
}

fn b64(value: &Value) -> String {
    URL_SAFE_NO_PAD.encode(value.to_string())
}

/// A token with an arbitrary header and claims, signed with `key` (or a junk signature).
fn raw_token(header: &Value, claims: &Value, key: Option<(&EncodingKey, Algorithm)>) -> String {
    let input = format!("{}.{}", b64(header), b64(claims));
    let signature = match key {
        Some((key, alg)) => jsonwebtoken::crypto::sign(input.as_bytes(), key, alg).unwrap(),
        None => "c2lnbmF0dXJl".to_string(),
    };
    format!("{input}.{signature}")
}

/// Counts requests to URLs a token names in `jku` / `x5u`: certbound must never fetch them.
async fn honeypot() -> (String, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&hits);
    let app = axum::Router::new().fallback(move || {
        let counter = Arc::clone(&counter);
        async move {
            counter.fetch_add(1, Ordering::SeqCst);
            "{}"
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, hits)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_inputs_get_exactly_the_expected_answer_and_no_wrong_allow() {
    let es = Signer::es256("es");
    let rsa = Signer::rs256("rsa");
    let ed = Signer::ed25519("ed");
    let idp = Idp::start(&[&es, &rsa, &ed]).await;
    let (trap, trap_hits) = honeypot().await;
    let peer = Certbound::start(&config_for(&idp, "leeway_seconds: 60\n")).await;
    let typed = Certbound::start(&format!(
        "issuers:\n  - issuer: {}\n    audiences: [{AUDIENCE}]\n    jwks_uri: {}\n    require_typ: at+jwt\n",
        idp.issuer,
        idp.jwks_uri()
    ))
    .await;
    let via_xfcc = Certbound::start(&config_for(&idp, "certificate:\n  sources: [xfcc]\n")).await;

    let cert = cert_with_url_safe_chars();
    let x5t = cert.x5t();
    let other = ClientCert::self_signed("other");
    let pem = cert.url_encoded();
    let iss = idp.issuer.clone();
    let now = now();
    let base = || claims(&iss, Some(&x5t));
    let with = |f: &dyn Fn(&mut Value)| {
        let mut c = base();
        f(&mut c);
        es.sign(&c)
    };
    let bearer = |t: &str| format!("Bearer {t}");
    let req =
        |token: &str, cert: &str| request(&[("authorization", &format!("Bearer {token}"))], cert);
    let es_header = |extra: Value| {
        let mut h = json!({"alg": "ES256", "kid": "es"});
        h.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        h
    };
    let attacker = Signer::es256("es");
    let good = es.sign(&base());

    let mut cases: Vec<Case> = Vec::new();
    // --- algorithms and headers (RFC 8725) ---
    for alg in ["none", "None", "NONE", "nOnE"] {
        cases.push(case(
            format!("alg {alg}"),
            req(&raw_token(&json!({"alg": alg}), &base(), None), &pem),
            Deny("alg_not_allowed"),
        ));
    }
    let public_pem = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .unwrap()
        .public_key_pem();
    for alg in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
        let key = EncodingKey::from_secret(public_pem.as_bytes()).unwrap();
        let header = json!({"alg": format!("{alg:?}"), "kid": "es"});
        cases.push(case(
            format!("{alg:?} signed with public key bytes"),
            req(&raw_token(&header, &base(), Some((&key, alg))), &pem),
            Deny("alg_not_allowed"),
        ));
    }
    cases.push(case(
        "unknown alg",
        req(
            &raw_token(&json!({"alg": "ES999", "kid": "es"}), &base(), None),
            &pem,
        ),
        Deny("alg_not_allowed"),
    ));
    cases.push(case(
        "alg not a string",
        req(
            &raw_token(&json!({"alg": 256, "kid": "es"}), &base(), None),
            &pem,
        ),
        Deny("token_malformed"),
    ));
    let mut h = Header::new(Algorithm::RS256);
    h.kid = Some("es".into());
    cases.push(case(
        "RS256 token, kid of an EC key",
        req(&rsa.sign_with(h, &base()), &pem),
        Deny("key_type_mismatch"),
    ));
    let mut h = Header::new(Algorithm::EdDSA);
    h.kid = Some("rsa".into());
    cases.push(case(
        "EdDSA token, kid of an RSA key",
        req(&ed.sign_with(h, &base()), &pem),
        Deny("key_type_mismatch"),
    ));
    cases.push(case(
        "kid missing, several keys, genuine",
        req(&es.sign_with(Header::new(Algorithm::ES256), &base()), &pem),
        Allow,
    ));
    cases.push(case(
        "kid missing, forged",
        req(
            &attacker.sign_with(Header::new(Algorithm::ES256), &base()),
            &pem,
        ),
        Deny("signature_invalid"),
    ));
    cases.push(case(
        "kid unknown",
        req(&Signer::es256("nope").sign(&base()), &pem),
        Deny("key_unknown"),
    ));
    let attacker_key = || {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).unwrap()
    };
    let k = attacker_key();
    cases.push(case(
        "jku to an attacker JWKS",
        req(
            &raw_token(
                &es_header(json!({"jku": format!("{trap}/jwks")})),
                &base(),
                Some((&k, Algorithm::ES256)),
            ),
            &pem,
        ),
        Deny("signature_invalid"),
    ));
    cases.push(case(
        "x5u to an attacker certificate",
        req(
            &raw_token(
                &es_header(json!({"x5u": format!("{trap}/cert")})),
                &base(),
                Some((&k, Algorithm::ES256)),
            ),
            &pem,
        ),
        Deny("signature_invalid"),
    ));
    cases.push(case(
        "embedded jwk of the attacker",
        req(
            &raw_token(
                &es_header(json!({"jwk": attacker.jwk})),
                &base(),
                Some((&k, Algorithm::ES256)),
            ),
            &pem,
        ),
        Deny("signature_invalid"),
    ));
    cases.push(case(
        "unknown crit",
        req(
            &raw_token(
                &es_header(json!({"crit": ["exp"], "exp": 1})),
                &base(),
                None,
            ),
            &pem,
        ),
        Deny("crit_unsupported"),
    ));
    cases.push(case(
        "empty crit",
        req(
            &raw_token(&es_header(json!({"crit": []})), &base(), None),
            &pem,
        ),
        Deny("crit_unsupported"),
    ));
    cases.push(case(
        "kid not a string",
        req(
            &raw_token(&json!({"alg": "ES256", "kid": 7}), &base(), None),
            &pem,
        ),
        Deny("token_malformed"),
    ));
    cases.push(case(
        "header not JSON",
        req(
            &format!("{}.{}.c2ln", URL_SAFE_NO_PAD.encode("nope"), b64(&base())),
            &pem,
        ),
        Deny("token_malformed"),
    ));
    cases.push(case(
        "padded base64 segments",
        req(&format!("{}=", good), &pem),
        Deny("signature_invalid"),
    ));
    cases.push(case(
        "empty signature",
        req(
            &raw_token(&es_header(json!({})), &base(), None)
                .rsplit_once('.')
                .map(|(a, _)| format!("{a}."))
                .unwrap(),
            &pem,
        ),
        Deny("token_malformed"),
    ));
    // --- time claims at and around the leeway edge (60 s) ---
    cases.push(case(
        "exp just inside leeway",
        req(&with(&|c| c["exp"] = json!(now - 50)), &pem),
        Allow,
    ));
    cases.push(case(
        "exp past leeway",
        req(&with(&|c| c["exp"] = json!(now - 70)), &pem),
        Deny("token_expired"),
    ));
    cases.push(case(
        "exp long ago",
        req(&with(&|c| c["exp"] = json!(0)), &pem),
        Deny("token_expired"),
    ));
    cases.push(case(
        "exp as string",
        req(&with(&|c| c["exp"] = json!(format!("{}", now + 600))), &pem),
        Deny("claims_invalid"),
    ));
    cases.push(case(
        "exp null",
        req(&with(&|c| c["exp"] = Value::Null), &pem),
        Deny("claims_invalid"),
    ));
    cases.push(case(
        "exp float",
        req(&with(&|c| c["exp"] = json!(now as f64 + 600.5)), &pem),
        Allow,
    ));
    cases.push(case(
        "exp missing",
        req(
            &with(&|c| {
                c.as_object_mut().unwrap().remove("exp");
            }),
            &pem,
        ),
        Deny("claims_invalid"),
    ));
    cases.push(case(
        "nbf inside leeway",
        req(&with(&|c| c["nbf"] = json!(now + 50)), &pem),
        Allow,
    ));
    cases.push(case(
        "nbf past leeway",
        req(&with(&|c| c["nbf"] = json!(now + 70)), &pem),
        Deny("token_not_yet_valid"),
    ));
    cases.push(case(
        "nbf as string",
        req(&with(&|c| c["nbf"] = json!("soon")), &pem),
        Deny("claims_invalid"),
    ));
    cases.push(case(
        "iat inside leeway",
        req(&with(&|c| c["iat"] = json!(now + 50)), &pem),
        Allow,
    ));
    cases.push(case(
        "iat past leeway",
        req(&with(&|c| c["iat"] = json!(now + 70)), &pem),
        Deny("token_issued_in_future"),
    ));
    // --- audience and issuer ---
    cases.push(case(
        "aud array containing ours",
        req(&with(&|c| c["aud"] = json!(["x", AUDIENCE])), &pem),
        Allow,
    ));
    cases.push(case(
        "aud string",
        req(&with(&|c| c["aud"] = json!(AUDIENCE)), &pem),
        Allow,
    ));
    cases.push(case(
        "aud missing",
        req(
            &with(&|c| {
                c.as_object_mut().unwrap().remove("aud");
            }),
            &pem,
        ),
        Deny("audience_mismatch"),
    ));
    cases.push(case(
        "aud array without ours",
        req(&with(&|c| c["aud"] = json!(["x", "y"])), &pem),
        Deny("audience_mismatch"),
    ));
    cases.push(case(
        "aud number",
        req(&with(&|c| c["aud"] = json!(1)), &pem),
        Deny("audience_mismatch"),
    ));
    cases.push(case(
        "aud prefix of ours",
        req(
            &with(&|c| c["aud"] = json!(&AUDIENCE[..AUDIENCE.len() - 1])),
            &pem,
        ),
        Deny("audience_mismatch"),
    ));
    cases.push(case(
        "iss with trailing slash",
        req(&with(&|c| c["iss"] = json!(format!("{iss}/"))), &pem),
        Deny("issuer_unknown"),
    ));
    cases.push(case(
        "iss in upper case",
        req(&with(&|c| c["iss"] = json!(iss.to_uppercase())), &pem),
        Deny("issuer_unknown"),
    ));
    cases.push(case(
        "iss missing",
        req(
            &with(&|c| {
                c.as_object_mut().unwrap().remove("iss");
            }),
            &pem,
        ),
        Deny("claims_invalid"),
    ));
    cases.push(case(
        "iss not a string",
        req(&with(&|c| c["iss"] = json!([iss.clone()])), &pem),
        Deny("claims_invalid"),
    ));
    cases.push(case(
        "claims not an object",
        req(
            &raw_token(&es_header(json!({})), &json!([1, 2]), None),
            &pem,
        ),
        Deny("token_malformed"),
    ));
    // --- cnf (RFC 8705 §3.1) ---
    let cnf = |v: Value| with(&move |c| c["cnf"] = v.clone());
    cases.push(case(
        "cnf missing",
        req(
            &with(&|c| {
                c.as_object_mut().unwrap().remove("cnf");
            }),
            &pem,
        ),
        Deny("cnf_missing"),
    ));
    cases.push(case(
        "cnf null",
        req(&cnf(Value::Null), &pem),
        Deny("cnf_missing"),
    ));
    cases.push(case(
        "cnf array",
        req(&cnf(json!([x5t.clone()])), &pem),
        Deny("cnf_invalid"),
    ));
    cases.push(case(
        "cnf JSON string",
        req(
            &cnf(json!(json!({"x5t#S256": x5t.clone()}).to_string())),
            &pem,
        ),
        Allow,
    ));
    cases.push(case(
        "cnf non-JSON string",
        req(&cnf(json!(x5t.clone())), &pem),
        Deny("cnf_invalid"),
    ));
    cases.push(case(
        "cnf string of an array",
        req(&cnf(json!("[1]")), &pem),
        Deny("cnf_invalid"),
    ));
    cases.push(case(
        "cnf number",
        req(&cnf(json!(5)), &pem),
        Deny("cnf_invalid"),
    ));
    cases.push(case(
        "x5t#S256 empty",
        req(&cnf(json!({"x5t#S256": ""})), &pem),
        Deny("x5t_missing"),
    ));
    cases.push(case(
        "x5t#S256 number",
        req(&cnf(json!({"x5t#S256": 1})), &pem),
        Deny("x5t_missing"),
    ));
    cases.push(case(
        "jkt only",
        req(&cnf(json!({"jkt": "abc"})), &pem),
        Deny("dpop_downgrade"),
    ));
    cases.push(case(
        "x5t (SHA-1 name) only",
        req(&cnf(json!({"x5t": x5t.clone()})), &pem),
        Deny("cnf_unverified"),
    ));
    cases.push(case(
        "x5t#S256 padded",
        req(&cnf(json!({"x5t#S256": format!("{x5t}=")})), &pem),
        Deny("binding_mismatch"),
    ));
    let standard = STANDARD.encode(URL_SAFE_NO_PAD.decode(&x5t).unwrap());
    cases.push(case(
        "x5t#S256 standard base64",
        req(
            &cnf(json!({"x5t#S256": standard.trim_end_matches('=')})),
            &pem,
        ),
        Deny("binding_mismatch"),
    ));
    cases.push(case(
        "x5t#S256 upper case",
        req(&cnf(json!({"x5t#S256": x5t.to_uppercase()})), &pem),
        Deny("binding_mismatch"),
    ));
    cases.push(case(
        "x5t#S256 with whitespace",
        req(&cnf(json!({"x5t#S256": format!(" {x5t}")})), &pem),
        Deny("binding_mismatch"),
    ));
    cases.push(case(
        "x5t#S256 hex",
        req(&cnf(json!({"x5t#S256": hex(&cert.der)})), &pem),
        Deny("binding_mismatch"),
    ));
    cases.push(case(
        "x5t#S256 of another certificate",
        req(&cnf(json!({"x5t#S256": other.x5t()})), &pem),
        Deny("binding_mismatch"),
    ));
    cases.push(case(
        "x5t#S256 of zero bytes, no certificate",
        req(
            &cnf(json!({"x5t#S256": "47DEQpj8HBSa-_TImW-5JCeuQeRkm5NMpJWZG3hSuFU"})),
            "",
        ),
        Deny("cert_missing"),
    ));
    // --- certificates ---
    cases.push(case("no certificate", req(&good, ""), Deny("cert_missing")));
    cases.push(case(
        "whitespace certificate",
        req(&good, " %0A "),
        Deny("cert_invalid"),
    ));
    cases.push(case(
        "blank certificate",
        req(&good, "   "),
        Deny("cert_missing"),
    ));
    cases.push(case(
        "certificate URL-encoded twice",
        req(&good, &pem.replace('%', "%25")),
        Deny("cert_invalid"),
    ));
    cases.push(case("raw PEM with +", req(&good, &cert.pem), Allow));
    let chain_leaf_first = format!("{}{}", cert.pem, other.pem);
    let chain_leaf_last = format!("{}{}", other.pem, cert.pem);
    cases.push(case(
        "chain, leaf first",
        req(&good, &url_encode_pem(&chain_leaf_first)),
        Allow,
    ));
    cases.push(case(
        "chain, leaf last",
        req(&good, &url_encode_pem(&chain_leaf_last)),
        Deny("binding_mismatch"),
    ));
    cases.push(case(
        "PEM with trailing garbage",
        req(&good, &url_encode_pem(&format!("{}garbage!!", cert.pem))),
        Allow,
    ));
    cases.push(case(
        "PEM without END",
        req(
            &good,
            &url_encode_pem(cert.pem.split("-----END").next().unwrap()),
        ),
        Deny("cert_invalid"),
    ));
    let not_x509 = format!(
        "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
        STANDARD.encode([7u8; 300])
    );
    cases.push(case(
        "DER that is not X.509",
        req(&good, &url_encode_pem(&not_x509)),
        Deny("cert_invalid"),
    ));
    cases.push(case(
        "64 KiB of base64",
        req(&good, &"A".repeat(64 * 1024)),
        Deny("cert_invalid"),
    ));
    cases.push(case(
        "certificate over the header limit",
        req(&good, &"A".repeat(65 * 1024)),
        Deny("header_too_large"),
    ));
    let self_signed = ClientCert::self_signed("self");
    cases.push(case(
        "self-signed, bound",
        req(
            &es.sign(&claims(&iss, Some(&self_signed.x5t()))),
            &self_signed.url_encoded(),
        ),
        Allow,
    ));
    let xfcc_spoof = format!("Cert=\"{pem}\"");
    cases.push(case(
        "XFCC spoofed when not trusted",
        request(
            &[
                ("authorization", &bearer(&good)),
                ("x-forwarded-client-cert", &xfcc_spoof),
            ],
            "",
        ),
        Deny("cert_missing"),
    ));
    // --- headers ---
    cases.push(case(
        "lower-case bearer",
        request(&[("authorization", &format!("bearer {good}"))], &pem),
        Allow,
    ));
    cases.push(case(
        "upper-case bearer",
        request(&[("authorization", &format!("BEARER {good}"))], &pem),
        Allow,
    ));
    cases.push(case(
        "tab separator",
        request(&[("authorization", &format!("Bearer\t{good}"))], &pem),
        Allow,
    ));
    cases.push(case(
        "trailing spaces",
        request(&[("authorization", &format!("Bearer {good}   "))], &pem),
        Allow,
    ));
    cases.push(case(
        "two tokens",
        request(&[("authorization", &format!("Bearer {good} {good}"))], &pem),
        Deny("token_missing"),
    ));
    cases.push(case(
        "Basic scheme",
        request(&[("authorization", "Basic YTpi")], &pem),
        Deny("token_missing"),
    ));
    cases.push(case(
        "no authorization",
        request(&[], &pem),
        Deny("token_missing"),
    ));
    cases.push(case(
        "duplicate joined by Envoy",
        request(
            &[("authorization", &format!("Bearer {good},Bearer {good}"))],
            &pem,
        ),
        Deny("authorization_duplicate"),
    ));
    cases.push(case(
        "duplicate raw headers",
        raw_request(
            &[
                ("authorization", bearer(&good).as_bytes()),
                ("authorization", bearer(&good).as_bytes()),
            ],
            &pem,
        ),
        Deny("authorization_duplicate"),
    ));
    cases.push(case(
        "16 KiB token",
        req(&"a".repeat(16 * 1024 + 1), &pem),
        Deny("token_too_large"),
    ));
    cases.push(case(
        "non-UTF-8 raw value",
        raw_request(&[("authorization", b"Bearer \xff\xfe.\xfd.\xfc")], &pem),
        Deny("token_malformed"),
    ));
    cases.push(case(
        "header_map only",
        raw_request(&[("authorization", bearer(&good).as_bytes())], &pem),
        Allow,
    ));
    cases.push(case(
        "empty CheckRequest",
        CheckRequest::default(),
        Deny("request_invalid"),
    ));
    let mut no_http = request(&[], &pem);
    no_http
        .attributes
        .as_mut()
        .unwrap()
        .request
        .as_mut()
        .unwrap()
        .http = None;
    cases.push(case("missing http", no_http, Deny("request_invalid")));

    // typ (RFC 9068) on the issuer that requires it.
    let typed_token = |typ: Option<Value>| {
        let mut h = es_header(json!({}));
        if let Some(t) = typ {
            h["typ"] = t;
        }
        raw_token(&h, &base(), Some((&es_key_for(&es), Algorithm::ES256)))
    };
    let mut typ_cases = vec![
        case(
            "typ at+jwt",
            req(&typed_token(Some(json!("at+jwt"))), &pem),
            Allow,
        ),
        case(
            "typ application/at+jwt",
            req(&typed_token(Some(json!("application/at+jwt"))), &pem),
            Allow,
        ),
        case(
            "typ AT+JWT",
            req(&typed_token(Some(json!("AT+JWT"))), &pem),
            Allow,
        ),
        case(
            "typ JWT (an ID token)",
            req(&typed_token(Some(json!("JWT"))), &pem),
            Deny("typ_invalid"),
        ),
        case(
            "typ missing",
            req(&typed_token(None), &pem),
            Deny("typ_invalid"),
        ),
        case(
            "typ not a string",
            req(&typed_token(Some(json!(1))), &pem),
            Deny("typ_invalid"),
        ),
    ];

    // XFCC on the instance that trusts it.
    let xfcc_req = |xfcc: &str| {
        request(
            &[
                ("authorization", &bearer(&good)),
                ("x-forwarded-client-cert", xfcc),
            ],
            "",
        )
    };
    let mut xfcc_cases = vec![
        case(
            "XFCC several elements, ours last",
            xfcc_req(&format!(
                "Cert=\"{}\",By=spiffe://gw;Cert=\"{pem}\"",
                other.url_encoded()
            )),
            Allow,
        ),
        case(
            "XFCC several elements, ours first",
            xfcc_req(&format!("Cert=\"{pem}\",Cert=\"{}\"", other.url_encoded())),
            Deny("binding_mismatch"),
        ),
        case(
            "XFCC quoted commas and semicolons",
            xfcc_req(&format!("Subject=\"CN=a,O=b;c=d\";Cert=\"{pem}\"")),
            Allow,
        ),
        case(
            "XFCC escaped quotes",
            xfcc_req(&format!("Subject=\"CN=\\\"q\\\"\";Cert=\"{pem}\"")),
            Allow,
        ),
        case(
            "XFCC Hash only",
            xfcc_req(&format!("By=spiffe://gw;Hash={}", hex(&cert.der))),
            Allow,
        ),
        case(
            "XFCC Hash of another certificate",
            xfcc_req(&format!("Hash={}", hex(&other.der))),
            Deny("binding_mismatch"),
        ),
        case(
            "XFCC unterminated quote",
            xfcc_req(&format!("Cert=\"{pem}")),
            Deny("cert_invalid"),
        ),
        case("XFCC empty", xfcc_req(""), Deny("cert_missing")),
        case(
            "XFCC without Cert or Hash",
            xfcc_req("By=spiffe://gw;URI=spiffe://client"),
            Deny("cert_missing"),
        ),
        case(
            "XFCC Cert not a certificate",
            xfcc_req("Cert=\"garbage\""),
            Deny("cert_invalid"),
        ),
    ];

    let total = cases.len() + typ_cases.len() + xfcc_cases.len();
    assert!(total >= 80, "only {total} cases");
    let mut wrong_allows = Vec::new();
    let mut mismatches = Vec::new();
    for (instance, list) in [
        (&peer, &mut cases),
        (&typed, &mut typ_cases),
        (&via_xfcc, &mut xfcc_cases),
    ] {
        for c in list.drain(..) {
            let answer = instance.check(c.request).await;
            let got = if answer.grpc_code == Some(0) {
                Allow
            } else {
                Deny(leak(answer.reason()))
            };
            if got == Allow && c.expect != Allow {
                wrong_allows.push(c.name.clone());
            }
            if got != c.expect {
                mismatches.push(format!(
                    "{}: expected {:?}, got {:?}",
                    c.name, c.expect, got
                ));
            } else if let Deny(reason) = c.expect {
                // Every deny is the exact reference 401.
                let challenge = if reason == "token_missing" || reason == "request_invalid" {
                    "Bearer"
                } else {
                    r#"Bearer error="invalid_token""#
                };
                answer.assert_unauthorized(reason, challenge);
            }
        }
    }
    assert!(wrong_allows.is_empty(), "WRONG ALLOWS: {wrong_allows:?}");
    assert!(
        mismatches.is_empty(),
        "{} of {total} cases differ:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
    assert_eq!(
        trap_hits.load(Ordering::SeqCst),
        0,
        "certbound fetched a URL named by a token"
    );
    eprintln!("adversarial suite: {total} cases, 0 wrong allows");
}

fn es_key_for(signer: &Signer) -> EncodingKey {
    signer.encoding_key()
}

fn hex(der: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(der)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn leak(s: &str) -> &'static str {
    Box::leak(s.to_string().into_boxed_str())
}

/// DPoP (RFC 9449) hostile inputs: every broken proof, token and scheme combination gets its
/// exact reason and RFC 9449 challenge; none is allowed.
#[tokio::test]
async fn hostile_dpop_inputs_get_exactly_the_expected_answer_and_no_wrong_allow() {
    use common::dpop::{DpopKey, ath};
    const HTU: &str = "https://api.test/api/items";
    let es = Signer::es256("es");
    let idp = Idp::start(&[&es]).await;
    let secret = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(secret.path(), "0123456789abcdef0123456789abcdef").unwrap();
    let plain = Certbound::start(&config_for(&idp, "dpop:\n  enabled: true\n")).await;
    let nonced = Certbound::start(&config_for(
        &idp,
        &format!(
            "dpop:\n  enabled: true\n  nonce:\n    secret_file: {}\n    lifetime_seconds: 60\n",
            secret.path().display()
        ),
    ))
    .await;
    let key = DpopKey::es256();
    let other = DpopKey::es256();
    let token = {
        let mut c = claims(&idp.issuer, None);
        c["cnf"] = json!({"jkt": key.jkt()});
        es.sign(&c)
    };
    let dpop_req = |token: &str, proof: &str| {
        request(
            &[("authorization", &format!("DPoP {token}")), ("dpop", proof)],
            "",
        )
    };
    let b = || key.build("GET", HTU, &token);
    let invalid_proof = r#"DPoP error="invalid_dpop_proof""#;
    let invalid_token = r#"DPoP error="invalid_token""#;
    let use_nonce = r#"DPoP error="use_dpop_nonce""#;
    // (name, request, reason, challenge prefix)
    let mut cases: Vec<(String, CheckRequest, &str, &str)> = Vec::new();
    let mut add = |name: &str, request: CheckRequest, reason: &'static str, challenge| {
        cases.push((name.to_string(), request, reason, challenge));
    };
    let proof_cases: Vec<(&str, String, &str)> = vec![
        (
            "htm POST for GET",
            key.proof("POST", HTU, &token),
            "dpop_method_mismatch",
        ),
        (
            "htm lower case",
            key.proof("get", HTU, &token),
            "dpop_method_mismatch",
        ),
        (
            "htu another path",
            key.proof("GET", "https://api.test/api/other", &token),
            "dpop_url_mismatch",
        ),
        (
            "htu another host",
            key.proof("GET", "https://evil.test/api/items", &token),
            "dpop_url_mismatch",
        ),
        (
            "htu http for https",
            key.proof("GET", "http://api.test/api/items", &token),
            "dpop_url_mismatch",
        ),
        (
            "htu another port",
            key.proof("GET", "https://api.test:8443/api/items", &token),
            "dpop_url_mismatch",
        ),
        (
            "htu relative",
            key.proof("GET", "/api/items", &token),
            "dpop_url_mismatch",
        ),
        (
            "htu not a string",
            b().claim("htu", json!(["https://api.test/api/items"]))
                .sign(),
            "dpop_proof_invalid",
        ),
        (
            "iat 301 s old",
            b().claim("iat", json!(now() - 301)).sign(),
            "dpop_iat_too_old",
        ),
        (
            "iat 1 day old",
            b().claim("iat", json!(now() - 86_400)).sign(),
            "dpop_iat_too_old",
        ),
        (
            "iat 60 s ahead",
            b().claim("iat", json!(now() + 60)).sign(),
            "dpop_iat_in_future",
        ),
        (
            "iat a string",
            b().claim("iat", json!("now")).sign(),
            "dpop_proof_invalid",
        ),
        (
            "no iat",
            b().without_claim("iat").sign(),
            "dpop_proof_invalid",
        ),
        (
            "no jti",
            b().without_claim("jti").sign(),
            "dpop_proof_invalid",
        ),
        (
            "empty jti",
            b().claim("jti", json!("")).sign(),
            "dpop_proof_invalid",
        ),
        (
            "jti 1 KiB",
            b().claim("jti", json!("j".repeat(1024))).sign(),
            "dpop_proof_invalid",
        ),
        (
            "no htm",
            b().without_claim("htm").sign(),
            "dpop_proof_invalid",
        ),
        (
            "typ JWT",
            b().header("typ", json!("JWT")).sign(),
            "dpop_typ_invalid",
        ),
        (
            "typ DPOP+JWT",
            b().header("typ", json!("DPOP+JWT")).sign(),
            "dpop_typ_invalid",
        ),
        (
            "typ at+jwt",
            b().header("typ", json!("at+jwt")).sign(),
            "dpop_typ_invalid",
        ),
        (
            "no typ",
            b().without_header("typ").sign(),
            "dpop_typ_invalid",
        ),
        ("alg none", b().unsigned(), "dpop_alg_not_allowed"),
        (
            "alg HS256 keyed with the jwk",
            b().hmac(),
            "dpop_alg_not_allowed",
        ),
        (
            "alg ES384 on a P-256 key",
            b().header("alg", json!("ES384")).sign(),
            "dpop_jwk_invalid",
        ),
        (
            "alg RS256 on an EC key",
            b().header("alg", json!("RS256")).sign(),
            "dpop_jwk_invalid",
        ),
        (
            "private key in the jwk",
            b().header("jwk", {
                let mut jwk = key.jwk.clone();
                jwk["d"] = json!("c2VjcmV0");
                jwk
            })
            .sign(),
            "dpop_jwk_invalid",
        ),
        (
            "symmetric jwk",
            b().header("jwk", json!({"kty": "oct", "k": "c2VjcmV0"}))
                .sign(),
            "dpop_jwk_invalid",
        ),
        (
            "no jwk",
            b().without_header("jwk").sign(),
            "dpop_jwk_invalid",
        ),
        (
            "jwk a string",
            b().header("jwk", json!("key")).sign(),
            "dpop_jwk_invalid",
        ),
        (
            "jwk off the curve",
            b().header("jwk", {
                let mut jwk = key.jwk.clone();
                jwk["y"] = jwk["x"].clone();
                jwk
            })
            .sign(),
            "dpop_jwk_invalid",
        ),
        (
            "another key's jwk in the header",
            b().header("jwk", other.jwk.clone()).sign(),
            "dpop_signature_invalid",
        ),
        (
            "crit header",
            b().header("crit", json!(["exp"])).sign(),
            "dpop_proof_invalid",
        ),
        (
            "no ath",
            b().without_claim("ath").sign(),
            "dpop_ath_mismatch",
        ),
        (
            "ath of another token",
            b().claim("ath", json!(ath("another"))).sign(),
            "dpop_ath_mismatch",
        ),
        (
            "ath not base64url",
            b().claim("ath", json!("!!")).sign(),
            "dpop_ath_mismatch",
        ),
        (
            "signature cut off",
            {
                let p = key.proof("GET", HTU, &token);
                p[..=p.rfind('.').unwrap()].to_string()
            },
            "dpop_signature_invalid",
        ),
        (
            "signature of another proof",
            {
                let p = key.proof("GET", HTU, &token);
                let q = key.proof("GET", HTU, &token);
                format!(
                    "{}{}",
                    &p[..=p.rfind('.').unwrap()],
                    &q[q.rfind('.').unwrap() + 1..]
                )
            },
            "dpop_signature_invalid",
        ),
        (
            "two parts",
            "eyJhIjoxfQ.eyJhIjoxfQ".to_string(),
            "dpop_proof_invalid",
        ),
        (
            "four parts",
            format!("{}.x", key.proof("GET", HTU, &token)),
            "dpop_proof_invalid",
        ),
        (
            "not base64",
            "%%%.%%%.%%%".to_string(),
            "dpop_proof_invalid",
        ),
        (
            "header not JSON",
            format!("{}.e30.c2ln", URL_SAFE_NO_PAD.encode("x")),
            "dpop_proof_invalid",
        ),
        ("16 KiB proof", "a".repeat(16 * 1024), "dpop_proof_invalid"),
        (
            "proof by another key (jkt mismatch)",
            other.proof("GET", HTU, &token),
            "dpop_key_mismatch",
        ),
        (
            "two proofs joined by a comma",
            format!(
                "{},{}",
                key.proof("GET", HTU, &token),
                key.proof("GET", HTU, &token)
            ),
            "dpop_proof_invalid",
        ),
    ];
    for (name, proof, reason) in proof_cases {
        let challenge = if reason == "dpop_key_mismatch" {
            invalid_token
        } else {
            invalid_proof
        };
        add(name, dpop_req(&token, &proof), reason, challenge);
    }
    // The headers and the scheme.
    add(
        "DPoP scheme without a DPoP header",
        request(&[("authorization", &format!("DPoP {token}"))], ""),
        "dpop_proof_missing",
        invalid_proof,
    );
    add(
        "two DPoP headers",
        raw_request(
            &[
                ("authorization", format!("DPoP {token}").as_bytes()),
                ("dpop", key.proof("GET", HTU, &token).as_bytes()),
                ("dpop", key.proof("GET", HTU, &token).as_bytes()),
            ],
            "",
        ),
        "dpop_proof_invalid",
        invalid_proof,
    );
    add(
        "bound token as Bearer (downgrade)",
        request(&[("authorization", &format!("Bearer {token}"))], ""),
        "dpop_downgrade",
        invalid_token,
    );
    add(
        "bound token as Bearer with its proof (downgrade)",
        request(
            &[
                ("authorization", &format!("Bearer {token}")),
                ("dpop", &key.proof("GET", HTU, &token)),
            ],
            "",
        ),
        "dpop_downgrade",
        invalid_token,
    );
    let unbound = es.sign(&claims(&idp.issuer, None));
    add(
        "unbound token with the DPoP scheme",
        dpop_req(&unbound, &key.proof("GET", HTU, &unbound)),
        "dpop_token_unbound",
        invalid_token,
    );
    let jkt_of_other = {
        let mut c = claims(&idp.issuer, None);
        c["cnf"] = json!({"jkt": other.jkt()});
        es.sign(&c)
    };
    add(
        "token bound to another key",
        dpop_req(&jkt_of_other, &key.proof("GET", HTU, &jkt_of_other)),
        "dpop_key_mismatch",
        invalid_token,
    );
    let forged = {
        let mut c = claims(&idp.issuer, None);
        c["cnf"] = json!({"jkt": key.jkt()});
        Signer::es256("es").sign(&c)
    };
    add(
        "token signed by an attacker's key",
        dpop_req(&forged, &key.proof("GET", HTU, &forged)),
        "signature_invalid",
        invalid_token,
    );
    add(
        "proof presenting another token (ath)",
        dpop_req(&token, &key.proof("GET", HTU, &unbound)),
        "dpop_ath_mismatch",
        invalid_proof,
    );

    let mut total = 0;
    let mut wrong_allows = Vec::new();
    let mut mismatches = Vec::new();
    let mut check = |name: String, answer: Answer, reason: &str, challenge: &str| {
        total += 1;
        if answer.grpc_code == Some(0) {
            wrong_allows.push(name.clone());
        }
        let got = answer
            .headers
            .get("www-authenticate")
            .cloned()
            .unwrap_or_default();
        if answer.reason() != reason
            || answer.http_status != Some(401)
            || !got.starts_with(challenge)
            || answer.body != r#"{"message":"unauthorized"}"#
        {
            mismatches.push(format!(
                "{name}: expected {reason} / {challenge}, got {} / {got}",
                answer.reason()
            ));
        }
    };
    for (name, request, reason, challenge) in cases {
        check(name, plain.check(request).await, reason, challenge);
    }
    // Replays: a proof accepted once, then refused, also after a failed use.
    let proof = key.proof("GET", HTU, &token);
    plain.check(dpop_req(&token, &proof)).await.assert_allowed();
    for round in 0..3 {
        let answer = plain.check(dpop_req(&token, &proof)).await;
        check(
            format!("replay {round}"),
            answer,
            "dpop_replayed",
            invalid_proof,
        );
    }
    // Nonces: missing, made up, from another secret, stale; each answer offers a fresh one.
    let foreign = certbound_core::dpop::NonceKeys::new(b"another secret of 32 bytes......", 60);
    let stale = {
        let keys = certbound_core::dpop::NonceKeys::new(b"0123456789abcdef0123456789abcdef", 60);
        keys.issue(now() - 300)
    };
    for (name, nonce) in [
        ("nonce missing", None),
        ("nonce made up", Some("bm9uY2U".to_string())),
        ("nonce of another secret", Some(foreign.issue(now()))),
        ("nonce stale (5 minutes)", Some(stale)),
        ("nonce empty", Some(String::new())),
    ] {
        let proof = match &nonce {
            None => b().sign(),
            Some(n) => b().claim("nonce", json!(n)).sign(),
        };
        let answer = nonced.check(dpop_req(&token, &proof)).await;
        assert!(
            answer.headers.contains_key("dpop-nonce"),
            "{name}: {answer:?}"
        );
        check(name.to_string(), answer, "dpop_nonce_required", use_nonce);
    }
    assert!(wrong_allows.is_empty(), "WRONG ALLOWS: {wrong_allows:?}");
    assert!(
        mismatches.is_empty(),
        "{} of {total} cases differ:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
    assert!(total >= 55, "only {total} cases");
    eprintln!("adversarial DPoP suite: {total} cases, 0 wrong allows");
}

/// Runs `(name, request, expected)` cases against one instance; returns the mismatches and the
/// wrong allows. Denies must carry the exact status, body and challenge of their reason.
async fn run_cases(
    instance: &Certbound,
    label: &str,
    cases: Vec<(String, CheckRequest, Expect)>,
) -> (Vec<String>, Vec<String>) {
    let (mut mismatches, mut wrong_allows) = (Vec::new(), Vec::new());
    for (name, request, expect) in cases {
        let answer = instance.check(request).await;
        let got = if answer.grpc_code == Some(0) {
            Allow
        } else {
            Deny(leak(answer.reason()))
        };
        if got == Allow && expect != Allow {
            wrong_allows.push(format!("{label}: {name}"));
        }
        if got != expect {
            mismatches.push(format!("{label}: {name}: expected {expect:?}, got {got:?}"));
        } else if let Deny(reason) = expect {
            match reason {
                "path_unsafe" => {
                    assert_eq!(answer.http_status, Some(400), "{name}: {answer:?}");
                    assert_eq!(answer.grpc_code, Some(3), "{name}");
                    assert_eq!(answer.body, r#"{"message":"bad request"}"#, "{name}");
                    assert_eq!(
                        answer.headers.get("www-authenticate").map(String::as_str),
                        Some(r#"Bearer error="invalid_request""#),
                        "{name}"
                    );
                }
                "scope_missing" => {
                    assert_eq!(answer.http_status, Some(403), "{name}: {answer:?}");
                }
                "token_missing" => answer.assert_unauthorized(reason, "Bearer"),
                _ => answer.assert_unauthorized(reason, r#"Bearer error="invalid_token""#),
            }
        }
    }
    (mismatches, wrong_allows)
}

/// RFC 9449 §7.2 and RFC 7800: a token whose `cnf` names any confirmation method certbound does
/// not verify for this request is refused in every binding mode; only a token with no `cnf` at
/// all is unbound. Before this rule, `when_present` let a stolen DPoP-bound token through as
/// `Bearer`, and `disabled` took certificate-bound tokens from any connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_cnf_form_in_every_binding_mode_gets_its_exact_answer_and_no_wrong_allow() {
    let es = Signer::es256("es");
    let idp = Idp::start(&[&es]).await;
    let cert = ClientCert::self_signed("cnf");
    let x5t = cert.x5t();
    let pem = cert.url_encoded();
    let token = |cnf: Option<Value>| {
        let mut c = claims(&idp.issuer, None);
        match cnf {
            Some(cnf) => c["cnf"] = cnf,
            None => {
                c.as_object_mut().unwrap().remove("cnf");
            }
        }
        es.sign(&c)
    };
    let req = |cnf: Option<Value>, certificate: &str| {
        request(
            &[("authorization", &format!("Bearer {}", token(cnf)))],
            certificate,
        )
    };
    // (cnf, with the certificate?, expected under required, when_present, disabled)
    let table: Vec<(&str, Option<Value>, bool, [Expect; 3])> = vec![
        ("no cnf", None, true, [Deny("cnf_missing"), Allow, Allow]),
        (
            "no cnf, no certificate",
            None,
            false,
            [Deny("cert_missing"), Allow, Allow],
        ),
        (
            "cnf null",
            Some(Value::Null),
            true,
            [Deny("cnf_missing"), Allow, Allow],
        ),
        (
            "x5t#S256 matching",
            Some(json!({"x5t#S256": x5t})),
            true,
            [Allow, Allow, Deny("cnf_unverified")],
        ),
        (
            "x5t#S256, no certificate",
            Some(json!({"x5t#S256": x5t})),
            false,
            [
                Deny("cert_missing"),
                Deny("cert_missing"),
                Deny("cnf_unverified"),
            ],
        ),
        (
            "jkt only (DPoP off)",
            Some(json!({"jkt": "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"})),
            true,
            [
                Deny("dpop_downgrade"),
                Deny("dpop_downgrade"),
                Deny("dpop_downgrade"),
            ],
        ),
        (
            "jkt as a JSON string (introspection style)",
            Some(json!(r#"{"jkt":"abc"}"#)),
            true,
            [
                Deny("dpop_downgrade"),
                Deny("dpop_downgrade"),
                Deny("dpop_downgrade"),
            ],
        ),
        (
            "jkt beside a matching x5t#S256",
            Some(json!({"jkt": "abc", "x5t#S256": x5t})),
            true,
            [
                Deny("dpop_downgrade"),
                Deny("dpop_downgrade"),
                Deny("dpop_downgrade"),
            ],
        ),
        (
            "jwk",
            Some(json!({"jwk": {"kty": "EC", "crv": "P-256", "x": "a", "y": "b"}})),
            true,
            [
                Deny("cnf_unverified"),
                Deny("cnf_unverified"),
                Deny("cnf_unverified"),
            ],
        ),
        (
            "jku",
            Some(json!({"jku": "https://keys.test/k"})),
            true,
            [
                Deny("cnf_unverified"),
                Deny("cnf_unverified"),
                Deny("cnf_unverified"),
            ],
        ),
        (
            "kid",
            Some(json!({"kid": "k1"})),
            true,
            [
                Deny("cnf_unverified"),
                Deny("cnf_unverified"),
                Deny("cnf_unverified"),
            ],
        ),
        (
            "jwe",
            Some(json!({"jwe": "a.b.c.d.e"})),
            true,
            [
                Deny("cnf_unverified"),
                Deny("cnf_unverified"),
                Deny("cnf_unverified"),
            ],
        ),
        (
            "x5t (SHA-1)",
            Some(json!({"x5t": "abc"})),
            true,
            [
                Deny("cnf_unverified"),
                Deny("cnf_unverified"),
                Deny("cnf_unverified"),
            ],
        ),
        (
            "x5t#S256 in another case",
            Some(json!({"X5T#S256": x5t})),
            true,
            [
                Deny("cnf_unverified"),
                Deny("cnf_unverified"),
                Deny("cnf_unverified"),
            ],
        ),
        (
            "an unknown method",
            Some(json!({"osc": "whatever"})),
            true,
            [
                Deny("cnf_unverified"),
                Deny("cnf_unverified"),
                Deny("cnf_unverified"),
            ],
        ),
        (
            "matching x5t#S256 beside jwk",
            Some(json!({"x5t#S256": x5t, "jwk": {}})),
            true,
            [
                Deny("cnf_unverified"),
                Deny("cnf_unverified"),
                Deny("cnf_unverified"),
            ],
        ),
        (
            "empty object",
            Some(json!({})),
            true,
            [
                Deny("x5t_missing"),
                Deny("cnf_invalid"),
                Deny("cnf_invalid"),
            ],
        ),
        (
            "empty object as a string",
            Some(json!("{}")),
            true,
            [
                Deny("x5t_missing"),
                Deny("cnf_invalid"),
                Deny("cnf_invalid"),
            ],
        ),
        (
            "non-JSON string",
            Some(json!("bound")),
            true,
            [
                Deny("cnf_invalid"),
                Deny("cnf_invalid"),
                Deny("cnf_invalid"),
            ],
        ),
        (
            "array",
            Some(json!([x5t])),
            true,
            [
                Deny("cnf_invalid"),
                Deny("cnf_invalid"),
                Deny("cnf_invalid"),
            ],
        ),
        (
            "true",
            Some(json!(true)),
            true,
            [
                Deny("cnf_invalid"),
                Deny("cnf_invalid"),
                Deny("cnf_invalid"),
            ],
        ),
    ];
    let mut mismatches = Vec::new();
    let mut wrong_allows = Vec::new();
    for (column, mode) in ["required", "when_present", "disabled"]
        .into_iter()
        .enumerate()
    {
        let instance =
            Certbound::start(&config_for(&idp, &format!("binding:\n  mode: {mode}\n"))).await;
        let cases = table
            .iter()
            .map(|(name, cnf, with_cert, expect)| {
                let certificate = if *with_cert { pem.as_str() } else { "" };
                (
                    name.to_string(),
                    req(cnf.clone(), certificate),
                    expect[column],
                )
            })
            .collect();
        let (m, w) = run_cases(&instance, mode, cases).await;
        mismatches.extend(m);
        wrong_allows.extend(w);
    }
    assert!(wrong_allows.is_empty(), "WRONG ALLOWS: {wrong_allows:#?}");
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
    eprintln!("cnf table: {} cases x 3 modes, 0 wrong allows", table.len());
}

/// Every spelling of a path an upstream resolves to `/admin/...` meets the `/admin` rule, and a
/// path that cannot be resolved the same way everywhere is refused (400 `path_unsafe`) before
/// any rule, anonymous ones included. Before canonical matching, `//admin/x` skipped the admin
/// scope and `/public/../admin/x` reached the upstream with no token at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_spelling_of_a_path_meets_the_rule_of_the_path_the_upstream_resolves() {
    let es = Signer::es256("es");
    let idp = Idp::start(&[&es]).await;
    let policy = "policy:\n  rules:\n    - name: public\n      path_prefix: /public/\n      allow_anonymous: true\n    - name: admin\n      path_prefix: /admin\n      scopes: [admin]\n    - name: exact\n      path: /reports/summary\n      scopes: [reports]\n    - name: regex\n      path_regex: '/orders/[0-9]+'\n      methods: [DELETE]\n      scopes: [orders]\n";
    let certbound = Certbound::start(&config_for(&idp, policy)).await;
    let cert = ClientCert::self_signed("paths");
    // A valid, bound token with only the `read` scope.
    let token = es.sign(&claims(&idp.issuer, Some(&cert.x5t())));
    let with_token = |method: &str, path: &str| {
        let mut r = request(
            &[("authorization", &format!("Bearer {token}"))],
            &cert.url_encoded(),
        );
        let http = http_mut(&mut r);
        http.path = path.to_string();
        http.method = method.to_string();
        r
    };
    let without_token = |path: &str| {
        let mut r = request(&[], &cert.url_encoded());
        http_mut(&mut r).path = path.to_string();
        r
    };
    let mut cases: Vec<(String, CheckRequest, Expect)> = Vec::new();
    // Resolve to /admin/x: spelled canonically, the admin scope is required (the token lacks
    // it); spelled otherwise, refused, whoever asks: which route a proxy in front chose for
    // that spelling cannot be known.
    for spelling in PATHS_TO_ADMIN {
        let canonical = CANONICAL_ADMIN_PATHS.contains(spelling);
        cases.push((
            format!("token, {spelling}"),
            with_token("GET", spelling),
            Deny(if canonical {
                "scope_missing"
            } else {
                "path_unsafe"
            }),
        ));
        cases.push((
            format!("no token, {spelling}"),
            without_token(spelling),
            Deny(if canonical {
                "token_missing"
            } else {
                "path_unsafe"
            }),
        ));
    }
    for (spelling, reason) in [
        ("/reports/summary", "scope_missing"),
        ("/reports/summary?x=../", "scope_missing"),
        ("//reports/summary", "path_unsafe"),
        ("/reports/./summary", "path_unsafe"),
        ("/reports/%73ummary", "path_unsafe"),
        ("/x/../reports/summary", "path_unsafe"),
        // Tomcat reads `/reports/summary`: the `;` cannot move it to another rule.
        ("/reports/summary;x", "path_unsafe"),
    ] {
        cases.push((
            format!("token, {spelling}"),
            with_token("GET", spelling),
            Deny(reason),
        ));
    }
    for (spelling, reason) in [
        ("/orders/7", "scope_missing"),
        ("//orders/7", "path_unsafe"),
        ("/orders/%37", "path_unsafe"),
        ("/orders/x/../7", "path_unsafe"),
        ("/public/../orders/7", "path_unsafe"),
        ("/orders;a/7", "path_unsafe"),
        ("/orders/7;a", "path_unsafe"),
    ] {
        cases.push((
            format!("token, DELETE {spelling}"),
            with_token("DELETE", spelling),
            Deny(reason),
        ));
    }
    // Cannot be resolved safely: refused whoever asks.
    for spelling in UNSAFE_PATHS {
        cases.push((
            format!("token, {spelling}"),
            with_token("GET", spelling),
            Deny("path_unsafe"),
        ));
        cases.push((
            format!("no token, {spelling}"),
            without_token(spelling),
            Deny("path_unsafe"),
        ));
    }
    // Controls: the anonymous and default routes work spelled canonically (with `;`
    // parameters that leave the rule as it is, too), and only so.
    for (spelling, expect) in [
        ("/public/x", Allow),
        ("/public/x;jsessionid=1", Allow),
        ("//public/x", Deny("path_unsafe")),
        ("/public/./x", Deny("path_unsafe")),
        ("/%70ublic/x", Deny("path_unsafe")),
        ("/admin/../public/x", Deny("path_unsafe")),
    ] {
        cases.push((
            format!("no token, {spelling}"),
            without_token(spelling),
            expect,
        ));
    }
    for (spelling, expect) in [
        ("/items", Allow),
        ("/items/", Allow),
        ("/items;v=1/x", Allow),
        ("//items", Deny("path_unsafe")),
        ("/admin/../items", Deny("path_unsafe")),
    ] {
        cases.push((
            format!("token, {spelling}"),
            with_token("GET", spelling),
            expect,
        ));
    }
    let total = cases.len();
    let (mismatches, wrong_allows) = run_cases(&certbound, "paths", cases).await;
    assert!(wrong_allows.is_empty(), "WRONG ALLOWS: {wrong_allows:#?}");
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
    eprintln!("path table: {total} cases, 0 wrong allows");
}
