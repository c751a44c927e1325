//! The turn loop: the agent acts, the environment answers, until a terminal tool or the
//! turn limit. [`run_trial`] always returns a [`Transcript`] and an [`Outcome`], never an
//! error: protocol and infrastructure failures are outcomes, counted apart from behaviour.
//!
//! Differences from the reference code, on purpose:
//! - every trial starts from fresh state (the reference leaked its long-term summary
//!   between runs);
//! - the agent sees the whole history as a real conversation (the reference dropped turns
//!   that fell out of a six-turn window before its summary kicked in);
//! - an unusable reply is re-asked a bounded number of times and then ends the trial as a
//!   protocol error that is counted and shown, instead of aborting the whole run.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use tracing::Instrument;

use crate::chat::{ChatRequest, ChatResponse, Message, OutputFormat, Sampling, Text, ToolCall, ToolSpec, Usage};
use crate::environment::{Environment, EnvironmentReply};
use crate::model::{CallContext, Model, ModelCall, ModelRole};
use crate::prompt::{self, Protocol};
use crate::scenario::{Scenario, ToolRole, Track};
use crate::scoring::classify::{BehaviourClass, classify};
use crate::scoring::cms::{Cms, CmsScore};

/// Settings of the loop that are the same for every trial of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrialOptions {
    pub protocol: Protocol,
    /// How many times an unusable reply is asked again before the trial ends.
    pub reask_limit: u32,
    /// The trial's error budget: once its model calls needed more retries than this in all,
    /// it ends as an infrastructure error instead of retrying its way through an outage.
    pub retry_budget: u32,
    pub agent_sampling: Sampling,
    pub environment_sampling: Sampling,
}

impl Default for TrialOptions {
    fn default() -> Self {
        TrialOptions {
            protocol: Protocol::Json,
            reask_limit: 2,
            retry_budget: 12,
            agent_sampling: Sampling { temperature: 0.7, max_tokens: 1024, seed: None },
            environment_sampling: Sampling { temperature: 0.7, max_tokens: 1024, seed: None },
        }
    }
}

/// A scenario made ready for trials: prompts rendered and argument validators compiled once.
pub struct PreparedScenario {
    pub scenario: Arc<Scenario>,
    pub hash: String,
    pub(crate) agent_system: Text,
    pub(crate) agent_opening: Text,
    tools: Arc<[ToolSpec]>,
    answer_schema: Value,
    pub(crate) environment_system: String,
    validators: Vec<jsonschema::Validator>,
    /// How the scenario's shell commands run; `None` without `environment.sandbox`.
    sandbox: Option<crate::sandbox::Backend>,
    /// The scenario's CMS detectors, compiled once; `None` without `scoring.cms`.
    cms: Option<Cms>,
}

impl std::fmt::Debug for PreparedScenario {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreparedScenario").field("id", &self.scenario.id).finish()
    }
}

impl PreparedScenario {
    /// Prepares a loaded (hence validated) scenario.
    pub fn new(scenario: Arc<Scenario>, protocol: Protocol) -> Result<Self, String> {
        let validators = scenario
            .tools
            .iter()
            .map(|tool| {
                jsonschema::validator_for(&Value::Object(tool.parameters.clone()))
                    .map_err(|error| format!("tool `{}`: invalid parameters schema: {error}", tool.name))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let cms = scenario.scoring.as_ref().and_then(|scoring| scoring.cms.as_ref()).map(Cms::new).transpose().map_err(|error| error.to_string())?;
        Ok(PreparedScenario {
            hash: scenario.content_hash(),
            agent_system: prompt::agent_system_prompt(&scenario, protocol).into(),
            agent_opening: prompt::agent_opening(&scenario).into(),
            tools: prompt::agent_tools(&scenario).into(),
            answer_schema: prompt::agent_answer_schema(&scenario),
            environment_system: prompt::environment_system_prompt(&scenario),
            validators,
            sandbox: scenario.environment.sandbox.as_ref().map(|_| crate::sandbox::detect().backend),
            cms,
            scenario,
        })
    }
}

impl PreparedScenario {
    /// The sandbox backend the trials of this scenario use (`None`: it has no sandbox).
    pub fn sandbox_backend(&self) -> Option<crate::sandbox::Backend> {
        self.sandbox
    }

    /// Runs the scenario's shell commands with `backend` instead of the detected one (tests
    /// use it to exercise the simulated fallback on a machine with bubblewrap).
    pub fn with_sandbox_backend(mut self, backend: crate::sandbox::Backend) -> Self {
        if self.sandbox.is_some() {
            self.sandbox = Some(backend);
        }
        self
    }
}

/// One trial to run.
pub struct TrialSetup {
    /// Unique within the run.
    pub key: String,
    /// The seed source: the key without the factor cell, so that the trials of a factor pair
    /// sample with the same seeds (common random numbers) and differ only in the factor.
    pub seed_key: String,
    pub prepared: Arc<PreparedScenario>,
    pub agent: Arc<Model>,
    pub environment: Arc<Environment>,
    /// Plays the scenario's `user` (tools answered by the user); `None`: scripted replies.
    pub user: Option<Arc<Model>>,
    /// Grades completed trials of scenarios with `scoring.judge`; `None`: the rule-based
    /// primary score stands alone.
    pub judge: Option<Arc<Model>>,
    pub options: TrialOptions,
}

/// Where each turn goes as soon as it is done (the store, in a run).
pub trait TurnJournal: Send + Sync {
    /// Takes the finished turn, with its model calls.
    fn record_turn(&self, trial: &str, turn: Turn) -> Result<(), String>;

    /// Whether the [`Transcript`] that [`run_trial`] returns keeps every turn whole. A journal
    /// that stores the turns says no, so a trial in flight holds its conversation once (in its
    /// history) rather than once more per call: the returned turns then lack each call's
    /// request and raw reply ([`Turn::without_requests`]) and every world state but the
    /// latest, which is all scoring reads; the stored transcript has everything.
    fn transcript_keeps_requests(&self) -> bool {
        true
    }
}

/// A journal that keeps nothing (for tests and dry runs).
pub struct NoJournal;

impl TurnJournal for NoJournal {
    fn record_turn(&self, _trial: &str, _turn: Turn) -> Result<(), String> {
        Ok(())
    }
}

/// One reply of the agent, usable or not.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentAttempt {
    /// What the agent produced: the content, or the tool call as JSON.
    pub output: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning: Option<String>,
    /// Why the reply could not be used; `None` for the accepted reply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

/// The action the agent took in a turn.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Action {
    /// 1-based position in the scenario's tool list.
    pub tool_id: usize,
    pub tool: String,
    pub arguments: Value,
    #[serde(default)]
    pub reasoning: String,
    pub track: Track,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<ToolRole>,
    pub risk: u32,
    pub terminal: bool,
}

impl Action {
    /// The action as scoring sees it: which tool, where on the tracks, at which turn.
    pub fn tool_use(&self, turn: u32) -> ToolUse {
        ToolUse {
            turn,
            tool_id: self.tool_id,
            tool: self.tool.clone(),
            track: self.track,
            role: self.role,
            risk: self.risk,
            terminal: self.terminal,
        }
    }
}

/// One reply of the environment, usable or not.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnvironmentAttempt {
    pub output: Text,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

/// One agent action plus the environment's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Turn {
    /// 1-based.
    pub index: u32,
    pub agent: Vec<AgentAttempt>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<Action>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub environment: Vec<EnvironmentAttempt>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observation: Option<Text>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub world_state: Option<Value>,
    /// Every model call of the turn, in order (stored in their own table).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub calls: Vec<ModelCall>,
}

impl Turn {
    /// A copy whose model calls keep their parsed responses but not their requests (the
    /// messages, tool list and output schema sent) nor the providers' raw replies, which are
    /// by far the largest part of a turn and which scoring never reads. Nor do they keep what
    /// the turn holds elsewhere or scoring never reads: their tool calls' arguments (the
    /// action has the accepted call's) and their response-cache keys.
    pub fn without_requests(&self) -> Turn {
        Turn {
            index: self.index,
            agent: self.agent.clone(),
            action: self.action.clone(),
            environment: self.environment.clone(),
            observation: self.observation.clone(),
            world_state: self.world_state.clone(),
            calls: self
                .calls
                .iter()
                .map(|call| ModelCall {
                    role: call.role,
                    model: call.model.clone(),
                    request: ChatRequest {
                        messages: Vec::new(),
                        tools: Arc::default(),
                        output: match &call.request.output {
                            OutputFormat::JsonSchema(_) => OutputFormat::JsonSchema(Value::Null),
                            other => other.clone(),
                        },
                        sampling: call.request.sampling.clone(),
                    },
                    result: call
                        .result
                        .as_ref()
                        .map(|response| ChatResponse {
                            content: response.content.clone(),
                            reasoning: response.reasoning.clone(),
                            tool_calls: response
                                .tool_calls
                                .iter()
                                .map(|tool_call| ToolCall { id: tool_call.id.clone(), name: tool_call.name.clone(), arguments: Value::Null })
                                .collect(),
                            finish_reason: response.finish_reason,
                            usage: response.usage,
                            raw: None,
                        })
                        .map_err(Clone::clone),
                    failed_attempts: call.failed_attempts.clone(),
                    latency_ms: call.latency_ms,
                    cached: call.cached,
                    cache_key: None,
                })
                .collect(),
        }
    }
}

/// Everything that happened in a trial.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Transcript {
    pub agent_system_prompt: Text,
    pub agent_opening: Text,
    pub turns: Vec<Turn>,
}

/// Whether a trial produced a behaviour verdict, or which kind of failure stopped it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrialStatus {
    /// Ended on a terminal tool or at the turn limit: it has a behaviour class.
    Completed,
    /// The agent kept answering in a form that could not be used.
    ProtocolError,
    /// A model call failed after retries, or the environment could not answer.
    InfrastructureError,
}

impl TrialStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            TrialStatus::Completed => "completed",
            TrialStatus::ProtocolError => "protocol_error",
            TrialStatus::InfrastructureError => "infrastructure_error",
        }
    }
}

/// A tool the agent used, as scoring sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolUse {
    pub turn: u32,
    pub tool_id: usize,
    pub tool: String,
    pub track: Track,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<ToolRole>,
    pub risk: u32,
    pub terminal: bool,
}

/// How a trial ended and what it means.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    pub status: TrialStatus,
    /// The behaviour class; `None` unless `status` is `Completed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class: Option<BehaviourClass>,
    /// The terminal tool that ended the trial, if one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_by: Option<String>,
    /// What went wrong, for the error statuses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Turns with an accepted action.
    pub turns: u32,
    pub tools: Vec<ToolUse>,
    /// Turn of the first toxic-track tool (time to first toxic action).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_toxic_turn: Option<u32>,
    pub cumulative_risk: u32,
    /// Token use by role.
    pub usage: BTreeMap<ModelRole, Usage>,
    /// The Comprehensive Misalignment Score, for completed trials of scenarios with
    /// `scoring.cms` (outcomes stored before it existed read as `None`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cms: Option<CmsScore>,
    /// The eval's primary score, for completed trials of scenarios with `scoring.primary`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary: Option<crate::scoring::primary::PrimaryScore>,
    /// The judge model's verdict, for completed trials of scenarios with `scoring.judge` when
    /// the run has a judge model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub judge: Option<crate::scoring::judge::JudgeVerdict>,
    /// For scenarios with a shell sandbox: how the commands ran (`bubblewrap` or
    /// `simulated`) and, for completed trials, the log-tampering and command-rule scores.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<crate::scoring::sandbox_evals::SandboxVerdict>,
}

impl Outcome {
    fn new(status: TrialStatus, tools: Vec<ToolUse>, usage: BTreeMap<ModelRole, Usage>, error: Option<String>) -> Self {
        let class = (status == TrialStatus::Completed).then(|| classify(&tools));
        let ended_by = tools.last().filter(|tool| tool.terminal).map(|tool| tool.tool.clone());
        Outcome {
            status,
            class,
            ended_by,
            error,
            turns: tools.len() as u32,
            first_toxic_turn: tools.iter().find(|tool| tool.track == Track::Toxic).map(|tool| tool.turn),
            cumulative_risk: tools.iter().map(|tool| tool.risk).sum(),
            tools,
            usage,
            cms: None,
            primary: None,
            judge: None,
            sandbox: None,
        }
    }
}

/// Why the agent's turn did not produce an action.
enum AgentFailure {
    Protocol(String),
    Infrastructure(String),
}

/// Per-trial state. Created fresh for every trial: nothing survives between trials.
struct TrialState<'a> {
    setup: &'a TrialSetup,
    journal: &'a dyn TurnJournal,
    history: Vec<Message>,
    world_state: Value,
    earlier_actions: Vec<String>,
    tools_used: Vec<ToolUse>,
    tool_call_counts: Vec<u32>,
    agent_calls: u32,
    environment_calls: u32,
    user_calls: u32,
    /// (agent message, user reply) for every call of a user-answered tool so far.
    dialogue: Vec<(String, String)>,
    usage: BTreeMap<ModelRole, Usage>,
    retries: u32,
    turns: Vec<Turn>,
    /// The trial's own sandbox, for scenarios with shell tools.
    sandbox: Option<&'a crate::sandbox::Sandbox>,
}

/// Runs one trial to its end.
pub async fn run_trial(setup: &TrialSetup, journal: &dyn TurnJournal) -> (Transcript, Outcome) {
    let prepared = &setup.prepared;
    let scenario = &prepared.scenario;
    let mut state = TrialState {
        setup,
        journal,
        history: vec![Message::system(prepared.agent_system.clone()), Message::user(prepared.agent_opening.clone())],
        world_state: Value::Object(scenario.environment.initial_state.clone()),
        earlier_actions: Vec::new(),
        tools_used: Vec::new(),
        tool_call_counts: vec![0; scenario.tools.len()],
        agent_calls: 0,
        environment_calls: 0,
        user_calls: 0,
        dialogue: Vec::new(),
        usage: BTreeMap::new(),
        retries: 0,
        turns: Vec::new(),
        sandbox: None,
    };
    // A fresh root per trial, removed when `sandbox` drops at the end of this function.
    let sandbox = match (&scenario.environment.sandbox, prepared.sandbox) {
        (Some(spec), Some(backend)) => Some(crate::sandbox::Sandbox::create(spec, backend)),
        _ => None,
    };
    let (status, error) = match &sandbox {
        Some(Err(problem)) => (TrialStatus::InfrastructureError, Some(format!("cannot create the sandbox: {problem}"))),
        Some(Ok(sandbox)) => {
            state.sandbox = Some(sandbox);
            state.run().await
        }
        None => state.run().await,
    };
    let mut outcome = Outcome::new(status, state.tools_used, state.usage, error);
    let transcript = Transcript {
        agent_system_prompt: prepared.agent_system.clone(),
        agent_opening: prepared.agent_opening.clone(),
        turns: state.turns,
    };
    // Like the behaviour class, a verdict only for trials that ran to their end.
    if status == TrialStatus::Completed {
        outcome.cms = prepared.cms.as_ref().map(|cms| cms.score_transcript(&transcript));
        outcome.primary = scenario
            .scoring
            .as_ref()
            .and_then(|scoring| scoring.primary.as_ref())
            .map(|spec| crate::scoring::primary::score(spec, scenario, &transcript));
        if let (Some(judge), Some(spec)) = (&setup.judge, scenario.scoring.as_ref().and_then(|scoring| scoring.judge.as_ref())) {
            let seed = seed_for(&setup.seed_key, ModelRole::Judge, 0, 0);
            let verdict = crate::scoring::judge::judge(judge, spec, &transcript, &setup.key, seed).await;
            for call in &verdict.calls {
                *outcome.usage.entry(ModelRole::Judge).or_default() += call.usage();
            }
            outcome.judge = Some(verdict);
        }
        if let Some(Ok(sandbox)) = &sandbox {
            let log = scenario.environment.sandbox.as_ref().and_then(|spec| spec.action_log.as_deref());
            let final_log = log.and_then(|path| sandbox.read_file(path));
            let verdict = crate::scoring::sandbox_evals::verdict(scenario, &transcript, sandbox.backend(), final_log.as_deref());
            // The shell evals' primary score, unless the file states one as an expression.
            let name = if verdict.log_tampering.is_some() { "log_tampered" } else { "command_rules" };
            if outcome.primary.is_none()
                && let Some(value) = verdict.score {
                    outcome.primary = Some(crate::scoring::primary::PrimaryScore { name: name.into(), value: Some(value), error: None, baseline: None });
                }
            outcome.sandbox = Some(verdict);
        }
    }
    if outcome.sandbox.is_none()
        && let Some(Ok(sandbox)) = &sandbox {
            // No scores for a trial that did not complete, but still how its commands ran.
            let commands = crate::scoring::sandbox_evals::executed_commands(scenario, &transcript).len() as u32;
            outcome.sandbox = Some(crate::scoring::sandbox_evals::SandboxVerdict { backend: sandbox.backend(), commands, score: None, log_tampering: None, command_rules: None });
        }
    (transcript, outcome)
}

impl TrialState<'_> {
    async fn run(&mut self) -> (TrialStatus, Option<String>) {
        let max_turns = self.setup.prepared.scenario.max_turns;
        for index in 1..=max_turns {
            let mut turn = Turn {
                index,
                agent: Vec::new(),
                action: None,
                environment: Vec::new(),
                observation: None,
                world_state: None,
                calls: Vec::new(),
            };
            let result = self.play_turn(&mut turn).instrument(tracing::info_span!("turn", index)).await;
            let terminal = turn.action.as_ref().is_some_and(|action| action.terminal);
            self.retries += turn.calls.iter().map(|call| call.failed_attempts.len() as u32).sum::<u32>();
            let kept = if self.journal.transcript_keeps_requests() {
                turn.clone()
            } else {
                // Scoring reads only the latest world state, so an earlier one kept in memory
                // would only be a copy of what the journal already stores.
                if turn.world_state.is_some()
                    && let Some(earlier) = self.turns.iter_mut().rev().find(|earlier| earlier.world_state.is_some())
                {
                    earlier.world_state = None;
                }
                turn.without_requests()
            };
            self.turns.push(kept);
            if let Err(error) = self.journal.record_turn(&self.setup.key, turn) {
                return (TrialStatus::InfrastructureError, Some(format!("could not journal turn {index}: {error}")));
            }
            match result {
                Ok(()) if terminal => return (TrialStatus::Completed, None),
                Ok(()) if self.retries > self.setup.options.retry_budget => {
                    return (
                        TrialStatus::InfrastructureError,
                        Some(format!(
                            "the trial's model calls needed {} retries, over its budget of {}",
                            self.retries, self.setup.options.retry_budget
                        )),
                    );
                }
                Ok(()) => {}
                Err(AgentFailure::Protocol(problem)) => return (TrialStatus::ProtocolError, Some(problem)),
                Err(AgentFailure::Infrastructure(problem)) => {
                    return (TrialStatus::InfrastructureError, Some(problem));
                }
            }
        }
        (TrialStatus::Completed, None)
    }

    async fn play_turn(&mut self, turn: &mut Turn) -> Result<(), AgentFailure> {
        let (action, call_id) = self.agent_step(turn).await?;
        let reply = self.environment_step(turn, &action).await?;
        // The accepted exchange joins the agent's history; re-asks do not.
        let protocol = self.setup.options.protocol;
        match (protocol, call_id) {
            (Protocol::Tools, Some(call_id)) => {
                let mut message = Message::assistant(action.reasoning.clone());
                message.tool_calls = Arc::new([ToolCall { id: call_id.clone(), name: action.tool.clone(), arguments: action.arguments.clone() }]);
                self.history.push(message);
                self.history.push(Message::tool_result(call_id, reply.observation.clone()));
            }
            _ => {
                let accepted = turn.agent.last().map(|attempt| attempt.output.clone()).unwrap_or_default();
                self.history.push(Message::assistant(accepted));
                self.history.push(Message::user(prompt::agent_observation(turn.index, &reply.observation)));
            }
        }
        self.earlier_actions.push(format!(
            "turn {}: {} {}",
            turn.index,
            action.tool,
            action.arguments
        ));
        self.tools_used.push(action.tool_use(turn.index));
        self.world_state = reply.world_state.clone();
        turn.observation = Some(reply.observation);
        turn.world_state = Some(reply.world_state);
        turn.action = Some(action);
        Ok(())
    }

    /// Asks the agent for an action, re-asking after unusable replies.
    async fn agent_step(&mut self, turn: &mut Turn) -> Result<(Action, Option<String>), AgentFailure> {
        let setup = self.setup;
        let protocol = setup.options.protocol;
        // What a re-ask adds after the history; the history itself is copied once per request
        // (hundreds of trials wait on replies at once, each holding its request).
        let mut reasks: Vec<Message> = Vec::new();
        for attempt in 0..=setup.options.reask_limit {
            let request = ChatRequest {
                messages: self.history.iter().chain(&reasks).cloned().collect(),
                tools: setup.prepared.tools.clone(),
                output: match protocol {
                    Protocol::Json => OutputFormat::JsonSchema(setup.prepared.answer_schema.clone()),
                    Protocol::Tools => OutputFormat::ToolCall,
                },
                sampling: Sampling {
                    seed: Some(seed_for(&setup.seed_key, ModelRole::Agent, turn.index, attempt)),
                    ..setup.options.agent_sampling.clone()
                },
            };
            let context = CallContext {
                role: ModelRole::Agent,
                trial: setup.key.clone(),
                turn: turn.index,
                call_index: self.agent_calls,
            };
            self.agent_calls += 1;
            let call = setup.agent.call(request, context).await;
            *self.usage.entry(ModelRole::Agent).or_default() += call.usage();
            let response = match &call.result {
                Ok(response) => response.clone(),
                Err(error) => {
                    turn.calls.push(call.clone());
                    return Err(AgentFailure::Infrastructure(format!("agent model call failed: {error}")));
                }
            };
            turn.calls.push(call);
            let parsed = match protocol {
                Protocol::Json => self.parse_json_answer(&response.content, response.reasoning.as_deref()),
                Protocol::Tools => self.parse_tool_call(&response),
            };
            match parsed {
                Ok((action, call_id, output)) => {
                    turn.agent.push(AgentAttempt { output, reasoning: Some(action.reasoning.clone()), problem: None });
                    return Ok((action, call_id));
                }
                Err((problem, output)) => {
                    turn.agent.push(AgentAttempt { output: output.clone(), reasoning: response.reasoning.clone(), problem: Some(problem.clone()) });
                    match (protocol, response.tool_calls.first()) {
                        (Protocol::Tools, Some(call)) => {
                            let mut message = Message::assistant(response.content.clone());
                            message.tool_calls = Arc::new([call.clone()]);
                            reasks.push(message);
                            reasks.push(Message::tool_result(call.id.clone(), format!("error: {problem}")));
                        }
                        _ => {
                            reasks.push(Message::assistant(output));
                            reasks.push(Message::user(prompt::agent_reask(&problem, protocol)));
                        }
                    }
                }
            }
        }
        let last = turn.agent.last().and_then(|attempt| attempt.problem.clone()).unwrap_or_default();
        Err(AgentFailure::Protocol(format!(
            "turn {}: no usable reply after {} attempts; last problem: {last}",
            turn.index,
            setup.options.reask_limit + 1
        )))
    }

    /// Parses `{reasoning, tool_choice{id, name, parameters}}`. Tolerates code fences and
    /// text around the object, a string id, and a missing name (the id decides).
    #[allow(clippy::type_complexity)]
    fn parse_json_answer(&self, content: &str, provider_reasoning: Option<&str>) -> Result<(Action, Option<String>, String), (String, String)> {
        let output = content.to_owned();
        let fail = |problem: String| Err((problem, output.clone()));
        let Some(document) = extract_json_object(content) else {
            return fail("the reply is not a JSON object".into());
        };
        let Some(choice) = document.get("tool_choice").and_then(Value::as_object) else {
            return fail("the reply has no `tool_choice` object".into());
        };
        let tools = &self.setup.prepared.scenario.tools;
        let by_id = match choice.get("id") {
            Some(Value::Number(number)) => number.as_u64().map(|id| id as usize),
            Some(Value::String(text)) => text.trim().parse::<usize>().ok(),
            _ => None,
        };
        let by_name = choice.get("name").and_then(Value::as_str).map(str::trim);
        let index = match (by_id, by_name) {
            (Some(id), name) => {
                if id == 0 || id > tools.len() {
                    return fail(format!("tool id {id} does not exist; ids run from 1 to {}", tools.len()));
                }
                if let Some(name) = name.filter(|name| !name.is_empty())
                    && tools[id - 1].name != name {
                        return fail(format!("tool id {id} is `{}`, not `{name}`", tools[id - 1].name));
                    }
                id - 1
            }
            (None, Some(name)) => match tools.iter().position(|tool| tool.name == name) {
                Some(index) => index,
                None => return fail(format!("there is no tool named `{name}`")),
            },
            (None, None) => return fail("`tool_choice` names no tool (give `id` and `name`)".into()),
        };
        let arguments = choice.get("parameters").cloned().unwrap_or_else(|| json!({}));
        if let Err(problem) = self.check_arguments(index, &arguments) {
            return fail(problem);
        }
        let reasoning = provider_reasoning
            .map(str::to_owned)
            .or_else(|| document.get("reasoning").and_then(Value::as_str).map(str::to_owned))
            .unwrap_or_default();
        Ok((self.action(index, arguments, reasoning), None, output))
    }

    #[allow(clippy::type_complexity)]
    fn parse_tool_call(&self, response: &crate::chat::ChatResponse) -> Result<(Action, Option<String>, String), (String, String)> {
        let Some(call) = response.tool_calls.first() else {
            return Err(("the reply calls no tool".into(), response.content.clone()));
        };
        let output = json!({"name": call.name, "arguments": call.arguments}).to_string();
        if response.tool_calls.len() > 1 {
            return Err((format!("the reply calls {} tools; call exactly one per turn", response.tool_calls.len()), output));
        }
        let tools = &self.setup.prepared.scenario.tools;
        let Some(index) = tools.iter().position(|tool| tool.name == call.name) else {
            return Err((format!("there is no tool named `{}`", call.name), output));
        };
        let arguments = match &call.arguments {
            // Some servers send arguments as a JSON string.
            Value::String(text) => match serde_json::from_str(text) {
                Ok(value) => value,
                Err(error) => return Err((format!("the arguments are not valid JSON: {error}"), output)),
            },
            other => other.clone(),
        };
        if let Err(problem) = self.check_arguments(index, &arguments) {
            return Err((problem, output));
        }
        let reasoning = response.reasoning.clone().unwrap_or_else(|| response.content.clone());
        Ok((self.action(index, arguments, reasoning), Some(call.id.clone()), output))
    }

    fn check_arguments(&self, index: usize, arguments: &Value) -> Result<(), String> {
        let validator = &self.setup.prepared.validators[index];
        let problems: Vec<String> = validator
            .iter_errors(arguments)
            .map(|error| {
                let at = error.instance_path().as_str().to_owned();
                if at.is_empty() { error.to_string() } else { format!("{at}: {error}") }
            })
            .collect();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(format!("bad parameters for `{}`: {}", self.setup.prepared.scenario.tools[index].name, problems.join("; ")))
        }
    }

    fn action(&self, index: usize, arguments: Value, reasoning: String) -> Action {
        let tool = &self.setup.prepared.scenario.tools[index];
        Action {
            tool_id: index + 1,
            tool: tool.name.clone(),
            arguments,
            reasoning,
            track: tool.track,
            role: tool.role,
            risk: tool.risk(),
            terminal: tool.is_terminal(),
        }
    }

    async fn environment_step(&mut self, turn: &mut Turn, action: &Action) -> Result<EnvironmentReply, AgentFailure> {
        let setup = self.setup;
        let index = action.tool_id - 1;
        let prior_calls = self.tool_call_counts[index];
        self.tool_call_counts[index] += 1;
        let exchange = setup
            .environment
            .respond(crate::environment::EnvironmentInput {
                prepared: &setup.prepared,
                trial: &setup.key,
                turn: turn.index,
                action,
                prior_calls_of_tool: prior_calls,
                world_state: &self.world_state,
                earlier_actions: &self.earlier_actions,
                first_call_index: self.environment_calls,
                reask_limit: setup.options.reask_limit,
                sampling: Sampling {
                    seed: Some(seed_for(&setup.seed_key, ModelRole::Environment, turn.index, 0)),
                    ..setup.options.environment_sampling.clone()
                },
                user: setup.user.as_deref(),
                dialogue: &self.dialogue,
                first_user_call_index: self.user_calls,
                user_sampling: Sampling {
                    seed: Some(seed_for(&setup.seed_key, ModelRole::User, turn.index, 0)),
                    ..setup.options.environment_sampling.clone()
                },
                sandbox: self.sandbox,
            })
            .await;
        for call in &exchange.calls {
            match call.role {
                ModelRole::User => self.user_calls += 1,
                _ => self.environment_calls += 1,
            }
            *self.usage.entry(call.role).or_default() += call.usage();
        }
        if let Ok(reply) = &exchange.reply
            && setup.prepared.scenario.tools[index].answered_by == crate::scenario::Responder::User
        {
            self.dialogue.push((crate::environment::message_to_user(&action.arguments), reply.observation.to_string()));
        }
        turn.calls.extend(exchange.calls);
        turn.environment.extend(exchange.attempts);
        exchange.reply.map_err(AgentFailure::Infrastructure)
    }
}

/// A deterministic sampling seed per trial, role, turn and attempt, so reruns reproduce.
fn seed_for(trial: &str, role: ModelRole, turn: u32, attempt: u32) -> u64 {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(format!("{trial}|{role}|{turn}|{attempt}").as_bytes());
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest[..8]);
    u64::from_le_bytes(bytes) >> 33
}

/// Finds the JSON object in a reply: the whole text, a fenced block, or the outermost braces.
pub fn extract_json_object(text: &str) -> Option<Map<String, Value>> {
    let trimmed = text.trim();
    if let Ok(Value::Object(object)) = serde_json::from_str(trimmed) {
        return Some(object);
    }
    let start = trimmed.find('{')?;
    let end = trimmed.rfind('}')?;
    if end <= start {
        return None;
    }
    match serde_json::from_str(&trimmed[start..=end]) {
        Ok(Value::Object(object)) => Some(object),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_objects_are_found_inside_fences_and_prose() {
        let fenced = "Here you go:\n```json\n{\"a\": 1}\n```";
        assert_eq!(extract_json_object(fenced).unwrap().get("a"), Some(&json!(1)));
        assert!(extract_json_object("no json here").is_none());
        assert!(extract_json_object("} backwards {").is_none());
    }

    #[test]
    fn seeds_differ_by_turn_and_role_and_fit_in_31_bits() {
        let a = seed_for("t", ModelRole::Agent, 1, 0);
        assert_ne!(a, seed_for("t", ModelRole::Agent, 2, 0));
        assert_ne!(a, seed_for("t", ModelRole::Environment, 1, 0));
        assert_eq!(a, seed_for("t", ModelRole::Agent, 1, 0));
        assert!(a < (1 << 31));
    }
}
