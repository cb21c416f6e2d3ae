//! Finds the line of a key path (`issuers[0].audiences`) in block-style YAML, so that a
//! validation error can point at the line the user wrote. Flow-style parts (`{a: 1}`, `[x]`) are
//! found down to the key that holds them. When in doubt it finds nothing: no line is better than
//! a wrong one.

/// One step of a key path: a mapping key or a sequence index.
#[derive(Debug, PartialEq, Eq)]
enum Step<'a> {
    Key(&'a str),
    Index(usize),
}

fn steps(path: &str) -> Option<Vec<Step<'_>>> {
    let mut steps = Vec::new();
    for part in path.split('.') {
        let (key, mut rest) = match part.find('[') {
            Some(at) => (&part[..at], &part[at..]),
            None => (part, ""),
        };
        if !key.is_empty() {
            steps.push(Step::Key(key));
        }
        while let Some(inner) = rest.strip_prefix('[') {
            let end = inner.find(']')?;
            steps.push(Step::Index(inner[..end].parse().ok()?));
            rest = &inner[end + 1..];
        }
        if !rest.is_empty() {
            return None;
        }
    }
    Some(steps)
}

/// A line of the document with what it starts: `key:` and/or a `- ` item marker.
struct Line<'a> {
    number: usize,
    /// Column of the line's first item marker, if it starts with `- `.
    item_at: Option<usize>,
    /// Column and text of the key it starts (after any `- `).
    key: Option<(usize, &'a str)>,
}

fn lines(text: &str) -> Vec<Line<'_>> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let content = raw.split(" #").next().unwrap_or(raw);
        let trimmed = content.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with("---") {
            continue;
        }
        let mut column = content.len() - trimmed.len();
        let mut rest = trimmed;
        let mut item_at = None;
        if rest == "-" || rest.starts_with("- ") {
            item_at = Some(column);
            let after = rest[1..].trim_start();
            column += rest.len() - after.len();
            rest = after;
        }
        let key = rest.find(':').and_then(|colon| {
            let key = rest[..colon].trim().trim_matches(['"', '\'']);
            let after = &rest[colon + 1..];
            let is_key = !key.is_empty()
                && !key.contains([' ', '{', '[', ','])
                && (after.is_empty() || after.starts_with(' '));
            is_key.then_some((column, key))
        });
        out.push(Line {
            number: i + 1,
            item_at,
            key,
        });
    }
    out
}

/// The 1-based line where `path` is written in `text`, when it can be told for sure.
pub fn line_of(text: &str, path: &str) -> Option<usize> {
    let steps = steps(path)?;
    let lines = lines(text);
    // The block being searched: lines[from..to], whose entries sit at column `indent`.
    let (mut from, mut to) = (0, lines.len());
    let mut indent = lines.first()?.key.map(|(c, _)| c)?;
    let mut found = None;
    for step in &steps {
        let hit = match step {
            Step::Key(key) => (from..to).find(|&i| lines[i].key == Some((indent, key)))?,
            Step::Index(index) => {
                let items: Vec<usize> = (from..to)
                    .filter(|&i| lines[i].item_at.is_some_and(|c| c >= indent))
                    .collect();
                let item_column = lines[*items.first()?].item_at?;
                let items: Vec<usize> = items
                    .into_iter()
                    .filter(|&i| lines[i].item_at == Some(item_column))
                    .collect();
                *items.get(*index)?
            }
        };
        found = Some(lines[hit].number);
        // The entries under `hit` are the following lines indented deeper than it.
        let own = match step {
            Step::Key(_) => indent,
            Step::Index(_) => lines[hit].item_at?,
        };
        // YAML lets a sequence under a key start at the key's own column (`rules:` then
        // `- name: ...` right below it).
        let sequence_at_own = matches!(step, Step::Key(_))
            && lines
                .get(hit + 1)
                .is_some_and(|next| next.item_at == Some(own));
        let end = (hit + 1..to)
            .find(|&i| {
                let start = lines[i].item_at.or(lines[i].key.map(|(c, _)| c));
                let own_item = sequence_at_own && lines[i].item_at == Some(own);
                start.is_some_and(|c| c <= own) && !own_item
            })
            .unwrap_or(to);
        indent = match step {
            // An item's own key sits on its line, after the marker.
            Step::Index(_) => match lines[hit].key {
                Some((column, _)) => column,
                None => lines.get(hit + 1)?.key?.0,
            },
            Step::Key(_) => match lines.get(hit + 1) {
                Some(next) if hit + 1 < end => next.item_at.or(next.key.map(|(c, _)| c))?,
                _ => usize::MAX,
            },
        };
        (from, to) = match step {
            Step::Index(_) => (hit, end),
            Step::Key(_) => (hit + 1, end),
        };
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "\
# certbound
listen: 127.0.0.1:50051
issuers:
  - issuer: https://a.test
    audiences: [x]
    jwks_file: a.json

  - issuer: https://b.test   # the second
    audiences:
      - y
    algorithms: [ES256]
binding:
  mode: required
policy:
  rules:
  - name: health
    path: /healthz
  - name: admin
    scopes: [admin]
";

    #[test]
    fn finds_keys_items_and_keys_inside_items() {
        assert_eq!(line_of(DOC, "listen"), Some(2));
        assert_eq!(line_of(DOC, "issuers"), Some(3));
        assert_eq!(line_of(DOC, "issuers[0]"), Some(4));
        assert_eq!(line_of(DOC, "issuers[0].issuer"), Some(4));
        assert_eq!(line_of(DOC, "issuers[0].jwks_file"), Some(6));
        assert_eq!(line_of(DOC, "issuers[1].issuer"), Some(8));
        assert_eq!(line_of(DOC, "issuers[1].audiences"), Some(9));
        assert_eq!(line_of(DOC, "issuers[1].audiences[0]"), Some(10));
        assert_eq!(line_of(DOC, "issuers[1].algorithms"), Some(11));
        assert_eq!(line_of(DOC, "binding.mode"), Some(13));
        assert_eq!(line_of(DOC, "policy.rules[1].scopes"), Some(19));
        assert_eq!(line_of(DOC, "policy.rules[0].path"), Some(17));
    }

    #[test]
    fn finds_nothing_rather_than_a_wrong_line() {
        assert_eq!(line_of(DOC, "issuers[2]"), None);
        assert_eq!(line_of(DOC, "issuers[0].algorithms"), None);
        assert_eq!(line_of(DOC, "binding.other"), None);
        assert_eq!(line_of(DOC, "tls.cert_file"), None);
        assert_eq!(line_of(DOC, "issuers[x]"), None);
        assert_eq!(line_of("", "listen"), None);
        assert_eq!(line_of("{listen: a}", "listen"), None);
    }
}
