//! The path route rules are matched on: the one the upstream will resolve, not the raw spelling.
//!
//! `//admin`, `/./admin`, `/%61dmin` and `/public/../admin` all reach an upstream that normalises
//! paths as `/admin`; a rule for `/admin` must see them as `/admin` too. The canonical path is
//! RFC 3986's: percent-encodings of unreserved characters decoded (§6.2.2.2), the others in upper
//! case (§6.2.2.1), runs of `/` merged, dot-segments removed (§5.2.4), the query and fragment
//! dropped. What cannot be resolved the same way by every upstream is refused instead: an
//! encoded `/` or `\` (one upstream splits on it, another does not), a raw `\`, a `..` above the
//! root, a dot-segment with `;` parameters (`/..;/`, resolved as `..` by Java servers), a
//! double-encoded dot or separator, and invalid percent-encoding.
//!
//! Rules match only a path that is already canonical ([`routable`]): a proxy in front may route
//! on one spelling (Envoy without path normalisation picks its route, and so a route's
//! requirements, on the raw path) while the upstream resolves another, so certbound refuses a
//! spelling rather than guess which one the upstream will act on. A segment that is only `;`
//! parameters (`/;/`, `/;x/`) and a `#` are refused too: Tomcat and Spring drop `;` parameters
//! before they resolve `..`, and a `#` cuts the path short in some upstreams but not in others.

use std::borrow::Cow;

/// Why a path cannot be matched safely.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathRejection {
    /// `%` not followed by two hex digits.
    InvalidEncoding,
    /// `%2F` or `%5C` (and `escaped_slashes: reject`), or a raw `\`.
    EscapedSeparator,
    /// `%25` encoding the `%` of an encoded dot or separator (`%252e`, `%252f`).
    DoubleEncoding,
    /// More `..` segments than there are segments above them.
    AboveRoot,
    /// A `..` that removes an empty segment (`/admin//../public`): RFC 3986 resolves it to
    /// `/admin/public`, an upstream that merges slashes first to `/public`.
    AmbiguousDotSegment,
    /// A `.` or `..` segment with `;` parameters.
    DotSegmentParameters,
    /// Not empty, not `*`, and not starting with `/`.
    NotOriginForm,
    /// A `#` anywhere in the target: a fragment is never sent in a request, and upstreams
    /// disagree on where such a path ends.
    Fragment,
    /// A segment whose name before `;` is empty (`/;/`, `/;x/`): Tomcat and Spring drop the
    /// parameters, leaving an empty segment (or hiding a `..` behind it).
    EmptySegmentName,
    /// Resolvable, but not spelled canonically (`//admin`, `/%61dmin`, `/public/../admin`):
    /// which route a proxy chose for it cannot be known, so it is never matched.
    NotCanonical,
}

impl PathRejection {
    /// What is wrong, for `explain` and the logs.
    pub fn describe(self) -> &'static str {
        match self {
            Self::InvalidEncoding => "a % not followed by two hex digits",
            Self::EscapedSeparator => "an encoded / or \\ (%2F, %5C), or a raw \\",
            Self::DoubleEncoding => "a double-encoded dot or separator (%252e, %252f)",
            Self::AboveRoot => "a .. above the root",
            Self::AmbiguousDotSegment => "a .. that removes an empty segment (//..)",
            Self::DotSegmentParameters => "a . or .. segment with ;parameters",
            Self::NotOriginForm => "not a path (it does not start with /)",
            Self::Fragment => "a #",
            Self::EmptySegmentName => "a segment that is only ;parameters (/;/ or /;x/)",
            Self::NotCanonical => {
                "not in canonical form (doubled /, . or .. segments, or %-encoded unreserved characters or lower-case hex)"
            }
        }
    }
}

/// What to do with `%2F` and `%5C` inside a segment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EscapedSlashes {
    /// Refuse the request (the default: upstreams disagree on whether they separate segments).
    #[default]
    Reject,
    /// Keep them encoded, inside their segment (for APIs whose identifiers contain `/`, behind
    /// an upstream that never decodes them before routing).
    Keep,
}

/// The canonical form of a request's `:path` (query and fragment dropped), or why there is none.
/// Borrows when the path is already canonical.
pub fn canonical(
    raw: &str,
    escaped_slashes: EscapedSlashes,
) -> Result<Cow<'_, str>, PathRejection> {
    let path = raw.split(['?', '#']).next().unwrap_or_default();
    if path.is_empty() || path == "*" {
        return Ok(Cow::Borrowed(path));
    }
    if !path.starts_with('/') {
        return Err(PathRejection::NotOriginForm);
    }
    if is_plain(path) {
        return Ok(Cow::Borrowed(path));
    }
    let decoded = decode(path, escaped_slashes)?;
    let mut segments: Vec<&str> = Vec::new();
    // The segments as RFC 3986 keeps them, empty ones included (`//` holds one), by emptiness:
    // where a `..` removes an empty one, an upstream that merges slashes first removes the
    // segment before it instead.
    let mut rfc_empty: Vec<bool> = Vec::new();
    // Whether the result ends with `/`: a trailing empty, `.` or `..` segment leaves one.
    let mut trailing_slash = false;
    for segment in decoded[1..].split('/') {
        trailing_slash = true;
        match segment {
            "" => rfc_empty.push(true),
            "." => {}
            ".." => {
                if rfc_empty.pop() == Some(true) {
                    return Err(PathRejection::AmbiguousDotSegment);
                }
                segments.pop().ok_or(PathRejection::AboveRoot)?;
            }
            _ => {
                let name = segment.split(';').next().unwrap_or_default();
                if name == "." || name == ".." {
                    return Err(PathRejection::DotSegmentParameters);
                }
                segments.push(segment);
                rfc_empty.push(false);
                trailing_slash = false;
            }
        }
    }
    let mut out = String::with_capacity(decoded.len());
    for segment in &segments {
        out.push('/');
        out.push_str(segment);
    }
    if trailing_slash || segments.is_empty() {
        out.push('/');
    }
    Ok(Cow::Owned(out))
}

/// The path route rules match: `raw` without its query, refused unless it is canonical (and
/// free of `#` and of segments that are only `;` parameters). Borrows: no allocation when the
/// path is plain.
pub fn routable(raw: &str, escaped_slashes: EscapedSlashes) -> Result<&str, PathRejection> {
    if raw.contains('#') {
        return Err(PathRejection::Fragment);
    }
    let path = raw.split('?').next().unwrap_or_default();
    if path.contains(';')
        && path
            .split('/')
            .skip(1)
            .any(|segment| segment.starts_with(';'))
    {
        return Err(PathRejection::EmptySegmentName);
    }
    match canonical(path, escaped_slashes)? {
        Cow::Owned(canonical) if canonical != path => Err(PathRejection::NotCanonical),
        _ => Ok(path),
    }
}

/// `path` with every segment's `;` parameters dropped, as Tomcat and Spring read it.
pub fn without_parameters(path: &str) -> String {
    path.split('/')
        .map(|segment| segment.split(';').next().unwrap_or_default())
        .collect::<Vec<_>>()
        .join("/")
}

/// A path with nothing to decode, merge or resolve (the common case: no allocation).
fn is_plain(path: &str) -> bool {
    let bytes = path.as_bytes();
    !bytes.iter().any(|&b| b == b'%' || b == b'\\')
        && !bytes
            .windows(2)
            .any(|pair| pair[0] == b'/' && (pair[1] == b'/' || pair[1] == b'.'))
}

/// Percent-decodes unreserved characters, upper-cases the other encodings, and refuses what
/// cannot be resolved safely. Raw `/` stay the only separators.
fn decode(path: &str, escaped_slashes: EscapedSlashes) -> Result<String, PathRejection> {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => return Err(PathRejection::EscapedSeparator),
            b'%' => {
                let byte = percent_decoded(bytes, i).ok_or(PathRejection::InvalidEncoding)?;
                if is_unreserved(byte) {
                    out.push(char::from(byte));
                } else if byte == b'/' || byte == b'\\' {
                    if escaped_slashes == EscapedSlashes::Reject {
                        return Err(PathRejection::EscapedSeparator);
                    }
                    push_encoded(&mut out, byte);
                } else {
                    push_encoded(&mut out, byte);
                }
                i += 3;
            }
            _ => {
                // Whole UTF-8 sequences: `path` is a str and only ASCII is ever split off.
                let len = utf8_len(bytes[i]);
                out.push_str(&path[i..i + len]);
                i += len;
            }
        }
    }
    // On the decoded text, so that `%252%652` (whose `%65` decodes to the `e` of `%2e`) is
    // caught as well as `%252e`: an upstream that decodes twice would see a dot or separator.
    let decoded = out.as_bytes();
    let double = (0..decoded.len()).any(|at| {
        decoded[at..].starts_with(b"%25")
            && hex_pair(decoded, at + 3).is_some_and(|inner| matches!(inner, b'.' | b'/' | b'\\'))
    });
    if double {
        return Err(PathRejection::DoubleEncoding);
    }
    Ok(out)
}

/// The byte `%XY` at `at` encodes: exactly two hex digits (no sign, no single digit).
pub fn percent_decoded(bytes: &[u8], at: usize) -> Option<u8> {
    if bytes.get(at) != Some(&b'%') {
        return None;
    }
    hex_pair(bytes, at + 1)
}

/// The byte two hex digits at `at` spell.
fn hex_pair(bytes: &[u8], at: usize) -> Option<u8> {
    let high = hex_value(*bytes.get(at)?)?;
    let low = hex_value(*bytes.get(at + 1)?)?;
    Some(high << 4 | low)
}

fn hex_value(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        b'A'..=b'F' => Some(digit - b'A' + 10),
        _ => None,
    }
}

/// RFC 3986 §2.3.
pub fn is_unreserved(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~')
}

/// Appends `%XY` with upper-case hex digits (RFC 3986 §6.2.2.1).
pub fn push_encoded(out: &mut String, byte: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.push('%');
    out.push(char::from(HEX[usize::from(byte >> 4)]));
    out.push(char::from(HEX[usize::from(byte & 0x0f)]));
}

fn utf8_len(first: u8) -> usize {
    match first {
        0xf0..=0xff => 4,
        0xe0..=0xef => 3,
        0xc0..=0xdf => 2,
        _ => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canon(raw: &str) -> Result<String, PathRejection> {
        canonical(raw, EscapedSlashes::Reject).map(Cow::into_owned)
    }

    #[test]
    fn spellings_of_one_path_have_one_canonical_form() {
        for raw in [
            "/admin/x",
            "//admin/x",
            "/admin//x",
            "///admin///x",
            "/./admin/x",
            "/admin/./x",
            "//admin/./x",
            "/admin//y/../x",
            "/%61dmin/x",
            "/%61%64%6D%69%6E/%78",
            "/admin/../admin/x",
            "/admin/y/../x",
            "/public/../admin/x",
            "/public/%2e%2e/admin/x",
            "/public/%2E%2E/admin/x",
            "/public/.%2e/admin/x",
            "/%2e/admin/x",
            "/admin/x?q=/../y",
            "/admin/x#frag",
        ] {
            assert_eq!(canon(raw).as_deref(), Ok("/admin/x"), "{raw}");
        }
    }

    #[test]
    fn plain_paths_are_borrowed() {
        for raw in [
            "/",
            "/admin",
            "/a/b.c/d",
            "/x?y=1",
            "",
            "*",
            "/.well-known/x",
        ] {
            let result = canonical(raw, EscapedSlashes::Reject).unwrap();
            if raw.contains("/.") {
                assert_eq!(result, "/.well-known/x");
            } else {
                assert!(matches!(result, Cow::Borrowed(_)), "{raw}");
            }
        }
    }

    #[test]
    fn trailing_slashes_and_the_root() {
        assert_eq!(canon("/admin/").as_deref(), Ok("/admin/"));
        assert_eq!(canon("/admin/.").as_deref(), Ok("/admin/"));
        assert_eq!(canon("/admin/x/..").as_deref(), Ok("/admin/"));
        assert_eq!(canon("/admin/..").as_deref(), Ok("/"));
        assert_eq!(canon("//").as_deref(), Ok("/"));
        assert_eq!(canon("/.").as_deref(), Ok("/"));
        assert_eq!(canon("/a/b/../../").as_deref(), Ok("/"));
    }

    #[test]
    fn other_encodings_stay_encoded_in_upper_case() {
        assert_eq!(canon("/a%20b/%3a").as_deref(), Ok("/a%20b/%3A"));
        assert_eq!(canon("/%25").as_deref(), Ok("/%25"));
        assert_eq!(canon("/%2541").as_deref(), Ok("/%2541"));
        assert_eq!(canon("/caf\u{e9}/%7E").as_deref(), Ok("/caf\u{e9}/~"));
    }

    #[test]
    fn what_cannot_be_resolved_safely_is_refused() {
        use PathRejection::*;
        for (raw, why) in [
            ("/public/..%2fadmin/x", EscapedSeparator),
            ("/public/..%2Fadmin", EscapedSeparator),
            ("/public%2f..%2f..%2fadmin", EscapedSeparator),
            ("/public/..%5cadmin", EscapedSeparator),
            ("/public\\..\\admin", EscapedSeparator),
            ("/..", AboveRoot),
            ("/../admin", AboveRoot),
            ("/a/../../admin", AboveRoot),
            ("/%2e%2e/admin", AboveRoot),
            ("/public//../admin", AmbiguousDotSegment),
            ("/admin//../public/x", AmbiguousDotSegment),
            ("/a//b/../../c", AmbiguousDotSegment),
            ("//..", AmbiguousDotSegment),
            ("/public/..;/admin", DotSegmentParameters),
            ("/public/.;x/admin", DotSegmentParameters),
            ("/public/%2e%2e;/admin", DotSegmentParameters),
            ("/public/%252e%252e/admin", DoubleEncoding),
            ("/public/..%252fadmin", DoubleEncoding),
            ("/a%252%652", DoubleEncoding),
            ("/a%25%32%65", DoubleEncoding),
            ("/a%25%35c", DoubleEncoding),
            ("/%", InvalidEncoding),
            ("/%4", InvalidEncoding),
            ("/%zz", InvalidEncoding),
            ("/%+F", InvalidEncoding),
            ("/%-1", InvalidEncoding),
            ("admin", NotOriginForm),
            ("http://h/admin", NotOriginForm),
        ] {
            assert_eq!(canon(raw), Err(why), "{raw}");
        }
    }

    #[test]
    fn kept_escaped_slashes_stay_inside_their_segment() {
        let keep = |raw| canonical(raw, EscapedSlashes::Keep).map(Cow::into_owned);
        assert_eq!(keep("/repos/a%2fb/x").as_deref(), Ok("/repos/a%2Fb/x"));
        assert_eq!(
            keep("/public/..%2fadmin").as_deref(),
            Ok("/public/..%2Fadmin")
        );
        assert_eq!(keep("/a\\b"), Err(PathRejection::EscapedSeparator));
    }

    #[test]
    fn only_canonical_paths_are_routable() {
        let route = |raw| routable(raw, EscapedSlashes::Reject);
        for raw in [
            "/admin/x",
            "/admin/x?q=/../y&r=//",
            "/",
            "",
            "*",
            "/a%20b/%3A",
            "/caf\u{e9}",
            "/.well-known/x",
            "/admin;jsessionid=1/x",
            "/items/7;v=2",
        ] {
            assert_eq!(route(raw), Ok(raw.split('?').next().unwrap()), "{raw}");
        }
        use PathRejection::*;
        for (raw, why) in [
            ("//admin/x", NotCanonical),
            ("/admin//x", NotCanonical),
            ("/./admin/x", NotCanonical),
            ("/admin/.", NotCanonical),
            ("/public/../admin/x", NotCanonical),
            ("/%61dmin/x", NotCanonical),
            ("/a%3ab", NotCanonical),
            ("/public/;/../admin/x", EmptySegmentName),
            ("/;/admin/x", EmptySegmentName),
            ("/;x/admin/x", EmptySegmentName),
            ("/admin/;", EmptySegmentName),
            ("/public/#/../../admin/x", Fragment),
            ("/admin/x#frag", Fragment),
            ("/x?a=#b", Fragment),
            ("/public/..;/admin", DotSegmentParameters),
            ("/public/..%2fadmin", EscapedSeparator),
        ] {
            assert_eq!(route(raw), Err(why), "{raw}");
        }
        // Kept escaped slashes must be spelled as canonical form keeps them: upper-case hex.
        let keep = |raw| routable(raw, EscapedSlashes::Keep);
        assert_eq!(keep("/repos/a%2Fb"), Ok("/repos/a%2Fb"));
        assert_eq!(keep("/repos/a%2fb"), Err(NotCanonical));
    }

    #[test]
    fn parameters_are_dropped_segment_by_segment() {
        assert_eq!(without_parameters("/admin;x=1/y;z"), "/admin/y");
        assert_eq!(without_parameters("/a/b"), "/a/b");
        assert_eq!(without_parameters("/a;"), "/a");
    }

    #[test]
    fn percent_decoding_needs_exactly_two_hex_digits() {
        assert_eq!(percent_decoded(b"%41", 0), Some(b'A'));
        assert_eq!(percent_decoded(b"%+F", 0), None);
        assert_eq!(percent_decoded(b"%4", 0), None);
        assert_eq!(percent_decoded(b"x%4g", 1), None);
    }
}
