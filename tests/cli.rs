//! The `certbound` command as a first-time user meets it: `check-config`, `thumbprint`,
//! `explain` and `serve` on the real binary, with what they print and their exit codes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

const EXIT_USAGE: i32 = 64;

fn certbound(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_certbound"));
    command.args(args).env_remove("CERTBOUND_CONFIG");
    for (name, value) in env {
        command.env(name, value);
    }
    command.output().unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn check_config(dir: &Path, yaml: &str, env: &[(&str, &str)]) -> Output {
    let path = dir.join("certbound.yaml");
    std::fs::write(&path, yaml).unwrap();
    certbound(&["check-config", "--config", path.to_str().unwrap()], env)
}

const LOCAL_JWKS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/local/jwks.json");

fn minimal() -> String {
    format!(
        "issuers:\n  - issuer: https://idp.example.com\n    audiences: [https://api.example.com]\n    jwks_file: {LOCAL_JWKS}\n"
    )
}

#[test]
fn an_empty_configuration_gets_a_sentence() {
    let dir = tempfile::tempdir().unwrap();
    let output = check_config(dir.path(), "# nothing here yet\n", &[]);
    assert_eq!(output.status.code(), Some(EXIT_USAGE));
    let text = stderr(&output);
    assert!(text.contains("the configuration is empty"), "{text}");
    assert!(!text.contains("unit value"), "{text}");
}

#[test]
fn a_typo_is_blamed_on_its_own_line() {
    let dir = tempfile::tempdir().unwrap();
    // The typo is on line 9 of what the user wrote.
    let yaml = format!(
        "{}binding:\n  mode: required\n\nupstream:\n  remove_authorizaton: true\n",
        minimal()
    );
    let output = check_config(dir.path(), &yaml, &[]);
    assert_eq!(output.status.code(), Some(EXIT_USAGE));
    let text = stderr(&output);
    assert!(
        text.contains("line 9: upstream: unknown field `remove_authorizaton`"),
        "{text}"
    );
}

#[test]
fn a_missing_jwks_file_is_refused_naming_the_key_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = minimal().replace(LOCAL_JWKS, "/nonexistent/jwks.json");
    let output = check_config(dir.path(), &yaml, &[]);
    assert_eq!(output.status.code(), Some(EXIT_USAGE));
    let text = stderr(&output);
    assert!(
        text.contains("line 4: issuers[0].jwks_file: cannot read /nonexistent/jwks.json"),
        "{text}"
    );
}

/// The shipped local config names `deploy/local/jwks.json` relative to the repository root. Run
/// from another folder, the error names that path as written and the two folders looked in,
/// not the two joined (`deploy/local/deploy/local/jwks.json`); from the root and with a path
/// relative to the config's folder, it loads.
#[test]
fn a_relative_jwks_file_not_found_names_where_it_was_looked_for() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let shipped = root.join("deploy/local/certbound.yaml");
    let elsewhere = tempfile::tempdir().unwrap();
    let run = |cwd: &Path, config: &Path| {
        Command::new(env!("CARGO_BIN_EXE_certbound"))
            .args(["check-config", "--config"])
            .arg(config)
            .env_remove("CERTBOUND_CONFIG")
            .current_dir(cwd)
            .output()
            .unwrap()
    };
    let output = run(elsewhere.path(), &shipped);
    assert_eq!(output.status.code(), Some(EXIT_USAGE));
    let text = stderr(&output);
    let expected = format!(
        "issuers[0].jwks_file: cannot find deploy/local/jwks.json: a relative path is looked up \
         in the working directory ({}), then in the configuration file's folder ({})",
        elsewhere.path().canonicalize().unwrap().display(),
        root.join("deploy/local").display()
    );
    assert!(text.contains(&expected), "{expected}\nnot in:\n{text}");
    assert!(!text.contains("deploy/local/deploy/local"), "{text}");

    assert_eq!(run(root, &shipped).status.code(), Some(0));
    // Relative to the configuration's folder: found from anywhere.
    let config = elsewhere.path().join("certbound.yaml");
    std::fs::write(
        &config,
        std::fs::read_to_string(&shipped)
            .unwrap()
            .replace("jwks_file: deploy/local/jwks.json", "jwks_file: jwks.json"),
    )
    .unwrap();
    std::fs::copy(
        root.join("deploy/local/jwks.json"),
        elsewhere.path().join("jwks.json"),
    )
    .unwrap();
    let output = run(root, &config);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
}

#[test]
fn environment_variables_are_named_when_bad_and_warned_about_when_unknown() {
    let dir = tempfile::tempdir().unwrap();
    let bad = check_config(
        dir.path(),
        &minimal(),
        &[("CERTBOUND_LEEWAY_SECONDS", "abc")],
    );
    assert_eq!(bad.status.code(), Some(EXIT_USAGE));
    assert!(
        stderr(&bad).contains("CERTBOUND_LEEWAY_SECONDS: \"abc\""),
        "{}",
        stderr(&bad)
    );

    // Kubernetes service links, and a typo: warnings, never a refusal.
    let env = [
        ("CERTBOUND_SERVICE_HOST", "10.96.0.12"),
        ("CERTBOUND_PORT", "tcp://10.96.0.12:50051"),
        ("CERTBOUND_PORT_50051_TCP", "tcp://10.96.0.12:50051"),
        ("CERTBOUND_LEEWAY_SECOND", "5"),
    ];
    let output = check_config(dir.path(), &minimal(), &env);
    let text = stderr(&output);
    assert_eq!(output.status.code(), Some(0), "{text}");
    for (name, _) in env {
        assert!(
            text.lines().any(
                |l| l.starts_with("certbound: warning: environment variable") && l.contains(name)
            ),
            "{name}: {text}"
        );
    }
}

#[test]
fn plain_http_to_another_host_is_refused_and_the_opt_in_warns() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = "issuers:\n  - issuer: http://idp.example.com\n    audiences: [a]\n    jwks_uri: http://idp.example.com/jwks\n";
    let output = check_config(dir.path(), yaml, &[]);
    assert_eq!(output.status.code(), Some(EXIT_USAGE));
    assert!(
        stderr(&output).contains("line 4: issuers[0].jwks_uri"),
        "{}",
        stderr(&output)
    );
    let opted = format!("{yaml}    allow_insecure_http: true\n");
    let output = check_config(dir.path(), &opted, &[]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("warning: issuers[0].jwks_uri"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn thumbprint_of_a_private_key_says_it_is_not_a_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let cert = common::ClientCert::self_signed("c");
    let key = dir.path().join("client.key");
    std::fs::write(&key, &cert.key_pem).unwrap();
    let output = certbound(&["thumbprint", key.to_str().unwrap()], &[]);
    assert_ne!(output.status.code(), Some(0));
    assert!(
        stderr(&output).contains("a PEM file without a CERTIFICATE block (it holds: PRIVATE KEY)"),
        "{}",
        stderr(&output)
    );
    let pem = dir.path().join("client.pem");
    std::fs::write(&pem, &cert.pem).unwrap();
    let output = certbound(&["thumbprint", pem.to_str().unwrap()], &[]);
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), cert.x5t());
}

#[test]
fn explain_documents_its_options_and_exit_codes_and_refuses_unreadable_input() {
    let help = certbound(&["explain", "--help"], &[]);
    let text = String::from_utf8_lossy(&help.stdout);
    for expected in [
        "The request path",
        "The request method",
        "The request's host",
        "Exit 0 when allowed, 1 when denied",
        "64 for a usage error",
    ] {
        assert!(
            text.contains(expected),
            "{expected:?} missing from:\n{text}"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("certbound.yaml");
    std::fs::write(&config, minimal()).unwrap();
    let output = certbound(
        &[
            "explain",
            "--config",
            config.to_str().unwrap(),
            "--token",
            "@/nonexistent/token",
        ],
        &[],
    );
    assert_eq!(
        output.status.code(),
        Some(EXIT_USAGE),
        "{}",
        stderr(&output)
    );
}

/// `serve` says it serves only once every listener is bound: a busy admin port stops it with the
/// reason instead of leaving a half-started process.
#[test]
fn serve_fails_with_the_reason_when_the_admin_port_is_busy() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let admin = busy.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("certbound.yaml");
    std::fs::write(&config, minimal()).unwrap();
    let grpc = common::envoy::free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_certbound"))
        .args(["serve", "--config", config.to_str().unwrap(), "--listen"])
        .arg(format!("127.0.0.1:{grpc}"))
        .env("CERTBOUND_ADMIN_LISTEN", &admin)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "certbound kept running"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let output = child.wait_with_output().unwrap();
    let text = stderr(&output);
    assert!(!status.success(), "{text}");
    assert!(
        text.contains(&format!("binding admin_listen {admin}")),
        "{text}"
    );
    // The message says what moves the port.
    assert!(text.contains("CERTBOUND_ADMIN_LISTEN"), "{text}");
    assert!(
        !text.contains("serving"),
        "said it serves with the admin port busy:\n{text}"
    );
    drop(busy);
}

#[test]
fn check_config_checks_a_module_configuration_as_the_module_would() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("filter_config.yaml");
    let module = |yaml: &str| {
        std::fs::write(&path, yaml).unwrap();
        certbound(
            &[
                "check-config",
                "--module",
                "--config",
                path.to_str().unwrap(),
            ],
            &[],
        )
    };
    let fetched = "issuers:\n  - issuer: https://idp.example.com\n    audiences: [a]\n    jwks_uri: https://idp.example.com/jwks\n";
    let output = module(fetched);
    assert_eq!(output.status.code(), Some(EXIT_USAGE));
    assert!(
        stderr(&output).contains("line 2: issuers[0].cluster: required"),
        "{}",
        stderr(&output)
    );
    let output = module(&format!("{fetched}    cluster: idp\n"));
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let output = module(&format!("{fetched}    cluster: idp\nadmin_listen: ''\n"));
    assert_eq!(output.status.code(), Some(EXIT_USAGE));
    assert!(
        stderr(&output).contains("admin_listen: only the ext_authz service"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn check_config_says_a_missing_file_cannot_be_read() {
    for module in [true, false] {
        let mut args = vec!["check-config", "--config", "/nonexistent/filter.yaml"];
        if module {
            args.insert(1, "--module");
        }
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_certbound"))
            .args(&args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(64));
        assert!(
            stderr.contains("cannot read /nonexistent/filter.yaml"),
            "{args:?}: {stderr}"
        );
        assert!(!stderr.contains("invalid"), "{args:?}: {stderr}");
    }
}
