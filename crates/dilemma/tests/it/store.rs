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
use dilemma::trial::{Outcome, Transcript};
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

/// Stores `transcript` as the run's writer would and reads it back.
fn round_trip(store: &mut Store, run_id: &str, transcript: &Transcript, outcome: &Outcome) -> Vec<dilemma::trial::Turn> {
    let plan = run::plan(run_config(run_id, vec![loaded_tiny()], vec![agent(&[1])], 1, 1)).unwrap();
    store.create_or_resume_run(&plan.run, &plan.rows, false).unwrap();
    let key = &plan.rows[0].key;
    store.start_trial(run_id, key).unwrap();
    for turn in &transcript.turns {
        store.record_turn(run_id, key, turn).unwrap();
    }
    store.finish_trial(run_id, key, outcome).unwrap();
    store.transcript(run_id, key).unwrap()
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
    let stored = round_trip(&mut store, "rt1", &transcript, &outcome);
    assert_eq!(stored, transcript.turns);

    // The native tools protocol: tool lists on the wire, tool results as messages.
    let (transcript, outcome) = play(tiny(), crate::support::agent(&[4, 5, 6]), Environment::Scripted, Protocol::Tools).await;
    let stored = round_trip(&mut store, "rt2", &transcript, &outcome);
    assert_eq!(stored, transcript.turns);
}

#[tokio::test]
async fn requests_are_stored_once_not_once_per_turn() {
    // Four turns whose history grows every turn: stored naively the requests would hold the
    // opening four times and every tool result once per later turn.
    let (transcript, outcome) = play(tiny(), crate::support::agent(&[1, 2, 4, 6]), Environment::Scripted, Protocol::Tools).await;
    let sent: usize = transcript.turns.iter().flat_map(|turn| &turn.calls).map(|call| serde_json::to_string(&call.request).unwrap().len()).sum();
    let folder = tempfile::tempdir().unwrap();
    let mut store = Store::open(&folder.path().join("s.sqlite")).unwrap();
    let stored_turns = round_trip(&mut store, "rt3", &transcript, &outcome);
    assert_eq!(stored_turns, transcript.turns);
    drop(store);
    let connection = rusqlite::Connection::open(folder.path().join("s.sqlite")).unwrap();
    let (requests, texts): (i64, i64) = connection
        .query_row("SELECT (SELECT SUM(LENGTH(request)) FROM model_calls), (SELECT SUM(LENGTH(body)) FROM texts)", [], |row| Ok((row.get(0)?, row.get(1)?)))
        .unwrap();
    let first = serde_json::to_string(&transcript.turns[0].calls[0].request).unwrap().len();
    assert!(
        ((requests + texts) as usize) < first + sent / 4,
        "stored {requests} bytes of requests and {texts} of shared texts for {sent} bytes sent (first request {first})"
    );
}

#[tokio::test]
async fn a_response_the_cache_holds_is_stored_once_and_read_back_through_it() {
    let folder = tempfile::tempdir().unwrap();
    let path = folder.path().join("s.sqlite");
    let cache = Arc::new(StoreCache::open(&path).unwrap());
    let provider = dilemma::model::scripted::ScriptedModel::new("scripted:agent", vec![ScriptedReply::tool_id(6)]).unwrap();
    let model = dilemma::model::Model::new(
        Arc::new(Cacheable(provider)),
        ModelRole::Agent,
        dilemma::model::CallPolicy::default(),
    )
    .with_cache(cache.clone());
    let (transcript, outcome) = play(tiny(), Arc::new(model), Environment::Scripted, Protocol::Json).await;
    let call = &transcript.turns[0].calls[0];
    let key = call.cache_key.clone().expect("the cache holds the answer before the call returns");
    assert!(cache.get(&key).is_some());
    let mut store = Store::open(&path).unwrap();
    let stored = round_trip(&mut store, "rt4", &transcript, &outcome);
    assert_eq!(stored, transcript.turns);
    let connection = rusqlite::Connection::open(&path).unwrap();
    let (response, cache_key): (Option<String>, Option<String>) = connection
        .query_row("SELECT response, cache_key FROM model_calls WHERE run_id = 'rt4'", [], |row| Ok((row.get(0)?, row.get(1)?)))
        .unwrap();
    assert_eq!(response, None, "the response lives in the cache only");
    assert_eq!(cache_key.as_deref(), Some(key.as_str()));
}
