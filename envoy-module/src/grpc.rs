//! How a refusal reads to a gRPC client: Envoy's own mapping of HTTP statuses, so the module
//! answers gRPC calls as ext_authz does (never `grpc-status: 0`).

/// Whether Envoy treats the request as gRPC (`application/grpc`, `application/grpc+proto`, ...;
/// not gRPC-Web).
pub fn is_grpc(content_type: &str) -> bool {
    let content_type = content_type.trim().to_ascii_lowercase();
    content_type == "application/grpc"
        || content_type.starts_with("application/grpc+")
        || content_type.starts_with("application/grpc;")
}

/// The gRPC status Envoy gives an HTTP status (its `httpToGrpcStatus`), as ext_authz answers.
pub fn status_for(http: u16) -> u32 {
    match http {
        400 => 13,
        401 => 16,
        403 => 7,
        404 => 12,
        429 | 502..=504 => 14,
        _ => 2,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_requests_are_recognised_as_envoy_does() {
        for grpc in [
            "application/grpc",
            "application/grpc+proto",
            "Application/GRPC;x=y",
        ] {
            assert!(is_grpc(grpc), "{grpc}");
        }
        for other in [
            "application/grpc-web",
            "application/json",
            "application/grpcx",
            "",
        ] {
            assert!(!is_grpc(other), "{other}");
        }
    }

    #[test]
    fn every_refusal_maps_to_a_grpc_error() {
        assert_eq!(status_for(401), 16);
        assert_eq!(status_for(403), 7);
        assert_eq!(status_for(503), 14);
        for status in [400, 401, 403, 413, 500, 503] {
            assert_ne!(status_for(status), 0);
        }
    }
}
