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
    AccessRequest, Authorization, Decision, DenyReason, Outcome, PeerCertificate, Policy,
};

/// Reads the request a proxy asks about. A peer outside `trusted_peers` is refused before any
/// header is read; a check that does not say which request it is for (no original URI or
/// method, outside Envoy's `path_prefix` mode) cannot be decided safely.
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
    let first_of = |names: &[String]| names.iter().find_map(|name| first(headers, name));
    // Envoy's http_service: the check request is the original one, its path under the prefix.
    let own_path = settings.path_prefix.as_deref().and_then(|prefix| {
        let path = head.uri.path_and_query().map_or("/", |p| p.as_str());
        let rest = path.strip_prefix(prefix)?;
        match rest.as_bytes().first() {
            None => Some("/".to_owned()),
            Some(b'/') => Some(rest.to_owned()),
            Some(b'?') => Some(format!("/{rest}")),
            Some(_) => None,
        }
    });
    let path = first_of(&settings.headers.uri)
        .or(own_path)
        .ok_or(DenyReason::RequestInvalid)?;
    let method = match first_of(&settings.headers.method) {
        Some(method) => method,
        None if settings.path_prefix.is_some() => head.method.as_str().to_owned(),
        None => return Err(DenyReason::RequestInvalid),
    };
    let host = first_of(&settings.headers.host)
        .or_else(|| first(headers, HOST.as_str()))
        .or_else(|| head.uri.authority().map(|a| a.as_str().to_owned()))
        .unwrap_or_default();
    // A chain of proxies appends: the first entry is what the client used.
    let scheme = first_of(&settings.headers.proto)
        .map(|p| p.split(',').next().unwrap_or_default().trim().to_owned())
        .unwrap_or_default();
    let mut authorization = all(headers, "authorization");
    let authorization = match authorization.len() {
        0 => Authorization::Absent,
        1 => Authorization::One(authorization.swap_remove(0)),
        _ => Authorization::Multiple,
    };
    let xfcc = all(headers, "x-forwarded-client-cert");
    let certificate_header = policy
        .certificate_header
        .as_ref()
        .and_then(|h| first(headers, &h.name));
    let cors_preflight = method.eq_ignore_ascii_case("OPTIONS")
        && headers.contains_key("origin")
        && headers.contains_key("access-control-request-method");
    Ok(AccessRequest {
        authorization,
        // The proxy's connection to certbound is not the client's.
        peer_certificate: PeerCertificate::Absent,
        xfcc: (!xfcc.is_empty()).then(|| xfcc.join(",")),
        request_id: first(headers, "x-request-id"),
        traceparent: first(headers, "traceparent"),
        client_cert: first(headers, "client-cert"),
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
    let forwarded = settings
        .headers
        .uri
        .iter()
        .any(|name| head.headers.contains_key(name.as_str()));
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
    if let (Outcome::Metadata(resource), false) = (&decision.outcome, fetch) {
        tracing::debug!(
            resource = resource.id,
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
            for (name, value) in upstream
                .set_headers
                .iter()
                .chain(&upstream.response_headers)
            {
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
    fn the_nginx_convention_works_too() {
        let on = settings("{listen: 127.0.0.1:1}");
        let head = head(
            "/_certbound",
            &[("x-original-method", "GET"), ("x-original-uri", "/a")],
        );
        let request = access_request(&head, LOCAL, &on, &policy("{}")).unwrap();
        assert_eq!(
            (request.method.as_str(), request.path.as_str()),
            ("GET", "/a")
        );
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
        let request = access_request(&head, LOCAL, &on, &policy("{}")).unwrap();
        assert_eq!(request.certificate_header, None);
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
