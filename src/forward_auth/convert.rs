//! The only place the HTTP authorization API's requests meet the core: a proxy's check request
//! -> `AccessRequest`, and `Decision` -> the HTTP answer the proxy acts on.

use std::borrow::Cow;
use std::net::IpAddr;

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, HOST};
use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode, request};
use http_body_util::Full;

use crate::config::ForwardAuthSettings;
use certbound_core::answer::NOT_FOUND_BODY;
use certbound_core::resource::WELL_KNOWN_PREFIX;
use certbound_core::{
    AccessRequest, Authorization, CertificateSource, Decision, DenyReason, Outcome,
    PeerCertificate, Policy,
};

/// Headers a client can add to name another method than the one the upstream acts on: proxies'
/// conventions, and the method overrides frameworks honour (Express, Symfony, Rails, ...).
const METHOD_CANDIDATES: &[&str] = &[
    "x-forwarded-method",
    "x-original-method",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];
/// ... another path: proxies' conventions, IIS/Symfony's rewrite headers, Spring's prefix.
const URI_CANDIDATES: &[&str] = &[
    "x-forwarded-uri",
    "x-original-uri",
    "x-original-url",
    "x-rewrite-url",
    "x-forwarded-path",
    "x-forwarded-prefix",
    "x-envoy-original-path",
];
/// ... another host.
const HOST_CANDIDATES: &[&str] = &["x-forwarded-host", "x-original-host", "x-host"];
/// ... another scheme.
const PROTO_CANDIDATES: &[&str] = &[
    "x-forwarded-proto",
    "x-forwarded-scheme",
    "x-scheme",
    "x-url-scheme",
    "x-forwarded-ssl",
    "front-end-https",
];
/// ... another client certificate: what proxies and servers conventionally put one in.
const CERTIFICATE_CANDIDATES: &[&str] = &[
    "x-forwarded-client-cert",
    "client-cert",
    "client-cert-chain",
    "x-forwarded-tls-client-cert",
    "x-ssl-client-cert",
    "ssl-client-cert",
    "x-client-cert",
    "x-ssl-cert",
    "x-arr-clientcert",
];
/// Every header a client could name a part of the request in (the sources among them).
pub fn candidate_headers() -> impl Iterator<Item = &'static str> {
    [
        METHOD_CANDIDATES,
        URI_CANDIDATES,
        HOST_CANDIDATES,
        PROTO_CANDIDATES,
        CERTIFICATE_CANDIDATES,
    ]
    .into_iter()
    .flatten()
    .copied()
}

/// Reads the request a proxy asks about. A peer outside `trusted_peers` is refused before any
/// header is read. Each part of the original request comes from exactly one source, the one the
/// configured proxy sets and overwrites: a check that also carries a header a client could have
/// added to name that part differently (or two values of the source) is refused
/// (`request_invalid`), never decided, since certbound cannot tell which one the upstream acts
/// on. So is a header that differs from one certbound reads or sets only by `_` for `-`: CGI,
/// WSGI, PHP and many frameworks read both spellings as one.
pub fn access_request(
    head: &request::Parts,
    peer: IpAddr,
    settings: &ForwardAuthSettings,
    policy: &Policy,
) -> Result<AccessRequest, DenyReason> {
    if !settings.trusts(peer) {
        return Err(DenyReason::ProxyUntrusted);
    }
    let headers = &head.headers;
    let refuse = |why: &str, name: &str| {
        tracing::debug!(header = name, "forward_auth: check refused: {why}");
        DenyReason::RequestInvalid
    };
    let fields = &settings.headers;
    let envoy = settings.path_prefix.is_some();
    // In Envoy's http_service mode the check itself is the original request: no header names
    // its method, path or host.
    let sources: [&str; 4] = if envoy {
        ["", "", "", &fields.proto]
    } else {
        [&fields.method, &fields.uri, &fields.host, &fields.proto]
    };
    let certificate_sources = certificate_headers(policy);
    let groups = [
        METHOD_CANDIDATES,
        URI_CANDIDATES,
        HOST_CANDIDATES,
        PROTO_CANDIDATES,
        CERTIFICATE_CANDIDATES,
    ];
    for candidates in groups {
        for &name in candidates {
            let ours = sources.contains(&name) || certificate_sources.contains(&name);
            if !ours && headers.contains_key(name) {
                return Err(refuse("a header a client could name the request in", name));
            }
        }
    }
    // RFC 7239 `Forwarded` can name a host and a scheme too (its `for=` alone is harmless).
    let names_host_or_proto = |value: &HeaderValue| {
        let value = value.as_bytes().to_ascii_lowercase();
        value.windows(5).any(|w| w == b"host=") || value.windows(6).any(|w| w == b"proto=")
    };
    if headers.get_all("forwarded").iter().any(names_host_or_proto) {
        return Err(refuse(
            "a header a client could name the request in",
            "forwarded",
        ));
    }
    for name in sources.iter().chain(&certificate_sources) {
        if !name.is_empty() && headers.get_all(*name).iter().nth(1).is_some() {
            return Err(refuse("two values of a header that must have one", name));
        }
    }
    for name in headers.keys() {
        let name = name.as_str();
        // `_`, `.`, `~` and the like: PHP, CGI gateways and lighttpd map any byte that is not a
        // letter or digit to the same variable.
        let aliased = policy.aliases_a_header(name)
            || certbound_core::policy::dashed_spelling(name)
                .is_some_and(|dashed| names_a_part(&dashed, settings));
        if aliased {
            return Err(refuse("another spelling of a header certbound uses", name));
        }
    }
    // An allowed request that upgrades to h2c turns the proxy's connection into a tunnel whose
    // requests certbound never sees (HAProxy and Caddy forward the upgrade).
    let upgrade_h2c = |value: &HeaderValue| {
        value
            .as_bytes()
            .windows(3)
            .any(|w| w.eq_ignore_ascii_case(b"h2c"))
    };
    if headers.get_all("upgrade").iter().any(upgrade_h2c) {
        return Err(refuse("an upgrade to h2c", "upgrade"));
    }
    let one = |name: &str| first(headers, name);
    let (method, path, host) = if envoy {
        let path = own_path(head, settings.path_prefix.as_deref().unwrap_or_default())
            .ok_or_else(|| refuse("a path outside path_prefix", ":path"))?;
        let host = one(HOST.as_str())
            .or_else(|| head.uri.authority().map(|a| a.as_str().to_owned()))
            .unwrap_or_default();
        (head.method.as_str().to_owned(), path, host)
    } else {
        let method = one(&fields.method).ok_or_else(|| refuse("no method", &fields.method))?;
        let path = one(&fields.uri).ok_or_else(|| refuse("no path", &fields.uri))?;
        // An absolute-form target with an empty path (`GET http://host?q=1`): NGINX's
        // $request_uri is then `?q=1`, which the upstream serves as `/?q=1`.
        let path = match path.as_bytes().first() {
            None => "/".to_owned(),
            Some(b'?') => format!("/{path}"),
            Some(_) => path,
        };
        (method, path, one(&fields.host).unwrap_or_default())
    };
    if method.is_empty()
        || !method
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        return Err(refuse("not one method", "method"));
    }
    if host.contains([',', ' ']) {
        return Err(refuse("not one host", "host"));
    }
    let scheme = one(&fields.proto).unwrap_or_default();
    if scheme.contains([',', ' ']) {
        return Err(refuse("not one scheme", &fields.proto));
    }
    let mut authorization = all(headers, "authorization");
    let authorization = match authorization.len() {
        0 => Authorization::Absent,
        1 => Authorization::One(authorization.swap_remove(0)),
        _ => Authorization::Multiple,
    };
    let xfcc = one("x-forwarded-client-cert");
    let certificate_header = policy
        .certificate_header
        .as_ref()
        .and_then(|h| one(&h.name));
    let cors_preflight = method.eq_ignore_ascii_case("OPTIONS")
        && headers.contains_key("origin")
        && headers.contains_key("access-control-request-method");
    Ok(AccessRequest {
        authorization,
        // The proxy's connection to certbound is not the client's.
        peer_certificate: PeerCertificate::Absent,
        xfcc,
        request_id: one("x-request-id"),
        traceparent: one("traceparent"),
        client_cert: one("client-cert"),
        certificate_header,
        method,
        path,
        host,
        scheme,
        dpop_proofs: all(headers, "dpop"),
        // Already read above, from the trusted proxy's headers.
        forwarded_proto: None,
        forwarded_host: None,
        context_extensions: Default::default(),
        cors_preflight,
    })
}

/// Envoy's http_service: the check's own path after `prefix` is the original path.
fn own_path(head: &request::Parts, prefix: &str) -> Option<String> {
    let path = head.uri.path_and_query().map_or("/", |p| p.as_str());
    let rest = path.strip_prefix(prefix)?;
    match rest.as_bytes().first() {
        None => Some("/".to_owned()),
        Some(b'/') => Some(rest.to_owned()),
        Some(b'?') => Some(format!("/{rest}")),
        Some(_) => None,
    }
}

/// The certificate headers certbound reads under `policy`'s sources.
fn certificate_headers(policy: &Policy) -> Vec<&str> {
    policy
        .certificate_sources
        .iter()
        .filter_map(|source| match source {
            CertificateSource::Peer => None,
            CertificateSource::Xfcc => Some("x-forwarded-client-cert"),
            CertificateSource::ClientCert => Some("client-cert"),
            CertificateSource::Header => {
                policy.certificate_header.as_ref().map(|h| h.name.as_str())
            }
        })
        .collect()
}

/// Whether `name` (lower-case, dashes) is a header forward auth reads a part of the request
/// from, or one a client could name the request in (the headers every shape reads or sets are
/// [`Policy::aliases_a_header`]'s).
fn names_a_part(name: &str, settings: &ForwardAuthSettings) -> bool {
    let fields = &settings.headers;
    [&fields.method, &fields.uri, &fields.host, &fields.proto]
        .iter()
        .any(|f| f.as_str() == name)
        || candidate_headers().any(|c| c == name)
        || matches!(name, "host" | "forwarded")
}

fn text(value: &HeaderValue) -> String {
    String::from_utf8_lossy(value.as_bytes()).into_owned()
}

fn first(headers: &HeaderMap, name: &str) -> Option<String> {
    headers.get(name).map(text)
}

fn all(headers: &HeaderMap, name: &str) -> Vec<String> {
    headers.get_all(name).iter().map(text).collect()
}

/// Whether a request to the listener is a client's fetch of a resource's metadata that the
/// proxy routed here (RFC 9728 §3), not a check: it names no original request (no forwarded URI
/// header, and outside `path_prefix` in Envoy's mode) and its own path is under
/// `/.well-known/oauth-protected-resource`.
pub fn is_metadata_fetch(head: &request::Parts, settings: &ForwardAuthSettings) -> bool {
    let path = head.uri.path();
    let forwarded = head.headers.contains_key(settings.headers.uri.as_str());
    let checked_by_prefix = settings
        .path_prefix
        .as_deref()
        .is_some_and(|prefix| path.starts_with(prefix));
    !forwarded && !checked_by_prefix && path.starts_with(WELL_KNOWN_PREFIX)
}

/// A metadata fetch as the core sees it: the listener's own request.
pub fn metadata_request(head: &request::Parts) -> AccessRequest {
    AccessRequest {
        method: head.method.as_str().to_owned(),
        path: head
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned(),
        request_id: first(&head.headers, "x-request-id"),
        traceparent: first(&head.headers, "traceparent"),
        ..AccessRequest::default()
    }
}

/// The answer to a metadata fetch ([`is_metadata_fetch`]): the document (200), 404 or 405.
pub fn metadata_response(decision: &Decision, reason_header: bool) -> Response<Full<Bytes>> {
    answer(decision, reason_header, true)
}

/// The answer the proxy acts on: 200 with the claim headers (and `DPoP-Nonce`) to copy, or the
/// core's refusal byte for byte (401, 403, 400, 503). A check whose original request is a
/// metadata fetch is never answered 2xx (the proxy would pass it upstream): 404, and the
/// proxy should route `/.well-known/oauth-protected-resource` to this listener instead.
pub fn response(decision: &Decision, reason_header: bool) -> Response<Full<Bytes>> {
    answer(decision, reason_header, false)
}

fn answer(decision: &Decision, reason_header: bool, fetch: bool) -> Response<Full<Bytes>> {
    if let (Outcome::Metadata(metadata), false) = (&decision.outcome, fetch) {
        tracing::debug!(
            resource = metadata.resource.id,
            "a forward-auth check for a metadata path: answered 404; route \
             /.well-known/oauth-protected-resource to certbound's HTTP API listener instead"
        );
        let mut response = Response::new(Full::new(Bytes::from_static(NOT_FOUND_BODY.as_bytes())));
        *response.status_mut() = StatusCode::NOT_FOUND;
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        return response;
    }
    let mut response = Response::new(Full::new(Bytes::new()));
    let headers = response.headers_mut();
    let mut add = |name: &str, value: &str| {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            headers.append(name, value);
        }
    };
    match (&decision.outcome, decision.http_answer(reason_header)) {
        (Outcome::Allow(upstream), _) => {
            for (name, value) in &upstream.set_headers {
                add(name, value);
            }
            for (name, value) in &upstream.response_headers {
                add(name, value);
            }
            headers.insert(CONTENT_LENGTH, HeaderValue::from_static("0"));
        }
        (_, Some(answer)) => {
            for (name, value) in &answer.headers {
                add(name, value);
            }
            *response.status_mut() =
                StatusCode::from_u16(answer.status).unwrap_or(StatusCode::UNAUTHORIZED);
            *response.body_mut() = Full::new(match answer.body {
                Cow::Borrowed(body) => Bytes::from_static(body.as_bytes()),
                Cow::Owned(body) => Bytes::from(body),
            });
        }
        // Every refusal has an answer; should one not, it is still a refusal.
        (_, None) => *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE,
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use certbound_core::UnavailableReason;
    use certbound_core::config::FileConfig;

    fn settings(yaml: &str) -> ForwardAuthSettings {
        let text = format!(
            "introspection: {{endpoint: https://as.example/i, client_id: a, client_secret_env: S}}\n\
             forward_auth: {yaml}\n"
        );
        let env = [("S".to_owned(), "secret".to_owned())];
        crate::config::Settings::from_yaml(&text, env, None)
            .unwrap()
            .forward_auth
            .unwrap()
    }

    fn policy(yaml: &str) -> Policy {
        let file: FileConfig = serde_yaml_ng::from_str(yaml).unwrap();
        file.decision_settings(None).unwrap().policy
    }

    fn head(uri: &str, headers: &[(&str, &str)]) -> request::Parts {
        let mut builder = http::Request::builder().uri(uri);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(()).unwrap().into_parts().0
    }

    const LOCAL: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    #[test]
    fn the_original_request_comes_from_the_forwarded_headers() {
        let on = settings("{listen: 127.0.0.1:1}");
        let head = head(
            "/auth?q=1",
            &[
                ("host", "127.0.0.1:9292"),
                ("x-forwarded-method", "POST"),
                ("x-forwarded-uri", "/items/7?x=1"),
                ("x-forwarded-host", "api.example.com"),
                ("x-forwarded-proto", "https"),
                ("authorization", "Bearer t"),
            ],
        );
        let request = access_request(&head, LOCAL, &on, &policy("{}")).unwrap();
        assert_eq!(request.method, "POST");
        assert_eq!(request.path, "/items/7?x=1");
        assert_eq!(request.host, "api.example.com");
        assert_eq!(request.scheme, "https");
        assert_eq!(request.authorization, Authorization::One("Bearer t".into()));
        assert_eq!(request.peer_certificate, PeerCertificate::Absent);
    }

    #[test]
    fn another_convention_is_configured_not_guessed() {
        let on = settings(
            "{listen: 127.0.0.1:1, headers: {method: X-Original-Method, uri: X-Original-URI}}",
        );
        let head = head(
            "/_certbound",
            &[("x-original-method", "GET"), ("x-original-uri", "/a")],
        );
        let request = access_request(&head, LOCAL, &on, &policy("{}")).unwrap();
        assert_eq!(
            (request.method.as_str(), request.path.as_str()),
            ("GET", "/a")
        );
        // The default convention's headers are then a client's.
        let head = head_with(&[
            ("x-original-method", "GET"),
            ("x-original-uri", "/a"),
            ("x-forwarded-uri", "/public/"),
        ]);
        assert_eq!(
            access_request(&head, LOCAL, &on, &policy("{}")).unwrap_err(),
            DenyReason::RequestInvalid
        );
    }

    fn head_with(headers: &[(&str, &str)]) -> request::Parts {
        head("/auth", headers)
    }

    const ORIGINAL: &[(&str, &str)] = &[
        ("x-forwarded-method", "GET"),
        ("x-forwarded-uri", "/admin/x"),
        ("x-forwarded-host", "api.example.com"),
        ("x-forwarded-proto", "https"),
    ];

    /// The finding: a client's own header beside the proxy's named another request.
    #[test]
    fn a_check_carrying_a_clients_copy_of_any_part_is_refused() {
        let on = settings("{listen: 127.0.0.1:1}");
        let cert = policy(
            "certificate: {sources: [header], header: {name: x-ssl-client-cert, encoding: pem_url}}",
        );
        assert!(access_request(&head_with(ORIGINAL), LOCAL, &on, &cert).is_ok());
        let mut added: Vec<(&str, &str)> = Vec::new();
        for group in [
            METHOD_CANDIDATES,
            URI_CANDIDATES,
            HOST_CANDIDATES,
            PROTO_CANDIDATES,
            CERTIFICATE_CANDIDATES,
        ] {
            for name in group.iter().copied() {
                // Two values of the sources themselves: the next test.
                let source =
                    ORIGINAL.iter().any(|(n, _)| *n == name) || name == "x-ssl-client-cert";
                if !source {
                    added.push((name, "x"));
                }
            }
        }
        added.push(("forwarded", "for=1.2.3.4;host=evil.example"));
        added.push(("Forwarded", "proto=http"));
        for extra in added {
            let mut headers = ORIGINAL.to_vec();
            headers.push(extra);
            let result = access_request(&head_with(&headers), LOCAL, &on, &cert);
            assert_eq!(result.unwrap_err(), DenyReason::RequestInvalid, "{extra:?}");
        }
        // `Forwarded` naming only the client address is no other source.
        let mut headers = ORIGINAL.to_vec();
        headers.push(("forwarded", "for=192.0.2.1"));
        assert!(access_request(&head_with(&headers), LOCAL, &on, &cert).is_ok());
    }

    #[test]
    fn two_values_of_a_source_are_refused_and_so_is_a_list_in_one() {
        let on = settings("{listen: 127.0.0.1:1}");
        let cert = policy(
            "certificate: {sources: [header], header: {name: x-ssl-client-cert, encoding: pem_url}}",
        );
        for extra in [
            ("x-forwarded-method", "DELETE"),
            ("x-forwarded-uri", "/public/x"),
            ("x-forwarded-host", "evil.example"),
            ("x-forwarded-proto", "http"),
            ("x-ssl-client-cert", "a"),
        ] {
            let mut headers = ORIGINAL.to_vec();
            headers.push(extra);
            headers.push(("x-ssl-client-cert", "b"));
            if extra.0 == "x-ssl-client-cert" {
                headers.pop();
            }
            headers.push(extra);
            let result = access_request(&head_with(&headers), LOCAL, &on, &cert);
            assert_eq!(result.unwrap_err(), DenyReason::RequestInvalid, "{extra:?}");
        }
        for (name, value) in [
            ("x-forwarded-method", "GET, DELETE"),
            ("x-forwarded-method", "GET DELETE"),
            ("x-forwarded-host", "a.example, evil.example"),
            ("x-forwarded-proto", "https,http"),
        ] {
            let headers: Vec<_> = ORIGINAL
                .iter()
                .map(|&(n, v)| if n == name { (n, value) } else { (n, v) })
                .collect();
            let result = access_request(&head_with(&headers), LOCAL, &on, &cert);
            assert_eq!(
                result.unwrap_err(),
                DenyReason::RequestInvalid,
                "{name}: {value}"
            );
        }
    }

    /// The finding: `X_Certbound_Subject` beside the proxy's `X-Certbound-Subject`.
    #[test]
    fn underscore_spellings_of_headers_certbound_uses_are_refused() {
        let on = settings("{listen: 127.0.0.1:1}");
        let with_claims = policy(
            "certificate: {sources: [header], header: {name: x-ssl-client-cert, encoding: pem_url}}\n\
             upstream: {claim_headers: {sub: x-user}}",
        );
        for name in [
            "x_certbound_subject",
            "x_user",
            "x_forwarded_uri",
            "x_forwarded_method",
            "x_original_url",
            "x_ssl_client_cert",
            "x_forwarded_tls_client_cert",
            "x_forwarded_client_cert",
            "dpop_nonce",
        ] {
            let mut headers = ORIGINAL.to_vec();
            headers.push((name, "evil"));
            let result = access_request(&head_with(&headers), LOCAL, &on, &with_claims);
            assert_eq!(result.unwrap_err(), DenyReason::RequestInvalid, "{name}");
        }
        for name in [
            "x.certbound.subject",
            "x~certbound~subject",
            "x.original.url",
            "x.user",
        ] {
            let mut headers = ORIGINAL.to_vec();
            headers.push((name, "evil"));
            let result = access_request(&head_with(&headers), LOCAL, &on, &with_claims);
            assert_eq!(result.unwrap_err(), DenyReason::RequestInvalid, "{name}");
        }
        // An underscore in a header certbound has nothing to do with is the upstream's business.
        let mut headers = ORIGINAL.to_vec();
        headers.push(("x_trace_tag", "1"));
        assert!(access_request(&head_with(&headers), LOCAL, &on, &with_claims).is_ok());
    }

    #[test]
    fn an_upgrade_to_h2c_is_refused_and_an_empty_path_is_the_root() {
        let on = settings("{listen: 127.0.0.1:1}");
        for value in ["h2c", "H2C", "websocket, h2c"] {
            let mut headers = ORIGINAL.to_vec();
            headers.push(("upgrade", value));
            let result = access_request(&head_with(&headers), LOCAL, &on, &policy("{}"));
            assert_eq!(result.unwrap_err(), DenyReason::RequestInvalid, "{value}");
        }
        let mut headers = ORIGINAL.to_vec();
        headers.push(("upgrade", "websocket"));
        assert!(access_request(&head_with(&headers), LOCAL, &on, &policy("{}")).is_ok());
        for (uri, path) in [("?q=1", "/?q=1"), ("", "/")] {
            let headers: Vec<_> = ORIGINAL
                .iter()
                .map(|&(n, v)| {
                    if n == "x-forwarded-uri" {
                        (n, uri)
                    } else {
                        (n, v)
                    }
                })
                .collect();
            let request = access_request(&head_with(&headers), LOCAL, &on, &policy("{}")).unwrap();
            assert_eq!(request.path, path);
        }
    }

    #[test]
    fn envoy_mode_reads_the_check_itself_and_refuses_forwarded_copies() {
        let on = settings("{listen: 127.0.0.1:1, path_prefix: /certbound}");
        let head = head(
            "/certbound/admin/x",
            &[("host", "api.example.com"), ("x-forwarded-proto", "https")],
        );
        let request = access_request(&head, LOCAL, &on, &policy("{}")).unwrap();
        assert_eq!(
            (
                request.path.as_str(),
                request.host.as_str(),
                request.scheme.as_str()
            ),
            ("/admin/x", "api.example.com", "https")
        );
        for name in ["x-forwarded-uri", "x-forwarded-method", "x-forwarded-host"] {
            let head = head_of("/certbound/admin/x", &[(name, "/public/x")]);
            assert_eq!(
                access_request(&head, LOCAL, &on, &policy("{}")).unwrap_err(),
                DenyReason::RequestInvalid,
                "{name}"
            );
        }
    }

    fn head_of(uri: &str, headers: &[(&str, &str)]) -> request::Parts {
        head(uri, headers)
    }

    #[test]
    fn a_check_that_names_no_request_is_invalid_not_a_check_of_its_own_path() {
        let on = settings("{listen: 127.0.0.1:1}");
        for headers in [
            &[("x-forwarded-method", "GET")][..],
            &[("x-forwarded-uri", "/admin")][..],
            &[][..],
        ] {
            let head = head("/admin", headers);
            assert_eq!(
                access_request(&head, LOCAL, &on, &policy("{}")).unwrap_err(),
                DenyReason::RequestInvalid,
                "{headers:?}"
            );
        }
    }

    #[test]
    fn envoy_http_service_checks_its_own_path_under_the_prefix() {
        let on = settings("{listen: 127.0.0.1:1, path_prefix: /certbound}");
        for (path, original) in [
            ("/certbound/items?x=1", "/items?x=1"),
            ("/certbound", "/"),
            ("/certbound?x=1", "/?x=1"),
        ] {
            let head = head(path, &[]);
            let request = access_request(&head, LOCAL, &on, &policy("{}")).unwrap();
            assert_eq!(request.path, original);
        }
        // Outside the prefix (or a look-alike) the check names no request.
        for path in ["/certboundx/items", "/items"] {
            assert_eq!(
                access_request(&head(path, &[]), LOCAL, &on, &policy("{}")).unwrap_err(),
                DenyReason::RequestInvalid
            );
        }
    }

    #[test]
    fn an_untrusted_peer_is_refused_before_anything_is_read() {
        let on = settings("{listen: 127.0.0.1:1}");
        let head = head(
            "/a",
            &[("x-forwarded-uri", "/a"), ("x-forwarded-method", "GET")],
        );
        let peer: IpAddr = "10.1.2.3".parse().unwrap();
        assert_eq!(
            access_request(&head, peer, &on, &policy("{}")).unwrap_err(),
            DenyReason::ProxyUntrusted
        );
        assert!(DenyReason::ProxyUntrusted.is_forbidden());
    }

    #[test]
    fn the_certificate_header_is_read_by_its_configured_name() {
        let on = settings("{listen: 127.0.0.1:1}");
        let with_header = policy(
            "certificate: {sources: [header], header: {name: X-SSL-Client-Cert, encoding: pem_url}}",
        );
        let head = head(
            "/a",
            &[
                ("x-forwarded-uri", "/a"),
                ("x-forwarded-method", "GET"),
                ("x-ssl-client-cert", "abc"),
            ],
        );
        let request = access_request(&head, LOCAL, &on, &with_header).unwrap();
        assert_eq!(request.certificate_header.as_deref(), Some("abc"));
        // Without that source the header is a client's: refused, not ignored.
        assert_eq!(
            access_request(&head, LOCAL, &on, &policy("{}")).unwrap_err(),
            DenyReason::RequestInvalid
        );
    }

    #[test]
    fn answers_are_the_core_s_with_the_status_the_proxy_acts_on() {
        let denied = response(&Decision::deny(DenyReason::BindingMismatch), false);
        assert_eq!(denied.status(), 401);
        assert_eq!(denied.headers()["content-type"], "application/json");
        assert!(denied.headers().contains_key("www-authenticate"));
        let forbidden = response(&Decision::deny(DenyReason::ScopeMissing), false);
        assert_eq!(forbidden.status(), 403);
        let unavailable = response(
            &Decision::unavailable(UnavailableReason::KeysUnavailable),
            false,
        );
        assert_eq!(unavailable.status(), 503);
    }
}
