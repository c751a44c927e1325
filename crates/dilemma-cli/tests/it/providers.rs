//! A suite through the `openai:` provider against the project's loopback mock server: a
//! clean run, a rerun that the response cache makes free, and a run with 20% injected
//! faults whose results equal the clean run's.

use std::time::Duration;

use dilemma::store::Store;
use dilemma_mock::{Fault, MockConfig, serve};

use crate::support::{dilemma, fixture, run};

fn classes(store: &std::path::Path, run_id: &str) -> Vec<(String, Option<String>)> {
    let store = Store::open(store).unwrap();
    store
        .trials(run_id)
        .unwrap()
        .into_iter()
        .map(|record| {
            let outcome = record.outcome.expect("finished");
            let class = outcome.class.map(|class| class.as_str().to_owned());
            (record.plan.key.replace(|c: char| c.is_ascii_digit(), "#"), class)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_suite_runs_through_openai_against_the_loopback_mock() {
    let work = tempfile::tempdir().unwrap();
    let (_, clean) = serve(MockConfig::default()).await.unwrap();
    let spec = format!("agent=openai:mock-model@{}", clean.base_url());
    let arguments = |run_id: &str| {
        vec!["run".to_owned(), "--run".into(), run_id.into(), "--epochs".into(), "6".into(), "--model".into(), spec.clone()]
    };
    let mut command = dilemma(work.path());
    command.env_remove("OPENAI_API_KEY").env_remove("OPENAI_BASE_URL").args(arguments("clean")).arg(fixture("tiny-dual-track.yaml"));
    let (code, stdout, stderr) = tokio::task::spawn_blocking(move || run(&mut command)).await.unwrap();
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("6 of 6 trials finished; 6 valid"), "{stdout}");
    let sent = clean.stats().requests;
    assert!(sent >= 6, "{sent}");
    assert_eq!(clean.stats().answered, sent);

    // A second run of the same plan under a new id: every call comes from the cache.
    let mut again = dilemma(work.path());
    again.env_remove("OPENAI_API_KEY").env_remove("OPENAI_BASE_URL").args(arguments("again")).arg(fixture("tiny-dual-track.yaml"));
    let (code, _, stderr) = tokio::task::spawn_blocking(move || run(&mut again)).await.unwrap();
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(clean.stats().requests, sent, "a rerun must not send finished calls again");
    let store_path = work.path().join("store.sqlite");
    assert_eq!(classes(&store_path, "clean"), classes(&store_path, "again"));

    // 20% faults (429, 500, malformed and truncated bodies) against a fresh store: the run
    // completes, every fault is journaled against its call, and the verdicts equal the clean run.
    let faulty_config = MockConfig {
        fault_rate: 0.2,
        seed: 11,
        faults: vec![Fault::RateLimit, Fault::ServerError, Fault::Malformed, Fault::Truncated],
        retry_after_secs: 0,
        ..MockConfig::default()
    };
    let (_, faulty) = serve(faulty_config).await.unwrap();
    let faulty_work = tempfile::tempdir().unwrap();
    let mut command = dilemma(faulty_work.path());
    command
        .env_remove("OPENAI_API_KEY")
        .env_remove("OPENAI_BASE_URL")
        .args(["run", "--run", "clean", "--epochs", "6", "--model"])
        .arg(format!("agent=openai:mock-model@{}", faulty.base_url()))
        .arg(fixture("tiny-dual-track.yaml"));
    let (code, stdout, stderr) = tokio::task::spawn_blocking(move || run(&mut command)).await.unwrap();
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("6 of 6 trials finished; 6 valid, 0 protocol errors, 0 infrastructure errors"), "{stdout}");
    let stats = faulty.stats();
    let injected: u64 = stats.faults.values().sum();
    assert!(injected > 0, "no faults were injected: {stats:?}");
    let faulty_store = faulty_work.path().join("store.sqlite");
    assert_eq!(classes(&faulty_store, "clean"), classes(&store_path, "clean"), "faults changed verdicts");
    let store = Store::open(&faulty_store).unwrap();
    let retried: usize = store
        .trials("clean")
        .unwrap()
        .iter()
        .flat_map(|record| store.transcript("clean", &record.plan.key).unwrap())
        .flat_map(|turn| turn.calls)
        .map(|call| call.failed_attempts.len())
        .sum();
    assert_eq!(retried as u64, injected, "every fault is recorded against its call");
    tokio::time::sleep(Duration::from_millis(10)).await;
}
