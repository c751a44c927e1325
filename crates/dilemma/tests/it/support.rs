//! Helpers shared by the tests.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use dilemma::environment::Environment;
use dilemma::model::scripted::{ScriptedModel, ScriptedReply};
use dilemma::model::{CallPolicy, Model, ModelRole};
use dilemma::prompt::Protocol;
use dilemma::scenario::{self, LoadedScenario, Scenario};
use dilemma::trial::{NoJournal, Outcome, PreparedScenario, Transcript, TrialOptions, TrialSetup, run_trial};

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn tiny() -> Scenario {
    scenario::load_file(&fixture("tiny-dual-track.yaml")).expect("the tiny fixture loads")
}

pub fn loaded_tiny() -> LoadedScenario {
    LoadedScenario { path: fixture("tiny-dual-track.yaml"), scenario: tiny() }
}

/// A model in a role that replies from `replies`, with no retries delaying failures.
pub fn scripted(role: ModelRole, replies: Vec<ScriptedReply>) -> Arc<Model> {
    let provider = ScriptedModel::new(format!("scripted:{}", role.as_str()), replies).expect("valid script");
    let policy = CallPolicy { max_attempts: 1, ..CallPolicy::default() };
    Arc::new(Model::new(Arc::new(provider), role, policy))
}

/// An agent that calls the tools with these 1-based ids in order.
pub fn agent(ids: &[usize]) -> Arc<Model> {
    scripted(ModelRole::Agent, ids.iter().map(|id| ScriptedReply::tool_id(*id)).collect())
}

pub fn options(protocol: Protocol) -> TrialOptions {
    TrialOptions { protocol, ..TrialOptions::default() }
}

pub async fn play(scenario: Scenario, agent: Arc<Model>, environment: Environment, protocol: Protocol) -> (Transcript, Outcome) {
    let prepared = PreparedScenario::new(Arc::new(scenario), protocol).expect("prepares");
    let setup = TrialSetup {
        key: "tiny|test|e1".into(),
        seed_key: "tiny|test|e1".into(),
        prepared: Arc::new(prepared),
        agent,
        environment: Arc::new(environment),
        user: None,
        judge: None,
        options: options(protocol),
    };
    run_trial(&setup, &NoJournal).await
}

/// The ids of the tools the agent used, in order.
pub fn trajectory(outcome: &Outcome) -> Vec<usize> {
    outcome.tools.iter().map(|tool| tool.tool_id).collect()
}

/// A run of `scenarios` by `agents` with the scripted environment and no budgets, factors,
/// user or judge; tests change the fields they care about.
pub fn run_config(run_id: &str, scenarios: Vec<LoadedScenario>, agents: Vec<Arc<Model>>, epochs: u32, concurrency: usize) -> dilemma::run::RunConfig {
    dilemma::run::RunConfig {
        run_id: run_id.into(),
        scenarios,
        agents,
        environment: Arc::new(Environment::Scripted),
        epochs,
        concurrency,
        options: options(Protocol::Json),
        max_infrastructure_errors: None,
        retry_errors: false,
        max_cost: None,
        prices: Default::default(),
        factors: Vec::new(),
        user: None,
        judge: None,
    }
}
