//! The MCP example (`deploy/mcp/`) run for real, in each shape: its authorization server
//! (panva's oidc-provider), its MCP server (the official TypeScript SDK's) and certbound in front
//! of it, behind Envoy with the ext_authz service, behind Envoy with the dynamic module, and
//! behind NGINX with the HTTP authorization API; each with certificate-bound and with DPoP-bound
//! tokens, and once more where the resource requires DPoP (`certbound-dpop.yaml`). The client is
//! the SDK's own (`deploy/mcp/client.mjs`): it starts with the MCP server's URL only, and the test
//! checks what it did, request by request: the 401, the RFC 9728 metadata its `resource_metadata`
//! names, the authorization server found there, a token for the resource (RFC 8707) bound to its
//! certificate or DPoP key, the tools listed and called, and the 403 `insufficient_scope` step-up
//! to the admin endpoint; then the token, replayed without its key, is refused. Every challenge
//! certbound sent is parsed by the strict RFC 9110 parser (`common::challenge`) and compared with
//! what oauth4webapi, an independent OAuth client library, read from it; the metadata document is
//! checked member by member against RFC 9728 §2 and §3.3.
//!
//! The shipped files are used as they are, only the ports and file paths their comments name
//! swapped. Ignored by a plain `cargo test` (they need Envoy, NGINX, node and the npm packages
//! of scripts/install-tools.sh); `scripts/test.sh` runs them with `--include-ignored`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;
use std::time::Duration;

use common::ClientCert;
use common::challenge;
use common::envoy::{
    EnvoyPorts, Pki, Process, free_port, module_dir, spawn, start_certbound, start_envoy,
};
use common::proxies::{point, repo};
use serde_json::{Value, json};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shape {
    /// Envoy and the ext_authz service (`envoy-service.yaml`, `certbound.yaml`).
    Service,
    /// Envoy with the dynamic module (`envoy-module.yaml`).
    Module,
    /// NGINX and the HTTP authorization API (`nginx.conf`, `certbound-nginx.yaml`).
    Nginx,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Binding {
    Certificate,
    Dpop,
}

/// The whole example, up and answering.
struct Example {
    name: String,
    binding: Binding,
    /// `certbound-dpop.yaml`: the resource requires DPoP-bound tokens.
    dpop_required: bool,
    pki: Pki,
    cert: ClientCert,
    /// The resource identifier, the URL the client is given: `https://localhost:PORT/mcp`.
    resource: String,
    issuer: String,
    mcp: Process,
    proxy: Process,
    certbound: Option<Process>,
    authorization_server: Process,
}

fn deploy(name: &str) -> String {
    std::fs::read_to_string(repo("deploy/mcp").join(name)).unwrap()
}

fn node(script: &str) -> Command {
    let modules = repo("deploy/mcp/node_modules/@modelcontextprotocol/sdk");
    assert!(
        modules.exists(),
        "{} missing: run scripts/install-tools.sh (it installs the MCP example's npm packages)",
        modules.display()
    );
    let mut command = Command::new("node");
    command
        .arg(repo("deploy/mcp").join(script))
        .current_dir(repo(""));
    command
}

/// Waits until `process` printed `line` (a node server's `listening ...`).
async fn wait_for(process: &Process, line: &str) {
    for _ in 0..1200 {
        if process.log().contains(line) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "{} never printed {line:?}:\n{}",
        process.name,
        process.log()
    );
}

/// Waits until the module's first key fetch from `issuer` succeeded (Envoy's stats).
async fn wait_for_module_keys(admin: u16, issuer: &str, envoy: &Process) {
    let url = format!("http://127.0.0.1:{admin}/stats?filter=dynamicmodulescustom");
    let line = format!("dynamicmodulescustom.key_refreshes.issuer.{issuer}.result.success: ");
    for _ in 0..1200 {
        if let Ok(response) = reqwest::get(&url).await
            && let Ok(text) = response.text().await
            && text
                .lines()
                .filter_map(|l| l.strip_prefix(&line))
                .any(|count| count.trim() != "0")
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "the module never loaded the keys of {issuer}:\n{}",
        envoy.log()
    );
}

impl Example {
    async fn start(shape: Shape, binding: Binding, dpop_required: bool) -> Self {
        let required = if dpop_required { "-dpop-required" } else { "" };
        let name = format!("mcp-{shape:?}-{binding:?}{required}");
        let pki = Pki::new(&name);
        let dir = pki.dir.path().to_owned();
        let at = |file: &str| pki.path(file).display().to_string();
        let cert = pki.client("mcp-client");
        pki.write("client", &cert);
        pki.write("other", &pki.client("another-client"));
        let (as_port, mcp_port, port, admin) = (free_port(), free_port(), free_port(), free_port());
        let issuer = format!("https://localhost:{as_port}");
        let resource = format!("https://localhost:{port}/mcp");

        let mut command = node("authorization-server.mjs");
        command
            .args(["--listen", &format!("127.0.0.1:{as_port}")])
            .args(["--issuer", &issuer, "--resource", &resource])
            .args(["--cert", &at("server.crt"), "--key", &at("server.key")])
            .args(["--client-cert", &at("client.crt")]);
        let authorization_server = spawn("authorization-server", command, &dir);
        let mut command = node("server.mjs");
        command.args(["--listen", &format!("127.0.0.1:{mcp_port}")]);
        let mcp = spawn("mcp-server", command, &dir);
        wait_for(&authorization_server, "listening").await;
        wait_for(&mcp, "listening").await;

        // certbound's settings as shipped, pointed at this run's authorization server and port.
        let settings = |text: &str, more: &[(&str, String)]| {
            let mut required = vec![
                ("https://localhost:9443", issuer.clone()),
                // The resource's identifier, and (NGINX) DPoP's public_base_url.
                (
                    "https://localhost:8443",
                    format!("https://localhost:{port}"),
                ),
            ];
            required.extend(more.iter().cloned());
            point(text, &required, &[])
        };
        let tls = [
            ("deploy/local/demo-server.pem", at("server.crt")),
            ("deploy/local/demo-server.key", at("server.key")),
        ];
        let envoy_ports = [
            ("port_value: 8443", format!("port_value: {port}")),
            ("port_value: 9901", format!("port_value: {admin}")),
            ("port_value: 8080", format!("port_value: {mcp_port}")),
        ];
        let ports = EnvoyPorts {
            listener: port,
            admin,
            ..Default::default()
        };
        let (proxy, certbound) = match shape {
            Shape::Service => {
                let file = match dpop_required {
                    false => "certbound.yaml",
                    true => "certbound-dpop.yaml",
                };
                let yaml = settings(&deploy(file), &[("deploy/local/demo-ca.pem", at("ca.crt"))]);
                let (certbound, addr) = start_certbound(&yaml, &dir).await;
                let mut swaps = envoy_ports.to_vec();
                swaps.extend(tls.iter().cloned());
                swaps.push(("port_value: 50051", format!("port_value: {}", addr.port())));
                let config = point(&deploy("envoy-service.yaml"), &swaps, &[]);
                (start_envoy(&config, &ports, &dir).await, Some(certbound))
            }
            Shape::Module => {
                assert!(!dpop_required, "the DPoP-only setup is the service's");
                assert!(module_dir().join("libcertbound_envoy.so").exists());
                let mut swaps = envoy_ports.to_vec();
                swaps.extend(tls.iter().cloned());
                swaps.push(("port_value: 9443", format!("port_value: {as_port}")));
                swaps.push(("deploy/local/demo-ca.pem", at("ca.crt")));
                let config = settings(&deploy("envoy-module.yaml"), &swaps);
                let envoy = start_envoy(&config, &ports, &dir).await;
                // The module fetches the keys after Envoy is up: wait for them, or the client's
                // first call could meet a 503 keys_unavailable.
                wait_for_module_keys(admin, &issuer, &envoy).await;
                (envoy, None)
            }
            Shape::Nginx => {
                assert!(!dpop_required, "the DPoP-only setup is the service's");
                let forward_auth = format!("127.0.0.1:{}", free_port());
                let yaml = settings(
                    &deploy("certbound-nginx.yaml"),
                    &[
                        ("deploy/local/demo-ca.pem", at("ca.crt")),
                        ("127.0.0.1:9292", forward_auth.clone()),
                    ],
                );
                let (certbound, _) = start_certbound(&yaml, &dir).await;
                let config = dir.join("nginx.conf");
                let text = point(
                    &deploy("nginx.conf"),
                    &[
                        ("127.0.0.1:8443", format!("127.0.0.1:{port}")),
                        ("127.0.0.1:9292", forward_auth),
                        ("127.0.0.1:8080", format!("127.0.0.1:{mcp_port}")),
                        ("../local/demo-server.pem", at("server.crt")),
                        ("../local/demo-server.key", at("server.key")),
                    ],
                    &[],
                );
                std::fs::write(&config, text).unwrap();
                let mut command = Command::new("nginx");
                command
                    .arg("-p")
                    .arg(&dir)
                    .args(["-e", "stderr", "-c"])
                    .arg(&config)
                    .args(["-g", "daemon off;"])
                    .current_dir(&dir);
                (spawn("nginx", command, &dir), Some(certbound))
            }
        };
        let example = Self {
            name,
            binding,
            dpop_required,
            pki,
            cert,
            resource,
            issuer,
            mcp,
            proxy,
            certbound,
            authorization_server,
        };
        example.wait_ready(port).await;
        example
    }

    fn metadata_url(&self) -> String {
        // RFC 9728 §3.1: the well-known path inserted between the host and the resource's path.
        self.resource
            .replacen("/mcp", "/.well-known/oauth-protected-resource/mcp", 1)
    }

    /// Waits until the proxy serves the metadata (certbound up, its keys loaded, the proxy's
    /// routes in place).
    async fn wait_ready(&self, port: u16) {
        let client = common::envoy::https_client(&self.pki, None, common::envoy::Http::One);
        let url = format!("https://127.0.0.1:{port}/.well-known/oauth-protected-resource/mcp");
        for _ in 0..600 {
            if let Ok(response) = client.get(&url).send().await
                && response.status() == 200
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "{}: the metadata was never served:\n{}",
            self.name,
            self.logs()
        );
    }

    fn logs(&self) -> String {
        let mut out = String::new();
        for process in [
            Some(&self.authorization_server),
            self.certbound.as_ref(),
            Some(&self.proxy),
            Some(&self.mcp),
        ]
        .into_iter()
        .flatten()
        {
            out += &format!("--- {}\n{}\n", process.name, process.log());
        }
        out
    }

    /// Runs the SDK client (`deploy/mcp/client.mjs`) with the MCP server's URL: its report.
    async fn run_client(&self) -> Value {
        let at = |file: &str| self.pki.path(file).display().to_string();
        let mut command = node("client.mjs");
        command
            .args(["--cert", &at("client.crt"), "--key", &at("client.key")])
            .args(["--ca", &at("ca.crt")])
            .args([
                "--other-cert",
                &at("other.crt"),
                "--other-key",
                &at("other.key"),
            ]);
        if self.binding == Binding::Dpop {
            command.arg("--dpop");
        }
        command.arg(&self.resource);
        // Output to files, the exit polled: a hung client is killed after two minutes.
        let out = self.pki.path("client.out");
        let err = self.pki.path("client.err");
        command
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&err).unwrap());
        let mut child = command.spawn().expect("node");
        let mut status = None;
        for _ in 0..2400 {
            status = child.try_wait().unwrap();
            if status.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let Some(status) = status else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{}: the client hung:\n{}", self.name, self.logs());
        };
        let stdout = std::fs::read_to_string(&out).unwrap();
        let stderr = std::fs::read_to_string(&err).unwrap();
        let report: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
            panic!(
                "{}: the client's report ({e}):\n{stdout}\n{}\n{}",
                self.name,
                stderr,
                self.logs()
            )
        });
        assert!(
            status.success() && report.get("error").is_none(),
            "{}: the client failed: {}\n{}",
            self.name,
            serde_json::to_string_pretty(&report).unwrap(),
            self.logs()
        );
        report
    }
}

/// The RFC 9728 §2 members: a document with anything else is not what certbound documents.
const METADATA_MEMBERS: [&str; 15] = [
    "resource",
    "authorization_servers",
    "jwks_uri",
    "scopes_supported",
    "bearer_methods_supported",
    "resource_signing_alg_values_supported",
    "resource_name",
    "resource_documentation",
    "resource_policy_uri",
    "resource_tos_uri",
    "tls_client_certificate_bound_access_tokens",
    "authorization_details_types_supported",
    "dpop_signing_alg_values_supported",
    "dpop_bound_access_tokens_required",
    "signed_metadata",
];

/// The metadata document the client read, member by member (RFC 9728 §2, §3.2, §3.3).
fn check_metadata(example: &Example, report: &Value) {
    let name = &example.name;
    let fetched = &report["metadata"][example.metadata_url()];
    assert_eq!(fetched["content_type"], "application/json", "{name}");
    let document = fetched["document"].as_object().expect("a JSON object");
    for (member, value) in document {
        assert!(
            METADATA_MEMBERS.contains(&member.as_str()),
            "{name}: {member} is not an RFC 9728 member"
        );
        match member.as_str() {
            "tls_client_certificate_bound_access_tokens" | "dpop_bound_access_tokens_required" => {
                assert!(value.is_boolean(), "{name}: {member}")
            }
            "resource" | "resource_name" => assert!(value.is_string(), "{name}: {member}"),
            _ => assert!(
                value
                    .as_array()
                    .is_some_and(|a| !a.is_empty() && a.iter().all(Value::is_string)),
                "{name}: {member} must be a non-empty array of strings"
            ),
        }
    }
    // §3.3: byte for byte the identifier the client used.
    assert_eq!(document["resource"], example.resource.as_str(), "{name}");
    assert_eq!(document["authorization_servers"], json!([example.issuer]));
    assert_eq!(document["scopes_supported"], json!(["mcp:tools"]));
    assert_eq!(document["bearer_methods_supported"], json!(["header"]));
    assert_eq!(document["resource_name"], "certbound MCP example");
    // What is enforced: certificate binding (binding.mode required, a certificate source), DPoP
    // with ES256 proofs, and DPoP required only in certbound-dpop.yaml (where a certificate-bound
    // token is refused, so the document does not offer that binding).
    assert_eq!(
        document["tls_client_certificate_bound_access_tokens"], !example.dpop_required,
        "{name}"
    );
    assert_eq!(
        document["dpop_signing_alg_values_supported"],
        json!(["ES256"])
    );
    let required = document
        .get("dpop_bound_access_tokens_required")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    assert_eq!(required, example.dpop_required, "{name}");
    // RFC 8414 §3.3: the authorization server's metadata names the issuer the resource named
    // (the SDK itself does not check it).
    let discovery = format!("{}/.well-known/oauth-authorization-server", example.issuer);
    assert_eq!(
        report["metadata"][&discovery]["document"]["issuer"],
        example.issuer.as_str(),
        "{name}"
    );
}

/// Every challenge the client got: strictly well-formed (RFC 9110 §11.6.1), read alike by
/// oauth4webapi, and pointing at the metadata.
fn check_challenges(example: &Example, report: &Value) {
    let name = &example.name;
    let challenges = report["challenges"].as_array().unwrap();
    let statuses: Vec<u64> = challenges
        .iter()
        .map(|c| c["status"].as_u64().unwrap())
        .collect();
    assert!(statuses.contains(&401), "{name}: {statuses:?}");
    assert!(statuses.contains(&403), "{name}: {statuses:?}");
    for sent in challenges {
        let value = sent["value"].as_str().unwrap();
        let parsed = challenge::parse(value)
            .unwrap_or_else(|e| panic!("{name}: {value:?} is not RFC 9110: {e}"));
        let theirs = sent["oauth4webapi"]
            .as_array()
            .unwrap_or_else(|| panic!("{name}: oauth4webapi could not parse {value:?}"));
        assert_eq!(parsed.len(), theirs.len(), "{name}: {value:?}");
        for (ours, theirs) in parsed.iter().zip(theirs) {
            assert_eq!(
                theirs["scheme"],
                ours.scheme.to_ascii_lowercase(),
                "{name}: {value:?}"
            );
            let params: serde_json::Map<String, Value> = ours
                .params
                .iter()
                .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                .collect();
            assert_eq!(
                theirs["parameters"],
                Value::Object(params),
                "{name}: {value:?}"
            );
            assert_eq!(
                ours.param("resource_metadata"),
                Some(example.metadata_url().as_str()),
                "{name}: {value:?}"
            );
        }
        if sent["status"] == 403 {
            let first = &parsed[0];
            assert_eq!(first.param("error"), Some("insufficient_scope"), "{name}");
            assert_eq!(first.param("scope"), Some("mcp:admin"), "{name}");
        }
    }
}

/// The client's requests, in order: what the SDK did on its own.
fn check_requests(example: &Example, report: &Value) {
    let name = &example.name;
    let requests = report["requests"].as_array().unwrap();
    let line = |r: &Value| {
        format!(
            "{} {} {} {}",
            r["method"].as_str().unwrap(),
            r["url"].as_str().unwrap(),
            r["status"],
            r["credentials"].as_str().unwrap_or("-")
        )
    };
    let lines: Vec<String> = requests.iter().map(line).collect();
    let scheme = match example.binding {
        Binding::Certificate => "Bearer",
        Binding::Dpop => "DPoP",
    };
    let token_endpoint = format!("{}/token", example.issuer);
    let discovery = format!("{}/.well-known/oauth-authorization-server", example.issuer);
    // The opening: only the URL, a 401, the metadata its challenge names, the authorization
    // server that names, a token, and the same request again with it.
    let opening = [
        format!("POST {} 401 -", example.resource),
        format!("GET {} 200 -", example.metadata_url()),
        format!("GET {discovery} 200 -"),
        format!("POST {token_endpoint} 200 -"),
        format!("POST {} 200 {scheme}", example.resource),
    ];
    assert_eq!(lines[..5], opening, "{name}: {lines:#?}");
    let token_requests: Vec<&Value> = requests
        .iter()
        .filter(|r| r["url"] == token_endpoint.as_str())
        .collect();
    assert_eq!(token_requests.len(), 2, "{name}: {lines:#?}");
    for request in &token_requests {
        assert_eq!(request["grant_type"], "client_credentials", "{name}");
        assert_eq!(request["client_assertion"], true, "{name}: private_key_jwt");
        assert_eq!(request["resource"], example.resource.as_str(), "{name}");
        assert_eq!(
            request["token_type"],
            match example.binding {
                Binding::Certificate => "Bearer",
                Binding::Dpop => "DPoP",
            },
            "{name}"
        );
    }
    assert_eq!(token_requests[0]["scope"], "mcp:tools", "{name}");
    assert_eq!(token_requests[1]["scope"], "mcp:tools mcp:admin", "{name}");
    // The step-up: the admin endpoint refused the first token with 403, passed the second.
    let admin = format!("{}/admin", example.resource);
    let at_admin: Vec<&String> = lines.iter().filter(|l| l.contains(&admin)).collect();
    assert!(
        at_admin[0].starts_with(&format!("POST {admin} 403 {scheme}")),
        "{name}: {lines:#?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l == &format!("POST {admin} 200 {scheme}")),
        "{name}: {lines:#?}"
    );
    // Every request to the MCP server with credentials carried the bound token's scheme.
    for request in requests {
        if request["url"]
            .as_str()
            .unwrap()
            .starts_with(&example.resource)
        {
            let credentials = request["credentials"].as_str();
            assert!(
                credentials.is_none() || credentials == Some(scheme),
                "{name}: {}",
                line(request)
            );
        }
    }
}

/// The tokens the authorization server issued: for the resource, bound as configured.
fn check_tokens(example: &Example, report: &Value) {
    let name = &example.name;
    let tokens = report["tokens"].as_array().unwrap();
    assert_eq!(tokens.len(), 2, "{name}");
    for token in tokens {
        let claims = &token["claims"];
        assert_eq!(claims["aud"], example.resource.as_str(), "{name}: RFC 8707");
        assert_eq!(claims["iss"], example.issuer.as_str(), "{name}");
        let client_id = match example.binding {
            Binding::Certificate => "mcp-mtls",
            Binding::Dpop => "mcp-dpop",
        };
        assert_eq!(claims["client_id"], client_id, "{name}");
        match example.binding {
            Binding::Certificate => {
                assert_eq!(
                    claims["cnf"],
                    json!({"x5t#S256": example.cert.x5t()}),
                    "{name}"
                )
            }
            Binding::Dpop => {
                let cnf = claims["cnf"].as_object().unwrap();
                assert_eq!(cnf.len(), 1, "{name}: {cnf:?}");
                assert!(cnf["jkt"].as_str().is_some_and(|j| j.len() == 43), "{name}");
            }
        }
    }
    assert_eq!(
        tokens[1]["claims"]["scope"], "mcp:tools mcp:admin",
        "{name}"
    );
}

/// The MCP server answered the tools, and never saw a credential or a metadata request.
fn check_server(example: &Example, report: &Value) {
    let name = &example.name;
    assert_eq!(report["tools"]["/mcp"], json!(["echo", "whoami"]), "{name}");
    assert_eq!(report["tools"]["/mcp/admin"], json!(["audit"]), "{name}");
    assert_eq!(report["calls"]["echo"], "hello through certbound", "{name}");
    let client_id = match example.binding {
        Binding::Certificate => "mcp-mtls",
        Binding::Dpop => "mcp-dpop",
    };
    assert_eq!(
        report["calls"]["whoami"], client_id,
        "{name}: certbound's claim header"
    );
    assert_eq!(report["calls"]["audit"], "2 tool calls", "{name}");
    let log = example.mcp.log();
    let answered: Vec<&str> = log.lines().filter(|l| l.starts_with("POST ")).collect();
    assert!(!answered.is_empty(), "{name}: {log}");
    for line in log.lines().filter(|l| l.contains(" /mcp")) {
        assert!(
            line.ends_with("credentials=none"),
            "{name}: a credential reached the MCP server:\n{log}"
        );
    }
    assert!(
        !log.contains(".well-known"),
        "{name}: the metadata request reached the MCP server:\n{log}"
    );
}

/// The client's token replayed without its key (from another certificate, with none, as Bearer
/// without the DPoP proof, with another key's proof): refused, each for its own reason.
async fn check_replays(example: &Example, report: &Value) {
    let name = &example.name;
    let replays = report["replays"].as_array().unwrap();
    assert_eq!(replays.len(), 2, "{name}");
    for replay in replays {
        assert_eq!(replay["status"], 401, "{name}: {replay}");
        let value = replay["challenge"].as_str().unwrap();
        let parsed = challenge::parse(value).unwrap();
        assert_eq!(parsed[0].param("error"), Some("invalid_token"), "{name}");
    }
    let reasons = match example.binding {
        Binding::Certificate => ["binding_mismatch", "cert_missing"],
        Binding::Dpop => ["dpop_downgrade", "dpop_key_mismatch"],
    };
    // certbound's decision log (the service, the HTTP API) or Envoy's access log (the module).
    for reason in reasons {
        let mut logged = false;
        for _ in 0..100 {
            logged = example.logs().contains(reason);
            if logged {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            logged,
            "{name}: no {reason} in the logs:\n{}",
            example.logs()
        );
    }
}

async fn example_completes(shape: Shape, binding: Binding, dpop_required: bool) {
    let example = Example::start(shape, binding, dpop_required).await;
    let report = example.run_client().await;
    check_requests(&example, &report);
    check_metadata(&example, &report);
    check_challenges(&example, &report);
    check_tokens(&example, &report);
    check_server(&example, &report);
    check_replays(&example, &report).await;
}

#[tokio::test]
#[ignore = "needs Envoy 1.40, node and the MCP example's npm packages: run scripts/test.sh"]
async fn the_sdk_client_completes_the_example_behind_envoy_and_the_ext_authz_service() {
    example_completes(Shape::Service, Binding::Certificate, false).await;
}

#[tokio::test]
#[ignore = "needs Envoy 1.40, node and the MCP example's npm packages: run scripts/test.sh"]
async fn with_dpop_behind_envoy_and_the_ext_authz_service() {
    example_completes(Shape::Service, Binding::Dpop, false).await;
}

#[tokio::test]
#[ignore = "needs Envoy 1.40, the built module, node and the npm packages: run scripts/test.sh"]
async fn the_sdk_client_completes_the_example_behind_envoy_and_the_module() {
    example_completes(Shape::Module, Binding::Certificate, false).await;
}

#[tokio::test]
#[ignore = "needs Envoy 1.40, the built module, node and the npm packages: run scripts/test.sh"]
async fn with_dpop_behind_envoy_and_the_module() {
    example_completes(Shape::Module, Binding::Dpop, false).await;
}

#[tokio::test]
#[ignore = "needs NGINX, node and the MCP example's npm packages: run scripts/test.sh"]
async fn the_sdk_client_completes_the_example_behind_nginx_and_the_http_api() {
    example_completes(Shape::Nginx, Binding::Certificate, false).await;
}

#[tokio::test]
#[ignore = "needs NGINX, node and the MCP example's npm packages: run scripts/test.sh"]
async fn with_dpop_behind_nginx_and_the_http_api() {
    example_completes(Shape::Nginx, Binding::Dpop, false).await;
}

/// The second setup: the resource requires DPoP-bound tokens (`certbound-dpop.yaml`).
#[tokio::test]
#[ignore = "needs Envoy 1.40, node and the MCP example's npm packages: run scripts/test.sh"]
async fn where_the_resource_requires_dpop() {
    example_completes(Shape::Service, Binding::Dpop, true).await;
}
