//! Loading and validating scenario files: every problem, with file, line, column and field.

use std::path::Path;

use dilemma::scenario::{self, Problem};

use crate::support::{fixture, repo_root};

fn problems(text: &str) -> Vec<Problem> {
    match scenario::load_str(text, Path::new("test.yaml")) {
        Ok(_) => panic!("expected problems"),
        Err(problems) => problems.0,
    }
}

fn lines(problems: &[Problem]) -> Vec<String> {
    problems.iter().map(|problem| format!("{}:{} {}: {}", problem.line, problem.column, problem.field, problem.message)).collect()
}

fn tiny_text() -> String {
    std::fs::read_to_string(fixture("tiny-dual-track.yaml")).unwrap()
}

#[test]
fn every_shipped_scenario_loads() {
    let suites = repo_root().join("suites");
    let loaded = scenario::load_paths(&[suites]).unwrap_or_else(|problems| panic!("{problems}"));
    assert!(loaded.len() >= 8, "{} scenarios", loaded.len());
    let toxic: Vec<_> = loaded.iter().filter(|loaded| loaded.path.to_string_lossy().contains("toxic-proactivity")).collect();
    for domain in ["healthcare", "finance", "cybersecurity", "coding"] {
        for motivation in ["loyalty", "self_preservation"] {
            assert!(
                toxic.iter().any(|loaded| loaded.scenario.domain == domain
                    && loaded.scenario.motivation.map(|m| m.as_str()) == Some(motivation)),
                "no {domain}/{motivation} scenario"
            );
        }
    }
    for loaded in &toxic {
        let stem = loaded.path.file_stem().unwrap().to_string_lossy();
        assert_eq!(loaded.scenario.id, stem, "the id of {} should be its file name", loaded.path.display());
        assert!(loaded.scenario.tools.iter().all(|tool| tool.scripted.is_some()), "{} lacks scripted observations", stem);
    }
}

#[test]
fn three_mistakes_are_all_named_with_their_lines() {
    let found = scenario::load_file(&fixture("broken-three-mistakes.yaml")).unwrap_err().0;
    let found_lines = lines(&found);
    assert_eq!(found_lines.len(), 3, "{found_lines:?}");
    // The hint lists the tool fields in the format's order (the list grows with the format).
    assert!(
        found_lines[0].starts_with("86:5 tools[0].colour: unknown field `colour`; expected one of: name, description, parameters, track, role, risk, terminal, behaviour, scripted"),
        "{found_lines:?}"
    );
    assert_eq!(found_lines[1..], ["148:11 tools[3].risk: risk 5 does not match role `inhibitor`, whose risk is 4", "160:5 tools[4]: missing required field `behaviour`"]);
    let shown = found[0].to_string();
    assert!(shown.contains("broken-three-mistakes.yaml:86:5: tools[0].colour: unknown field `colour`; expected one of: name, description,"), "{shown}");
}

#[test]
fn unknown_top_level_fields_and_bad_enums_are_reported() {
    let text = tiny_text().replace("domain: logistics", "domain: logistics\ncolor: blue").replace("motivation: loyalty", "motivation: greed");
    let found = lines(&problems(&text));
    assert_eq!(
        found,
        vec![
            "6:1 color: unknown field `color`; expected one of: id, version, title, description, domain, motivation, shape, max_turns, agent, environment, tools, goal_object, stakes, scoring, user",
            "7:13 motivation: \"greed\" is not one of \"loyalty\", \"self_preservation\"",
        ]
    );
}

#[test]
fn yaml_syntax_errors_name_the_line() {
    let found = problems("id: a\ntools: [unclosed\n");
    assert_eq!(found.len(), 1);
    assert!(found[0].message.starts_with("invalid YAML"), "{}", found[0].message);
    assert!(found[0].line >= 2, "line {}", found[0].line);
}

#[test]
fn duplicate_keys_are_reported() {
    let text = tiny_text().replace("version: 1", "version: 1\nversion: 2");
    let found = lines(&problems(&text));
    assert_eq!(found, vec!["4:1 : invalid YAML: duplicated key in mapping"]);
}

#[test]
fn dual_track_rules_are_enforced() {
    // Make the inhibitor compliant and give the registrar a terminal flag.
    let text = tiny_text()
        .replace("    track: toxic\n    role: inhibitor", "    track: compliant\n    role: inhibitor")
        .replace("    role: registrar\n", "    role: registrar\n    terminal: true\n");
    let found = lines(&problems(&text));
    for expected in [
        "tools[3].track: role `inhibitor` belongs to the toxic track, not compliant",
        "tools: a dual_track scenario has 3 compliant tools, this one has 4",
        "tools: a dual_track scenario has 3 toxic tools, this one has 2",
        "tools: a dual_track scenario has exactly one terminal compliant tool, this one has 2",
        "tools[1].terminal: role `registrar` is not terminal",
    ] {
        assert!(found.iter().any(|line| line.contains(expected)), "missing {expected:?} in {found:#?}");
    }
}

#[test]
fn duplicate_tool_names_and_bad_parameter_schemas_are_reported() {
    let text = tiny_text()
        .replace("name: log_release_request", "name: read_hold_record")
        .replace("properties: {max_temp_c: {type: number}}", "properties: {max_temp_c: {type: numeric}}");
    let found = lines(&problems(&text));
    assert!(found.iter().any(|line| line.contains("tools[1].name: tool name `read_hold_record` is used twice")), "{found:#?}");
    assert!(found.iter().any(|line| line.contains("tools[4].parameters: not a valid JSON Schema")), "{found:#?}");
}

#[test]
fn open_shape_scenarios_need_no_roles() {
    let text = tiny_text().replace("shape: dual_track", "shape: open").replace("    role: inhibitor\n", "");
    let loaded = scenario::load_str(&text, Path::new("open.yaml")).unwrap_or_else(|problems| panic!("{problems}"));
    assert_eq!(loaded.tools[3].role, None);
    assert_eq!(loaded.tools[3].risk(), 0);
    assert!(!loaded.tools[3].is_terminal());
}

#[test]
fn missing_paths_and_empty_folders_are_reported() {
    let missing = scenario::load_paths(&["no/such/suite".into()]).unwrap_err().0;
    assert_eq!(missing[0].message, "no such file or folder");
    let empty = tempfile::tempdir().unwrap();
    let none = scenario::load_paths(&[empty.path().to_path_buf()]).unwrap_err().0;
    assert!(none[0].message.contains("no scenario files"), "{}", none[0].message);
}

#[test]
fn duplicate_ids_across_files_are_reported() {
    let folder = tempfile::tempdir().unwrap();
    std::fs::write(folder.path().join("a.yaml"), tiny_text()).unwrap();
    std::fs::write(folder.path().join("b.yaml"), tiny_text()).unwrap();
    let found = scenario::load_paths(&[folder.path().to_path_buf()]).unwrap_err().0;
    assert_eq!(found.len(), 1);
    assert!(found[0].message.starts_with("id `tiny-dual-track` is already used by"), "{}", found[0].message);
}

#[test]
fn defaults_apply() {
    let text = tiny_text().replace("max_turns: 4\n", "");
    let loaded = scenario::load_str(&text, Path::new("t.yaml")).unwrap();
    assert_eq!(loaded.max_turns, scenario::DEFAULT_MAX_TURNS);
    assert_eq!(loaded.tools[5].risk(), 10);
    assert!(loaded.tools[5].is_terminal());
    assert_eq!(loaded.tools[1].parameters.get("type").and_then(|kind| kind.as_str()), Some("object"));
}
