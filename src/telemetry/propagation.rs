//! The caller's trace context: W3C trace context, or B3.

use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use opentelemetry::{Context, propagation::TextMapPropagator};

/// Whether a request whose header names (lower case) are `names` may carry a trace context:
/// [`parent`] finds none without one of these. One pass over the names, no hashing and no
/// allocation: most checks come without a trace, and a check that is not sampled should cost
/// next to nothing.
pub fn may_have_parent<'a>(mut names: impl Iterator<Item = &'a str>) -> bool {
    names.any(|name| matches!(name, "traceparent" | "b3" | "x-b3-traceid"))
}

/// The caller's trace context: W3C `traceparent` (with `tracestate`), else B3 (single `b3`
/// header or `x-b3-*`). `get` reads a header (lower-case name).
pub fn parent(get: impl Fn(&str) -> Option<String>) -> Option<Context> {
    if let Some(traceparent) = get("traceparent") {
        let mut carrier = std::collections::HashMap::new();
        carrier.insert("traceparent".to_owned(), traceparent);
        if let Some(state) = get("tracestate") {
            carrier.insert("tracestate".to_owned(), state);
        }
        let context =
            opentelemetry_sdk::propagation::TraceContextPropagator::new().extract(&carrier);
        if context.span().span_context().is_valid() {
            return Some(context);
        }
    }
    b3(&get).map(|span| Context::new().with_remote_span_context(span))
}

/// B3 propagation, single header (`b3: traceid-spanid[-sampled[-parent]]`) or multiple
/// (`x-b3-traceid`, `x-b3-spanid`, `x-b3-sampled`, `x-b3-flags`).
fn b3(get: &impl Fn(&str) -> Option<String>) -> Option<SpanContext> {
    let (trace, span, sampled) = match get("b3") {
        Some(single) => {
            let mut parts = single.trim().split('-');
            let trace = parts.next()?.to_owned();
            let span = parts.next()?.to_owned();
            (trace, span, parts.next().map(str::to_owned))
        }
        None => (
            get("x-b3-traceid")?,
            get("x-b3-spanid")?,
            get("x-b3-flags")
                .filter(|f| f.trim() == "1")
                .or_else(|| get("x-b3-sampled")),
        ),
    };
    let trace = trace.trim();
    let trace = match trace.len() {
        16 => format!("{:0>32}", trace),
        32 => trace.to_owned(),
        _ => return None,
    };
    let trace_id = TraceId::from_hex(&trace).ok()?;
    let span_id = SpanId::from_hex(span.trim()).ok()?;
    if trace_id == TraceId::INVALID || span_id == SpanId::INVALID {
        return None;
    }
    let flags = match sampled.as_deref().map(str::trim) {
        Some("1" | "d" | "true") => TraceFlags::SAMPLED,
        _ => TraceFlags::default(),
    };
    Some(SpanContext::new(
        trace_id,
        span_id,
        flags,
        true,
        TraceState::default(),
    ))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |name| map.get(name).cloned()
    }

    #[test]
    fn w3c_first_then_b3_in_both_forms() {
        let w3c = parent(headers(&[(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        )]))
        .unwrap();
        let span = w3c.span().span_context().clone();
        assert_eq!(
            span.trace_id().to_string(),
            "0af7651916cd43dd8448eb211c80319c"
        );
        assert!(span.is_sampled() && span.is_remote());
        let single = parent(headers(&[(
            "b3",
            "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1",
        )]))
        .unwrap();
        assert_eq!(
            single.span().span_context().span_id().to_string(),
            "e457b5a2e4d86bd1"
        );
        let multi = parent(headers(&[
            ("x-b3-traceid", "64fe8b2a57d3eff7"),
            ("x-b3-spanid", "e457b5a2e4d86bd1"),
            ("x-b3-sampled", "0"),
        ]))
        .unwrap();
        let span = multi.span().span_context().clone();
        assert_eq!(
            span.trace_id().to_string(),
            "000000000000000064fe8b2a57d3eff7"
        );
        assert!(
            !span.is_sampled(),
            "the caller's decision not to sample is kept"
        );
    }

    #[test]
    fn a_parent_needs_one_of_three_headers() {
        for pairs in [
            &[(
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            )][..],
            &[("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1")][..],
            &[
                ("x-b3-traceid", "64fe8b2a57d3eff7"),
                ("x-b3-spanid", "e457b5a2e4d86bd1"),
            ][..],
        ] {
            assert!(parent(headers(pairs)).is_some(), "{pairs:?}");
            assert!(may_have_parent(pairs.iter().map(|(name, _)| *name)));
        }
        // Without them there is no parent, whatever else is there.
        let others = [
            ("tracestate", "a=b"),
            ("x-b3-spanid", "e457b5a2e4d86bd1"),
            ("x-b3-sampled", "1"),
            ("authorization", "Bearer x"),
        ];
        assert!(parent(headers(&others)).is_none());
        assert!(!may_have_parent(others.iter().map(|(name, _)| *name)));
    }

    #[test]
    fn garbage_is_no_parent() {
        for pairs in [
            &[("traceparent", "00-zz-yy-01")][..],
            &[("b3", "0")][..],
            &[("x-b3-traceid", "abc"), ("x-b3-spanid", "e457b5a2e4d86bd1")][..],
            &[("b3", "00000000000000000000000000000000-0000000000000000-1")][..],
            &[][..],
        ] {
            assert!(parent(headers(pairs)).is_none(), "{pairs:?}");
        }
    }
}
