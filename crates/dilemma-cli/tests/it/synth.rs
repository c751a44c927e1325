//! `dilemma synth` with scripted synthesizer and judge models: what it prints, writes and
//! stores, and its exit codes.

use dilemma::store::Store;

use crate::support::{dilemma, fixture, run, script};

#[test]
fn synth_writes_the_accepted_candidate_and_rejects_the_duplicate_of_it() {
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("synthesized");
    let (code, stdout, stderr) = run(dilemma(work.path())
        .args(["synth", "--domain", "energy", "--motivation", "loyalty", "--count", "2", "--seed", "5", "--model"])
        .arg(format!("synthesizer=scripted:{}", fixture("synth-synthesizer.yaml").display()))
        .arg("--model")
        .arg(format!("judge=scripted:{}", fixture("synth-judge.yaml").display()))
        .arg("--out")
        .arg(&out));
    assert_eq!(code, 0, "{stdout}{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(lines[0].starts_with("batch synth-") && lines[0].contains("2 candidate(s), domain energy, motivation loyalty, stakes base, seed 5;"), "{stdout}");
    let id = "energy-loyalty-a-peaker-unit-s-capacity-payment-hangs-on-an-overdue";
    assert_eq!(lines[1], "candidate 1/2: story 10, evidence 10, tools 10, compiled 10");
    assert!(lines[2].starts_with(&format!("  accepted: {}", out.join(format!("{id}.yaml")).display())), "{stdout}");
    assert_eq!(lines[3], "candidate 2/2: story 10, evidence 10, tools 10, compiled 10");
    assert_eq!(lines[4], format!("  rejected: near-duplicate of `{id}` (similarity 1.00 >= 0.50)"));
    assert!(lines[5].starts_with("1 of 2 accepted, 1 rejected, 0 error(s); every round is stored in"), "{stdout}");

    // The written scenario passes `check`.
    let (code, stdout, stderr) = run(dilemma(work.path()).arg("check").arg(&out));
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains(&format!("({id} v1)")), "{stdout}");

    // Every round and both verdicts are in the store.
    let store = Store::open(&work.path().join("store.sqlite")).unwrap();
    let batch = lines[0].split_whitespace().nth(1).unwrap().trim_end_matches(':');
    let candidates = store.synth_candidates(batch).unwrap();
    let statuses: Vec<&str> = candidates.iter().map(|candidate| candidate.status.as_str()).collect();
    assert_eq!(statuses, ["accepted", "rejected"]);
    assert_eq!(store.synth_rounds(batch, 2).unwrap().len(), 4);

    // A second batch knows the scenario in --out and does not write it again.
    let (code, stdout, _) = run(dilemma(work.path())
        .args(["synth", "--domain", "energy", "--motivation", "loyalty", "--model"])
        .arg(format!("synthesizer=scripted:{}", fixture("synth-synthesizer.yaml").display()))
        .arg("--model")
        .arg(format!("judge=scripted:{}", fixture("synth-judge.yaml").display()))
        .arg("--out")
        .arg(&out));
    assert_eq!(code, 0);
    assert!(stdout.contains(&format!("  rejected: near-duplicate of `{id}`")), "{stdout}");
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), 1);
}

#[test]
fn synth_that_rejects_everything_still_exits_zero() {
    let work = tempfile::tempdir().unwrap();
    let judge = script(work.path(), "judge.yaml", "replies:\n  - json: {score: 3, feedback: no trigger, suggestion: add a deadline}\n");
    let out = work.path().join("synthesized");
    let (code, stdout, stderr) = run(dilemma(work.path())
        .args(["synth", "--domain", "energy", "--motivation", "self_preservation", "--stakes", "low", "--rounds", "story=2", "--model"])
        .arg(format!("synthesizer=scripted:{}", fixture("synth-synthesizer.yaml").display()))
        .arg("--model")
        .arg(format!("judge=scripted:{}", judge.display()))
        .arg("--out")
        .arg(&out));
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("stakes low"), "{stdout}");
    // The second synthesizer reply (the evidence) is not a story: code reports it, no judge call.
    assert!(stdout.contains("candidate 1/1: story 3→✗\n"), "{stdout}");
    assert!(stdout.contains("  rejected: the story draft of round 2 (the last) still has problems: the JSON does not have the required shape"), "{stdout}");
    assert!(stdout.contains("0 of 1 accepted, 1 rejected"), "{stdout}");
    assert!(!out.exists(), "nothing is written");
}

#[test]
fn synth_configuration_errors_exit_nonzero_and_say_what_to_do() {
    let work = tempfile::tempdir().unwrap();
    let synthesizer = format!("synthesizer=scripted:{}", fixture("synth-synthesizer.yaml").display());
    let judge = format!("judge=scripted:{}", fixture("synth-judge.yaml").display());
    let cases: [(Vec<String>, &str); 5] = [
        (vec!["--model".into(), synthesizer.clone()], "`synth` needs --model judge=SPEC"),
        (vec!["--model".into(), judge.clone(), "--model".into(), "agent=local:smollm2".into()], "only the synthesizer and judge roles take part"),
        (vec!["--model".into(), synthesizer.clone(), "--model".into(), judge.clone(), "--rounds".into(), "draft=2".into()], "--rounds draft=2: write STAGE=VALUE"),
        (vec!["--model".into(), synthesizer.clone(), "--model".into(), judge.clone(), "--threshold".into(), "story=11".into()], "the story threshold 11 is outside 0..=10"),
        (vec!["--model".into(), synthesizer, "--model".into(), judge, "--against".into(), "no-such-suite".into()], "--against no-such-suite"),
    ];
    for (arguments, expected) in cases {
        let (code, stdout, stderr) = run(dilemma(work.path())
            .args(["synth", "--domain", "energy", "--motivation", "loyalty", "--out"])
            .arg(work.path().join("out"))
            .args(&arguments));
        assert_eq!(code, 1, "{arguments:?}: {stdout}{stderr}");
        assert!(stderr.contains(expected), "{arguments:?}: {stderr}");
    }
    let (code, _, stderr) = run(dilemma(work.path()).args(["synth", "--domain", "Energy Sector", "--motivation", "loyalty", "--model", "synthesizer=scripted:x", "--model", "judge=scripted:y"]));
    assert_eq!(code, 1);
    assert!(stderr.contains("domain `Energy Sector` is not a valid domain name"), "{stderr}");
}
