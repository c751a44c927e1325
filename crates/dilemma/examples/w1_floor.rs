//! The transport floor of W1 (bench/bench.py): trials that do nothing but send recorded
//! requests through dilemma's own HTTP client (`model::http1`) and read the replies, with no
//! prompts, parsing, scoring or store. It answers what part of W1's wall a harness could win
//! back at all on this machine: the mock's CPU and the loopback TCP of both sides stay, every
//! harness cost above them goes.
//!
//! ```text
//! w1_floor URL BODIES_DIR [--trials N] [--concurrency C]
//! ```
//!
//! BODIES_DIR holds one trial's request bodies as `req1.json`, `req2.json`, … in the order
//! dilemma sent them (bench.py records them through a loopback proxy); every trial sends them
//! all, one after the other, to `URL/chat/completions`, at most C trials at once. Prints one
//! JSON object on stdout: calls, failures and the wall from the first request to the last
//! reply.

#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dilemma::model::http1::Http1Client;
use serde_json::json;

fn main() -> std::process::ExitCode {
    match floor() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("{message}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn floor() -> Result<(), String> {
    let mut arguments = std::env::args().skip(1);
    let url = arguments.next().ok_or("usage: w1_floor URL BODIES_DIR [--trials N] [--concurrency C]")?;
    let bodies = PathBuf::from(arguments.next().ok_or("w1_floor: BODIES_DIR is missing")?);
    let (mut trials, mut concurrency) = (1_000_usize, 500_usize);
    while let Some(flag) = arguments.next() {
        let value = arguments.next().ok_or(format!("w1_floor: {flag} needs a value"))?;
        let number = value.parse().map_err(|_| format!("w1_floor: {flag} takes a whole number, not {value:?}"))?;
        match flag.as_str() {
            "--trials" => trials = number,
            "--concurrency" => concurrency = number,
            _ => return Err(format!("w1_floor: unknown flag {flag}")),
        }
    }
    let mut requests = Vec::new();
    for index in 1.. {
        match std::fs::read(bodies.join(format!("req{index}.json"))) {
            Ok(body) => requests.push(body),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => break,
            Err(error) => return Err(format!("w1_floor: {}: {error}", bodies.join(format!("req{index}.json")).display())),
        }
    }
    if requests.is_empty() {
        return Err(format!("w1_floor: no req1.json in {}", bodies.display()));
    }
    let base = url::Url::parse(&url).map_err(|error| format!("w1_floor: URL {url:?}: {error}"))?;
    let client = Http1Client::for_url(&base, "dilemma-w1-floor", Duration::from_secs(10))
        .ok_or(format!("w1_floor: {url} is not an http:// URL"))?;
    let target = format!("{}/chat/completions", base.path().trim_end_matches('/'));

    // The same runtime as the `dilemma` binary: tokio's multi-thread runtime, a worker a core.
    let runtime = tokio::runtime::Runtime::new().map_err(|error| format!("w1_floor: {error}"))?;
    let (calls, failures, first_failure, wall) = runtime.block_on(async move {
        let client = Arc::new(client);
        let requests = Arc::new(requests);
        let target = Arc::new(target);
        let gate = Arc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
        let started = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..trials {
            let (client, requests, target, gate) = (client.clone(), requests.clone(), target.clone(), gate.clone());
            tasks.spawn(async move {
                let _permit = gate.acquire_owned().await.expect("the gate is never closed");
                let (mut failures, mut first_failure) = (0_usize, None);
                for body in requests.iter() {
                    let headers = [("content-type", "application/json"), ("authorization", "Bearer floor")];
                    let failure = match client.post(&target, &headers, body.clone()).await {
                        Ok(reply) if reply.status == 200 => continue,
                        Ok(reply) => format!("HTTP {}", reply.status),
                        Err(error) => error.to_string(),
                    };
                    failures += 1;
                    first_failure.get_or_insert(failure);
                }
                (requests.len(), failures, first_failure)
            });
        }
        let (mut calls, mut failures, mut first_failure) = (0, 0, None);
        while let Some(joined) = tasks.join_next().await {
            let (trial_calls, trial_failures, trial_first) = joined.expect("a trial task panicked");
            calls += trial_calls;
            failures += trial_failures;
            first_failure = first_failure.or(trial_first);
        }
        (calls, failures, first_failure, started.elapsed())
    });
    println!("{}", json!({"trials": trials, "concurrency": concurrency, "calls": calls, "failures": failures, "wall_s": wall.as_secs_f64()}));
    if failures > 0 {
        let first = first_failure.unwrap_or_default();
        return Err(format!("w1_floor: {failures} of {calls} calls failed (the first: {first})"));
    }
    Ok(())
}
