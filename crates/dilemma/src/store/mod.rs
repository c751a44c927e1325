//! The store: the only module that knows SQL.
//!
//! One SQLite file holds runs, their planned trials, every turn as it happens, and every
//! model call with its full request and response; and synthesis batches (`synth`), with
//! every round of every stage and each candidate's verdict. The write path is built for crash
//! safety:
//!
//! - all trials of a run are inserted as `planned` when the run is created, so the plan is
//!   durable before any model is called;
//! - each turn is committed as soon as it is done; a writer may group the turns, outcomes
//!   and cached answers that queued up meanwhile into one transaction ([`Store::begin_group`]),
//!   and acknowledges an outcome only after the commit that holds it;
//! - a trial's outcome is committed in one transaction that flips it to `finished`, guarded
//!   by `status <> 'finished'`, so a trial can never be finished twice; the same transaction
//!   compacts the trial's journal rows into one compressed archive (`archive`);
//! - resuming a run deletes the partial turns and calls of trials that were not finished
//!   and runs them again from the start.

mod archive;
mod cache;
mod calls;

pub use cache::StoreCache;

use std::collections::{HashMap, HashSet};
use std::path::Path;

use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

use crate::model::{ModelCall, ModelRole};
use crate::synth::{Judgement, Round, Stage};
use crate::trial::{Outcome, Turn};

/// Schema migrations, applied in order; `PRAGMA user_version` records how many ran.
const MIGRATIONS: &[&str] = &[
    include_str!("migrations/001_initial.sql"),
    include_str!("migrations/002_response_cache.sql"),
    include_str!("migrations/003_synthesis.sql"),
    include_str!("migrations/004_compact_calls.sql"),
    include_str!("migrations/005_trial_archives.sql"),
];

/// A store failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error in {path}: {source}")]
    Sqlite { path: String, source: rusqlite::Error },
    #[error("stored JSON could not be read: {0}")]
    Json(#[from] serde_json::Error),
    #[error(
        "run `{run}` already exists with a different plan (stored plan {stored}, this plan {requested}); resume it with the same suite, models, factors and epochs, or pick a new --run id"
    )]
    PlanMismatch { run: String, stored: String, requested: String },
    #[error("no run `{0}` in this store; `dilemma runs` lists the runs it holds")]
    NoSuchRun(String),
    #[error("trial `{trial}` of run `{run}` is not in the plan")]
    NoSuchTrial { run: String, trial: String },
    #[error("trial `{trial}` of run `{run}` is already finished; refusing to store it twice")]
    AlreadyFinished { run: String, trial: String },
    #[error("the store refers to a shared text {0} it does not hold; the file is damaged")]
    MissingText(String),
    #[error("a trial archive could not be (un)compressed: {0}")]
    Archive(std::io::Error),
    #[error("cannot start the store's writer thread: {0}")]
    Thread(std::io::Error),
    #[error(
        "{path} was written by a newer dilemma (schema version {found}, this build knows {known}); use a newer dilemma"
    )]
    TooNew { path: String, found: usize, known: usize },
}

/// A run as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    pub id: String,
    /// Hash of everything that defines the trials; a resume must match it.
    pub plan_hash: String,
    /// The frozen configuration (models, options, scenario hashes, prompt hashes), as JSON.
    pub config: serde_json::Value,
    pub software_version: String,
    #[serde(default)]
    pub created_at: String,
    #[serde(default)]
    pub status: String,
}

/// A planned trial: what it runs, for grouping in reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrialPlanRow {
    pub key: String,
    pub scenario_id: String,
    pub scenario_version: u32,
    pub scenario_hash: String,
    pub domain: String,
    pub motivation: Option<String>,
    pub agent_model: String,
    pub epoch: u32,
    /// Factor levels as a JSON object (empty for the baseline).
    pub factors: serde_json::Value,
}

/// A trial with its outcome, if finished.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrialRecord {
    #[serde(flatten)]
    pub plan: TrialPlanRow,
    pub outcome: Option<Outcome>,
}

/// What creating or resuming a run found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunStart {
    pub resumed: bool,
    /// Keys of the trials already finished, which must not run again.
    pub finished: Vec<String>,
    /// Trials that had started but not finished; their partial data was removed.
    pub restarted: usize,
}

/// Per-run totals for `dilemma runs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunListing {
    pub id: String,
    pub created_at: String,
    pub status: String,
    pub planned: u64,
    pub finished: u64,
}

/// A synthesis batch as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SynthBatchRecord {
    pub id: String,
    /// The frozen configuration (settings, model ids, templates hash), as JSON.
    pub config: serde_json::Value,
    pub software_version: String,
    #[serde(default)]
    pub created_at: String,
}

/// A synthesis candidate's verdict as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SynthCandidateRecord {
    pub batch_id: String,
    pub candidate: u32,
    /// running | accepted | rejected | error
    pub status: String,
    pub reason: Option<String>,
    pub scenario_id: Option<String>,
    /// The compiled scenario, YAML.
    pub scenario: Option<String>,
    pub path: Option<String>,
    pub nearest_id: Option<String>,
    pub nearest_similarity: Option<f64>,
}

/// An open store.
pub struct Store {
    connection: Connection,
    path: String,
    /// Per unfinished trial and role: the messages its last stored call sent, so the next
    /// call stores only what is new (see `calls`). Clones of a conversation's messages share
    /// their texts, so comparing one with the next is mostly pointer comparisons.
    sent: HashMap<String, HashMap<ModelRole, Vec<crate::chat::Message>>>,
    /// Texts this connection has put into `texts`, so each is inserted once.
    shared_texts: HashSet<calls::Digest128>,
    /// Tool lists seen, by address (each kept alive here so the address stays its own), with
    /// their reference in `texts`.
    tool_lists: HashMap<usize, (std::sync::Arc<[crate::chat::ToolSpec]>, Option<String>)>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

impl Store {
    /// Opens (creating if needed) the store at `path` and applies migrations.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let shown = path.display().to_string();
        if let Some(parent) = path.parent().filter(|parent| !parent.as_os_str().is_empty()) {
            // A missing folder would otherwise surface as SQLite's "unable to open database file".
            let _ = std::fs::create_dir_all(parent);
        }
        let connection = Connection::open(path).map_err(|source| StoreError::Sqlite { path: shown.clone(), source })?;
        let mut store = Store { connection, path: shown, sent: HashMap::new(), shared_texts: HashSet::new(), tool_lists: HashMap::new() };
        store.configure()?;
        Ok(store)
    }

    /// An in-memory store, for tests.
    pub fn open_in_memory() -> Result<Store, StoreError> {
        let connection =
            Connection::open_in_memory().map_err(|source| StoreError::Sqlite { path: ":memory:".into(), source })?;
        let mut store = Store { connection, path: ":memory:".into(), sent: HashMap::new(), shared_texts: HashSet::new(), tool_lists: HashMap::new() };
        store.configure()?;
        Ok(store)
    }

    /// The path the store was opened with.
    pub(crate) fn path(&self) -> &str {
        &self.path
    }

    fn sql<T>(&self, result: rusqlite::Result<T>) -> Result<T, StoreError> {
        result.map_err(|source| StoreError::Sqlite { path: self.path.clone(), source })
    }

    fn configure(&mut self) -> Result<(), StoreError> {
        // A new file returns the pages that archived journal rows leave free when asked
        // (`release_free_pages`); this can only be chosen before the first table exists.
        let tables: i64 = self.sql(self.connection.query_row("SELECT COUNT(*) FROM sqlite_schema", [], |row| row.get(0)))?;
        if tables == 0 {
            let incremental = self.connection.execute_batch("PRAGMA auto_vacuum = INCREMENTAL;");
            self.sql(incremental)?;
        }
        // WAL: readers (report, viewer) never block the writer; NORMAL sync is durable across
        // process crashes (kill -9), which is the failure we design for. Checkpoints every
        // 8,192 pages (32 MB of WAL) instead of 1,000: a busy run rewrites the same hot pages
        // (trial rows, indexes) in every group, and each checkpoint copies them once. The page
        // cache stays at SQLite's 2 MB: an 8 MB one saves the writer page reads from the OS's
        // cache (37,600 vs 10,100 for W1's 1,000 trials) but no measurable CPU or wall time,
        // and costs 7 MB of a run's peak memory (W1 at 1,000 in flight: 72 vs 63 MB, median of
        // four alternated runs).
        let pragmas = self.connection.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON; PRAGMA temp_store = MEMORY; \
             PRAGMA wal_autocheckpoint = 8192; PRAGMA cache_size = -2048;",
        );
        self.sql(pragmas)?;
        let waits = self.connection.busy_handler(Some(wait_for_lock));
        self.sql(waits)?;
        // The writer's statements (journal, outcome, archive, groups and savepoints) are more
        // than rusqlite's default 16; a smaller cache would parse them over and over.
        self.connection.set_prepared_statement_cache_capacity(64);
        self.sql(stable_plans(&self.connection))?;
        let version: i64 = self.sql(self.connection.query_row("PRAGMA user_version", [], |row| row.get(0)))?;
        let version = usize::try_from(version).unwrap_or(0);
        if version > MIGRATIONS.len() {
            return Err(StoreError::TooNew { path: self.path.clone(), found: version, known: MIGRATIONS.len() });
        }
        for (index, migration) in MIGRATIONS.iter().enumerate().skip(version) {
            let applied = self.connection.transaction().and_then(|transaction| {
                transaction.execute_batch(migration)?;
                transaction.pragma_update(None, "user_version", (index + 1) as i64)?;
                transaction.commit()
            });
            self.sql(applied)?;
        }
        Ok(())
    }

    /// Creates the run with its planned trials, or resumes it if it exists with the same plan.
    /// With `retry_errors`, trials that ended in an infrastructure error are run again: their
    /// turns, calls and outcome are removed (the response cache keeps what was answered).
    pub fn create_or_resume_run(
        &mut self,
        run: &RunRecord,
        trials: &[TrialPlanRow],
        retry_errors: bool,
    ) -> Result<RunStart, StoreError> {
        let path = self.path.clone();
        let sql = |source| StoreError::Sqlite { path: path.clone(), source };
        let transaction = self.connection.transaction().map_err(sql)?;
        let stored: Option<String> = transaction
            .query_row("SELECT plan_hash FROM runs WHERE id = ?1", [&run.id], |row| row.get(0))
            .optional()
            .map_err(sql)?;
        let start = match stored {
            Some(stored) if stored != run.plan_hash => {
                return Err(StoreError::PlanMismatch {
                    run: run.id.clone(),
                    stored,
                    requested: run.plan_hash.clone(),
                });
            }
            Some(_) => {
                if retry_errors {
                    let retried: Vec<String> = transaction
                        .prepare("SELECT key FROM trials WHERE run_id = ?1 AND status = 'finished' AND outcome_status = 'infrastructure_error'")
                        .and_then(|mut statement| statement.query_map([&run.id], |row| row.get(0))?.collect())
                        .map_err(sql)?;
                    for key in &retried {
                        // The cache keeps what was answered: it takes its copies back first.
                        archive::unarchive(&transaction, &path, &run.id, key, false)?;
                    }
                    transaction
                        .execute("UPDATE trials SET status = 'running' WHERE run_id = ?1 AND status = 'finished' AND outcome_status = 'infrastructure_error'", [&run.id])
                        .map_err(sql)?;
                }
                let restarted = transaction
                    .execute("DELETE FROM model_calls WHERE run_id = ?1 AND trial_key IN (SELECT key FROM trials WHERE run_id = ?1 AND status = 'running')", [&run.id])
                    .and_then(|_| transaction.execute("DELETE FROM turns WHERE run_id = ?1 AND trial_key IN (SELECT key FROM trials WHERE run_id = ?1 AND status = 'running')", [&run.id]))
                    .and_then(|_| transaction.execute("UPDATE trials SET status = 'planned', started_at = NULL, outcome = NULL, outcome_status = NULL, class = NULL, finished_at = NULL WHERE run_id = ?1 AND status = 'running'", [&run.id]))
                    .map_err(sql)?;
                transaction
                    .execute("UPDATE runs SET status = 'running', updated_at = datetime('now') WHERE id = ?1", [&run.id])
                    .map_err(sql)?;
                let finished = {
                    let mut statement = transaction
                        .prepare("SELECT key FROM trials WHERE run_id = ?1 AND status = 'finished' ORDER BY key")
                        .map_err(sql)?;
                    statement
                        .query_map([&run.id], |row| row.get::<_, String>(0))
                        .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
                        .map_err(sql)?
                };
                RunStart { resumed: true, finished, restarted }
            }
            None => {
                transaction
                    .execute(
                        "INSERT INTO runs (id, plan_hash, config, software_version, status, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, 'running', datetime('now'), datetime('now'))",
                        params![run.id, run.plan_hash, run.config.to_string(), run.software_version],
                    )
                    .map_err(sql)?;
                {
                    let mut insert = transaction
                        .prepare("INSERT INTO trials (run_id, key, scenario_id, scenario_version, scenario_hash, domain, motivation, agent_model, epoch, factors, status) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, 'planned')")
                        .map_err(sql)?;
                    for trial in trials {
                        insert
                            .execute(params![
                                run.id,
                                trial.key,
                                trial.scenario_id,
                                trial.scenario_version,
                                trial.scenario_hash,
                                trial.domain,
                                trial.motivation,
                                trial.agent_model,
                                trial.epoch,
                                trial.factors.to_string()
                            ])
                            .map_err(sql)?;
                    }
                }
                RunStart { resumed: false, finished: Vec::new(), restarted: 0 }
            }
        };
        transaction.commit().map_err(sql)?;
        Ok(start)
    }

    /// Marks a trial as started.
    pub fn start_trial(&mut self, run: &str, trial: &str) -> Result<(), StoreError> {
        let changed = self.sql(
            self.connection
                .prepare_cached("UPDATE trials SET status = 'running', started_at = datetime('now') WHERE run_id = ?1 AND key = ?2 AND status <> 'finished'")
                .and_then(|mut statement| statement.execute(params![run, trial])),
        )?;
        if changed == 0 {
            return Err(self.missing_or_finished(run, trial));
        }
        self.sent.remove(trial);
        Ok(())
    }

    fn missing_or_finished(&self, run: &str, trial: &str) -> StoreError {
        let exists = self
            .connection
            .query_row("SELECT 1 FROM trials WHERE run_id = ?1 AND key = ?2", params![run, trial], |_| Ok(()))
            .optional();
        match exists {
            Ok(Some(())) => StoreError::AlreadyFinished { run: run.into(), trial: trial.into() },
            Ok(None) => StoreError::NoSuchTrial { run: run.into(), trial: trial.into() },
            Err(source) => StoreError::Sqlite { path: self.path.clone(), source },
        }
    }

    /// Opens a group: the writes until [`Store::commit_group`] are committed together, so a
    /// writer that has many turns queued pays for one commit. Each write inside keeps its own
    /// all-or-nothing savepoint.
    pub fn begin_group(&mut self) -> Result<(), StoreError> {
        self.sql(self.connection.prepare_cached("BEGIN IMMEDIATE").and_then(|mut statement| statement.execute([])).map(drop))
    }

    /// Abandons the group [`Store::begin_group`] opened.
    pub(crate) fn rollback_group(&mut self) {
        if !self.connection.is_autocommit() {
            let _ = self.connection.execute_batch("ROLLBACK");
        }
        self.shared_texts.clear();
        self.tool_lists.clear();
        self.sent.clear();
    }

    /// Commits the group [`Store::begin_group`] opened (rolling it back if the commit fails).
    pub fn commit_group(&mut self) -> Result<(), StoreError> {
        let committed = self.connection.prepare_cached("COMMIT").and_then(|mut statement| statement.execute([])).map(drop);
        if committed.is_err() {
            // What this connection believed it had written may be gone.
            self.rollback_group();
        }
        self.sql(committed)
    }

    /// Commits one turn and its model calls (inside a group, when one is open). Requests are
    /// stored compactly (see `calls`); a response the response cache holds is referred to
    /// by its key.
    pub fn record_turn(&mut self, run: &str, trial: &str, turn: &Turn) -> Result<(), StoreError> {
        let body = serde_json::to_string(&TurnBody(turn))?;
        let path = self.path.clone();
        let sql = |source| StoreError::Sqlite { path: path.clone(), source };
        let mut sent = self.sent.remove(trial).unwrap_or_default();
        let mut new_texts = Vec::new();
        let shared_texts = &self.shared_texts;
        let tool_lists = &mut self.tool_lists;
        let written = atomically(&self.connection, &self.path, |connection| {
            connection
                .prepare_cached(
                    "INSERT INTO turns (run_id, trial_key, turn_index, body, recorded_at) VALUES (?1, ?2, ?3, ?4, datetime('now'))",
                )
                .and_then(|mut statement| statement.execute(params![run, trial, turn.index, body]))
                .map_err(sql)?;
            {
                let mut insert = connection
                    .prepare_cached("INSERT INTO model_calls (run_id, trial_key, turn_index, seq, role, model, request, response, error, prompt_tokens, completion_tokens, latency_ms, failed_attempts, cached, recorded_at, request_format, inherited_messages, cache_key) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, datetime('now'), ?15, ?16, ?17)")
                    .map_err(sql)?;
                let mut share_text = connection
                    .prepare_cached("INSERT OR IGNORE INTO texts (hash, body) VALUES (?1, ?2)")
                    .map_err(sql)?;
                for (seq, call) in turn.calls.iter().enumerate() {
                    let cache_key = call.cache_key.as_deref().filter(|_| call.result.is_ok());
                    let (response, error) = match &call.result {
                        Ok(_) if cache_key.is_some() => (None, None),
                        Ok(response) => (Some(serde_json::to_string(response)?), None),
                        Err(error) => (None, Some(serde_json::to_string(error)?)),
                    };
                    let messages = &call.request.messages;
                    let previous = sent.get(&call.role).map_or(&[][..], Vec::as_slice);
                    let inherited = previous.iter().zip(messages).take_while(|(left, right)| left == right).count();
                    let mut share = |text: &str| -> Result<String, StoreError> {
                        let hash = calls::digest(text.as_bytes());
                        let reference = hex::encode(hash);
                        if !shared_texts.contains(&hash) && !new_texts.contains(&hash) {
                            share_text.execute(params![reference, text]).map_err(sql)?;
                            new_texts.push(hash);
                        }
                        Ok(reference)
                    };
                    // A scenario's tool list is one shared allocation: serialise and hash it
                    // once per list, not once per call.
                    let tools = &call.request.tools;
                    let tools_reference = match tool_lists.get(&(tools.as_ptr() as usize)) {
                        Some((_, reference)) => reference.clone(),
                        None => {
                            let reference = calls::shared_form(&**tools)?.map(|text| share(&text)).transpose()?;
                            tool_lists.insert(tools.as_ptr() as usize, (tools.clone(), reference.clone()));
                            reference
                        }
                    };
                    let output_reference = calls::shared_form(&call.request.output)?.map(|text| share(&text)).transpose()?;
                    let request = calls::encode_request(
                        &call.request,
                        inherited,
                        tools_reference.as_deref().filter(|_| !tools.is_empty()),
                        output_reference.as_deref(),
                        share,
                    )?;
                    let usage = call.usage();
                    insert
                        .execute(params![
                            run,
                            trial,
                            turn.index,
                            seq as i64,
                            call.role.as_str(),
                            call.model,
                            request,
                            response,
                            error,
                            sql_int(usage.prompt_tokens),
                            sql_int(usage.completion_tokens),
                            sql_int(call.latency_ms),
                            serde_json::to_string(&call.failed_attempts)?,
                            call.cached,
                            calls::FORMAT_COMPACT,
                            inherited as i64,
                            cache_key,
                        ])
                        .map_err(sql)?;
                    sent.insert(call.role, messages.clone());
                }
            }
            Ok(())
        });
        // A turn that could not be written leaves `sent` without the trial: its next call
        // stores its whole conversation.
        written?;
        self.shared_texts.extend(new_texts);
        self.sent.insert(trial.to_owned(), sent);
        Ok(())
    }

    /// Commits a trial's outcome; refuses a trial that is already finished.
    pub fn finish_trial(&mut self, run: &str, trial: &str, outcome: &Outcome) -> Result<(), StoreError> {
        let class = outcome.class.map(|class| class.as_str());
        let outcome_json = serde_json::to_string(outcome)?;
        let changed = atomically(&self.connection, &self.path, |connection| {
            let finish = || -> rusqlite::Result<usize> {
                let changed = connection
                    .prepare_cached("UPDATE trials SET status = 'finished', outcome = ?3, outcome_status = ?4, class = ?5, finished_at = datetime('now') WHERE run_id = ?1 AND key = ?2 AND status <> 'finished'")?
                    .execute(params![run, trial, outcome_json, outcome.status.as_str(), class])?;
                if changed > 0 {
                    archive::archive_trial(connection, run, trial)?;
                }
                Ok(changed)
            };
            finish().map_err(|source| StoreError::Sqlite { path: self.path.clone(), source })
        })?;
        self.sent.remove(trial);
        if changed == 0 {
            return Err(self.missing_or_finished(run, trial));
        }
        Ok(())
    }

    /// Marks the run finished (all trials done) or stopped (interrupted by budget or error).
    pub fn set_run_status(&mut self, run: &str, status: &str) -> Result<(), StoreError> {
        self.sql(self.connection.execute(
            "UPDATE runs SET status = ?2, updated_at = datetime('now') WHERE id = ?1",
            params![run, status],
        ))?;
        Ok(())
    }

    /// The run's record.
    pub fn run(&self, run: &str) -> Result<RunRecord, StoreError> {
        let row = self.sql(
            self.connection
                .query_row(
                    "SELECT id, plan_hash, config, software_version, created_at, status FROM runs WHERE id = ?1",
                    [run],
                    |row| {
                        Ok((
                            row.get::<_, String>(0)?,
                            row.get::<_, String>(1)?,
                            row.get::<_, String>(2)?,
                            row.get::<_, String>(3)?,
                            row.get::<_, String>(4)?,
                            row.get::<_, String>(5)?,
                        ))
                    },
                )
                .optional(),
        )?;
        let (id, plan_hash, config, software_version, created_at, status) =
            row.ok_or_else(|| StoreError::NoSuchRun(run.to_owned()))?;
        Ok(RunRecord { id, plan_hash, config: serde_json::from_str(&config)?, software_version, created_at, status })
    }

    /// All runs, newest first.
    pub fn runs(&self) -> Result<Vec<RunListing>, StoreError> {
        let mut statement = self.sql(self.connection.prepare(
            "SELECT r.id, r.created_at, r.status, COUNT(t.key), COALESCE(SUM(t.status = 'finished'), 0) FROM runs r LEFT JOIN trials t ON t.run_id = r.id GROUP BY r.id ORDER BY r.created_at DESC, r.id DESC",
        ))?;
        let rows = statement.query_map([], |row| {
            Ok(RunListing {
                id: row.get(0)?,
                created_at: row.get(1)?,
                status: row.get(2)?,
                planned: row.get::<_, i64>(3)?.max(0) as u64,
                finished: row.get::<_, i64>(4)?.max(0) as u64,
            })
        });
        let rows = rows.and_then(|rows| rows.collect::<Result<Vec<_>, _>>());
        rows.map_err(|source| StoreError::Sqlite { path: self.path.clone(), source })
    }

    /// Every trial of a run, with outcomes where finished, in key order.
    pub fn trials(&self, run: &str) -> Result<Vec<TrialRecord>, StoreError> {
        self.run(run)?;
        let mut statement = self.sql(self.connection.prepare(
            "SELECT key, scenario_id, scenario_version, scenario_hash, domain, motivation, agent_model, epoch, factors, outcome FROM trials WHERE run_id = ?1 ORDER BY key",
        ))?;
        let rows = statement.query_map([run], |row| {
            Ok((
                TrialPlanRow {
                    key: row.get(0)?,
                    scenario_id: row.get(1)?,
                    scenario_version: row.get(2)?,
                    scenario_hash: row.get(3)?,
                    domain: row.get(4)?,
                    motivation: row.get(5)?,
                    agent_model: row.get(6)?,
                    epoch: row.get(7)?,
                    factors: serde_json::Value::Null,
                },
                row.get::<_, String>(8)?,
                row.get::<_, Option<String>>(9)?,
            ))
        });
        let rows = rows
            .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
            .map_err(|source| StoreError::Sqlite { path: self.path.clone(), source })?;
        rows.into_iter()
            .map(|(mut plan, factors, outcome)| {
                plan.factors = serde_json::from_str(&factors)?;
                let outcome = outcome.map(|text| serde_json::from_str(&text)).transpose()?;
                Ok(TrialRecord { plan, outcome })
            })
            .collect()
    }

    /// The stored transcript of a trial: turns with their model calls.
    pub fn transcript(&self, run: &str, trial: &str) -> Result<Vec<Turn>, StoreError> {
        if let Some((_, archived)) = archive::load(&self.connection, &self.path, run, trial)? {
            return self.archived_transcript(archived);
        }
        let mut turns: Vec<Turn> = {
            let mut statement = self.sql(
                self.connection.prepare("SELECT body FROM turns WHERE run_id = ?1 AND trial_key = ?2 ORDER BY turn_index"),
            )?;
            let bodies = statement
                .query_map(params![run, trial], |row| row.get::<_, String>(0))
                .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
                .map_err(|source| StoreError::Sqlite { path: self.path.clone(), source })?;
            bodies.iter().map(|body| serde_json::from_str(body)).collect::<Result<_, _>>()?
        };
        let mut statement = self.sql(self.connection.prepare(
            "SELECT m.turn_index, m.role, m.model, m.request, COALESCE(m.response, c.response), m.error, m.latency_ms, m.failed_attempts, m.cached, m.request_format, m.inherited_messages, m.cache_key \
             FROM model_calls m LEFT JOIN response_cache c ON m.response IS NULL AND m.error IS NULL AND c.key = m.cache_key \
             WHERE m.run_id = ?1 AND m.trial_key = ?2 ORDER BY m.turn_index, m.seq",
        ))?;
        let calls = statement
            .query_map(params![run, trial], |row| {
                Ok((
                    row.get::<_, u32>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, String>(2)?,
                    row.get::<_, String>(3)?,
                    row.get::<_, Option<String>>(4)?,
                    row.get::<_, Option<String>>(5)?,
                    row.get::<_, i64>(6)?.max(0) as u64,
                    row.get::<_, String>(7)?,
                    row.get::<_, bool>(8)?,
                    row.get::<_, i64>(9)?,
                    row.get::<_, i64>(10)?.max(0) as usize,
                    row.get::<_, Option<String>>(11)?,
                ))
            })
            .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
            .map_err(|source| StoreError::Sqlite { path: self.path.clone(), source })?;
        let mut previous: HashMap<ModelRole, Vec<crate::chat::Message>> = HashMap::new();
        for (turn_index, role, model, request, response, error, latency_ms, failed_attempts, cached, format, inherited, cache_key) in calls {
            let role: ModelRole = serde_json::from_value(serde_json::Value::String(role))?;
            let request = calls::decode_request(
                &request,
                format,
                inherited,
                previous.get(&role).map_or(&[][..], Vec::as_slice),
                |reference| self.shared_text(reference),
            )?;
            previous.insert(role, request.messages.clone());
            let response = match (response, &error, &cache_key) {
                // The cache entry's response has moved into a finished trial's archive.
                (None, None, Some(key)) => self.sql(archive::cached_response(&self.connection, key))?,
                (response, _, _) => response,
            };
            let result = match (response, error) {
                (Some(response), _) => Ok(serde_json::from_str(&response)?),
                (None, Some(error)) => Err(serde_json::from_str(&error)?),
                (None, None) => continue,
            };
            let call = ModelCall {
                role,
                model,
                request,
                result,
                failed_attempts: serde_json::from_str(&failed_attempts)?,
                latency_ms,
                cached,
                cache_key,
            };
            if let Some(turn) = turns.iter_mut().find(|turn| turn.index == turn_index) {
                turn.calls.push(call);
            }
        }
        Ok(turns)
    }

    /// Puts a finished trial back into the state a crash leaves it in, for crash tests:
    /// `mid_trial` keeps its first turn and marks it `running`; otherwise it becomes
    /// `planned` with nothing stored.
    #[doc(hidden)]
    pub fn simulate_crash(&mut self, run: &str, trial: &str, mid_trial: bool) -> Result<(), StoreError> {
        let (status, keep_turns) = if mid_trial { ("running", 1) } else { ("planned", 0) };
        {
            let path = self.path.clone();
            let sql = |source| StoreError::Sqlite { path: path.clone(), source };
            let transaction = self.connection.transaction().map_err(sql)?;
            archive::unarchive(&transaction, &path, run, trial, true)?;
            transaction.commit().map_err(sql)?;
        }
        let result = self.connection.execute_batch("BEGIN").and_then(|()| {
            self.connection.execute("DELETE FROM model_calls WHERE run_id = ?1 AND trial_key = ?2 AND turn_index > ?3", params![run, trial, keep_turns])?;
            self.connection.execute("DELETE FROM turns WHERE run_id = ?1 AND trial_key = ?2 AND turn_index > ?3", params![run, trial, keep_turns])?;
            self.connection.execute(
                "UPDATE trials SET status = ?3, outcome = NULL, outcome_status = NULL, class = NULL, finished_at = NULL WHERE run_id = ?1 AND key = ?2",
                params![run, trial, status],
            )?;
            self.connection.execute_batch("COMMIT")
        });
        self.sql(result)
    }

    /// Counts a run's trials, turns and model calls, journaled or archived (used by tests and
    /// `dilemma runs --verbose`).
    pub fn row_counts(&self, run: &str) -> Result<(u64, u64, u64), StoreError> {
        let count = |table: &str, column: &str| -> Result<u64, StoreError> {
            self.sql(self.connection.query_row(
                &format!("SELECT COUNT(*) FROM {table} WHERE {column} = ?1"),
                [run],
                |row| row.get::<_, i64>(0).map(|count| count.max(0) as u64),
            ))
        };
        let archived = |column: &str| -> Result<u64, StoreError> {
            self.sql(self.connection.query_row(
                &format!("SELECT COALESCE(SUM({column}), 0) FROM trial_archives WHERE run_id = ?1"),
                [run],
                |row| row.get::<_, i64>(0).map(|count| count.max(0) as u64),
            ))
        };
        Ok((
            count("trials", "run_id")?,
            count("turns", "run_id")? + archived("turns")?,
            count("model_calls", "run_id")? + archived("calls")?,
        ))
    }

    /// Records a new synthesis batch.
    pub fn create_synth_batch(&mut self, batch: &SynthBatchRecord) -> Result<(), StoreError> {
        self.sql(self.connection.execute(
            "INSERT INTO synth_batches (id, config, software_version, created_at) VALUES (?1, ?2, ?3, datetime('now'))",
            params![batch.id, batch.config.to_string(), batch.software_version],
        ))?;
        Ok(())
    }

    /// Records that a candidate of a batch has started.
    pub fn start_synth_candidate(&mut self, batch: &str, candidate: u32) -> Result<(), StoreError> {
        self.sql(self.connection.execute(
            "INSERT INTO synth_candidates (batch_id, candidate, status, started_at) VALUES (?1, ?2, 'running', datetime('now'))",
            params![batch, candidate],
        ))?;
        Ok(())
    }

    /// Commits one round of one stage of a candidate.
    pub fn record_synth_round(&mut self, batch: &str, candidate: u32, round: &Round) -> Result<(), StoreError> {
        let judgement = round.judgement.as_ref();
        let judge_call = round.judge_call.as_ref().map(serde_json::to_string).transpose()?;
        let output = round.output.as_ref().map(serde_json::Value::to_string);
        self.sql(self.connection.execute(
            "INSERT INTO synth_rounds (batch_id, candidate, stage, round, prompt, reply, output, problems, judge_prompt, judge_reply, score, feedback, suggestion, passed, synthesizer_call, judge_call, recorded_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, datetime('now'))",
            params![
                batch,
                candidate,
                round.stage.as_str(),
                round.round,
                round.prompt(),
                round.reply(),
                output,
                serde_json::to_string(&round.problems)?,
                round.judge_prompt(),
                round.judge_reply(),
                judgement.map(|judgement| judgement.score),
                judgement.map(|judgement| judgement.feedback.as_str()),
                judgement.map(|judgement| judgement.suggestion.as_str()),
                round.passed,
                serde_json::to_string(&round.synthesizer_call)?,
                judge_call,
            ],
        ))?;
        Ok(())
    }

    /// Commits a candidate's verdict.
    pub fn finish_synth_candidate(&mut self, record: &SynthCandidateRecord) -> Result<(), StoreError> {
        self.sql(self.connection.execute(
            "UPDATE synth_candidates SET status = ?3, reason = ?4, scenario_id = ?5, scenario = ?6, path = ?7, nearest_id = ?8, nearest_similarity = ?9, finished_at = datetime('now') WHERE batch_id = ?1 AND candidate = ?2",
            params![
                record.batch_id,
                record.candidate,
                record.status,
                record.reason,
                record.scenario_id,
                record.scenario,
                record.path,
                record.nearest_id,
                record.nearest_similarity,
            ],
        ))?;
        Ok(())
    }

    /// The candidates of a synthesis batch, in order.
    pub fn synth_candidates(&self, batch: &str) -> Result<Vec<SynthCandidateRecord>, StoreError> {
        let mut statement = self.sql(self.connection.prepare(
            "SELECT batch_id, candidate, status, reason, scenario_id, scenario, path, nearest_id, nearest_similarity FROM synth_candidates WHERE batch_id = ?1 ORDER BY candidate",
        ))?;
        let rows = statement
            .query_map([batch], |row| {
                Ok(SynthCandidateRecord {
                    batch_id: row.get(0)?,
                    candidate: row.get(1)?,
                    status: row.get(2)?,
                    reason: row.get(3)?,
                    scenario_id: row.get(4)?,
                    scenario: row.get(5)?,
                    path: row.get(6)?,
                    nearest_id: row.get(7)?,
                    nearest_similarity: row.get(8)?,
                })
            })
            .and_then(|rows| rows.collect::<Result<Vec<_>, _>>());
        rows.map_err(|source| StoreError::Sqlite { path: self.path.clone(), source })
    }

    /// Every round of one candidate, in the order they ran.
    pub fn synth_rounds(&self, batch: &str, candidate: u32) -> Result<Vec<Round>, StoreError> {
        let mut statement = self.sql(self.connection.prepare(
            "SELECT stage, round, output, problems, score, feedback, suggestion, passed, synthesizer_call, judge_call FROM synth_rounds WHERE batch_id = ?1 AND candidate = ?2 ORDER BY rowid",
        ))?;
        type Row = (String, u32, Option<String>, String, Option<f64>, Option<String>, Option<String>, bool, String, Option<String>);
        let rows: Vec<Row> = statement
            .query_map(params![batch, candidate], |row| {
                Ok((
                    row.get(0)?,
                    row.get(1)?,
                    row.get(2)?,
                    row.get(3)?,
                    row.get(4)?,
                    row.get(5)?,
                    row.get(6)?,
                    row.get(7)?,
                    row.get(8)?,
                    row.get(9)?,
                ))
            })
            .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
            .map_err(|source| StoreError::Sqlite { path: self.path.clone(), source })?;
        rows.into_iter()
            .map(|(stage, round, output, problems, score, feedback, suggestion, passed, synthesizer_call, judge_call)| {
                Ok(Round {
                    stage: Stage::parse(&stage).unwrap_or(Stage::Story),
                    round,
                    synthesizer_call: serde_json::from_str(&synthesizer_call)?,
                    output: output.map(|text| serde_json::from_str(&text)).transpose()?,
                    problems: serde_json::from_str(&problems)?,
                    judge_call: judge_call.map(|text| serde_json::from_str(&text)).transpose()?,
                    judgement: score.map(|score| Judgement {
                        score,
                        feedback: feedback.unwrap_or_default(),
                        suggestion: suggestion.unwrap_or_default(),
                    }),
                    passed,
                })
            })
            .collect()
    }
}

impl Store {
    fn archived_transcript(&self, archived: archive::Archive) -> Result<Vec<Turn>, StoreError> {
        let mut turns: Vec<Turn> = archived.turns.iter().map(|turn| serde_json::from_str(turn.get())).collect::<Result<_, _>>()?;
        let mut previous: HashMap<ModelRole, Vec<crate::chat::Message>> = HashMap::new();
        for call in archived.calls {
            let role: ModelRole = serde_json::from_value(serde_json::Value::String(call.role))?;
            let request = calls::decode_request(
                call.request.get(),
                call.format,
                call.inherited,
                previous.get(&role).map_or(&[][..], Vec::as_slice),
                |reference| self.shared_text(reference),
            )?;
            previous.insert(role, request.messages.clone());
            let result = match (call.response, call.error) {
                (Some(response), _) => Ok(serde_json::from_str(response.get())?),
                (None, Some(error)) => Err(serde_json::from_str(error.get())?),
                (None, None) => continue,
            };
            let failed_attempts = serde_json::from_str(call.failed_attempts.get())?;
            let model_call = ModelCall {
                role,
                model: call.model,
                request,
                result,
                failed_attempts,
                latency_ms: call.latency_ms.max(0) as u64,
                cached: call.cached,
                cache_key: call.cache_key,
            };
            if let Some(turn) = turns.iter_mut().find(|turn| turn.index == call.turn) {
                turn.calls.push(model_call);
            }
        }
        Ok(turns)
    }

    /// Returns the pages that archived journal rows left free to the file system (stores
    /// created since migration 005; a no-op for older ones). Called when a run ends.
    pub fn release_free_pages(&mut self) -> Result<(), StoreError> {
        // Each step of this pragma frees one page: step it to the end.
        let released = self.connection.prepare("PRAGMA incremental_vacuum").and_then(|mut statement| {
            let mut rows = statement.query([])?;
            while rows.next()?.is_some() {}
            Ok(())
        });
        self.sql(released)
    }

    /// A text stored once in `texts`.
    fn shared_text(&self, reference: &str) -> Result<String, StoreError> {
        let text = self
            .connection
            .prepare_cached("SELECT body FROM texts WHERE hash = ?1")
            .and_then(|mut statement| statement.query_row([reference], |row| row.get::<_, String>(0)).optional());
        self.sql(text)?.ok_or_else(|| StoreError::MissingText(reference.to_owned()))
    }
}

/// A turn as the `turns` table stores it: without its model calls, which have their own table.
struct TurnBody<'a>(&'a Turn);

impl Serialize for TurnBody<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // `Turn` skips `calls` when empty; serialising a copy without them would clone every
        // request of the turn, so write the fields through a borrowed view instead.
        #[derive(Serialize)]
        struct View<'a> {
            index: u32,
            agent: &'a [crate::trial::AgentAttempt],
            #[serde(skip_serializing_if = "Option::is_none")]
            action: &'a Option<crate::trial::Action>,
            #[serde(skip_serializing_if = "<[_]>::is_empty")]
            environment: &'a [crate::trial::EnvironmentAttempt],
            #[serde(skip_serializing_if = "Option::is_none")]
            observation: &'a Option<crate::chat::Text>,
            #[serde(skip_serializing_if = "Option::is_none")]
            world_state: &'a Option<serde_json::Value>,
        }
        let turn = self.0;
        View {
            index: turn.index,
            agent: &turn.agent,
            action: &turn.action,
            environment: &turn.environment,
            observation: &turn.observation,
            world_state: &turn.world_state,
        }
        .serialize(serializer)
    }
}

/// Turns on SQLite's query planner stability guarantee. Without it, this build (with STAT4)
/// marks a statement whose plan looked at a bound value to be compiled again at its next
/// bind, which the archive's two reads were on every trial (found with a uprobe on
/// `sqlite3Reprepare`: two per finished trial). Our queries are key lookups whose plan does
/// not depend on the values.
pub(super) fn stable_plans(connection: &Connection) -> rusqlite::Result<()> {
    connection.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true).map(drop)
}

/// Runs `write` all or nothing, inside a savepoint (within a writer's group or on its own).
/// Written by hand rather than with rusqlite's `Savepoint`, which parses its `SAVEPOINT` and
/// `RELEASE` statements on every use: a measurable share of a busy writer's time.
fn atomically<T>(connection: &Connection, path: &str, write: impl FnOnce(&Connection) -> Result<T, StoreError>) -> Result<T, StoreError> {
    let run = |sql: &str| connection.prepare_cached(sql).and_then(|mut statement| statement.execute([])).map(drop);
    run("SAVEPOINT write").map_err(|source| StoreError::Sqlite { path: path.to_owned(), source })?;
    match write(connection) {
        Ok(value) => {
            run("RELEASE write").map_err(|source| StoreError::Sqlite { path: path.to_owned(), source })?;
            Ok(value)
        }
        Err(error) => {
            let _ = run("ROLLBACK TO write");
            let _ = run("RELEASE write");
            Err(error)
        }
    }
}

/// Waits for another connection's write lock. SQLite's own busy timeout sleeps in steps of
/// up to 100 ms; two writer threads (a run's and the response cache's) hand the lock back and
/// forth many times a second, so wait in short steps first: 100 µs for the first 0.1 s, then
/// 10 ms, giving up after about 10 s.
fn wait_for_lock(attempt: i32) -> bool {
    match attempt {
        0..1_000 => std::thread::sleep(std::time::Duration::from_micros(100)),
        1_000..2_000 => std::thread::sleep(std::time::Duration::from_millis(10)),
        _ => return false,
    }
    true
}

/// SQLite integers are signed 64-bit; counts beyond that saturate.
fn sql_int(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}
