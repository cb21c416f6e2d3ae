//! The stream-shape table: every way Envoy 1.40 can deliver a request (HTTP/1.1 with
//! Content-Length, chunked with trailers, `Expect: 100-continue`, a WebSocket upgrade, a body
//! over the buffer limit, a client that gives up; HTTP/2 HEADERS without END_STREAM, DATA while
//! waiting, trailers, gRPC, extended CONNECT, RST_STREAM mid-wait, many waiters on one
//! connection), each with a token whose `kid` is unknown while the IdP is slow (the request
//! waits for a refetch that does not find it), a forged token, a valid one, and one whose key
//! the slow refetch brings (it waits, then passes), through real Envoy in front of: the dynamic
//! module, the ext_authz service, and the ext_authz service with `with_request_body`. The
//! upstream records what it receives: nothing may reach it but the valid and rotated-in
//! tokens' requests, which must arrive whole.
//!
//! Ignored by a plain `cargo test` (they need Envoy and the built module); `scripts/test.sh`
//! runs them with `--include-ignored`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::ClientCert;
use common::envoy::Received;
use common::raw::{self, H2Response, RawResponse, Step};
use common::stack::{Stack, Token, with_upgrades};

/// How long the IdP takes to answer once the table starts: every unknown-`kid` request waits
/// for a refetch that long.
const IDP_DELAY: Duration = Duration::from_millis(1200);
/// Bigger than Envoy's per-connection buffer limit (1 MiB default) and the service's
/// `max_request_bytes` (64 KiB below).
const LARGE_BODY: usize = 2 * 1024 * 1024 + 17;
const BODY: &[u8] = b"{\"transfer\":\"all of it\"}";
const READ_FOR: Duration = Duration::from_secs(12);
const TOKENS: [Token; 4] = [
    Token::UnknownKid,
    Token::Forged,
    Token::Valid,
    Token::RotatedIn,
];

/// The certbound settings shared by both shapes: an unknown `kid` always triggers a refetch
/// (no rate limit) and waits up to 5 s for it (well past [`IDP_DELAY`], so a loaded machine
/// still sees the rotated-in key arrive in time).
const KEYS: &str = "keys:\n  refetch_min_interval_seconds: 0\n  unknown_kid_wait_ms: 5000\n";

/// Whether a token's requests must pass: a valid one at once, a rotated-in one after waiting
/// for the refetch that finds its key (its body held meanwhile, then delivered whole).
fn passes(token: Token) -> bool {
    matches!(token, Token::Valid | Token::RotatedIn)
}

/// What a case's client saw.
#[derive(Debug)]
enum Seen {
    H1(RawResponse),
    H2(H2Response),
    /// The client itself gave up (reset or closed): nothing to read.
    GaveUp,
}

impl Seen {
    /// The upstream's answer reached the client.
    fn came_from_upstream(&self) -> bool {
        match self {
            Seen::H1(r) => r.header("x-upstream") == Some("seen"),
            Seen::H2(r) => r.header("x-upstream") == Some("seen"),
            Seen::GaveUp => false,
        }
    }

    /// A refusal the client can see: an error status, or a gRPC error status on a 200.
    fn refused(&self) -> bool {
        match self {
            Seen::H1(r) => matches!(r.status, Some(400..=599)),
            Seen::H2(r) => {
                matches!(r.status, Some(400..=599))
                    || (r.status == Some(200) && r.grpc_status().is_some_and(|s| s != "0"))
            }
            Seen::GaveUp => true,
        }
    }
}

/// One row of the table.
#[derive(Clone, Copy, Debug)]
enum Shape {
    H1Get,
    H1ContentLength,
    H1ContentLengthWhileWaiting,
    H1ChunkedWithTrailers,
    H1ExpectContinue,
    H1WebSocket,
    H1OverBufferLimit,
    H1ClientGivesUp,
    H2HeadersWithoutEndStream,
    H2DataWhileWaiting,
    H2Trailers,
    H2Grpc,
    H2ExtendedConnect,
    H2ResetMidWait,
    H2OverBufferLimit,
}

const SHAPES: [Shape; 15] = [
    Shape::H1Get,
    Shape::H1ContentLength,
    Shape::H1ContentLengthWhileWaiting,
    Shape::H1ChunkedWithTrailers,
    Shape::H1ExpectContinue,
    Shape::H1WebSocket,
    Shape::H1OverBufferLimit,
    Shape::H1ClientGivesUp,
    Shape::H2HeadersWithoutEndStream,
    Shape::H2DataWhileWaiting,
    Shape::H2Trailers,
    Shape::H2Grpc,
    Shape::H2ExtendedConnect,
    Shape::H2ResetMidWait,
    Shape::H2OverBufferLimit,
];

impl Shape {
    /// The method the shape's request uses (for a DPoP proof's `htm`).
    fn method(self) -> &'static str {
        match self {
            Shape::H1Get
            | Shape::H1WebSocket
            | Shape::H2HeadersWithoutEndStream
            | Shape::H2ResetMidWait => "GET",
            Shape::H2ExtendedConnect => "CONNECT",
            _ => "POST",
        }
    }

    /// The body bytes a valid request delivers to the upstream, when it has a body the upstream
    /// reads as one (not an upgraded stream).
    fn body_len(self) -> Option<usize> {
        match self {
            Shape::H1Get | Shape::H2HeadersWithoutEndStream => Some(0),
            Shape::H1ContentLength
            | Shape::H1ContentLengthWhileWaiting
            | Shape::H1ExpectContinue
            | Shape::H2DataWhileWaiting => Some(BODY.len()),
            Shape::H1ChunkedWithTrailers | Shape::H2Trailers => Some(2 * BODY.len()),
            Shape::H1OverBufferLimit | Shape::H2OverBufferLimit => Some(LARGE_BODY),
            Shape::H2Grpc => Some(5 + BODY.len()),
            Shape::H1WebSocket
            | Shape::H2ExtendedConnect
            | Shape::H1ClientGivesUp
            | Shape::H2ResetMidWait => None,
        }
    }

    /// The client walks away before any answer: there is nothing to allow.
    fn gives_up(self) -> bool {
        matches!(self, Shape::H1ClientGivesUp | Shape::H2ResetMidWait)
    }
}

const PAUSE: Duration = Duration::from_millis(300);

/// The credential headers, then the shape's own.
fn with_auth<'a>(
    auth: &[(&'a str, &'a str)],
    rest: &[(&'a str, &'a str)],
) -> Vec<(&'a str, &'a str)> {
    auth.iter().chain(rest).copied().collect()
}

/// Sends one request of `shape` with `token` to `path`.
async fn send(
    stack: &Stack,
    cert: &ClientCert,
    shape: Shape,
    path: &str,
    auth: &[(&str, &str)],
) -> Seen {
    let h1 = |steps: Vec<Step>| async {
        Seen::H1(raw::http1(&stack.pki, Some(cert), stack.port, steps, READ_FOR).await)
    };
    let len = BODY.len().to_string();
    match shape {
        Shape::H1Get => {
            h1(vec![Step::Send(raw::head(
                "GET",
                path,
                &with_auth(auth, &[]),
            ))])
            .await
        }
        Shape::H1ContentLength => {
            let mut bytes = raw::head("POST", path, &with_auth(auth, &[("content-length", &len)]));
            bytes.extend_from_slice(BODY);
            h1(vec![Step::Send(bytes)]).await
        }
        Shape::H1ContentLengthWhileWaiting => {
            h1(vec![
                Step::Send(raw::head(
                    "POST",
                    path,
                    &with_auth(auth, &[("content-length", &len)]),
                )),
                Step::Wait(PAUSE),
                Step::Send(BODY.to_vec()),
            ])
            .await
        }
        Shape::H1ChunkedWithTrailers => {
            let chunk = format!("{:x}\r\n", BODY.len()).into_bytes();
            let mut one = chunk.clone();
            one.extend_from_slice(BODY);
            one.extend_from_slice(b"\r\n");
            let mut last = one.clone();
            last.extend_from_slice(b"0\r\nx-checksum: 42\r\n\r\n");
            h1(vec![
                Step::Send(raw::head(
                    "POST",
                    path,
                    &with_auth(
                        auth,
                        &[("transfer-encoding", "chunked"), ("te", "trailers")],
                    ),
                )),
                Step::Wait(PAUSE),
                Step::Send(one),
                Step::Wait(PAUSE),
                Step::Send(last),
            ])
            .await
        }
        Shape::H1ExpectContinue => {
            h1(vec![
                Step::Send(raw::head(
                    "POST",
                    path,
                    &with_auth(
                        auth,
                        &[("content-length", &len), ("expect", "100-continue")],
                    ),
                )),
                Step::Wait(PAUSE),
                Step::Send(BODY.to_vec()),
            ])
            .await
        }
        Shape::H1WebSocket => {
            h1(vec![
                Step::Send(raw::head(
                    "GET",
                    path,
                    &with_auth(
                        auth,
                        &[
                            ("connection", "Upgrade"),
                            ("upgrade", "websocket"),
                            ("sec-websocket-version", "13"),
                            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
                        ],
                    ),
                )),
                Step::Wait(PAUSE),
                // A masked text frame "hi".
                Step::Send(vec![0x81, 0x82, 1, 2, 3, 4, b'h' ^ 1, b'i' ^ 2]),
            ])
            .await
        }
        Shape::H1OverBufferLimit => {
            let mut steps = vec![Step::Send(raw::head(
                "POST",
                path,
                &with_auth(auth, &[("content-length", &LARGE_BODY.to_string())]),
            ))];
            let body = vec![b'x'; LARGE_BODY];
            steps.extend(body.chunks(256 * 1024).map(|c| Step::Send(c.to_vec())));
            h1(steps).await
        }
        Shape::H1ClientGivesUp => {
            h1(vec![
                Step::Send(raw::head(
                    "POST",
                    path,
                    &with_auth(auth, &[("content-length", "1000")]),
                )),
                Step::Send(BODY.to_vec()),
                Step::Wait(Duration::from_millis(200)),
                Step::Close,
            ])
            .await;
            Seen::GaveUp
        }
        _ => send_h2(stack, cert, shape, path, auth).await,
    }
}

async fn send_h2(
    stack: &Stack,
    cert: &ClientCert,
    shape: Shape,
    path: &str,
    auth: &[(&str, &str)],
) -> Seen {
    let mut client = raw::http2(&stack.pki, Some(cert), stack.port).await;
    let post = |extra: &[(&'static str, &'static str)]| {
        let headers = with_auth(auth, extra);
        raw::h2_request("POST", path, &headers)
    };
    let (response, mut stream) = match shape {
        Shape::H2HeadersWithoutEndStream | Shape::H2ResetMidWait => client
            .send_request(raw::h2_request("GET", path, &with_auth(auth, &[])), false)
            .unwrap(),
        Shape::H2DataWhileWaiting | Shape::H2Trailers | Shape::H2OverBufferLimit => {
            client.send_request(post(&[]), false).unwrap()
        }
        Shape::H2Grpc => client
            .send_request(
                post(&[("content-type", "application/grpc"), ("te", "trailers")]),
                false,
            )
            .unwrap(),
        Shape::H2ExtendedConnect => {
            let mut request = raw::h2_request(
                "CONNECT",
                path,
                &with_auth(auth, &[("sec-websocket-version", "13")]),
            );
            request
                .extensions_mut()
                .insert(h2::ext::Protocol::from_static("websocket"));
            assert!(
                client.is_extended_connect_protocol_enabled(),
                "Envoy did not offer extended CONNECT"
            );
            client.send_request(request, false).unwrap()
        }
        _ => unreachable!("{shape:?} is not an HTTP/2 shape"),
    };
    tokio::time::sleep(PAUSE).await;
    let body = Bytes::from_static(BODY);
    // Sending may fail once Envoy refused the stream: the answer still tells.
    let _ = match shape {
        Shape::H2HeadersWithoutEndStream => stream.send_data(Bytes::new(), true),
        Shape::H2ResetMidWait => {
            stream.send_reset(h2::Reason::CANCEL);
            drop(response);
            // Let Envoy see the reset while the request still waits.
            tokio::time::sleep(PAUSE).await;
            return Seen::GaveUp;
        }
        Shape::H2DataWhileWaiting => {
            let _ = stream.send_data(body.slice(..10), false);
            tokio::time::sleep(PAUSE).await;
            stream.send_data(body.slice(10..), true)
        }
        Shape::H2Trailers => {
            let _ = stream.send_data(body.clone(), false);
            tokio::time::sleep(PAUSE).await;
            let _ = stream.send_data(body, false);
            let mut trailers = http::HeaderMap::new();
            trailers.insert("x-checksum", "42".parse().unwrap());
            stream.send_trailers(trailers)
        }
        Shape::H2Grpc => {
            let mut frame = vec![0u8];
            frame.extend_from_slice(&(BODY.len() as u32).to_be_bytes());
            frame.extend_from_slice(BODY);
            stream.send_data(Bytes::from(frame), true)
        }
        Shape::H2ExtendedConnect => stream.send_data(Bytes::from_static(b"\x81\x02hi"), false),
        Shape::H2OverBufferLimit => stream.send_data(Bytes::from(vec![b'y'; LARGE_BODY]), true),
        _ => unreachable!(),
    };
    let seen = H2Response::read(response, READ_FOR).await;
    drop(stream);
    Seen::H2(seen)
}

/// Runs the whole table against one stack; returns the failures.
async fn run_table(stack: &Stack) -> Vec<String> {
    let cert = stack.pki.client("shapes-client");
    stack.assert_serving(&cert).await;
    let refetches_before = stack.idp.jwks_hits();
    stack.idp.set_delay(IDP_DELAY);
    stack.rotate();
    // All at once: the unknown-kid requests wait together on refetches (many waiters), while
    // the forged and valid ones are decided at once.
    let mut runs = Vec::new();
    for shape in SHAPES {
        for token in TOKENS {
            if passes(token) && shape.gives_up() {
                continue;
            }
            let path = format!("/shape/{}/{shape:?}/{token:?}", stack.name);
            let cert = &cert;
            runs.push(async move {
                let auth = format!("Bearer {}", stack.token(token, cert));
                let seen = send(stack, cert, shape, &path, &[("authorization", &auth)]).await;
                (shape, token, path, seen)
            });
        }
    }
    // Twenty more waiters on one HTTP/2 connection, each with a body sent while it waits.
    let many = async {
        let client = raw::http2(&stack.pki, Some(&cert), stack.port).await;
        let token = stack.token(Token::UnknownKid, &cert);
        let auth = format!("Bearer {token}");
        let streams = (0..20).map(|i| {
            let mut client = client.clone();
            let path = format!("/shape/{}/ManyWaiters/{i}", stack.name);
            let auth = auth.clone();
            async move {
                client = client.ready().await.unwrap();
                let request = raw::h2_request("POST", &path, &[("authorization", &auth)]);
                let (response, mut stream) = client.send_request(request, false).unwrap();
                tokio::time::sleep(PAUSE).await;
                let _ = stream.send_data(Bytes::from_static(BODY), true);
                (path, H2Response::read(response, READ_FOR).await)
            }
        });
        futures_util::future::join_all(streams).await
    };
    let (results, many) = tokio::join!(futures_util::future::join_all(runs), many);
    stack.idp.set_delay(Duration::ZERO);

    let mut failures = Vec::new();
    for (shape, token, path, seen) in &results {
        let received = stack.upstream.received(path);
        let label = format!("{} {shape:?} {token:?}", stack.name);
        let too_large = matches!(shape, Shape::H1OverBufferLimit | Shape::H2OverBufferLimit);
        if passes(*token) && too_large && stack.buffers_body {
            let status = match seen {
                Seen::H1(r) => r.status,
                Seen::H2(r) => r.status,
                Seen::GaveUp => None,
            };
            if !received.is_empty() || status != Some(413) {
                failures.push(format!(
                    "{label}: expected Envoy's 413 and nothing upstream: received {received:?}, client saw {seen:?}"
                ));
            }
        } else if passes(*token) {
            match (received.as_slice(), shape.body_len()) {
                ([one], Some(len)) if one.body != Ok(len) => failures.push(format!(
                    "{label}: the upstream got {:?} body bytes, not {len}",
                    one.body
                )),
                ([_], _) => {}
                (other, _) => failures.push(format!(
                    "{label}: the upstream got {} requests, not 1; client saw {seen:?}",
                    other.len()
                )),
            }
            if shape.body_len().is_some() && !seen.came_from_upstream() {
                failures.push(format!(
                    "{label}: the client did not get the upstream's answer: {seen:?}"
                ));
            }
        } else {
            if !received.is_empty() {
                failures.push(format!(
                    "{label}: WRONG ALLOW: the upstream received {received:?}; client saw {seen:?}"
                ));
            }
            if seen.came_from_upstream() || !seen.refused() {
                failures.push(format!("{label}: the client saw no refusal: {seen:?}"));
            }
        }
    }
    for (path, seen) in &many {
        let received = stack.upstream.received(path);
        let seen = Seen::H2(H2Response {
            status: seen.status,
            headers: seen.headers.clone(),
            body: Vec::new(),
            trailers: seen.trailers.clone(),
        });
        if !received.is_empty() || seen.came_from_upstream() || !seen.refused() {
            failures.push(format!(
                "{} many waiters {path}: WRONG ALLOW or no refusal: received {received:?}, client saw {seen:?}",
                stack.name
            ));
        }
    }
    if stack.idp.jwks_hits() <= refetches_before {
        failures.push(format!(
            "{}: no refetch happened: the unknown-kid requests never waited",
            stack.name
        ));
    }
    // Nothing else reached the upstream under the table's prefix, and Envoy is still serving.
    let stray: Vec<Received> = stack
        .upstream
        .received(&format!("/shape/{}/", stack.name))
        .into_iter()
        .filter(|r| !r.target.ends_with("/Valid") && !r.target.ends_with("/RotatedIn"))
        .collect();
    if !stray.is_empty() {
        failures.push(format!("{}: WRONG ALLOWS: {stray:?}", stack.name));
    }
    stack.assert_serving(&cert).await;
    failures
}

fn report(stack: &Stack, failures: Vec<String>) {
    stack.assert_no_failures(&failures);
    let cases = SHAPES.len() * TOKENS.len() - 4 + 20;
    eprintln!(
        "{}: stream-shape table, {cases} requests, 0 wrong allows",
        stack.name
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Envoy 1.40 and the built module: run scripts/test.sh"]
async fn module_lets_no_byte_of_any_stream_shape_through_before_its_decision() {
    let stack = Stack::module("module", KEYS, with_upgrades).await;
    let failures = run_table(&stack).await;
    report(&stack, failures);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Envoy 1.40 and the certbound binary: run scripts/test.sh"]
async fn service_lets_no_byte_of_any_stream_shape_through_before_its_decision() {
    let stack = Stack::service("service", KEYS, |c| with_upgrades(slow_check_allowed(c))).await;
    let failures = run_table(&stack).await;
    report(&stack, failures);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Envoy 1.40 and the certbound binary: run scripts/test.sh"]
async fn service_with_request_body_lets_no_byte_of_any_stream_shape_through_before_its_decision() {
    let stack = Stack::service("service-with-body", KEYS, |c| {
        with_upgrades(with_request_body(slow_check_allowed(c)))
    })
    .await;
    let failures = run_table(&stack).await;
    report(&stack, failures);
}

/// An ext_authz timeout longer than certbound's refetch wait, so certbound's answer decides.
fn slow_check_allowed(config: String) -> String {
    assert!(config.contains("timeout: 0.25s"));
    config.replace("timeout: 0.25s", "timeout: 8s")
}

/// The ext_authz filter's `with_request_body` (64 KiB, whole bodies only).
fn with_request_body(config: String) -> String {
    let line = "include_peer_certificate: true\n";
    let at = config.find(line).expect("include_peer_certificate");
    let pad_start = config[..at].rfind('\n').unwrap() + 1;
    let pad = " ".repeat(at - pad_start);
    config.replacen(
        line,
        &format!(
            "{line}{pad}with_request_body: {{max_request_bytes: 65536, allow_partial_message: false}}\n"
        ),
        1,
    )
}

/// The same shapes with a valid, DPoP-bound token and a fresh proof each, through the module
/// whose shared replay store (Redis) is frozen: every request waits for Redis (the stream is
/// stopped while a thread of the module's asks), then gets 503. Nothing may pass while it waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Envoy 1.40, the built module and redis-server: run scripts/test.sh"]
async fn module_waiting_for_redis_lets_no_byte_of_any_stream_shape_through() {
    let dir = tempfile::tempdir().unwrap();
    let redis = common::external::RedisServer::start(dir.path()).await;
    let dpop = format!(
        "dpop:\n  enabled: true\n  public_base_url: https://api.example.com\n  replay:\n    store: redis\n    url: {}\n    timeout_ms: 1500\npolicy:\n  reason_header: true\n",
        redis.url()
    );
    let stack = Stack::module("module-redis", &dpop, with_upgrades).await;
    let cert = stack.pki.client("shapes-client");
    stack.assert_serving(&cert).await;
    let key = common::dpop::DpopKey::es256();
    let mut claims = stack.claims(&cert);
    claims["cnf"]["jkt"] = serde_json::json!(key.jkt());
    let token = stack.signer.sign(&claims);
    let auth = format!("DPoP {token}");
    redis.freeze(true);
    let runs = SHAPES.iter().map(|&shape| {
        let path = format!("/shape/redis/{shape:?}");
        let proof = key.proof(
            shape.method(),
            &format!("https://api.example.com{path}"),
            &token,
        );
        let (cert, auth) = (&cert, &auth);
        let stack = &stack;
        async move {
            let headers = [("authorization", auth.as_str()), ("dpop", proof.as_str())];
            let seen = send(stack, cert, shape, &path, &headers).await;
            (shape, path, seen)
        }
    });
    let results = futures_util::future::join_all(runs).await;
    redis.freeze(false);
    let mut failures = Vec::new();
    let mut waited = 0;
    for (shape, path, seen) in &results {
        let received = stack.upstream.received(path);
        if !received.is_empty() || seen.came_from_upstream() || !seen.refused() {
            failures.push(format!(
                "{shape:?}: WRONG ALLOW or no refusal: {received:?} {seen:?}"
            ));
        }
        // certbound's 503 (the store did not answer), or its gRPC form (UNAVAILABLE).
        let unavailable = match seen {
            Seen::H1(r) => {
                r.status == Some(503) && r.header("content-type") == Some("application/json")
            }
            Seen::H2(r) => {
                (r.status == Some(503) && r.header("content-type") == Some("application/json"))
                    || r.grpc_status() == Some("14")
            }
            Seen::GaveUp => false,
        };
        if unavailable {
            waited += 1;
        }
    }
    assert!(
        failures.is_empty(),
        "{}\n--- envoy\n{}",
        failures.join("\n"),
        stack.envoy.log()
    );
    assert!(
        waited >= 10,
        "only {waited} shapes waited for Redis and got 503: {results:?}"
    );
    eprintln!(
        "module-redis: {} shapes, {waited} waited for Redis then 503, 0 wrong allows",
        results.len()
    );
}
