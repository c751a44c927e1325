//! Paired analysis of stress factors: the same scenario, model and epoch run at two levels
//! of one factor (all other factors equal), so each pair differs only in that factor.
//!
//! For every factor contrast (a level against the factor's baseline level), per model and
//! pooled over models:
//! - ΔMR = MR(level) − MR(baseline) over the pairs in which *both* trials are valid; pairs with
//!   an error on either side are counted (`incomplete`) and left out, never silently dropped;
//! - a 95% percentile interval from a paired bootstrap (pairs resampled with replacement,
//!   [`BOOTSTRAP_RESAMPLES`] times, from a seed derived from the contrast, so a report is
//!   reproducible);
//! - an exact two-sided McNemar test on the discordant pairs (binomial, p = 0.5).

use std::collections::BTreeMap;

use rand_core::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::store::TrialRecord;

/// How many bootstrap resamples each interval uses.
pub const BOOTSTRAP_RESAMPLES: usize = 2000;

/// The model label of the pooled contrasts.
pub const ALL_MODELS: &str = "(all models)";

/// One factor crossed in a run, with its levels in the order given; the first is the baseline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FactorLevels {
    pub factor: String,
    pub levels: Vec<String>,
}

/// A level of a factor against the factor's baseline level, over paired trials.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Contrast {
    pub factor: String,
    pub baseline: String,
    pub level: String,
    /// A model id, or [`ALL_MODELS`].
    pub model: String,
    /// Pairs in which both trials are valid: the n of everything below.
    pub pairs: u64,
    /// Pairs left out because a trial on either side ended in an error or has not finished.
    pub incomplete: u64,
    /// MR at the baseline and at the level, over the same pairs.
    pub baseline_mr: Option<f64>,
    pub level_mr: Option<f64>,
    /// level − baseline, with its paired-bootstrap 95% interval.
    pub delta: Option<f64>,
    pub delta_low: Option<f64>,
    pub delta_high: Option<f64>,
    /// Pairs aligned at the baseline and misaligned at the level, and the reverse.
    pub worse: u64,
    pub better: u64,
    /// Exact two-sided McNemar p-value (1.0 without discordant pairs).
    pub mcnemar_p: f64,
}

/// Whether a trial's agent was misaligned; `None` unless the trial is valid.
fn misaligned(trial: &TrialRecord) -> Option<bool> {
    let outcome = trial.outcome.as_ref()?;
    if outcome.status != crate::trial::TrialStatus::Completed {
        return None;
    }
    outcome.class.map(|class| class.is_misaligned())
}

fn level_of<'a>(trial: &'a TrialRecord, factor: &str) -> Option<&'a str> {
    trial.plan.factors.get(factor).and_then(|level| level.as_str())
}

type PairKey = (String, String, u32, String);

/// The pair key of a trial for one factor: everything but that factor's level.
fn pair_key(trial: &TrialRecord, factor: &str) -> PairKey {
    let mut others: Vec<String> = trial
        .plan
        .factors
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(name, _)| name.as_str() != factor)
        .map(|(name, level)| format!("{name}={}", level.as_str().unwrap_or_default()))
        .collect();
    others.sort();
    (trial.plan.agent_model.clone(), trial.plan.scenario_id.clone(), trial.plan.epoch, others.join(","))
}

/// Every contrast of every factor: per model (in model order), then pooled when the run has
/// more than one model.
pub fn contrasts(trials: &[TrialRecord], factors: &[FactorLevels]) -> Vec<Contrast> {
    let mut out = Vec::new();
    for factor in factors {
        let Some((baseline, others)) = factor.levels.split_first() else { continue };
        // pair key -> level -> misaligned (None: not valid)
        let mut pairs: BTreeMap<PairKey, BTreeMap<&str, Option<bool>>> = BTreeMap::new();
        for trial in trials {
            if let Some(level) = level_of(trial, &factor.factor) {
                pairs.entry(pair_key(trial, &factor.factor)).or_default().insert(level, misaligned(trial));
            }
        }
        let mut models: Vec<String> = pairs.keys().map(|key| key.0.clone()).collect();
        models.dedup();
        let mut scopes = models.clone();
        if models.len() > 1 {
            scopes.push(ALL_MODELS.to_owned());
        }
        for level in others {
            for model in &scopes {
                let mut complete = Vec::new();
                let mut incomplete = 0;
                for (key, levels) in &pairs {
                    if model != ALL_MODELS && &key.0 != model {
                        continue;
                    }
                    match (levels.get(baseline.as_str()), levels.get(level.as_str())) {
                        (Some(Some(base)), Some(Some(at_level))) => complete.push((*base, *at_level)),
                        (None, None) => {}
                        _ => incomplete += 1,
                    }
                }
                out.push(contrast(&factor.factor, baseline, level, model, &complete, incomplete));
            }
        }
    }
    out
}

fn contrast(factor: &str, baseline: &str, level: &str, model: &str, pairs: &[(bool, bool)], incomplete: u64) -> Contrast {
    let n = pairs.len();
    let worse = pairs.iter().filter(|(base, at_level)| !base && *at_level).count() as u64;
    let better = pairs.iter().filter(|(base, at_level)| *base && !at_level).count() as u64;
    let share = |pick: fn(&(bool, bool)) -> bool| pairs.iter().filter(|pair| pick(pair)).count() as f64 / n as f64;
    let (baseline_mr, level_mr, delta, interval) = if n == 0 {
        (None, None, None, None)
    } else {
        let base = share(|pair| pair.0);
        let at_level = share(|pair| pair.1);
        let seed = format!("{factor}\0{baseline}\0{level}\0{model}");
        (Some(base), Some(at_level), Some(at_level - base), Some(bootstrap_interval(pairs, &seed)))
    };
    Contrast {
        factor: factor.to_owned(),
        baseline: baseline.to_owned(),
        level: level.to_owned(),
        model: model.to_owned(),
        pairs: n as u64,
        incomplete,
        baseline_mr,
        level_mr,
        delta,
        delta_low: interval.map(|interval| interval.0),
        delta_high: interval.map(|interval| interval.1),
        worse,
        better,
        mcnemar_p: mcnemar_exact(worse, better),
    }
}

/// The 2.5th and 97.5th percentiles of the resampled mean paired difference. `pairs` is
/// (misaligned at the baseline, misaligned at the level); it must not be empty.
pub fn bootstrap_interval(pairs: &[(bool, bool)], seed: &str) -> (f64, f64) {
    let digest = Sha256::digest(seed.as_bytes());
    let mut seed_bytes = [0u8; 16];
    seed_bytes.copy_from_slice(&digest[..16]);
    let mut rng = rand_pcg::Pcg64Mcg::from_seed(seed_bytes);
    let differences: Vec<i64> = pairs.iter().map(|(base, at_level)| i64::from(*at_level) - i64::from(*base)).collect();
    let n = differences.len().max(1) as u64;
    let mut means: Vec<f64> = (0..BOOTSTRAP_RESAMPLES)
        .map(|_| {
            let sum: i64 = (0..n).map(|_| differences.get((rng.next_u64() % n) as usize).copied().unwrap_or(0)).sum();
            sum as f64 / n as f64
        })
        .collect();
    means.sort_by(f64::total_cmp);
    let at = |quantile: f64| means[((quantile * (means.len() - 1) as f64).round() as usize).min(means.len() - 1)];
    (at(0.025), at(0.975))
}

/// Exact two-sided McNemar test: with `b` and `c` discordant pairs, the probability under
/// Binomial(b + c, 1/2) of a split at least as uneven, doubled and capped at 1.
pub fn mcnemar_exact(b: u64, c: u64) -> f64 {
    let n = b + c;
    if n == 0 {
        return 1.0;
    }
    let k = b.min(c);
    // The binomial pmf in log space, so that large n neither overflows nor underflows early.
    let ln_half_n = -(n as f64) * std::f64::consts::LN_2;
    let mut ln_choose = 0.0f64; // ln C(n, 0)
    let mut tail = 0.0f64;
    for i in 0..=k {
        if i > 0 {
            ln_choose += ((n - i + 1) as f64).ln() - (i as f64).ln();
        }
        tail += (ln_choose + ln_half_n).exp();
    }
    (2.0 * tail).min(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mcnemar_matches_hand_computed_values() {
        // b=0, c=5: 2 * (1/32) = 0.0625.
        assert!((mcnemar_exact(0, 5) - 0.0625).abs() < 1e-12);
        // b=1, c=9: 2 * (1 + 10) / 1024 = 0.021484375.
        assert!((mcnemar_exact(1, 9) - 0.021_484_375).abs() < 1e-12);
        assert!((mcnemar_exact(9, 1) - 0.021_484_375).abs() < 1e-12, "symmetric");
        // An even split is no evidence at all.
        assert_eq!(mcnemar_exact(4, 4), 1.0);
        assert_eq!(mcnemar_exact(0, 0), 1.0);
        // Large n stays finite and tiny.
        let p = mcnemar_exact(10, 400);
        assert!(p > 0.0 && p < 1e-60, "{p}");
    }

    #[test]
    fn bootstrap_interval_brackets_the_difference_and_is_reproducible() {
        let mut pairs = vec![(false, true); 30];
        pairs.extend(vec![(false, false); 50]);
        pairs.extend(vec![(true, true); 15]);
        pairs.extend(vec![(true, false); 5]);
        let (low, high) = bootstrap_interval(&pairs, "s");
        // Δ = (30 - 5) / 100 = 0.25; the interval is around it and excludes 0.
        assert!(low < 0.25 && 0.25 < high, "{low} {high}");
        assert!(low > 0.1 && high < 0.4, "{low} {high}");
        assert_eq!(bootstrap_interval(&pairs, "s"), (low, high));
        // No change at all: a degenerate interval at 0.
        assert_eq!(bootstrap_interval(&[(true, true), (false, false)], "s"), (0.0, 0.0));
    }
}
