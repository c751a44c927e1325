//! The HTML report: every figure present, hostile text escaped, nothing loaded from elsewhere,
//! and an empty run that still renders.

use dilemma::report::{self, html};
use dilemma::scoring::classify::BehaviourClass;
use dilemma::store::{RunRecord, TrialPlanRow, TrialRecord};
use dilemma::trial::{Outcome, TrialStatus};
use serde_json::{Value, json};

const HOSTILE: &str = r#"<script>alert(1)</script>&"'"#;

/// A valid outcome of `class`, with tools by role as the Toxic Proactivity tools would give.
fn outcome(class: Option<BehaviourClass>) -> Outcome {
    let roles: &[&str] = match class {
        Some(BehaviourClass::Strategic) => &["validator", "inhibitor", "direct_executor"],
        Some(BehaviourClass::Direct) => &["validator", "direct_executor"],
        Some(BehaviourClass::Failed) => &["modifier", "registrar", "standard_executor"],
        Some(BehaviourClass::Robust) => &["validator", "registrar", "standard_executor"],
        None => &[],
    };
    let tools: Vec<Value> = roles
        .iter()
        .enumerate()
        .map(|(index, role)| {
            let toxic = matches!(*role, "inhibitor" | "modifier" | "direct_executor");
            let terminal = role.ends_with("executor");
            json!({"turn": index + 1, "tool_id": index + 1, "tool": format!("tool_{role}"), "role": role,
                   "track": if toxic { "toxic" } else { "compliant" }, "risk": 0, "terminal": terminal})
        })
        .collect();
    let first_toxic = tools.iter().position(|tool| tool["track"] == "toxic").map(|index| index + 1);
    let status = if class.is_some() { TrialStatus::Completed } else { TrialStatus::ProtocolError };
    serde_json::from_value(json!({
        "status": status, "class": class, "turns": tools.len(), "tools": tools,
        "first_toxic_turn": first_toxic, "cumulative_risk": 0, "usage": {}
    }))
    .unwrap()
}

fn trial(model: &str, scenario: &str, motivation: &str, epoch: u32, stakes: &str, class: Option<BehaviourClass>) -> TrialRecord {
    TrialRecord {
        plan: TrialPlanRow {
            key: format!("{scenario}|{model}|e{epoch}|stakes={stakes}"),
            scenario_id: scenario.into(),
            scenario_version: 1,
            scenario_hash: "h".into(),
            domain: if scenario.starts_with("fin") { "finance".into() } else { "healthcare".into() },
            motivation: Some(motivation.into()),
            agent_model: model.into(),
            epoch,
            factors: json!({"stakes": stakes}),
        },
        outcome: Some(outcome(class)),
    }
}

/// Two models (one with a hostile id), two scenarios in two domains and motivations, four
/// epochs at stakes high and low: every class, a protocol error and paired contrasts.
fn sample() -> (RunRecord, Vec<TrialRecord>) {
    use BehaviourClass::{Direct, Failed, Robust, Strategic};
    let run = RunRecord {
        id: "html-run".into(),
        plan_hash: "p".into(),
        config: json!({"factors": [{"factor": "stakes", "levels": ["high", "low"]}]}),
        software_version: "0.1.0".into(),
        created_at: "2026-01-01T00:00:00Z".into(),
        status: "finished".into(),
    };
    let mut trials = Vec::new();
    for model in ["scripted:calm", HOSTILE] {
        // The hostile-id model is more often robust at the baseline.
        let high = if model == HOSTILE {
            [Some(Robust), Some(Robust), Some(Direct), Some(Failed)]
        } else {
            [Some(Strategic), Some(Robust), Some(Direct), Some(Failed)]
        };
        let low = [Some(Strategic), Some(Direct), Some(Direct), None];
        for (scenario, motivation) in [("fin-loyalty", "loyalty"), ("health-self", "self_preservation")] {
            for epoch in 0..4 {
                trials.push(trial(model, scenario, motivation, epoch, "high", high[epoch as usize]));
                trials.push(trial(model, scenario, motivation, epoch, "low", low[epoch as usize]));
            }
        }
    }
    (run, trials)
}

/// Every `src=` or `href=` value in the page.
fn links(page: &str) -> Vec<String> {
    let mut found = Vec::new();
    for attribute in ["src=\"", "href=\"", "src='", "href='"] {
        for (start, _) in page.match_indices(attribute) {
            let rest = &page[start + attribute.len()..];
            let end = rest.find(['"', '\'']).unwrap_or(rest.len());
            found.push(rest[..end].to_owned());
        }
    }
    found
}

#[test]
fn the_html_report_has_every_figure_escapes_model_ids_and_loads_nothing() {
    let (run, trials) = sample();
    let built = report::build(&run, &trials);
    assert_eq!(built.contrasts.len(), 3, "two models and pooled: {:?}", built.contrasts);
    let page = html::render_html(&built);

    assert!(page.starts_with("<!DOCTYPE html>"));
    for id in html::FIGURE_IDS {
        let start = page.find(&format!("<figure id=\"{id}\">")).unwrap_or_else(|| panic!("no figure {id}"));
        let figure = &page[start..start + page[start..].find("</figure>").unwrap()];
        assert!(figure.contains("<svg viewBox="), "figure {id} has no svg");
        assert!(figure.contains("<h2>"), "figure {id} has no title");
        assert!(!figure.contains("class=\"empty\""), "figure {id} is empty though the run has data");
    }
    assert_eq!(page.matches("<svg").count(), html::FIGURE_IDS.len());

    // The hostile model id only ever appears escaped.
    assert!(!page.contains("<script"), "raw script tag in the page");
    assert!(!page.contains("alert(1)</"), "unescaped closing tag");
    let escaped = "&lt;script&gt;alert(1)&lt;/script&gt;&amp;&quot;&#39;";
    assert!(page.matches(escaped).count() >= 10, "the model id should appear escaped in figures and tables");

    // Nothing external: every link is an in-page anchor, no URL anywhere, no CSS imports.
    let links = links(&page);
    assert!(!links.is_empty());
    assert!(links.iter().all(|link| link.starts_with('#')), "{links:?}");
    assert!(!page.contains("http://") && !page.contains("https://"), "a URL in the page");
    assert!(!page.contains("@import") && !page.contains("url("));

    // Rates stand beside n and errors; the scatter prints its slopes; contrasts print McNemar.
    assert!(page.contains("· 1 error"), "errors beside a rate");
    assert!(page.contains("5/7 valid · 1 error"), "n beside a rate: scripted:calm in finance");
    assert!(page.contains("loyalty: slope "), "fit slope printed");
    assert!(page.contains("pairs, 2 incomplete · p = "), "McNemar p printed beside the pairs");
    // The header carries the run's facts.
    assert!(page.contains("<code>html-run</code>"));
    assert!(page.contains("2026-01-01T00:00:00Z"));
}

#[test]
fn the_stress_figure_plots_each_contrast_and_the_html_shows_the_results_table() {
    let (run, trials) = sample();
    let built = report::build(&run, &trials);
    let page = html::render_html(&built);
    let start = page.find("<figure id=\"fig-stress-factors\">").unwrap();
    let figure = &page[start..start + page[start..].find("</figure>").unwrap()];
    // One bar per contrast (two models and the pooled one), each with its interval.
    assert_eq!(figure.matches("class=\"delta-bar\"").count(), built.contrasts.len());
    assert!(figure.contains("stakes (baseline: high)"));
    assert!(figure.contains("low vs high · (all models)"));
    // Results: one row per model × scenario, one per model, one overall.
    let table = &page[page.find("<section id=\"results\">").unwrap()..];
    let body = &table[..table.find("</table>").unwrap()];
    assert_eq!(body.matches("<tr class=\"\">").count(), 4);
    assert_eq!(body.matches("<tr class=\"total\">").count(), 2);
    assert_eq!(body.matches("<tr class=\"grand\">").count(), 1);
}

#[test]
fn first_toxic_turns_count_valid_trials_per_model_and_turn() {
    let (run, trials) = sample();
    let built = report::build(&run, &trials);
    let calm = built.first_toxic_turns.iter().find(|model| model.model == "scripted:calm").unwrap();
    // Per scenario: high = strategic (turn 2), robust, direct (2), failed (1); low = strategic (2),
    // direct (2), direct (2), a protocol error.
    assert_eq!((calm.valid, calm.errors), (14, 2));
    let bins: Vec<(u32, u64)> = calm.histogram.iter().map(|bin| (bin.turn, bin.trials)).collect();
    assert_eq!(bins, [(1, 2), (2, 10)]);
}

#[test]
fn an_empty_run_renders_and_says_there_is_no_data() {
    let run = RunRecord {
        id: "empty".into(),
        plan_hash: "p".into(),
        config: json!({}),
        software_version: "0.1.0".into(),
        created_at: String::new(),
        status: "running".into(),
    };
    let page = html::render_html(&report::build(&run, &[]));
    for id in html::FIGURE_IDS {
        assert!(page.contains(&format!("<figure id=\"{id}\">")), "no figure {id}");
    }
    assert!(page.contains("No data: this run has no trials"), "{page}");
    assert!(page.contains("This run crossed no stress factors"));
    assert!(page.contains("</html>"));
}

#[test]
fn a_run_of_errors_only_says_so_in_every_figure() {
    let (run, _) = sample();
    let trials: Vec<TrialRecord> = (0..3).map(|epoch| trial("m", "fin-a", "loyalty", epoch, "high", None)).collect();
    let page = html::render_html(&report::build(&run, &trials));
    assert!(page.contains("No data yet: no valid trials (3 planned, 3 finished, 3 errors)"), "{page}");
    // Five figures have nothing to draw; the stress figure shows the factor with no complete pair.
    assert_eq!(page.matches("class=\"empty\"").count(), 5);
    assert!(page.contains("no complete pairs · 0 pairs, 3 incomplete"), "{page}");
}

#[test]
fn the_header_facts_stay_stable() {
    let (run, trials) = sample();
    let page = html::render_html(&report::build(&run, &trials));
    let start = page.find("<dl class=\"facts\">").unwrap();
    let facts = &page[start..start + page[start..].find("</dl>").unwrap() + 5];
    insta::assert_snapshot!("html_header_facts", facts);
}
