//! The configuration reference (`docs/src/configuration.md`) against the code: every key the
//! parser accepts is documented there, and every key documented there is one the parser accepts.
//!
//! The keys are not listed by hand. The parser itself tells them: a struct with
//! `deny_unknown_fields` refuses an unknown key with "expected one of `a`, `b`, ...", so probing
//! each level with a key that cannot exist walks the whole schema (structs, lists of structs),
//! and a free-form map (`upstream.claim_headers`) or a scalar is a leaf.

use std::collections::BTreeSet;

use certbound_core::config::parse;

const PROBE: &str = "zz_not_a_key";
const REFERENCE: &str = "docs/src/configuration.md";

#[derive(Clone)]
enum Seg {
    Key(String),
    Elem,
}

fn display(path: &[Seg]) -> String {
    let mut out = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) if out.is_empty() => out.push_str(k),
            Seg::Key(k) => {
                out.push('.');
                out.push_str(k);
            }
            Seg::Elem => out.push_str("[]"),
        }
    }
    out
}

/// The fields of the struct at `path`, or `None` when the value there is not a struct.
fn fields_at(path: &[Seg]) -> Option<Vec<String>> {
    let mut text = format!("{{{PROBE}: 1}}");
    for seg in path.iter().rev() {
        text = match seg {
            Seg::Key(k) => format!("{{{k}: {text}}}"),
            Seg::Elem => format!("[{text}]"),
        };
    }
    // A free-form map (`claim_headers`) takes any key: not a struct.
    let Err(error) = parse(&text) else {
        return None;
    };
    let (_, expected) = error
        .message
        .split_once(&format!("unknown field `{PROBE}`, expected "))?;
    // The refusal must be the probed struct's own, not an enclosing one's.
    let at = display(path).replace("[]", "[0]");
    let at = if at.is_empty() { "config".into() } else { at };
    assert_eq!(error.key, at, "{text}: {error}");
    Some(
        expected
            .split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_owned)
            .collect(),
    )
}

/// Every key path the parser accepts (`issuers[].jwks_uri`), and those that hold structs.
fn accepted() -> (BTreeSet<String>, BTreeSet<String>) {
    fn walk(path: Vec<Seg>, keys: &mut BTreeSet<String>, nested: &mut BTreeSet<String>) {
        let Some(fields) = fields_at(&path) else {
            return;
        };
        nested.insert(display(&path));
        for field in fields {
            let mut child = path.clone();
            child.push(Seg::Key(field));
            keys.insert(display(&child));
            if fields_at(&child).is_some() {
                walk(child, keys, nested);
            } else {
                let mut elem = child.clone();
                elem.push(Seg::Elem);
                if fields_at(&elem).is_some() {
                    nested.insert(display(&child));
                    walk(elem, keys, nested);
                }
            }
        }
    }
    let (mut keys, mut nested) = (BTreeSet::new(), BTreeSet::new());
    walk(Vec::new(), &mut keys, &mut nested);
    (keys, nested)
}

/// The first YAML block of the reference: the annotated file with every key.
fn reference_yaml() -> serde_yaml_ng::Value {
    let text = std::fs::read_to_string(REFERENCE).expect("the configuration reference");
    let (_, rest) = text.split_once("```yaml\n").expect("a yaml block");
    let (block, _) = rest.split_once("\n```").expect("a closed yaml block");
    serde_yaml_ng::from_str(block).expect("the reference's YAML parses")
}

/// The key paths the reference shows, descending only into what the parser reads as structs.
fn documented(nested: &BTreeSet<String>) -> BTreeSet<String> {
    fn walk(
        path: &str,
        value: &serde_yaml_ng::Value,
        nested: &BTreeSet<String>,
        out: &mut BTreeSet<String>,
    ) {
        match value {
            serde_yaml_ng::Value::Mapping(map) => {
                for (key, child) in map {
                    let key = key.as_str().expect("string keys");
                    let child_path = if path.is_empty() {
                        key.to_owned()
                    } else {
                        format!("{path}.{key}")
                    };
                    out.insert(child_path.clone());
                    if nested.contains(&child_path) {
                        walk(&child_path, child, nested, out);
                    }
                }
            }
            serde_yaml_ng::Value::Sequence(items) => {
                for item in items {
                    walk(&format!("{path}[]"), item, nested, out);
                }
            }
            _ => {}
        }
    }
    let mut out = BTreeSet::new();
    walk("", &reference_yaml(), nested, &mut out);
    out
}

#[test]
fn the_schema_probe_sees_the_known_shapes() {
    let (keys, nested) = accepted();
    // A control for the probe itself: a plain key, a nested struct, a list of structs, a map.
    for key in [
        "listen",
        "dpop.replay.sentinel.master_name",
        "issuers[].jwks_uri",
        "policy.rules[].path_prefix",
        "policy.default.scopes",
        "upstream.claim_headers",
    ] {
        assert!(keys.contains(key), "{key} not found in {keys:?}");
    }
    assert!(nested.contains("issuers") && nested.contains("policy.rules"));
    assert!(
        !nested.contains("upstream.claim_headers"),
        "a map is a leaf"
    );
    assert!(
        keys.len() > 100,
        "only {} keys: the probe stopped early",
        keys.len()
    );
}

#[test]
fn every_accepted_key_is_documented_and_nothing_documented_is_unknown() {
    let (keys, nested) = accepted();
    let documented = documented(&nested);
    let missing: Vec<_> = keys.difference(&documented).collect();
    let unknown: Vec<_> = documented.difference(&keys).collect();
    assert!(
        missing.is_empty(),
        "keys the parser accepts but {REFERENCE} does not show: {missing:?}"
    );
    assert!(
        unknown.is_empty(),
        "keys {REFERENCE} shows but the parser refuses: {unknown:?}"
    );
}

#[test]
fn every_environment_override_is_documented_and_nothing_else_claims_to_be_one() {
    let text = std::fs::read_to_string(REFERENCE).unwrap();
    let table: BTreeSet<&str> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("| `CERTBOUND_"))
        .filter_map(|rest| rest.split('`').next())
        .collect();
    let code: BTreeSet<&str> = certbound::config::env::override_names()
        .map(|n| n.strip_prefix("CERTBOUND_").unwrap())
        .collect();
    assert_eq!(
        table, code,
        "the override table in {REFERENCE} vs src/config/env.rs"
    );
}
