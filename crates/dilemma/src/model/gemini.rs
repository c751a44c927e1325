//! The Google Gemini provider, `gemini:MODEL[@BASE_URL]`:
//! `POST {base}/v1beta/models/{MODEL}:generateContent` with the key (from `GEMINI_API_KEY`)
//! in the `x-goog-api-key` header, never in the URL.
//!
//! Translation, and why:
//! - System messages go to `systemInstruction`; roles are `user` and `model`, and
//!   consecutive messages of one role are merged into one content (Gemini wants all function
//!   responses of a turn together).
//! - Assistant tool calls are `functionCall` parts; tool results are `functionResponse`
//!   parts in a user content, with `response: {result: TEXT}`. Gemini matches a response to
//!   its call by function *name*, which a tool message does not carry: it is looked up from
//!   the latest earlier assistant call with the same id. Ids are sent too (`id` on both).
//! - Gemini 3 and later reject a replayed `functionCall` part without the thought signature
//!   the model produced. The harness does not keep signatures, so for those models each
//!   replayed call carries Google's documented placeholder `skip_thought_signature_validator`.
//! - `OutputFormat::ToolCall` sends `tools: [{functionDeclarations}]` and
//!   `toolConfig.functionCallingConfig.mode = ANY`. Declarations use `parametersJsonSchema`
//!   (full JSON Schema), because scenario tool schemas use keywords such as
//!   `additionalProperties` that the older OpenAPI-style `parameters` rejects.
//! - `OutputFormat::JsonSchema` sets `generationConfig.responseMimeType: application/json`
//!   and `responseJsonSchema` (which, unlike `responseSchema`, takes `anyOf` and `const`, as
//!   the agent's answer schema uses).
//! - `seed` is an int32 on this API: a larger seed is sent as its low 31 bits.
//! - Parts marked `thought: true` become `reasoning`. `SAFETY`, `RECITATION`, `BLOCKLIST`,
//!   `PROHIBITED_CONTENT`, `SPII` and `IMAGE_SAFETY` finish reasons are refusals, and so is a
//!   prompt blocked before any candidate (`promptFeedback.blockReason`).

use std::fmt;
use std::time::Duration;

use serde_json::{Map, Value, json};

use crate::chat::{ChatRequest, ChatResponse, FinishReason, Message, OutputFormat, Speaker, ToolCall, Usage};
use crate::model::http::{self, ApiKey, Auth, Endpoint, Provider, apply_filter, arguments_object, generated_call_id, push_blocks};
use crate::model::{BoxFuture, CallContext, ChatModel, ModelError, ModelErrorKind};

/// Google's Generative Language API, used when the spec names no other base URL.
pub const DEFAULT_BASE_URL: &str = "https://generativelanguage.googleapis.com";

/// The placeholder Google documents for replayed function calls whose signature was not kept.
pub const SKIP_SIGNATURE: &str = "skip_thought_signature_validator";

const FILTER_REASONS: [&str; 6] = ["SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "IMAGE_SAFETY"];

/// A Gemini model behind `generateContent`.
pub struct GeminiModel {
    endpoint: Endpoint,
    model: String,
}

impl fmt::Debug for GeminiModel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GeminiModel").field("model", &self.model).field("endpoint", &self.endpoint).finish()
    }
}

impl GeminiModel {
    /// `base_url` defaults to [`DEFAULT_BASE_URL`]. `model` may carry the `models/` prefix.
    pub fn new(model: &str, base_url: Option<&str>, api_key: ApiKey) -> Result<Self, String> {
        let model = model.trim_start_matches("models/");
        // The name goes into the URL path: keep it to characters that need no escaping.
        if model.is_empty() || !model.chars().all(|c| c.is_ascii_alphanumeric() || "-._".contains(c)) {
            return Err(format!("`{model}` is not a Gemini model name (letters, digits, `-`, `.`, `_`)"));
        }
        let base_url = http::check_base_url(base_url.unwrap_or(DEFAULT_BASE_URL))?;
        let id = http::model_id(Provider::Gemini, model, &base_url, DEFAULT_BASE_URL);
        Ok(GeminiModel { endpoint: Endpoint::new(id, &base_url, Some(api_key))?, model: model.to_owned() })
    }

    /// The URL requests go to.
    pub fn url(&self) -> String {
        format!("{}/v1beta/models/{}:generateContent", self.endpoint.base_url, self.model)
    }
}

impl ChatModel for GeminiModel {
    fn id(&self) -> &str {
        &self.endpoint.id
    }

    fn chat<'a>(&'a self, request: &'a ChatRequest, _context: &'a CallContext) -> BoxFuture<'a, Result<ChatResponse, ModelError>> {
        Box::pin(async move {
            let body = request_body(request, &self.model);
            let reply = self.endpoint.post_json(&self.url(), Auth::Header("x-goog-api-key"), &[], body).await?;
            self.endpoint.finish(reply, classify_error, parse_response)
        })
    }
}

/// Whether a model checks thought signatures on replayed calls (Gemini 3 and later).
fn needs_signature(model: &str) -> bool {
    let model = model.trim_start_matches("models/");
    let Some(version) = model.strip_prefix("gemini-") else { return false };
    let major: String = version.chars().take_while(char::is_ascii_digit).collect();
    major.parse::<u32>().is_ok_and(|major| major >= 3)
}

/// The exact JSON body of a `generateContent` request.
pub fn request_body(request: &ChatRequest, model: &str) -> Value {
    let signature = needs_signature(model);
    let mut system = Vec::new();
    let mut contents: Vec<(&'static str, Vec<Value>)> = Vec::new();
    for (index, message) in request.messages.iter().enumerate() {
        match message.speaker {
            Speaker::System => system.push(message.content.as_str()),
            Speaker::User => push_blocks(&mut contents, "user", text_part(&message.content).into_iter().collect()),
            Speaker::Assistant => {
                let mut parts: Vec<Value> = text_part(&message.content).into_iter().collect();
                parts.extend(message.tool_calls.iter().map(|call| {
                    let mut part = json!({
                        "functionCall": {"id": call.id, "name": call.name, "args": arguments_object(&call.arguments)}
                    });
                    if signature {
                        part["thoughtSignature"] = Value::from(SKIP_SIGNATURE);
                    }
                    part
                }));
                push_blocks(&mut contents, "model", parts);
            }
            Speaker::Tool => {
                let id = message.tool_call_id.as_deref().unwrap_or_default();
                let name = called_name(&request.messages[..index], id);
                push_blocks(
                    &mut contents,
                    "user",
                    vec![json!({"functionResponse": {"id": id, "name": name, "response": {"result": message.content}}})],
                );
            }
        }
    }

    let mut body = Map::new();
    let system: Vec<&str> = system.into_iter().filter(|text| !text.trim().is_empty()).collect();
    if !system.is_empty() {
        body.insert("systemInstruction".into(), json!({"parts": [{"text": system.join("\n\n")}]}));
    }
    let contents: Vec<Value> = contents.into_iter().map(|(role, parts)| json!({"role": role, "parts": parts})).collect();
    body.insert("contents".into(), Value::Array(contents));
    let mut generation = Map::new();
    generation.insert("temperature".into(), http::float_value(request.sampling.temperature));
    generation.insert("maxOutputTokens".into(), Value::from(request.sampling.max_tokens));
    if let Some(seed) = request.sampling.seed {
        generation.insert("seed".into(), Value::from(seed & 0x7fff_ffff));
    }
    match &request.output {
        OutputFormat::Text => {}
        OutputFormat::ToolCall => {
            let declarations: Vec<Value> = request
                .tools
                .iter()
                .map(|tool| json!({"name": tool.name, "description": tool.description, "parametersJsonSchema": tool.parameters}))
                .collect();
            body.insert("tools".into(), json!([{"functionDeclarations": declarations}]));
            body.insert("toolConfig".into(), json!({"functionCallingConfig": {"mode": "ANY"}}));
        }
        OutputFormat::JsonSchema(schema) => {
            generation.insert("responseMimeType".into(), Value::from("application/json"));
            generation.insert("responseJsonSchema".into(), schema.clone());
        }
    }
    body.insert("generationConfig".into(), Value::Object(generation));
    Value::Object(body)
}

fn text_part(text: &str) -> Option<Value> {
    (!text.is_empty()).then(|| json!({"text": text}))
}

/// The name of the tool an earlier assistant message called with this id (the latest such
/// call wins), or "" when none did.
fn called_name<'m>(earlier: &'m [Message], id: &str) -> &'m str {
    earlier
        .iter()
        .rev()
        .flat_map(|message| message.tool_calls.iter().rev())
        .find(|call| call.id == id)
        .map(|call| call.name.as_str())
        .unwrap_or_default()
}

/// Reads a `generateContent` reply. `raw` is left for the caller (it is the body text).
pub fn parse_response(body: &Value) -> Result<ChatResponse, ModelError> {
    let Some(candidate) = body.pointer("/candidates/0") else {
        if let Some(reason) = body.pointer("/promptFeedback/blockReason").and_then(Value::as_str) {
            return Err(ModelError::new(
                ModelErrorKind::Refused,
                format!("the prompt was blocked (promptFeedback.blockReason {reason})"),
            ));
        }
        return Err(ModelError::new(ModelErrorKind::Transient, "the reply has no `candidates`"));
    };
    let response_id = body.get("responseId").and_then(Value::as_str).unwrap_or_default();
    let mut content = String::new();
    let mut reasoning = String::new();
    let mut tool_calls = Vec::new();
    let parts = candidate.pointer("/content/parts").and_then(Value::as_array);
    for (index, part) in parts.into_iter().flatten().enumerate() {
        if let Some(call) = part.get("functionCall") {
            let name = call.get("name").and_then(Value::as_str).unwrap_or_default().to_owned();
            let arguments = call.get("args").cloned().unwrap_or_else(|| Value::Object(Map::new()));
            let id = match call.get("id").and_then(Value::as_str).filter(|id| !id.is_empty()) {
                Some(id) => id.to_owned(),
                None => generated_call_id(&[response_id, &index.to_string(), &name, &arguments.to_string()]),
            };
            tool_calls.push(ToolCall { id, name, arguments });
        } else if let Some(text) = part.get("text").and_then(Value::as_str) {
            if part.get("thought").and_then(Value::as_bool) == Some(true) {
                reasoning.push_str(text);
            } else {
                content.push_str(text);
            }
        }
    }
    let wire_finish = candidate.get("finishReason").and_then(Value::as_str).unwrap_or("STOP");
    let filtered = FILTER_REASONS.contains(&wire_finish);
    let finish_reason = match wire_finish {
        "STOP" if !tool_calls.is_empty() => FinishReason::ToolCalls,
        "STOP" => FinishReason::Stop,
        "MAX_TOKENS" => FinishReason::Length,
        _ if filtered => FinishReason::ContentFilter,
        _ => FinishReason::Other,
    };
    let usage = body.get("usageMetadata").map(|usage| {
        let count = |key: &str| usage.get(key).and_then(Value::as_u64).unwrap_or(0);
        // Thinking tokens are billed as output: they count as completion tokens here.
        Usage { prompt_tokens: count("promptTokenCount"), completion_tokens: count("candidatesTokenCount") + count("thoughtsTokenCount") }
    });
    let response = ChatResponse {
        content,
        reasoning: (!reasoning.is_empty()).then_some(reasoning),
        tool_calls,
        finish_reason,
        usage: usage.unwrap_or_default(),
        raw: None,
    };
    apply_filter(response, filtered, &format!("the reply was blocked (finishReason {wire_finish})"))
}

/// Classifies a non-2xx reply (`{error: {code, message, status, details}}`). The status
/// name decides where it is clear (`RESOURCE_EXHAUSTED` is `RateLimited`; `UNAVAILABLE`,
/// `INTERNAL` and `DEADLINE_EXCEEDED` are `Transient`); a `RetryInfo.retryDelay` in the details
/// is used when no `Retry-After` header came.
pub fn classify_error(status: u16, retry_after_header: Option<&str>, body: &str) -> ModelError {
    let value: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    let message = http::body_message(body);
    // Gemini answers a bad key with 400 INVALID_ARGUMENT "API key not valid".
    let hint = if matches!(status, 401 | 403) || (status == 400 && message.contains("API key")) {
        " (check GEMINI_API_KEY)"
    } else if status == 404 {
        " (check the model name and the base URL)"
    } else {
        ""
    };
    let mut error = http::status_error(status, retry_after_header, body, hint);
    match value.pointer("/error/status").and_then(Value::as_str) {
        Some("RESOURCE_EXHAUSTED") => error.kind = ModelErrorKind::RateLimited,
        Some("UNAVAILABLE" | "INTERNAL" | "DEADLINE_EXCEEDED") => error.kind = ModelErrorKind::Transient,
        _ => {}
    }
    if error.retry_after.is_none() {
        error.retry_after = value
            .pointer("/error/details")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .find_map(|detail| detail.get("retryDelay").and_then(Value::as_str))
            .and_then(parse_duration);
    }
    error
}

/// A protobuf JSON duration: `34s`, `1.5s`.
fn parse_duration(text: &str) -> Option<Duration> {
    let seconds: f64 = text.trim().strip_suffix('s')?.parse().ok()?;
    (seconds.is_finite() && seconds >= 0.0).then(|| Duration::from_secs_f64(seconds))
}
