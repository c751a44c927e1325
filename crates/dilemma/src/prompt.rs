//! Renders what each role sees from a scenario, once per scenario and run.
//!
//! Information flow is fixed here (invariant 4 of ARCHITECTURE.md): the agent's prompt is
//! built from prompt modules and the tool names, descriptions and parameters only, never
//! from tracks, roles, risks, behaviour notes or scripted observations; the environment's
//! prompt holds the ground truth and behaviour notes but never sees the agent's reasoning.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::chat::ToolSpec;
use crate::scenario::{Scenario, Scope};

const ENVIRONMENT_PREAMBLE: &str = include_str!("../../../prompts/environment.md");
const ENVIRONMENT_OUTPUT: &str = include_str!("../../../prompts/environment-output.md");
const AGENT_TOOLS_JSON: &str = include_str!("../../../prompts/agent-tools-json.md");
const AGENT_OUTPUT_JSON: &str = include_str!("../../../prompts/agent-output-json.md");
const AGENT_TOOLS_NATIVE: &str = include_str!("../../../prompts/agent-tools-native.md");
const USER_PREAMBLE: &str = include_str!("../../../prompts/user.md");

/// How the agent answers each turn.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    /// The paper's: one message, a JSON object `{reasoning, tool_choice{id, name, parameters}}`.
    #[default]
    Json,
    /// Native tool calling: one tool call per turn.
    Tools,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Json => "json",
            Protocol::Tools => "tools",
        }
    }
}

/// A hash of every prompt template compiled into this binary, stored with each run so that
/// a changed template is visible when results are compared.
pub fn templates_hash() -> String {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    for template in [ENVIRONMENT_PREAMBLE, ENVIRONMENT_OUTPUT, AGENT_TOOLS_JSON, AGENT_OUTPUT_JSON, AGENT_TOOLS_NATIVE, USER_PREAMBLE] {
        hasher.update(template.as_bytes());
        hasher.update([0]);
    }
    for (name, text) in crate::factors::TEXTS {
        hasher.update(name.as_bytes());
        hasher.update([0]);
        hasher.update(text.as_bytes());
        hasher.update([0]);
    }
    hex::encode(hasher.finalize())[..16].to_owned()
}

fn module_text(heading: &str, body: &str) -> String {
    format!("[{heading}]\n\n{}", body.trim_end())
}

/// The agent's prompt modules of one scope, rendered, in file order.
fn modules_in_scope(scenario: &Scenario, scope: Scope) -> Vec<String> {
    scenario
        .agent
        .modules
        .iter()
        .filter(|module| module.scope == scope)
        .map(|module| module_text(&module.heading, &module.body))
        .collect()
}

/// The agent's system prompt: the `always` modules, then the tool list and output format.
pub fn agent_system_prompt(scenario: &Scenario, protocol: Protocol) -> String {
    let mut sections = modules_in_scope(scenario, Scope::Always);
    match protocol {
        Protocol::Json => {
            let tools: Vec<String> = scenario
                .tools
                .iter()
                .enumerate()
                .map(|(index, tool)| {
                    format!(
                        "{}. {}: {}\n   parameters (JSON Schema): {}",
                        index + 1,
                        tool.name,
                        tool.description.trim(),
                        Value::Object(tool.parameters.clone())
                    )
                })
                .collect();
            sections.push(AGENT_TOOLS_JSON.trim_end().replace("{tools}", &tools.join("\n")));
            sections.push(AGENT_OUTPUT_JSON.trim_end().to_owned());
        }
        Protocol::Tools => sections.push(AGENT_TOOLS_NATIVE.trim_end().to_owned()),
    }
    sections.join("\n\n")
}

/// The first user message: the `once` modules, then the first observation.
pub fn agent_opening(scenario: &Scenario) -> String {
    let mut sections = modules_in_scope(scenario, Scope::Once);
    sections.push(module_text("OBSERVATION", &initial_observation(scenario)));
    sections.join("\n\n")
}

/// What the agent observes before its first action. As in the reference, the default is the
/// retrieved ground truth itself.
pub fn initial_observation(scenario: &Scenario) -> String {
    match &scenario.environment.initial_observation {
        Some(text) => text.clone(),
        None => format!(
            "Retrieved records:\n{}",
            serde_json::to_string_pretty(&scenario.environment.ground_truth).unwrap_or_default()
        ),
    }
}

/// The user message that carries the result of turn `turn` to the agent (JSON protocol).
pub fn agent_observation(turn: u32, observation: &str) -> String {
    module_text(&format!("OBSERVATION AFTER TURN {turn}"), observation)
}

/// The message that asks the agent again after an unusable reply.
pub fn agent_reask(problem: &str, protocol: Protocol) -> String {
    match protocol {
        Protocol::Json => format!(
            "Your last reply could not be used: {problem}. Answer again with exactly one JSON object in the required format."
        ),
        Protocol::Tools => format!("Your last reply could not be used: {problem}. Call exactly one of the tools."),
    }
}

/// The tools as the agent is offered them: name, description, parameters. Nothing else.
pub fn agent_tools(scenario: &Scenario) -> Vec<ToolSpec> {
    scenario
        .tools
        .iter()
        .map(|tool| ToolSpec {
            name: tool.name.clone(),
            description: tool.description.trim().to_owned(),
            parameters: Value::Object(tool.parameters.clone()),
        })
        .collect()
}

/// The JSON Schema of the agent's answer in the JSON protocol, one branch per tool. Used for
/// constrained decoding (embedded model) and structured output (providers that support it).
pub fn agent_answer_schema(scenario: &Scenario) -> Value {
    let branches: Vec<Value> = scenario
        .tools
        .iter()
        .enumerate()
        .map(|(index, tool)| {
            json!({
                "type": "object",
                "properties": {
                    "id": {"const": index + 1},
                    "name": {"const": tool.name},
                    "parameters": Value::Object(tool.parameters.clone()),
                },
                "required": ["id", "name", "parameters"],
                "additionalProperties": false,
            })
        })
        .collect();
    json!({
        "type": "object",
        "properties": {
            "reasoning": {"type": "string"},
            "tool_choice": {"anyOf": branches},
        },
        "required": ["reasoning", "tool_choice"],
        "additionalProperties": false,
    })
}

/// The environment model's system prompt: preamble, ground truth, behaviour, tool notes,
/// output format.
pub fn environment_system_prompt(scenario: &Scenario) -> String {
    let tools: Vec<String> = scenario
        .tools
        .iter()
        .enumerate()
        .map(|(index, tool)| {
            let ends = if tool.is_terminal() { " Calling it completes the task." } else { "" };
            format!("Tool {} `{}`: {}{ends}", index + 1, tool.name, tool.behaviour.trim())
        })
        .collect();
    [
        ENVIRONMENT_PREAMBLE.trim_end().to_owned(),
        module_text(
            "GROUND TRUTH",
            &serde_json::to_string_pretty(&scenario.environment.ground_truth).unwrap_or_default(),
        ),
        module_text("ENVIRONMENT BEHAVIOUR", &format!("{}\n\n{}", scenario.environment.behaviour.trim(), tools.join("\n"))),
        ENVIRONMENT_OUTPUT.trim_end().to_owned(),
    ]
    .join("\n\n")
}

/// The environment's per-turn message: the world state, the earlier actions and this action.
/// Only tool calls cross over from the agent: never its reasoning.
pub fn environment_turn(turn: u32, world_state: &Value, earlier_actions: &[String], action: &Value) -> String {
    let earlier = if earlier_actions.is_empty() { "none".to_owned() } else { earlier_actions.join("\n") };
    format!(
        "Turn {turn}.\n\nCurrent world state (JSON):\n{}\n\nEarlier agent actions:\n{earlier}\n\nThe agent's action now (JSON):\n{}",
        serde_json::to_string_pretty(world_state).unwrap_or_default(),
        action
    )
}

/// The user model's system prompt: the preamble, then the scenario's description of the user.
/// The user model sees only the messages the agent addressed to it, never its reasoning or
/// its other actions.
pub fn user_system_prompt(user: &str) -> String {
    format!("{}\n\n{}", USER_PREAMBLE.trim_end(), module_text("WHO YOU ARE", user))
}

/// The JSON Schema of the environment's answer.
pub fn environment_answer_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "updated_world_state": {"type": "object"},
            "new_observation_for_agent": {"type": "string"},
        },
        "required": ["updated_world_state", "new_observation_for_agent"],
        "additionalProperties": false,
    })
}
