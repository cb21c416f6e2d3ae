//! HTTPS load through Envoy with a fresh DPoP proof on every request, for
//! `scripts/bench-dpop-envoy.sh` (oha sends one header set for the whole run, so every request
//! after the first would be a replay).
//!
//! `dpop_load material DIR` writes a bench-only IdP key (`DIR/bench-idp.pem`, in the bench's
//! temporary folder, never kept) and its public half (`DIR/jwks.json`) for the configs to trust.
//!
//! `dpop_load run --dir DIR --url URL --htu HTU --ca CA.pem [--http 1|2] [--mode closed|rate]
//! [--concurrency C] [--rate R] [--duration S] [--warmup S] [--keys K] [--pids P1,P2] [--label L]`
//! mints `--keys` client keys (default 256: as many clients, so no one key holds more live proofs
//! than `dpop.replay.max_per_key` allows), a `cnf.jkt` token for each, and one proof per request
//! up front (signing is not measured), sends each proof once, and prints one JSON line:
//! throughput, latency percentiles (each request from the moment it is handed to the client; in
//! `rate` mode every request is a task of its own, started on schedule whatever the answers
//! before it), answers other than 200, and the CPU time per request of each process in `--pids`
//! (utime + stime from `/proc`), and of the first process's threads by name, with their context
//! switches per request (voluntary, involuntary).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;

struct Args {
    dir: String,
    url: String,
    htu: String,
    ca: String,
    http: u8,
    mode: String,
    concurrency: usize,
    rate: u64,
    duration: u64,
    warmup: u64,
    pids: Vec<u32>,
    label: String,
    keys: usize,
}

fn parse_args(mut argv: impl Iterator<Item = String>) -> Args {
    let mut a = Args {
        dir: String::new(),
        url: String::new(),
        htu: String::new(),
        ca: String::new(),
        http: 2,
        mode: "closed".into(),
        concurrency: 32,
        rate: 2000,
        duration: 10,
        warmup: 2,
        pids: Vec::new(),
        label: String::new(),
        keys: 256,
    };
    while let Some(flag) = argv.next() {
        let mut value = || {
            argv.next()
                .unwrap_or_else(|| panic!("{flag} needs a value"))
        };
        match flag.as_str() {
            "--dir" => a.dir = value(),
            "--url" => a.url = value(),
            "--htu" => a.htu = value(),
            "--ca" => a.ca = value(),
            "--http" => a.http = value().parse().unwrap(),
            "--mode" => a.mode = value(),
            "--concurrency" => a.concurrency = value().parse().unwrap(),
            "--rate" => a.rate = value().parse().unwrap(),
            "--duration" => a.duration = value().parse().unwrap(),
            "--warmup" => a.warmup = value().parse().unwrap(),
            "--pids" => {
                a.pids = value()
                    .split(',')
                    .filter(|p| !p.is_empty())
                    .map(|p| p.parse().unwrap())
                    .collect()
            }
            "--label" => a.label = value(),
            "--keys" => a.keys = value().parse::<usize>().unwrap().max(1),
            other => panic!("unknown flag {other}"),
        }
    }
    a
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn material(dir: &str) {
    let idp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let raw = idp.public_key_raw();
    let jwks = json!({"keys": [{"kty": "EC", "crv": "P-256", "kid": "bench-dpop", "alg": "ES256",
        "x": URL_SAFE_NO_PAD.encode(&raw[1..33]), "y": URL_SAFE_NO_PAD.encode(&raw[33..65])}]});
    std::fs::write(format!("{dir}/jwks.json"), jwks.to_string()).unwrap();
    std::fs::write(format!("{dir}/bench-idp.pem"), idp.serialize_pem()).unwrap();
}

/// `keys` clients (a fresh key and a token bound to it each), and `n` requests: (the token, a
/// proof of its key for GET `htu`), the clients taking turns.
fn requests(dir: &str, htu: &str, keys: usize, n: usize) -> Vec<(Arc<str>, String)> {
    let clients: Vec<_> = (0..keys).map(|_| client(dir)).collect();
    let rng = SystemRandom::new();
    let t = now();
    let run = format!("{t}-{}", std::process::id());
    (0..n)
        .map(|i| {
            let (key, head, token, ath) = &clients[i % keys];
            let claims = json!({"jti": format!("{run}-{i}"), "htm": "GET", "htu": htu,
                "iat": t, "ath": ath});
            let input = format!("{head}.{}", URL_SAFE_NO_PAD.encode(claims.to_string()));
            let signature = key.sign(&rng, input.as_bytes()).unwrap();
            let proof = format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature.as_ref()));
            (Arc::clone(token), proof)
        })
        .collect()
}

/// One client: its key, its proofs' encoded header, its token and the token's `ath`.
fn client(dir: &str) -> (EcdsaKeyPair, String, Arc<str>, String) {
    let idp = std::fs::read(format!("{dir}/bench-idp.pem")).unwrap();
    let client = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap();
    let point = client.public_key().as_ref().to_vec();
    let jwk = json!({"kty": "EC", "crv": "P-256", "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
                     "y": URL_SAFE_NO_PAD.encode(&point[33..65])});
    let jkt = certbound_core::dpop::jwk_thumbprint(jwk.as_object().unwrap()).unwrap();
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some("bench-dpop".into());
    let t = now();
    let claims = json!({"iss": "https://idp.example.com", "aud": "https://api.example.com",
        "sub": "bench", "client_id": "bench", "scope": "read", "iat": t - 5, "exp": t + 7200,
        "jti": format!("bench-{t}-{}", URL_SAFE_NO_PAD.encode(&point[1..9])), "cnf": {"jkt": jkt}});
    let token =
        jsonwebtoken::encode(&header, &claims, &EncodingKey::from_ec_pem(&idp).unwrap()).unwrap();
    let ath = certbound_core::dpop::access_token_hash(&token);
    let head =
        URL_SAFE_NO_PAD.encode(json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": jwk}).to_string());
    (client, head, token.into(), ath)
}

/// A `/proc/.../stat` line's command name and its utime + stime.
fn name_and_ticks(stat: &str) -> Option<(String, u64)> {
    let (open, close) = (stat.find('(')?, stat.rfind(')')?);
    let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
    // After the command: state is field 3, utime 14 and stime 15 (1-based, whole line).
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Some((stat[open + 1..close].to_owned(), field(11) + field(12)))
}

fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    name_and_ticks(&stat).map_or(0, |(_, ticks)| ticks)
}

/// CPU ticks and context switches (voluntary, involuntary) of each of `pid`'s threads, summed
/// by thread name (Envoy's `wrk:worker_0`, the module's `certbound-redis`, ...).
fn thread_ticks(pid: u32) -> std::collections::BTreeMap<String, [u64; 3]> {
    let mut by_name = std::collections::BTreeMap::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
        let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
        let switches = |field: &str| {
            status
                .lines()
                .find_map(|line| line.strip_prefix(field))
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(0)
        };
        if let Some((name, ticks)) = name_and_ticks(&stat) {
            let entry: &mut [u64; 3] = by_name.entry(name).or_default();
            entry[0] += ticks;
            entry[1] += switches("voluntary_ctxt_switches:");
            entry[2] += switches("nonvoluntary_ctxt_switches:");
        }
    }
    by_name
}

fn clock_ticks() -> u64 {
    let out = std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(100)
}

#[derive(Default)]
struct Tally {
    latencies_us: Vec<u32>,
    ok: u64,
    other: std::collections::BTreeMap<String, u64>,
}

async fn send(client: &reqwest::Client, url: &str, token: &str, proof: &str) -> String {
    match client
        .get(url)
        .header("authorization", format!("DPoP {token}"))
        .header("dpop", proof)
        .send()
        .await
    {
        Ok(answer) => {
            let status = answer.status().as_u16();
            let _ = answer.bytes().await;
            status.to_string()
        }
        Err(e) => format!("error: {}", e.without_url()),
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut argv = std::env::args().skip(1);
    match argv.next().as_deref() {
        Some("material") => return material(&argv.next().expect("material DIR")),
        Some("run") => {}
        _ => panic!("usage: dpop_load material DIR | dpop_load run --dir DIR --url URL ..."),
    }
    let args = parse_args(argv);
    let ca = reqwest::Certificate::from_pem(&std::fs::read(&args.ca).unwrap()).unwrap();
    let mut builder = reqwest::Client::builder()
        .add_root_certificate(ca)
        .timeout(Duration::from_secs(10));
    if args.http == 1 {
        builder = builder
            .http1_only()
            .pool_max_idle_per_host(args.concurrency.max(64));
    }
    let client = builder.build().unwrap();
    // Enough proofs for the whole run: the fixed rate's count, or a closed loop's generous guess.
    let total = (args.warmup + args.duration) as usize;
    let needed = match args.mode.as_str() {
        "rate" => total * args.rate as usize + 100,
        _ => total * 12_000,
    };
    let proofs = Arc::new(requests(&args.dir, &args.htu, args.keys, needed));
    let next = Arc::new(AtomicUsize::new(0));
    let tally = Arc::new(std::sync::Mutex::new(Tally::default()));
    let measuring = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let started = Instant::now();
    let measure_from = started + Duration::from_secs(args.warmup);
    let end = measure_from + Duration::from_secs(args.duration);
    let mut ticks0 = Vec::new();
    let mut threads0 = std::collections::BTreeMap::new();
    let mut tasks = Vec::new();
    let record = |tally: &std::sync::Mutex<Tally>, status: String, latency: Duration| {
        let mut tally = tally.lock().unwrap();
        tally
            .latencies_us
            .push(latency.as_micros().min(u32::MAX as u128) as u32);
        if status == "200" {
            tally.ok += 1;
        } else {
            *tally.other.entry(status).or_default() += 1;
        }
    };
    if args.mode == "rate" {
        let interval = Duration::from_secs_f64(1.0 / args.rate as f64);
        let mut i: u64 = 0;
        loop {
            let scheduled = started + interval.mul_f64(i as f64);
            if scheduled >= end {
                break;
            }
            tokio::time::sleep_until(scheduled.into()).await;
            if ticks0.is_empty() && scheduled >= measure_from {
                measuring.store(true, Ordering::Relaxed);
                ticks0 = args.pids.iter().map(|&p| cpu_ticks(p)).collect();
                threads0 = args
                    .pids
                    .first()
                    .map(|&p| thread_ticks(p))
                    .unwrap_or_default();
            }
            let n = next.fetch_add(1, Ordering::Relaxed);
            let Some((token, proof)) = proofs.get(n).cloned() else {
                break;
            };
            let (client, url, tally) = (client.clone(), args.url.clone(), Arc::clone(&tally));
            let counted = scheduled >= measure_from;
            // Timed from here, not from `scheduled`: tokio's timer has 1 ms steps, so at 2,000/s
            // requests leave in pairs each millisecond, and the wait for the tick is the
            // generator's, not the server's. Each request is its own task: a slow answer never
            // holds back the next request (no coordinated omission).
            let sent = Instant::now();
            tasks.push(tokio::spawn(async move {
                let status = send(&client, &url, &token, &proof).await;
                if counted {
                    record(&tally, status, sent.elapsed());
                }
            }));
            i += 1;
        }
    } else {
        for _ in 0..args.concurrency {
            let (client, url, tally, proofs, next, measuring) = (
                client.clone(),
                args.url.clone(),
                Arc::clone(&tally),
                Arc::clone(&proofs),
                Arc::clone(&next),
                Arc::clone(&measuring),
            );
            tasks.push(tokio::spawn(async move {
                while Instant::now() < end {
                    let Some((token, proof)) = proofs.get(next.fetch_add(1, Ordering::Relaxed))
                    else {
                        break;
                    };
                    let sent = Instant::now();
                    let status = send(&client, &url, token, proof).await;
                    if measuring.load(Ordering::Relaxed) && Instant::now() < end {
                        record(&tally, status, sent.elapsed());
                    }
                }
            }));
        }
        tokio::time::sleep_until(measure_from.into()).await;
        ticks0 = args.pids.iter().map(|&p| cpu_ticks(p)).collect();
        threads0 = args
            .pids
            .first()
            .map(|&p| thread_ticks(p))
            .unwrap_or_default();
        measuring.store(true, Ordering::Relaxed);
        tokio::time::sleep_until(end.into()).await;
    }
    let ticks1: Vec<u64> = args.pids.iter().map(|&p| cpu_ticks(p)).collect();
    let threads1 = args
        .pids
        .first()
        .map(|&p| thread_ticks(p))
        .unwrap_or_default();
    let window = measure_from
        .elapsed()
        .min(Duration::from_secs(args.duration));
    for task in tasks {
        let _ = task.await;
    }
    let tally = tally.lock().unwrap();
    let mut sorted = tally.latencies_us.clone();
    sorted.sort_unstable();
    let pick = |q: f64| -> f64 {
        if sorted.is_empty() {
            return 0.0;
        }
        let i = ((sorted.len() as f64 * q) as usize).min(sorted.len() - 1);
        (sorted[i] as f64 / 1000.0 * 1000.0).round() / 1000.0
    };
    let count = sorted.len().max(1) as f64;
    let clk = clock_ticks() as f64;
    let cpu: Vec<f64> = ticks0
        .iter()
        .zip(&ticks1)
        .map(|(a, b)| ((b - a) as f64 * 1e6 / clk / count * 10.0).round() / 10.0)
        .collect();
    // The first process's CPU per request by thread name (threads with any CPU in the window),
    // and their context switches per request (voluntary, involuntary).
    let spent = |name: &str, after: &[u64; 3], i: usize| {
        after[i].saturating_sub(threads0.get(name).map_or(0, |before: &[u64; 3]| before[i]))
    };
    let per_req = |n: u64, scale: f64| (n as f64 * scale / count * 100.0).round() / 100.0;
    let busy = || {
        threads1
            .iter()
            .filter(|(name, after)| spent(name, after, 0) > 0)
    };
    let threads: serde_json::Map<String, serde_json::Value> = busy()
        .map(|(name, after)| {
            let us = (spent(name, after, 0) as f64 * 1e6 / clk / count * 10.0).round() / 10.0;
            (name.clone(), json!(us))
        })
        .collect();
    let switches: serde_json::Map<String, serde_json::Value> = busy()
        .map(|(name, after)| {
            let (voluntary, involuntary) = (spent(name, after, 1), spent(name, after, 2));
            (
                name.clone(),
                json!([per_req(voluntary, 1.0), per_req(involuntary, 1.0)]),
            )
        })
        .collect();
    let exhausted = next.load(Ordering::Relaxed) >= proofs.len();
    println!(
        "{}",
        json!({
            "label": args.label, "mode": args.mode, "http": args.http,
            "rps": (sorted.len() as f64 / window.as_secs_f64()).round(),
            "ok": tally.ok, "other": tally.other,
            "p50_ms": pick(0.50), "p90_ms": pick(0.90), "p99_ms": pick(0.99), "p999_ms": pick(0.999),
            "cpu_us_per_req": cpu, "first_pid_threads_cpu_us_per_req": threads,
            "first_pid_threads_switches_per_req": switches,
            "pids": args.pids, "proofs_exhausted": exhausted,
        })
    );
}
