//! Wire compatibility of `proto/` with the full upstream Envoy API (the `envoy-types` crate):
//! what Envoy encodes we decode, and what we encode Envoy decodes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use certbound::grpc::convert;
use certbound::grpc::pb::envoy::service::auth::v3 as ours;
use certbound_core::{Decision, DenyReason, Facts, Outcome, UnavailableReason, Upstream};
use envoy_types::pb::envoy::config::core::v3 as up_core;
use envoy_types::pb::envoy::service::auth::v3 as upstream;
use prost::Message;

fn upstream_check_request() -> upstream::CheckRequest {
    let http = upstream::attribute_context::HttpRequest {
        id: "req-1".into(),
        method: "POST".into(),
        headers: [
            ("authorization".to_string(), "Bearer abc".to_string()),
            (":path".to_string(), "/a?b=c".to_string()),
        ]
        .into(),
        path: "/a?b=c".into(),
        host: "api.test".into(),
        scheme: "https".into(),
        query: "b=c".into(),
        fragment: "frag".into(),
        size: 42,
        protocol: "HTTP/2".into(),
        body: "body".into(),
        raw_body: b"raw".to_vec(),
        header_map: Some(up_core::HeaderMap {
            headers: vec![up_core::HeaderValue {
                key: "authorization".into(),
                value: String::new(),
                raw_value: b"Bearer raw".to_vec(),
            }],
        }),
    };
    let peer = |port: u32, cert: &str| upstream::attribute_context::Peer {
        address: Some(up_core::Address {
            address: Some(up_core::address::Address::SocketAddress(
                up_core::SocketAddress {
                    address: "127.0.0.1".into(),
                    port_specifier: Some(up_core::socket_address::PortSpecifier::PortValue(port)),
                    ..Default::default()
                },
            )),
        }),
        service: "svc".into(),
        labels: [("l".to_string(), "v".to_string())].into(),
        principal: "CN=client".into(),
        certificate: cert.into(),
    };
    upstream::CheckRequest {
        attributes: Some(upstream::AttributeContext {
            source: Some(peer(5555, "-----BEGIN%20CERTIFICATE-----%0A")),
            destination: Some(peer(443, "")),
            request: Some(upstream::attribute_context::Request {
                time: Some(envoy_types::pb::google::protobuf::Timestamp {
                    seconds: 1_800_000_000,
                    nanos: 5,
                }),
                http: Some(http),
            }),
            context_extensions: [("certbound.scopes".to_string(), "read".to_string())].into(),
            metadata_context: Some(up_core::Metadata {
                filter_metadata: [(
                    "ns".to_string(),
                    envoy_types::pb::google::protobuf::Struct::default(),
                )]
                .into(),
                ..Default::default()
            }),
            tls_session: Some(upstream::attribute_context::TlsSession {
                sni: "api.test".into(),
            }),
            ..Default::default()
        }),
    }
}

#[test]
fn a_full_upstream_check_request_decodes_with_our_protos() {
    let bytes = upstream_check_request().encode_to_vec();
    let decoded = ours::CheckRequest::decode(bytes.as_slice()).expect("decodes");
    let a = decoded.attributes.expect("attributes");
    let source = a.source.expect("source");
    assert_eq!(source.certificate, "-----BEGIN%20CERTIFICATE-----%0A");
    assert_eq!(source.principal, "CN=client");
    assert_eq!(source.service, "svc");
    assert_eq!(source.labels.get("l").map(String::as_str), Some("v"));
    let address = source.address.and_then(|a| a.address).expect("address");
    let certbound::grpc::pb::envoy::config::core::v3::address::Address::SocketAddress(sa) = address
    else {
        panic!("socket address expected");
    };
    assert_eq!(sa.address, "127.0.0.1");
    assert_eq!(
        sa.port_specifier,
        Some(
            certbound::grpc::pb::envoy::config::core::v3::socket_address::PortSpecifier::PortValue(
                5555
            )
        )
    );
    assert_eq!(a.destination.expect("destination").principal, "CN=client");
    let request = a.request.expect("request");
    assert_eq!(
        request.time.map(|t| (t.seconds, t.nanos)),
        Some((1_800_000_000, 5))
    );
    let http = request.http.expect("http");
    assert_eq!(http.id, "req-1");
    assert_eq!(http.method, "POST");
    assert_eq!(
        http.headers.get("authorization").map(String::as_str),
        Some("Bearer abc")
    );
    assert_eq!(http.path, "/a?b=c");
    assert_eq!(http.host, "api.test");
    assert_eq!(http.scheme, "https");
    assert_eq!(http.query, "b=c");
    assert_eq!(http.fragment, "frag");
    assert_eq!(http.size, 42);
    assert_eq!(http.protocol, "HTTP/2");
    assert_eq!(http.body, "body");
    assert_eq!(http.raw_body, b"raw");
    let raw = &http.header_map.expect("header_map").headers[0];
    assert_eq!(
        (raw.key.as_str(), raw.raw_value.as_slice()),
        ("authorization", b"Bearer raw".as_slice())
    );
    assert_eq!(
        a.context_extensions
            .get("certbound.scopes")
            .map(String::as_str),
        Some("read")
    );
    assert!(
        a.metadata_context
            .expect("metadata")
            .filter_metadata
            .contains_key("ns")
    );
    assert_eq!(a.tls_session.expect("tls").sni, "api.test");
}

fn roundtrip(decision: &Decision) -> upstream::CheckResponse {
    let bytes = convert::check_response(decision, Default::default()).encode_to_vec();
    upstream::CheckResponse::decode(bytes.as_slice()).expect("envoy-types decodes ours")
}

fn header_pairs(options: &[up_core::HeaderValueOption]) -> Vec<(String, String, i32)> {
    options
        .iter()
        .map(|o| {
            let h = o.header.as_ref().expect("header");
            (h.key.clone(), h.value.clone(), o.append_action)
        })
        .collect()
}

#[test]
fn our_allow_decodes_with_envoy_types() {
    let decision = Decision {
        outcome: Outcome::Allow(Upstream {
            set_headers: vec![("x-certbound-subject".into(), "alice".into())],
            remove_headers: vec!["authorization".into()],
            response_headers: vec![("dpop-nonce".into(), "n-1".into())],
            dropped_headers: Vec::new(),
        }),
        facts: Facts::default(),
    };
    let response = roundtrip(&decision);
    assert_eq!(response.status.expect("status").code, 0);
    let Some(upstream::check_response::HttpResponse::OkResponse(ok)) = response.http_response
    else {
        panic!("ok_response expected");
    };
    assert_eq!(
        header_pairs(&ok.headers),
        [(
            "x-certbound-subject".into(),
            "alice".into(),
            up_core::header_value_option::HeaderAppendAction::OverwriteIfExistsOrAdd as i32
        )]
    );
    assert_eq!(ok.headers_to_remove, ["authorization"]);
    assert_eq!(
        header_pairs(&ok.response_headers_to_add),
        [(
            "dpop-nonce".into(),
            "n-1".into(),
            up_core::header_value_option::HeaderAppendAction::OverwriteIfExistsOrAdd as i32
        )]
    );
    let metadata = response.dynamic_metadata.expect("metadata");
    assert!(metadata.fields.contains_key("decision"));
}

#[test]
fn our_deny_decodes_with_envoy_types() {
    let response = roundtrip(&Decision::deny(DenyReason::BindingMismatch));
    let status = response.status.expect("status");
    assert_eq!(
        (status.code, status.message.as_str()),
        (16, "binding_mismatch")
    );
    let Some(upstream::check_response::HttpResponse::DeniedResponse(denied)) =
        response.http_response
    else {
        panic!("denied_response expected");
    };
    assert_eq!(
        denied.status.expect("status").code,
        envoy_types::pb::envoy::r#type::v3::StatusCode::Unauthorized as i32
    );
    let headers = header_pairs(&denied.headers);
    assert!(
        headers
            .iter()
            .any(|(k, v, _)| k == "content-type" && v == "application/json")
    );
    assert!(
        headers
            .iter()
            .any(|(k, v, _)| k == "www-authenticate" && v == r#"Bearer error="invalid_token""#)
    );
    assert_eq!(denied.body, r#"{"message":"unauthorized"}"#);
}

#[test]
fn our_unavailable_answer_decodes_with_envoy_types_as_an_enforced_denial() {
    let decision = Decision {
        outcome: Outcome::Unavailable(UnavailableReason::KeysUnavailable),
        facts: Facts::default(),
    };
    let response = roundtrip(&decision);
    assert_eq!(response.status.expect("status").code, 14);
    // denied_response, not error_response: Envoy enforces it even with failure_mode_allow.
    let Some(upstream::check_response::HttpResponse::DeniedResponse(error)) =
        response.http_response
    else {
        panic!("denied_response expected");
    };
    assert_eq!(error.status.expect("status").code, 503);
    assert_eq!(error.body, r#"{"message":"service unavailable"}"#);
}
