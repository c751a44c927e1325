//! The `dilemma` command: argument parsing, progress, printing and exit codes.
//! Everything else lives in the `dilemma` library.

mod models;
mod paths;
mod synth;

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use dilemma::environment::Environment;
use dilemma::model::ModelRole;
use dilemma::prompt::Protocol;
use dilemma::run::{self, RunConfig, RunEvent};
use dilemma::scenario;
use dilemma::store::Store;
use dilemma::trial::{TrialOptions, TrialStatus};
use indicatif::{ProgressBar, ProgressStyle};

#[derive(Parser)]
#[command(name = "dilemma", version, about = "Measure how often an LLM agent chooses a misaligned action when a scenario makes it useful")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a suite: every scenario × agent model × epoch, stored and resumable.
    Run(RunArgs),
    /// Print what `run` with the same arguments would do: trials, calls, tokens and cost.
    Plan(RunArgs),
    /// Validate scenario files; reports every problem with file, line, column and field.
    Check {
        /// Scenario files or folders (searched for *.yaml / *.yml).
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Also fail (exit 1) on lint warnings: loaded words, ungrounded IDs, missing factor data.
        #[arg(long)]
        strict: bool,
    },
    /// Print the results table of a run and write report.json and report.csv (and, with
    /// --html, a self-contained HTML page with figures).
    Report(ReportArgs),
    /// List the built-in suites and their scenarios.
    List {
        /// Folder of suites (default: ./suites, or $DILEMMA_SUITES_DIR).
        #[arg(long, env = "DILEMMA_SUITES_DIR")]
        suites_dir: Option<PathBuf>,
    },
    /// List the runs in a store.
    Runs {
        #[arg(long, default_value = paths::DEFAULT_STORE, env = "DILEMMA_STORE")]
        store: PathBuf,
    },
    /// Print one trial's transcript: each turn's reasoning, action and observation.
    Show {
        run: String,
        /// The trial key, or a unique part of it (e.g. the scenario id).
        trial: String,
        #[arg(long, default_value = paths::DEFAULT_STORE, env = "DILEMMA_STORE")]
        store: PathBuf,
        /// Print the whole stored transcript as JSON instead: every turn with every model call,
        /// its full request, response (with the provider's raw reply), retries and timing.
        #[arg(long)]
        json: bool,
    },
    /// Print the JSON Schema of the scenario format (for editors).
    Schema,
    /// Synthesize dual-track scenarios with a synthesizer and a judge model; writes the accepted ones.
    Synth(synth::SynthArgs),
}

#[derive(Args)]
struct RunArgs {
    /// Suites by name (`toxic-proactivity`) or scenario files and folders.
    #[arg(default_value = "toxic-proactivity")]
    suites: Vec<String>,
    /// A model in a role: `agent=local:smollm2`, `environment=scripted:replies.yaml`, ...
    /// Repeat `agent=` to compare models. Without an environment model the scripted
    /// environment answers from the scenario files.
    #[arg(long = "model", value_name = "ROLE=SPEC")]
    models: Vec<String>,
    /// Trials per scenario and agent model.
    #[arg(long, default_value_t = 1)]
    epochs: u32,
    /// Cross a stress factor's levels over the same scenarios, e.g. `stakes=high,medium,low`,
    /// `feedback=base,high`, `liability=all`. Repeat for more factors (every combination runs).
    /// The first level is the baseline of the paired contrasts. Factors: stakes, feedback,
    /// goal_clarity, ethical_framework, liability.
    #[arg(long = "factor", value_name = "NAME=LEVELS")]
    factors: Vec<String>,
    /// Trials in flight at once (default: 8, or 1 when a local model takes part: one
    /// llama.cpp context serves it, and interleaved trials would defeat its prefix cache).
    #[arg(long)]
    concurrency: Option<usize>,
    /// Run id; give an existing one to resume that run (same arguments required).
    #[arg(long = "run")]
    run_id: Option<String>,
    /// SQLite store holding every run.
    #[arg(long, default_value = paths::DEFAULT_STORE, env = "DILEMMA_STORE")]
    store: PathBuf,
    /// Where to write report.json and report.csv (default: results/<run id>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// At the end, also write the report as one self-contained HTML page with figures.
    #[arg(long, value_name = "PATH")]
    html: Option<PathBuf>,
    /// How the agent answers: `json` (the paper's) or `tools` (native tool calls).
    #[arg(long, value_enum, default_value_t = ProtocolArg::Json)]
    protocol: ProtocolArg,
    /// Times an unusable reply is asked again before the trial ends as a protocol error.
    #[arg(long, default_value_t = 2)]
    reask: u32,
    /// Agent sampling temperature.
    #[arg(long, default_value_t = 0.7)]
    temperature: f32,
    /// Most tokens per agent or environment reply.
    #[arg(long, default_value_t = 1024)]
    max_tokens: u32,
    /// Folder of suites (default: ./suites, or $DILEMMA_SUITES_DIR).
    #[arg(long, env = "DILEMMA_SUITES_DIR")]
    suites_dir: Option<PathBuf>,
    /// Do not answer calls from the store's response cache (nor add to it).
    #[arg(long)]
    no_cache: bool,
    /// Stop starting trials after this many infrastructure errors (0: no limit).
    #[arg(long, default_value_t = 25)]
    error_budget: u64,
    /// A trial whose calls need more retries than this ends as an infrastructure error.
    #[arg(long, default_value_t = 12)]
    trial_retry_budget: u32,
    /// On resume, run again the trials that ended in infrastructure errors.
    #[arg(long)]
    retry_errors: bool,
    /// Stop starting trials once the run has spent this much (USD; needs --prices).
    #[arg(long)]
    max_cost: Option<f64>,
    /// Prices per model (TOML, USD per million tokens; see `dilemma::cost`).
    #[arg(long)]
    prices: Option<PathBuf>,
    /// Calls in flight per provider endpoint and role; halves on 429, grows back on success.
    #[arg(long, default_value_t = 64)]
    endpoint_concurrency: usize,
    #[command(flatten)]
    local: models::LocalArgs,
}

#[derive(Clone, Copy, ValueEnum)]
enum ProtocolArg {
    Json,
    Tools,
}

#[derive(Args)]
struct ReportArgs {
    /// The run id (`dilemma runs` lists them).
    run: String,
    #[arg(long, default_value = paths::DEFAULT_STORE, env = "DILEMMA_STORE")]
    store: PathBuf,
    /// Where to write report.json and report.csv (default: results/<run id>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Also write the report as one self-contained HTML page with figures (no scripts, nothing
    /// loaded from elsewhere).
    #[arg(long, value_name = "PATH")]
    html: Option<PathBuf>,
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("DILEMMA_LOG").unwrap_or_else(|_| "error".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run_command(args),
        Command::Plan(args) => plan_command(args),
        Command::Check { paths, strict } => check_command(&paths, strict),
        Command::Report(args) => report_command(&args),
        Command::List { suites_dir } => list_command(suites_dir),
        Command::Runs { store } => runs_command(&store),
        Command::Show { run, trial, store, json } => show_command(&store, &run, &trial, json),
        Command::Synth(args) => synth::synth_command(args),
        Command::Schema => {
            println!("{}", serde_json::to_string_pretty(scenario::format_schema()).unwrap_or_default());
            Ok(())
        }
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn check_command(paths: &[PathBuf], strict: bool) -> Result<()> {
    match scenario::load_paths(paths) {
        Ok(scenarios) => {
            for loaded in &scenarios {
                println!("ok  {}  ({} v{})", loaded.path.display(), loaded.scenario.id, loaded.scenario.version);
            }
            let warnings = dilemma::lint::lint_scenarios(&scenarios);
            for warning in &warnings {
                let place = format!("{}:{}:{}", warning.file.display(), warning.line, warning.column);
                println!("{place}: {}: warning: {}", warning.field, warning.message);
            }
            println!("{} scenario(s), no problems, {} lint warning(s)", scenarios.len(), warnings.len());
            if strict && !warnings.is_empty() {
                bail!("{} lint warning(s) (--strict)", warnings.len());
            }
            Ok(())
        }
        Err(problems) => {
            for problem in &problems.0 {
                println!("{problem}");
            }
            let files: std::collections::BTreeSet<_> = problems.0.iter().map(|problem| &problem.file).collect();
            bail!("{} problem(s) in {} file(s)", problems.0.len(), files.len())
        }
    }
}

fn list_command(suites_dir: Option<PathBuf>) -> Result<()> {
    let root = paths::suites_root(suites_dir)?;
    let mut suites: Vec<PathBuf> = Vec::new();
    collect_suites(&root, &mut suites)?;
    if suites.is_empty() {
        bail!("no suites under {}", root.display());
    }
    for suite in suites {
        let name = suite.strip_prefix(&root).unwrap_or(&suite).display().to_string();
        match scenario::load_paths(std::slice::from_ref(&suite)) {
            Ok(scenarios) => {
                println!("{name}  ({} scenarios)", scenarios.len());
                for loaded in scenarios {
                    let scenario = &loaded.scenario;
                    let motivation = scenario.motivation.map_or("-", |motivation| motivation.as_str());
                    println!("  {:<60} v{:<3} {:<14} {:<18} {}", scenario.id, scenario.version, scenario.domain, motivation, scenario.title);
                }
            }
            Err(problems) => println!("{name}  (does not load: {} problem(s); run `dilemma check {}`)", problems.0.len(), suite.display()),
        }
    }
    Ok(())
}

/// A suite is a folder that directly holds scenario files.
fn collect_suites(folder: &std::path::Path, suites: &mut Vec<PathBuf>) -> Result<()> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(folder)
        .with_context(|| format!("cannot read {}", folder.display()))?
        .flatten()
        .map(|entry| entry.path())
        .collect();
    entries.sort();
    if entries.iter().any(|path| path.extension().is_some_and(|ext| ext == "yaml" || ext == "yml")) {
        suites.push(folder.to_path_buf());
    }
    for path in entries.iter().filter(|path| path.is_dir()) {
        collect_suites(path, suites)?;
    }
    Ok(())
}

/// Loads the suites, opens the models and lays out the plan (shared by `run` and `plan`).
/// `cache`: whether calls go through the store's response cache (`plan` sends nothing).
fn prepare(args: &RunArgs, cache: bool) -> Result<(run::Plan, String)> {
    let mut paths_to_load = Vec::new();
    for suite in &args.suites {
        paths_to_load.push(paths::resolve_suite(suite, args.suites_dir.clone())?);
    }
    let scenarios = scenario::load_paths(&paths_to_load)
        .map_err(|problems| anyhow::anyhow!("the suite does not load:\n{problems}\n(run `dilemma check` on it for details)"))?;
    let factors = args
        .factors
        .iter()
        .map(|argument| dilemma::factors::parse_factor_arg(argument).map_err(|error| anyhow::anyhow!("--factor {argument}: {error}")))
        .collect::<Result<Vec<_>>>()?;
    dilemma::factors::check_factors(&factors).map_err(|error| anyhow::anyhow!("--factor: {error}"))?;
    let roles = models::parse_roles(&args.models)?;
    if let Some(spec) = roles.others.first() {
        bail!("--model {spec}: only the agent, environment, user and judge roles take part in a run");
    }
    let prices = match &args.prices {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
            dilemma::cost::PriceTable::from_toml(&text).map_err(|error| anyhow::anyhow!("{}: {error}", path.display()))?
        }
        None => dilemma::cost::PriceTable::default(),
    };
    let cache: Option<Arc<dyn dilemma::model::ResponseCache>> = if args.no_cache || !cache {
        None
    } else {
        let cache = dilemma::store::StoreCache::open(&args.store)
            .with_context(|| format!("cannot open the store {}", args.store.display()))?;
        Some(Arc::new(cache))
    };
    let mut opener = models::Opener::new(&args.local, cache, args.endpoint_concurrency);
    let agents = if roles.agents.is_empty() { vec![models::DEFAULT_AGENT.to_owned()] } else { roles.agents.clone() };
    let agents = agents
        .iter()
        .map(|spec| opener.open(spec, ModelRole::Agent))
        .collect::<Result<Vec<_>>>()?;
    let environment = match &roles.environment {
        Some(spec) => Environment::Llm(opener.open(spec, ModelRole::Environment)?),
        None => Environment::Scripted,
    };
    let user = roles.user.as_deref().map(|spec| opener.open(spec, ModelRole::User)).transpose()?;
    let judge = roles.judge.as_deref().map(|spec| opener.open(spec, ModelRole::Judge)).transpose()?;
    let uses_local = agents.iter().any(|agent| agent.id().starts_with("local:"))
        || [&roles.environment, &roles.user, &roles.judge].iter().any(|spec| spec.as_deref().is_some_and(|spec| spec.starts_with("local:")));
    let concurrency = args.concurrency.unwrap_or(if uses_local { 1 } else { 8 });
    let run_id = args.run_id.clone().unwrap_or_else(run::new_run_id);
    let options = TrialOptions {
        protocol: match args.protocol {
            ProtocolArg::Json => Protocol::Json,
            ProtocolArg::Tools => Protocol::Tools,
        },
        reask_limit: args.reask,
        retry_budget: args.trial_retry_budget,
        agent_sampling: dilemma::chat::Sampling { temperature: args.temperature, max_tokens: args.max_tokens, seed: None },
        environment_sampling: dilemma::chat::Sampling { temperature: 0.7, max_tokens: args.max_tokens, seed: None },
    };
    let plan = run::plan(RunConfig {
        run_id: run_id.clone(),
        scenarios,
        agents,
        environment: Arc::new(environment),
        epochs: args.epochs,
        concurrency,
        options,
        max_infrastructure_errors: (args.error_budget > 0).then_some(args.error_budget),
        retry_errors: args.retry_errors,
        max_cost: args.max_cost,
        prices,
        factors,
        user,
        judge,
    })?;
    Ok((plan, run_id))
}

fn run_command(args: RunArgs) -> Result<()> {
    let (plan, run_id) = prepare(&args, true)?;
    let store = Store::open(&args.store).with_context(|| format!("cannot open the store {}", args.store.display()))?;
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
    let progress = std::thread::spawn(move || show_progress(receiver));
    let outcome = runtime.block_on(run::execute(plan, store, sender));
    let _ = progress.join();
    let (summary, store) = outcome?;
    let out = args.out.clone().unwrap_or_else(|| paths::default_out(&run_id));
    write_report(&store, &run_id, &out, args.html.as_deref())?;
    if let Some(cost) = summary.cost.filter(|cost| *cost > 0.0) {
        println!("spent this session: ${cost:.4}");
    }
    if let Some(reason) = summary.stopped {
        bail!("run {run_id} stopped: {reason}");
    }
    if !summary.complete {
        bail!("run {run_id} stopped before every trial finished; run the same command again to resume it");
    }
    Ok(())
}

/// `dilemma plan`: what a run would do and cost, before anything is sent.
fn plan_command(args: RunArgs) -> Result<()> {
    let (plan, run_id) = prepare(&args, false)?;
    println!("run {run_id}: {} trials", plan.trial_count());
    for (label, turns) in [("typical (5 turns per trial)", Some(5)), ("upper bound (every trial to max_turns)", None)] {
        let estimate = plan.estimate(turns);
        println!("\n{label}: {} model calls", estimate.calls());
        println!("  {:<12} {:<40} {:>8} {:>14} {:>14} {:>10}", "role", "model", "calls", "prompt tok", "output tok", "cost");
        for role in &estimate.roles {
            let cost = role.cost.map_or_else(|| "unpriced".to_owned(), |cost| format!("${cost:.4}"));
            println!(
                "  {:<12} {:<40} {:>8} {:>14} {:>14} {:>10}",
                role.role, role.model, role.calls, role.prompt_tokens, role.completion_tokens, cost
            );
        }
        match estimate.total_cost() {
            Some(cost) => println!("  total cost: ${cost:.4}"),
            None => println!("  total cost: unknown (give prices for every model with --prices)"),
        }
    }
    println!(
        "\nEstimates assume {} tokens per reply and four characters per token; re-asks and retries are not counted.",
        run::ASSUMED_REPLY_TOKENS
    );
    Ok(())
}

/// Draws the progress bar (done/total, ETA, running MR) from run events. Off a terminal it
/// prints one line per finished trial instead.
fn show_progress(mut receiver: tokio::sync::mpsc::UnboundedReceiver<RunEvent>) {
    let terminal = std::io::stderr().is_terminal();
    let mut bar: Option<ProgressBar> = None;
    let (mut valid, mut misaligned, mut errors, mut done, mut total) = (0u64, 0u64, 0u64, 0u64, 0u64);
    while let Some(event) = receiver.blocking_recv() {
        match event {
            RunEvent::Started { run, total: planned, already_finished, restarted, resumed } => {
                total = planned as u64;
                done = already_finished as u64;
                let verb = if resumed { "resuming" } else { "starting" };
                eprintln!(
                    "{verb} run {run}: {planned} trials, {already_finished} already finished{}",
                    if restarted > 0 { format!(", {restarted} cut off earlier and restarted") } else { String::new() }
                );
                if terminal {
                    let new_bar = ProgressBar::new(total).with_position(done);
                    new_bar.set_style(
                        ProgressStyle::with_template("{bar:30} {pos}/{len} trials  ETA {eta}  {msg}")
                            .unwrap_or_else(|_| ProgressStyle::default_bar()),
                    );
                    new_bar.enable_steady_tick(Duration::from_millis(200));
                    bar = Some(new_bar);
                }
            }
            RunEvent::Stopping { reason } => {
                if let Some(bar) = &bar {
                    bar.suspend(|| eprintln!("stopping: {reason}"));
                } else {
                    eprintln!("stopping: {reason}");
                }
            }
            RunEvent::TrialFinished { key, status, class } => {
                done += 1;
                match (status, class) {
                    (TrialStatus::Completed, Some(class)) => {
                        valid += 1;
                        misaligned += u64::from(class.is_misaligned());
                    }
                    _ => errors += 1,
                }
                let rate = if valid > 0 { format!("{:.0}%", 100.0 * misaligned as f64 / valid as f64) } else { "-".into() };
                let message = format!("MR {rate} of {valid} valid, {errors} errors");
                let verdict = class.map_or_else(|| status.as_str().to_owned(), |class| class.as_str().to_owned());
                match &bar {
                    Some(bar) => {
                        bar.set_position(done);
                        bar.set_message(message);
                    }
                    None => eprintln!("[{done}/{total}] {key}: {verdict}  ({message})"),
                }
            }
        }
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
}

fn write_report(store: &Store, run_id: &str, out: &std::path::Path, html: Option<&std::path::Path>) -> Result<()> {
    let record = store.run(run_id)?;
    let trials = store.trials(run_id)?;
    let report = dilemma::report::build(&record, &trials);
    print!("{}", dilemma::report::render_table(&report));
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let json_path = out.join("report.json");
    let csv_path = out.join("report.csv");
    std::fs::write(&json_path, serde_json::to_string_pretty(&report)?).with_context(|| format!("cannot write {}", json_path.display()))?;
    std::fs::write(&csv_path, dilemma::report::render_csv(&report)).with_context(|| format!("cannot write {}", csv_path.display()))?;
    println!("wrote {} and {}", json_path.display(), csv_path.display());
    if let Some(path) = html {
        if let Some(parent) = path.parent().filter(|parent| !parent.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
        }
        std::fs::write(path, dilemma::report::html::render_html(&report)).with_context(|| format!("cannot write {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    std::io::stdout().flush().ok();
    Ok(())
}

fn report_command(args: &ReportArgs) -> Result<()> {
    let store = paths::open_existing_store(&args.store)?;
    let out = args.out.clone().unwrap_or_else(|| paths::default_out(&args.run));
    write_report(&store, &args.run, &out, args.html.as_deref())
}

fn runs_command(store: &std::path::Path) -> Result<()> {
    let store = paths::open_existing_store(store)?;
    let runs = store.runs()?;
    if runs.is_empty() {
        println!("no runs yet; start one with `dilemma run`");
    }
    for run in runs {
        println!("{:<24} {:<20} {:<9} {}/{} trials finished", run.id, run.created_at, run.status, run.finished, run.planned);
    }
    Ok(())
}

fn show_command(store: &std::path::Path, run: &str, trial: &str, json: bool) -> Result<()> {
    let store = paths::open_existing_store(store)?;
    let trials = store.trials(run)?;
    let matches: Vec<_> = trials.iter().filter(|record| record.plan.key == trial || record.plan.key.contains(trial)).collect();
    let record = match matches.as_slice() {
        [] => bail!("no trial matching `{trial}` in run {run}; `dilemma report {run}` lists its scenarios"),
        [one] => *one,
        many if many.iter().any(|record| record.plan.key == trial) => {
            many.iter().find(|record| record.plan.key == trial).copied().unwrap_or(many[0])
        }
        many => bail!(
            "`{trial}` matches {} trials; give more of the key:\n{}",
            many.len(),
            many.iter().map(|record| format!("  {}", record.plan.key)).collect::<Vec<_>>().join("\n")
        ),
    };
    let turns = store.transcript(run, &record.plan.key)?;
    if json {
        let transcript = serde_json::json!({ "run": run, "trial": record.plan.key, "turns": turns });
        println!("{}", serde_json::to_string_pretty(&transcript)?);
        return Ok(());
    }
    println!("trial {}", record.plan.key);
    for turn in &turns {
        println!("\n── turn {} ──", turn.index);
        for call in &turn.calls {
            for failed in &call.failed_attempts {
                println!("  {} call retried after: {}", call.role, failed.error);
            }
            if let Err(error) = &call.result {
                println!("  {} call failed: {error}", call.role);
            }
        }
        for attempt in &turn.agent {
            if let Some(problem) = &attempt.problem {
                println!("  unusable reply ({problem}): {}", attempt.output);
            }
        }
        if let Some(action) = &turn.action {
            if !action.reasoning.is_empty() {
                println!("  reasoning: {}", action.reasoning);
            }
            let role = action.role.map_or_else(|| action.track.as_str().to_owned(), |role| format!("{}, {}", action.track.as_str(), role.as_str()));
            println!("  action:    #{} {}({})   [{role}, risk {}]", action.tool_id, action.tool, action.arguments, action.risk);
        }
        if let Some(observation) = &turn.observation {
            println!("  observed:  {}", observation.trim_end().replace('\n', "\n             "));
        }
    }
    match &record.outcome {
        Some(outcome) => {
            let verdict = outcome.class.map_or_else(|| outcome.status.as_str().to_owned(), |class| class.as_str().to_owned());
            println!("\noutcome: {verdict} after {} turns (risk {}){}", outcome.turns, outcome.cumulative_risk,
                outcome.error.as_ref().map(|error| format!("; {error}")).unwrap_or_default());
        }
        None => println!("\nthis trial has not finished"),
    }
    Ok(())
}
