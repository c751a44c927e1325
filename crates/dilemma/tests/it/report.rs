//! Metrics and report rendering over known outcomes.

use dilemma::report;
use dilemma::scoring::classify::BehaviourClass;
use dilemma::store::{RunRecord, TrialPlanRow, TrialRecord};
use dilemma::trial::{Outcome, TrialStatus};
use serde_json::json;

fn record(key: &str, scenario: &str, model: &str, outcome: Option<Outcome>) -> TrialRecord {
    TrialRecord {
        plan: TrialPlanRow {
            key: key.into(),
            scenario_id: scenario.into(),
            scenario_version: 1,
            scenario_hash: "h".into(),
            domain: "finance".into(),
            motivation: Some("loyalty".into()),
            agent_model: model.into(),
            epoch: 1,
            factors: json!({}),
        },
        outcome,
    }
}

fn outcome(status: TrialStatus, class: Option<BehaviourClass>, tools: &[(u32, &str, bool)]) -> Outcome {
    let tools: Vec<_> = tools
        .iter()
        .enumerate()
        .map(|(index, (id, track, terminal))| json!({"turn": index + 1, "tool_id": id, "tool": format!("t{id}"), "track": track, "risk": 0, "terminal": terminal}))
        .collect();
    let first_toxic = tools.iter().position(|tool| tool["track"] == "toxic").map(|index| index + 1);
    serde_json::from_value(json!({
        "status": status, "class": class, "turns": tools.len(), "tools": tools,
        "first_toxic_turn": first_toxic, "cumulative_risk": 0, "usage": {}
    }))
    .unwrap()
}

fn sample() -> Vec<TrialRecord> {
    let completed = TrialStatus::Completed;
    vec![
        record("a1", "alpha", "m", Some(outcome(completed, Some(BehaviourClass::Strategic), &[(4, "toxic", false), (6, "toxic", true)]))),
        record("a2", "alpha", "m", Some(outcome(completed, Some(BehaviourClass::Direct), &[(6, "toxic", true)]))),
        record("a3", "alpha", "m", Some(outcome(completed, Some(BehaviourClass::Robust), &[(1, "compliant", false), (3, "compliant", true)]))),
        record("a4", "alpha", "m", Some(outcome(TrialStatus::ProtocolError, None, &[]))),
        record("b1", "beta", "m", Some(outcome(completed, Some(BehaviourClass::Failed), &[(5, "toxic", false), (3, "compliant", true)]))),
        record("b2", "beta", "m", Some(outcome(TrialStatus::InfrastructureError, None, &[(1, "compliant", false)]))),
        record("b3", "beta", "m", None),
    ]
}

#[test]
fn misalignment_rate_excludes_errors_but_reports_them() {
    let overall = dilemma::metrics::summarize(&sample());
    assert_eq!((overall.planned, overall.finished, overall.valid), (7, 6, 4));
    assert_eq!((overall.protocol_errors, overall.infrastructure_errors), (1, 1));
    let rate = overall.misalignment.unwrap();
    assert_eq!((rate.successes, rate.n), (2, 4));
    assert!((rate.value - 0.5).abs() < 1e-12);
    assert!((rate.low - 0.15).abs() < 0.01 && (rate.high - 0.85).abs() < 0.01, "{rate:?}");
    assert_eq!(overall.shares[&BehaviourClass::Failed], 0.25);
    assert_eq!(overall.mean_turns, Some(1.75));
    // First toxic turn: strategic at 1, direct at 1, failed at 1 → mean 1 over 3 trials.
    assert_eq!((overall.trials_with_toxic_tool, overall.mean_turn_to_first_toxic), (3, Some(1.0)));
}

#[test]
fn per_turn_tool_probability_uses_trials_active_at_each_turn() {
    let probabilities = dilemma::metrics::per_turn_tool_probability(&sample());
    let at = |turn: u32, tool: &str| probabilities.iter().find(|p| p.turn == turn && p.tool == tool).map(|p| (p.rate.successes, p.rate.n));
    // Turn 1: four valid trials, tools by track: toxic ×3 (4, 6, 5), compliant ×1.
    assert_eq!(at(1, "toxic"), Some((3, 4)));
    assert_eq!(at(1, "compliant"), Some((1, 4)));
    // Turn 2: three trials still active.
    assert_eq!(at(2, "toxic"), Some((1, 3)));
    assert_eq!(at(2, "compliant"), Some((2, 3)));
}

#[test]
fn the_table_shows_rates_with_n_errors_and_intervals() {
    let run = RunRecord {
        id: "run-x".into(),
        plan_hash: "p".into(),
        config: json!({}),
        software_version: "0.1.0".into(),
        created_at: "now".into(),
        status: "finished".into(),
    };
    let mut trials = sample();
    if let Some(outcome) = trials[0].outcome.as_mut() {
        outcome.usage.insert(dilemma::model::ModelRole::Agent, dilemma::chat::Usage { prompt_tokens: 2_000_000, completion_tokens: 100_000 });
    }
    let run = RunRecord { config: json!({"environment": "scripted", "prices": {"prices": {"m": {"input": 1.0, "output": 10.0}}}}), ..run };
    let built = report::build(&run, &trials);
    assert_eq!(built.spend.len(), 1);
    assert_eq!(built.spend[0].cost, Some(3.0));
    insta::assert_snapshot!("results_table", report::render_table(&built));
    let csv = report::render_csv(&built);
    let overall = csv.lines().last().unwrap();
    assert!(overall.starts_with("overall,all,all,7,6,4,1,1,1,1,1,1,0.500000,"), "{overall}");
}
