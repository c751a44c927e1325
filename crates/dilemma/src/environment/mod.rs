//! Environments: what answers the agent's actions.
//!
//! - `scripted` plays each tool's `scripted` observations from the scenario file, so a
//!   scenario runs with no environment model;
//! - `llm` is the paper's environment model: it sees the ground truth, the behaviour notes,
//!   the world state and the agent's tool calls, never the agent's reasoning, and answers
//!   `{updated_world_state, new_observation_for_agent}`.

use std::sync::Arc;

use serde_json::Value;

use crate::chat::{ChatRequest, Message, OutputFormat, Sampling};
use crate::model::{CallContext, Model, ModelCall, ModelRole};
use crate::prompt;
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

    /// Problems that would stop this environment from running `scenario`, found before a
    /// run starts (a configuration error, not a trial failure).
    pub fn check(&self, prepared: &PreparedScenario) -> Result<(), String> {
        if let Environment::Scripted = self {
            let missing: Vec<&str> = prepared
                .scenario
                .tools
                .iter()
                .filter(|tool| tool.scripted.is_none())
                .map(|tool| tool.name.as_str())
                .collect();
            if !missing.is_empty() {
                return Err(format!(
                    "scenario `{}`: tools [{}] have no `scripted` observations, so the scripted environment cannot run it; add them, or choose an environment model with --model environment=<spec>",
                    prepared.scenario.id,
                    missing.join(", ")
                ));
            }
        }
        Ok(())
    }

    pub(crate) async fn respond(&self, input: EnvironmentInput<'_>) -> EnvironmentExchange {
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
}

/// The environment's answer to one action.
#[derive(Debug, Clone, PartialEq)]
pub struct EnvironmentReply {
    pub observation: String,
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
        Some(script) => {
            let index = (input.prior_calls_of_tool as usize).min(script.observations.len() - 1);
            let mut state = match input.world_state {
                Value::Object(map) => map.clone(),
                _ => serde_json::Map::new(),
            };
            for (key, value) in &script.state {
                state.insert(key.clone(), value.clone());
            }
            if input.action.terminal {
                state.insert("task_completed".into(), Value::Bool(true));
            }
            Ok(EnvironmentReply { observation: script.observations[index].clone(), world_state: Value::Object(state) })
        }
    };
    let attempts = match &reply {
        Ok(reply) => vec![EnvironmentAttempt { output: reply.observation.clone(), problem: None }],
        Err(problem) => vec![EnvironmentAttempt { output: String::new(), problem: Some(problem.clone()) }],
    };
    EnvironmentExchange { calls: Vec::new(), attempts, reply }
}

async fn llm(model: &Model, input: &EnvironmentInput<'_>) -> EnvironmentExchange {
    let action = serde_json::json!({
        "id": input.action.tool_id,
        "name": input.action.tool,
        "parameters": input.action.arguments,
    });
    let mut messages = vec![
        Message::system(input.prepared.environment_system.clone()),
        Message::user(prompt::environment_turn(input.turn, input.world_state, input.earlier_actions, &action)),
    ];
    let mut exchange = EnvironmentExchange { calls: Vec::new(), attempts: Vec::new(), reply: Err(String::new()) };
    for attempt in 0..=input.reask_limit {
        let request = ChatRequest {
            messages: messages.clone(),
            tools: Vec::new(),
            output: OutputFormat::JsonSchema(prompt::environment_answer_schema()),
            sampling: Sampling { seed: input.sampling.seed.map(|seed| seed + u64::from(attempt)), ..input.sampling.clone() },
        };
        let context = CallContext {
            role: ModelRole::Environment,
            trial: input.trial.to_owned(),
            turn: input.turn,
            call_index: input.first_call_index + attempt,
        };
        let call = model.call(request, context).await;
        let result = call.result.clone();
        exchange.calls.push(call);
        let content = match result {
            Ok(response) => response.content,
            Err(error) => {
                exchange.reply = Err(format!("environment model call failed: {error}"));
                return exchange;
            }
        };
        match parse_environment_answer(&content, input) {
            Ok(reply) => {
                exchange.attempts.push(EnvironmentAttempt { output: content, problem: None });
                exchange.reply = Ok(reply);
                return exchange;
            }
            Err(problem) => {
                exchange.attempts.push(EnvironmentAttempt { output: content.clone(), problem: Some(problem.clone()) });
                messages.push(Message::assistant(content));
                messages.push(Message::user(format!(
                    "Your last reply could not be used: {problem}. Answer again with exactly one JSON object with the keys updated_world_state and new_observation_for_agent."
                )));
                exchange.reply = Err(format!(
                    "turn {}: the environment gave no usable reply after {} attempts; last problem: {problem}",
                    input.turn,
                    input.reask_limit + 1
                ));
            }
        }
    }
    exchange
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
    Ok(EnvironmentReply { observation, world_state: Value::Object(world_state) })
}
