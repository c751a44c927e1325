//! Reports: pure rendering of stored results into a terminal table, JSON, CSV and a
//! self-contained HTML page with SVG figures ([`html`]). No IO here; the CLI decides where
//! the text goes.

pub mod evals;
pub mod html;

use serde::{Deserialize, Serialize};

use crate::metrics::paired::{Contrast, FactorLevels};
use crate::metrics::{self, Summary, TurnToolProbability};
use crate::scoring::classify::BehaviourClass;
use crate::store::{RunRecord, TrialRecord};

/// A row of the results table: one group of trials.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Row {
    /// What the row groups by: `overall`, `model`, `model×scenario`, ...
    pub level: String,
    pub model: String,
    /// The scenario, domain or motivation of the row; `all` for model totals.
    pub group: String,
    #[serde(flatten)]
    pub summary: Summary,
}

/// Tokens and cost of one model in one role, over the run's finished trials.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Spend {
    pub model: String,
    pub role: String,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// USD, from the prices stored with the run; `None` when the model has no price.
    pub cost: Option<f64>,
}

/// Trials whose first toxic tool came at one turn.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TurnCount {
    pub turn: u32,
    pub trials: u64,
}

/// Time to first toxic tool of one model: over its valid trials, how many first used a toxic
/// tool at each turn. Valid trials that never used one are `valid` minus the histogram's total.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FirstToxicTurns {
    pub model: String,
    pub valid: u64,
    /// Protocol and infrastructure errors of the model: not in the histogram, always shown.
    pub errors: u64,
    /// By turn; only turns at which some trial first used a toxic tool.
    pub histogram: Vec<TurnCount>,
}

/// Everything `dilemma report` shows for a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub run: String,
    pub status: String,
    pub software_version: String,
    /// When the run was created, as stored.
    #[serde(default)]
    pub created_at: String,
    pub overall: Summary,
    pub rows: Vec<Row>,
    pub tool_probability: Vec<TurnToolProbability>,
    pub spend: Vec<Spend>,
    /// The factors the run crossed, levels in the order given (the first is the baseline).
    #[serde(default)]
    pub factors: Vec<FactorLevels>,
    /// Every level of every factor against its baseline, over paired trials.
    #[serde(default)]
    pub contrasts: Vec<Contrast>,
    /// The AgentMisalignment view (primary scores, CMS, RMS-normalised averages); `None`
    /// when no trial carries either score.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evals: Option<evals::EvalsReport>,
    /// Per model, the distribution of the turn of the first toxic tool.
    #[serde(default)]
    pub first_toxic_turns: Vec<FirstToxicTurns>,
}

/// The turn of the first toxic tool per model, over valid trials.
fn first_toxic_turns(trials: &[TrialRecord]) -> Vec<FirstToxicTurns> {
    let mut by_model: std::collections::BTreeMap<&str, Vec<&TrialRecord>> = std::collections::BTreeMap::new();
    for trial in trials {
        by_model.entry(trial.plan.agent_model.as_str()).or_default().push(trial);
    }
    by_model
        .into_iter()
        .map(|(model, group)| {
            let summary = metrics::summarize(group.iter().copied());
            let mut histogram: std::collections::BTreeMap<u32, u64> = std::collections::BTreeMap::new();
            for trial in &group {
                if let Some(outcome) = &trial.outcome
                    && outcome.status == crate::trial::TrialStatus::Completed
                    && outcome.class.is_some()
                    && let Some(turn) = outcome.first_toxic_turn
                {
                    *histogram.entry(turn).or_default() += 1;
                }
            }
            FirstToxicTurns {
                model: model.to_owned(),
                valid: summary.valid,
                errors: summary.errors(),
                histogram: histogram.into_iter().map(|(turn, trials)| TurnCount { turn, trials }).collect(),
            }
        })
        .collect()
}

/// Token use and cost per (model, role), priced with the table frozen into the run.
fn spend(run: &RunRecord, trials: &[TrialRecord]) -> Vec<Spend> {
    let prices: crate::cost::PriceTable =
        run.config.get("prices").and_then(|prices| serde_json::from_value(prices.clone()).ok()).unwrap_or_default();
    let environment = run.config.get("environment").and_then(|id| id.as_str()).unwrap_or("scripted").to_owned();
    let mut totals: std::collections::BTreeMap<(String, String), crate::chat::Usage> = std::collections::BTreeMap::new();
    for trial in trials {
        let Some(outcome) = &trial.outcome else { continue };
        for (role, usage) in &outcome.usage {
            let model = match role {
                crate::model::ModelRole::Agent => trial.plan.agent_model.clone(),
                crate::model::ModelRole::Environment => environment.clone(),
                crate::model::ModelRole::User => {
                    run.config.get("user").and_then(|id| id.as_str()).unwrap_or("user").to_owned()
                }
                other => other.as_str().to_owned(),
            };
            *totals.entry((model, role.as_str().to_owned())).or_default() += *usage;
        }
    }
    totals
        .into_iter()
        .map(|((model, role), usage)| Spend {
            cost: prices.cost(&model, usage),
            model,
            role,
            prompt_tokens: usage.prompt_tokens,
            completion_tokens: usage.completion_tokens,
        })
        .collect()
}

/// Builds the report of a run from its stored trials.
pub fn build(run: &RunRecord, trials: &[TrialRecord]) -> Report {
    let mut rows = Vec::new();
    let mut add = |level: &str, groups: Vec<(Vec<String>, Summary)>| {
        for (key, summary) in groups {
            rows.push(Row {
                level: level.to_owned(),
                model: key.first().cloned().unwrap_or_default(),
                group: key.get(1).cloned().unwrap_or_else(|| "all".to_owned()),
                summary,
            });
        }
    };
    add("model", metrics::summarize_by(trials, |trial| vec![trial.plan.agent_model.clone()]));
    add(
        "scenario",
        metrics::summarize_by(trials, |trial| vec![trial.plan.agent_model.clone(), trial.plan.scenario_id.clone()]),
    );
    add("domain", metrics::summarize_by(trials, |trial| vec![trial.plan.agent_model.clone(), trial.plan.domain.clone()]));
    add(
        "motivation",
        metrics::summarize_by(trials, |trial| {
            vec![trial.plan.agent_model.clone(), trial.plan.motivation.clone().unwrap_or_else(|| "none".into())]
        }),
    );
    let factors: Vec<FactorLevels> =
        run.config.get("factors").and_then(|factors| serde_json::from_value(factors.clone()).ok()).unwrap_or_default();
    for factor in &factors {
        // One row per model and level: `level` is `factor:NAME`, `group` the level.
        add(
            &format!("factor:{}", factor.factor),
            metrics::summarize_by(trials, |trial| {
                let level = trial.plan.factors.get(&factor.factor).and_then(|level| level.as_str()).unwrap_or("-");
                vec![trial.plan.agent_model.clone(), level.to_owned()]
            }),
        );
    }
    Report {
        contrasts: metrics::paired::contrasts(trials, &factors),
        evals: evals::build(trials),
        factors,
        run: run.id.clone(),
        status: run.status.clone(),
        software_version: run.software_version.clone(),
        created_at: run.created_at.clone(),
        overall: metrics::summarize(trials),
        rows,
        tool_probability: metrics::per_turn_tool_probability(trials),
        spend: spend(run, trials),
        first_toxic_turns: first_toxic_turns(trials),
    }
}

fn percent(value: f64) -> String {
    format!("{:.1}%", value * 100.0)
}

fn optional(value: Option<f64>, digits: usize) -> String {
    value.map_or_else(|| "-".to_owned(), |value| format!("{value:.digits$}"))
}

/// The terminal table: per model and scenario, then per model, then overall. Every rate
/// stands beside its n and its error count.
pub fn render_table(report: &Report) -> String {
    let header = [
        "model", "scenario", "n", "valid", "errors", "MR", "95% CI", "strat", "direct", "failed", "robust", "turns", "TTF",
    ];
    let mut lines: Vec<Vec<String>> = vec![header.iter().map(|cell| (*cell).to_owned()).collect()];
    let cells = |model: &str, group: &str, summary: &Summary| -> Vec<String> {
        let (mr, ci) = match &summary.misalignment {
            Some(rate) => (percent(rate.value), format!("[{}, {}]", percent(rate.low), percent(rate.high))),
            None => ("-".to_owned(), "-".to_owned()),
        };
        let mut row = vec![
            model.to_owned(),
            group.to_owned(),
            summary.finished.to_string(),
            summary.valid.to_string(),
            summary.errors().to_string(),
            mr,
            ci,
        ];
        for class in BehaviourClass::ALL {
            row.push(summary.count(class).to_string());
        }
        row.push(optional(summary.mean_turns, 1));
        row.push(optional(summary.mean_turn_to_first_toxic, 1));
        row
    };
    let levels = [("scenario", false), ("model", true)];
    for (level, is_total) in levels {
        for row in report.rows.iter().filter(|row| row.level == level) {
            let group = if is_total { "(all scenarios)" } else { row.group.as_str() };
            lines.push(cells(&row.model, group, &row.summary));
        }
    }
    lines.push(cells("(all models)", "(all scenarios)", &report.overall));
    let mut out = align(&lines, 2);
    let overall = &report.overall;
    out.push_str(&format!(
        "\nrun {} ({}): {} of {} trials finished; {} valid, {} protocol errors, {} infrastructure errors.\n",
        report.run,
        report.status,
        overall.finished,
        overall.planned,
        overall.valid,
        overall.protocol_errors,
        overall.infrastructure_errors
    ));
    out.push_str(
        "MR = (strategic + direct) / valid, with a 95% Wilson interval; errors are shown, not counted in MR. TTF = mean turn of the first toxic tool.\n",
    );
    for spend in &report.spend {
        let cost = spend.cost.map_or_else(|| "unpriced".to_owned(), |cost| format!("${cost:.4}"));
        out.push_str(&format!(
            "tokens: {} as {}: {} prompt, {} completion, {cost}\n",
            spend.model, spend.role, spend.prompt_tokens, spend.completion_tokens
        ));
    }
    if !report.contrasts.is_empty() {
        out.push('\n');
        out.push_str(&render_contrasts(report));
    }
    if let Some(evals) = &report.evals {
        out.push('\n');
        out.push_str(&evals::render(evals));
    }
    out
}

/// The stress-factor table: every level against its factor's baseline, over paired trials.
pub fn render_contrasts(report: &Report) -> String {
    let header = ["factor", "level vs baseline", "model", "pairs", "incomplete", "MR base", "MR level", "ΔMR", "95% CI", "worse", "better", "McNemar p"];
    let mut lines: Vec<Vec<String>> = vec![header.iter().map(|cell| (*cell).to_owned()).collect()];
    let signed = |value: f64| format!("{:+.1}", value * 100.0);
    for contrast in &report.contrasts {
        let interval = match (contrast.delta_low, contrast.delta_high) {
            (Some(low), Some(high)) => format!("[{}, {}]", signed(low), signed(high)),
            _ => "-".to_owned(),
        };
        lines.push(vec![
            contrast.factor.clone(),
            format!("{} vs {}", contrast.level, contrast.baseline),
            contrast.model.clone(),
            contrast.pairs.to_string(),
            contrast.incomplete.to_string(),
            contrast.baseline_mr.map_or_else(|| "-".to_owned(), percent),
            contrast.level_mr.map_or_else(|| "-".to_owned(), percent),
            contrast.delta.map_or_else(|| "-".to_owned(), |delta| format!("{} pts", signed(delta))),
            interval,
            contrast.worse.to_string(),
            contrast.better.to_string(),
            format!("{:.3}", contrast.mcnemar_p),
        ]);
    }
    let mut out = align(&lines, 3);
    out.push_str(
        "Pairs: the same scenario, model and epoch at both levels, other factors equal; pairs with an error on either side are `incomplete` and left out. ΔMR in percentage points with a paired-bootstrap 95% interval; worse/better = pairs that became misaligned/aligned; McNemar p is exact, two-sided.\n",
    );
    out
}

/// Pads a table's cells into columns (the first `left` columns left-aligned, the rest
/// right-aligned), with a rule under the header row.
pub(crate) fn align(lines: &[Vec<String>], left: usize) -> String {
    let columns = lines.first().map_or(0, Vec::len);
    let widths: Vec<usize> =
        (0..columns).map(|column| lines.iter().map(|line| line[column].chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for (index, line) in lines.iter().enumerate() {
        let padded: Vec<String> = line
            .iter()
            .enumerate()
            .map(|(column, cell)| {
                if column < left { format!("{cell:<width$}", width = widths[column]) } else { format!("{cell:>width$}", width = widths[column]) }
            })
            .collect();
        out.push_str(padded.join("  ").trim_end());
        out.push('\n');
        if index == 0 {
            out.push_str(&widths.iter().map(|width| "-".repeat(*width)).collect::<Vec<_>>().join("  "));
            out.push('\n');
        }
    }
    out
}

/// The report as CSV: one line per row of every level, plus the overall line.
pub fn render_csv(report: &Report) -> String {
    let mut out = String::from(
        "level,model,group,planned,finished,valid,protocol_errors,infrastructure_errors,strategic,direct,failed,robust,misalignment_rate,mr_low,mr_high,mean_turns,mean_turn_to_first_toxic,mean_risk\n",
    );
    let overall = Row { level: "overall".into(), model: "all".into(), group: "all".into(), summary: report.overall.clone() };
    for row in report.rows.iter().chain(std::iter::once(&overall)) {
        let summary = &row.summary;
        let rate = |pick: fn(&metrics::Rate) -> f64| summary.misalignment.as_ref().map(pick);
        let fields = [
            csv_field(&row.level),
            csv_field(&row.model),
            csv_field(&row.group),
            summary.planned.to_string(),
            summary.finished.to_string(),
            summary.valid.to_string(),
            summary.protocol_errors.to_string(),
            summary.infrastructure_errors.to_string(),
            summary.strategic.to_string(),
            summary.direct.to_string(),
            summary.failed.to_string(),
            summary.robust.to_string(),
            optional(rate(|rate| rate.value), 6),
            optional(rate(|rate| rate.low), 6),
            optional(rate(|rate| rate.high), 6),
            optional(summary.mean_turns, 4),
            optional(summary.mean_turn_to_first_toxic, 4),
            optional(summary.mean_risk, 4),
        ];
        out.push_str(&fields.join(","));
        out.push('\n');
    }
    out
}

/// Quotes a CSV field when it needs it (RFC 4180). Written by hand: one function does not
/// justify a CSV dependency.
fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) { format!("\"{}\"", text.replace('"', "\"\"")) } else { text.to_owned() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_are_quoted_only_when_needed() {
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
    }
}
