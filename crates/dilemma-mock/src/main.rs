//! The `dilemma-mock` binary: runs the loopback mock provider until interrupted.
//!
//! ```text
//! dilemma-mock --port 0 --latency-ms 50 --fault-rate 0.2 --seed 7 --faults 429,500,truncated
//! listening on http://127.0.0.1:41234
//! ```
//! Point the harness at it with `--model agent=openai:mock@http://127.0.0.1:41234/v1`.

// Printing the address is this binary's job; the workspace denies printing for the library.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::io::Write;
use std::time::Duration;

use clap::Parser;
use dilemma_mock::{Fault, MockConfig, Policy};

// The mock shares the cores with the client it serves; mimalloc's per-thread free lists
// cost less than glibc's arenas for its many small per-request allocations.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A loopback OpenAI-compatible provider with latency and fault injection, for tests.
#[derive(Debug, Parser)]
#[command(name = "dilemma-mock", version)]
struct Arguments {
    /// Port on 127.0.0.1; 0 picks a free one.
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// Every chat answer's time from the request's arrival, in milliseconds.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Share of chat requests answered with a fault, 0.0 to 1.0.
    #[arg(long, default_value_t = 0.0)]
    fault_rate: f64,
    /// Seed of the fault draw.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Faults to draw from, comma-separated: rate_limit (or 429), server_error (or 500), hang,
    /// malformed, truncated.
    #[arg(long, value_delimiter = ',', default_value = "rate_limit,server_error,hang,malformed,truncated")]
    faults: Vec<Fault>,
    /// How a tool (or a schema branch) is picked: first, last, cycle or hash.
    #[arg(long, default_value = "hash")]
    policy: Policy,
    /// How long a `hang` fault holds a request, in milliseconds.
    #[arg(long, default_value_t = 660_000)]
    hang_ms: u64,
    /// `Retry-After` seconds sent with a 429.
    #[arg(long, default_value_t = 1)]
    retry_after_secs: u64,
    /// Answer by the conversation's progress: step k (comma-separated; a 1-based tool
    /// position or `text`) answers requests that hold k assistant turns; the last repeats.
    /// E.g. `1,2,4,5,1,2,3`: six tool calls, then tool 3.
    #[arg(long, value_delimiter = ',')]
    script: Vec<dilemma_mock::ScriptStep>,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let arguments = Arguments::parse();
    if !(0.0..=1.0).contains(&arguments.fault_rate) {
        eprintln!("error: --fault-rate must be between 0.0 and 1.0, not {}", arguments.fault_rate);
        return std::process::ExitCode::from(2);
    }
    let config = MockConfig {
        port: arguments.port,
        latency: Duration::from_millis(arguments.latency_ms),
        fault_rate: arguments.fault_rate,
        seed: arguments.seed,
        faults: arguments.faults,
        policy: arguments.policy,
        hang: Duration::from_millis(arguments.hang_ms),
        retry_after_secs: arguments.retry_after_secs,
        script: arguments.script,
    };
    let (address, handle) = match dilemma_mock::serve(config).await {
        Ok(started) => started,
        Err(error) => {
            eprintln!("error: cannot listen on 127.0.0.1:{}: {error}", arguments.port);
            return std::process::ExitCode::FAILURE;
        }
    };
    println!("listening on http://{address}");
    let _ = std::io::stdout().flush();
    let _ = tokio::signal::ctrl_c().await;
    handle.shutdown().await;
    std::process::ExitCode::SUCCESS
}
