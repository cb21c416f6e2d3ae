//! How upstream servers resolve the request target they receive into the path they route on:
//! small models of real behaviours, for the differential test (tests/differential.rs), which
//! checks that every resolution falls under the rule certbound decided with. Their own tests are
//! in that file.
//!
//! - [`Semantics::Rfc3986`]: RFC 3986 strictly: the path ends at `?` or `#`, encodings of
//!   unreserved characters decoded (§6.2.2.2), dot-segments removed (§5.2.4; a `..` above the
//!   root is dropped; empty segments are segments, so `/a//../b` is `/a/b`); `;` is data.
//! - [`Semantics::JavaParameters`]: Tomcat (and Spring on it): `;` path parameters cut off every
//!   segment first, then percent-decoding (an encoded `/` or `\`, a raw `\`, `#` or a bad
//!   encoding: 400), runs of `/` merged, dot-segments resolved (above the root: 400).
//! - [`Semantics::MergeSlashes`]: a server that merges runs of `/` before resolving dot-segments
//!   (NGINX's `merge_slashes`, many routers); unreserved encodings decoded; `#` is data.
//! - [`Semantics::DecodeSlashes`]: a server that decodes every encoding, `%2F` and `%2E` included,
//!   before resolving dot-segments (`AllowEncodedSlashes On`, routers matching on the decoded
//!   path); `#` is data.
#![allow(dead_code)]

/// One upstream's way of reading a request target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Semantics {
    Rfc3986,
    JavaParameters,
    MergeSlashes,
    DecodeSlashes,
    /// RFC 3986, then routed without regard to ASCII case (Express, ASP.NET Core by default):
    /// as the rules are lower-case, the path lower-cased.
    IgnoreCase,
}

pub const ALL: [Semantics; 5] = [
    Semantics::Rfc3986,
    Semantics::JavaParameters,
    Semantics::MergeSlashes,
    Semantics::DecodeSlashes,
    Semantics::IgnoreCase,
];

/// Which percent-encodings a server decodes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Decode {
    Unreserved,
    AllButSlashes,
    All,
}

impl Semantics {
    pub fn name(self) -> &'static str {
        match self {
            Semantics::Rfc3986 => "rfc3986",
            Semantics::JavaParameters => "tomcat-spring",
            Semantics::MergeSlashes => "merge-slashes",
            Semantics::DecodeSlashes => "decode-%2F",
            Semantics::IgnoreCase => "ignore-case",
        }
    }

    /// The path this server routes a request target to, or `None` when it refuses the target
    /// (a 400: nothing is served).
    pub fn resolve(self, target: &str) -> Option<String> {
        let end = match self {
            Semantics::Rfc3986 => target.find(['?', '#']),
            _ => target.find('?'),
        };
        let path = &target[..end.unwrap_or(target.len())];
        if !path.starts_with('/') {
            return None;
        }
        match self {
            Semantics::Rfc3986 => Some(remove_dot_segments(&decode(path, Decode::Unreserved)?)),
            Semantics::MergeSlashes => Some(remove_dot_segments(&merge_slashes(&decode(
                path,
                Decode::Unreserved,
            )?))),
            Semantics::DecodeSlashes => Some(remove_dot_segments(&decode(path, Decode::All)?)),
            Semantics::IgnoreCase => {
                Some(remove_dot_segments(&decode(path, Decode::Unreserved)?).to_ascii_lowercase())
            }
            Semantics::JavaParameters => {
                if path.contains(['\\', '#']) {
                    return None;
                }
                let stripped: Vec<&str> = path
                    .split('/')
                    .map(|segment| segment.split(';').next().unwrap_or_default())
                    .collect();
                let decoded = decode(&stripped.join("/"), Decode::AllButSlashes)?;
                if decoded.contains('\\') {
                    return None;
                }
                resolve_strictly(&merge_slashes(&decoded))
            }
        }
    }
}

/// Percent-decodes what `which` says; `None` for a bad encoding where the server refuses one
/// (the others keep it as data) or an encoded separator a Java server refuses.
fn decode(path: &str, which: Decode) -> Option<String> {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let pair = (bytes[i] == b'%')
            .then(|| bytes.get(i + 1..i + 3))
            .flatten()
            .and_then(|hex| u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok());
        match pair {
            None if bytes[i] == b'%' && which == Decode::AllButSlashes => return None,
            None => {
                out.push(bytes[i]);
                i += 1;
            }
            Some(byte) => {
                let unreserved = byte.is_ascii_alphanumeric() || b"-._~".contains(&byte);
                let slash = byte == b'/' || byte == b'\\';
                match which {
                    Decode::AllButSlashes if slash => return None,
                    Decode::Unreserved if !unreserved => out.extend_from_slice(&bytes[i..i + 3]),
                    _ => out.push(byte),
                }
                i += 3;
            }
        }
    }
    Some(String::from_utf8_lossy(&out).into_owned())
}

fn merge_slashes(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for c in path.chars() {
        if !(c == '/' && out.ends_with('/')) {
            out.push(c);
        }
    }
    out
}

/// RFC 3986 §5.2.4 on an absolute path: a `..` above the root is dropped.
fn remove_dot_segments(path: &str) -> String {
    dot_segments(path, false).unwrap_or_default()
}

/// Dot-segments resolved, `None` for a `..` above the root (Tomcat's 400).
fn resolve_strictly(path: &str) -> Option<String> {
    dot_segments(path, true)
}

fn dot_segments(path: &str, strict: bool) -> Option<String> {
    let mut segments: Vec<&str> = Vec::new();
    let mut trailing_slash = false;
    for segment in path[1..].split('/') {
        trailing_slash = matches!(segment, "." | "..");
        match segment {
            "." => {}
            ".." => {
                if segments.pop().is_none() && strict {
                    return None;
                }
            }
            _ => segments.push(segment),
        }
    }
    let mut out = String::from("/");
    out.push_str(&segments.join("/"));
    if trailing_slash && !out.ends_with('/') {
        out.push('/');
    }
    Some(out)
}
