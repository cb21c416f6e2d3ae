//! Benchmark reference only, **never deploy**: an ext_authz server that allows every request at
//! once without looking at it. `scripts/bench-envoy.sh` puts it behind Envoy's ext_authz filter
//! (config `floor-grpc`, and `floor-http` for Envoy's HTTP ext_authz) to measure what the call
//! itself costs Envoy: no real authorization server can be cheaper for Envoy than this one.
//!
//! ```text
//! ext_authz_floor --grpc 50061 --http 50062
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used)]

use certbound::grpc::pb::envoy::service::auth::v3::authorization_server::{
    Authorization, AuthorizationServer,
};
use certbound::grpc::pb::envoy::service::auth::v3::{CheckRequest, CheckResponse};
use certbound::grpc::pb::google::rpc;
use tonic::{Request, Response, Status};

struct AllowAll;

#[tonic::async_trait]
impl Authorization for AllowAll {
    async fn check(&self, _: Request<CheckRequest>) -> Result<Response<CheckResponse>, Status> {
        Ok(Response::new(CheckResponse {
            status: Some(rpc::Status::default()),
            ..Default::default()
        }))
    }
}

fn main() {
    let mut grpc = None;
    let mut http = None;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let port: u16 = args.next().and_then(|v| v.parse().ok()).expect("a port");
        match flag.as_str() {
            "--grpc" => grpc = Some(port),
            "--http" => http = Some(port),
            other => panic!("unknown flag {other}"),
        }
    }
    // One thread, like certbound's default runtime.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        if let Some(port) = http {
            // Envoy's HTTP ext_authz: any 200 allows.
            let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
                .await
                .unwrap_or_else(|e| panic!("bind 127.0.0.1:{port}: {e}"));
            let app = axum::Router::new().fallback(|| async { "" });
            tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        }
        let port = grpc.expect("--grpc PORT");
        tonic::transport::Server::builder()
            .tcp_nodelay(true)
            .add_service(AuthorizationServer::new(AllowAll))
            .serve(([127, 0, 0, 1], port).into())
            .await
            .unwrap_or_else(|e| panic!("serve 127.0.0.1:{port}: {e}"));
    });
}
