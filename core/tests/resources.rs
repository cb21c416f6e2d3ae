//! Protected resources in the decision core: the RFC 9728 metadata document field by field, the
//! metadata paths, `resource_metadata` in every challenge (parsed with an independent RFC 9110
//! parser), RFC 8707 audiences, RFC 9470 step-up, and configurations refused with their line.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../tests/common/challenge.rs"]
mod challenge;

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use certbound_core::answer::HttpAnswer;
use certbound_core::config::{ConfigError, DecisionSettings, ModuleSettings};
use certbound_core::keys::KeySet;
use certbound_core::{AccessRequest, Authorization, Decision, KeyLookup, Outcome, TokenCache};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

const ISSUER: &str = "https://idp.example.com";
const MCP: &str = "https://mcp.example.com/mcp";
const METADATA_URL: &str = "https://mcp.example.com/.well-known/oauth-protected-resource/mcp";
const NOW: i64 = 1_800_000_000;

struct Signer {
    key: EncodingKey,
    jwk: Value,
}

fn signer() -> Signer {
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let raw = pair.public_key_raw();
    Signer {
        key: EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).unwrap(),
        jwk: json!({"kty": "EC", "crv": "P-256", "kid": "k1",
                    "x": URL_SAFE_NO_PAD.encode(&raw[1..33]),
                    "y": URL_SAFE_NO_PAD.encode(&raw[33..65])}),
    }
}

impl Signer {
    fn sign(&self, edit: impl FnOnce(&mut Value)) -> String {
        let mut claims = json!({"iss": ISSUER, "aud": [MCP], "sub": "alice", "exp": NOW + 300,
                                "iat": NOW - 10, "scope": "tools:read"});
        edit(&mut claims);
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some("k1".into());
        jsonwebtoken::encode(&header, &claims, &self.key).unwrap()
    }
}

struct Keys(Arc<KeySet>);

impl KeyLookup for Keys {
    fn key_set(&self, _: usize) -> Option<Arc<KeySet>> {
        Some(Arc::clone(&self.0))
    }
}

struct World {
    signer: Signer,
    keys: Keys,
    settings: DecisionSettings,
}

/// A configuration with binding disabled (these tests are about resources), one issuer whose
/// keys are in a file, and `extra` appended.
fn text(jwks: &str, extra: &str) -> String {
    text_with(
        jwks,
        &format!("{MCP}, https://other.example.com/api"),
        extra,
    )
}

fn text_with(jwks: &str, audiences: &str, extra: &str) -> String {
    format!(
        "issuers:\n  - issuer: {ISSUER}\n    audiences: [{audiences}]\n    jwks_file: {jwks}\n\
         binding: {{mode: disabled}}\ncertificate: {{sources: []}}\n{extra}"
    )
}

fn jwks_file(signer: &Signer) -> String {
    let path = std::env::temp_dir().join(format!(
        "certbound-resources-{}-{:?}.json",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::write(&path, json!({"keys": [signer.jwk]}).to_string()).unwrap();
    path.display().to_string()
}

fn settings(text: &str) -> Result<DecisionSettings, ConfigError> {
    certbound_core::config::parse(text)?
        .decision_settings(None)
        .map_err(|e| e.locate(text))
}

const RESOURCES: &str = "\
resources:
  - id: https://mcp.example.com/mcp
    path_prefix: /mcp
    resource_name: Example MCP server
    resource_documentation: https://mcp.example.com/docs
policy:
  rules:
    - path_prefix: /mcp/admin
      scopes: [tools:admin]
      acr_values: [urn:example:mfa, urn:example:hwk]
      max_age_seconds: 300
    - path_prefix: /mcp
      scopes: [tools:read]
    - path_prefix: /other
      scopes: [other:read]
";

fn make(extra: &str) -> World {
    make_with(&format!("{MCP}, https://other.example.com/api"), extra)
}

/// [`make`] with the issuer's own `audiences`.
fn make_with(audiences: &str, extra: &str) -> World {
    let signer = signer();
    let jwks = jwks_file(&signer);
    let settings = settings(&text_with(&jwks, audiences, extra)).unwrap_or_else(|e| panic!("{e}"));
    let keys = Keys(Arc::new(
        KeySet::from_jwks(json!({"keys": [signer.jwk]}).to_string().as_bytes())
            .unwrap()
            .0,
    ));
    World {
        signer,
        keys,
        settings,
    }
}

fn request(method: &str, path: &str, authorization: Option<String>) -> AccessRequest {
    AccessRequest {
        authorization: authorization.map_or(Authorization::Absent, Authorization::One),
        method: method.into(),
        path: path.into(),
        host: "attacker.example".into(),
        scheme: "https".into(),
        ..Default::default()
    }
}

impl World {
    fn decide(&self, method: &str, path: &str, token: Option<&str>) -> Decision {
        let request = request(method, path, token.map(|t| format!("Bearer {t}")));
        self.settings.policy.decide(&self.keys, &request, NOW)
    }
}

fn header<'a>(answer: &'a HttpAnswer, name: &str) -> Option<&'a str> {
    answer
        .headers
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v.as_str())
}

fn challenges(decision: &Decision) -> Vec<challenge::Challenge> {
    let answer = decision.http_answer(false).expect("an answer");
    let value = header(&answer, "www-authenticate").expect("a challenge");
    challenge::parse(value).unwrap_or_else(|e| panic!("{value:?}: {e}"))
}

fn reason(decision: &Decision) -> &'static str {
    decision.reason()
}

#[test]
fn the_challenge_parser_is_strict() {
    challenge::self_test();
}

#[test]
fn the_metadata_document_follows_rfc_9728_field_by_field() {
    let world = make(RESOURCES);
    let decision = world.decide("GET", "/.well-known/oauth-protected-resource/mcp", None);
    assert!(
        matches!(decision.outcome, Outcome::Metadata(_)),
        "{decision:?}"
    );
    let answer = decision.http_answer(false).unwrap();
    assert_eq!(answer.status, 200);
    // §3.2: application/json; public and cacheable.
    assert_eq!(header(&answer, "content-type"), Some("application/json"));
    assert_eq!(
        header(&answer, "cache-control"),
        Some("public, max-age=300")
    );
    assert_eq!(header(&answer, "www-authenticate"), None);
    let document: Value = serde_json::from_str(&answer.body).unwrap();
    let members = document.as_object().unwrap();
    // §3.3: `resource` is the identifier, byte for byte.
    assert_eq!(members["resource"], MCP);
    // §2: authorization_servers default to the configured issuers.
    assert_eq!(members["authorization_servers"], json!([ISSUER]));
    // Default scopes: those the rules under /mcp require, not /other's.
    assert_eq!(
        members["scopes_supported"],
        json!(["tools:admin", "tools:read"])
    );
    assert_eq!(members["bearer_methods_supported"], json!(["header"]));
    assert_eq!(members["tls_client_certificate_bound_access_tokens"], false);
    assert_eq!(members["resource_name"], "Example MCP server");
    assert_eq!(
        members["resource_documentation"],
        "https://mcp.example.com/docs"
    );
    // DPoP is off: no DPoP member.
    assert!(!members.contains_key("dpop_signing_alg_values_supported"));
    assert!(!members.contains_key("dpop_bound_access_tokens_required"));
    // Only RFC 9728 §2 members.
    let known = [
        "resource",
        "authorization_servers",
        "jwks_uri",
        "scopes_supported",
        "bearer_methods_supported",
        "resource_signing_alg_values_supported",
        "resource_name",
        "resource_documentation",
        "resource_policy_uri",
        "resource_tos_uri",
        "tls_client_certificate_bound_access_tokens",
        "authorization_details_types_supported",
        "dpop_signing_alg_values_supported",
        "dpop_bound_access_tokens_required",
        "signed_metadata",
    ];
    for name in members.keys() {
        assert!(
            known.contains(&name.as_str()),
            "{name} is not an RFC 9728 member"
        );
    }

    // With certificate binding and DPoP: derived from what is enforced.
    let signer = signer();
    let jwks = jwks_file(&signer);
    let text = format!(
        "issuers:\n  - issuer: {ISSUER}\n    audiences: [{MCP}]\n    jwks_file: {jwks}\n\
         binding: {{mode: required}}\ndpop: {{enabled: true, algorithms: [ES256, EdDSA]}}\n\
         resources:\n  - id: {MCP}\n    dpop_bound_access_tokens_required: true\n    scopes_supported: [a, b]\n"
    );
    let settings = settings(&text).unwrap();
    let resource = &settings.policy.resources.list[0];
    assert_eq!(
        resource.path_prefix, "/mcp",
        "defaults to the identifier's path"
    );
    let document: Value = serde_json::from_str(&resource.document).unwrap();
    // DPoP required: a certificate-bound token is refused there (`dpop_required`), so the
    // document does not offer that binding, whatever binding.mode says.
    assert_eq!(
        document["tls_client_certificate_bound_access_tokens"],
        false
    );
    assert_eq!(
        document["dpop_signing_alg_values_supported"],
        json!(["ES256", "EdDSA"])
    );
    assert_eq!(document["dpop_bound_access_tokens_required"], true);
    let optional =
        crate::settings(&text.replace("    dpop_bound_access_tokens_required: true\n", ""))
            .unwrap();
    let document: Value =
        serde_json::from_str(&optional.policy.resources.list[0].document).unwrap();
    assert_eq!(document["tls_client_certificate_bound_access_tokens"], true);
    assert_eq!(document["dpop_bound_access_tokens_required"], false);
    assert_eq!(document["scopes_supported"], json!(["a", "b"]));
}

#[test]
fn metadata_paths_answer_without_a_token_and_only_there() {
    let world = make(RESOURCES);
    let token = world.signer.sign(|_| {});
    for path in [
        "/.well-known/oauth-protected-resource/mcp",
        "/.well-known/oauth-protected-resource/mcp?x=1",
    ] {
        for token in [None, Some(token.as_str()), Some("garbage")] {
            let decision = world.decide("GET", path, token);
            assert!(
                matches!(decision.outcome, Outcome::Metadata(_)),
                "{path}: {decision:?}"
            );
        }
    }
    // A path whose resource (or metadata) depends on its case is refused: an upstream that
    // ignores case would serve /mcp's handler without the resource's audience check.
    let token = world
        .signer
        .sign(|c| c["aud"] = json!("https://other.example.com/api"));
    for path in [
        "/MCP/tools",
        "/Mcp",
        "/.WELL-KNOWN/oauth-protected-resource/mcp",
    ] {
        let decision = world.decide("GET", path, Some(&token));
        assert_eq!(
            (reason(&decision), decision.http_status()),
            ("path_unsafe", 400),
            "{path}"
        );
    }
    // Other spellings of it are refused like any path that is not canonical.
    for path in [
        "/.well-known/./oauth-protected-resource/mcp",
        "/.well-known/oauth-protected-resource//mcp",
        "/.well-known/oauth-protected-resource/%6Dcp",
    ] {
        let decision = world.decide("GET", path, None);
        assert_eq!(
            (reason(&decision), decision.http_status()),
            ("path_unsafe", 400),
            "{path}"
        );
    }
    let head = world.decide("HEAD", "/.well-known/oauth-protected-resource/mcp", None);
    assert!(matches!(head.outcome, Outcome::Metadata(_)));
    let post = world.decide("POST", "/.well-known/oauth-protected-resource/mcp", None);
    assert_eq!(
        (reason(&post), post.http_status()),
        ("method_not_allowed", 405)
    );
    assert_eq!(
        header(&post.http_answer(false).unwrap(), "allow"),
        Some("GET, HEAD, OPTIONS")
    );
    let options = world.decide("OPTIONS", "/.well-known/oauth-protected-resource/mcp", None);
    assert_eq!(options.http_status(), 204);
    let answer = options.http_answer(false).unwrap();
    assert_eq!(answer.body, "");
    assert_eq!(header(&answer, "access-control-allow-origin"), Some("*"));
    assert_eq!(header(&answer, "allow"), Some("GET, HEAD, OPTIONS"));
    // Methods are case-sensitive (RFC 9110 §9.1): `get` is not GET.
    let lower = world.decide("get", "/.well-known/oauth-protected-resource/mcp", None);
    assert_eq!(lower.http_status(), 405);
    for unknown in [
        "/.well-known/oauth-protected-resource",
        "/.well-known/oauth-protected-resource/other",
        "/.well-known/oauth-protected-resource/mcp/admin",
    ] {
        let decision = world.decide("GET", unknown, Some(&token));
        assert_eq!(
            (reason(&decision), decision.http_status()),
            ("resource_unknown", 404)
        );
        assert_eq!(
            header(&decision.http_answer(false).unwrap(), "www-authenticate"),
            None
        );
    }
    // Any other well-known path is decided like every path.
    let other = world.decide("GET", "/.well-known/openid-configuration", None);
    assert_eq!(
        (reason(&other), other.http_status()),
        ("token_missing", 401)
    );
    // Without resources, the well-known prefix is not special either.
    let plain = make("");
    let decision = plain.decide("GET", "/.well-known/oauth-protected-resource/mcp", None);
    assert_eq!(reason(&decision), "token_missing");
}

#[test]
fn every_challenge_under_a_resource_points_at_its_metadata() {
    let world = make(RESOURCES);
    // No token: RFC 6750 §3 without an error code, with the metadata URL (from the identifier,
    // not from the request's Host).
    let missing = world.decide("GET", "/mcp/tools", None);
    let parsed = challenges(&missing);
    assert_eq!(parsed.len(), 1);
    assert_eq!(
        parsed[0].params,
        [("resource_metadata".to_owned(), METADATA_URL.to_owned())]
    );
    // A bad token.
    let expired = world.signer.sign(|c| c["exp"] = json!(NOW - 3600));
    let parsed = challenges(&world.decide("GET", "/mcp", Some(&expired)));
    assert_eq!(parsed[0].param("error"), Some("invalid_token"));
    assert_eq!(parsed[0].param("resource_metadata"), Some(METADATA_URL));
    // 403 keeps naming the scopes to ask for.
    let reader = world.signer.sign(|c| c["scope"] = json!("other"));
    let forbidden = world.decide("POST", "/mcp", Some(&reader));
    assert_eq!(forbidden.http_status(), 403);
    let parsed = challenges(&forbidden);
    assert_eq!(parsed[0].param("error"), Some("insufficient_scope"));
    assert_eq!(parsed[0].param("scope"), Some("tools:read"));
    assert_eq!(parsed[0].param("resource_metadata"), Some(METADATA_URL));
    // Outside the resource: no resource_metadata.
    let outside = world.decide("GET", "/other", None);
    assert_eq!(challenges(&outside)[0].params, []);
    // DPoP: both challenges carry it, and a DPoP-scheme refusal too.
    let dpop = make(&format!(
        "{RESOURCES}dpop: {{enabled: true, algorithms: [ES256]}}\n"
    ));
    let parsed = challenges(&dpop.decide("GET", "/mcp", None));
    assert_eq!(parsed.len(), 2);
    assert!(parsed[0].scheme.eq_ignore_ascii_case("bearer"));
    assert!(parsed[1].scheme.eq_ignore_ascii_case("dpop"));
    assert_eq!(parsed[1].param("algs"), Some("ES256"));
    for challenge in &parsed {
        assert_eq!(challenge.param("resource_metadata"), Some(METADATA_URL));
    }
    let request = request("GET", "/mcp", Some(format!("DPoP {expired}")));
    let decision = dpop.settings.policy.decide(&dpop.keys, &request, NOW);
    let parsed = challenges(&decision);
    assert!(parsed[0].scheme.eq_ignore_ascii_case("dpop"), "{parsed:?}");
    assert_eq!(parsed[0].param("resource_metadata"), Some(METADATA_URL));
}

#[test]
fn a_token_for_another_resource_is_refused_rfc_8707() {
    let world = make(RESOURCES);
    let mine = world.signer.sign(|_| {});
    assert_eq!(reason(&world.decide("GET", "/mcp", Some(&mine))), "ok");
    // The issuer accepts this audience, the resource does not.
    let other = world
        .signer
        .sign(|c| c["aud"] = json!("https://other.example.com/api"));
    let decision = world.decide("GET", "/mcp/tools", Some(&other));
    assert_eq!(
        (reason(&decision), decision.http_status()),
        ("resource_audience_mismatch", 401)
    );
    assert_eq!(
        challenges(&decision)[0].param("error"),
        Some("invalid_token")
    );
    // Outside the resource only the issuer's audiences apply.
    let outside = world.signer.sign(|c| {
        c["aud"] = json!("https://other.example.com/api");
        c["scope"] = json!("other:read");
    });
    assert_eq!(reason(&world.decide("GET", "/other", Some(&outside))), "ok");
    // `audiences: []` under the resource leaves the issuer's check alone.
    let open = make(&RESOURCES.replace(
        "    path_prefix: /mcp\n",
        "    path_prefix: /mcp\n    audiences: []\n",
    ));
    let other = open
        .signer
        .sign(|c| c["aud"] = json!("https://other.example.com/api"));
    assert_eq!(reason(&open.decide("GET", "/mcp", Some(&other))), "ok");
    // Other accepted audiences, configured.
    let listed = make(&RESOURCES.replace(
        "    path_prefix: /mcp\n",
        "    path_prefix: /mcp\n    audiences: [https://other.example.com/api]\n",
    ));
    let mine = listed.signer.sign(|_| {});
    assert_eq!(
        reason(&listed.decide("GET", "/mcp", Some(&mine))),
        "resource_audience_mismatch"
    );
}

/// RFC 8707 by default: a token issued for the resource (its `aud` only the identifier) is
/// taken under the resource without the identifier in the issuer's own `audiences`, and nowhere
/// else; a token for the issuer's own audience is taken outside, not under the resource.
#[test]
fn the_resource_identifier_is_an_audience_without_listing_it_at_the_issuer() {
    let world = make_with("https://other.example.com/api", RESOURCES);
    let for_mcp = world.signer.sign(|c| c["aud"] = json!(MCP));
    assert_eq!(reason(&world.decide("GET", "/mcp", Some(&for_mcp))), "ok");
    let outside = world.signer.sign(|c| {
        c["aud"] = json!(MCP);
        c["scope"] = json!("other:read");
    });
    let decision = world.decide("GET", "/other", Some(&outside));
    assert_eq!(
        (reason(&decision), decision.http_status()),
        ("audience_mismatch", 401)
    );
    let for_api = world.signer.sign(|c| {
        c["aud"] = json!("https://other.example.com/api");
        c["scope"] = json!("other:read tools:read");
    });
    assert_eq!(reason(&world.decide("GET", "/other", Some(&for_api))), "ok");
    assert_eq!(
        reason(&world.decide("GET", "/mcp", Some(&for_api))),
        "resource_audience_mismatch"
    );
    // Under a resource with `audiences: []`, the issuer's own audiences, not another
    // resource's.
    let two = make_with(
        "https://other.example.com/api",
        &RESOURCES.replace(
            "policy:\n",
            "  - id: https://mcp.example.com/open\n    path_prefix: /other\n    audiences: []\npolicy:\n",
        ),
    );
    let for_mcp = two.signer.sign(|c| {
        c["aud"] = json!(MCP);
        c["scope"] = json!("other:read");
    });
    assert_eq!(
        reason(&two.decide("GET", "/other", Some(&for_mcp))),
        "audience_mismatch"
    );
    let for_api = two.signer.sign(|c| {
        c["aud"] = json!("https://other.example.com/api");
        c["scope"] = json!("other:read");
    });
    assert_eq!(reason(&two.decide("GET", "/other", Some(&for_api))), "ok");
    // A token for a third audience verifies nowhere.
    let third = world
        .signer
        .sign(|c| c["aud"] = json!("https://third.example.com"));
    assert_eq!(
        reason(&world.decide("GET", "/mcp", Some(&third))),
        "audience_mismatch"
    );
}

#[test]
fn dpop_required_refuses_bearer_tokens_under_the_resource() {
    let world = make(&format!(
        "{}dpop: {{enabled: true}}\n",
        RESOURCES.replace(
            "    path_prefix: /mcp\n",
            "    path_prefix: /mcp\n    dpop_bound_access_tokens_required: true\n"
        )
    ));
    let bearer = world.signer.sign(|_| {});
    let decision = world.decide("GET", "/mcp", Some(&bearer));
    assert_eq!(
        (reason(&decision), decision.http_status()),
        ("dpop_required", 401)
    );
    let parsed = challenges(&decision);
    assert!(parsed[0].scheme.eq_ignore_ascii_case("dpop"), "{parsed:?}");
    assert_eq!(parsed[0].param("error"), Some("invalid_token"));
    assert_eq!(parsed[0].param("resource_metadata"), Some(METADATA_URL));
}

#[test]
fn step_up_needs_the_acr_and_a_recent_auth_time_rfc_9470() {
    let world = make(RESOURCES);
    let admin = |edit: &dyn Fn(&mut Value)| {
        world.signer.sign(|c| {
            c["scope"] = json!("tools:admin");
            edit(c);
        })
    };
    let cases: [(&str, String); 5] = [
        (
            "acr_insufficient",
            admin(&|c| c["auth_time"] = json!(NOW - 10)),
        ),
        (
            "acr_insufficient",
            admin(&|c| {
                c["acr"] = json!("urn:example:pwd");
                c["auth_time"] = json!(NOW - 10);
            }),
        ),
        (
            "auth_time_missing",
            admin(&|c| c["acr"] = json!("urn:example:mfa")),
        ),
        (
            "auth_time_too_old",
            admin(&|c| {
                c["acr"] = json!("urn:example:mfa");
                c["auth_time"] = json!(NOW - 301);
            }),
        ),
        (
            "auth_time_missing",
            admin(&|c| {
                c["acr"] = json!("urn:example:hwk");
                c["auth_time"] = json!("yesterday");
            }),
        ),
    ];
    for (expected, token) in &cases {
        let decision = world.decide("GET", "/mcp/admin/x", Some(token));
        assert_eq!(
            (reason(&decision), decision.http_status()),
            (*expected, 401)
        );
        let parsed = challenges(&decision);
        assert_eq!(parsed.len(), 1);
        assert!(parsed[0].scheme.eq_ignore_ascii_case("bearer"));
        assert_eq!(
            parsed[0].param("error"),
            Some("insufficient_user_authentication")
        );
        assert_eq!(
            parsed[0].param("acr_values"),
            Some("urn:example:mfa urn:example:hwk")
        );
        assert_eq!(parsed[0].param("max_age"), Some("300"));
        assert_eq!(parsed[0].param("resource_metadata"), Some(METADATA_URL));
    }
    let strong = admin(&|c| {
        c["acr"] = json!("urn:example:hwk");
        c["auth_time"] = json!(NOW - 200);
    });
    assert_eq!(
        reason(&world.decide("GET", "/mcp/admin/x", Some(&strong))),
        "ok"
    );
    // Exactly max_age old still passes.
    let edge = admin(&|c| {
        c["acr"] = json!("urn:example:mfa");
        c["auth_time"] = json!(NOW - 300);
    });
    assert_eq!(
        reason(&world.decide("GET", "/mcp/admin/x", Some(&edge))),
        "ok"
    );
    // Through the verified-token cache: `acr` and `auth_time` are kept with the claims.
    let cache = TokenCache::new(16, 300);
    let request = request("GET", "/mcp/admin/x", Some(format!("Bearer {strong}")));
    for round in 0..2 {
        let decision =
            world
                .settings
                .policy
                .decide_cached(&world.keys, Some(&cache), &request, NOW + 1);
        assert_eq!(decision.reason(), "ok", "round {round}");
        assert_eq!(decision.facts.token_cache, Some(round == 1));
    }
    // ...and `auth_time` ages on a cache hit.
    let later = world
        .settings
        .policy
        .decide_cached(&world.keys, Some(&cache), &request, NOW + 101);
    assert_eq!(
        (later.reason(), later.facts.token_cache),
        ("auth_time_too_old", Some(true))
    );
}

#[test]
fn contradicting_configurations_are_refused_at_their_line() {
    let signer = signer();
    let jwks = jwks_file(&signer);
    let refused = |extra: &str, key: &str, says: &str| {
        let text = text(&jwks, extra);
        let error = settings(&text).expect_err(extra);
        assert_eq!(error.key, key, "{error}");
        assert!(error.message.contains(says), "{error}");
        let line = error.line.expect("a line");
        let written = text.lines().nth(line - 1).unwrap();
        let leaf = key.rsplit('.').next().unwrap();
        let leaf = leaf.split('[').next().unwrap();
        assert!(
            written.contains(leaf),
            "line {line} is {written:?}, not {key}"
        );
        // The module refuses it the same way.
        let module = ModuleSettings::from_yaml(&text).expect_err("module");
        assert_eq!((module.key.as_str(), module.line), (key, Some(line)));
    };
    refused(
        "resources:\n  - id: https://mcp.example.com/mcp\n    dpop_bound_access_tokens_required: true\n",
        "resources[0].dpop_bound_access_tokens_required",
        "dpop.enabled is false",
    );
    refused(
        "resources:\n  - id: https://mcp.example.com/mcp\n    authorization_servers:\n      - https://evil.example.com\n",
        "resources[0].authorization_servers",
        "not a configured issuer",
    );
    refused(
        "resources:\n  - id: https://mcp.example.com/mcp?x=1\n",
        "resources[0].id",
        "no query",
    );
    refused(
        "resources:\n  - id: http://mcp.example.com/mcp\n",
        "resources[0].id",
        "https",
    );
    refused(
        "resources:\n  - id: https://mcp.example.com/mcp\n  - id: https://mcp.example.com/mcp\n    path_prefix: /b\n",
        "resources[1].id",
        "same id",
    );
    refused(
        "resources:\n  - id: https://a.example.com/mcp\n  - id: https://b.example.com/mcp\n    path_prefix: /b\n",
        "resources[1].id",
        "same metadata path",
    );
    refused(
        "resources:\n  - id: https://mcp.example.com/\n    path_prefix: /.well-known/oauth-protected-resource/x\n",
        "resources[0].path_prefix",
        "where the metadata is served",
    );
    refused(
        "resources:\n  - id: https://mcp.example.com/mcp\n    path_prefix: /a/../mcp\n",
        "resources[0].path_prefix",
        "canonical",
    );
    refused(
        "resources:\n  - id: https://mcp.example.com/a/../mcp\n",
        "resources[0].id",
        "must be canonical",
    );
    refused(
        "policy:\n  rules:\n    - path: /health\n      allow_anonymous: true\n      max_age_seconds: 60\n",
        "policy.rules[0].allow_anonymous",
        "anonymous",
    );
    refused(
        "policy:\n  rules:\n    - path: /x\n      acr_values: ['a b']\n",
        "policy.rules[0].acr_values",
        "word",
    );
    // Loopback http is fine for tests; a resource with no path covers everything.
    let text = text(&jwks, "resources:\n  - id: http://127.0.0.1:8080\n");
    let settings = settings(&text).unwrap();
    assert_eq!(settings.policy.resources.list[0].path_prefix, "/");
}
