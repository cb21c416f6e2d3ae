//! Requests that reach the upstream wrongly through what `main` ships (attack review of
//! 45ea740, branch `attack`). Each test sends the request through a shipped proxy config
//! (tests/common/proxies.rs, only addresses and file paths swapped) to a recording upstream and
//! fails while the upstream acts on something certbound did not decide on.
//!
//! 1. `Upgrade: h2c` on an allowed request: HAProxy and Caddy forward the upgrade, and once an
//!    upstream that speaks RFC 7540 §3.2 h2c (Jetty, Tomcat, Netty, Apache mod_http2 with
//!    `H2Upgrade on`) answers 101, the connection is a tunnel: every request sent inside it
//!    reaches the upstream with no check at all.
//! 2. Header aliases other than `_`: `X.Certbound.Subject`, `X~Certbound~Subject`,
//!    `X.Original.URL` reach the upstream beside (or instead of) certbound's own headers behind
//!    Traefik, HAProxy, Caddy (`~`) and Envoy `http_service`; certbound refuses only `_`, while
//!    PHP (`.`), lighttpd and CGI-style backends read them as `HTTP_X_CERTBOUND_SUBJECT`.
//! 3. NGINX: an absolute-form target with an empty path (`GET http://localhost?q HTTP/1.1`)
//!    is checked as the path `""` (no rule anchored at `/` matches it) while the upstream gets
//!    `/?q`.
//! 4. Envoy `http_service`: the host, scheme and certificate headers certbound refuses in the
//!    other shapes reach the upstream as the client wrote them.
//! 5. NGINX, HAProxy (all four) and Caddy (Uri, Method) overwrite X-Forwarded-{Uri,Method,Host,
//!    Proto} on the check only: the upstream gets the client's own copies, which certbound never
//!    saw (Envoy: Host and Proto).
//!
//! Ignored by a plain `cargo test` (they need the proxies), like tests/forward_auth_proxies.rs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::envoy::*;
use common::proxies::{Proxy, Setup, point, repo, send_raw, start_proxy};
use common::raw::{self, Step};
use futures_util::FutureExt;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

// ---------------------------------------------------------------------------------------------
// 1. h2c upgrade tunnels

/// An HTTP/1.1 upstream that accepts `Upgrade: h2c` (RFC 7540 §3.2) and records every request it
/// serves: `h1 METHOD target` and, inside an upgraded connection, `h2c METHOD path`.
struct H2cUpstream {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for H2cUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl H2cUpstream {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&seen);
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let log = Arc::clone(&log);
                tokio::spawn(async move {
                    let _ = serve_h2c(stream, log).await;
                });
            }
        });
        Self { addr, seen, task }
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

/// Reads one head byte by byte (nothing after it is consumed).
async fn read_head<S: AsyncReadExt + Unpin>(stream: &mut S) -> Option<String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).await.ok()? == 0 {
            return None;
        }
        head.push(byte[0]);
    }
    Some(String::from_utf8_lossy(&head).into_owned())
}

async fn serve_h2c(mut stream: TcpStream, seen: Arc<Mutex<Vec<String>>>) -> std::io::Result<()> {
    loop {
        let Some(head) = read_head(&mut stream).await else {
            return Ok(());
        };
        let line = head.lines().next().unwrap_or_default().to_owned();
        let mut parts = line.split(' ');
        let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        seen.lock().unwrap().push(format!("h1 {method} {target}"));
        let upgrade = head
            .lines()
            .filter_map(|l| l.split_once(':'))
            .any(|(n, v)| {
                n.eq_ignore_ascii_case("upgrade") && v.trim().eq_ignore_ascii_case("h2c")
            });
        if !upgrade {
            stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 8\r\n\r\nupstream")
                .await?;
            continue;
        }
        stream
            .write_all(
                b"HTTP/1.1 101 Switching Protocols\r\nconnection: Upgrade\r\nupgrade: h2c\r\n\r\n",
            )
            .await?;
        let Ok(mut connection) = h2::server::handshake(stream).await else {
            return Ok(());
        };
        while let Some(Ok((request, mut respond))) = connection.accept().await {
            seen.lock()
                .unwrap()
                .push(format!("h2c {} {}", request.method(), request.uri().path()));
            let response = http::Response::builder().status(200).body(()).unwrap();
            let _ = respond.send_response(response, true);
        }
        return Ok(());
    }
}

/// certbound on the proxy's shipped config and the proxy on its own, in front of `upstream`
/// (Setup::start, with another upstream).
struct Front {
    pki: Pki,
    port: u16,
    _certbound: Process,
    _proxy: Process,
}

async fn front(proxy: Proxy, upstream: SocketAddr) -> Front {
    let pki = Pki::new(&format!("h2c-{proxy:?}"));
    let dir = pki.dir.path().to_owned();
    let signer = common::Signer::es256("attack-k1");
    let jwks = dir.join("jwks.json");
    std::fs::write(&jwks, json!({"keys": [signer.jwk.clone()]}).to_string()).unwrap();
    let forward_auth: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let shipped =
        std::fs::read_to_string(repo("deploy/forward-auth").join(proxy.certbound_config()))
            .unwrap();
    let port = free_port();
    let yaml = point(
        &shipped,
        &[
            ("127.0.0.1:9292", forward_auth.to_string()),
            ("deploy/local/jwks.json", jwks.display().to_string()),
            (
                "https://localhost:8443",
                format!("https://127.0.0.1:{port}"),
            ),
        ],
        &[],
    );
    let (certbound, _) = start_certbound_env(&yaml, &dir, None, &[]).await;
    let process = match proxy {
        Proxy::Envoy => {
            let ports = EnvoyPorts {
                listener: port,
                admin: free_port(),
                certbound: Some(forward_auth),
                upstream: Some(upstream),
                ..Default::default()
            };
            let config = point_envoy_config(&repo("deploy/envoy/http-service.yaml"), &ports, &pki);
            start_envoy(&config, &ports, &dir).await
        }
        _ => start_proxy(proxy, &pki, port, forward_auth, upstream).await,
    };
    // Up once an anonymous request on the public route passes.
    for _ in 0..200 {
        if TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        // Traefik accepts connections before its TLS options are loaded: a failed handshake
        // (raw::tls panics on it) is "not yet".
        let probe = send_raw(&pki, None, port, false, "GET", "/public/ready", &[]);
        let status = std::panic::AssertUnwindSafe(probe)
            .catch_unwind()
            .await
            .ok()
            .flatten();
        if status == Some(200) {
            return Front {
                pki,
                port,
                _certbound: certbound,
                _proxy: process,
            };
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{proxy:?} did not come up: {}", process.log());
}

/// `GET /public/h2c` (anonymous, allowed) with `Upgrade: h2c`; if the proxy hands back 101,
/// `GET /admin/secret` without a token inside the tunnel. What the upstream served.
async fn h2c_smuggle(proxy: Proxy, upgrade: &str) -> (Option<String>, Vec<String>) {
    let upstream = H2cUpstream::start().await;
    let front = front(proxy, upstream.addr).await;
    let mut tls = raw::tls(&front.pki, None, front.port, b"http/1.1").await;
    tls.write_all(
        format!(
            "GET /public/h2c HTTP/1.1\r\nhost: localhost\r\nupgrade: {upgrade}\r\n\
             http2-settings: AAMAAABkAARAAAAAAAIAAAAA\r\nconnection: Upgrade, HTTP2-Settings\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let head = tokio::time::timeout(Duration::from_secs(5), read_head(&mut tls))
        .await
        .ok()
        .flatten();
    let status = head
        .as_deref()
        .and_then(|h| h.lines().next())
        .map(str::to_owned);
    if status.as_deref().is_some_and(|s| s.contains(" 101 "))
        && let Ok((client, connection)) = h2::client::handshake(tls).await
    {
        tokio::spawn(async move {
            let _ = connection.await;
        });
        if let Ok(mut client) = client.ready().await {
            let request = raw::h2_request("GET", "/admin/secret", &[]);
            if let Ok((response, _)) = client.send_request(request, true) {
                let _ = tokio::time::timeout(Duration::from_secs(5), response).await;
            }
        }
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    (status, upstream.seen())
}

async fn h2c_holds(proxy: Proxy) {
    // Any case: the token is case-insensitive (RFC 9110 §7.8), and a proxy's value matcher may
    // not be (Caddy's `header` matcher was not).
    for upgrade in ["h2c", "H2C"] {
        let (status, seen) = h2c_smuggle(proxy, upgrade).await;
        let smuggled: Vec<&String> = seen.iter().filter(|s| s.contains("/admin/")).collect();
        assert!(
            smuggled.is_empty(),
            "{proxy:?}: WRONG ALLOW: `GET /public/h2c` with `Upgrade: {upgrade}` got {status:?}; \
             inside the tunnel the upstream served {smuggled:?} without any check (all it \
             served: {seen:?})"
        );
        // The shipped HAProxy and Caddy configs refuse the upgrade themselves.
        if matches!(proxy, Proxy::Haproxy | Proxy::Caddy) {
            assert!(
                status.as_deref().is_some_and(|s| s.contains(" 400")),
                "{proxy:?} `Upgrade: {upgrade}`: {status:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs HAProxy"]
async fn h2c_upgrade_tunnel_behind_haproxy() {
    h2c_holds(Proxy::Haproxy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Caddy"]
async fn h2c_upgrade_tunnel_behind_caddy() {
    h2c_holds(Proxy::Caddy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs NGINX"]
async fn h2c_upgrade_tunnel_behind_nginx() {
    h2c_holds(Proxy::Nginx).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Traefik"]
async fn h2c_upgrade_tunnel_behind_traefik() {
    h2c_holds(Proxy::Traefik).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Envoy"]
async fn h2c_upgrade_tunnel_behind_envoy_http_service() {
    h2c_holds(Proxy::Envoy).await;
}

// ---------------------------------------------------------------------------------------------
// 2. Header aliases other than `_`

/// The variable a CGI-style backend (PHP's SAPIs for `.`, lighttpd, many CGI gateways for every
/// character that is not a letter or digit) reads a header as.
fn cgi_name(name: &str) -> String {
    name.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                char::from(b.to_ascii_uppercase())
            } else {
                '_'
            }
        })
        .collect()
}

/// Headers certbound sets or reads, or refuses a client's copy of.
const USED: &[&str] = &[
    "x-certbound-subject",
    "x-certbound-client-id",
    "x-original-url",
    "x-forwarded-tls-client-cert",
];

async fn aliases_hold(proxy: Proxy) {
    let setup = Setup::start(proxy).await;
    let mut failures = Vec::new();
    for alias in [
        "X.Certbound.Subject",
        "X~Certbound~Subject",
        "X.Certbound.Client.Id",
        "X.Original.URL",
        "X.Forwarded.Tls.Client.Cert",
    ] {
        let marker = format!("alias-{}", common::stack::unique());
        let value = if alias.contains("URL") {
            "/admin/x"
        } else {
            "mallory"
        };
        let headers = [("x-case", marker.as_str()), (alias, value)];
        let status = send_raw(
            &setup.pki,
            None,
            setup.port,
            false,
            "GET",
            "/public/x",
            &headers,
        )
        .await;
        for received in setup.received(&marker) {
            for (name, value) in &received.headers {
                let reads_as = cgi_name(name);
                if let Some(used) = USED
                    .iter()
                    .find(|u| cgi_name(u) == reads_as && !name.eq_ignore_ascii_case(u))
                {
                    failures.push(format!(
                        "{proxy:?} GET /public/x {alias}: {value} ({status:?}): WRONG ALLOW: \
                         the upstream got `{name}: {value}`, read as {reads_as} like {used}"
                    ));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Traefik"]
async fn dot_and_tilde_aliases_behind_traefik() {
    aliases_hold(Proxy::Traefik).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs HAProxy"]
async fn dot_and_tilde_aliases_behind_haproxy() {
    aliases_hold(Proxy::Haproxy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Caddy"]
async fn dot_and_tilde_aliases_behind_caddy() {
    aliases_hold(Proxy::Caddy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Envoy"]
async fn dot_and_tilde_aliases_behind_envoy_http_service() {
    aliases_hold(Proxy::Envoy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs NGINX"]
async fn dot_and_tilde_aliases_behind_nginx() {
    aliases_hold(Proxy::Nginx).await;
}

// ---------------------------------------------------------------------------------------------
// 3. NGINX: an absolute-form target with an empty path

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs NGINX"]
async fn nginx_absolute_form_with_an_empty_path_is_checked_as_no_path() {
    let setup = Setup::start(Proxy::Nginx).await;
    let cert = setup.pki.client("attack-empty");
    let token = setup.bound(&cert, "read");
    let marker = format!("empty-{}", common::stack::unique());
    let head = format!(
        "GET http://localhost?{marker} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\
         authorization: {token}\r\nx-request-id: {marker}\r\n\r\n"
    );
    let response = raw::http1(
        &setup.pki,
        Some(&cert),
        setup.port,
        vec![Step::Send(head.into_bytes())],
        Duration::from_secs(5),
    )
    .await;
    let received = setup.received(&marker);
    let decided = setup.decisions_for(&marker).await;
    let paths: Vec<String> = decided
        .iter()
        .map(|d| d["path"].as_str().unwrap_or("").to_owned())
        .collect();
    for r in &received {
        let upstream_path = r.target.split('?').next().unwrap_or_default();
        assert!(
            paths.iter().all(|p| p == upstream_path),
            "NGINX GET http://localhost?{marker} ({:?}): the upstream got {} {}, certbound \
             decided on the path(s) {paths:?}: a rule for `/` (prefix, exact or regex) never \
             sees this request",
            response.status,
            r.method,
            r.target
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 4. Envoy http_service: a client's host, scheme and certificate headers reach the upstream

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Envoy"]
async fn envoy_http_service_passes_a_clients_other_sources() {
    let setup = Setup::start(Proxy::Envoy).await;
    let mut failures = Vec::new();
    for (name, value) in [
        ("x-forwarded-host", "admin.example.com"),
        ("x-original-host", "admin.example.com"),
        ("x-host", "admin.example.com"),
        (
            "forwarded",
            "for=192.0.2.1;host=admin.example.com;proto=http",
        ),
        ("x-forwarded-scheme", "http"),
        ("x-forwarded-ssl", "on"),
        ("client-cert", ":YWJj:"),
        ("x-ssl-client-cert", "abc"),
        ("x-client-cert", "abc"),
        ("x-forwarded-tls-client-cert", "abc"),
    ] {
        let marker = format!("envoy-src-{}", common::stack::unique());
        let headers = [("x-case", marker.as_str()), (name, value)];
        let status = send_raw(
            &setup.pki,
            None,
            setup.port,
            false,
            "GET",
            "/public/x",
            &headers,
        )
        .await;
        for r in setup.received(&marker) {
            if let Some((_, v)) = r.headers.iter().find(|(n, _)| n == name) {
                failures.push(format!(
                    "Envoy http_service GET /public/x ({status:?}): the upstream got the \
                     client's `{name}: {v}` (certbound refuses it behind every other proxy)"
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

// ---------------------------------------------------------------------------------------------
// 5. The sources certbound reads, in the client's own copy, reach the upstream

/// The proxy overwrites X-Forwarded-{Uri,Method,Host,Proto} on the check only: behind NGINX and
/// HAProxy (and Caddy for Uri and Method) the upstream gets the client's copies, which certbound
/// never saw and so could not refuse. An upstream that honours them (Django's
/// USE_X_FORWARDED_HOST, Rails, Express `trust proxy`, Spring's ForwardedHeaderFilter for host
/// and scheme; gateways that route on X-Forwarded-Uri) acts on a request certbound did not decide.
async fn clients_sources_hold(proxy: Proxy) {
    let setup = Setup::start(proxy).await;
    let marker = format!("xf-{}", common::stack::unique());
    let hostile = [
        ("x-forwarded-uri", "/admin/x"),
        ("x-forwarded-method", "DELETE"),
        ("x-forwarded-host", "admin.example.com"),
        ("x-forwarded-proto", "http"),
    ];
    let mut headers = vec![("x-case", marker.as_str())];
    headers.extend(hostile);
    let status = send_raw(
        &setup.pki,
        None,
        setup.port,
        false,
        "GET",
        "/public/x",
        &headers,
    )
    .await;
    let mut failures = Vec::new();
    for r in setup.received(&marker) {
        for (name, value) in hostile {
            if r.headers.iter().any(|(n, v)| n == name && v == value) {
                failures.push(format!(
                    "{proxy:?} GET /public/x ({status:?}): the upstream got the client's own \
                     `{name}: {value}` (certbound decided on the proxy's)"
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs NGINX"]
async fn clients_forwarded_headers_reach_the_upstream_behind_nginx() {
    clients_sources_hold(Proxy::Nginx).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs HAProxy"]
async fn clients_forwarded_headers_reach_the_upstream_behind_haproxy() {
    clients_sources_hold(Proxy::Haproxy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Caddy"]
async fn clients_forwarded_headers_reach_the_upstream_behind_caddy() {
    clients_sources_hold(Proxy::Caddy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Traefik"]
async fn clients_forwarded_headers_reach_the_upstream_behind_traefik() {
    clients_sources_hold(Proxy::Traefik).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Envoy"]
async fn clients_forwarded_headers_reach_the_upstream_behind_envoy_http_service() {
    clients_sources_hold(Proxy::Envoy).await;
}
