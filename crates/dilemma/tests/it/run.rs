//! Runs: planning, storing, resuming after an interruption, and refusing to store twice.


use dilemma::run::{self, RunConfig, RunEvent};
use dilemma::store::{Store, StoreError};
use dilemma::trial::TrialStatus;

use crate::support::{agent, loaded_tiny, run_config};

fn config(run_id: &str, epochs: u32) -> RunConfig {
    run_config(run_id, vec![loaded_tiny()], vec![agent(&[1, 4, 6])], epochs, 3)
}

async fn execute(plan: run::Plan, store: Store) -> (run::RunSummary, Store, Vec<RunEvent>) {
    let (sender, mut receiver) = tokio::sync::mpsc::unbounded_channel();
    let (summary, store) = run::execute(plan, store, sender).await.expect("the run completes");
    let mut events = Vec::new();
    while let Ok(event) = receiver.try_recv() {
        events.push(event);
    }
    (summary, store, events)
}

#[tokio::test]
async fn a_run_stores_every_trial_with_turns_and_calls() {
    let folder = tempfile::tempdir().unwrap();
    let store = Store::open(&folder.path().join("s.sqlite")).unwrap();
    let plan = run::plan(config("r1", 5)).unwrap();
    let (summary, store, events) = execute(plan, store).await;
    assert_eq!((summary.planned, summary.ran_now, summary.skipped_finished, summary.complete), (5, 5, 0, true));
    let finished = events.iter().filter(|event| matches!(event, RunEvent::TrialFinished { .. })).count();
    assert_eq!(finished, 5);
    let (trials, turns, calls) = store.row_counts("r1").unwrap();
    assert_eq!((trials, turns, calls), (5, 15, 15));
    let transcript = store.transcript("r1", "tiny-dual-track|scripted:agent|e2").unwrap();
    assert_eq!(transcript.len(), 3);
    assert_eq!(transcript[2].calls.len(), 1);
    assert_eq!(store.run("r1").unwrap().status, "finished");
}

#[tokio::test]
async fn resuming_skips_finished_trials_and_restarts_cut_off_ones_cleanly() {
    let folder = tempfile::tempdir().unwrap();
    let path = folder.path().join("s.sqlite");
    // Simulate a crash: the plan is stored, two trials finished, one was cut off mid-way
    // with a turn on disk, the rest never started.
    let plan = run::plan(config("r2", 4)).unwrap();
    {
        let mut store = Store::open(&path).unwrap();
        store.create_or_resume_run(&plan.run, &plan.rows, false).unwrap();
        let done = run::plan(config("r2", 4)).unwrap();
        let (_, store_after, _) = execute(done, store).await;
        drop(store_after);
        // Un-finish two trials to mimic a crash: one mid-way (running, partial turn kept),
        // one not started at all.
        let mut store = Store::open(&path).unwrap();
        store.simulate_crash("r2", "tiny-dual-track|scripted:agent|e3", true).unwrap();
        store.simulate_crash("r2", "tiny-dual-track|scripted:agent|e4", false).unwrap();
    }
    let store = Store::open(&path).unwrap();
    let resumed_plan = run::plan(config("r2", 4)).unwrap();
    let (summary, store, events) = execute(resumed_plan, store).await;
    assert_eq!((summary.ran_now, summary.skipped_finished, summary.complete), (2, 2, true));
    assert!(matches!(events[0], RunEvent::Started { resumed: true, already_finished: 2, restarted: 1, .. }), "{:?}", events[0]);
    // Exactly the planned trials, each with its turns once.
    let (trials, turns, calls) = store.row_counts("r2").unwrap();
    assert_eq!((trials, turns, calls), (4, 12, 12));
    let records = store.trials("r2").unwrap();
    assert!(records.iter().all(|record| record.outcome.as_ref().is_some_and(|outcome| outcome.status == TrialStatus::Completed)));
}

#[tokio::test]
async fn a_different_plan_under_the_same_run_id_is_refused() {
    let folder = tempfile::tempdir().unwrap();
    let path = folder.path().join("s.sqlite");
    let (_, store, _) = execute(run::plan(config("r3", 1)).unwrap(), Store::open(&path).unwrap()).await;
    let (sender, _receiver) = tokio::sync::mpsc::unbounded_channel();
    let error = match run::execute(run::plan(config("r3", 2)).unwrap(), store, sender).await {
        Err(error) => error.to_string(),
        Ok(_) => panic!("a changed plan must not resume"),
    };
    assert!(error.contains("run `r3` already exists with a different plan"), "{error}");
    assert!(error.contains("pick a new --run id"), "{error}");
}

#[test]
fn a_trial_is_never_finished_twice() {
    let mut store = Store::open_in_memory().unwrap();
    let plan = run::plan(config("r5", 1)).unwrap();
    store.create_or_resume_run(&plan.run, &plan.rows, false).unwrap();
    let key = plan.rows[0].key.clone();
    let outcome: dilemma::trial::Outcome = serde_json::from_value(serde_json::json!({
        "status": "completed", "class": "robust", "turns": 0, "tools": [], "cumulative_risk": 0, "usage": {}
    }))
    .unwrap();
    store.start_trial("r5", &key).unwrap();
    store.finish_trial("r5", &key, &outcome).unwrap();
    let again = store.finish_trial("r5", &key, &outcome).unwrap_err();
    assert!(matches!(again, StoreError::AlreadyFinished { .. }), "{again}");
    assert!(again.to_string().contains("refusing to store it twice"));
    let restart = store.start_trial("r5", &key).unwrap_err();
    assert!(matches!(restart, StoreError::AlreadyFinished { .. }));
    let unknown = store.finish_trial("r5", "nope", &outcome).unwrap_err();
    assert!(matches!(unknown, StoreError::NoSuchTrial { .. }));
}

#[test]
fn planning_errors_say_what_to_do() {
    let mut no_agents = config("r6", 1);
    no_agents.agents.clear();
    let error = run::plan(no_agents).unwrap_err().to_string();
    assert_eq!(error, "no agent model: pass --model agent=<spec>");

    let mut zero = config("r6", 0);
    zero.epochs = 0;
    assert_eq!(run::plan(zero).unwrap_err().to_string(), "--epochs must be at least 1");

    let mut unscripted = config("r6", 1);
    unscripted.scenarios[0].scenario.tools[2].scripted = None;
    let error = run::plan(unscripted).unwrap_err().to_string();
    assert!(error.contains("tools [dispose_shipment] have no `scripted` observations"), "{error}");
    assert!(error.contains("--model environment=<spec>"), "{error}");

}

#[test]
fn unknown_runs_are_reported_with_a_hint() {
    let store = Store::open_in_memory().unwrap();
    let error = store.trials("nope").unwrap_err().to_string();
    assert_eq!(error, "no run `nope` in this store; `dilemma runs` lists the runs it holds");
}
