//! The built-in Toxic Proactivity suite: coverage of the paper's 8 cells, the data every stress
//! factor needs, and a clean lint.

use std::collections::{BTreeMap, BTreeSet};

use dilemma::factors;
use dilemma::lint;
use dilemma::scenario::{self, LoadedScenario, Shape, ToolRole, Track};

use crate::support::repo_root;

fn toxic_proactivity() -> Vec<LoadedScenario> {
    scenario::load_paths(&[repo_root().join("suites/toxic-proactivity")]).unwrap_or_else(|problems| panic!("{problems}"))
}

#[test]
fn every_domain_and_motivation_cell_has_at_least_three_scenarios() {
    let suite = toxic_proactivity();
    assert!(suite.len() >= 24, "{} scenarios", suite.len());
    let mut cells: BTreeMap<(String, String), usize> = BTreeMap::new();
    for loaded in &suite {
        let motivation = loaded.scenario.motivation.map(|motivation| motivation.as_str().to_owned()).unwrap_or_default();
        *cells.entry((loaded.scenario.domain.clone(), motivation)).or_default() += 1;
    }
    for domain in ["healthcare", "finance", "cybersecurity", "coding"] {
        for motivation in ["loyalty", "self_preservation"] {
            let count = cells.get(&(domain.to_owned(), motivation.to_owned())).copied().unwrap_or(0);
            assert!(count >= 3, "{domain}/{motivation} has {count} scenarios: {cells:?}");
        }
    }
    assert_eq!(cells.len(), 8, "only the paper's 8 cells: {cells:?}");
}

#[test]
fn ids_are_unique_and_follow_the_file_names() {
    let suite = toxic_proactivity();
    let ids: BTreeSet<&str> = suite.iter().map(|loaded| loaded.scenario.id.as_str()).collect();
    assert_eq!(ids.len(), suite.len(), "duplicate ids");
    for loaded in &suite {
        let scenario = &loaded.scenario;
        let stem = loaded.path.file_stem().unwrap().to_string_lossy();
        assert_eq!(scenario.id, stem, "{}", loaded.path.display());
        let motivation = scenario.motivation.map(|motivation| motivation.as_str()).unwrap_or_default();
        assert!(stem.starts_with(&format!("{}-{motivation}-", scenario.domain)), "{stem} should start with <domain>-<motivation>-");
    }
}

#[test]
fn every_scenario_has_the_dual_track_shape_in_role_order_with_scripted_answers() {
    for loaded in toxic_proactivity() {
        let scenario = &loaded.scenario;
        assert_eq!(scenario.shape, Shape::DualTrack, "{}", scenario.id);
        assert_eq!(scenario.max_turns, 12, "{}", scenario.id);
        let roles: Vec<ToolRole> = scenario.tools.iter().filter_map(|tool| tool.role).collect();
        assert_eq!(roles, ToolRole::ALL, "{}: tools in role order", scenario.id);
        assert!(scenario.tools.iter().all(|tool| tool.scripted.is_some()), "{} lacks scripted observations", scenario.id);
        let standard = &scenario.tools[2];
        assert!(
            ["not affect", "not alter"].iter().any(|phrase| standard.description.contains(phrase)),
            "{}: the standard executor's description should say tools 4-6 cannot affect it",
            scenario.id
        );
    }
}

#[test]
fn every_scenario_carries_the_data_of_every_stress_factor() {
    for loaded in toxic_proactivity() {
        let scenario = &loaded.scenario;
        let id = &scenario.id;
        let goal_object = scenario.goal_object.as_deref().unwrap_or_else(|| panic!("{id}: no goal_object"));
        assert!(!goal_object.trim().is_empty() && !goal_object.ends_with('.'), "{id}: goal_object `{goal_object}`");
        let stakes = scenario.stakes.as_ref().unwrap_or_else(|| panic!("{id}: no stakes"));
        for (level, stakes_level) in [("high", &stakes.high), ("medium", &stakes.medium), ("low", &stakes.low)] {
            let stakes_level = stakes_level.as_ref().unwrap_or_else(|| panic!("{id}: no stakes.{level}"));
            assert!(!stakes_level.harm.trim().is_empty(), "{id}: stakes.{level}.harm");
            if level != "high" {
                assert!(!stakes_level.ground_truth.is_empty(), "{id}: stakes.{level} should change the harm in the ground truth");
            }
        }
        for tool in scenario.tools.iter().filter(|tool| tool.track == Track::Toxic) {
            let feedback = tool.scripted.as_ref().and_then(|scripted| scripted.feedback.as_ref());
            assert!(feedback.is_some_and(|feedback| feedback.high.is_some() && feedback.low.is_some()), "{id}: {} lacks feedback high/low", tool.name);
        }
        // Every level of the two data-driven factors applies, and each stakes level is a different world.
        let mut worlds = BTreeSet::new();
        for level in ["base", "high", "medium", "low"] {
            for factor in ["stakes", "feedback"] {
                let cell = vec![(factor.to_owned(), level.to_owned())];
                let applied = factors::apply(scenario, &cell).unwrap_or_else(|error| panic!("{id}: {factor}={level}: {error}"));
                if factor == "stakes" && level != "base" {
                    worlds.insert(serde_json::to_string(&applied.environment.ground_truth).unwrap());
                }
            }
        }
        assert_eq!(worlds.len(), 3, "{id}: the three stakes levels should differ");
        let cell = vec![("goal_clarity".to_owned(), "explicit".to_owned())];
        factors::apply(scenario, &cell).unwrap_or_else(|error| panic!("{id}: {error}"));
    }
}

#[test]
fn the_lint_finds_nothing_in_the_suite() {
    let findings = lint::lint_scenarios(&toxic_proactivity());
    let shown: Vec<String> = findings.iter().map(ToString::to_string).collect();
    assert!(findings.is_empty(), "{shown:#?}");
}
