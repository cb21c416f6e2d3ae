//! The head sampler: whether a check gets a span, decided before any span is made.

use std::collections::BTreeMap;

use opentelemetry::Context;
use opentelemetry::trace::TraceContextExt;

/// The sampling decision, taken before a span is made: a check that is not sampled costs no
/// span at all (tracing-opentelemetry would build one and let the SDK drop it at the end).
#[derive(Clone, Debug, PartialEq)]
pub enum HeadSampler {
    Always,
    Never,
    /// This share of traces.
    Ratio(f64),
    /// The caller's decision when it sent one, else the inner sampler.
    ParentBased(Box<HeadSampler>),
}

impl HeadSampler {
    /// The OpenTelemetry SDK's environment variables, as the specification names them.
    pub(super) fn from_env(env: &BTreeMap<String, String>) -> Self {
        let arg = env
            .get("OTEL_TRACES_SAMPLER_ARG")
            .and_then(|a| a.trim().parse::<f64>().ok())
            .filter(|r| (0.0..=1.0).contains(r))
            .unwrap_or(1.0);
        let sampler = env
            .get("OTEL_TRACES_SAMPLER")
            .map(|s| s.trim().to_ascii_lowercase());
        match sampler.as_deref() {
            Some("always_on") => Self::Always,
            Some("always_off") => Self::Never,
            Some("traceidratio") => Self::Ratio(arg),
            Some("parentbased_always_off") => Self::ParentBased(Box::new(Self::Never)),
            Some("parentbased_traceidratio") => Self::ParentBased(Box::new(Self::Ratio(arg))),
            _ => Self::ParentBased(Box::new(Self::Always)),
        }
    }

    pub(super) fn sample(&self, parent: Option<&Context>) -> bool {
        match self {
            Self::Always => true,
            Self::Never => false,
            Self::Ratio(ratio) => *ratio >= 1.0 || (*ratio > 0.0 && random_unit() < *ratio),
            Self::ParentBased(root) => match parent.map(|p| p.span().span_context().clone()) {
                Some(span) if span.is_valid() => span.is_sampled(),
                _ => root.sample(None),
            },
        }
    }
}

/// A uniform number in [0, 1): xorshift64* per thread (sampling needs no cryptography).
fn random_unit() -> f64 {
    use std::cell::Cell;
    thread_local! {
        static STATE: Cell<u64> = Cell::new({
            let time = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            let here = &time as *const u64 as u64;
            (time ^ here.rotate_left(32)) | 1
        });
    }
    STATE.with(|state| {
        let mut x = state.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        state.set(x);
        (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::parent;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect()
    }

    #[test]
    fn the_environment_names_the_sampler() {
        assert_eq!(
            HeadSampler::from_env(&env(&[])),
            HeadSampler::ParentBased(Box::new(HeadSampler::Always))
        );
        assert_eq!(
            HeadSampler::from_env(&env(&[
                ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
                ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
            ])),
            HeadSampler::ParentBased(Box::new(HeadSampler::Ratio(0.25)))
        );
        assert_eq!(
            HeadSampler::from_env(&env(&[("OTEL_TRACES_SAMPLER", "always_off")])),
            HeadSampler::Never
        );
    }

    #[test]
    fn parent_based_follows_the_caller_and_a_ratio_samples_about_its_share() {
        let sampler = HeadSampler::ParentBased(Box::new(HeadSampler::Ratio(0.1)));
        let sampled = parent(|n| {
            (n == "traceparent")
                .then(|| "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into())
        });
        let unsampled = parent(|n| {
            (n == "traceparent")
                .then(|| "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00".into())
        });
        assert!((0..100).all(|_| sampler.sample(sampled.as_ref())));
        assert!((0..100).all(|_| !sampler.sample(unsampled.as_ref())));
        let share = (0..100_000).filter(|_| sampler.sample(None)).count();
        assert!((8_000..12_000).contains(&share), "{share} of 100000 at 0.1");
    }
}
