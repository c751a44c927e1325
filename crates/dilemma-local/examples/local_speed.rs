//! Prompt-processing and generation speed of the `local` provider, for the W2 benchmark
//! (bench/run.sh), measured through the provider itself (`LocalModel::chat`) and read from
//! its own per-call timings (`LocalModel::last_call_stats`).
//!
//! ```text
//! local_speed [--threads T] [--prompt-tokens P] [--gen-tokens N] [--reps R] [--model-dir DIR]
//! ```
//!
//! - pp: a user message sized so that the templated prompt is P tokens, answered with one
//!   token, with prefix reuse off so that every repetition evaluates the whole prompt.
//! - tg: a short prompt and N tokens of greedy, unconstrained text (the sampling loop the
//!   harness uses: logits copied out, the sampler applied, one token decoded at a time).
//!
//! Prints one JSON object on stdout.

#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::path::PathBuf;

use dilemma::chat::{ChatRequest, Message, OutputFormat, Sampling};
use dilemma::model::{CallContext, ChatModel, ModelRole};
use dilemma_local::{CallStats, LocalModel, LocalOptions};
use serde_json::json;

struct Arguments {
    threads: usize,
    prompt_tokens: usize,
    gen_tokens: u32,
    reps: usize,
    model_dir: Option<PathBuf>,
}

fn arguments() -> Result<Arguments, String> {
    let mut parsed = Arguments { threads: 2, prompt_tokens: 512, gen_tokens: 128, reps: 3, model_dir: None };
    let mut arguments = std::env::args().skip(1);
    while let Some(flag) = arguments.next() {
        let value = arguments.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let number = || value.parse::<usize>().map_err(|_| format!("{flag}: not a number: {value}"));
        match flag.as_str() {
            "--threads" => parsed.threads = number()?,
            "--prompt-tokens" => parsed.prompt_tokens = number()?,
            "--gen-tokens" => parsed.gen_tokens = u32::try_from(number()?).map_err(|error| error.to_string())?,
            "--reps" => parsed.reps = number()?.max(1),
            "--model-dir" => parsed.model_dir = Some(PathBuf::from(value)),
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(parsed)
}

fn request(text: String, max_tokens: u32) -> ChatRequest {
    ChatRequest {
        messages: vec![Message::user(text)],
        tools: Default::default(),
        output: OutputFormat::Text,
        sampling: Sampling { temperature: 0.0, max_tokens, seed: None },
    }
}

/// " apple" is one token in SmolLM2's vocabulary, so the filler adds one token per word.
fn filler(words: usize) -> String {
    format!("Count the apples:{}", " apple".repeat(words))
}

async fn call(model: &LocalModel, request: &ChatRequest, index: u32) -> Result<CallStats, String> {
    let context = CallContext { role: ModelRole::Agent, trial: "bench".into(), turn: index, call_index: index };
    model.chat(request, &context).await.map_err(|error| error.to_string())?;
    model.last_call_stats().ok_or_else(|| "no call stats".to_owned())
}

async fn measure(arguments: &Arguments) -> Result<serde_json::Value, String> {
    let options = LocalOptions {
        threads: arguments.threads,
        n_ctx: u32::try_from(arguments.prompt_tokens + arguments.gen_tokens as usize + 64).unwrap_or(u32::MAX).max(512),
        model_dir: arguments.model_dir.clone(),
        reuse_prefix: false,
        ..LocalOptions::default()
    };
    let opened = std::time::Instant::now();
    let model = LocalModel::open("smollm2", options).map_err(|error| error.to_string())?;
    let open_seconds = opened.elapsed().as_secs_f64();

    // Size the prompt: the template's own tokens plus one per filler word.
    let probe = call(&model, &request(filler(8), 1), 0).await?;
    let overhead = probe.prompt_tokens.saturating_sub(8);
    let words = arguments.prompt_tokens.saturating_sub(overhead).max(1);
    let prompt = request(filler(words), 1);
    // One unmeasured warm-up at full length (page faults, thread start-up), as llama-bench does.
    call(&model, &prompt, 1).await?;
    let mut pp = Vec::new();
    for rep in 0..arguments.reps {
        let stats = call(&model, &prompt, 2 + rep as u32).await?;
        pp.push(json!({"tokens": stats.evaluated_tokens, "seconds": stats.prompt_eval.as_secs_f64(), "tokens_per_second": stats.prompt_tokens_per_second()}));
    }

    let story = request("Write a very long story about a lighthouse keeper and her cat.".to_owned(), arguments.gen_tokens);
    call(&model, &story, 100).await?;
    let mut tg = Vec::new();
    for rep in 0..arguments.reps {
        let stats = call(&model, &story, 101 + rep as u32).await?;
        tg.push(json!({"tokens": stats.completion_tokens, "seconds": stats.generation.as_secs_f64(), "tokens_per_second": stats.completion_tokens_per_second()}));
    }
    Ok(json!({
        "threads": arguments.threads,
        "open_seconds": open_seconds,
        "prompt_tokens_requested": arguments.prompt_tokens,
        "gen_tokens_requested": arguments.gen_tokens,
        "pp": pp,
        "tg": tg,
    }))
}

fn main() -> std::process::ExitCode {
    let arguments = match arguments() {
        Ok(arguments) => arguments,
        Err(message) => {
            eprintln!("error: {message}");
            return std::process::ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(measure(&arguments)) {
        Ok(result) => {
            println!("{result}");
            std::process::ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("error: {message}");
            std::process::ExitCode::FAILURE
        }
    }
}
