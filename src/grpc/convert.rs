//! The only place proto types meet the core: `CheckRequest` -> `AccessRequest`, and
//! `Decision` -> `CheckResponse`.

use prost_types::{Struct, Value, value::Kind};

use super::pb::envoy::config::core::v3::{
    HeaderValue, HeaderValueOption, header_value_option::HeaderAppendAction,
};
use super::pb::envoy::service::auth::v3::{
    CheckRequest, CheckResponse, DeniedHttpResponse, OkHttpResponse,
    attribute_context::HttpRequest, check_response::HttpResponse,
};
use super::pb::envoy::r#type::v3::HttpStatus;
use super::pb::google::rpc;
use certbound_core::answer::HttpAnswer;
use certbound_core::{
    AccessRequest, Authorization, Decision, DenyReason, Outcome, PeerCertificate,
};

/// gRPC status codes used in `CheckResponse.status` (an absent status would ALLOW).
pub mod code {
    pub const OK: i32 = 0;
    pub const INVALID_ARGUMENT: i32 = 3;
    pub const NOT_FOUND: i32 = 5;
    pub const PERMISSION_DENIED: i32 = 7;
    pub const UNAVAILABLE: i32 = 14;
    pub const UNAUTHENTICATED: i32 = 16;
}

pub use certbound_core::answer::{FORBIDDEN_BODY, UNAUTHORIZED_BODY, UNAVAILABLE_BODY};

/// How deny responses are shaped.
#[derive(Clone, Copy, Debug, Default)]
pub struct ResponseOptions {
    /// Add `x-certbound-reason: <reason>` to denies (off by default: it also helps attackers).
    pub reason_header: bool,
}

/// Converts Envoy's request; a request without HTTP attributes cannot be authorized.
/// `certificate_header` is `certificate.header.name`, when configured.
pub fn access_request(
    request: CheckRequest,
    certificate_header: Option<&str>,
) -> Result<AccessRequest, DenyReason> {
    let attributes = request.attributes.ok_or(DenyReason::RequestInvalid)?;
    let mut http = attributes
        .request
        .and_then(|r| r.http)
        .ok_or(DenyReason::RequestInvalid)?;
    let peer_certificate = match attributes.source.map(|s| s.certificate) {
        Some(pem) if !pem.is_empty() => PeerCertificate::UrlEncodedPem(pem),
        // Envoy sends "" when the client presented no certificate.
        _ => PeerCertificate::Absent,
    };
    let mut authorization_values = take_header(&mut http, "authorization");
    let authorization = match authorization_values.len() {
        0 => Authorization::Absent,
        1 => Authorization::One(authorization_values.swap_remove(0)),
        _ => Authorization::Multiple,
    };
    let xfcc = take_header(&mut http, "x-forwarded-client-cert");
    let request_id = take_header(&mut http, "x-request-id")
        .into_iter()
        .next()
        .or_else(|| (!http.id.is_empty()).then(|| std::mem::take(&mut http.id)));
    let client_cert = take_header(&mut http, "client-cert").into_iter().next();
    let traceparent = take_header(&mut http, "traceparent").into_iter().next();
    let certificate_header =
        certificate_header.and_then(|name| take_header(&mut http, name).into_iter().next());
    let dpop_proofs = take_header(&mut http, "dpop");
    let forwarded_proto = take_header(&mut http, "x-forwarded-proto")
        .into_iter()
        .next();
    let forwarded_host = take_header(&mut http, "x-forwarded-host")
        .into_iter()
        .next();
    let cors_preflight = http.method.eq_ignore_ascii_case("OPTIONS")
        && !take_header(&mut http, "origin").is_empty()
        && !take_header(&mut http, "access-control-request-method").is_empty();
    Ok(AccessRequest {
        authorization,
        peer_certificate,
        xfcc: (!xfcc.is_empty()).then(|| xfcc.join(",")),
        request_id,
        traceparent,
        client_cert,
        certificate_header,
        method: http.method,
        path: http.path,
        host: http.host,
        scheme: http.scheme,
        dpop_proofs,
        forwarded_proto,
        forwarded_host,
        context_extensions: attributes.context_extensions.into_iter().collect(),
        cors_preflight,
    })
}

/// Whether the request carries another spelling of a header certbound reads or sets
/// ([`Policy::aliases_a_header`]): refused, since the upstream may read it as the real one.
pub fn carries_an_alias(request: &CheckRequest, policy: &certbound_core::Policy) -> bool {
    let Some(http) = request
        .attributes
        .as_ref()
        .and_then(|a| a.request.as_ref())
        .and_then(|r| r.http.as_ref())
    else {
        return false;
    };
    http.headers
        .keys()
        .any(|name| policy.aliases_a_header(name))
        || http.header_map.as_ref().is_some_and(|map| {
            map.headers
                .iter()
                .any(|h| policy.aliases_a_header(&h.key.to_ascii_lowercase()))
        })
}

/// Values of a header: moved out of `headers` (Envoy's default; each header is read once), else
/// from `header_map` (with `encode_raw_headers: true`), where repeated headers stay separate.
fn take_header(http: &mut HttpRequest, name: &str) -> Vec<String> {
    if let Some(value) = http.headers.remove(name) {
        return vec![value];
    }
    let Some(map) = &http.header_map else {
        return Vec::new();
    };
    map.headers
        .iter()
        .filter(|h| h.key.eq_ignore_ascii_case(name))
        .map(|h| {
            if h.raw_value.is_empty() {
                h.value.clone()
            } else {
                String::from_utf8_lossy(&h.raw_value).into_owned()
            }
        })
        .collect()
}

fn header(key: &str, value: impl Into<String>, action: HeaderAppendAction) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: key.into(),
            value: value.into(),
            raw_value: Vec::new(),
        }),
        append_action: action as i32,
        ..Default::default()
    }
}

/// Metadata for Envoy's access log and later filters (namespace `envoy.filters.http.ext_authz`).
fn dynamic_metadata(decision: &Decision) -> Struct {
    let fields = decision
        .metadata()
        .into_iter()
        .map(|(name, value)| {
            let value = Value {
                kind: Some(Kind::StringValue(value.to_owned())),
            };
            (name.to_owned(), value)
        })
        .collect();
    Struct { fields }
}

/// The answer Envoy acts on. Every non-allow sets a non-zero status code; the client's response
/// to a refusal is the core's [`Decision::http_answer`], byte for byte.
pub fn check_response(decision: &Decision, options: ResponseOptions) -> CheckResponse {
    let dynamic_metadata = Some(dynamic_metadata(decision));
    let refused = |answer: HttpAnswer| DeniedHttpResponse {
        status: Some(HttpStatus {
            code: i32::from(answer.status),
        }),
        headers: answer
            .headers
            .into_iter()
            .map(|(name, value)| header(name, value, HeaderAppendAction::OverwriteIfExistsOrAdd))
            .collect(),
        body: answer.body.into_owned(),
    };
    let (code, message, http_response) = match (
        &decision.outcome,
        decision.http_answer(options.reason_header),
    ) {
        (Outcome::Allow(upstream), _) => {
            let ok = OkHttpResponse {
                headers: upstream
                    .set_headers
                    .iter()
                    .map(|(k, v)| header(k, v.clone(), HeaderAppendAction::OverwriteIfExistsOrAdd))
                    .collect(),
                headers_to_remove: upstream
                    .remove_headers
                    .iter()
                    .map(|h| h.to_string())
                    .collect(),
                // To the client with the upstream's answer (RFC 9449 `DPoP-Nonce`).
                response_headers_to_add: upstream
                    .response_headers
                    .iter()
                    .map(|(k, v)| header(k, v.clone(), HeaderAppendAction::OverwriteIfExistsOrAdd))
                    .collect(),
                ..Default::default()
            };
            (code::OK, "", Some(HttpResponse::OkResponse(ok)))
        }
        (Outcome::Deny(reason), Some(answer)) => {
            let code = if reason.is_forbidden() {
                code::PERMISSION_DENIED
            } else if reason.is_bad_request() || *reason == DenyReason::MethodNotAllowed {
                code::INVALID_ARGUMENT
            } else if *reason == DenyReason::ResourceUnknown {
                code::NOT_FOUND
            } else {
                code::UNAUTHENTICATED
            };
            let denied = HttpResponse::DeniedResponse(refused(answer));
            (code, reason.as_str(), Some(denied))
        }
        // certbound's own 503 (keys, introspection or replay store unavailable, overloaded) is a
        // denial Envoy always enforces: sent as `denied_response`, never `error_response`, which
        // Envoy counts as a failed call and lets through under `failure_mode_allow: true`. That
        // setting then covers only certbound being unreachable.
        (Outcome::Unavailable(reason), Some(answer)) => {
            let denied = HttpResponse::DeniedResponse(refused(answer));
            (code::UNAVAILABLE, reason.as_str(), Some(denied))
        }
        // Every refusal has an answer; should one not, a non-zero status with no error_response
        // is still a denial (Envoy answers 403).
        // A resource's metadata (RFC 9728): a non-OK status with a `denied_response` whose HTTP
        // status is 200; Envoy answers the client with it as a local reply, and the request
        // never reaches the upstream.
        (Outcome::Metadata(_), Some(answer)) => {
            let denied = HttpResponse::DeniedResponse(refused(answer));
            (code::PERMISSION_DENIED, "resource_metadata", Some(denied))
        }
        (Outcome::Deny(_) | Outcome::Unavailable(_) | Outcome::Metadata(_), None) => {
            (code::UNAVAILABLE, "", None)
        }
    };
    CheckResponse {
        status: Some(rpc::Status {
            code,
            message: message.to_owned(),
            details: Vec::new(),
        }),
        http_response,
        dynamic_metadata,
    }
}

#[cfg(test)]
mod tests {
    use super::super::pb::envoy::config::core::v3::HeaderMap;
    use super::super::pb::envoy::service::auth::v3::{AttributeContext, attribute_context};
    use super::*;
    use certbound_core::UnavailableReason;

    fn with_http(http: HttpRequest) -> CheckRequest {
        CheckRequest {
            attributes: Some(AttributeContext {
                request: Some(attribute_context::Request {
                    time: None,
                    http: Some(http),
                }),
                ..Default::default()
            }),
        }
    }

    fn raw(key: &str, value: &[u8]) -> HeaderValue {
        HeaderValue {
            key: key.into(),
            value: String::new(),
            raw_value: value.to_vec(),
        }
    }

    #[test]
    fn missing_http_attributes_are_invalid() {
        assert_eq!(
            access_request(CheckRequest::default(), None).err(),
            Some(DenyReason::RequestInvalid)
        );
        let no_http = CheckRequest {
            attributes: Some(AttributeContext {
                request: Some(Default::default()),
                ..Default::default()
            }),
        };
        assert_eq!(
            access_request(no_http, None).err(),
            Some(DenyReason::RequestInvalid)
        );
    }

    #[test]
    fn reads_headers_map_first() {
        let mut http = HttpRequest::default();
        http.headers
            .insert("authorization".into(), "Bearer a".into());
        http.headers.insert("x-request-id".into(), "rid".into());
        let req = access_request(with_http(http), None).expect("valid");
        assert_eq!(req.authorization, Authorization::One("Bearer a".into()));
        assert_eq!(req.request_id.as_deref(), Some("rid"));
        assert_eq!(req.xfcc, None);
    }

    #[test]
    fn falls_back_to_raw_header_map_and_sees_duplicates() {
        let http = HttpRequest {
            header_map: Some(HeaderMap {
                headers: vec![
                    raw("Authorization", b"Bearer a"),
                    raw("authorization", b"Bearer b"),
                ],
            }),
            ..Default::default()
        };
        assert_eq!(
            access_request(with_http(http), None)
                .expect("valid")
                .authorization,
            Authorization::Multiple
        );
        let http = HttpRequest {
            header_map: Some(HeaderMap {
                headers: vec![raw("authorization", b"Bearer \xff")],
            }),
            ..Default::default()
        };
        let req = access_request(with_http(http), None).expect("valid");
        assert_eq!(
            req.authorization,
            Authorization::One("Bearer \u{fffd}".into())
        );
    }

    #[test]
    fn certbound_s_own_unavailability_is_an_enforced_denial_never_an_error_response() {
        for reason in [
            UnavailableReason::KeysUnavailable,
            UnavailableReason::IntrospectionUnavailable,
            UnavailableReason::ReplayStoreUnavailable,
            UnavailableReason::Overloaded,
        ] {
            let response =
                check_response(&Decision::unavailable(reason), ResponseOptions::default());
            let status = response.status.expect("status");
            assert_eq!(status.code, code::UNAVAILABLE);
            assert_eq!(status.message, reason.as_str());
            let Some(HttpResponse::DeniedResponse(denied)) = response.http_response else {
                panic!(
                    "{reason:?}: denied_response expected (error_response obeys failure_mode_allow)"
                );
            };
            assert_eq!(denied.status.map(|s| s.code), Some(503));
            assert_eq!(denied.body, certbound_core::answer::UNAVAILABLE_BODY);
        }
    }

    #[test]
    fn every_deny_sets_a_non_zero_status() {
        for &reason in DenyReason::ALL {
            let response = check_response(&Decision::deny(reason), ResponseOptions::default());
            let status = response.status.expect("status");
            assert_ne!(status.code, code::OK);
            assert_eq!(status.message, reason.as_str());
            let Some(HttpResponse::DeniedResponse(denied)) = response.http_response else {
                panic!("denied_response expected");
            };
            if reason.is_forbidden() {
                assert_eq!(status.code, code::PERMISSION_DENIED);
                assert_eq!(denied.status.map(|s| s.code), Some(403));
                assert_eq!(denied.body, FORBIDDEN_BODY);
            } else if reason.is_bad_request() {
                assert_eq!(status.code, code::INVALID_ARGUMENT);
                assert_eq!(denied.status.map(|s| s.code), Some(400));
                assert_eq!(denied.body, certbound_core::answer::BAD_REQUEST_BODY);
            } else if reason == DenyReason::ResourceUnknown {
                assert_eq!(status.code, code::NOT_FOUND);
                assert_eq!(denied.status.map(|s| s.code), Some(404));
                assert_eq!(denied.body, certbound_core::answer::NOT_FOUND_BODY);
            } else if reason == DenyReason::MethodNotAllowed {
                assert_eq!(status.code, code::INVALID_ARGUMENT);
                assert_eq!(denied.status.map(|s| s.code), Some(405));
            } else {
                assert_eq!(status.code, code::UNAUTHENTICATED);
                assert_eq!(denied.status.map(|s| s.code), Some(401));
                assert_eq!(denied.body, UNAUTHORIZED_BODY);
            }
        }
    }
}
