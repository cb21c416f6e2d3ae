//! The module across Envoy config reloads: a listener delivered by LDS (a file Envoy watches) is
//! replaced 200 times, each time with a new certbound `filter_config` using the shared Redis
//! replay store (each configuration starts its Redis thread; each one replaced must end it).
//! Envoy's thread count and RSS are read from /proc before and after: neither may grow with the
//! number of reloads. The figures are printed (BENCHMARKS.md records a run).
//!
//! Ignored by a plain `cargo test` (it needs Envoy, the built module and redis-server);
//! `scripts/test.sh` runs it with `--include-ignored`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::time::Duration;

use common::Signer;
use common::envoy::*;
use common::external::RedisServer;
use serde_json::json;

const RELOADS: usize = 200;

/// Threads and resident memory (KiB) of a process, from /proc.
fn threads_and_rss(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.split_whitespace().next().unwrap().parse::<u64>().unwrap())
            .unwrap()
    };
    (field("Threads:"), field("VmRSS:"))
}

/// The LDS resource: one listener whose certbound filter_config differs by `generation`.
fn listener(port: u16, jwks: &Path, redis: &RedisServer, generation: usize) -> String {
    let filter = format!(
        "issuers:\n  - issuer: https://idp.example.com\n    audiences: [https://api.example.com]\n    jwks_file: {}\n    algorithms: [ES256]\n\
         certificate:\n  sources: [peer]\n\
         dpop:\n  enabled: true\n  replay:\n    store: redis\n    url: {}\n    key_prefix: \"certbound:dpop:{generation}:\"\n",
        jwks.display(),
        redis.url()
    );
    module_lds_listener(port, &filter)
}

/// Replaces the LDS file the way Envoy's watch expects: written aside, then moved over it.
fn publish(lds: &Path, text: &str) {
    let aside = lds.with_extension("tmp");
    std::fs::write(&aside, text).unwrap();
    std::fs::rename(&aside, lds).unwrap();
}

async fn counter(admin: u16, name: &str) -> u64 {
    let url = format!("http://127.0.0.1:{admin}/stats?filter=^{name}$");
    let text = reqwest::get(&url).await.unwrap().text().await.unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
        .map_or(0, |v| v.trim().parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Envoy 1.40, the built module and redis-server: run scripts/test.sh"]
async fn two_hundred_reloads_leak_no_thread_and_no_memory() {
    let pki = Pki::new("reload");
    let dir = pki.dir.path();
    let redis = RedisServer::start(dir).await;
    let signer = Signer::es256("k1");
    let jwks = dir.join("jwks.json");
    std::fs::write(&jwks, json!({"keys": [signer.jwk.clone()]}).to_string()).unwrap();
    let upstream = RecordingUpstream::start().await;
    let ports = EnvoyPorts {
        listener: free_port(),
        admin: free_port(),
        upstream: Some(upstream.addr),
        ..Default::default()
    };
    let lds = dir.join("lds.json");
    publish(&lds, &listener(ports.listener, &jwks, &redis, 0));
    let bootstrap = format!(
        "# loads certbound_envoy through LDS\n\
         node: {{id: reload-test, cluster: certbound-tests}}\n\
         admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {}}}}}}}\n\
         dynamic_resources:\n  lds_config:\n    resource_api_version: V3\n    path_config_source: {{path: {}}}\n\
         static_resources:\n  clusters:\n    - name: upstream\n      type: STATIC\n      connect_timeout: 1s\n      load_assignment:\n        cluster_name: upstream\n        endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {}}}}}}}}}]}}]\n",
        ports.admin,
        lds.display(),
        upstream.addr.port()
    );
    // Replaced listeners drain for 1 s (Envoy's default is 10 minutes).
    let envoy = start_envoy_with(&bootstrap, &ports, dir, &["--drain-time-s", "1"]).await;
    let updates = "listener_manager.lds.update_success";
    for _ in 0..200 {
        if counter(ports.admin, updates).await >= 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    // Warm up: the first configuration serves, its Redis thread runs.
    let http = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{}/items", ports.listener);
    let first = http.get(&url).send().await.unwrap().status().as_u16();
    assert_eq!(first, 401, "{}", envoy.log());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (threads_before, rss_before) = threads_and_rss(envoy.id());

    for generation in 1..=RELOADS {
        let before = counter(ports.admin, updates).await;
        publish(&lds, &listener(ports.listener, &jwks, &redis, generation));
        let mut applied = false;
        for _ in 0..400 {
            if counter(ports.admin, updates).await > before {
                applied = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(applied, "reload {generation} not applied:\n{}", envoy.log());
        if generation % 50 == 0 {
            let status = http.get(&url).send().await.unwrap().status().as_u16();
            assert_eq!(status, 401, "after reload {generation}");
        }
    }
    // Replaced listeners drain (--drain-time-s 1 in tests), then their configurations go.
    let mut settled = (0, 0);
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        settled = threads_and_rss(envoy.id());
        if settled.0 <= threads_before + 2 {
            break;
        }
    }
    let (threads_after, rss_after) = settled;
    eprintln!(
        "{RELOADS} reloads: Envoy threads {threads_before} -> {threads_after}, RSS {rss_before} KiB -> {rss_after} KiB"
    );
    assert!(
        threads_after <= threads_before + 2,
        "threads grew with reloads: {threads_before} -> {threads_after}"
    );
    // Each configuration that stayed would hold a runtime, a connection and caches; 200 of them
    // would add far more than this.
    assert!(
        rss_after < rss_before + 48 * 1024,
        "RSS grew with reloads: {rss_before} KiB -> {rss_after} KiB"
    );
}
