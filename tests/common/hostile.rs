//! What a hostile client sends to steer what certbound decides on, or what the upstream
//! believes: its own forwarded headers (every name a proxy or framework reads the original
//! method, path, host or scheme from), alone, duplicated and comma-joined, and other spellings of
//! the headers certbound reads or sets (`_` for `-`: CGI, WSGI, PHP and many frameworks read both
//! as the same variable). Shared by tests/differential.rs and tests/forward_auth_proxies.rs.
#![allow(dead_code)]

/// One hostile header: its name, the value a client wants believed, another value (for the
/// duplicated and joined forms), and the method and target the request really has.
#[derive(Clone, Debug)]
pub struct Forwarded {
    pub name: String,
    pub value: &'static str,
    pub other: &'static str,
    pub method: &'static str,
    pub target: &'static str,
}

impl Forwarded {
    /// The header alone, twice (the hostile value first), and comma-joined.
    pub fn forms(&self) -> [Vec<(String, String)>; 3] {
        let name = &self.name;
        [
            vec![(name.clone(), self.value.to_owned())],
            vec![
                (name.clone(), self.value.to_owned()),
                (name.clone(), self.other.to_owned()),
            ],
            vec![(name.clone(), format!("{}, {}", self.value, self.other))],
        ]
    }
}

/// Every forwarded-header name a client can send, as spelled and with `_` for `-`.
pub fn forwarded_headers() -> Vec<Forwarded> {
    let uri = [
        "X-Forwarded-Uri",
        "X-Original-URI",
        "X-Original-URL",
        "X-Rewrite-URL",
        "X-Forwarded-Path",
        "X-Forwarded-Prefix",
        "X-Envoy-Original-Path",
        "X-Forwarded-Url",
        "X-Request-Uri",
    ];
    let method = [
        "X-Forwarded-Method",
        "X-Original-Method",
        "X-HTTP-Method-Override",
        "X-HTTP-Method",
        "X-Method-Override",
    ];
    let host = ["X-Forwarded-Host", "X-Original-Host", "X-Host", "Host"];
    let proto = ["X-Forwarded-Proto", "X-Forwarded-Scheme", "X-Scheme"];
    let mut out = Vec::new();
    for underscores in [false, true] {
        let header = |name: &str, value, other, method, target| Forwarded {
            name: if underscores {
                name.replace('-', "_")
            } else {
                name.to_owned()
            },
            value,
            other,
            method,
            target,
        };
        for name in uri {
            out.push(header(name, "/public/x", "/admin/x", "GET", "/admin/x"));
        }
        for name in method {
            // Refused on /admin without the admin scope: only an allowed request (/items) shows
            // the method certbound decided on next to the one the upstream got.
            for target in ["/admin/x", "/items"] {
                out.push(header(name, "GET", "DELETE", "DELETE", target));
            }
        }
        for name in host {
            out.push(header(
                name,
                "admin.example.com",
                "localhost",
                "GET",
                "/admin/x",
            ));
        }
        for name in proto {
            out.push(header(name, "http", "https", "GET", "/admin/x"));
        }
        out.push(header(
            "Forwarded",
            "for=192.0.2.1;host=evil.example;proto=http",
            "for=192.0.2.2",
            "GET",
            "/admin/x",
        ));
    }
    out
}

/// Other spellings of the claim headers certbound sets.
pub const CLAIM_ALIASES: &[&str] = &[
    "X_Certbound_Subject",
    "x_certbound_subject",
    "X-CERTBOUND-SUBJECT",
    "x-certbound-subject",
    "X_Certbound_Client_Id",
    "x-certbound-client-id",
];

/// Underscore spellings of the certificate headers certbound reads.
pub const CERTIFICATE_ALIASES: &[&str] = &[
    "X_Forwarded_Tls_Client_Cert",
    "x_ssl_client_cert",
    "X_SSL_Client_Cert",
    "x_forwarded_client_cert",
    "client_cert",
    "x_client_cert",
];

/// Whether `name` is another spelling of `header` (a lower-case, `-` separated name): what a
/// framework that maps `_` to `-` would read as it.
pub fn is_alias(name: &str, header: &str) -> bool {
    name != header && name.to_ascii_lowercase().replace('_', "-") == header
}

/// Headers many frameworks take the method from instead of the request line's (Rails, Laravel,
/// Express's method-override, Spring's HiddenHttpMethodFilter in some setups).
pub const METHOD_OVERRIDES: &[&str] = &[
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

/// The method override a framework reads from this header, if it is one (any spelling).
pub fn method_override<'v>(name: &str, value: &'v str) -> Option<&'v str> {
    let name = name.to_ascii_lowercase().replace('_', "-");
    METHOD_OVERRIDES.contains(&name.as_str()).then_some(value)
}
