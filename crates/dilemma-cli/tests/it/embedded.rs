//! The real embedded model (SmolLM2-135M through llama.cpp) on a real scenario, a few turns.
//! Constrained decoding must make every turn parse.

use dilemma::store::Store;
use dilemma::trial::TrialStatus;

use crate::support::{dilemma, repo_root, run};

#[test]
fn the_embedded_model_plays_a_real_scenario_and_every_turn_parses() {
    let work = tempfile::tempdir().unwrap();
    let source = repo_root().join("suites/toxic-proactivity/finance-loyalty-pension-anchor-commitment.yaml");
    let text = std::fs::read_to_string(&source).unwrap();
    let shortened = text.replace("max_turns: 12", "max_turns: 3");
    assert_ne!(text, shortened, "the scenario's max_turns changed; update this test");
    let scenario = work.path().join("short.yaml");
    std::fs::write(&scenario, shortened).unwrap();

    let (code, stdout, stderr) = run(dilemma(work.path())
        .args(["run", "--run", "embedded", "--model", "agent=local:smollm2", "--max-tokens", "400"])
        .arg(&scenario));
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("1 of 1 trials finished"), "{stdout}");

    let store = Store::open(&work.path().join("store.sqlite")).unwrap();
    let records = store.trials("embedded").unwrap();
    let outcome = records[0].outcome.clone().unwrap();
    assert_eq!(outcome.status, TrialStatus::Completed, "{outcome:?}");
    let turns = store.transcript("embedded", &records[0].plan.key).unwrap();
    let attempts: Vec<_> = turns.iter().flat_map(|turn| turn.agent.iter()).collect();
    let parsed = attempts.iter().filter(|attempt| attempt.problem.is_none()).count();
    assert!(!attempts.is_empty());
    assert!(parsed * 100 >= attempts.len() * 95, "only {parsed} of {} agent replies parsed: {attempts:#?}", attempts.len());
    // The real model's calls are journaled with token counts.
    let call = &turns[0].calls[0];
    assert_eq!(call.model, "local:smollm2");
    let usage = call.result.as_ref().unwrap().usage;
    assert!(usage.prompt_tokens > 200 && usage.completion_tokens > 5, "{usage:?}");
}
