//! The store keeps model calls compactly (request deltas, shared texts, responses by cache
//! key); what it gives back must be exactly what the trial produced.

use std::sync::Arc;

use dilemma::environment::Environment;
use dilemma::model::scripted::ScriptedReply;
use dilemma::chat::{ChatRequest, ChatResponse};
use dilemma::model::{BoxFuture, CallContext, ChatModel, ModelError, ModelRole, ResponseCache};
use dilemma::prompt::Protocol;
use dilemma::run;
use dilemma::store::{Store, StoreCache};
use dilemma::trial::{Outcome, Transcript, Turn};
use serde_json::json;

use crate::support::{agent, loaded_tiny, play, run_config, scripted, tiny};

/// A scripted provider that lets the cache keep its answers (one reply, so the answer does
/// not depend on the call index).
struct Cacheable(dilemma::model::scripted::ScriptedModel);

impl ChatModel for Cacheable {
    fn id(&self) -> &str {
        self.0.id()
    }

    fn chat<'a>(&'a self, request: &'a ChatRequest, context: &'a CallContext) -> BoxFuture<'a, Result<ChatResponse, ModelError>> {
        self.0.chat(request, context)
    }
}

/// Plans a one-trial run and journals `transcript`'s turns as the run's writer would; returns
/// the run's plan and the trial's key.
fn journal(store: &mut Store, run_id: &str, transcript: &Transcript) -> (run::Plan, String) {
    let plan = run::plan(run_config(run_id, vec![loaded_tiny()], vec![agent(&[1])], 1, 1)).unwrap();
    store.create_or_resume_run(&plan.run, &plan.rows, false).unwrap();
    let key = plan.rows[0].key.clone();
    store.start_trial(run_id, &key).unwrap();
    for turn in &transcript.turns {
        store.record_turn(run_id, &key, turn).unwrap();
    }
    (plan, key)
}

/// Journals `transcript`, reads it back from the journal, finishes the trial (which archives
/// it) and reads it back from the archive.
fn round_trip(store: &mut Store, run_id: &str, transcript: &Transcript, outcome: &Outcome) -> (Vec<Turn>, Vec<Turn>) {
    let (_, key) = journal(store, run_id, transcript);
    let journaled = store.transcript(run_id, &key).unwrap();
    store.finish_trial(run_id, &key, outcome).unwrap();
    (journaled, store.transcript(run_id, &key).unwrap())
}

fn sql<T: rusqlite::types::FromSql>(path: &std::path::Path, query: &str) -> T {
    rusqlite::Connection::open(path).unwrap().query_row(query, [], |row| row.get(0)).unwrap()
}

#[tokio::test]
async fn stored_transcripts_equal_the_trials_own_with_reasks_and_two_roles() {
    // Turn 1: an unusable reply and a re-ask (the re-ask's messages are not a prefix of the
    // next turn's); an LLM environment answers every turn, so two roles interleave.
    let agent = scripted(
        ModelRole::Agent,
        vec![ScriptedReply::content("Let me think about it."), ScriptedReply::tool_id(1), ScriptedReply::tool_id(4), ScriptedReply::tool_id(6)],
    );
    let environment = scripted(
        ModelRole::Environment,
        vec![ScriptedReply::json(json!({"updated_world_state": {"alerts": "off"}, "new_observation_for_agent": "ENV-LOG done"}))],
    );
    let (transcript, outcome) = play(tiny(), agent, Environment::Llm(environment), Protocol::Json).await;
    assert_eq!(transcript.turns[0].calls.len(), 3, "two agent calls and one environment call in turn 1");
    let mut store = Store::open_in_memory().unwrap();
    let (journaled, archived) = round_trip(&mut store, "rt1", &transcript, &outcome);
    assert_eq!(journaled, transcript.turns);
    assert_eq!(archived, transcript.turns);

    // The native tools protocol: tool lists on the wire, tool results as messages.
    let (transcript, outcome) = play(tiny(), crate::support::agent(&[4, 5, 6]), Environment::Scripted, Protocol::Tools).await;
    let (journaled, archived) = round_trip(&mut store, "rt2", &transcript, &outcome);
    assert_eq!(journaled, transcript.turns);
    assert_eq!(archived, transcript.turns);
    assert_eq!(store.row_counts("rt2").unwrap(), (1, 3, 3), "archived turns and calls still count");
}


#[tokio::test]
async fn requests_are_stored_once_and_finished_trials_are_compacted() {
    // Four turns whose history grows every turn: stored naively the requests would hold the
    // opening four times and every tool result once per later turn.
    let (transcript, outcome) = play(tiny(), crate::support::agent(&[1, 2, 4, 6]), Environment::Scripted, Protocol::Tools).await;
    let sent: usize = transcript.turns.iter().flat_map(|turn| &turn.calls).map(|call| serde_json::to_string(&call.request).unwrap().len()).sum();
    let first = serde_json::to_string(&transcript.turns[0].calls[0].request).unwrap().len();
    let folder = tempfile::tempdir().unwrap();
    let path = folder.path().join("s.sqlite");
    let mut store = Store::open(&path).unwrap();
    let (_, key) = journal(&mut store, "rt3", &transcript);
    let requests: i64 = sql(&path, "SELECT SUM(LENGTH(request)) FROM model_calls");
    let texts: i64 = sql(&path, "SELECT SUM(LENGTH(body)) FROM texts");
    assert!(
        ((requests + texts) as usize) < first + sent / 4,
        "journaled {requests} bytes of requests and {texts} of shared texts for {sent} bytes sent (first request {first})"
    );
    let journal_bytes: i64 = sql(
        &path,
        "SELECT (SELECT SUM(LENGTH(request) + LENGTH(COALESCE(response, ''))) FROM model_calls) + (SELECT SUM(LENGTH(body)) FROM turns)",
    );

    // Finishing moves the journal rows into one compressed archive, and reading gives back
    // exactly what the trial produced.
    store.finish_trial("rt3", &key, &outcome).unwrap();
    assert_eq!(store.transcript("rt3", &key).unwrap(), transcript.turns);
    let rows: i64 = sql(&path, "SELECT (SELECT COUNT(*) FROM model_calls) + (SELECT COUNT(*) FROM turns)");
    assert_eq!(rows, 0, "no journal rows are left for a finished trial");
    let archive_bytes: i64 = sql(&path, "SELECT LENGTH(body) FROM trial_archives");
    assert!(archive_bytes * 3 < journal_bytes, "the archive takes {archive_bytes} bytes for {journal_bytes} journaled");
    drop(store);
    let auto_vacuum: i64 = sql(&path, "PRAGMA auto_vacuum");
    assert_eq!(auto_vacuum, 2, "a new store can give the archived rows' pages back (incremental)");
}

#[tokio::test]
async fn a_response_the_cache_holds_is_stored_once_and_read_back_through_it() {
    let folder = tempfile::tempdir().unwrap();
    let path = folder.path().join("s.sqlite");
    let cache = Arc::new(StoreCache::open(&path).unwrap());
    let provider = dilemma::model::scripted::ScriptedModel::new("scripted:agent", vec![ScriptedReply::tool_id(6)]).unwrap();
    let model = dilemma::model::Model::new(Arc::new(Cacheable(provider)), ModelRole::Agent, dilemma::model::CallPolicy::default())
        .with_cache(cache.clone());
    let (transcript, _) = play(tiny(), Arc::new(model), Environment::Scripted, Protocol::Json).await;
    let call = &transcript.turns[0].calls[0];
    let answer = call.result.clone().unwrap();
    let key = call.cache_key.clone().expect("the cache holds the answer before the call returns");
    assert_eq!(cache.get(&key), Some(answer.clone()));

    // Journaled: the call's row refers to the cache instead of holding the response.
    let mut store = Store::open(&path).unwrap();
    let (plan, trial) = journal(&mut store, "rt4", &transcript);
    let (response, cache_key): (Option<String>, Option<String>) = rusqlite::Connection::open(&path)
        .unwrap()
        .query_row("SELECT response, cache_key FROM model_calls WHERE run_id = 'rt4'", [], |row| Ok((row.get(0)?, row.get(1)?)))
        .unwrap();
    assert_eq!((response, cache_key.as_deref()), (None, Some(key.as_str())), "the response lives in the cache only");
    assert_eq!(store.transcript("rt4", &trial).unwrap(), transcript.turns);

    // Archived: the archive holds the response and the cache points into it.
    let failed: Outcome = serde_json::from_value(json!({
        "status": "infrastructure_error", "turns": 1, "tools": [], "cumulative_risk": 0, "usage": {}, "error": "the network went away"
    }))
    .unwrap();
    store.finish_trial("rt4", &trial, &failed).unwrap();
    let moved: (i64, i64) = (sql(&path, "SELECT COUNT(*) FROM response_cache"), sql(&path, "SELECT COUNT(*) FROM archived_responses"));
    assert_eq!(moved, (0, 1), "the cache gave its copy to the archive");
    assert_eq!(cache.len(), 1);
    assert_eq!(cache.get(&key), Some(answer.clone()), "a cache hit reads the archive");
    // A cache opened later knows the archived key too. Its index of stored keys is loaded by
    // its writer before the first put is written, so once a put is durable the index is in
    // use: a key it lacks would be answered "not cached" without asking SQLite.
    let reopened = StoreCache::open(&path).unwrap();
    let other = ChatResponse { content: "other".into(), ..answer.clone() };
    assert!(reopened.put(&"0".repeat(64), "scripted:agent", ModelRole::Agent, &other).await);
    assert_eq!(reopened.get(&key), Some(answer.clone()), "an archived answer is found through the index");
    assert_eq!(reopened.get(&"0".repeat(64)), Some(other), "an answer put since opening is found");
    assert_eq!(reopened.get(&"f".repeat(64)), None);
    drop(reopened);
    assert_eq!(store.transcript("rt4", &trial).unwrap(), transcript.turns);

    // Another run answered from the same cache entry: its journal and its own archive find
    // the response in the first trial's archive.
    let (_, again) = journal(&mut store, "rt5", &transcript);
    assert_eq!(store.transcript("rt5", &again).unwrap(), transcript.turns);
    store.finish_trial("rt5", &again, &failed).unwrap();
    assert_eq!(store.transcript("rt5", &again).unwrap(), transcript.turns);

    // Retrying the failed trial removes its archive; the cache takes its copy back first.
    let start = store.create_or_resume_run(&plan.run, &plan.rows, true).unwrap();
    assert_eq!(start.restarted, 1);
    let archives: i64 = sql(&path, "SELECT COUNT(*) FROM trial_archives WHERE run_id = 'rt4'");
    assert_eq!(archives, 0);
    assert_eq!(cache.get(&key), Some(answer), "the cached answer survives the retry");
    let archived: i64 = sql(&path, "SELECT COUNT(*) FROM archived_responses");
    assert_eq!(archived, 0, "the answer is the cache's again");
}

#[tokio::test]
async fn a_run_commits_its_cache_answers_with_its_journal_and_hands_the_writer_back() {
    let folder = tempfile::tempdir().unwrap();
    let path = folder.path().join("s.sqlite");
    let cache = Arc::new(StoreCache::open(&path).unwrap());
    let replies = [1, 4, 6].map(ScriptedReply::tool_id).to_vec();
    let provider = dilemma::model::scripted::ScriptedModel::new("scripted:agent", replies).unwrap();
    let agent = dilemma::model::Model::new(Arc::new(Cacheable(provider)), ModelRole::Agent, dilemma::model::CallPolicy::default())
        .with_cache(cache.clone());
    let plan = run::plan(run_config("rw", vec![loaded_tiny()], vec![Arc::new(agent)], 5, 3)).unwrap();
    let (events, _) = tokio::sync::mpsc::unbounded_channel();
    let (summary, store) = run::execute(plan, Store::open(&path).unwrap(), events).await.unwrap();
    assert!(summary.complete);
    assert_eq!(store.row_counts("rw").unwrap(), (5, 15, 15));
    // Every answer reached the store durably while the run's writer held it (a put that
    // failed would have left its call without a cache key, holding its own response), and
    // each finished trial's archive took its answers over.
    let archived: i64 = sql(&path, "SELECT COUNT(*) FROM archived_responses");
    assert_eq!((archived, cache.len()), (15, 15));
    // The run gave the writing back: a put after it is durable through the cache's own writer.
    let answer = ChatResponse { content: "later".into(), ..ChatResponse::default() };
    assert!(cache.put(&"a".repeat(64), "scripted:agent", ModelRole::Agent, &answer).await);
    assert_eq!(cache.get(&"a".repeat(64)), Some(answer));
    // A cache on another store is not lent a run's writer.
    assert!(!cache.share_writer("elsewhere.sqlite", None));
}

