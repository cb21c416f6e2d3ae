//! The bundled local setup (`deploy/local`) gives the outcomes the docs promise (docs/src/getting-started.md).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Answer, request};

fn read(name: &str) -> String {
    std::fs::read_to_string(format!("deploy/local/{name}"))
        .unwrap()
        .trim()
        .to_string()
}

async fn check(
    checker: &certbound::check::Checker,
    token: Option<&str>,
    cert: Option<&str>,
) -> Answer {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", a.as_str())).collect();
    let cert = cert
        .map(|c| common::url_encode_pem(&read(c)))
        .unwrap_or_default();
    let access = certbound::grpc::convert::access_request(request(&headers, &cert), None).unwrap();
    let decision = checker.check(&access).await;
    Answer::from(certbound::grpc::convert::check_response(
        &decision,
        Default::default(),
    ))
}

#[tokio::test]
async fn demo_token_and_certificates_give_the_documented_outcomes() {
    let settings =
        certbound::config::Settings::load("deploy/local/certbound.yaml".as_ref()).unwrap();
    let checker = certbound::server::App::build(&settings).unwrap().checker();
    checker.keys().load_all().await;
    assert!(checker.keys().all_loaded());
    let bound = read("demo-token.jwt");
    let unbound = read("demo-token-unbound.jwt");

    let allowed = check(&checker, Some(&bound), Some("demo-client.pem")).await;
    allowed.assert_allowed();
    assert_eq!(
        allowed
            .headers
            .get("x-certbound-subject")
            .map(String::as_str),
        Some("demo-user")
    );
    // remove_authorization: the token, and a DPoP proof if one came with it.
    assert_eq!(allowed.headers_to_remove, ["authorization", "dpop"]);

    check(&checker, None, Some("demo-client.pem"))
        .await
        .assert_unauthorized("token_missing", "Bearer");
    check(&checker, Some(&unbound), Some("demo-client.pem"))
        .await
        .assert_invalid_token("cnf_missing");
    check(&checker, Some(&bound), Some("demo-other-client.pem"))
        .await
        .assert_invalid_token("binding_mismatch");
    check(&checker, Some(&bound), None)
        .await
        .assert_invalid_token("cert_missing");
}

#[test]
fn demo_request_files_carry_the_demo_token_and_certificates() {
    let allow = read("requests/allow.json");
    assert!(allow.contains(&read("demo-token.jwt")));
    assert!(allow.contains(&common::url_encode_pem(&read("demo-client.pem"))));
    let wrong = read("requests/wrong-certificate.json");
    assert!(wrong.contains(&common::url_encode_pem(&read("demo-other-client.pem"))));
    assert!(read("requests/unbound-token.json").contains(&read("demo-token-unbound.jwt")));
    assert!(!read("requests/no-token.json").contains("authorization"));
    assert!(read("requests/no-certificate.json").contains(r#""certificate": """#));
}

/// Runs `scripts/demo.sh` with the test's certbound binary on free ports: `(exit code, stdout,
/// stderr)`. `busy` is a port to hold while it runs.
fn run_demo(busy: Option<&str>) -> (Option<i32>, String, String) {
    run_demo_with(&[], busy)
}

/// [`run_demo`] with arguments (`--module`, `--proxy nginx`).
fn run_demo_with(args: &[&str], busy: Option<&str>) -> (Option<i32>, String, String) {
    run_demo_ports(args, busy, None)
}

/// [`run_demo_with`], leaving `default` unset (the demo's own default port).
fn run_demo_ports(
    args: &[&str],
    busy: Option<&str>,
    default: Option<&str>,
) -> (Option<i32>, String, String) {
    let port = || common::envoy::free_port().to_string();
    let ports = [
        "LISTEN_PORT",
        "ADMIN_PORT",
        "CERTBOUND_PORT",
        "CERTBOUND_ADMIN_PORT",
        "UPSTREAM_PORT",
        "FORWARD_AUTH_PORT",
    ]
    .map(|name| (name, port()));
    let _held = busy.map(|name| {
        let (_, port) = ports.iter().find(|(n, _)| *n == name).unwrap();
        std::net::TcpListener::bind(format!("127.0.0.1:{port}")).unwrap()
    });
    let output = std::process::Command::new("scripts/demo.sh")
        .args(args)
        .envs(
            ports
                .iter()
                .filter(|(k, _)| Some(*k) != default)
                .map(|(k, v)| (*k, v.as_str())),
        )
        .env("CERTBOUND_BIN", env!("CARGO_BIN_EXE_certbound"))
        .env("CERTBOUND_MODULE_DIR", common::envoy::module_dir())
        .output()
        .unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// The getting-started demo: every part starts, the four answers are the documented ones, and every
/// decision line is shown (the log is read after certbound flushed it).
#[test]
#[ignore = "needs Envoy 1.40: run scripts/test.sh"]
fn the_demo_shows_every_answer_and_every_decision_line() {
    let (code, out, err) = run_demo(None);
    assert_eq!(code, Some(0), "stdout:\n{out}\nstderr:\n{err}");
    for line in [
        r#"decision="allow" reason="ok""#,
        r#"decision="deny" reason="token_missing""#,
        r#"decision="deny" reason="cnf_missing""#,
        r#"decision="deny" reason="binding_mismatch""#,
    ] {
        assert!(out.contains(line), "missing {line} in:\n{out}");
    }
    // Which step it is on, as it goes (on stderr).
    for step in [
        "s] checking the tools",
        "(CERTBOUND_BIN): no build",
        "s] starting the upstream",
        "s] starting certbound on 127.0.0.1:",
        "s] starting Envoy on https://127.0.0.1:",
        "s] ready: four requests with curl",
    ] {
        assert!(err.contains(step), "missing {step:?} in:\n{err}");
    }
}

/// `--module`: the same four answers from the dynamic module inside Envoy, on the deploy/local
/// keys and certificates, and Envoy's counters of them.
#[test]
#[ignore = "needs Envoy 1.40 and the built module: run scripts/test.sh"]
fn the_module_demo_gives_the_same_answers_inside_envoy() {
    let (code, out, err) = run_demo_with(&["--module"], None);
    assert_eq!(code, Some(0), "stdout:\n{out}\nstderr:\n{err}");
    for line in [
        "checks.decision.allow.reason.ok: 1",
        "checks.decision.deny.reason.token_missing: 1",
        "checks.decision.deny.reason.cnf_missing: 1",
        "checks.decision.deny.reason.binding_mismatch: 1",
    ] {
        assert!(out.contains(line), "missing {line} in:\n{out}");
    }
    assert!(err.contains("(CERTBOUND_MODULE_DIR): no build"), "{err}");
    assert!(!err.contains("starting certbound"), "{err}");
    assert!(
        out.contains(r#""x-certbound-subject": "demo-user""#),
        "{out}"
    );
}

/// `--dpop`: fresh DPoP material, and the four DPoP answers: allowed once, the replay, the
/// downgrade to Bearer and a proof for another URL refused.
#[test]
#[ignore = "needs Envoy 1.40: run scripts/test.sh"]
fn the_dpop_demo_shows_allow_replay_downgrade_and_wrong_url() {
    let (code, out, err) = run_demo_with(&["--dpop"], None);
    assert_eq!(code, Some(0), "stdout:\n{out}\nstderr:\n{err}");
    for line in [
        r#"decision="allow" reason="ok""#,
        r#"decision="deny" reason="dpop_replayed""#,
        r#"decision="deny" reason="dpop_downgrade""#,
        r#"decision="deny" reason="dpop_url_mismatch""#,
    ] {
        assert!(out.contains(line), "missing {line} in:\n{out}");
    }
    assert!(err.contains("s] making fresh DPoP material"), "{err}");
}

/// A busy port is named, with its variable, and the demo exits 1 (it used to print four 503s and
/// exit 0).
#[test]
#[ignore = "needs Envoy 1.40: run scripts/test.sh"]
fn the_demo_fails_with_the_reason_when_a_port_is_busy() {
    let (code, out, err) = run_demo(Some("CERTBOUND_ADMIN_PORT"));
    assert_eq!(code, Some(1), "stdout:\n{out}\nstderr:\n{err}");
    assert!(
        err.contains("(CERTBOUND_ADMIN_PORT) is already in use"),
        "{err}"
    );
    assert!(!out.contains("== 1."), "nothing was started: {out}");
}

/// The README's order of things: the service from the first command holds certbound's default
/// ports, then the demo starts. A busy default is replaced by a free port, and said so; a port
/// the caller chose is never replaced (the test above).
#[test]
#[ignore = "needs Envoy 1.40: run scripts/test.sh"]
fn the_demo_moves_off_a_busy_default_port() {
    let _defaults = DEFAULT_PORTS.lock().unwrap_or_else(|e| e.into_inner());
    // The service's default admin port, held (by this test, or already by someone else).
    let _held = std::net::TcpListener::bind("127.0.0.1:9090");
    let (code, out, err) = run_demo_ports(&[], None, Some("CERTBOUND_ADMIN_PORT"));
    assert_eq!(code, Some(0), "stdout:\n{out}\nstderr:\n{err}");
    assert!(
        err.contains("demo: port 9090 (CERTBOUND_ADMIN_PORT) is in use; using "),
        "{err}"
    );
    assert!(out.contains(r#"decision="allow" reason="ok""#), "{out}");
}

/// `--proxy`: each proxy on its shipped files (deploy/forward-auth/, deploy/envoy/http-service.yaml)
/// in front of certbound's HTTP authorization API gives the seven documented answers, certbound's
/// claim header (not the client's own copy) reaches the upstream, and certbound logs each
/// decision. One test, the proxies in turn: each run takes seconds.
#[test]
#[ignore = "needs NGINX, Traefik, Caddy, HAProxy and Envoy 1.40: run scripts/test.sh"]
fn the_proxy_demos_show_every_answer_behind_each_proxy() {
    let mut failures = Vec::new();
    for proxy in ["nginx", "traefik", "caddy", "haproxy", "envoy-http"] {
        let (code, out, err) = run_demo_with(&["--proxy", proxy], None);
        let mut fail = |what: String| failures.push(format!("{proxy}: {what}"));
        if code != Some(0) {
            fail(format!("exit {code:?}\nstdout:\n{out}\nstderr:\n{err}"));
            continue;
        }
        let statuses: Vec<&str> = out
            .lines()
            .filter_map(|line| line.strip_prefix("HTTP/"))
            .filter_map(|rest| rest.split_whitespace().nth(1))
            .collect();
        if statuses != ["200", "401", "401", "401", "403", "200", "401"] {
            fail(format!("statuses {statuses:?} in:\n{out}"));
        }
        let decisions: Vec<&str> = out
            .lines()
            .filter(|line| line.starts_with("decision="))
            .collect();
        let expected = [
            r#"decision="allow" reason="ok""#,
            r#"decision="deny" reason="token_missing""#,
            r#"decision="deny" reason="cnf_missing""#,
            r#"decision="deny" reason="binding_mismatch""#,
            r#"decision="deny" reason="scope_missing""#,
            r#"decision="allow" reason="ok""#,
            r#"decision="deny" reason="dpop_replayed""#,
        ];
        if decisions != expected {
            fail(format!("decisions {decisions:?} in:\n{out}"));
        }
        // The upstream's echo of the claim header, for the two allows: certbound's value only
        // (a repeated header would show both values), never the client's "mallory".
        let subjects: Vec<String> = out
            .lines()
            .map(|line| line.trim().to_ascii_lowercase())
            .filter(|line| line.starts_with(r#""x-certbound-subject":"#))
            .collect();
        if subjects != [r#""x-certbound-subject": "demo-user","#; 2] {
            fail(format!(
                "claim headers at the upstream {subjects:?} in:\n{out}"
            ));
        }
        for step in [
            "s] checking the tools",
            "(CERTBOUND_BIN): no build",
            "s] making fresh DPoP material",
            &format!("s] starting {proxy} on https://localhost:"),
            &format!("s] ready: seven requests with curl through {proxy}"),
        ] {
            if !err.contains(step) {
                fail(format!("missing {step:?} in:\n{err}"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// Held by the tests that use the documented default ports (8443, 9901, 50051, 9090, 8080).
static DEFAULT_PORTS: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The `sh` code blocks of a book page's section, in order.
fn section_blocks(page: &str, heading: &str) -> Vec<String> {
    let text = std::fs::read_to_string(page).unwrap();
    let start = text
        .find(heading)
        .unwrap_or_else(|| panic!("{page}: no {heading:?}"));
    let section = &text[start + heading.len()..];
    let section = &section[..section.find("\n## ").unwrap_or(section.len())];
    section
        .split("```sh\n")
        .skip(1)
        .map(|rest| rest[..rest.find("```").unwrap()].to_owned())
        .collect()
}

/// A shell command of the page, in its own process group (so that what it starts is stopped with
/// it), from the repository's root.
fn shell(command: &str) -> std::process::Command {
    use std::os::unix::process::CommandExt;
    let mut shell = std::process::Command::new("bash");
    shell
        .args(["-euo", "pipefail", "-c", command])
        .process_group(0);
    shell
}

struct Group(std::process::Child, &'static str, std::path::PathBuf);

impl Group {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.2).unwrap_or_default()
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        let group = format!("-{}", self.0.id());
        let _ = std::process::Command::new("kill")
            .args(["-TERM", "--", &group])
            .status();
        let _ = self.0.wait();
    }
}

fn wait_until(what: &str, group: &Group, url: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let ok = std::process::Command::new("curl")
            .args(["-fs", "-o", "/dev/null", url])
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what} ({}) not ready at {url}:\n{}",
            group.1,
            group.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// A book page's "Run it yourself": its terminals started (each `# N.` part of `terminals`, in
/// its own process group), each ready at its URL, then `commands` run; their stdout.
fn run_terminals(
    terminals: &str,
    ready: &[(&'static str, &str)],
    commands: &str,
    swap: &dyn Fn(&str) -> String,
    work: &std::path::Path,
) -> Result<String, String> {
    // A part starts at its `# N.` comment line, and runs to the next one.
    let mut parts: Vec<String> = Vec::new();
    for line in terminals.lines() {
        let numbered = line
            .strip_prefix("# ")
            .and_then(|rest| rest.split_once(". "))
            .is_some_and(|(n, _)| n.parse::<u8>().is_ok());
        match parts.last_mut() {
            Some(part) if !numbered => {
                part.push_str(line);
                part.push('\n');
            }
            _ => parts.push(format!("{line}\n")),
        }
    }
    assert_eq!(parts.len(), ready.len(), "{parts:?}");
    let mut groups = Vec::new();
    for (part, (name, _)) in parts.iter().zip(ready) {
        let log = work.join(format!("{}.log", groups.len()));
        let file = std::fs::File::create(&log).unwrap();
        let child = shell(&swap(part))
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap();
        groups.push(Group(child, name, log));
    }
    for (group, (name, url)) in groups.iter().zip(ready) {
        wait_until(name, group, url);
    }
    let output = shell(&swap(commands)).output().unwrap();
    let out = String::from_utf8_lossy(&output.stdout).into_owned();
    let logs: String = groups
        .iter()
        .map(|g| format!("\n{}:\n{}", g.1, g.log()))
        .collect();
    if output.status.success() {
        Ok(out)
    } else {
        Err(format!(
            "stdout:\n{out}\nstderr:\n{}{logs}",
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

fn free_documented_ports(ports: &[u16]) {
    for &port in ports {
        assert!(
            std::net::TcpListener::bind(("127.0.0.1", port)).is_ok(),
            "port {port} is in use: the chapter's commands need it (stop the service the \
             README's first command started)"
        );
    }
}

/// The curl block both Envoy chapters share: a 200, a 401 with an `invalid_token` challenge, a
/// bare 401; then `counters` (lines of the decision counters).
fn assert_curl_answers(out: &str) {
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.first(), Some(&"200"), "{out}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("HTTP/") && l.contains(" 401")),
        "{out}"
    );
    assert!(
        lines.iter().any(|l| l
            .to_ascii_lowercase()
            .starts_with("www-authenticate: bearer error=\"invalid_token\"")),
        "{out}"
    );
    assert!(lines.contains(&"401"), "{out}");
}

fn work_dir(name: &str) -> std::path::PathBuf {
    let work = std::env::temp_dir().join(format!("certbound-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&work).unwrap();
    work
}

/// docs/src/integrations/envoy.md, "Run it yourself": the three terminals' commands and the curl
/// block, as written. Two swaps only: the test's certbound binary for `cargo run --release --`
/// (same code, no second build) and a temporary folder for `/tmp/`. The documented ports are
/// used as they are; they must be free.
#[test]
#[ignore = "needs Envoy 1.40: run scripts/test.sh"]
fn the_envoy_chapter_runs_as_written() {
    let _defaults = DEFAULT_PORTS.lock().unwrap_or_else(|e| e.into_inner());
    free_documented_ports(&[8443, 9901, 50051, 9090, 8080]);
    let blocks = section_blocks("docs/src/integrations/envoy.md", "## Run it yourself");
    assert_eq!(blocks.len(), 2, "{blocks:?}");
    let work = work_dir("envoy-chapter");
    // `/tmp/` first: the test's own paths may be under /tmp (a clone there).
    let swap = |command: &str| {
        command
            .replace("/tmp/", &format!("{}/", work.display()))
            .replace(
                "cargo run --release -- ",
                &format!("{} ", env!("CARGO_BIN_EXE_certbound")),
            )
    };
    let ready = [
        ("certbound", "http://127.0.0.1:9090/readyz"),
        ("the upstream", "http://127.0.0.1:8080/"),
        ("Envoy", "http://127.0.0.1:9901/ready"),
    ];
    let out = run_terminals(&blocks[0], &ready, &blocks[1], &swap, &work)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_curl_answers(&out);
    for reason in ["ok", "binding_mismatch", "token_missing"] {
        assert!(
            out.lines().any(|l| l.starts_with("certbound_checks_total")
                && l.contains(&format!("reason=\"{reason}\""))
                && l.ends_with(" 1")),
            "{reason}: {out}"
        );
    }
    let _ = std::fs::remove_dir_all(&work);
}

/// docs/src/integrations/module.md, "Run it yourself": the build and check, the two terminals and
/// the curl block, as written. Swaps: the test's builds for `cargo build --release ...`
/// (`target/release/certbound` and `$PWD/target/release` name them), and a temporary folder for
/// `/tmp/`. The documented ports are used as they are; they must be free.
#[test]
#[ignore = "needs Envoy 1.40: run scripts/test.sh"]
fn the_module_chapter_runs_as_written() {
    let _defaults = DEFAULT_PORTS.lock().unwrap_or_else(|e| e.into_inner());
    free_documented_ports(&[8443, 9901, 8080]);
    let blocks = section_blocks("docs/src/integrations/module.md", "## Run it yourself");
    assert_eq!(blocks.len(), 3, "{blocks:?}");
    let work = work_dir("module-chapter");
    let module_dir = common::envoy::module_dir();
    // `/tmp/` first: the test's own paths may be under /tmp (a clone there).
    let swap = |command: &str| {
        command
            .replace("/tmp/", &format!("{}/", work.display()))
            .replace(
                "cargo build --release -p certbound-envoy -p certbound",
                "true",
            )
            .replace("target/release/certbound", env!("CARGO_BIN_EXE_certbound"))
            .replace("$PWD/target/release", &module_dir.display().to_string())
    };
    let checked = shell(&swap(&blocks[0])).output().unwrap();
    let stdout = String::from_utf8_lossy(&checked.stdout);
    assert!(
        checked.status.success() && stdout.contains("deploy/envoy/module.yaml: ok"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&checked.stderr)
    );
    let ready = [
        ("the upstream", "http://127.0.0.1:8080/"),
        ("Envoy", "http://127.0.0.1:9901/ready"),
    ];
    let out = run_terminals(&blocks[1], &ready, &blocks[2], &swap, &work)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_curl_answers(&out);
    for reason in [
        "allow.reason.ok",
        "deny.reason.binding_mismatch",
        "deny.reason.token_missing",
    ] {
        let counter = format!("dynamicmodulescustom.checks.decision.{reason}: 1");
        assert!(out.lines().any(|l| l == counter), "{counter}: {out}");
    }
    let _ = std::fs::remove_dir_all(&work);
}
