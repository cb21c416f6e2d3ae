//! The HTTP authorization adapter ("forward auth"): NGINX `auth_request`, Traefik `ForwardAuth`,
//! Caddy `forward_auth`, HAProxy (a Lua sub-request) and Envoy's ext_authz `http_service` ask
//! certbound about a request with an HTTP request of their own. Any path on the listener is a
//! check; the answer is 200 (allow, with the claim headers to copy upstream) or the core's
//! refusal (401, 403, 400, 503 with its JSON body and `WWW-Authenticate`). One exception: a
//! request that names no original request and whose own path is under
//! `/.well-known/oauth-protected-resource` is a client's RFC 9728 metadata fetch the proxy
//! routed here, answered with the document.
//!
//! Same rules, metrics and decision log as the gRPC adapter: both call the [`Authorizer`].
//! HTTP/1.1 and h2c on a plain listener; with `forward_auth.tls`, HTTP/1.1 and h2 by ALPN, and
//! client certificates required when a client CA is set.

mod convert;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;

use crate::authorize::Authorizer;
use crate::config::{ForwardAuthSettings, TlsSettings};
use crate::listener::{ConnectionLimits, Gate};
use crate::metrics::Metrics;

pub use convert::{access_request, candidate_headers, response};

/// How long a client has to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long in-flight checks get to finish at shutdown.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves the HTTP authorization API on `listener` until `shutdown` resolves, then lets
/// in-flight checks finish (up to [`DRAIN_TIMEOUT`]).
///
/// Connections live under `limits` ([`crate::listener`]). A peer outside `trusted_peers` gets
/// a place of its own (`untrusted_max_open`), no HTTP/1 keep-alive and the first-byte timeout as
/// its idle timeout: it is answered 403 (`proxy_untrusted`, counted) and closed, and however
/// many such peers come, the proxies' places stay free.
pub async fn serve(
    authorizer: Authorizer,
    settings: ForwardAuthSettings,
    limits: ConnectionLimits,
    metrics: &Metrics,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let tls = settings.tls.as_ref().map(tls_acceptor).transpose()?;
    let settings = Arc::new(settings);
    let graceful = GracefulShutdown::new();
    let trusted_gate = Gate::new("forward_auth", limits.max_open, &limits, metrics);
    let untrusted_gate = Gate::with_deadlines(
        "forward_auth_untrusted",
        limits.untrusted_max_open,
        limits.first_byte,
        limits.first_byte,
        metrics,
    );
    let builder = |keep_alive: bool| {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(Some(Duration::from_secs(30)))
            .max_buf_size(limits.max_request_header_bytes)
            .keep_alive(keep_alive);
        builder
            .http2()
            .timer(hyper_util::rt::TokioTimer::new())
            .max_header_list_size(limits.h2_header_list());
        Arc::new(builder)
    };
    let (trusted_builder, untrusted_builder) = (builder(true), builder(false));
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: wait instead of spinning.
                    tracing::warn!(%error, "forward_auth: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let trusted = settings.trusts(peer.ip());
        let (gate, builder) = if trusted {
            (&trusted_gate, &trusted_builder)
        } else {
            (&untrusted_gate, &untrusted_builder)
        };
        let _ = stream.set_nodelay(true);
        let Some(stream) = gate.admit(stream) else {
            continue;
        };
        let service = CheckService {
            authorizer: authorizer.clone(),
            settings: Arc::clone(&settings),
            peer,
        };
        let builder = Arc::clone(builder);
        let watcher = graceful.watcher();
        let tls = tls.clone();
        tokio::spawn(async move {
            let served = match tls {
                None => {
                    let connection = builder
                        .serve_connection(TokioIo::new(stream), service)
                        .into_owned();
                    watcher.watch(connection).await
                }
                Some(acceptor) => {
                    let stream = match tokio::time::timeout(
                        HANDSHAKE_TIMEOUT,
                        acceptor.accept(stream),
                    )
                    .await
                    {
                        Ok(Ok(stream)) => stream,
                        Ok(Err(error)) => {
                            tracing::debug!(%peer, %error, "forward_auth: TLS handshake failed");
                            return;
                        }
                        Err(_) => return,
                    };
                    let connection = builder
                        .serve_connection(TokioIo::new(stream), service)
                        .into_owned();
                    watcher.watch(connection).await
                }
            };
            if let Err(error) = served {
                tracing::debug!(%peer, %error, "forward_auth: connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("forward_auth: checks still in flight after the drain timeout");
    }
    Ok(())
}

/// One connection's checks.
#[derive(Clone)]
struct CheckService {
    authorizer: Authorizer,
    settings: Arc<ForwardAuthSettings>,
    peer: SocketAddr,
}

impl hyper::service::Service<hyper::Request<Incoming>> for CheckService {
    type Response = hyper::Response<Full<Bytes>>;
    type Error = std::convert::Infallible;
    type Future = std::pin::Pin<
        Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send + 'static>,
    >;

    fn call(&self, request: hyper::Request<Incoming>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            // The body is never read: proxies send none, and the decision never needs one.
            let (head, _body) = request.into_parts();
            let parent = crate::telemetry::enabled()
                .then(|| {
                    let names = head.headers.keys().map(|name| name.as_str());
                    if !crate::telemetry::may_have_parent(names) {
                        return None;
                    }
                    crate::telemetry::parent(|name| {
                        head.headers
                            .get(name)
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_owned)
                    })
                })
                .flatten();
            // A client's metadata fetch the proxy routed here (public: from any peer).
            if convert::is_metadata_fetch(&head, &this.settings) {
                let authorized = this
                    .authorizer
                    .authorize(|_| Ok(convert::metadata_request(&head)), None, parent)
                    .await;
                return Ok(convert::metadata_response(
                    &authorized.decision,
                    authorized.reason_header,
                ));
            }
            let authorized = this
                .authorizer
                .authorize(
                    |policy| access_request(&head, this.peer.ip(), &this.settings, policy),
                    None,
                    parent,
                )
                .await;
            Ok(response(&authorized.decision, authorized.reason_header))
        })
    }
}

/// TLS for the listener: the server's certificate, and client certificates required when a
/// client CA is set (the proxy authenticates to certbound).
fn tls_acceptor(settings: &TlsSettings) -> anyhow::Result<TlsAcceptor> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let read = |path: &std::path::Path| {
        std::fs::read(path).with_context(|| format!("reading {}", path.display()))
    };
    let certs = CertificateDer::pem_slice_iter(&read(&settings.cert_file)?)
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing {}", settings.cert_file.display()))?;
    let key = PrivateKeyDer::from_pem_slice(&read(&settings.key_file)?)
        .with_context(|| format!("parsing {}", settings.key_file.display()))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()?;
    let builder = match &settings.client_ca_file {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(&read(path)?) {
                roots.add(cert.with_context(|| format!("parsing {}", path.display()))?)?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}
