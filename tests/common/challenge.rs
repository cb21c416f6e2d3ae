//! A strict parser of `WWW-Authenticate` (RFC 9110 §11.6.1, §11.2, §5.6), written from the RFC
//! grammar and independent of certbound's challenge builder: the tests parse every challenge
//! certbound sends with it, so a malformed one (an unquoted value with a space, a stray comma, a
//! parameter twice) fails the test.
//!
//! ```text
//! WWW-Authenticate = #challenge
//! challenge   = auth-scheme [ 1*SP ( token68 / #auth-param ) ]
//! auth-param  = token BWS "=" BWS ( token / quoted-string )
//! ```
#![allow(dead_code)]

/// One challenge: its scheme (as sent) and its parameters (names lower-cased, values unquoted).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Challenge {
    pub scheme: String,
    pub params: Vec<(String, String)>,
}

impl Challenge {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn is_tchar(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c)
}

struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Cursor<'_> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    /// OWS / BWS: spaces and tabs.
    fn ows(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.at += 1;
        }
    }

    fn token(&mut self) -> Option<String> {
        let start = self.at;
        while self.peek().is_some_and(is_tchar) {
            self.at += 1;
        }
        (self.at > start).then(|| String::from_utf8_lossy(&self.bytes[start..self.at]).into())
    }

    fn quoted(&mut self) -> Result<String, String> {
        self.at += 1; // the opening DQUOTE
        let mut value = Vec::new();
        loop {
            match self.peek() {
                None => return Err("unterminated quoted-string".into()),
                Some(b'"') => {
                    self.at += 1;
                    return Ok(String::from_utf8_lossy(&value).into());
                }
                Some(b'\\') => {
                    let escaped = self.bytes.get(self.at + 1).copied();
                    match escaped {
                        Some(c) if c == b'\t' || c == b' ' || c.is_ascii_graphic() || c >= 0x80 => {
                            value.push(c);
                            self.at += 2;
                        }
                        _ => return Err("bad quoted-pair".into()),
                    }
                }
                // qdtext = HTAB / SP / %x21 / %x23-5B / %x5D-7E / obs-text
                Some(c)
                    if c == b'\t'
                        || c == b' '
                        || c == 0x21
                        || (0x23..=0x7E).contains(&c)
                        || c >= 0x80 =>
                {
                    value.push(c);
                    self.at += 1;
                }
                Some(c) => return Err(format!("byte {c:#x} in a quoted-string")),
            }
        }
    }

    /// Whether an auth-param (`token BWS "="`, not a token68's trailing `=`) starts here.
    fn param_ahead(&self) -> bool {
        let mut at = self.at;
        let start = at;
        while self.bytes.get(at).copied().is_some_and(is_tchar) {
            at += 1;
        }
        if at == start {
            return false;
        }
        while matches!(self.bytes.get(at), Some(b' ' | b'\t')) {
            at += 1;
        }
        if self.bytes.get(at) != Some(&b'=') {
            return false;
        }
        // `token68` may end in `=`: a param's `=` is followed by a value, not `=`/`,`/end.
        at += 1;
        while matches!(self.bytes.get(at), Some(b' ' | b'\t')) {
            at += 1;
        }
        matches!(self.bytes.get(at), Some(&c) if c == b'"' || is_tchar(c))
    }
}

/// Parses a `WWW-Authenticate` value into its challenges, or says what is wrong with it.
pub fn parse(value: &str) -> Result<Vec<Challenge>, String> {
    let mut cursor = Cursor {
        bytes: value.as_bytes(),
        at: 0,
    };
    let mut challenges: Vec<Challenge> = Vec::new();
    loop {
        cursor.ows();
        // #rule: empty list elements are tolerated by recipients (RFC 9110 §5.6.1.2).
        if cursor.peek() == Some(b',') {
            cursor.at += 1;
            continue;
        }
        if cursor.peek().is_none() {
            break;
        }
        let scheme = cursor
            .token()
            .ok_or_else(|| format!("expected an auth-scheme at byte {}", cursor.at))?;
        let mut challenge = Challenge {
            scheme,
            params: Vec::new(),
        };
        // `1*SP` then params; a challenge may also have none.
        let spaced = cursor.peek() == Some(b' ');
        cursor.ows();
        if spaced && cursor.param_ahead() {
            loop {
                let name = cursor.token().ok_or("expected a parameter name")?;
                cursor.ows();
                if cursor.peek() != Some(b'=') {
                    return Err(format!("parameter {name} has no '='"));
                }
                cursor.at += 1;
                cursor.ows();
                let value = match cursor.peek() {
                    Some(b'"') => cursor.quoted()?,
                    _ => cursor
                        .token()
                        .ok_or_else(|| format!("parameter {name} has no value"))?,
                };
                let name = name.to_ascii_lowercase();
                if challenge.param(&name).is_some() {
                    return Err(format!("parameter {name} twice in one challenge"));
                }
                challenge.params.push((name.clone(), value));
                cursor.ows();
                match cursor.peek() {
                    None => break,
                    Some(b',') => {
                        cursor.at += 1;
                        cursor.ows();
                        while cursor.peek() == Some(b',') {
                            cursor.at += 1;
                            cursor.ows();
                        }
                        if !cursor.param_ahead() {
                            break; // the next challenge (or the end)
                        }
                    }
                    Some(c) => {
                        return Err(format!("unexpected {:?} after parameter {name}", c as char));
                    }
                }
            }
        } else if spaced && cursor.peek().is_some_and(|c| c != b',') {
            return Err(format!(
                "{} is followed by something that is neither token68 certbound sends nor auth-params",
                challenge.scheme
            ));
        } else if cursor.peek() == Some(b',') {
            cursor.at += 1;
        } else if cursor.peek().is_some() {
            return Err(format!("unexpected byte at {}", cursor.at));
        }
        challenges.push(challenge);
    }
    if challenges.is_empty() {
        return Err("no challenge".into());
    }
    Ok(challenges)
}

/// The only challenge of a header, with its scheme checked.
pub fn single(value: &str, scheme: &str) -> Challenge {
    let mut challenges = parse(value).unwrap_or_else(|e| panic!("{value:?}: {e}"));
    assert_eq!(challenges.len(), 1, "{value:?}");
    let challenge = challenges.remove(0);
    assert!(challenge.scheme.eq_ignore_ascii_case(scheme), "{value:?}");
    challenge
}

/// The parser's own check against the RFC's example and malformed values (called by tests).
pub fn self_test() {
    let parsed =
        parse(r#"Newauth realm="apps", type=1, title="Login to \"apps\"", Basic realm="simple""#)
            .expect("RFC 9110 §11.6.1 example");
    assert_eq!(parsed.len(), 2);
    assert_eq!(parsed[0].param("title"), Some(r#"Login to "apps""#));
    assert_eq!(parsed[0].param("type"), Some("1"));
    assert_eq!(parsed[1].scheme, "Basic");
    let two = parse(r#"Bearer, DPoP algs="ES256 PS256""#).expect("two");
    assert_eq!(two[0].params, []);
    assert_eq!(two[1].param("algs"), Some("ES256 PS256"));
    for bad in [
        r#"Bearer error=invalid token"#,
        r#"Bearer error="a", error="b""#,
        r#"Bearer error="unterminated"#,
        r#"Bearer error="#,
        r#"Bearer error="a" scope="b""#,
        "",
    ] {
        assert!(parse(bad).is_err(), "{bad:?}");
    }
}
