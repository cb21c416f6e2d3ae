//! Entry points for fuzzing (`fuzz/`, cargo-fuzz) and for replaying the corpus as an ordinary
//! test (`tests/fuzz_replay.rs`). Each takes arbitrary bytes and must neither panic nor, for the
//! whole-request target, ever allow: no token the fuzzer can make is signed by a trusted key.

use std::sync::{Arc, OnceLock};

use prost::Message;

use crate::grpc::convert;
use crate::grpc::pb::envoy::service::auth::v3::CheckRequest;
use certbound_core::keys::KeySet;
use certbound_core::path::{self, EscapedSlashes};
use certbound_core::{
    AccessRequest, Authorization, KeyLookup, Outcome, Policy, bearer, certificate, dpop, token,
    xfcc,
};

/// A fixed public key nobody holds the private half of (RFC 7517 appendix A.1 example).
const JWKS: &str = r#"{"keys":[{"kty":"EC","crv":"P-256","kid":"fuzz",
 "x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]}"#;

struct FixedKeys(Arc<KeySet>);

impl KeyLookup for FixedKeys {
    fn key_set(&self, _: usize) -> Option<Arc<KeySet>> {
        Some(Arc::clone(&self.0))
    }
}

fn fixture() -> &'static (Policy, FixedKeys) {
    static FIXTURE: OnceLock<(Policy, FixedKeys)> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let yaml = "issuers:\n  - issuer: https://idp.fuzz\n    audiences: [https://api.fuzz]\n    jwks_uri: https://idp.fuzz/jwks\n\
                    certificate:\n  sources: [peer, xfcc, client_cert]\n\
                    policy:\n  rules:\n    - path_prefix: /admin\n      scopes: [admin]\n      groups: [ops]\n";
        let settings = crate::config::Settings::from_yaml(yaml, Vec::new(), None).expect("fuzz policy");
        let keys = KeySet::from_jwks(JWKS.as_bytes()).expect("fuzz JWKS").0;
        (settings.decision.policy, FixedKeys(Arc::new(keys)))
    })
}

fn text(data: &[u8]) -> String {
    String::from_utf8_lossy(data).into_owned()
}

/// XFCC parsing.
pub fn xfcc(data: &[u8]) {
    if let Ok(elements) = xfcc::parse(&text(data)) {
        for element in &elements {
            let _ = (element.get("cert"), element.get("hash"), element.get("by"));
        }
    }
}

/// Certificate input decoding: URL-encoded PEM, raw DER, RFC 9440 header.
pub fn certificate(data: &[u8]) {
    let _ = certificate::decode_url_encoded_pem(&text(data));
    let _ = certificate::decode_der(data);
    let _ = certificate::decode_rfc9440(Some(&text(data)));
    let _ = certificate::decode_file(data);
}

/// Bearer parsing.
pub fn bearer(data: &[u8]) {
    let _ = bearer::bearer_token(&Authorization::One(text(data)));
}

/// JWT header and claims handling up to and including the signature check.
pub fn jwt(data: &[u8]) {
    let (policy, keys) = fixture();
    if let Ok(jwt) = token::parse(&text(data))
        && let Some(issuer) = policy.issuers.first()
    {
        let keys = keys.key_set(0).expect("fixed keys");
        // Whatever the fuzzer builds, the signature cannot verify against the fixed key.
        assert!(
            jwt.verify(0, issuer, &keys, 1_800_000_000, 60).is_err(),
            "a forged JWT verified"
        );
    }
}

/// A whole `CheckRequest` (protobuf bytes) through conversion, decision and response.
pub fn check_request(data: &[u8]) {
    let Ok(request) = CheckRequest::decode(data) else {
        return;
    };
    let (policy, keys) = fixture();
    let decision = match convert::access_request(request, Some("x-ssl-client-cert")) {
        Ok(access) => policy.decide(keys, &access, 1_800_000_000),
        Err(reason) => certbound_core::Decision::deny(reason),
    };
    assert!(
        !matches!(decision.outcome, Outcome::Allow(_)),
        "a fuzzed request was allowed"
    );
    let response = convert::check_response(&decision, convert::ResponseOptions::default());
    assert_ne!(
        response.status.map(|s| s.code),
        Some(0),
        "a deny without a non-zero status"
    );
}

/// The fixture's policy with DPoP on, for the proof target.
fn dpop_fixture() -> &'static Policy {
    static FIXTURE: OnceLock<Policy> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let yaml = "issuers:\n  - issuer: https://idp.fuzz\n    audiences: [https://api.fuzz]\n    jwks_uri: https://idp.fuzz/jwks\n\
                    dpop:\n  enabled: true\n";
        crate::config::Settings::from_yaml(yaml, Vec::new(), None)
            .expect("fuzz DPoP policy")
            .decision
            .policy
    })
}

/// A DPoP proof (header, JWK, claims) through every check of RFC 9449 §4.3. The input is the
/// proof, then optionally `\n` method `\n` htu `\n` access token. Nothing the fuzzer writes is
/// signed by the private half of the key it names (a seed that is carries an `iat` far outside
/// the window at the fixed clock), so no proof may verify.
pub fn dpop_proof(data: &[u8]) {
    let text = text(data);
    let mut lines = text.splitn(4, '\n');
    let proof = lines.next().unwrap_or_default().to_owned();
    let method = lines.next().unwrap_or("GET");
    let htu = dpop::normalize_htu(lines.next().unwrap_or("https://api.fuzz/items"))
        .unwrap_or_else(|| "https://api.fuzz/items".into());
    let token = lines.next().unwrap_or("token");
    let policy = dpop_fixture().dpop.as_ref().expect("DPoP on");
    let proofs = [proof];
    let context = dpop::ProofContext {
        proofs: &proofs,
        method,
        htu: &htu,
        access_token: token,
        now: 1_800_000_000,
    };
    assert!(
        policy.verify_proof(&context).is_err(),
        "a fuzzed DPoP proof verified"
    );
}

/// `htu` normalisation: never panics, and a normalised URI normalises to itself.
pub fn htu(data: &[u8]) {
    if let Some(normal) = dpop::normalize_htu(&text(data)) {
        assert_eq!(
            dpop::normalize_htu(&normal).as_deref(),
            Some(normal.as_str()),
            "htu normalisation is not idempotent"
        );
    }
}

/// Route rules shaped like real ones: an anonymous prefix, a scoped prefix, an exact path and a
/// regex, so the matcher has something less restrictive to be tricked into.
fn path_routes() -> &'static certbound_core::RoutePolicy {
    static ROUTES: OnceLock<certbound_core::RoutePolicy> = OnceLock::new();
    ROUTES.get_or_init(|| {
        let yaml = "issuers:\n  - issuer: https://idp.fuzz\n    audiences: [https://api.fuzz]\n    jwks_uri: https://idp.fuzz/jwks\n\
                    policy:\n  rules:\n    - name: public\n      path_prefix: /public/\n      allow_anonymous: true\n\
                    \x20   - name: admin\n      path_prefix: /admin\n      scopes: [admin]\n\
                    \x20   - name: exact\n      path: /reports/summary\n      scopes: [reports]\n\
                    \x20   - name: regex\n      path_regex: '/orders/[0-9]+'\n      scopes: [orders]\n";
        crate::config::Settings::from_yaml(yaml, Vec::new(), None)
            .expect("fuzz route policy")
            .decision
            .policy
            .routes
    })
}

const SEGMENTS: [&str; 10] = [
    "admin", "public", "reports", "summary", "orders", "7", "x", "a.b", "~u", "admin-x",
];

/// The path canonicaliser and the route matcher. The input picks a canonical path (segments of
/// the rules' words) and then respellings every upstream resolves to that same path (`./`,
/// doubled slashes, percent-encoded unreserved characters in either case, `seg/../`, a query).
/// Whatever the spelling, the matcher selects the canonical path's rule or refuses the path
/// (`path_unsafe`): never another, less restrictive rule. Arbitrary paths are canonicalised too:
/// a canonical form is its own canonical form, and has nothing left to resolve. And with no
/// token, a request on any path is never allowed unless its canonical path's rule is anonymous.
pub fn path(data: &[u8]) {
    let (shape, ops) = match data.iter().position(|&b| b == 0xff) {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &[][..]),
    };
    // Arbitrary bytes as a path.
    let arbitrary = text(data);
    let routes = path_routes();
    for mode in [EscapedSlashes::Reject, EscapedSlashes::Keep] {
        if let Ok(canonical) = path::canonical(&arbitrary, mode) {
            assert_eq!(
                path::canonical(&canonical, mode).as_deref(),
                Ok(canonical.as_ref()),
                "canonical form not stable for {arbitrary:?}"
            );
            if canonical.starts_with('/') {
                assert!(
                    !canonical.contains("//")
                        && !canonical.contains("/./")
                        && !canonical.contains("/../")
                        && !canonical.ends_with("/.")
                        && !canonical.ends_with("/.."),
                    "{canonical:?} (from {arbitrary:?}) still has something to resolve"
                );
            }
        }
    }
    // A canonical path and a respelling of it.
    let mut canonical = String::new();
    for &b in shape.iter().take(12) {
        canonical.push('/');
        canonical.push_str(SEGMENTS[usize::from(b) % SEGMENTS.len()]);
    }
    if canonical.is_empty() {
        canonical.push('/');
    }
    let spelled = respell(&canonical, ops);
    let expected = routes
        .select(&request_for(&canonical))
        .expect("a canonical path of plain segments is always routable")
        .rule;
    match routes.select(&request_for(&spelled)) {
        Ok(applied) => assert_eq!(
            applied.rule, expected,
            "{spelled:?} selected {} where its canonical path {canonical:?} selects {expected}",
            applied.rule
        ),
        Err(reason) => assert_eq!(reason, certbound_core::DenyReason::PathUnsafe),
    }
    // No token: only an anonymous rule may allow.
    let (policy, keys) = fixture();
    let decision = policy.decide(keys, &request_for(&spelled), 1_800_000_000);
    assert!(
        !matches!(decision.outcome, Outcome::Allow(_)),
        "{spelled:?} was allowed without a token"
    );
}

fn request_for(path: &str) -> AccessRequest {
    AccessRequest {
        method: "GET".into(),
        host: "api.fuzz".into(),
        path: path.into(),
        ..AccessRequest::default()
    }
}

/// Respells `canonical` as the `ops` bytes say, keeping what every upstream resolves it to.
fn respell(canonical: &str, ops: &[u8]) -> String {
    let mut out = canonical.to_owned();
    let mut query = false;
    for pair in ops.chunks(2) {
        let (op, at) = (pair[0], pair.get(1).copied().unwrap_or(0));
        let path_len = out.find('?').unwrap_or(out.len());
        let slashes: Vec<usize> = out[..path_len].match_indices('/').map(|(i, _)| i).collect();
        let slash = slashes[usize::from(at) % slashes.len()];
        match op % 5 {
            0 => out.insert_str(slash + 1, "./"),
            1 => out.insert(slash, '/'),
            2 => {
                // Percent-encode one unreserved character of the path.
                let candidates: Vec<usize> = out[..path_len]
                    .char_indices()
                    .filter(|&(_, c)| c.is_ascii_alphanumeric() || "-._~".contains(c))
                    .map(|(i, _)| i)
                    .collect();
                if let Some(&i) = candidates.get(usize::from(at) % candidates.len().max(1)) {
                    let byte = out.as_bytes()[i];
                    let encoded = if op & 0x80 == 0 {
                        format!("%{byte:02X}")
                    } else {
                        format!("%{byte:02x}")
                    };
                    out.replace_range(i..=i, &encoded);
                }
            }
            3 => {
                let segment = SEGMENTS[usize::from(op / 5) % SEGMENTS.len()];
                out.insert_str(slash + 1, &format!("{segment}/../"));
            }
            _ if !query => {
                query = true;
                out.push_str("?next=/public/../x");
            }
            _ => {}
        }
        if out.len() > 512 {
            break;
        }
    }
    out
}

/// forward_auth settings for the conversion target: the X-Forwarded-* convention, and Envoy's
/// http_service mode.
fn forward_auth_fixture() -> &'static [crate::config::ForwardAuthSettings; 2] {
    static FIXTURE: OnceLock<[crate::config::ForwardAuthSettings; 2]> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let settings = |extra: &str| {
            let yaml = format!(
                "issuers:\n  - issuer: https://idp.fuzz\n    audiences: [https://api.fuzz]\n    jwks_uri: https://idp.fuzz/jwks\n\
                 forward_auth: {{listen: 127.0.0.1:1{extra}}}\n"
            );
            crate::config::Settings::from_yaml(&yaml, Vec::new(), None)
                .expect("fuzz forward_auth")
                .forward_auth
                .expect("forward_auth on")
        };
        [settings(""), settings(", path_prefix: /certbound")]
    })
}

/// The forward-auth conversion: a check request's head (first line: mode byte, then the check's
/// target; then one `name: value` header per line) -> `AccessRequest` or a refusal. Whatever the
/// headers, an accepted check was read from exactly one source per part: no other header a
/// client could name the request in, no underscore spelling of one, the path exactly the one
/// source's value; and nothing the fuzzer sends is allowed.
pub fn forward_auth(data: &[u8]) {
    let text = text(data);
    let mut lines = text.split('\n');
    let first = lines.next().unwrap_or_default();
    let envoy = first.starts_with('E');
    let target = first.get(1..).unwrap_or("/");
    let mut builder = http::Request::builder().uri(target);
    for line in lines {
        if let Some((name, value)) = line.split_once(':')
            && let (Ok(name), Ok(value)) = (
                http::HeaderName::from_bytes(name.trim().as_bytes()),
                http::HeaderValue::from_str(value.trim()),
            )
        {
            builder = builder.header(name, value);
        }
    }
    let Ok(request) = builder.body(()) else {
        return;
    };
    let (head, ()) = request.into_parts();
    let settings = &forward_auth_fixture()[usize::from(envoy)];
    let (policy, keys) = fixture();
    let peer = std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
    let Ok(access) = crate::forward_auth::access_request(&head, peer, settings, policy) else {
        return;
    };
    let headers = &head.headers;
    let fields = &settings.headers;
    let sources: Vec<&str> = if envoy {
        vec![
            fields.proto.as_str(),
            "x-forwarded-client-cert",
            "client-cert",
        ]
    } else {
        vec![
            fields.method.as_str(),
            fields.uri.as_str(),
            fields.host.as_str(),
            fields.proto.as_str(),
            "x-forwarded-client-cert",
            "client-cert",
        ]
    };
    for name in crate::forward_auth::candidate_headers() {
        assert!(
            sources.contains(&name) || !headers.contains_key(name),
            "accepted with a client's {name}"
        );
    }
    for name in &sources {
        assert!(
            headers.get_all(*name).iter().count() <= 1,
            "two values of {name}"
        );
    }
    for name in headers.keys() {
        let dashed = name.as_str().replace('_', "-");
        assert!(
            !name.as_str().contains('_')
                || !(crate::forward_auth::candidate_headers().any(|c| c == dashed)
                    || dashed.starts_with("x-certbound-")
                    || dashed == "authorization"),
            "accepted with an underscore spelling {name}"
        );
    }
    if !envoy {
        let uri = headers.get(fields.uri.as_str()).expect("a path source");
        // The source's path, an empty one or a bare query read from the root.
        let uri = uri.as_bytes();
        let expected = match uri.first() {
            None | Some(b'?') => [b"/", uri].concat(),
            Some(_) => uri.to_vec(),
        };
        assert_eq!(
            access.path.as_bytes(),
            expected,
            "the path is not the source's"
        );
    }
    let decision = policy.decide(keys, &access, 1_800_000_000);
    assert!(
        !matches!(decision.outcome, Outcome::Allow(_)),
        "a fuzzed check was allowed"
    );
}
