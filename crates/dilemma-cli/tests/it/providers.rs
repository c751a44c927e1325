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

/// Runs `dilemma` with `arguments` off the async runtime.
async fn dilemma_async(work: &std::path::Path, arguments: Vec<String>, key: Option<&str>) -> (i32, String, String) {
    let mut command = dilemma(work);
    if let Some(key) = key {
        command.env("OPENAI_API_KEY", key);
    }
    command.args(arguments);
    tokio::task::spawn_blocking(move || run(&mut command)).await.unwrap()
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|item| (*item).to_owned()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_planted_key_appears_nowhere_a_run_writes() {
    let key = "sk-planted-7f3a9c1e5b2d4f6a8c0e";
    let work = tempfile::tempdir().unwrap();
    // Half the calls fail first, so error paths are exercised too.
    let config = MockConfig { fault_rate: 0.5, seed: 3, faults: vec![Fault::ServerError, Fault::RateLimit], retry_after_secs: 0, ..MockConfig::default() };
    let (_, mock) = serve(config).await.unwrap();
    let out = work.path().join("out");
    let mut arguments = strings(&["run", "--run", "keyed", "--epochs", "3", "--out"]);
    arguments.push(out.display().to_string());
    arguments.push("--model".into());
    arguments.push(format!("agent=openai:mock-model@{}", mock.base_url()));
    arguments.push(fixture("tiny-dual-track.yaml").display().to_string());
    let (code, stdout, stderr) = dilemma_async(work.path(), arguments, Some(key)).await;
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(mock.stats().requests > 0);
    assert!(!stdout.contains(key) && !stderr.contains(key));
    // Every file the run wrote: the store (and its WAL), report.json, report.csv.
    let mut files = Vec::new();
    for folder in [work.path().to_path_buf(), out] {
        for entry in std::fs::read_dir(folder).unwrap().flatten() {
            if entry.path().is_file() {
                files.push(entry.path());
            }
        }
    }
    assert!(files.len() >= 3, "{files:?}");
    for file in files {
        let bytes = std::fs::read(&file).unwrap();
        assert!(!bytes.windows(key.len()).any(|window| window == key.as_bytes()), "{} contains the key", file.display());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_estimates_before_sending_and_max_cost_stops_a_run() {
    let work = tempfile::tempdir().unwrap();
    let (_, mock) = serve(MockConfig::default()).await.unwrap();
    let spec = format!("agent=openai:mock-model@{}", mock.base_url());
    let prices = work.path().join("prices.toml");
    std::fs::write(&prices, "[prices.\"openai:*\"]\ninput = 50000.0\noutput = 50000.0\n").unwrap();
    let tiny = fixture("tiny-dual-track.yaml").display().to_string();

    let mut arguments = strings(&["plan", "--epochs", "4", "--prices"]);
    arguments.extend([prices.display().to_string(), "--model".into(), spec.clone(), tiny.clone()]);
    let (code, stdout, stderr) = dilemma_async(work.path(), arguments, None).await;
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains(": 4 trials"), "{stdout}");
    assert!(stdout.contains("typical (5 turns per trial): 16 model calls"), "{stdout}");
    assert!(stdout.contains("total cost: $"), "{stdout}");
    assert_eq!(mock.stats().requests, 0, "plan must send nothing");

    let mut unpriced = strings(&["run", "--max-cost", "1", "--model"]);
    unpriced.extend([spec.clone(), tiny.clone()]);
    let (code, _, stderr) = dilemma_async(work.path(), unpriced, None).await;
    assert_eq!(code, 1);
    assert!(stderr.contains("--max-cost needs a price for every model, and there is none for openai:mock-model@"), "{stderr}");

    // At these prices one trial costs far more than $1: the run stops after the first wave.
    let mut capped = strings(&["run", "--run", "capped", "--epochs", "6", "--concurrency", "1", "--max-cost", "1", "--prices"]);
    capped.extend([prices.display().to_string(), "--model".into(), spec.clone(), tiny.clone()]);
    let (code, stdout, stderr) = dilemma_async(work.path(), capped, None).await;
    assert_eq!(code, 1, "{stdout}");
    assert!(stderr.contains("stopped: the run has spent $"), "{stderr}");
    assert!(stdout.contains("1 of 6 trials finished"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_error_budget_stops_a_failing_run_and_retry_errors_reruns_those_trials() {
    let work = tempfile::tempdir().unwrap();
    let config = MockConfig { fault_rate: 1.0, faults: vec![Fault::ServerError], ..MockConfig::default() };
    let (_, mock) = serve(config).await.unwrap();
    let mut arguments = strings(&["run", "--run", "outage", "--epochs", "8", "--concurrency", "1", "--error-budget", "2", "--model"]);
    arguments.extend([format!("agent=openai:mock-model@{}", mock.base_url()), fixture("tiny-dual-track.yaml").display().to_string()]);
    let (code, stdout, stderr) = dilemma_async(work.path(), arguments.clone(), None).await;
    assert_eq!(code, 1, "{stdout}");
    assert!(stderr.contains("2 trials ended in infrastructure errors, the run's budget is 2"), "{stderr}");
    assert!(stderr.contains("--retry-errors"), "{stderr}");
    assert!(stdout.contains("2 of 8 trials finished; 0 valid, 0 protocol errors, 2 infrastructure errors"), "{stdout}");
    let sent = mock.stats().requests;
    assert_eq!(sent, 8, "two trials, four attempts each");

    arguments.push("--retry-errors".into());
    let (code, stdout, _) = dilemma_async(work.path(), arguments, None).await;
    assert_eq!(code, 1);
    assert!(stdout.contains("2 of 8 trials finished"), "the two errored trials ran again and nothing was stored twice: {stdout}");
    assert_eq!(mock.stats().requests, 16);
}
