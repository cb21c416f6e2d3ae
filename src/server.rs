//! Composition root: builds the service from validated settings and serves it until shutdown.

use std::future::Future;
use std::sync::Arc;

use anyhow::Context;

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::server::NamedService;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::check::Checker;
use crate::clock::{Clock, SystemClock};
use crate::config::Settings;
use crate::grpc::AuthorizationService;
use crate::grpc::pb::FILE_DESCRIPTOR_SET;
use crate::grpc::pb::envoy::service::auth::v3::authorization_server::AuthorizationServer;
use crate::introspection::Introspector;
use crate::keys::KeyStore;

type AuthorizationGrpc = AuthorizationServer<AuthorizationService>;

/// The gRPC service name clients ask health about, besides "" for the whole server.
pub const AUTHORIZATION_SERVICE: &str = <AuthorizationGrpc as NamedService>::NAME;

/// Builds the key store, the introspector and the checker from settings; no network I/O yet.
pub fn build(settings: &Settings) -> anyhow::Result<Arc<Checker>> {
    build_with_clock(settings, Arc::new(SystemClock))
}

/// [`build`] with an injected clock (tests control expiry and staleness with it).
pub fn build_with_clock(
    settings: &Settings,
    clock: Arc<dyn Clock>,
) -> anyhow::Result<Arc<Checker>> {
    let mut http =
        reqwest::Client::builder().user_agent(concat!("certbound/", env!("CARGO_PKG_VERSION")));
    if let Some(path) = &settings.idp_ca_file {
        let pem = std::fs::read(path)
            .with_context(|| format!("reading idp_ca_file {}", path.display()))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .with_context(|| format!("parsing idp_ca_file {}", path.display()))?;
        http = http.tls_certs_merge(certs);
    }
    let http = http.build()?;
    let keys = Arc::new(KeyStore::new(
        settings.key_sources.clone(),
        http.clone(),
        settings.key_timing.clone(),
        Arc::clone(&clock),
    ));
    let introspector = settings
        .introspection
        .clone()
        .map(|s| Introspector::new(s, http));
    Ok(Arc::new(Checker::new(
        settings.policy.clone(),
        keys,
        introspector,
        clock,
        settings.unknown_kid_wait,
    )))
}

/// Serves Check, health and reflection on `listener` until `shutdown` resolves, then drains.
///
/// Health is NOT_SERVING until every issuer's keys are loaded, and again once shutdown begins.
pub async fn serve(
    checker: Arc<Checker>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let (reporter, health) = tonic_health::server::health_reporter();
    set_health(&reporter, ServingStatus::NotServing).await;

    let keys = Arc::clone(checker.keys());
    let readiness = tokio::spawn(track_readiness(Arc::clone(&keys), reporter.clone()));
    let refresh = {
        let keys = Arc::clone(&keys);
        tokio::spawn(async move {
            keys.load_all().await;
            keys.spawn_refresh().await.ok();
        })
    };

    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;

    let draining = reporter.clone();
    let result = tonic::transport::Server::builder()
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(AuthorizationServer::new(AuthorizationService::new(checker)))
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async move {
            shutdown.await;
            tracing::info!("shutting down: health NOT_SERVING, draining in-flight checks");
            set_health(&draining, ServingStatus::NotServing).await;
        })
        .await;
    readiness.abort();
    refresh.abort();
    result?;
    tracing::info!("stopped");
    Ok(())
}

async fn set_health(reporter: &HealthReporter, status: ServingStatus) {
    reporter.set_service_status("", status).await;
    reporter
        .set_service_status(AUTHORIZATION_SERVICE, status)
        .await;
}

async fn track_readiness(keys: Arc<KeyStore>, reporter: HealthReporter) {
    let mut ready = keys.readiness();
    loop {
        let status = if *ready.borrow_and_update() {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        set_health(&reporter, status).await;
        if ready.changed().await.is_err() {
            return;
        }
    }
}
