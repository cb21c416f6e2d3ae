//! Bearer credentials (RFC 6750 §2.1) from the `authorization` header.

/// What the `authorization` header of a request held.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum Authorization {
    /// No `authorization` header.
    #[default]
    Absent,
    /// Exactly one `authorization` header with this value.
    One(String),
    /// More than one `authorization` header (Envoy joins repeated headers with `,`).
    Multiple,
}

impl Authorization {
    /// The header's value, when there is exactly one.
    pub fn value(&self) -> Option<&str> {
        match self {
            Authorization::One(value) => Some(value),
            _ => None,
        }
    }
}

/// Why no bearer token could be taken from the request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BearerError {
    /// No `authorization` header, or one that holds no bearer credential.
    Missing,
    /// More than one `authorization` header: ambiguous, so denied.
    Duplicate,
}

/// The authentication scheme a token was presented with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    /// RFC 6750.
    Bearer,
    /// RFC 9449: the token comes with a proof in the `DPoP` header.
    Dpop,
}

/// Takes the token and its scheme from the `authorization` header: `Bearer`, and `DPoP` too when
/// `dpop` is on (both in any case). Otherwise as [`bearer_token`].
pub fn credentials(
    authorization: &Authorization,
    dpop: bool,
) -> Result<(Scheme, &str), BearerError> {
    let value = match authorization {
        Authorization::Absent => return Err(BearerError::Missing),
        Authorization::Multiple => return Err(BearerError::Duplicate),
        Authorization::One(value) => value,
    };
    if value.contains(',') {
        return Err(BearerError::Duplicate);
    }
    match two_words(value) {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => {
            Ok((Scheme::Bearer, token))
        }
        Some((scheme, token)) if dpop && scheme.eq_ignore_ascii_case("dpop") => {
            Ok((Scheme::Dpop, token))
        }
        _ => Err(BearerError::Missing),
    }
}

/// Takes the bearer token from the request's `authorization` header.
///
/// As the reference: trim, split on whitespace, scheme `bearer` in any case, exactly two parts;
/// anything else counts as "no token". A comma cannot occur in a token (RFC 6750 `b64token`), so
/// a comma means Envoy joined two headers.
pub fn bearer_token(authorization: &Authorization) -> Result<&str, BearerError> {
    credentials(authorization, false).map(|(_, token)| token)
}

/// `value.split_whitespace()` when it yields exactly two words. An ASCII value (in practice,
/// every one) is scanned byte by byte, with the same whitespace set, instead of char by char.
fn two_words(value: &str) -> Option<(&str, &str)> {
    if !value.is_ascii() {
        let mut parts = value.split_whitespace();
        return match (parts.next(), parts.next(), parts.next()) {
            (Some(first), Some(second), None) => Some((first, second)),
            _ => None,
        };
    }
    // The ASCII characters with Unicode's White_Space property, as `char::is_whitespace`.
    let space = |b: u8| matches!(b, b'\t' | b'\n' | 0x0B | 0x0C | b'\r' | b' ');
    let bytes = value.as_bytes();
    let start = bytes.iter().position(|&b| !space(b))?;
    let end = bytes.iter().rposition(|&b| !space(b))? + 1;
    let words = &value[start..end];
    let gap = words.bytes().position(space)?;
    let (first, rest) = words.split_at(gap);
    let second = rest.trim_start_matches(|c: char| c.is_ascii() && space(c as u8));
    // Without an early exit the compiler checks many bytes at once (a token is hundreds of
    // bytes, and a valid one has no space to stop at).
    if second.bytes().fold(false, |found, b| found | space(b)) {
        return None;
    }
    Some((first, second))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dpop_scheme_is_read_only_when_enabled() {
        let dpop = Authorization::One("DPoP abc".into());
        assert_eq!(credentials(&dpop, true), Ok((Scheme::Dpop, "abc")));
        assert_eq!(
            credentials(&Authorization::One("dpop abc".into()), true),
            Ok((Scheme::Dpop, "abc"))
        );
        assert_eq!(credentials(&dpop, false), Err(BearerError::Missing));
        assert_eq!(
            credentials(&Authorization::One("Bearer abc".into()), true),
            Ok((Scheme::Bearer, "abc"))
        );
    }

    fn parse(value: &str) -> Result<&str, BearerError> {
        // Leak is fine in a test: it keeps the borrow simple.
        let auth: &'static Authorization = Box::leak(Box::new(Authorization::One(value.into())));
        bearer_token(auth)
    }

    #[test]
    fn two_words_agrees_with_split_whitespace() {
        for value in [
            "a b",
            " a  b ",
            "a\x0bb",
            "a\x0c\tb\r\n",
            "a\x1cb",
            "a",
            "",
            "   ",
            "a b c",
            "a  b\x0b",
            "\u{a0}a b",
            "a\u{2003}b",
            "a\u{85}b c",
        ] {
            let words: Vec<&str> = value.split_whitespace().collect();
            let expected = match words.as_slice() {
                [first, second] => Some((*first, *second)),
                _ => None,
            };
            assert_eq!(two_words(value), expected, "{value:?}");
        }
    }

    #[test]
    fn takes_the_token_of_a_bearer_header() {
        assert_eq!(parse("Bearer abc.def.ghi"), Ok("abc.def.ghi"));
    }

    #[test]
    fn scheme_is_case_insensitive() {
        assert_eq!(parse("bearer t"), Ok("t"));
        assert_eq!(parse("BEARER t"), Ok("t"));
        assert_eq!(parse("BeArEr t"), Ok("t"));
    }

    #[test]
    fn surrounding_and_inner_whitespace_is_tolerated() {
        assert_eq!(parse("  Bearer   t  "), Ok("t"));
        assert_eq!(parse("Bearer\tt"), Ok("t"));
        assert_eq!(parse("Bearer t\t "), Ok("t"));
    }

    #[test]
    fn other_schemes_and_shapes_are_no_token() {
        for value in [
            "",
            "   ",
            "Bearer",
            "Bearer ",
            "Basic dXNlcjpwYXNz",
            "Bearer a b",
            "Token t",
            "t",
        ] {
            assert_eq!(parse(value), Err(BearerError::Missing), "{value:?}");
        }
    }

    #[test]
    fn absent_header_is_no_token() {
        assert_eq!(
            bearer_token(&Authorization::Absent),
            Err(BearerError::Missing)
        );
    }

    #[test]
    fn two_headers_are_a_duplicate() {
        assert_eq!(
            bearer_token(&Authorization::Multiple),
            Err(BearerError::Duplicate)
        );
        assert_eq!(parse("Bearer a,Bearer b"), Err(BearerError::Duplicate));
        assert_eq!(parse("Bearer a, Bearer b"), Err(BearerError::Duplicate));
    }
}
