//! The commands a user runs first: check, list, run, report, runs, show, and their errors.

use crate::support::{dilemma, fixture, run, script};

#[test]
fn check_names_all_three_mistakes_with_lines_and_fails() {
    let work = tempfile::tempdir().unwrap();
    let (code, stdout, stderr) = run(dilemma(work.path()).args(["check"]).arg(fixture("broken-three-mistakes.yaml")));
    assert_eq!(code, 1, "{stdout}{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    assert!(lines[0].contains("broken-three-mistakes.yaml:86:5: tools[0].colour: unknown field `colour`; expected one of: name, description, parameters, track, role, risk, terminal, behaviour, scripted"), "{stdout}");
    assert!(lines[1].ends_with(":148:11: tools[3].risk: risk 5 does not match role `inhibitor`, whose risk is 4"), "{stdout}");
    assert!(lines[2].ends_with(":160:5: tools[4]: missing required field `behaviour`"), "{stdout}");
    assert_eq!(stderr.trim(), "error: 3 problem(s) in 1 file(s)");
}

#[test]
fn check_passes_the_shipped_suites() {
    let work = tempfile::tempdir().unwrap();
    let (code, stdout, stderr) = run(dilemma(work.path()).args(["check", "suites"]));
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("scenario(s), no problems"), "{stdout}");
}

#[test]
fn check_strict_passes_the_toxic_proactivity_suite() {
    let work = tempfile::tempdir().unwrap();
    let (code, stdout, stderr) = run(dilemma(work.path()).args(["check", "--strict", "suites/toxic-proactivity"]));
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(!stdout.contains("warning:"), "{stdout}");
    assert!(stdout.contains("scenario(s), no problems, 0 lint warning(s)"), "{stdout}");
}

#[test]
fn check_prints_lint_warnings_and_strict_fails_on_them() {
    let work = tempfile::tempdir().unwrap();
    let findings = fixture("lint-findings.yaml");
    let (code, stdout, stderr) = run(dilemma(work.path()).arg("check").arg(&findings));
    assert_eq!(code, 0, "warnings alone do not fail without --strict: {stdout}{stderr}");
    let warnings: Vec<&str> = stdout.lines().filter(|line| line.contains(": warning: ")).collect();
    assert_eq!(warnings.len(), 6, "{stdout}");
    assert!(warnings[4].ends_with("lint-findings.yaml:74:69: tools[4].description: warning: loaded word \"bypass\" in a tool description; describe what the tool does in neutral, technical terms"), "{stdout}");
    assert!(stdout.contains("1 scenario(s), no problems, 6 lint warning(s)"), "{stdout}");

    let (code, stdout, stderr) = run(dilemma(work.path()).args(["check", "--strict"]).arg(&findings));
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(stdout.contains("lint-findings.yaml:28:65: agent.modules[2].body: warning: identifier `TR-6` appears nowhere in environment.ground_truth"), "{stdout}");
    assert_eq!(stderr.trim(), "error: 6 lint warning(s) (--strict)");

    let (code, _, stderr) = run(dilemma(work.path()).args(["check", "--strict"]).arg(fixture("lint-clean.yaml")));
    assert_eq!(code, 0, "{stderr}");
}

#[test]
fn list_shows_the_suites_and_their_scenarios() {
    let work = tempfile::tempdir().unwrap();
    let (code, stdout, _) = run(dilemma(work.path()).arg("list"));
    assert_eq!(code, 0);
    assert!(stdout.contains("toxic-proactivity  ("), "{stdout}");
    assert!(stdout.contains("healthcare-loyalty-trial-enrollment-cutoff"), "{stdout}");
}

#[test]
fn a_scripted_run_prints_the_table_and_writes_json_and_csv() {
    let work = tempfile::tempdir().unwrap();
    let agent = script(work.path(), "agent.yaml", "replies:\n  - tool_id: 1\n  - tool_id: 4\n  - tool_id: 6\n");
    let out = work.path().join("out");
    let (code, stdout, stderr) = run(dilemma(work.path())
        .args(["run", "toxic-proactivity", "--run", "cli-run", "--epochs", "2"])
        .arg("--model")
        .arg(format!("agent=scripted:{}", agent.display()))
        .arg("--out")
        .arg(&out));
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stderr.contains("starting run cli-run: 48 trials, 0 already finished"), "{stderr}");
    let total: Vec<&str> = stdout.lines().find(|line| line.starts_with("(all models)")).unwrap().split_whitespace().collect();
    assert_eq!(total, ["(all", "models)", "(all", "scenarios)", "48", "48", "0", "100.0%", "[92.6%,", "100.0%]", "48", "0", "0", "0", "3.0", "2.0"]);
    assert!(stdout.contains("run cli-run (finished): 48 of 48 trials finished; 48 valid, 0 protocol errors, 0 infrastructure errors."), "{stdout}");
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(json["overall"]["strategic"], 48);
    let csv = std::fs::read_to_string(out.join("report.csv")).unwrap();
    assert!(csv.lines().last().unwrap().starts_with("overall,all,all,48,48,48,0,0,48,0,0,0,1.000000,"), "{csv}");

    // The same run id again: nothing to do, same table.
    let (code, stdout, stderr) = run(dilemma(work.path())
        .args(["run", "toxic-proactivity", "--run", "cli-run", "--epochs", "2"])
        .arg("--model")
        .arg(format!("agent=scripted:{}", agent.display()))
        .arg("--out")
        .arg(&out));
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("resuming run cli-run: 48 trials, 48 already finished"), "{stderr}");
    assert!(stdout.contains("48 of 48 trials finished"));

    // `report` rebuilds it from the store; `runs` lists it; `show` prints a transcript.
    let (code, stdout, _) = run(dilemma(work.path()).args(["report", "cli-run", "--out"]).arg(&out));
    assert_eq!(code, 0);
    assert!(stdout.contains("100.0%"));
    let (code, stdout, _) = run(dilemma(work.path()).arg("runs"));
    assert_eq!(code, 0);
    assert!(stdout.contains("cli-run") && stdout.contains("48/48 trials finished"), "{stdout}");
    let (code, stdout, stderr) = run(dilemma(work.path()).args(["show", "cli-run", "coding-loyalty-sdk-telemetry-release|"]));
    assert_eq!(code, 1, "two epochs match: {stdout}");
    assert!(stderr.contains("matches 2 trials"), "{stderr}");
    let key = format!("coding-loyalty-sdk-telemetry-release|scripted:{}|e1", agent.display());
    let (code, stdout, stderr) = run(dilemma(work.path()).args(["show", "cli-run", &key]));
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("── turn 3 ──"), "{stdout}");
    assert!(stdout.contains("outcome: strategic after 3 turns (risk 14)"), "{stdout}");
    // `--json`: the whole stored transcript, each call's full request rebuilt from the store's
    // compact form (the third call sent the whole conversation so far).
    let (code, stdout, stderr) = run(dilemma(work.path()).args(["show", "cli-run", &key, "--json"]));
    assert_eq!(code, 0, "{stderr}");
    let transcript: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(transcript["trial"], key.as_str());
    let turns = transcript["turns"].as_array().unwrap();
    assert_eq!(turns.len(), 3);
    let messages = turns[2]["calls"][0]["request"]["messages"].as_array().unwrap();
    assert_eq!(messages[0]["speaker"], "system");
    assert!(messages.len() >= 6, "system, opening and two earlier turns: {messages:?}");
    assert!(turns[2]["calls"][0]["result"]["Ok"].is_object(), "{}", turns[2]["calls"][0]);
}

#[test]
fn user_errors_say_what_to_do() {
    let cases: &[(&[&str], &str)] = &[
        (&["run", "no-such-suite"], "no suite or path `no-such-suite`"),
        (&["run", "--model", "agent"], "--model agent: write ROLE=SPEC, e.g. --model agent=local:smollm2"),
        (&["run", "--model", "critic=local:smollm2"], "unknown role `critic`"),
        (&["run", "--model", "agent=gpt4"], "model spec `gpt4` has no provider"),
        (&["run", "--model", "agent=carrier-pigeon:fast"], "unknown model provider `carrier-pigeon`"),
        (&["run", "--model", "agent=scripted:/no/such/file.yaml"], "cannot read scripted model file /no/such/file.yaml"),
        (&["report", "nope"], "no store at"),
        (&["run", "--model", "agent=anthropic:claude-x"], "ANTHROPIC_API_KEY"),
        (&["check", "no/such/path"], "no/such/path:1:1: no such file or folder"),
        (&["run", "--factor", "mood=high"], "--factor mood=high: unknown factor `mood`; factors are stakes, feedback"),
        (&["run", "--factor", "stakes=extreme"], "unknown level `extreme` of factor stakes; its levels are base, high, medium, low"),
        (&["run", "--factor", "stakes=high", "--factor", "stakes=low"], "factor stakes is given twice"),
        (&["run", "--model", "agent=openai:m@http://127.0.0.1:9/v1#json=grammar"], "unknown json mode `grammar`"),
    ];
    for (arguments, expected) in cases {
        let work = tempfile::tempdir().unwrap();
        let (code, stdout, stderr) = run(dilemma(work.path()).args(*arguments));
        assert_ne!(code, 0, "{arguments:?} should fail");
        assert!(format!("{stdout}{stderr}").contains(expected), "{arguments:?}: expected {expected:?} in\n{stdout}{stderr}");
    }
}

#[cfg(feature = "local-llm")]
#[test]
fn a_missing_embedded_model_names_the_fix() {
    let work = tempfile::tempdir().unwrap();
    let (code, _, stderr) = run(dilemma(work.path())
        .env("DILEMMA_MODEL_DIR", work.path())
        .args(["run", "--model", "agent=local:smollm2"]));
    assert_eq!(code, 1);
    assert!(stderr.contains("make model"), "{stderr}");
}

#[test]
fn a_resumed_run_with_other_arguments_is_refused() {
    let work = tempfile::tempdir().unwrap();
    let agent = script(work.path(), "agent.yaml", "replies:\n  - tool_id: 3\n");
    let spec = format!("agent=scripted:{}", agent.display());
    let first = run(dilemma(work.path()).args(["run", "--run", "same", "--model", &spec]).arg(fixture("tiny-dual-track.yaml")));
    assert_eq!(first.0, 0, "{}", first.2);
    let (code, _, stderr) = run(dilemma(work.path()).args(["run", "--run", "same", "--epochs", "3", "--model", &spec]).arg(fixture("tiny-dual-track.yaml")));
    assert_eq!(code, 1);
    assert!(stderr.contains("run `same` already exists with a different plan"), "{stderr}");
}

#[test]
fn a_factor_run_prints_paired_contrasts() {
    let work = tempfile::tempdir().unwrap();
    let agent = script(work.path(), "agent.yaml", "replies:\n  - tool_id: 1\n  - tool_id: 3\n");
    let (code, stdout, stderr) = run(dilemma(work.path())
        .arg("run")
        .arg(fixture("tiny-factors.yaml"))
        .args(["--run", "factor-run", "--epochs", "3", "--factor", "stakes=high,medium,low", "--factor", "feedback=high"])
        .arg("--model")
        .arg(format!("agent=scripted:{}", agent.display())));
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stderr.contains("starting run factor-run: 9 trials"), "{stderr}");
    // A compliant agent: nothing changes between levels, and the table says so with its n.
    let line = |level: &str| stdout.lines().find(|line| line.starts_with("stakes") && line.contains(level)).unwrap_or_default().to_owned();
    let medium = line("medium vs high");
    let cells: Vec<&str> = medium.split_whitespace().collect();
    // factor, level, "vs", baseline, model, then the numbers.
    assert_eq!(cells.get(5..).unwrap_or_default(), ["3", "0", "0.0%", "0.0%", "+0.0", "pts", "[+0.0,", "+0.0]", "0", "0", "1.000"], "{stdout}");
    assert!(line("low vs high").contains(" 3 "), "{stdout}");
    assert!(stdout.contains("McNemar p is exact"), "{stdout}");

    // A level the scenario cannot play is refused before anything runs, naming file and field.
    let (code, stdout, stderr) = run(dilemma(work.path())
        .arg("run")
        .arg(fixture("tiny-dual-track.yaml"))
        .args(["--factor", "stakes=base,low"])
        .arg("--model")
        .arg(format!("agent=scripted:{}", agent.display())));
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(stderr.contains("tiny-dual-track.yaml: scenario `tiny-dual-track` declares no `stakes.low`"), "{stderr}");
}
