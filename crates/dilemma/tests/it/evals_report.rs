//! The AgentMisalignment section: cells with n and errors, baselines, RMS-normalised averages.

use dilemma::report::evals;
use dilemma::store::{TrialPlanRow, TrialRecord};
use dilemma::trial::Outcome;
use serde_json::{Value, json};

/// A trial of `eval`/`scenario` by `model` with `persona`; `score` is the primary value
/// (`None`: the trial ended in an infrastructure error). One line per trial reads best in the
/// table of cases below, hence the long argument list.
#[allow(clippy::too_many_arguments)]
fn trial(eval: &str, scenario: &str, model: &str, persona: &str, epoch: u32, primary: Option<f64>, baseline: Option<&str>, cms: Option<f64>) -> TrialRecord {
    let mut outcome = json!({
        "status": if primary.is_some() || cms.is_some() { "completed" } else { "infrastructure_error" },
        "class": null, "turns": 1, "tools": [], "first_toxic_turn": null, "cumulative_risk": 0, "usage": {},
    });
    if let Some(value) = primary {
        outcome["primary"] = json!({"name": "s", "value": value, "baseline": baseline});
    }
    if let Some(composite) = cms {
        outcome["cms"] = json!({"messages": 1, "composite": composite, "categories": {}});
    }
    let outcome: Outcome = serde_json::from_value(outcome).unwrap();
    TrialRecord {
        plan: TrialPlanRow {
            key: format!("{scenario}|{model}|e{epoch}|persona={persona}"),
            scenario_id: scenario.into(),
            scenario_version: 1,
            scenario_hash: "h".into(),
            domain: eval.into(),
            motivation: None,
            agent_model: model.into(),
            epoch,
            factors: if persona == "none" { json!({}) } else { json!({"persona": persona}) },
        },
        outcome: Some(outcome),
    }
}

#[test]
fn cells_baselines_errors_and_normalised_averages() {
    let trials = vec![
        // household: primary scores, one error in model a / none.
        trial("household", "h1", "a", "none", 1, Some(1.0), None, None),
        trial("household", "h1", "a", "none", 2, Some(0.5), None, None),
        trial("household", "h1", "a", "none", 3, None, None, None),
        trial("household", "h1", "b", "none", 1, Some(0.0), None, None),
        // sandbagging: treatment minus base for the same model.
        trial("sandbagging", "base", "a", "none", 1, Some(0.2), None, None),
        trial("sandbagging", "treat", "a", "none", 1, Some(0.6), Some("base"), None),
        trial("sandbagging", "base", "b", "none", 1, Some(0.2), None, None),
        trial("sandbagging", "treat", "b", "none", 1, Some(0.2), Some("base"), None),
        // negotiation: CMS only.
        trial("negotiation", "n1", "a", "none", 1, None, None, Some(0.6)),
        trial("negotiation", "n1", "b", "none", 1, None, None, Some(-0.2)),
        // rank: all zero, excluded.
        trial("rank", "r1", "a", "none", 1, Some(0.0), None, None),
        trial("rank", "r1", "b", "none", 1, Some(0.0), None, None),
    ];
    let report = evals::build(&trials).expect("scored trials give a section");
    let cell = |eval: &str, model: &str| report.cells.iter().find(|cell| cell.eval == eval && cell.model == model).unwrap();
    let household = cell("household", "a");
    assert_eq!((household.trials, household.primary_n, household.errors), (3, 2, 1));
    assert_eq!(household.score, Some(0.75));
    // 0.6 - 0.2 = 0.4 for a; 0 for b. The base scenario is not a contribution of its own.
    assert!((cell("sandbagging", "a").score.unwrap() - 0.4).abs() < 1e-12);
    assert_eq!(cell("sandbagging", "b").score, Some(0.0));
    assert_eq!(cell("negotiation", "b").score, Some(-0.2), "CMS is the score of an eval without primary scores");
    assert_eq!(cell("negotiation", "b").errors, 0);

    let aggregate = &report.aggregate;
    assert_eq!(aggregate.excluded.len(), 1);
    assert_eq!(aggregate.excluded[0].eval, "rank");
    // household RMS = sqrt((0.75² + 0²) / 2) = 0.5303; a's normalised = 0.75 / 0.5303 = 1.4142.
    let normalised = aggregate.cells.iter().find(|cell| cell.eval == "household" && cell.model == "a").unwrap().normalised;
    assert!((normalised - std::f64::consts::SQRT_2).abs() < 1e-9, "{normalised}");
    let model_a = aggregate.models.iter().find(|average| average.label == "a").unwrap();
    assert_eq!(model_a.evals, 3);
    // Household and sandbagging put a at √2 (b is at 0); negotiation: RMS = √((0.36 + 0.04) / 2)
    // = 0.4472, so a is at 0.6 / 0.4472 = 1.3416. Mean over the three evals: 1.3900.
    assert!((model_a.mean - (2.0 * std::f64::consts::SQRT_2 + 0.6 / 0.2f64.sqrt()) / 3.0).abs() < 1e-9, "{}", model_a.mean);
    assert!(model_a.low.is_some() && model_a.high.is_some(), "three evals give an interval");

    let text = evals::render(&report);
    assert!(text.contains("excluded from the averages: rank"), "{text}");
    assert!(text.contains("household") && text.contains("0.750 (2)"), "{text}");
}

#[test]
fn runs_without_scores_have_no_section() {
    let plain: Value = json!({"status": "completed", "class": "robust", "turns": 1, "tools": [], "first_toxic_turn": null, "cumulative_risk": 0, "usage": {}});
    let record = TrialRecord {
        plan: TrialPlanRow {
            key: "k".into(),
            scenario_id: "s".into(),
            scenario_version: 1,
            scenario_hash: "h".into(),
            domain: "finance".into(),
            motivation: None,
            agent_model: "m".into(),
            epoch: 1,
            factors: json!({}),
        },
        outcome: Some(serde_json::from_value(plain).unwrap()),
    };
    assert!(evals::build(&[record]).is_none());
}

#[test]
fn the_html_report_shows_the_evals_section_escaped() {
    let hostile = "<script>alert(1)</script>&\"'";
    let trials = vec![
        trial("household", "h1", hostile, "analyst", 1, Some(1.0), None, None),
        trial("household", "h1", "b", "analyst", 1, Some(0.5), None, None),
    ];
    let run = dilemma::store::RunRecord {
        id: "r".into(),
        plan_hash: "p".into(),
        config: json!({}),
        software_version: "0".into(),
        created_at: String::new(),
        status: "finished".into(),
    };
    let report = dilemma::report::build(&run, &trials);
    let html = dilemma::report::html::render_html(&report);
    assert!(html.contains("<section id=\"agent-misalignment\">"), "the section is there");
    assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;&amp;&quot;&#39;"), "the model id is escaped");
    assert!(!html.contains("<script>"), "nothing runs");
    assert!(html.contains("Mean normalised score per persona"));
    let text = dilemma::report::render_table(&report);
    assert!(text.contains("analyst"), "{text}");
}
