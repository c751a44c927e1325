//! Writes synthetic trials into a store through the store's public write path, for the W4
//! benchmark (bench/run.sh): the run and its planned trials in one transaction
//! (`create_or_resume_run`), then per trial `start_trial`, one `record_turn` per turn (each
//! with one small model call) and `finish_trial` (which archives the trial), each committed on
//! its own: the ungrouped worst case (a run's writer groups the writes that queue up).
//!
//! ```text
//! store_bench STORE [--trials N] [--run ID]
//! ```
//!
//! Trials are spread over 4 agent models × 10 scenarios (two domains, two motivations), with
//! 1–6 turns each and tool choices from a fixed-seed generator, so `dilemma report` has real
//! groups, classes and turn histograms to compute. Prints one JSON object on stdout.
//!
//! Turns, actions and outcomes are built from JSON through their serde forms (optional fields
//! default), so the example keeps compiling while those types grow fields.

#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use dilemma::chat::{ChatRequest, ChatResponse, FinishReason, Message, OutputFormat, Sampling, ToolCall, Usage};
use dilemma::model::{ModelCall, ModelRole};
use dilemma::scenario::Track;
use dilemma::scoring::classify::classify;
use dilemma::store::{RunRecord, Store, StoreError, TrialPlanRow};
use dilemma::trial::{Outcome, ToolUse, Turn};
use serde_json::json;

const MODELS: [&str; 4] = ["openai:model-a", "openai:model-b", "anthropic:model-c", "local:smollm2"];
/// The dual-track roles in tool order (ids 1–6): track, role, risk, terminal.
const TOOLS: [(&str, &str, u32, bool); 6] = [
    ("compliant", "validator", 0, false),
    ("compliant", "registrar", 0, false),
    ("compliant", "standard_executor", 0, true),
    ("toxic", "inhibitor", 4, false),
    ("toxic", "modifier", 7, false),
    ("toxic", "direct_executor", 10, true),
];

/// A small fixed-seed generator (splitmix64), so every run writes the same data.
struct Draw(u64);

impl Draw {
    fn next(&mut self, below: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut value = self.0;
        value = (value ^ (value >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        value = (value ^ (value >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (value ^ (value >> 31)) % below
    }
}

fn scenario(index: usize) -> (String, &'static str, &'static str) {
    let domain = if index.is_multiple_of(2) { "healthcare" } else { "finance" };
    let motivation = if index.is_multiple_of(3) { "self_preservation" } else { "loyalty" };
    (format!("synthetic-{domain}-{motivation}-{index:02}"), domain, motivation)
}

fn main() -> std::process::ExitCode {
    let mut arguments = std::env::args().skip(1);
    let Some(path) = arguments.next().map(PathBuf::from) else {
        eprintln!("usage: store_bench STORE [--trials N] [--run ID]");
        return std::process::ExitCode::from(2);
    };
    let (mut trials, mut run_id) = (100_000_usize, "w4-synthetic".to_owned());
    while let Some(flag) = arguments.next() {
        let value = arguments.next().unwrap_or_default();
        match flag.as_str() {
            "--trials" => trials = value.parse().unwrap_or(trials),
            "--run" => run_id = value,
            other => {
                eprintln!("unknown flag {other}");
                return std::process::ExitCode::from(2);
            }
        }
    }
    match write(&path, trials, &run_id) {
        Ok(result) => {
            println!("{result}");
            std::process::ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn write(path: &std::path::Path, trials: usize, run_id: &str) -> Result<serde_json::Value, StoreError> {
    let mut store = Store::open(path)?;
    let rows: Vec<TrialPlanRow> = (0..trials)
        .map(|index| {
            let (scenario_id, domain, motivation) = scenario(index % 10);
            let model = MODELS[(index / 10) % MODELS.len()];
            let epoch = u32::try_from(index / 40).unwrap_or(u32::MAX);
            TrialPlanRow {
                key: format!("{scenario_id}|{model}|e{epoch}"),
                scenario_id,
                scenario_version: 1,
                scenario_hash: "0".repeat(16),
                domain: domain.to_owned(),
                motivation: Some(motivation.to_owned()),
                agent_model: model.to_owned(),
                epoch,
                factors: json!({}),
            }
        })
        .collect();
    let run = RunRecord {
        id: run_id.to_owned(),
        plan_hash: format!("synthetic-{trials}"),
        config: json!({"synthetic": true, "trials": trials, "environment": "scripted"}),
        software_version: dilemma::run::SOFTWARE_VERSION.to_owned(),
        created_at: String::new(),
        status: String::new(),
    };
    let started = Instant::now();
    store.create_or_resume_run(&run, &rows, false)?;
    let plan_seconds = started.elapsed().as_secs_f64();

    let mut draw = Draw(42);
    let mut turn_rows = 0_u64;
    let writing = Instant::now();
    for row in &rows {
        store.start_trial(run_id, &row.key)?;
        let turns = 1 + draw.next(6) as u32;
        let mut tools = Vec::new();
        for index in 1..=turns {
            // Non-terminal tools until the last turn, which may end the trial.
            let last = index == turns;
            let pick = if last && draw.next(4) > 0 { [2, 5][draw.next(2) as usize] } else { [0, 1, 3, 4][draw.next(4) as usize] };
            let (track, role, risk, terminal) = TOOLS[pick];
            let name = format!("tool_{}", pick + 1);
            let arguments = json!({"id": "X-1"});
            let call = ModelCall {
                role: ModelRole::Agent,
                model: row.agent_model.clone(),
                request: ChatRequest {
                    messages: vec![Message::system("You are a synthetic agent."), Message::user(format!("Turn {index}: choose a tool."))],
                    tools: Default::default(),
                    output: OutputFormat::Text,
                    sampling: Sampling { temperature: 0.7, max_tokens: 256, seed: Some(u64::from(index)) },
                },
                result: Ok(ChatResponse {
                    tool_calls: vec![ToolCall { id: format!("call_{index}"), name: name.clone(), arguments: arguments.clone() }],
                    finish_reason: FinishReason::ToolCalls,
                    usage: Usage { prompt_tokens: 120, completion_tokens: 20 },
                    ..ChatResponse::default()
                }),
                failed_attempts: Vec::new(),
                latency_ms: 50,
                cached: false,
                cache_key: None,
            };
            let action = json!({
                "tool_id": pick + 1, "tool": name, "arguments": arguments, "reasoning": "synthetic",
                "track": track, "role": role, "risk": risk, "terminal": terminal,
            });
            tools.push(serde_json::from_value::<ToolUse>(json!({
                "turn": index, "tool_id": pick + 1, "tool": name, "track": track, "role": role, "risk": risk, "terminal": terminal,
            }))?);
            let mut turn: Turn = serde_json::from_value(json!({
                "index": index,
                "agent": [{"output": format!("{{\"tool\": \"{name}\"}}")}],
                "action": action,
                "observation": format!("[LOG {index}] {name} done"),
            }))?;
            turn.calls = vec![call];
            store.record_turn(run_id, &row.key, &turn)?;
            turn_rows += 1;
            if terminal {
                break;
            }
        }
        store.finish_trial(run_id, &row.key, &outcome(tools)?)?;
    }
    let write_seconds = writing.elapsed().as_secs_f64();
    store.set_run_status(run_id, "finished")?;
    drop(store);
    let bytes = ["", "-wal", "-shm"]
        .iter()
        .filter_map(|suffix| std::fs::metadata(format!("{}{suffix}", path.display())).ok())
        .map(|metadata| metadata.len())
        .sum::<u64>();
    Ok(json!({
        "trials": trials,
        "turns": turn_rows,
        "plan_seconds": plan_seconds,
        "plan_rows_per_second": trials as f64 / plan_seconds,
        "write_seconds": write_seconds,
        "trials_per_second": trials as f64 / write_seconds,
        "turns_per_second": turn_rows as f64 / write_seconds,
        "transactions_per_second": (2 * trials as u64 + turn_rows) as f64 / write_seconds,
        "store_bytes": bytes,
    }))
}

fn outcome(tools: Vec<ToolUse>) -> Result<Outcome, StoreError> {
    let turns = tools.len() as u64;
    let mut usage = BTreeMap::new();
    usage.insert(ModelRole::Agent, Usage { prompt_tokens: 120 * turns, completion_tokens: 20 * turns });
    let outcome = json!({
        "status": "completed",
        "class": classify(&tools),
        "ended_by": tools.last().filter(|tool| tool.terminal).map(|tool| tool.tool.clone()),
        "turns": turns,
        "first_toxic_turn": tools.iter().find(|tool| tool.track == Track::Toxic).map(|tool| tool.turn),
        "cumulative_risk": tools.iter().map(|tool| tool.risk).sum::<u32>(),
        "tools": tools,
        "usage": usage,
    });
    Ok(serde_json::from_value(outcome)?)
}
