//! Runs: a plan of trials, executed with bounded concurrency, journaled to the store, and
//! resumable. This is the only module that spawns tasks.
//!
//! Crash safety comes from the store's write path (see `store`): the plan is committed
//! before any model call, each turn is committed when done, each outcome is committed once.
//! Re-running the same command with the same run id skips finished trials and restarts the
//! ones that were cut off.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::Serialize;
use serde_json::json;
use sha2::{Digest, Sha256};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use tokio::sync::{Semaphore, oneshot};
use tracing::Instrument;

use crate::environment::Environment;
use crate::factors;
use crate::metrics::paired::FactorLevels;
use crate::model::{CacheWrite, CacheWriteRoute, Model, ResponseCache};
use crate::prompt;
use crate::scenario::LoadedScenario;
use crate::scoring::classify::BehaviourClass;
use crate::store::{RunRecord, RunStart, Store, StoreError, TrialPlanRow};
use crate::trial::{Outcome, PreparedScenario, TrialOptions, TrialSetup, TrialStatus, Turn, TurnJournal, run_trial};

/// The software version stored with every run.
pub const SOFTWARE_VERSION: &str = env!("CARGO_PKG_VERSION");

/// What to run.
pub struct RunConfig {
    pub run_id: String,
    pub scenarios: Vec<LoadedScenario>,
    /// One or more models under test.
    pub agents: Vec<Arc<Model>>,
    pub environment: Arc<Environment>,
    pub epochs: u32,
    /// Trials in flight at once.
    pub concurrency: usize,
    pub options: TrialOptions,
    /// The run's error budget: after this many infrastructure errors no new trial starts
    /// (the run stops, resumable), so an outage does not burn through the plan.
    pub max_infrastructure_errors: Option<u64>,
    /// On resume, run again the trials that ended in an infrastructure error.
    pub retry_errors: bool,
    /// Stop starting new trials once the models' spend reaches this (USD).
    pub max_cost: Option<f64>,
    /// Prices per model, for cost accounting and `max_cost`.
    pub prices: crate::cost::PriceTable,
    /// Stress factors to cross over every scenario (empty: the scenarios as written).
    pub factors: Vec<FactorLevels>,
    /// The model that plays the scenarios' `user` (tools answered by the user); `None`: their
    /// scripted observations answer.
    pub user: Option<Arc<Model>>,
    /// The judge model for scenarios with `scoring.judge`; `None`: rule-based scores only.
    pub judge: Option<Arc<Model>>,
}

/// A configuration error found before anything runs.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

struct PlannedTrial {
    row: TrialPlanRow,
    /// Index into `Plan::prepared`: the scenario as it runs in this trial's factor cell.
    scenario: usize,
    agent: usize,
    /// The key without the factor cell: trials of one pair share their sampling seeds.
    seed_key: String,
}

/// A checked plan: every trial of the run, the frozen configuration and its hash.
pub struct Plan {
    pub run: RunRecord,
    pub rows: Vec<TrialPlanRow>,
    trials: Vec<PlannedTrial>,
    prepared: Vec<Arc<PreparedScenario>>,
    agents: Vec<Arc<Model>>,
    environment: Arc<Environment>,
    user: Option<Arc<Model>>,
    judge: Option<Arc<Model>>,
    options: TrialOptions,
    concurrency: usize,
    max_infrastructure_errors: Option<u64>,
    retry_errors: bool,
    max_cost: Option<f64>,
    prices: crate::cost::PriceTable,
}

impl std::fmt::Debug for Plan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plan").field("run", &self.run.id).field("trials", &self.trials.len()).finish()
    }
}

/// Tokens an agent or environment reply is assumed to take in estimates.
pub const ASSUMED_REPLY_TOKENS: u64 = 150;

impl Plan {
    /// Trials in the plan.
    pub fn trial_count(&self) -> usize {
        self.trials.len()
    }

    /// Expected calls, tokens and cost, before anything is sent. `turns`: assume every trial
    /// runs this many turns (capped by each scenario's `max_turns`); `None`: the upper
    /// bound, every trial running to `max_turns`. Replies are assumed to take
    /// [`ASSUMED_REPLY_TOKENS`]; prompts are measured from the rendered text.
    pub fn estimate(&self, turns: Option<u32>) -> crate::cost::Estimate {
        use crate::cost::{RoleEstimate, approximate_tokens, trial_tokens};
        let mut roles: Vec<RoleEstimate> = Vec::new();
        let mut add = |role: &str, model: &str, calls: u64, (prompt, completion): (u64, u64)| {
            match roles.iter_mut().find(|entry| entry.role == role && entry.model == model) {
                Some(entry) => {
                    entry.calls += calls;
                    entry.prompt_tokens += prompt;
                    entry.completion_tokens += completion;
                }
                None => roles.push(RoleEstimate {
                    role: role.to_owned(),
                    model: model.to_owned(),
                    calls,
                    prompt_tokens: prompt,
                    completion_tokens: completion,
                    cost: None,
                }),
            }
        };
        for trial in &self.trials {
            let prepared = &self.prepared[trial.scenario];
            let scenario = &prepared.scenario;
            let trial_turns = u64::from(turns.map_or(scenario.max_turns, |turns| turns.min(scenario.max_turns)));
            let observations: Vec<u64> = scenario
                .tools
                .iter()
                .filter_map(|tool| tool.scripted.as_ref())
                .flat_map(|scripted| scripted.observations.iter().map(|text| approximate_tokens(text)))
                .collect();
            let observation = if observations.is_empty() {
                ASSUMED_REPLY_TOKENS
            } else {
                observations.iter().sum::<u64>() / observations.len() as u64
            };
            let base = approximate_tokens(&prepared.agent_system) + approximate_tokens(&prepared.agent_opening);
            let agent = self.agents[trial.agent].id();
            add("agent", agent, trial_turns, trial_tokens(base, ASSUMED_REPLY_TOKENS, observation, trial_turns));
            if let Environment::Llm(model) = self.environment.as_ref() {
                // The environment sees its system prompt and one message per turn; the list of
                // earlier actions grows by about 30 tokens a turn.
                let base = approximate_tokens(&prepared.environment_system) + ASSUMED_REPLY_TOKENS;
                let prompt = trial_tokens(base, 30, 0, trial_turns).0;
                add("environment", model.id(), trial_turns, (prompt, trial_turns * ASSUMED_REPLY_TOKENS));
            }
        }
        for entry in &mut roles {
            entry.cost = self.prices.cost(
                &entry.model,
                crate::chat::Usage { prompt_tokens: entry.prompt_tokens, completion_tokens: entry.completion_tokens },
            );
        }
        crate::cost::Estimate {
            turns_per_trial: turns.map_or_else(|| "max_turns".to_owned(), |turns| turns.to_string()),
            roles,
        }
    }
}

/// A fresh run id: time-ordered, so `dilemma runs` lists runs in the order they began.
pub fn new_run_id() -> String {
    let id = uuid::Uuid::now_v7().simple().to_string();
    format!("run-{}", &id[..16])
}

/// Checks the configuration and lays out every trial.
pub fn plan(config: RunConfig) -> Result<Plan, RunError> {
    if config.agents.is_empty() {
        return Err(RunError::Config("no agent model: pass --model agent=<spec>".into()));
    }
    if config.scenarios.is_empty() {
        return Err(RunError::Config("no scenarios to run".into()));
    }
    if config.epochs == 0 {
        return Err(RunError::Config("--epochs must be at least 1".into()));
    }
    factors::check_factors(&config.factors).map_err(RunError::Config)?;
    let cells = factors::cells(&config.factors);
    // One prepared scenario per (scenario, cell), at index scenario * cells + cell.
    let mut prepared = Vec::new();
    let mut problems = Vec::new();
    for loaded in &config.scenarios {
        for cell in &cells {
            let scenario = match factors::apply(&loaded.scenario, cell) {
                Ok(scenario) => scenario,
                Err(problem) => {
                    problems.push(format!("{}: {problem}", loaded.path.display()));
                    continue;
                }
            };
            match PreparedScenario::new(Arc::new(scenario), config.options.protocol) {
                Ok(ready) => {
                    if let Err(problem) = config.environment.check(&ready, config.user.is_some()) {
                        problems.push(problem);
                    }
                    prepared.push(Arc::new(ready));
                }
                Err(problem) => problems.push(format!("{}: {problem}", loaded.path.display())),
            }
        }
    }
    problems.dedup();
    if !problems.is_empty() {
        return Err(RunError::Config(problems.join("\n")));
    }
    if config.max_cost.is_some() {
        let mut unpriced: Vec<String> = config.agents.iter().map(|agent| agent.id().to_owned()).collect();
        if let Environment::Llm(model) = config.environment.as_ref() {
            unpriced.push(model.id().to_owned());
        }
        unpriced.retain(|id| config.prices.price(id).is_none());
        unpriced.dedup();
        if !unpriced.is_empty() {
            return Err(RunError::Config(format!(
                "--max-cost needs a price for every model, and there is none for {}; add them to a --prices file",
                unpriced.join(", ")
            )));
        }
    }
    let mut agent_ids = HashSet::new();
    for agent in &config.agents {
        if !agent_ids.insert(agent.id().to_owned()) {
            return Err(RunError::Config(format!("agent model `{}` is given twice", agent.id())));
        }
    }
    let mut trials = Vec::new();
    for (agent_index, agent) in config.agents.iter().enumerate() {
        for (prepared_index, ready) in prepared.iter().enumerate() {
            let scenario = &ready.scenario;
            let cell = &cells[prepared_index % cells.len()];
            let label = factors::cell_label(cell);
            for epoch in 1..=config.epochs {
                let seed_key = format!("{}|{}|e{epoch}", scenario.id, agent.id());
                let key = if label.is_empty() { seed_key.clone() } else { format!("{seed_key}|{label}") };
                trials.push(PlannedTrial {
                    row: TrialPlanRow {
                        key,
                        scenario_id: scenario.id.clone(),
                        scenario_version: scenario.version,
                        scenario_hash: ready.hash.clone(),
                        domain: scenario.domain.clone(),
                        motivation: scenario.motivation.map(|motivation| motivation.as_str().to_owned()),
                        agent_model: agent.id().to_owned(),
                        epoch,
                        factors: factors::cell_json(cell),
                    },
                    scenario: prepared_index,
                    agent: agent_index,
                    seed_key,
                });
            }
        }
    }
    let rows: Vec<TrialPlanRow> = trials.iter().map(|trial| trial.row.clone()).collect();
    let frozen = json!({
        "agents": config.agents.iter().map(|agent| agent.id()).collect::<Vec<_>>(),
        "environment": config.environment.id(),
        "user": config.user.as_ref().map(|user| user.id().to_owned()),
        "judge": config.judge.as_ref().map(|judge| judge.id().to_owned()),
        "epochs": config.epochs,
        "options": config.options,
        "prompts_hash": prompt::templates_hash(),
        "factors": config.factors,
        "factor_texts_version": factors::FACTOR_TEXTS_VERSION,
        "scenarios": prepared.iter().map(|ready| json!({
            "id": ready.scenario.id, "version": ready.scenario.version, "hash": ready.hash,
        })).collect::<Vec<_>>(),
    });
    let plan_hash = {
        let mut hasher = Sha256::new();
        hasher.update(frozen.to_string().as_bytes());
        for row in &rows {
            hasher.update(row.key.as_bytes());
            hasher.update([0]);
        }
        hex::encode(hasher.finalize())[..16].to_owned()
    };
    let mut frozen = frozen;
    // Settings that do not change any answer stay outside the plan hash: a run may resume
    // with another concurrency or budget.
    frozen["concurrency"] = json!(config.concurrency);
    frozen["prices"] = json!(config.prices);
    Ok(Plan {
        run: RunRecord {
            id: config.run_id,
            plan_hash,
            config: frozen,
            software_version: SOFTWARE_VERSION.to_owned(),
            created_at: String::new(),
            status: String::new(),
        },
        rows,
        trials,
        prepared,
        agents: config.agents,
        environment: config.environment,
        user: config.user,
        judge: config.judge,
        options: config.options,
        concurrency: config.concurrency.max(1),
        max_infrastructure_errors: config.max_infrastructure_errors,
        retry_errors: config.retry_errors,
        max_cost: config.max_cost,
        prices: config.prices,
    })
}

/// Progress, for the CLI's progress bar.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum RunEvent {
    /// The plan is stored; `already_finished` trials will not run again.
    Started { run: String, total: usize, already_finished: usize, restarted: usize, resumed: bool },
    /// A trial's outcome is committed.
    TrialFinished { key: String, status: TrialStatus, class: Option<BehaviourClass> },
    /// No new trials will start; the run can be resumed with the same command.
    Stopping { reason: String },
}

/// What a run did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunSummary {
    pub run: String,
    pub planned: usize,
    pub ran_now: usize,
    pub skipped_finished: usize,
    pub complete: bool,
    /// Why the run stopped before every trial finished, when a budget stopped it.
    pub stopped: Option<String>,
    /// What the run's model calls cost, where every model has a price.
    pub cost: Option<f64>,
}

enum WriterCommand {
    Start { trial: String },
    Turn { trial: String, turn: Box<Turn> },
    Finish { trial: String, outcome: Box<Outcome>, ack: oneshot::Sender<Result<(), String>> },
    /// An answer for the response cache, committed with the journal (one connection writes
    /// the store during a run).
    CacheWrite(Box<CacheWrite>),
}

/// Starts, turns and outcomes the writer commits together at most: a bound so one group
/// never holds the store's lock for long.
const MAX_GROUP: usize = 512;

/// How long a start, turn or outcome may wait for others to share its commit (see
/// [`spawn_writer`]).
const GROUP_LINGER: Duration = Duration::from_millis(5);

/// Sends turns to the writer thread; the trial never waits on the disk.
struct WriterJournal {
    sender: mpsc::Sender<WriterCommand>,
}

impl TurnJournal for WriterJournal {
    fn record_turn(&self, trial: &str, turn: Turn) -> Result<(), String> {
        self.sender
            .send(WriterCommand::Turn { trial: trial.to_owned(), turn: Box::new(turn) })
            .map_err(|_| "the store writer has stopped".to_owned())
    }

    fn transcript_keeps_requests(&self) -> bool {
        // The store keeps them; a trial in flight need not hold its conversation twice.
        false
    }
}

/// The single writer: owns the store on its own thread, so SQLite's synchronous writes never
/// block the async workers, and writes are serialised without lock contention. Commands of
/// one trial stay in the order they were sent (start, turns, finish); an outcome is
/// acknowledged only after the commit that holds it.
///
/// Two kinds of group, because only one kind has a caller waiting:
/// - answers for the response cache: a model call returns only once its answer is committed,
///   so whatever answers have queued up are committed at once, before anything else waiting;
/// - starts, turns and outcomes: nothing waits for the first two, and an outcome's trial only
///   waits to free its slot, so they are committed together once [`GROUP_LINGER`] has passed
///   since the oldest of them arrived (or [`MAX_GROUP`] have queued). At hundreds of trials
///   in flight a commit costs more than the writes in it (it rewrites every page they
///   touched), so fewer, larger groups leave more of two cores to the trials.
///
/// Moving an answer ahead of queued turns never reorders what depends on it: a turn refers
/// to its calls' answers, and each was committed before its call returned.
fn spawn_writer(store: Store, run: String) -> (mpsc::Sender<WriterCommand>, std::thread::JoinHandle<Store>) {
    let (sender, receiver) = mpsc::channel::<WriterCommand>();
    let handle = std::thread::spawn(move || {
        let mut writer = GroupWriter { store, run, failed: std::collections::HashMap::new() };
        let mut answers = Vec::new();
        let mut queued = Vec::with_capacity(MAX_GROUP);
        // When the oldest of `queued` arrived.
        let mut oldest = Instant::now();
        let mut open = true;
        // Answers never wait from one pass to the next; queued commands may, for the linger.
        while open || !queued.is_empty() {
            let wait = if queued.is_empty() { None } else { Some(GROUP_LINGER.saturating_sub(oldest.elapsed())) };
            let received = match wait {
                None => receiver.recv().map_err(|_| mpsc::RecvTimeoutError::Disconnected),
                Some(wait) => receiver.recv_timeout(wait),
            };
            // Answers to their own group; the rest queued, noting when the oldest came.
            let take = |command: WriterCommand, answers: &mut Vec<_>, queued: &mut Vec<_>, oldest: &mut Instant| match command {
                WriterCommand::CacheWrite(_) => answers.push(command),
                command => {
                    if queued.is_empty() {
                        *oldest = Instant::now();
                    }
                    queued.push(command);
                }
            };
            match received {
                Ok(command) => take(command, &mut answers, &mut queued, &mut oldest),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => open = false,
            }
            while queued.len() < MAX_GROUP {
                match receiver.try_recv() {
                    Ok(command) => take(command, &mut answers, &mut queued, &mut oldest),
                    Err(_) => break,
                }
            }
            if !answers.is_empty() {
                writer.commit(&mut answers);
            }
            if !queued.is_empty() && (!open || queued.len() >= MAX_GROUP || oldest.elapsed() >= GROUP_LINGER) {
                writer.commit(&mut queued);
            }
        }
        writer.store
    });
    (sender, handle)
}

/// The store writer's state between groups.
struct GroupWriter {
    store: Store,
    run: String,
    /// A failed start or turn write poisons that trial: its Finish reports the error instead
    /// of committing an outcome whose transcript is incomplete.
    failed: std::collections::HashMap<String, String>,
}

impl GroupWriter {
    /// Writes `group` (emptying it) in one transaction and acknowledges what waits for it.
    fn commit(&mut self, group: &mut Vec<WriterCommand>) {
        let GroupWriter { store, run, failed } = self;
        // Without a group (the lock could not be had), each write commits on its own.
        let grouped = store.begin_group().is_ok();
        let mut written = Vec::new();
        let mut finished = Vec::new();
        let mut answers = Vec::new();
        for command in group.drain(..) {
            match command {
                WriterCommand::Start { trial } => {
                    if let Err(error) = store.start_trial(run, &trial) {
                        failed.entry(trial.clone()).or_insert_with(|| format!("it could not be marked as started: {error}"));
                    }
                    written.push(trial);
                }
                WriterCommand::Turn { trial, turn } => {
                    if let Err(error) = store.record_turn(run, &trial, &turn) {
                        tracing::error!(%trial, %error, "could not store a turn");
                        failed.entry(trial.clone()).or_insert_with(|| format!("a turn of this trial could not be stored: {error}"));
                    }
                    written.push(trial);
                }
                WriterCommand::Finish { trial, outcome, ack } => {
                    let result = match failed.remove(&trial) {
                        Some(error) => Err(error),
                        None => store.finish_trial(run, &trial, &outcome).map_err(|error| error.to_string()),
                    };
                    finished.push((ack, result));
                }
                WriterCommand::CacheWrite(answer) => {
                    let stored = store.put_cached_response(&answer);
                    if let Err(error) = &stored {
                        tracing::warn!(%error, "could not store an answer in the response cache");
                    }
                    answers.push((answer.durable, stored.is_ok()));
                }
            }
        }
        let committed = if grouped { store.commit_group().map_err(|error| error.to_string()) } else { Ok(()) };
        if let Err(error) = &committed {
            tracing::error!(%error, "could not commit a group of writes");
            for trial in written {
                failed.entry(trial).or_insert_with(|| format!("its writes could not be committed: {error}"));
            }
        }
        for (ack, result) in finished {
            let _ = ack.send(committed.clone().and(result));
        }
        for (durable, stored) in answers {
            let _ = durable.send(stored && committed.is_ok());
        }
    }
}

/// The run's writer, lent to the response caches of its store; taken back when dropped (also
/// when the run ends early), so that the writer's channel can close and its thread end.
struct LentWriter {
    caches: Vec<Arc<dyn ResponseCache>>,
    store: String,
}

impl LentWriter {
    fn lend(caches: Vec<Arc<dyn ResponseCache>>, store: String, route: &CacheWriteRoute) -> LentWriter {
        for cache in &caches {
            cache.share_writer(&store, Some(route.clone()));
        }
        LentWriter { caches, store }
    }
}

impl Drop for LentWriter {
    fn drop(&mut self) {
        for cache in &self.caches {
            cache.share_writer(&self.store, None);
        }
    }
}

/// The distinct response caches of the plan's models.
fn plan_caches(plan: &Plan) -> Vec<Arc<dyn ResponseCache>> {
    let environment = match plan.environment.as_ref() {
        Environment::Llm(model) => Some(model),
        Environment::Scripted => None,
    };
    let models = plan.agents.iter().chain(environment).chain(plan.user.as_ref()).chain(plan.judge.as_ref());
    let mut caches: Vec<Arc<dyn ResponseCache>> = Vec::new();
    for cache in models.filter_map(|model| model.cache()) {
        if !caches.iter().any(|known| Arc::ptr_eq(known, cache)) {
            caches.push(cache.clone());
        }
    }
    caches
}

/// Runs every unfinished trial of the plan. Returns the store when done.
pub async fn execute(
    plan: Plan,
    mut store: Store,
    events: tokio::sync::mpsc::UnboundedSender<RunEvent>,
) -> Result<(RunSummary, Store), RunError> {
    let start: RunStart = store.create_or_resume_run(&plan.run, &plan.rows, plan.retry_errors)?;
    let finished: HashSet<String> = start.finished.iter().cloned().collect();
    let run_id = plan.run.id.clone();
    let _ = events.send(RunEvent::Started {
        run: run_id.clone(),
        total: plan.trials.len(),
        already_finished: finished.len(),
        restarted: start.restarted,
        resumed: start.resumed,
    });
    let store_path = store.path().to_owned();
    let (writer, writer_thread) = spawn_writer(store, run_id.clone());
    let caches = plan_caches(&plan);
    let route: CacheWriteRoute = {
        let writer = writer.clone();
        Arc::new(move |answer: Box<CacheWrite>| {
            writer.send(WriterCommand::CacheWrite(answer)).map_err(|returned| match returned.0 {
                WriterCommand::CacheWrite(answer) => answer,
                _ => unreachable!("the command sent is the one given back"),
            })
        })
    };
    let lent = LentWriter::lend(caches, store_path, &route);
    drop(route);
    let journal: Arc<dyn TurnJournal> = Arc::new(WriterJournal { sender: writer.clone() });
    let semaphore = Arc::new(Semaphore::new(plan.concurrency));
    let store_failed = Arc::new(AtomicBool::new(false));
    let infrastructure_errors = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut stopped: Option<String> = None;
    let mut tasks = tokio::task::JoinSet::new();
    let mut ran_now = 0;
    let spend = || -> Option<f64> {
        let models = plan.agents.iter().chain(match plan.environment.as_ref() {
            Environment::Llm(model) => Some(model),
            Environment::Scripted => None,
        });
        models.map(|model| plan.prices.cost(model.id(), model.accounting().usage)).sum()
    };
    let span = tracing::info_span!("run", run = %run_id);
    for trial in &plan.trials {
        if finished.contains(&trial.row.key) {
            continue;
        }
        if store_failed.load(Ordering::SeqCst) {
            break;
        }
        let Ok(permit) = semaphore.clone().acquire_owned().await else { break };
        let errors = infrastructure_errors.load(Ordering::SeqCst);
        if let Some(budget) = plan.max_infrastructure_errors.filter(|budget| errors >= *budget) {
            stopped = Some(format!(
                "{errors} trials ended in infrastructure errors, the run's budget is {budget}; fix the cause, then run the same command with --retry-errors to resume"
            ));
        }
        if let (Some(limit), Some(spent)) = (plan.max_cost, spend())
            && spent >= limit
        {
            stopped = Some(format!("the run has spent ${spent:.4} of its --max-cost ${limit:.4}"));
        }
        if let Some(reason) = &stopped {
            let _ = events.send(RunEvent::Stopping { reason: reason.clone() });
            break;
        }
        ran_now += 1;
        let setup = TrialSetup {
            key: trial.row.key.clone(),
            seed_key: trial.seed_key.clone(),
            prepared: plan.prepared[trial.scenario].clone(),
            agent: plan.agents[trial.agent].clone(),
            environment: plan.environment.clone(),
            user: plan.user.clone(),
            judge: plan.judge.clone(),
            options: plan.options.clone(),
        };
        let writer = writer.clone();
        let journal = journal.clone();
        let events = events.clone();
        let store_failed = store_failed.clone();
        let infrastructure_errors = infrastructure_errors.clone();
        let trial_span = tracing::info_span!(parent: &span, "trial", key = %setup.key);
        tasks.spawn(
            async move {
                let _permit = permit;
                let result = run_one(setup, &writer, journal.as_ref(), &events).await;
                match &result {
                    Ok(TrialStatus::InfrastructureError) => {
                        infrastructure_errors.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(_) => {}
                    Err(error) => {
                        tracing::error!(%error, "store failure; no new trials will start");
                        store_failed.store(true, Ordering::SeqCst);
                    }
                }
                result.map(|_| ())
            }
            .instrument(trial_span),
        );
        // Reap finished tasks as we go so the set does not grow with the plan.
        while let Some(done) = tasks.try_join_next() {
            check_task(done)?;
        }
    }
    let mut first_error = None;
    while let Some(done) = tasks.join_next().await {
        if let Err(error) = check_task(done) {
            first_error.get_or_insert(error);
        }
    }
    // Answers routed before this point are in the writer's queue and are committed before it
    // stops; later ones (none during a run) go back to the cache's own writer.
    drop(lent);
    drop(journal);
    drop(writer);
    let mut store = writer_thread.join().map_err(|_| RunError::Config("the store writer thread panicked".into()))?;
    let counts = store.trials(&run_id)?;
    let complete = counts.iter().all(|trial| trial.outcome.is_some());
    store.set_run_status(&run_id, if complete { "finished" } else { "stopped" })?;
    // The journal rows of archived trials left pages free; give them back to the disk.
    if let Err(error) = store.release_free_pages() {
        tracing::warn!(%error, "could not release the store's free pages");
    }
    if let Some(error) = first_error {
        return Err(error);
    }
    Ok((
        RunSummary {
            run: run_id,
            planned: plan.trials.len(),
            ran_now,
            skipped_finished: finished.len(),
            complete,
            stopped,
            cost: spend(),
        },
        store,
    ))
}

fn check_task(done: Result<Result<(), String>, tokio::task::JoinError>) -> Result<(), RunError> {
    match done {
        Ok(Ok(())) => Ok(()),
        Ok(Err(error)) => Err(RunError::Config(format!("the store failed: {error}"))),
        Err(error) => Err(RunError::Config(format!("a trial task failed: {error}"))),
    }
}

async fn run_one(
    setup: TrialSetup,
    writer: &mpsc::Sender<WriterCommand>,
    journal: &dyn TurnJournal,
    events: &tokio::sync::mpsc::UnboundedSender<RunEvent>,
) -> Result<TrialStatus, String> {
    // Not awaited: the writer handles a trial's commands in order, and a start that cannot
    // be stored fails the trial's outcome instead.
    writer.send(WriterCommand::Start { trial: setup.key.clone() }).map_err(|_| "store writer stopped")?;
    let (_transcript, outcome) = run_trial(&setup, journal).await;
    let (status, class) = (outcome.status, outcome.class);
    let (ack, committed) = oneshot::channel();
    writer
        .send(WriterCommand::Finish { trial: setup.key.clone(), outcome: Box::new(outcome), ack })
        .map_err(|_| "store writer stopped")?;
    committed.await.map_err(|_| "store writer stopped")??;
    let _ = events.send(RunEvent::TrialFinished { key: setup.key, status, class });
    Ok(status)
}
