//! The lint: loaded words, ungrounded identifiers and factor readiness, each finding with its
//! file, line, column and field.

use std::path::Path;

use dilemma::lint;
use dilemma::scenario::{self, LoadedScenario, Problem};

use crate::support::fixture;

fn lint_text(text: &str, name: &str) -> Vec<Problem> {
    let path = Path::new(name);
    let scenario = scenario::load_str(text, path).unwrap_or_else(|problems| panic!("{problems}"));
    lint::lint(&LoadedScenario { path: path.to_path_buf(), scenario }, text)
}

fn lint_fixture(name: &str) -> Vec<Problem> {
    lint_text(&std::fs::read_to_string(fixture(name)).unwrap(), name)
}

fn lines(findings: &[Problem]) -> Vec<String> {
    findings.iter().map(|finding| format!("{}:{} {}: {}", finding.line, finding.column, finding.field, finding.message)).collect()
}

#[test]
fn the_clean_fixture_has_no_findings() {
    assert_eq!(lines(&lint_fixture("lint-clean.yaml")), Vec::<String>::new());
}

#[test]
fn each_kind_of_finding_is_named_at_its_line_and_field() {
    assert_eq!(
        lines(&lint_fixture("lint-findings.yaml")),
        vec![
            "5:1 goal_object: no `goal_object`, which the goal_clarity factor needs (this suite uses factors)",
            "13:3 stakes.low: no `stakes.low`, which --factor stakes=low needs",
            "28:65 agent.modules[2].body: identifier `TR-6` appears nowhere in environment.ground_truth; the environment cannot ground it (a typo, or a fact missing from the records)",
            "72:9 tools[3].scripted.feedback.high: toxic tool `pause_hold_alerts` has no `scripted.feedback.high`, which --factor feedback=high needs with the scripted environment",
            "74:69 tools[4].description: loaded word \"bypass\" in a tool description; describe what the tool does in neutral, technical terms",
            "102:9 tools[5].scripted.feedback.low: toxic tool `load_pallet` has no `scripted.feedback.low`, which --factor feedback=low needs with the scripted environment",
        ]
    );
    // The findings point at the offending text itself.
    let text = std::fs::read_to_string(fixture("lint-findings.yaml")).unwrap();
    let line = |number: usize| text.lines().nth(number - 1).unwrap().to_owned();
    assert!(line(28)[64..].starts_with("TR-6"), "{}", line(28));
    assert!(line(74)[68..].starts_with("bypass"), "{}", line(74));
}

#[test]
fn an_ungrounded_enum_value_is_found_in_the_parameters() {
    let text = std::fs::read_to_string(fixture("lint-clean.yaml")).unwrap().replace("enum: [TR-5]", "enum: [TR-51]");
    let found = lint_text(&text, "enum.yaml");
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].field, "tools[5].parameters.properties.truck_id.enum[0]");
    let line = text.lines().nth(found[0].line - 1).unwrap();
    assert_eq!(&line[found[0].column - 1..found[0].column + 4], "TR-51", "{line}");
}

#[test]
fn loaded_words_are_whole_words_in_any_case_and_phrases_count() {
    let clean = std::fs::read_to_string(fixture("lint-clean.yaml")).unwrap();
    let text = clean
        .replace("Pauses hold alerts for a pallet.", "Pauses hold alerts for a pallet (a quick COVER-UP).")
        .replace("Reads the hold record of a pallet.", "Reads the hold record of a pallet; harmonised, bypassable fields.");
    let found = lint_text(&text, "words.yaml");
    let messages: Vec<(&str, &str)> = found.iter().map(|finding| (finding.field.as_str(), finding.message.as_str())).collect();
    assert_eq!(messages.len(), 1, "{messages:?}");
    assert_eq!(messages[0].0, "tools[3].description");
    assert!(messages[0].1.starts_with("loaded word \"cover up\""), "{}", messages[0].1);
}

#[test]
fn factor_readiness_applies_to_a_whole_folder_once_one_scenario_uses_factors() {
    let folder = tempfile::tempdir().unwrap();
    std::fs::copy(fixture("tiny-dual-track.yaml"), folder.path().join("tiny-dual-track.yaml")).unwrap();
    let load = || scenario::load_paths(&[folder.path().to_path_buf()]).unwrap_or_else(|problems| panic!("{problems}"));

    // Alone, a scenario without factor data is not asked for any.
    assert_eq!(lines(&lint::lint_scenarios(&load())), Vec::<String>::new());

    // Next to one that has factor data, it is.
    std::fs::copy(fixture("lint-clean.yaml"), folder.path().join("lint-clean.yaml")).unwrap();
    let found = lint::lint_scenarios(&load());
    assert!(found.iter().all(|finding| finding.file.ends_with("tiny-dual-track.yaml")), "{found:?}");
    let fields: Vec<&str> = found.iter().map(|finding| finding.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "goal_object",
            "stakes",
            "tools[3].scripted.feedback.high",
            "tools[3].scripted.feedback.low",
            "tools[4].scripted.feedback.high",
            "tools[4].scripted.feedback.low",
            "tools[5].scripted.feedback.high",
            "tools[5].scripted.feedback.low",
        ]
    );
}

#[test]
fn dates_times_and_ordinary_words_are_not_identifiers() {
    let text = std::fs::read_to_string(fixture("lint-clean.yaml")).unwrap().replace(
        "Key identifiers: Pallet=PL-208",
        "Due 2025-06-02T21:30 or 22:00-22:15, a 30-day, 3x-stacked, read-only, non-EU, Tier-2 load of 1,000-case lots. Key identifiers: Pallet=PL-208",
    );
    assert_eq!(lines(&lint_text(&text, "prose.yaml")), Vec::<String>::new());
}
