//! gRPC load generator for certbound's Check: starts the real `certbound` binary (optionally
//! pinned to a CPU) with a local JWKS, then drives it closed-loop (N in flight) or at a fixed
//! rate (latency measured from each request's intended send time, so a stall is not hidden).
//! Reports checks/s, latency percentiles, certbound CPU-µs per check (from /proc) and RSS.
//!
//! The Checks are sent by a bare HTTP/2 client (the `h2` crate) with every request encoded once
//! up front and only the answer's status decoded: with tonic's client (encode, deep-clone and
//! decode per Check) the generator used a whole core itself and capped the cached rate. It
//! reports its own CPU share (`loadgen_cpu_share`), so a saturated generator shows.
//!
//! With `--api http`, the same Checks go to the HTTP authorization API (`forward_auth`, h2c)
//! instead: `GET /auth` with the original request in `X-Forwarded-*` headers and the certificate
//! in `X-SSL-Client-Cert` (URL-encoded PEM, as NGINX sends it); an allow is a 200.
//!
//! With `--dpop on`, every Check carries a DPoP-bound token and a proof of its own (made up front,
//! `--proofs` of them, each sent once): the proof is verified and recorded against replay on
//! every Check, in memory or, with `--replay redis --redis-url URL`, in Redis.
//!
//! ```text
//! cargo build --release --bin certbound --example loadgen
//! taskset -c 1 target/release/examples/loadgen --server-cpu 0 --mode closed --concurrency 64 \
//!     --duration 10 --tokens 1 --cache on
//! taskset -c 1 target/release/examples/loadgen --server-cpu 0 --dpop on --replay redis \
//!     --redis-url redis://127.0.0.1:6379
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use certbound::grpc::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use certbound::grpc::pb::envoy::service::auth::v3::{
    AttributeContext, CheckRequest, attribute_context,
};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use prost::Message;
use serde_json::json;
use tonic::transport::Channel;

struct Args {
    mode: String,
    concurrency: usize,
    rate: u64,
    duration: u64,
    warmup: u64,
    tokens: usize,
    cache: bool,
    workers: usize,
    server_cpu: Option<String>,
    connections: usize,
    log: String,
    label: String,
    dpop: bool,
    replay: String,
    redis_url: String,
    proofs: usize,
    /// `grpc` (ext_authz) or `http` (the HTTP authorization API).
    api: String,
    /// OpenTelemetry traces: `off`, or the sample ratio (`0.01`, `1`), exported to an OTLP sink
    /// in this process.
    traces: String,
}

fn parse_args() -> Args {
    let mut a = Args {
        mode: "closed".into(),
        concurrency: 64,
        rate: 2000,
        duration: 10,
        warmup: 2,
        tokens: 1,
        cache: true,
        workers: 1,
        server_cpu: None,
        connections: 4,
        log: "info".into(),
        label: String::new(),
        dpop: false,
        replay: "memory".into(),
        redis_url: String::new(),
        proofs: 200_000,
        api: "grpc".into(),
        traces: "off".into(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--mode" => a.mode = value(),
            "--concurrency" => a.concurrency = value().parse().unwrap(),
            "--rate" => a.rate = value().parse().unwrap(),
            "--duration" => a.duration = value().parse().unwrap(),
            "--warmup" => a.warmup = value().parse().unwrap(),
            "--tokens" => a.tokens = value().parse().unwrap(),
            "--cache" => a.cache = value() == "on",
            "--workers" => a.workers = value().parse().unwrap(),
            "--server-cpu" => a.server_cpu = Some(value()),
            "--connections" => a.connections = value().parse().unwrap(),
            "--log" => a.log = value(),
            "--label" => a.label = value(),
            "--dpop" => a.dpop = value() == "on",
            "--replay" => a.replay = value(),
            "--redis-url" => a.redis_url = value(),
            "--proofs" => a.proofs = value().parse().unwrap(),
            "--api" => a.api = value(),
            "--traces" => a.traces = value(),
            other => panic!("unknown flag {other}"),
        }
    }
    a
}

/// Everything certbound needs, in a temp dir: JWKS, config; and the requests to send.
fn prepare(
    args: &Args,
    dir: &std::path::Path,
    port: u16,
    http_port: u16,
    sink_port: u16,
) -> (PathBuf, Vec<CheckRequest>) {
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let raw = pair.public_key_raw();
    let jwks = json!({"keys": [{"kty": "EC", "crv": "P-256", "kid": "bench", "alg": "ES256",
        "x": URL_SAFE_NO_PAD.encode(&raw[1..33]), "y": URL_SAFE_NO_PAD.encode(&raw[33..65])}]});
    std::fs::write(dir.join("jwks.json"), jwks.to_string()).unwrap();
    let config = dir.join("certbound.yaml");
    // Proofs stay valid for the whole run; the in-memory store holds every one of them.
    let dpop = match (args.dpop, args.replay.as_str()) {
        (false, _) => String::new(),
        (true, "redis") => format!(
            "dpop:\n  enabled: true\n  max_age_seconds: 3600\n  replay:\n    store: redis\n    url: {}\n    key_prefix: 'loadgen:{port}:'\n",
            args.redis_url
        ),
        // Every proof is by one of `--tokens` keys: the per-key quota must hold them all.
        (true, _) => format!(
            "dpop:\n  enabled: true\n  max_age_seconds: 3600\n  replay:\n    max_entries: {}\n    max_per_key: {}\n",
            args.proofs + 1024,
            args.proofs + 1024
        ),
    };
    let traces = if args.traces == "off" {
        String::new()
    } else {
        format!(
            "telemetry:\n  traces:\n    endpoint: http://127.0.0.1:{sink_port}\n    sample_ratio: {}\n",
            args.traces
        )
    };
    let http_api = if args.api == "http" {
        format!(
            "forward_auth:\n  listen: 127.0.0.1:{http_port}\ncertificate:\n  sources: [header]\n  header: {{name: x-ssl-client-cert, encoding: pem_url}}\n"
        )
    } else {
        String::new()
    };
    std::fs::write(
        &config,
        format!(
            "{traces}{http_api}listen: 127.0.0.1:{port}\nadmin_listen: ''\nissuers:\n  - issuer: https://idp.bench\n    audiences: [https://api.bench]\n    jwks_file: {}\n    algorithms: [ES256]\ntoken_cache:\n  max_entries: {}\nruntime:\n  worker_threads: {}\nlimits:\n  max_concurrent_checks: 100000\n{dpop}",
            dir.join("jwks.json").display(),
            if args.cache { args.tokens.max(1) + 16 } else { 0 },
            args.workers
        ),
    )
    .unwrap();
    if args.dpop {
        return (config, dpop_requests(args, &pair, now_seconds()));
    }
    let cert_key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["client.bench".into()])
        .unwrap()
        .self_signed(&cert_key)
        .unwrap();
    let x5t = certbound_core::Thumbprint::of_der(cert.der()).to_base64url();
    let peer = certbound_core::certificate::envoy_url_encode(&cert.pem());
    let key = EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).unwrap();
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some("bench".into());
    let now = now_seconds();
    let requests = (0..args.tokens)
        .map(|i| {
            let claims = json!({"iss": "https://idp.bench", "aud": "https://api.bench", "sub": "alice",
                "client_id": "bench", "scope": "read", "iat": now - 5, "exp": now + 7200,
                "jti": format!("bench-{i}"), "cnf": {"x5t#S256": x5t}});
            let token = jsonwebtoken::encode(&header, &claims, &key).unwrap();
            let http = attribute_context::HttpRequest {
                method: "GET".into(),
                path: "/items".into(),
                host: "api.bench".into(),
                headers: [("authorization".to_string(), format!("Bearer {token}"))].into(),
                ..Default::default()
            };
            CheckRequest {
                attributes: Some(AttributeContext {
                    source: Some(attribute_context::Peer { certificate: peer.clone(), ..Default::default() }),
                    request: Some(attribute_context::Request { time: None, http: Some(http) }),
                    ..Default::default()
                }),
            }
        })
        .collect();
    (config, requests)
}

fn now_seconds() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// `--proofs` Checks, each with one of `--tokens` DPoP-bound tokens and a proof of its own (one
/// client key per token), made with aws-lc-rs.
fn dpop_requests(args: &Args, issuer_key: &rcgen::KeyPair, now: i64) -> Vec<CheckRequest> {
    use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
    let key = EncodingKey::from_ec_pem(issuer_key.serialize_pem().as_bytes()).unwrap();
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some("bench".into());
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let clients: Vec<(EcdsaKeyPair, serde_json::Value, String)> = (0..args.tokens.max(1))
        .map(|i| {
            let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap();
            let point = pair.public_key().as_ref().to_vec();
            let jwk = json!({"kty": "EC", "crv": "P-256", "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
                             "y": URL_SAFE_NO_PAD.encode(&point[33..65])});
            let jkt = certbound_core::dpop::jwk_thumbprint(jwk.as_object().unwrap()).unwrap();
            let claims = json!({"iss": "https://idp.bench", "aud": "https://api.bench", "sub": "alice",
                "client_id": "bench", "scope": "read", "iat": now - 5, "exp": now + 7200,
                "jti": format!("bench-{i}"), "cnf": {"jkt": jkt}});
            let token = jsonwebtoken::encode(&header, &claims, &key).unwrap();
            (pair, jwk, token)
        })
        .collect();
    (0..args.proofs)
        .map(|n| {
            let (pair, jwk, token) = &clients[n % clients.len()];
            let proof_header = json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": jwk});
            let claims = json!({"jti": format!("p{n}"), "htm": "GET", "htu": "https://api.bench/items",
                "iat": now, "ath": certbound_core::dpop::access_token_hash(token)});
            let input = format!(
                "{}.{}",
                URL_SAFE_NO_PAD.encode(proof_header.to_string()),
                URL_SAFE_NO_PAD.encode(claims.to_string())
            );
            let signature = pair.sign(&rng, input.as_bytes()).unwrap();
            let proof = format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature.as_ref()));
            let http = attribute_context::HttpRequest {
                method: "GET".into(),
                path: "/items".into(),
                host: "api.bench".into(),
                scheme: "https".into(),
                headers: [
                    ("authorization".to_string(), format!("DPoP {token}")),
                    ("dpop".to_string(), proof),
                ]
                .into(),
                ..Default::default()
            };
            CheckRequest {
                attributes: Some(AttributeContext {
                    request: Some(attribute_context::Request { time: None, http: Some(http) }),
                    ..Default::default()
                }),
            }
        })
        .collect()
}

fn cpu_ticks(pid: u32) -> u64 {
    let usage = usage(pid);
    usage.user_ticks + usage.sys_ticks
}

/// What a process used so far (all its threads): CPU time, page faults, context switches.
#[derive(Clone, Copy, Default)]
struct Usage {
    user_ticks: u64,
    sys_ticks: u64,
    minor_faults: u64,
    context_switches: u64,
}

impl std::ops::Sub for Usage {
    type Output = Usage;
    fn sub(self, before: Usage) -> Usage {
        Usage {
            user_ticks: self.user_ticks - before.user_ticks,
            sys_ticks: self.sys_ticks - before.sys_ticks,
            minor_faults: self.minor_faults - before.minor_faults,
            context_switches: self.context_switches - before.context_switches,
        }
    }
}

fn usage(pid: u32) -> Usage {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // minflt, utime and stime are fields 10, 14 and 15 (1-based) of the whole line: 8, 12 and
    // 13 after "comm".
    let field = |i: usize| fields[i].parse::<u64>().unwrap();
    // Context switches, voluntary and not, summed over the process's threads.
    let context_switches = std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("status")).ok())
        .flat_map(|status| {
            status
                .lines()
                .filter(|l| l.contains("ctxt_switches:"))
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .collect::<Vec<_>>()
        })
        .sum();
    Usage {
        user_ticks: field(11),
        sys_ticks: field(12),
        minor_faults: field(7),
        context_switches,
    }
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn clock_ticks_per_second() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100)
}

/// A Check's answer, decoded only as far as its status (prost skips the other fields).
#[derive(Clone, PartialEq, prost::Message)]
struct AnswerStatus {
    #[prost(message, optional, tag = "1")]
    status: Option<RpcStatus>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
}

/// One HTTP/2 connection to certbound's Check, driven by `h2` directly.
#[derive(Clone)]
struct CheckClient {
    send: h2::client::SendRequest<Bytes>,
    uri: http::Uri,
}

/// One prepared Check: a gRPC frame, or the HTTP API's request headers.
#[derive(Clone)]
enum Payload {
    Grpc(Bytes),
    Http(std::sync::Arc<http::HeaderMap>),
}

/// The HTTP API's request for a CheckRequest: what NGINX would send for the same request.
fn http_headers(request: &CheckRequest) -> http::HeaderMap {
    let attributes = request.attributes.as_ref().unwrap();
    let http = attributes
        .request
        .as_ref()
        .and_then(|r| r.http.as_ref())
        .unwrap();
    let mut headers = http::HeaderMap::new();
    let mut set = |name: &'static str, value: &str| {
        headers.insert(name, http::HeaderValue::from_str(value).unwrap());
    };
    set("x-forwarded-method", &http.method);
    set("x-forwarded-uri", &http.path);
    set("x-forwarded-host", &http.host);
    set(
        "x-forwarded-proto",
        if http.scheme.is_empty() {
            "https"
        } else {
            &http.scheme
        },
    );
    if let Some(peer) = &attributes.source {
        set("x-ssl-client-cert", &peer.certificate);
    }
    for (name, value) in &http.headers {
        headers.insert(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            http::HeaderValue::from_str(value).unwrap(),
        );
    }
    headers
}

impl CheckClient {
    async fn connect(port: u16, path: &str) -> Self {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        tcp.set_nodelay(true).unwrap();
        let (send, connection) = h2::client::handshake(tcp).await.unwrap();
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let uri = format!("http://127.0.0.1:{port}{path}").parse().unwrap();
        Self { send, uri }
    }

    /// Sends one Check; true when the answer is an allow.
    async fn check(&mut self, payload: Payload) -> bool {
        match payload {
            Payload::Grpc(frame) => self.check_grpc(frame).await,
            Payload::Http(headers) => self.check_http(&headers).await,
        }
    }

    /// One HTTP API check; true on 200.
    async fn check_http(&mut self, headers: &http::HeaderMap) -> bool {
        let mut request = http::Request::get(self.uri.clone()).body(()).unwrap();
        *request.headers_mut() = headers.clone();
        let Ok(send) = self.send.clone().ready().await else {
            return false;
        };
        self.send = send;
        let Ok((response, _)) = self.send.send_request(request, true) else {
            return false;
        };
        let Ok(response) = response.await else {
            return false;
        };
        let ok = response.status() == 200;
        let mut body = response.into_body();
        while let Some(Ok(chunk)) = body.data().await {
            let _ = body.flow_control().release_capacity(chunk.len());
        }
        ok
    }

    /// Sends one gRPC-framed CheckRequest; true when the answer is gRPC OK with an allow.
    async fn check_grpc(&mut self, frame: Bytes) -> bool {
        let request = http::Request::post(self.uri.clone())
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .unwrap();
        let Ok(send) = self.send.clone().ready().await else {
            return false;
        };
        self.send = send;
        let Ok((response, mut body_out)) = self.send.send_request(request, false) else {
            return false;
        };
        if body_out.send_data(frame, true).is_err() {
            return false;
        }
        let Ok(response) = response.await else {
            return false;
        };
        let mut body = response.into_body();
        let mut answer = Vec::new();
        while let Some(Ok(chunk)) = body.data().await {
            let _ = body.flow_control().release_capacity(chunk.len());
            answer.extend_from_slice(&chunk);
        }
        let grpc_ok = matches!(body.trailers().await, Ok(Some(t)) if t.get("grpc-status").is_some_and(|v| v == "0"));
        grpc_ok
            && answer.len() > 5
            && AnswerStatus::decode(&answer[5..])
                .is_ok_and(|a| a.status.is_some_and(|s| s.code == 0))
    }
}

/// A CheckRequest as a gRPC message frame: uncompressed flag, big-endian length, protobuf.
fn grpc_frame(request: &CheckRequest) -> Bytes {
    let body = request.encode_to_vec();
    let mut frame = Vec::with_capacity(5 + body.len());
    frame.push(0);
    frame.extend_from_slice(&u32::try_from(body.len()).unwrap().to_be_bytes());
    frame.extend_from_slice(&body);
    Bytes::from(frame)
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    // Nanoseconds to milliseconds.
    f64::from(sorted[index]) / 1e6
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args = parse_args();
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let http_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let sink_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let spans = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    if args.traces != "off" {
        otlp_sink(sink_port, std::sync::Arc::clone(&spans)).await;
    }
    let (config, requests) = prepare(&args, dir.path(), port, http_port, sink_port);
    let bin = std::env::var("CERTBOUND_BIN").unwrap_or_else(|_| "target/release/certbound".into());
    let mut command = match &args.server_cpu {
        Some(cpu) => {
            let mut c = Command::new("taskset");
            c.args(["-c", cpu, &bin]);
            c
        }
        None => Command::new(&bin),
    };
    command
        .args(["serve", "--config"])
        .arg(&config)
        .env("RUST_LOG", &args.log)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let started = Instant::now();
    let server = Server(command.spawn().expect("start certbound"));
    let pid = server.0.id();

    // Time to SERVING (local JWKS): the startup target.
    let endpoint = format!("http://127.0.0.1:{port}");
    let serving_after = loop {
        if let Ok(channel) = Channel::from_shared(endpoint.clone())
            .unwrap()
            .connect()
            .await
        {
            let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
            if let Ok(r) = health
                .check(tonic_health::pb::HealthCheckRequest {
                    service: String::new(),
                })
                .await
                && r.get_ref().status == 1
            {
                break started.elapsed();
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "certbound did not start"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    };

    // Sanity, through tonic's client with the whole answer decoded: the workload is allowed (a
    // benchmark of denials would measure the wrong thing).
    let http_api = args.api == "http";
    let mut tonic_client = AuthorizationClient::new(
        Channel::from_shared(endpoint)
            .unwrap()
            .connect()
            .await
            .unwrap(),
    );
    if !http_api {
        let answer = tonic_client
            .check(requests[0].clone())
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            answer.status.map(|s| s.code),
            Some(0),
            "the benchmark request is not allowed"
        );
    }
    drop(tonic_client);

    let mut clients = Vec::new();
    for _ in 0..args.connections.max(1) {
        clients.push(if http_api {
            CheckClient::connect(http_port, "/auth").await
        } else {
            CheckClient::connect(port, "/envoy.service.auth.v3.Authorization/Check").await
        });
    }
    let requests: Vec<Payload> = requests
        .iter()
        .map(|r| {
            if http_api {
                Payload::Http(std::sync::Arc::new(http_headers(r)))
            } else {
                Payload::Grpc(grpc_frame(r))
            }
        })
        .collect();
    if http_api {
        assert!(
            clients[0].clone().check(requests[0].clone()).await,
            "the benchmark request is not allowed by the HTTP API"
        );
    }
    let requests = std::sync::Arc::new(requests);
    // One cursor over the requests for the warm-up and the run, so that each DPoP proof is sent
    // once (requests[0] was the check above).
    let cursor = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(1));
    let next = move |cursor: &std::sync::atomic::AtomicUsize, len: usize| {
        cursor.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % len
    };
    let run = |seconds: u64, record: bool| {
        let clients = clients.clone();
        let requests = std::sync::Arc::clone(&requests);
        let cursor = std::sync::Arc::clone(&cursor);
        let mode = args.mode.clone();
        let concurrency = args.concurrency;
        let rate = args.rate;
        async move {
            let deadline = Instant::now() + Duration::from_secs(seconds);
            let mut latencies: Vec<u32> = Vec::new();
            let mut errors = 0u64;
            if mode == "closed" {
                let mut tasks = tokio::task::JoinSet::new();
                for worker in 0..concurrency {
                    let mut client = clients[worker % clients.len()].clone();
                    let requests = std::sync::Arc::clone(&requests);
                    let cursor = std::sync::Arc::clone(&cursor);
                    tasks.spawn(async move {
                        let mut lat = Vec::new();
                        let mut errors = 0u64;
                        while Instant::now() < deadline {
                            let request = requests[next(&cursor, requests.len())].clone();
                            let t = Instant::now();
                            if !client.check(request).await {
                                errors += 1;
                            }
                            if record {
                                lat.push(t.elapsed().as_nanos().min(u128::from(u32::MAX)) as u32);
                            }
                        }
                        (lat, errors)
                    });
                }
                while let Some(result) = tasks.join_next().await {
                    let (lat, e) = result.unwrap();
                    latencies.extend(lat);
                    errors += e;
                }
            } else {
                let interval = Duration::from_secs_f64(1.0 / rate as f64);
                let start = Instant::now();
                let mut tasks = tokio::task::JoinSet::new();
                let mut i = 0usize;
                loop {
                    let intended = start + interval * i as u32;
                    if intended >= deadline {
                        break;
                    }
                    // tokio's timer has 1 ms granularity: sleep to within 2 ms of the intended
                    // time, then yield until it (answers keep being read meanwhile), so that
                    // timer lateness is not counted as certbound's latency.
                    if let Some(coarse) = intended.checked_sub(Duration::from_millis(2))
                        && coarse > Instant::now()
                    {
                        tokio::time::sleep_until(coarse.into()).await;
                    }
                    while Instant::now() < intended {
                        tokio::task::yield_now().await;
                    }
                    let mut client = clients[i % clients.len()].clone();
                    let request = requests[next(&cursor, requests.len())].clone();
                    tasks.spawn(async move {
                        let ok = client.check(request).await;
                        // Latency from the intended send time: coordinated omission corrected.
                        (
                            intended.elapsed().as_nanos().min(u128::from(u32::MAX)) as u32,
                            ok,
                        )
                    });
                    i += 1;
                    while let Some(done) = tasks.try_join_next() {
                        let (ns, ok) = done.unwrap();
                        if record {
                            latencies.push(ns);
                        }
                        errors += u64::from(!ok);
                    }
                }
                while let Some(done) = tasks.join_next().await {
                    let (ns, ok) = done.unwrap();
                    if record {
                        latencies.push(ns);
                    }
                    errors += u64::from(!ok);
                }
            }
            (latencies, errors)
        }
    };
    run(args.warmup, false).await;
    let usage_before = usage(pid);
    let own_before = cpu_ticks(std::process::id());
    let t0 = Instant::now();
    let (mut latencies, errors) = run(args.duration, true).await;
    let elapsed = t0.elapsed().as_secs_f64();
    let used = usage(pid) - usage_before;
    let ticks = used.user_ticks + used.sys_ticks;
    let own_ticks = cpu_ticks(std::process::id()) - own_before;
    latencies.sort_unstable();
    let checks = latencies.len() as f64;
    let hz = clock_ticks_per_second() as f64;
    let per_check = |ticks: u64| ticks as f64 * 1e6 / hz / checks.max(1.0);
    let cpu_us_per_check = per_check(ticks);
    let p = |q| percentile(&latencies, q);
    println!(
        "{}",
        json!({
            "label": args.label, "mode": args.mode, "concurrency": args.concurrency, "rate": args.rate,
            "api": args.api, "traces": args.traces,
            "spans_exported": spans.load(std::sync::atomic::Ordering::Relaxed),
            "tokens": args.tokens, "cache": args.cache, "workers": args.workers,
            "dpop": args.dpop, "replay": if args.dpop { args.replay.as_str() } else { "" },
            // With DPoP, over `--proofs` sent means proofs were replayed (and counted as errors).
            "sent": cursor.load(std::sync::atomic::Ordering::Relaxed),
            "checks": checks, "checks_per_s": (checks / elapsed).round(), "errors": errors,
            "p50_ms": p(0.50), "p90_ms": p(0.90), "p99_ms": p(0.99), "p999_ms": p(0.999),
            "cpu_us_per_check": (cpu_us_per_check * 10.0).round() / 10.0,
            // The same split into user and kernel (sys) time; what the kernel did for it.
            "user_us_per_check": (per_check(used.user_ticks) * 10.0).round() / 10.0,
            "sys_us_per_check": (per_check(used.sys_ticks) * 10.0).round() / 10.0,
            "minor_faults_per_check": (used.minor_faults as f64 / checks.max(1.0) * 1000.0).round() / 1000.0,
            "context_switches_per_check": (used.context_switches as f64 / checks.max(1.0) * 1000.0).round() / 1000.0,
            "rss_mib": (rss_kib(pid) as f64 / 1024.0 * 10.0).round() / 10.0,
            // The generator's own CPU time over the run's wall time: near 1.0, it was the limit.
            "loadgen_cpu_share": (own_ticks as f64 / hz / elapsed * 100.0).round() / 100.0,
            "serving_after_ms": serving_after.as_secs_f64() * 1000.0,
        })
    );
}

/// An OTLP/gRPC trace receiver that counts the spans it is sent (for `--traces`).
async fn otlp_sink(port: u16, spans: std::sync::Arc<std::sync::atomic::AtomicU64>) {
    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
        TraceService, TraceServiceServer,
    };
    use opentelemetry_proto::tonic::collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
    };
    struct Sink(std::sync::Arc<std::sync::atomic::AtomicU64>);
    #[tonic::async_trait]
    impl TraceService for Sink {
        async fn export(
            &self,
            request: tonic::Request<ExportTraceServiceRequest>,
        ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
            let count: usize = request
                .get_ref()
                .resource_spans
                .iter()
                .flat_map(|r| &r.scope_spans)
                .map(|s| s.spans.len())
                .sum();
            self.0
                .fetch_add(count as u64, std::sync::atomic::Ordering::Relaxed);
            Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
        }
    }
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(Sink(spans)))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
}
