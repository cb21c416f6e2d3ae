//! The cost of one 401 (decision and answer, the challenge included), for counting instructions
//! under callgrind: `deny_cost SCENARIO N` decides N requests of one kind, without and with a
//! protected resource (whose challenges carry `resource_metadata`).
//!
//! SCENARIO: `no_token` or `malformed` (a token that is not a JWT); `plain` or `resource` picks
//! the configuration. scripts/deny-instructions.sh runs it twice per case under callgrind and
//! prints instructions per 401 (the difference of the runs cancels the setup).

use std::hint::black_box;

use certbound::config::Settings;
use certbound_core::{AccessRequest, Authorization};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(config), Some(scenario), Some(n)) = (args.get(1), args.get(2), args.get(3)) else {
        eprintln!("usage: deny_cost plain|resource no_token|malformed N");
        std::process::exit(64);
    };
    let n: usize = n.parse().expect("N");
    let resources = match config.as_str() {
        "plain" => "",
        "resource" => "resources:\n  - id: https://api.bench\n",
        other => panic!("{other}: plain or resource"),
    };
    let yaml = format!(
        "issuers:\n  - issuer: https://idp.bench\n    audiences: [https://api.bench]\n    jwks_uri: https://idp.bench/jwks.json\n{resources}"
    );
    let policy = Settings::from_yaml(&yaml, Vec::new(), None)
        .expect("valid")
        .decision
        .policy;
    let authorization = match scenario.as_str() {
        "no_token" => Authorization::Absent,
        "malformed" => Authorization::One("Bearer not-a-jwt".into()),
        other => panic!("{other}: no_token or malformed"),
    };
    let request = AccessRequest {
        authorization,
        method: "GET".into(),
        path: "/items".into(),
        host: "api.bench".into(),
        ..Default::default()
    };
    struct NoKeys;
    impl certbound_core::KeyLookup for NoKeys {
        fn key_set(&self, _: usize) -> Option<std::sync::Arc<certbound_core::keys::KeySet>> {
            None
        }
    }
    let mut bytes = 0;
    for _ in 0..n {
        let decision = policy.decide(&NoKeys, black_box(&request), 1_800_000_000);
        let answer = decision.http_answer(false).expect("a 401");
        assert_eq!(answer.status, 401);
        bytes += answer.headers[1].1.len();
    }
    println!("{bytes}");
}
