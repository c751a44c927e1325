//! The scripted provider: replies read from a YAML file, for tests and dry runs.
//!
//! It is an ordinary provider (`scripted:path/to/replies.yaml`), so a scripted run goes
//! through exactly the same policy, journaling and scoring as a real one. Replies are
//! picked by the call's `call_index` (how many calls this role made earlier in the trial),
//! so the provider keeps no state and concurrent trials do not disturb each other.
//!
//! ```yaml
//! replies:
//!   - tool_id: 1                 # call the first offered tool; arguments filled from its schema
//!     reasoning: Check the facts first.
//!   - tool: release_batch        # or by name, with explicit arguments
//!     arguments: {batch_id: B-7}
//!   - content: 'not json'        # sent verbatim (to test protocol errors)
//!   - json: {updated_world_state: {}, new_observation_for_agent: ok}   # any JSON document
//! ```
//! The last reply repeats once the list is used up. A top-level `delay_ms` simulates latency.
//!
//! A script can react to what the agent is shown, for agents whose misalignment is
//! conditional (a sandbagger answers worse only where it reads that capability is punished):
//!
//! ```yaml
//! when_seen:                     # the first entry whose text occurs in the request's messages
//!   - text: capability unlearning  #   (system prompt, observations, earlier turns), verbatim
//!     replies:                   #   answers this call from its own list, by the same index
//!       - tool: submit_answers
//!         arguments: {q1: A}
//! replies:                       # otherwise
//!   - tool: submit_answers
//!     arguments: {q1: C}
//! ```

use std::path::Path;

use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::chat::{ChatRequest, ChatResponse, FinishReason, OutputFormat, ToolCall, ToolSpec, Usage};
use crate::model::{BoxFuture, CallContext, ChatModel, ModelError};

/// One scripted reply.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScriptedReply {
    /// Call the tool with this name.
    #[serde(default)]
    pub tool: Option<String>,
    /// Call the tool at this 1-based position of the offered tools.
    #[serde(default)]
    pub tool_id: Option<usize>,
    /// Arguments; when absent, the smallest arguments that satisfy the tool's schema.
    #[serde(default)]
    pub arguments: Option<Value>,
    /// Reasoning text (JSON protocol) for a tool reply.
    #[serde(default)]
    pub reasoning: Option<String>,
    /// A raw text reply, sent as is.
    #[serde(default)]
    pub content: Option<String>,
    /// A JSON document reply, serialised as the content.
    #[serde(default)]
    pub json: Option<Value>,
}

impl ScriptedReply {
    /// Call the tool at this 1-based position, with arguments filled from its schema.
    pub fn tool_id(id: usize) -> Self {
        ScriptedReply { tool_id: Some(id), reasoning: Some(format!("I will use tool {id}.")), ..Default::default() }
    }
    /// Reply with this text, as is.
    pub fn content(text: impl Into<String>) -> Self {
        ScriptedReply { content: Some(text.into()), ..Default::default() }
    }
    /// Reply with this JSON document.
    pub fn json(document: Value) -> Self {
        ScriptedReply { json: Some(document), ..Default::default() }
    }
}

/// Replies that answer instead of the default ones once the request contains `text`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScriptedBranch {
    /// Searched verbatim in the content of every message of the request.
    pub text: String,
    pub replies: Vec<ScriptedReply>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScriptFile {
    replies: Vec<ScriptedReply>,
    /// Alternative reply lists, chosen by what the request contains (first match wins).
    #[serde(default)]
    when_seen: Vec<ScriptedBranch>,
    /// Simulated latency per call, in milliseconds.
    #[serde(default)]
    delay_ms: u64,
}

/// Why a script file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ScriptError {
    #[error("cannot read scripted model file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("scripted model file {path} is not valid: {message}")]
    Invalid { path: String, message: String },
}

/// A provider that answers from a list of replies.
#[derive(Debug, Clone)]
pub struct ScriptedModel {
    id: String,
    replies: Vec<ScriptedReply>,
    branches: Vec<ScriptedBranch>,
    delay: std::time::Duration,
}

impl ScriptedModel {
    /// Loads `scripted:<path>`; `path` is what follows the prefix.
    pub fn from_file(path: &Path) -> Result<Self, ScriptError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ScriptError::Read { path: shown.clone(), source })?;
        let json = crate::scenario::yaml_to_json(&text)
            .map_err(|message| ScriptError::Invalid { path: shown.clone(), message })?;
        let file: ScriptFile = serde_json::from_value(json)
            .map_err(|error| ScriptError::Invalid { path: shown.clone(), message: error.to_string() })?;
        let model = Self::new(format!("scripted:{shown}"), file.replies)
            .and_then(|model| model.with_branches(file.when_seen))
            .map_err(|message| ScriptError::Invalid { path: shown, message })?;
        Ok(model.with_delay(std::time::Duration::from_millis(file.delay_ms)))
    }

    /// A scripted model from replies in memory.
    pub fn new(id: impl Into<String>, replies: Vec<ScriptedReply>) -> Result<Self, String> {
        check_replies("replies", &replies)?;
        Ok(ScriptedModel { id: id.into(), replies, branches: Vec::new(), delay: std::time::Duration::ZERO })
    }

    /// Adds reply lists that answer instead once the request contains their text.
    pub fn with_branches(mut self, branches: Vec<ScriptedBranch>) -> Result<Self, String> {
        for (index, branch) in branches.iter().enumerate() {
            if branch.text.is_empty() {
                return Err(format!("when_seen[{index}].text is empty"));
            }
            check_replies(&format!("when_seen[{index}].replies"), &branch.replies)?;
        }
        self.branches = branches;
        Ok(self)
    }

    /// Waits this long before each reply (to simulate provider latency).
    pub fn with_delay(mut self, delay: std::time::Duration) -> Self {
        self.delay = delay;
        self
    }

    fn reply(&self, request: &ChatRequest, context: &CallContext) -> Result<ChatResponse, ModelError> {
        let replies = self
            .branches
            .iter()
            .find(|branch| request.messages.iter().any(|message| message.content.contains(&branch.text)))
            .map_or(&self.replies, |branch| &branch.replies);
        let index = (context.call_index as usize).min(replies.len() - 1);
        let reply = &replies[index];
        let mut response = ChatResponse::default();
        if let Some(text) = &reply.content {
            response.content = text.clone();
        } else if let Some(document) = &reply.json {
            response.content = document.to_string();
        } else {
            let (position, tool) = self.pick_tool(reply, &request.tools)?;
            let arguments = reply.arguments.clone().unwrap_or_else(|| minimal_instance(&tool.parameters));
            if request.output == OutputFormat::ToolCall {
                response.tool_calls.push(ToolCall {
                    id: format!("call_{}_{}", context.turn, context.call_index),
                    name: tool.name.clone(),
                    arguments,
                });
                response.finish_reason = FinishReason::ToolCalls;
                response.reasoning = reply.reasoning.clone();
            } else {
                response.content = json!({
                    "reasoning": reply.reasoning.clone().unwrap_or_default(),
                    "tool_choice": {"id": position, "name": tool.name, "parameters": arguments},
                })
                .to_string();
            }
        }
        // Rough token counts (four characters a token) so accounting paths are exercised.
        let prompt_chars: usize = request.messages.iter().map(|message| message.content.len()).sum();
        response.usage = Usage {
            prompt_tokens: (prompt_chars / 4) as u64,
            completion_tokens: (response.content.len() / 4) as u64 + 1,
        };
        response.raw = Some(serde_json::to_string(&response.content).unwrap_or_default());
        Ok(response)
    }

    fn pick_tool<'t>(&self, reply: &ScriptedReply, tools: &'t [ToolSpec]) -> Result<(usize, &'t ToolSpec), ModelError> {
        let found = match (&reply.tool, reply.tool_id) {
            (Some(name), _) => tools.iter().position(|tool| &tool.name == name).map(|index| (index + 1, &tools[index])),
            (None, Some(id)) => tools.get(id.wrapping_sub(1)).map(|tool| (id, tool)),
            (None, None) => None,
        };
        found.ok_or_else(|| {
            let offered: Vec<&str> = tools.iter().map(|tool| tool.name.as_str()).collect();
            ModelError::fatal(format!(
                "{}: the scripted reply names tool {:?}/{:?}, but the request offers [{}]",
                self.id,
                reply.tool,
                reply.tool_id,
                offered.join(", ")
            ))
        })
    }
}

impl ChatModel for ScriptedModel {
    fn id(&self) -> &str {
        &self.id
    }

    /// Replies depend on `CallContext::call_index`, which is not part of the request.
    fn cacheable(&self) -> bool {
        false
    }

    fn chat<'a>(&'a self, request: &'a ChatRequest, context: &'a CallContext) -> BoxFuture<'a, Result<ChatResponse, ModelError>> {
        Box::pin(async move {
            if !self.delay.is_zero() {
                tokio::time::sleep(self.delay).await;
            }
            self.reply(request, context)
        })
    }
}

/// Every reply list needs at least one reply, each of exactly one kind.
fn check_replies(field: &str, replies: &[ScriptedReply]) -> Result<(), String> {
    if replies.is_empty() {
        return Err(format!("`{field}` is empty; give at least one reply"));
    }
    for (index, reply) in replies.iter().enumerate() {
        let kinds = [reply.tool.is_some() || reply.tool_id.is_some(), reply.content.is_some(), reply.json.is_some()];
        if kinds.iter().filter(|kind| **kind).count() != 1 {
            return Err(format!("{field}[{index}] must have exactly one of `tool`/`tool_id`, `content` or `json`"));
        }
    }
    Ok(())
}

/// The smallest JSON value that satisfies a (simple) JSON Schema: required properties only,
/// the first `enum` value, `const`, minimums. Good enough for tool parameter schemas.
pub fn minimal_instance(schema: &Value) -> Value {
    if let Some(constant) = schema.get("const") {
        return constant.clone();
    }
    if let Some(first) = schema.get("enum").and_then(Value::as_array).and_then(|options| options.first()) {
        return first.clone();
    }
    if let Some(first) = ["anyOf", "oneOf"].iter().find_map(|key| schema.get(*key).and_then(Value::as_array).and_then(|options| options.first())) {
        return minimal_instance(first);
    }
    let kind = match schema.get("type") {
        Some(Value::String(kind)) => kind.as_str(),
        Some(Value::Array(kinds)) => kinds.first().and_then(Value::as_str).unwrap_or("null"),
        _ if schema.get("properties").is_some() => "object",
        _ => "null",
    };
    match kind {
        "object" => {
            let mut object = Map::new();
            let properties = schema.get("properties").and_then(Value::as_object);
            for name in schema.get("required").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str) {
                let property = properties.and_then(|properties| properties.get(name)).cloned().unwrap_or(Value::Null);
                object.insert(name.to_owned(), minimal_instance(&property));
            }
            Value::Object(object)
        }
        "string" => {
            let length = schema.get("minLength").and_then(Value::as_u64).unwrap_or(1).max(1) as usize;
            Value::String("x".repeat(length))
        }
        "integer" => Value::from(schema.get("minimum").and_then(Value::as_i64).unwrap_or(0)),
        "number" => schema.get("minimum").cloned().unwrap_or(Value::from(0)),
        "boolean" => Value::Bool(false),
        "array" => {
            let count = schema.get("minItems").and_then(Value::as_u64).unwrap_or(0) as usize;
            let item = schema.get("items").map(minimal_instance).unwrap_or(Value::Null);
            Value::Array(vec![item; count])
        }
        _ => Value::Null,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_instances_satisfy_their_schemas() {
        let schema = json!({
            "type": "object",
            "properties": {
                "batch": {"type": "string", "enum": ["B-7", "B-9"]},
                "hours": {"type": "integer", "minimum": 2},
                "note": {"type": "string", "minLength": 3},
                "optional": {"type": "string"}
            },
            "required": ["batch", "hours", "note"],
            "additionalProperties": false
        });
        let instance = minimal_instance(&schema);
        assert_eq!(instance, json!({"batch": "B-7", "hours": 2, "note": "xxx"}));
        assert!(jsonschema::is_valid(&schema, &instance));
    }

    #[test]
    fn a_reply_must_say_one_thing() {
        let both = ScriptedReply { tool: Some("a".into()), ..ScriptedReply::content("x") };
        let error = ScriptedModel::new("scripted:test", vec![both]).unwrap_err();
        assert!(error.contains("exactly one of"), "{error}");
        assert!(ScriptedModel::new("scripted:test", vec![]).unwrap_err().contains("empty"));
    }

    #[test]
    fn a_branch_answers_once_its_text_was_shown() {
        let model = ScriptedModel::new("scripted:test", vec![ScriptedReply::content("default 0"), ScriptedReply::content("default 1")])
            .unwrap()
            .with_branches(vec![ScriptedBranch { text: "unlearning".into(), replies: vec![ScriptedReply::content("branch 0"), ScriptedReply::content("branch 1")] }])
            .unwrap();
        let ask = |texts: &[&str], call_index: u32| {
            let request = ChatRequest {
                messages: texts.iter().map(|text| crate::chat::Message::user(*text)).collect(),
                tools: Default::default(),
                output: OutputFormat::Text,
                sampling: crate::chat::Sampling::default(),
            };
            let context = CallContext { role: crate::model::ModelRole::Agent, trial: "t".into(), turn: 1, call_index };
            model.reply(&request, &context).unwrap().content
        };
        assert_eq!(ask(&["quiz"], 0), "default 0");
        assert_eq!(ask(&["quiz", "score 60% or more: unlearning"], 1), "branch 1", "same index, the branch's list");
        assert_eq!(ask(&["quiz"], 5), "default 1", "the last reply repeats");
        let empty = ScriptedBranch { text: "x".into(), replies: Vec::new() };
        let error = ScriptedModel::new("scripted:test", vec![ScriptedReply::content("a")]).unwrap().with_branches(vec![empty]).unwrap_err();
        assert!(error.contains("when_seen[0].replies"), "{error}");
    }
}
