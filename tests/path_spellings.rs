//! The path-spelling table through real Envoy 1.40, for both shapes (the dynamic module and the
//! ext_authz service), with the shipped configs' edge path settings (`normalize_path`,
//! `merge_slashes`, `path_with_escaped_slashes_action: REJECT_REQUEST`) and without them (as
//! Envoy runs when an operator leaves them out). No spelling an upstream resolves to `/admin/x`
//! reaches it without the `/admin` rule (scope `admin`): refused without a token and with a
//! token lacking the scope; spelled canonically, passed with a token that has it. Without Envoy's
//! normalisation, certbound sees the raw spelling and refuses every non-canonical one (400): the
//! route Envoy chose for it, and so the route's own requirements, cannot be trusted. Spellings
//! that cannot be resolved the same way everywhere never reach the upstream. The recording
//! upstream says what got through.
//!
//! Ignored by a plain `cargo test` (they need Envoy and the built module); `scripts/test.sh`
//! runs them with `--include-ignored`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::ClientCert;
use common::paths::{
    CANONICAL_ADMIN_PATHS, PATHS_TO_ADMIN, UNSAFE_PATHS, h2_can_send, is_plain_public,
};
use common::raw::{self, H2Response, Step};
use common::stack::{Stack, unique, without_edge_path_settings};
use serde_json::json;

const POLICY: &str = "policy:\n  rules:\n    - name: public\n      path_prefix: /public/\n      allow_anonymous: true\n    - name: admin\n      path_prefix: /admin\n      scopes: [admin]\n";
/// Only the public rule: the `admin` scope comes from the shipped configs' `/admin` Envoy route
/// (the module's per-route config, the service's `context_extensions`). Envoy picks that route
/// from the path as it sees it, so without its normalisation `//admin/x` takes the `/` route:
/// certbound must refuse the spelling rather than decide without the route's requirement.
const ROUTE_POLICY: &str = "policy:\n  rules:\n    - name: public\n      path_prefix: /public/\n      allow_anonymous: true\n";
const READ_FOR: Duration = Duration::from_secs(6);

/// Who asks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Caller {
    Anonymous,
    /// A valid, bound token with only the `read` scope.
    Reader,
    /// A valid, bound token with the `admin` scope.
    Admin,
}

/// What came back, over either HTTP version.
#[derive(Debug)]
struct Outcome {
    status: Option<u16>,
    from_upstream: bool,
}

async fn send(
    stack: &Stack,
    cert: &ClientCert,
    http2: bool,
    path: &str,
    auth: Option<&str>,
    marker: &str,
) -> Outcome {
    let mut headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", *a)).collect();
    headers.push(("x-case", marker));
    if http2 {
        let mut client = raw::http2(&stack.pki, Some(cert), stack.port).await;
        let (response, _) = client
            .send_request(raw::h2_request("GET", path, &headers), true)
            .unwrap();
        let seen = H2Response::read(response, READ_FOR).await;
        Outcome {
            status: seen.status,
            from_upstream: seen.header("x-upstream") == Some("seen"),
        }
    } else {
        let seen = raw::http1(
            &stack.pki,
            Some(cert),
            stack.port,
            vec![Step::Send(raw::head("GET", path, &headers))],
            READ_FOR,
        )
        .await;
        Outcome {
            status: seen.status,
            from_upstream: seen.header("x-upstream") == Some("seen"),
        }
    }
}

async fn run_table(stack: &Stack) -> Vec<String> {
    let cert = stack.pki.client("paths-client");
    stack.assert_serving(&cert).await;
    let token = |scope: &str| {
        let mut claims = stack.claims(&cert);
        claims["scope"] = json!(scope);
        format!("Bearer {}", stack.signer.sign(&claims))
    };
    let (reader, admin) = (token("read"), token("read admin"));
    let mut failures = Vec::new();
    let mut cases = 0;
    for http2 in [false, true] {
        for (spellings, resolvable) in [(PATHS_TO_ADMIN, true), (UNSAFE_PATHS, false)] {
            for spelling in spellings.iter().copied() {
                if http2 && !h2_can_send(spelling) {
                    continue;
                }
                for caller in [Caller::Anonymous, Caller::Reader, Caller::Admin] {
                    cases += 1;
                    // A query marks the request, so the upstream's record can be found.
                    let marker = format!("case={}", unique());
                    let sep = if spelling.contains('?') { '&' } else { '?' };
                    let path = format!("{spelling}{sep}{marker}");
                    let auth = match caller {
                        Caller::Anonymous => None,
                        Caller::Reader => Some(reader.as_str()),
                        Caller::Admin => Some(admin.as_str()),
                    };
                    let seen = send(stack, &cert, http2, &path, auth, &marker).await;
                    // The marker travels in a header too: a proxy drops a fragment (and the
                    // query after it) before forwarding.
                    let received: Vec<String> = stack
                        .upstream
                        .all()
                        .into_iter()
                        .filter(|r| {
                            r.target.contains(&marker)
                                || r.headers.iter().any(|(k, v)| k == "x-case" && *v == marker)
                        })
                        .map(|r| r.target)
                        .collect();
                    let reached = !received.is_empty();
                    // Envoy's edge settings may rewrite an ambiguous spelling to a public path
                    // (RFC 3986 resolves `/public//../admin/x` to `/public/admin/x`): the upstream
                    // then serves what certbound decided on, which is no bypass.
                    let only_public = reached && received.iter().all(|t| is_plain_public(t));
                    let label = format!(
                        "{} {} {caller:?} {spelling:?}",
                        stack.name,
                        if http2 { "h2" } else { "h1" }
                    );
                    match caller {
                        Caller::Admin
                            if resolvable && CANONICAL_ADMIN_PATHS.contains(&spelling) =>
                        {
                            if !(reached && seen.from_upstream) {
                                failures.push(format!(
                                    "{label}: the admin did not get through: {seen:?}"
                                ));
                            }
                        }
                        // Another spelling passes only once Envoy resolved it to `/admin/x`;
                        // certbound refuses it raw.
                        Caller::Admin if resolvable => {
                            let refused = !reached && seen.status == Some(400);
                            if !(refused || reached && seen.from_upstream) {
                                failures.push(format!(
                                    "{label}: neither passed nor refused with 400: {seen:?}"
                                ));
                            }
                        }
                        // A path that cannot be resolved safely may pass only once Envoy's edge
                        // settings resolved it to `/admin/x`, and then only for the admin.
                        Caller::Admin => {}
                        Caller::Anonymous | Caller::Reader => {
                            let allowed_statuses: &[u16] = if caller == Caller::Anonymous {
                                &[400, 401]
                            } else {
                                &[400, 403]
                            };
                            if only_public {
                                continue;
                            }
                            if reached || seen.from_upstream {
                                failures.push(format!(
                                    "{label}: WRONG ALLOW: the upstream received {received:?}"
                                ));
                            } else if !seen.status.is_some_and(|s| allowed_statuses.contains(&s)) {
                                failures.push(format!(
                                    "{label}: expected one of {allowed_statuses:?}, got {seen:?}"
                                ));
                            }
                        }
                    }
                }
            }
        }
        // Controls: the anonymous route passes spelled canonically; spelled otherwise, it
        // passes once Envoy resolved it, or is refused (400).
        for spelling in [
            "/public/x",
            "//public/x",
            "/public/./x",
            "/%70ublic/x",
            "/admin/../public/x",
        ] {
            cases += 1;
            let seen = send(stack, &cert, http2, spelling, None, "-").await;
            let refused = seen.status == Some(400) && !seen.from_upstream;
            if !seen.from_upstream && (spelling == "/public/x" || !refused) {
                failures.push(format!(
                    "{} anonymous {spelling:?} neither passed nor refused with 400: {seen:?}",
                    stack.name
                ));
            }
        }
    }
    eprintln!("{}: path-spelling table, {cases} requests", stack.name);
    failures
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Envoy 1.40 and the built module: run scripts/test.sh"]
async fn module_path_spellings_with_the_shipped_edge_settings() {
    let stack = Stack::module("module-edge", POLICY, |c| c).await;
    let failures = run_table(&stack).await;
    stack.assert_no_failures(&failures);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Envoy 1.40 and the built module: run scripts/test.sh"]
async fn module_path_spellings_without_envoy_normalising() {
    let stack = Stack::module("module-raw", POLICY, without_edge_path_settings).await;
    let failures = run_table(&stack).await;
    stack.assert_no_failures(&failures);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Envoy 1.40 and the certbound binary: run scripts/test.sh"]
async fn service_path_spellings_with_the_shipped_edge_settings() {
    let stack = Stack::service("service-edge", POLICY, |c| c).await;
    let failures = run_table(&stack).await;
    stack.assert_no_failures(&failures);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Envoy 1.40 and the certbound binary: run scripts/test.sh"]
async fn service_path_spellings_without_envoy_normalising() {
    let stack = Stack::service("service-raw", POLICY, without_edge_path_settings).await;
    let failures = run_table(&stack).await;
    stack.assert_no_failures(&failures);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Envoy 1.40 and the built module: run scripts/test.sh"]
async fn module_per_route_requirements_hold_without_envoy_normalising() {
    let stack = Stack::module("module-route", ROUTE_POLICY, without_edge_path_settings).await;
    let failures = run_table(&stack).await;
    stack.assert_no_failures(&failures);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Envoy 1.40 and the certbound binary: run scripts/test.sh"]
async fn service_context_extensions_hold_without_envoy_normalising() {
    let stack = Stack::service("service-route", ROUTE_POLICY, without_edge_path_settings).await;
    let failures = run_table(&stack).await;
    stack.assert_no_failures(&failures);
}
