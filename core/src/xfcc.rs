//! The `x-forwarded-client-cert` header as Envoy writes it.
//!
//! Elements are separated by `,`, pairs inside an element by `;`, keys are case-insensitive.
//! Values containing `,` `;` `=` are double-quoted with `"` escaped as `\"`; other backslash
//! escapes (RFC 2253 `\,` in `Subject`) are kept as they are. Separators count only outside quotes.

/// One element: the `key=value` pairs describing one proxy hop's peer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Element {
    pairs: Vec<(String, String)>,
}

impl Element {
    /// The first value for `key` (case-insensitive).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.as_str())
    }
}

/// Why an XFCC header could not be parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum XfccError {
    #[error("unterminated quoted value")]
    UnterminatedQuote,
    #[error("pair without '='")]
    MissingEquals,
}

/// Parses a whole XFCC header into its elements, in order.
pub fn parse(header: &str) -> Result<Vec<Element>, XfccError> {
    let mut elements = Vec::new();
    let mut element = Element::default();
    let mut token = String::new();
    let mut key: Option<String> = None;
    let mut in_quotes = false;
    let mut chars = header.chars();

    let finish_pair = |key: &mut Option<String>, token: &mut String, element: &mut Element| {
        let value = std::mem::take(token);
        match key.take() {
            Some(k) => {
                element.pairs.push((k.trim().to_string(), value));
                Ok(())
            }
            None if value.trim().is_empty() => Ok(()),
            None => Err(XfccError::MissingEquals),
        }
    };

    while let Some(c) = chars.next() {
        if in_quotes {
            match c {
                '\\' => match chars.next() {
                    Some('"') => token.push('"'),
                    Some(other) => {
                        token.push('\\');
                        token.push(other);
                    }
                    None => return Err(XfccError::UnterminatedQuote),
                },
                '"' => in_quotes = false,
                _ => token.push(c),
            }
            continue;
        }
        match c {
            '"' => in_quotes = true,
            '=' if key.is_none() => key = Some(std::mem::take(&mut token)),
            ';' => finish_pair(&mut key, &mut token, &mut element)?,
            ',' => {
                finish_pair(&mut key, &mut token, &mut element)?;
                elements.push(std::mem::take(&mut element));
            }
            _ => token.push(c),
        }
    }
    if in_quotes {
        return Err(XfccError::UnterminatedQuote);
    }
    finish_pair(&mut key, &mut token, &mut element)?;
    if !element.pairs.is_empty() {
        elements.push(element);
    }
    Ok(elements)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_envoys_sanitize_set_form() {
        let header = r#"By=spiffe://cluster.local/ns/default/sa/api;Hash=abcd;Cert="-----BEGIN%20CERTIFICATE-----%0AMII%2B%3D%0A-----END%20CERTIFICATE-----%0A";Subject="CN=client,O=Example\, Inc.";URI=spiffe://client"#;
        let elements = parse(header).expect("parses");
        assert_eq!(elements.len(), 1);
        let e = &elements[0];
        assert_eq!(
            e.get("by"),
            Some("spiffe://cluster.local/ns/default/sa/api")
        );
        assert_eq!(e.get("HASH"), Some("abcd"));
        assert_eq!(
            e.get("Cert"),
            Some("-----BEGIN%20CERTIFICATE-----%0AMII%2B%3D%0A-----END%20CERTIFICATE-----%0A")
        );
        assert_eq!(e.get("subject"), Some(r"CN=client,O=Example\, Inc."));
        assert_eq!(e.get("uri"), Some("spiffe://client"));
    }

    #[test]
    fn separates_elements_outside_quotes_only() {
        let elements = parse(r#"Hash=aa;Subject="a,b;c=d",Hash=bb"#).expect("parses");
        assert_eq!(elements.len(), 2);
        assert_eq!(elements[0].get("subject"), Some("a,b;c=d"));
        assert_eq!(elements[1].get("hash"), Some("bb"));
    }

    #[test]
    fn unescapes_only_quotes() {
        let elements = parse(r#"Subject="CN=\"quoted\"\, x""#).expect("parses");
        assert_eq!(elements[0].get("subject"), Some(r#"CN="quoted"\, x"#));
    }

    #[test]
    fn values_may_contain_equals_signs() {
        let elements = parse("URI=spiffe://a?b=c").expect("parses");
        assert_eq!(elements[0].get("uri"), Some("spiffe://a?b=c"));
    }

    #[test]
    fn unterminated_quote_is_an_error() {
        assert_eq!(parse(r#"Cert="abc"#), Err(XfccError::UnterminatedQuote));
        assert_eq!(parse(r#"Cert="abc\"#), Err(XfccError::UnterminatedQuote));
    }

    #[test]
    fn pair_without_equals_is_an_error() {
        assert_eq!(parse("Hash=aa;garbage"), Err(XfccError::MissingEquals));
    }

    #[test]
    fn empty_header_has_no_elements() {
        assert_eq!(parse(""), Ok(vec![]));
        assert_eq!(parse(" "), Ok(vec![]));
    }

    #[test]
    fn missing_key_lookups_are_none() {
        let elements = parse("Hash=aa").expect("parses");
        assert_eq!(elements[0].get("cert"), None);
    }
}
