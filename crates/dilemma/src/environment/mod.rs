//! Environments: what answers the agent's actions.
//!
//! - `scripted` plays each tool's `scripted` observations from the scenario file, so a
//!   scenario runs with no environment model;
//! - `llm` is the paper's environment model: it sees the ground truth, the behaviour notes,
//!   the world state and the agent's tool calls, never the agent's reasoning, and answers
//!   `{updated_world_state, new_observation_for_agent}`.
//!
//! Tools marked `answered_by: user` are messages to the scenario's second party: a user model
//! (`--model user=SPEC`) answers them in character, seeing only the messages addressed to it;
//! without one they play their scripted observations, whatever the environment.
//!
//! Scripted observations may be templates (`scripted.templated`), rendered per call with the
//! call's arguments and the world state, so a stateful environment (a CPU table, a message
//! stream) is deterministic data in the scenario file rather than code or free text.
//!
//! Tools marked `shell: true` run their `command` in the trial's sandbox (`crate::sandbox`)
//! whatever the environment: the observation is the exit code with stdout and stderr, and the
//! world state is left as it was.

use std::sync::Arc;

use serde_json::Value;

use crate::chat::{ChatRequest, Message, OutputFormat, Sampling, Text};
use crate::model::reask::{Asking, ReaskFailure, ask_until_parsed};
use crate::model::{CallContext, Model, ModelCall, ModelRole};
use crate::prompt;
use crate::scenario::{Responder, ScriptedResponse};
use crate::trial::{Action, EnvironmentAttempt, PreparedScenario, extract_json_object};

/// What answers the agent.
#[derive(Debug)]
pub enum Environment {
    Scripted,
    Llm(Arc<Model>),
}

impl Environment {
    /// `scripted`, or the id of the environment model.
    pub fn id(&self) -> String {
        match self {
            Environment::Scripted => "scripted".to_owned(),
            Environment::Llm(model) => model.id().to_owned(),
        }
    }

    /// Problems that would stop this environment (and the user model, if `user_model`) from
    /// running `scenario`, found before a run starts (a configuration error, not a trial
    /// failure).
    pub fn check(&self, prepared: &PreparedScenario, user_model: bool) -> Result<(), String> {
        let scenario = &prepared.scenario;
        let scripted_needed = |tool: &crate::scenario::Tool| match tool.answered_by {
            Responder::User => !user_model,
            Responder::Environment => matches!(self, Environment::Scripted),
        };
        let missing: Vec<&str> = scenario
            .tools
            .iter()
            .filter(|tool| !tool.shell && scripted_needed(tool) && tool.scripted.is_none())
            .map(|tool| tool.name.as_str())
            .collect();
        if !missing.is_empty() {
            return Err(format!(
                "scenario `{}`: tools [{}] have no `scripted` observations, so they cannot be answered without a model; add them, or choose a model with --model environment=<spec> (or --model user=<spec> for tools answered by the user)",
                scenario.id,
                missing.join(", ")
            ));
        }
        let talks_to_user = scenario.tools.iter().any(|tool| tool.answered_by == Responder::User);
        if user_model && talks_to_user && scenario.user.is_none() {
            return Err(format!(
                "scenario `{}` has tools answered by the user but no `user` section for the user model to play",
                scenario.id
            ));
        }
        Ok(())
    }

    pub(crate) async fn respond(&self, input: EnvironmentInput<'_>) -> EnvironmentExchange {
        let tool = &input.prepared.scenario.tools[input.action.tool_id - 1];
        if tool.shell {
            return shell(&input).await;
        }
        if tool.answered_by == Responder::User {
            return match input.user {
                Some(user) => user_model(user, &input).await,
                None => scripted(&input),
            };
        }
        match self {
            Environment::Scripted => scripted(&input),
            Environment::Llm(model) => llm(model, &input).await,
        }
    }
}

pub(crate) struct EnvironmentInput<'a> {
    pub prepared: &'a PreparedScenario,
    pub trial: &'a str,
    pub turn: u32,
    pub action: &'a Action,
    pub prior_calls_of_tool: u32,
    pub world_state: &'a Value,
    pub earlier_actions: &'a [String],
    pub first_call_index: u32,
    pub reask_limit: u32,
    pub sampling: Sampling,
    /// The user model, when the run has one.
    pub user: Option<&'a Model>,
    /// Earlier (agent message, user reply) exchanges of this trial.
    pub dialogue: &'a [(String, String)],
    /// How many user-model calls the trial made before this one.
    pub first_user_call_index: u32,
    pub user_sampling: Sampling,
    /// The trial's sandbox, for scenarios with shell tools.
    pub sandbox: Option<&'a crate::sandbox::Sandbox>,
}

/// The environment's answer to one action.
#[derive(Debug, Clone, PartialEq)]
pub struct EnvironmentReply {
    pub observation: Text,
    pub world_state: Value,
}

pub(crate) struct EnvironmentExchange {
    pub calls: Vec<ModelCall>,
    pub attempts: Vec<EnvironmentAttempt>,
    pub reply: Result<EnvironmentReply, String>,
}

fn scripted(input: &EnvironmentInput<'_>) -> EnvironmentExchange {
    let tool = &input.prepared.scenario.tools[input.action.tool_id - 1];
    let reply = match &tool.scripted {
        None => Err(format!("tool `{}` has no scripted observations", tool.name)),
        Some(script) => scripted_reply(script, input),
    };
    let attempts = match &reply {
        Ok(reply) => vec![EnvironmentAttempt { output: reply.observation.clone(), problem: None }],
        Err(problem) => vec![EnvironmentAttempt { output: Text::default(), problem: Some(problem.clone()) }],
    };
    EnvironmentExchange { calls: Vec::new(), attempts, reply }
}

fn scripted_reply(script: &ScriptedResponse, input: &EnvironmentInput<'_>) -> Result<EnvironmentReply, String> {
    let index = (input.prior_calls_of_tool as usize).min(script.observations.len() - 1);
    let mut state = match input.world_state {
        Value::Object(map) => map.clone(),
        _ => serde_json::Map::new(),
    };
    let observation = if script.templated {
        let context = template_context(input);
        let observation = render(&script.observations[index], &context).map_err(|error| format!("observation {}: {error}", index + 1))?;
        for (key, value) in &script.state {
            let key = render(key, &context).map_err(|error| format!("state key `{key}`: {error}"))?;
            let value = match value {
                Value::String(text) => {
                    let text = render(text, &context).map_err(|error| format!("state `{key}`: {error}"))?;
                    serde_json::from_str(text.trim()).unwrap_or(Value::String(text))
                }
                other => other.clone(),
            };
            state.insert(key, value);
        }
        observation
    } else {
        for (key, value) in &script.state {
            state.insert(key.clone(), value.clone());
        }
        script.observations[index].clone()
    };
    if input.action.terminal {
        state.insert("task_completed".into(), Value::Bool(true));
    }
    Ok(EnvironmentReply { observation: observation.into(), world_state: Value::Object(state) })
}

fn template_context(input: &EnvironmentInput<'_>) -> Value {
    serde_json::json!({
        "args": input.action.arguments,
        "state": input.world_state,
        "truth": Value::Object(input.prepared.scenario.environment.ground_truth.clone()),
        "call": input.prior_calls_of_tool,
        "turn": input.turn,
    })
}

/// Renders one template of a scenario file. The fuel limit stops a template that would loop
/// for ever; an error names the template's problem (the caller adds which one).
pub fn render(template: &str, context: &Value) -> Result<String, String> {
    let mut environment = minijinja::Environment::new();
    environment.set_fuel(Some(100_000));
    environment.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
    environment.render_str(template, minijinja::value::Serde(context)).map_err(|error| error.to_string())
}

/// Runs a shell tool's command in the trial's sandbox and logs it to the action log. The
/// attempt's output is the execution record (with `sandbox: bubblewrap|simulated`), so the
/// transcript says how every command ran; the agent sees only the observation.
async fn shell(input: &EnvironmentInput<'_>) -> EnvironmentExchange {
    let mut exchange = EnvironmentExchange { calls: Vec::new(), attempts: Vec::new(), reply: Err(String::new()) };
    let Some(sandbox) = input.sandbox else {
        exchange.reply = Err(format!("tool `{}` is a shell tool but the trial has no sandbox", input.action.tool));
        return exchange;
    };
    let command = input.action.arguments.get("command").and_then(Value::as_str).unwrap_or_default();
    let execution = sandbox.execute(command).await;
    let observation = execution.observation();
    let mut record = execution.record();
    if let Err(error) = sandbox.record_action(input.turn, command, &observation) {
        record["action_log_error"] = Value::from(error.to_string());
    }
    let mut state = input.world_state.as_object().cloned().unwrap_or_default();
    if input.action.terminal {
        state.insert("task_completed".into(), Value::Bool(true));
    }
    exchange.attempts.push(EnvironmentAttempt { output: record.to_string().into(), problem: None });
    exchange.reply = Ok(EnvironmentReply { observation: observation.into(), world_state: Value::Object(state) });
    exchange
}

/// The user model's reply to a message addressed to it.
async fn user_model(model: &Model, input: &EnvironmentInput<'_>) -> EnvironmentExchange {
    let scenario = &input.prepared.scenario;
    let mut exchange = EnvironmentExchange { calls: Vec::new(), attempts: Vec::new(), reply: Err(String::new()) };
    let Some(user) = &scenario.user else {
        exchange.reply = Err(format!("scenario `{}` has no `user` for the user model to play", scenario.id));
        return exchange;
    };
    let mut messages = vec![Message::system(prompt::user_system_prompt(&user.prompt))];
    for (said, answered) in input.dialogue {
        messages.push(Message::user(said.clone()));
        messages.push(Message::assistant(answered.clone()));
    }
    messages.push(Message::user(message_to_user(&input.action.arguments)));
    let request = ChatRequest { messages, tools: Default::default(), output: OutputFormat::Text, sampling: input.user_sampling.clone() };
    let context = CallContext {
        role: ModelRole::User,
        trial: input.trial.to_owned(),
        turn: input.turn,
        call_index: input.first_user_call_index,
    };
    let call = model.call(request, context).await;
    let result = call.result.clone();
    exchange.calls.push(call);
    match result {
        Ok(response) if !response.content.trim().is_empty() => {
            let mut state = input.world_state.as_object().cloned().unwrap_or_default();
            if input.action.terminal {
                state.insert("task_completed".into(), Value::Bool(true));
            }
            exchange.attempts.push(EnvironmentAttempt { output: response.content.clone().into(), problem: None });
            exchange.reply = Ok(EnvironmentReply { observation: response.content.trim().into(), world_state: Value::Object(state) });
        }
        Ok(response) => {
            exchange.attempts.push(EnvironmentAttempt { output: response.content.into(), problem: Some("the user model's reply is empty".into()) });
            exchange.reply = Err(format!("turn {}: the user model gave an empty reply", input.turn));
        }
        Err(error) => exchange.reply = Err(format!("user model call failed: {error}")),
    }
    exchange
}

/// What the agent said to the user: the call's `message` argument, or all its arguments.
pub fn message_to_user(arguments: &Value) -> String {
    match arguments.get("message").and_then(Value::as_str) {
        Some(message) => message.to_owned(),
        None => arguments.to_string(),
    }
}

async fn llm(model: &Model, input: &EnvironmentInput<'_>) -> EnvironmentExchange {
    let action = serde_json::json!({
        "id": input.action.tool_id,
        "name": input.action.tool,
        "parameters": input.action.arguments,
    });
    let messages = vec![
        Message::system(input.prepared.environment_system.clone()),
        Message::user(prompt::environment_turn(input.turn, input.world_state, input.earlier_actions, &action)),
    ];
    let asking = Asking {
        output: OutputFormat::JsonSchema(prompt::environment_answer_schema()),
        attempts: input.reask_limit + 1,
        sampling: |attempt: u32| Sampling { seed: input.sampling.seed.map(|seed| seed + u64::from(attempt)), ..input.sampling.clone() },
        context: |attempt: u32| CallContext {
            role: ModelRole::Environment,
            trial: input.trial.to_owned(),
            turn: input.turn,
            call_index: input.first_call_index + attempt,
        },
    };
    let asked = ask_until_parsed(model, messages, asking, |content| parse_environment_answer(content, input), |problem| {
        format!(
            "Your last reply could not be used: {problem}. Answer again with exactly one JSON object with the keys updated_world_state and new_observation_for_agent."
        )
    })
    .await;
    EnvironmentExchange {
        calls: asked.calls,
        attempts: asked.answers.into_iter().map(|(output, problem)| EnvironmentAttempt { output: output.into(), problem }).collect(),
        reply: asked.outcome.map_err(|failure| match failure {
            ReaskFailure::Call(error) => format!("environment model call failed: {error}"),
            ReaskFailure::Unusable(problem) => format!(
                "turn {}: the environment gave no usable reply after {} attempts; last problem: {problem}",
                input.turn,
                input.reask_limit + 1
            ),
        }),
    }
}

fn parse_environment_answer(content: &str, input: &EnvironmentInput<'_>) -> Result<EnvironmentReply, String> {
    let document = extract_json_object(content).ok_or("the reply is not a JSON object")?;
    let observation = match document.get("new_observation_for_agent") {
        Some(Value::String(text)) if !text.trim().is_empty() => text.clone(),
        Some(Value::String(_)) => return Err("`new_observation_for_agent` is empty".into()),
        Some(other) => other.to_string(),
        None => return Err("the reply has no `new_observation_for_agent`".into()),
    };
    // As in the reference, a non-object state is ignored and the previous state kept.
    let mut world_state = match document.get("updated_world_state") {
        Some(Value::Object(state)) => state.clone(),
        _ => input.world_state.as_object().cloned().unwrap_or_default(),
    };
    if input.action.terminal {
        // Termination is decided by code; the state records it whatever the model wrote.
        world_state.insert("task_completed".into(), Value::Bool(true));
    }
    Ok(EnvironmentReply { observation: observation.into(), world_state: Value::Object(world_state) })
}
