//! Spellings of paths, for the hostile tables of every shape (in-process and through Envoy).
#![allow(dead_code)]

/// Spellings an upstream that normalises paths resolves to `/admin/x`.
pub const PATHS_TO_ADMIN: &[&str] = &[
    "/admin/x",
    "//admin/x",
    "///admin/x",
    "/admin//x",
    "/./admin/x",
    "/%61dmin/x",
    "/%61%64%6d%69%6e/x",
    "/admin/../admin/x",
    "/public/../admin/x",
    "/public/%2e%2e/admin/x",
    "/public/%2E%2E/admin/x",
    "/public/.%2e/admin/x",
    "/public/./../admin/x",
    "/admin/x?redirect=/public/",
    "/admin",
    "/admin/",
    "/admin/.",
];

/// The canonical spellings among [`PATHS_TO_ADMIN`]: decided by the `/admin` rule. Every other
/// spelling is refused (`path_unsafe`) where certbound sees it raw, and decided as `/admin` only
/// where a proxy in front resolved it first.
pub const CANONICAL_ADMIN_PATHS: &[&str] = &[
    "/admin/x",
    "/admin/x?redirect=/public/",
    "/admin",
    "/admin/",
];

/// Paths upstreams resolve differently, or that climb above the root: always 400.
pub const UNSAFE_PATHS: &[&str] = &[
    "/public/;/../admin/x",
    "/;/admin/x",
    "/;x/admin/x",
    "/public/#/../../admin/x",
    "/admin#/x",
    "/public/..%2fadmin/x",
    "/public/..%2Fadmin/x",
    "/public%2f..%2f..%2fadmin/x",
    "/public/..%5cadmin/x",
    "/public/..\\admin/x",
    "/public//../admin/x",
    "/admin//../public/x",
    "/public/..;/admin/x",
    "/public/%2e%2e;x/admin/x",
    "/public/%252e%252e/admin/x",
    "/public/..%252fadmin/x",
    "/../admin/x",
    "/public/../../admin/x",
    "/%2e%2e/admin/x",
    "/public/%zz/x",
    "/public/%2",
    "/public/%+F",
    "admin/x",
];

/// A target the upstream can only read as a public resource: under `/public/`, nothing to
/// decode or resolve.
pub fn is_plain_public(target: &str) -> bool {
    let path = target.split('?').next().unwrap_or_default();
    path.starts_with("/public/")
        && !path.contains("//")
        && !path.contains("/.")
        && !path.contains(['%', '\\', ';'])
}

/// Whether an HTTP/2 request can carry this `:path` (the `http` crate refuses some bytes, such
/// as a raw `\`, that only HTTP/1.1 can put on the wire).
pub fn h2_can_send(path: &str) -> bool {
    path.starts_with('/')
        && format!("https://localhost{path}")
            .parse::<http::Uri>()
            .is_ok()
}
