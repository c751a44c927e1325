//! The Anthropic Messages provider, `anthropic:MODEL[@BASE_URL]`: `POST {base}/v1/messages`
//! with `x-api-key` (from `ANTHROPIC_API_KEY`) and `anthropic-version: 2023-06-01`.
//!
//! Translation, and why:
//! - System messages are hoisted into `system` (joined by blank lines): Messages has no
//!   system role.
//! - Messages become content blocks; consecutive messages of one role are merged into one
//!   turn, since all `tool_result` blocks answering an assistant turn must come together in
//!   the next user turn. Tool results are `tool_result` blocks in a user turn; assistant tool
//!   calls are `tool_use` blocks (arguments that are not an object go as `{}`). Empty text is
//!   left out, because the API rejects empty text blocks. A turn that is one text block is
//!   sent as a plain string.
//! - `OutputFormat::ToolCall` sends `tools` and `tool_choice: {type: any,
//!   disable_parallel_tool_use: true}` (exactly one call, as the format promises).
//! - `OutputFormat::JsonSchema` is done with a forced tool: one tool named `answer` whose
//!   `input_schema` is the schema, and `tool_choice: {type: tool, name: answer}`. Its input is
//!   returned as the JSON text `content` (see [`parse_response_for`]); any text the model wrote
//!   beside it goes to `reasoning`. This works on every Claude model, unlike the newer
//!   structured-output beta. The schema must describe an object, as agent and environment
//!   answers do.
//! - Anthropic has no `seed`; it is not sent. `max_tokens` is required and always sent.
//! - `thinking` blocks become `reasoning`; `stop_reason: refusal` is a refusal (finish reason
//!   `ContentFilter`, or a `Refused` error when nothing came back).

use std::fmt;

use serde_json::{Map, Value, json};

use crate::chat::{ChatRequest, ChatResponse, FinishReason, OutputFormat, Speaker, ToolCall, Usage};
use crate::model::http::{self, ApiKey, Auth, Endpoint, Provider, apply_filter, arguments_object, generated_call_id, push_blocks};
use crate::model::{BoxFuture, CallContext, ChatModel, ModelError, ModelErrorKind};

/// Anthropic's API, used when the spec names no other base URL.
pub const DEFAULT_BASE_URL: &str = "https://api.anthropic.com";
/// The `anthropic-version` header sent with every request.
pub const API_VERSION: &str = "2023-06-01";
/// The forced tool that carries a JSON-schema answer.
pub const ANSWER_TOOL: &str = "answer";

/// A model behind the Anthropic Messages API.
pub struct AnthropicModel {
    endpoint: Endpoint,
    model: String,
}

impl fmt::Debug for AnthropicModel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AnthropicModel").field("model", &self.model).field("endpoint", &self.endpoint).finish()
    }
}

impl AnthropicModel {
    /// `base_url` defaults to [`DEFAULT_BASE_URL`].
    pub fn new(model: &str, base_url: Option<&str>, api_key: ApiKey) -> Result<Self, String> {
        let base_url = http::check_base_url(base_url.unwrap_or(DEFAULT_BASE_URL))?;
        let id = http::model_id(Provider::Anthropic, model, &base_url, DEFAULT_BASE_URL);
        Ok(AnthropicModel { endpoint: Endpoint::new(id, &base_url, Some(api_key))?, model: model.to_owned() })
    }

    /// The URL requests go to.
    pub fn url(&self) -> String {
        format!("{}/v1/messages", self.endpoint.base_url)
    }
}

impl ChatModel for AnthropicModel {
    fn id(&self) -> &str {
        &self.endpoint.id
    }

    fn chat<'a>(&'a self, request: &'a ChatRequest, _context: &'a CallContext) -> BoxFuture<'a, Result<ChatResponse, ModelError>> {
        Box::pin(async move {
            let body = request_body(request, &self.model);
            let headers = [("anthropic-version", API_VERSION)];
            let reply = self.endpoint.post_json(&self.url(), Auth::Header("x-api-key"), &headers, body).await?;
            self.endpoint.finish(reply, classify_error, |value| parse_response_for(request, value))
        })
    }
}

/// The exact JSON body of a Messages request.
pub fn request_body(request: &ChatRequest, model: &str) -> Value {
    let mut system = Vec::new();
    let mut turns: Vec<(&'static str, Vec<Value>)> = Vec::new();
    for message in &request.messages {
        match message.speaker {
            Speaker::System => system.push(message.content.as_str()),
            Speaker::User => push_blocks(&mut turns, "user", text_block(&message.content).into_iter().collect()),
            Speaker::Assistant => {
                let mut blocks: Vec<Value> = text_block(&message.content).into_iter().collect();
                blocks.extend(message.tool_calls.iter().map(|call| {
                    json!({"type": "tool_use", "id": call.id, "name": call.name, "input": arguments_object(&call.arguments)})
                }));
                push_blocks(&mut turns, "assistant", blocks);
            }
            Speaker::Tool => push_blocks(
                &mut turns,
                "user",
                vec![json!({
                    "type": "tool_result",
                    "tool_use_id": message.tool_call_id.as_deref().unwrap_or_default(),
                    "content": message.content,
                })],
            ),
        }
    }
    let messages: Vec<Value> = turns
        .into_iter()
        .map(|(role, blocks)| {
            let content = match blocks.as_slice() {
                [only] if only.get("type").and_then(Value::as_str) == Some("text") => only["text"].clone(),
                _ => Value::Array(blocks),
            };
            json!({"role": role, "content": content})
        })
        .collect();

    let mut body = Map::new();
    body.insert("model".into(), Value::from(model));
    body.insert("max_tokens".into(), Value::from(request.sampling.max_tokens));
    let system: Vec<&str> = system.into_iter().filter(|text| !text.trim().is_empty()).collect();
    if !system.is_empty() {
        body.insert("system".into(), Value::from(system.join("\n\n")));
    }
    body.insert("messages".into(), Value::Array(messages));
    body.insert("temperature".into(), http::float_value(request.sampling.temperature));
    match &request.output {
        OutputFormat::Text => {}
        OutputFormat::ToolCall => {
            let tools = request
                .tools
                .iter()
                .map(|tool| json!({"name": tool.name, "description": tool.description, "input_schema": tool.parameters}))
                .collect();
            body.insert("tools".into(), Value::Array(tools));
            body.insert("tool_choice".into(), json!({"type": "any", "disable_parallel_tool_use": true}));
        }
        OutputFormat::JsonSchema(schema) => {
            body.insert(
                "tools".into(),
                json!([{
                    "name": ANSWER_TOOL,
                    "description": "Give your answer. The input of this tool is your whole answer, as the JSON document the instructions ask for.",
                    "input_schema": schema,
                }]),
            );
            body.insert("tool_choice".into(), json!({"type": "tool", "name": ANSWER_TOOL}));
        }
    }
    Value::Object(body)
}

fn text_block(text: &str) -> Option<Value> {
    (!text.is_empty()).then(|| json!({"type": "text", "text": text}))
}

/// Reads a Messages reply as is: `tool_use` blocks are tool calls, whatever their name.
/// `raw` is left for the caller (it is the body text).
pub fn parse_response(body: &Value) -> Result<ChatResponse, ModelError> {
    if body.get("type").and_then(Value::as_str) == Some("error") {
        // An error delivered with a 2xx status: classify it by its type, as if it were a 500.
        let mut error = classify_error(500, None, &body.to_string());
        error.message = format!("the reply is an error: {}", http::body_message(&body.to_string()));
        return Err(error);
    }
    let Some(blocks) = body.get("content").and_then(Value::as_array) else {
        return Err(ModelError::new(ModelErrorKind::Transient, "the reply has no `content` blocks"));
    };
    let response_id = body.get("id").and_then(Value::as_str).unwrap_or_default();
    let mut content = String::new();
    let mut thinking: Vec<&str> = Vec::new();
    let mut tool_calls = Vec::new();
    for (index, block) in blocks.iter().enumerate() {
        match block.get("type").and_then(Value::as_str) {
            Some("text") => content.push_str(block.get("text").and_then(Value::as_str).unwrap_or_default()),
            Some("thinking") => thinking.extend(block.get("thinking").and_then(Value::as_str)),
            Some("tool_use") => {
                let name = block.get("name").and_then(Value::as_str).unwrap_or_default().to_owned();
                let arguments = block.get("input").cloned().unwrap_or_else(|| Value::Object(Map::new()));
                let id = match block.get("id").and_then(Value::as_str).filter(|id| !id.is_empty()) {
                    Some(id) => id.to_owned(),
                    None => generated_call_id(&[response_id, &index.to_string(), &name, &arguments.to_string()]),
                };
                tool_calls.push(ToolCall { id, name, arguments });
            }
            // redacted_thinking and server tool blocks carry nothing the harness reads.
            _ => {}
        }
    }
    let stop_reason = body.get("stop_reason").and_then(Value::as_str).unwrap_or("end_turn");
    let finish_reason = match stop_reason {
        "end_turn" | "stop_sequence" => FinishReason::Stop,
        "max_tokens" | "model_context_window_exceeded" => FinishReason::Length,
        "tool_use" => FinishReason::ToolCalls,
        "refusal" => FinishReason::ContentFilter,
        _ => FinishReason::Other,
    };
    let usage = body.get("usage").map(|usage| {
        let count = |key: &str| usage.get(key).and_then(Value::as_u64).unwrap_or(0);
        Usage {
            // Cached prompt tokens are prompt tokens too; Anthropic counts them apart.
            prompt_tokens: count("input_tokens") + count("cache_creation_input_tokens") + count("cache_read_input_tokens"),
            completion_tokens: count("output_tokens"),
        }
    });
    let thinking = thinking.join("\n\n");
    let response = ChatResponse {
        content,
        reasoning: (!thinking.is_empty()).then_some(thinking),
        tool_calls,
        finish_reason,
        usage: usage.unwrap_or_default(),
        raw: None,
    };
    apply_filter(response, stop_reason == "refusal", "the model refused (stop_reason refusal)")
}

/// Reads a reply to `request`: for a JSON-schema request, the forced `answer` tool's input
/// becomes the content (as JSON text), and any text beside it goes to `reasoning`.
pub fn parse_response_for(request: &ChatRequest, body: &Value) -> Result<ChatResponse, ModelError> {
    let mut response = parse_response(body)?;
    if !matches!(request.output, OutputFormat::JsonSchema(_)) {
        return Ok(response);
    }
    if let Some(position) = response.tool_calls.iter().position(|call| call.name == ANSWER_TOOL) {
        let answer = response.tool_calls.remove(position);
        let preamble = std::mem::replace(&mut response.content, answer.arguments.to_string());
        if !preamble.trim().is_empty() {
            response.reasoning = Some(match response.reasoning.take() {
                Some(thinking) => format!("{thinking}\n\n{preamble}"),
                None => preamble,
            });
        }
        if response.finish_reason == FinishReason::ToolCalls {
            response.finish_reason = FinishReason::Stop;
        }
    }
    Ok(response)
}

/// Classifies a non-2xx reply (`{type: error, error: {type, message}}`). The error type
/// decides where it is clear: `overloaded_error` (529) and `api_error` are `Transient`,
/// `rate_limit_error` is `RateLimited`; otherwise the status does.
pub fn classify_error(status: u16, retry_after_header: Option<&str>, body: &str) -> ModelError {
    let hint = match status {
        401 | 403 => " (check ANTHROPIC_API_KEY)",
        404 => " (check the model name and the base URL)",
        _ => "",
    };
    let mut error = http::status_error(status, retry_after_header, body, hint);
    let value: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    match value.pointer("/error/type").and_then(Value::as_str) {
        Some("overloaded_error" | "api_error" | "timeout_error") => error.kind = ModelErrorKind::Transient,
        Some("rate_limit_error") => error.kind = ModelErrorKind::RateLimited,
        _ => {}
    }
    error
}
