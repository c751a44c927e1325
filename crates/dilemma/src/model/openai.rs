//! The OpenAI-compatible provider, `openai:MODEL[@BASE_URL]`: `POST {base}/chat/completions`.
//!
//! One dialect covers OpenAI itself and the servers that copy it (vLLM, SGLang, Ollama's
//! `/v1`, llama.cpp server, OpenRouter), which is how the harness reaches models it hosts.
//! Those servers differ in small ways, and the parser accepts all of them: `arguments` as a
//! JSON string or an object, tool calls without an `id` (one is derived from the reply),
//! content as a string or a list of text parts, reasoning as `reasoning_content` (vLLM,
//! DeepSeek) or `reasoning` (OpenRouter, newer vLLM).
//!
//! Wire choices, so that they are made once:
//! - `OutputFormat::ToolCall` sends `tools` and `tool_choice: "required"`; `JsonSchema` sends
//!   `response_format: {type: json_schema, json_schema: {name: answer, schema, strict: false}}`
//!   (not strict: strict mode rejects schemas without `additionalProperties: false` everywhere),
//!   or what the spec's `#json=` mode asks for instead ([`JsonMode`]); `Text` sends neither.
//!   Tools are only put on the wire for `ToolCall`.
//! - A server that rejects `response_format` (llama-cpp-python answers `json_schema` with a
//!   500) gets a `Fatal` error that names the `#json=` option, instead of pointless retries.
//! - The length limit goes as `max_tokens`, which vLLM, SGLang, Ollama and llama.cpp server
//!   all read. OpenAI's own reasoning models want `max_completion_tokens` instead and answer
//!   `max_tokens` with a 400, which is reported as a `Fatal` error naming the parameter.
//! - `seed` is sent when the request has one.
//! - Without `OPENAI_API_KEY` no `Authorization` header is sent (local servers need none).
//! - A reply whose finish reason is `stop` but which carries tool calls (Ollama does this) is
//!   normalised to `ToolCalls`.

use std::fmt;

use serde_json::{Map, Value};

use crate::chat::{ChatRequest, ChatResponse, FinishReason, OutputFormat, Speaker, ToolCall, Usage};
use crate::model::http::{
    self, ApiKey, Auth, Endpoint, JsonMode, Provider, apply_filter, arguments_text, float_value, generated_call_id,
    parse_arguments_text,
};
use crate::model::{BoxFuture, CallContext, ChatModel, ModelError, ModelErrorKind};

/// OpenAI's own API, used when neither the spec nor `OPENAI_BASE_URL` names another server.
pub const DEFAULT_BASE_URL: &str = "https://api.openai.com/v1";

/// A model behind an OpenAI-compatible chat completions endpoint.
pub struct OpenAiModel {
    endpoint: Endpoint,
    model: String,
    json_mode: JsonMode,
    tool_choice_auto: bool,
}

impl fmt::Debug for OpenAiModel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenAiModel")
            .field("model", &self.model)
            .field("json_mode", &self.json_mode)
            .field("endpoint", &self.endpoint)
            .finish()
    }
}

impl OpenAiModel {
    /// `base_url` defaults to [`DEFAULT_BASE_URL`]; `api_key` may be `None` for local servers.
    pub fn new(model: &str, base_url: Option<&str>, api_key: Option<ApiKey>) -> Result<Self, String> {
        let base_url = http::check_base_url(base_url.unwrap_or(DEFAULT_BASE_URL))?;
        let id = http::model_id(Provider::OpenAi, model, &base_url, DEFAULT_BASE_URL);
        Ok(OpenAiModel { endpoint: Endpoint::new(id, &base_url, api_key)?, model: model.to_owned(), json_mode: JsonMode::Schema, tool_choice_auto: false })
    }

    /// Asks for JSON answers the given way and tool calls with `tool_choice: "auto"` instead of
    /// `"required"`. Options other than the defaults become part of the model id
    /// (`…#json=object,tool_choice=auto`), so cached answers of one wire shape never stand in
    /// for another's.
    pub fn with_wire_options(mut self, json_mode: JsonMode, tool_choice_auto: bool) -> Self {
        let base = self.endpoint.id.split('#').next().unwrap_or_default().to_owned();
        let mut options = Vec::new();
        if json_mode != JsonMode::Schema {
            options.push(format!("json={}", json_mode.name()));
        }
        if tool_choice_auto {
            options.push("tool_choice=auto".to_owned());
        }
        self.endpoint.id = if options.is_empty() { base } else { format!("{base}#{}", options.join(",")) };
        self.json_mode = json_mode;
        self.tool_choice_auto = tool_choice_auto;
        self
    }

    /// The URL requests go to.
    pub fn url(&self) -> String {
        format!("{}/chat/completions", self.endpoint.base_url)
    }
}

impl ChatModel for OpenAiModel {
    fn id(&self) -> &str {
        &self.endpoint.id
    }

    fn chat<'a>(&'a self, request: &'a ChatRequest, _context: &'a CallContext) -> BoxFuture<'a, Result<ChatResponse, ModelError>> {
        Box::pin(async move {
            let body = request_bytes(request, &self.model, self.json_mode, self.tool_choice_auto)
                .map_err(|error| ModelError::fatal(format!("cannot encode the request for {}: {error}", self.endpoint.id)))?;
            let reply = self.endpoint.post_bytes(&self.url(), Auth::Bearer, &[], body).await?;
            self.endpoint.finish(reply, classify_error, parse_response)
        })
    }
}

/// The exact JSON body of a chat completions request, with the default JSON mode.
pub fn request_body(request: &ChatRequest, model: &str) -> Value {
    request_body_with(request, model, JsonMode::Schema)
}

/// The exact JSON body of a chat completions request: [`request_bytes`], as a value.
pub fn request_body_with(request: &ChatRequest, model: &str, json_mode: JsonMode) -> Value {
    request_bytes(request, model, json_mode, false)
        .and_then(|bytes| serde_json::from_slice(&bytes))
        .unwrap_or(Value::Null)
}

/// The exact bytes of a chat completions request body (with `tool_choice: "auto"` instead of
/// `"required"` when asked), written straight from borrowed parts: with hundreds of calls in
/// flight, building a `Value` tree of every conversation and tool schema per call costs more
/// than the HTTP exchange.
///
/// An assistant turn that only calls tools carries `content: ""`: OpenAI, vLLM and Ollama take
/// it (as they take `null`), while llama-cpp-python rejects `null` (its type is "a string, if
/// present") and its function-calling template fails on a missing key. So the empty string is
/// the one form every server accepts.
pub fn request_bytes(request: &ChatRequest, model: &str, json_mode: JsonMode, tool_choice_auto: bool) -> serde_json::Result<Vec<u8>> {
    use serde::Serialize;

    #[derive(Serialize)]
    struct Body<'a> {
        model: &'a str,
        messages: Vec<WireMessage<'a>>,
        temperature: Value,
        max_tokens: u32,
        #[serde(skip_serializing_if = "Option::is_none")]
        seed: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        tools: Option<Vec<WireTool<'a>>>,
        #[serde(skip_serializing_if = "Option::is_none")]
        tool_choice: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        response_format: Option<ResponseFormat<'a>>,
    }
    #[derive(Serialize)]
    struct WireMessage<'a> {
        role: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        tool_call_id: Option<&'a str>,
        content: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        tool_calls: Option<Vec<WireCall<'a>>>,
    }
    #[derive(Serialize)]
    struct WireCall<'a> {
        id: &'a str,
        r#type: &'a str,
        function: WireFunction<'a>,
    }
    #[derive(Serialize)]
    struct WireFunction<'a> {
        name: &'a str,
        arguments: String,
    }
    #[derive(Serialize)]
    struct WireTool<'a> {
        r#type: &'a str,
        function: WireToolFunction<'a>,
    }
    #[derive(Serialize)]
    struct WireToolFunction<'a> {
        name: &'a str,
        description: &'a str,
        parameters: &'a Value,
    }
    #[derive(Serialize)]
    #[serde(untagged)]
    enum ResponseFormat<'a> {
        Schema { r#type: &'a str, json_schema: NamedSchema<'a> },
        Object { r#type: &'a str, schema: &'a Value },
    }
    #[derive(Serialize)]
    struct NamedSchema<'a> {
        name: &'a str,
        schema: &'a Value,
        strict: bool,
    }

    let messages = request
        .messages
        .iter()
        .map(|message| {
            let role = match message.speaker {
                Speaker::System => "system",
                Speaker::User => "user",
                Speaker::Assistant => "assistant",
                Speaker::Tool => "tool",
            };
            let tool_calls = (message.speaker == Speaker::Assistant && !message.tool_calls.is_empty()).then(|| {
                message
                    .tool_calls
                    .iter()
                    .map(|call| WireCall {
                        id: &call.id,
                        r#type: "function",
                        function: WireFunction { name: &call.name, arguments: arguments_text(&call.arguments) },
                    })
                    .collect()
            });
            let tool_call_id = (message.speaker == Speaker::Tool).then(|| message.tool_call_id.as_deref().unwrap_or_default());
            WireMessage { role, tool_call_id, content: &message.content, tool_calls }
        })
        .collect();
    let (mut tools, mut tool_choice, mut response_format) = (None, None, None);
    match &request.output {
        OutputFormat::Text => {}
        OutputFormat::ToolCall => {
            tools = Some(
                request
                    .tools
                    .iter()
                    .map(|tool| WireTool {
                        r#type: "function",
                        function: WireToolFunction { name: &tool.name, description: &tool.description, parameters: &tool.parameters },
                    })
                    .collect(),
            );
            tool_choice = Some(if tool_choice_auto { "auto" } else { "required" });
        }
        OutputFormat::JsonSchema(schema) => {
            response_format = match json_mode {
                JsonMode::Schema => Some(ResponseFormat::Schema {
                    r#type: "json_schema",
                    json_schema: NamedSchema { name: "answer", schema, strict: false },
                }),
                JsonMode::Object => Some(ResponseFormat::Object { r#type: "json_object", schema }),
                JsonMode::None => None,
            };
        }
    }
    http::json_body(&Body {
        model,
        messages,
        temperature: float_value(request.sampling.temperature),
        max_tokens: request.sampling.max_tokens,
        seed: request.sampling.seed,
        tools,
        tool_choice,
        response_format,
    })
}

/// Reads a chat completions reply. `raw` is left for the caller (it is the body text).
pub fn parse_response(body: &Value) -> Result<ChatResponse, ModelError> {
    let Some(choice) = body.pointer("/choices/0") else {
        // OpenRouter and some proxies answer 200 with an error object when the upstream failed.
        let message = match body.get("error") {
            Some(_) => format!("the reply carries an error instead of choices: {}", http::body_message(&body.to_string())),
            None => "the reply has no `choices`".to_owned(),
        };
        return Err(ModelError::new(ModelErrorKind::Transient, message));
    };
    let message = choice.get("message").unwrap_or(&Value::Null);
    let response_id = body.get("id").and_then(Value::as_str).unwrap_or_default();

    let mut tool_calls: Vec<ToolCall> = message
        .get("tool_calls")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
        .map(|(index, call)| {
            let function = call.get("function").unwrap_or(&Value::Null);
            wire_tool_call(call.get("id"), function, response_id, index)
        })
        .collect();
    if tool_calls.is_empty()
        && let Some(function) = message.get("function_call").filter(|function| function.is_object())
    {
        // The pre-tools `function_call` shape, still sent by some older servers.
        tool_calls.push(wire_tool_call(None, function, response_id, 0));
    }

    let wire_finish = choice.get("finish_reason").and_then(Value::as_str).unwrap_or("stop");
    let finish_reason = match wire_finish {
        "stop" | "eos" if !tool_calls.is_empty() => FinishReason::ToolCalls,
        "stop" | "eos" => FinishReason::Stop,
        "length" => FinishReason::Length,
        "tool_calls" | "function_call" => FinishReason::ToolCalls,
        "content_filter" => FinishReason::ContentFilter,
        _ => FinishReason::Other,
    };
    let refusal = message.get("refusal").and_then(Value::as_str).map(str::trim).filter(|text| !text.is_empty());
    let reasoning = ["reasoning_content", "reasoning"]
        .iter()
        .find_map(|key| message.get(*key).and_then(Value::as_str).filter(|text| !text.is_empty()))
        .map(str::to_owned);
    let usage = body.get("usage").map(|usage| Usage {
        prompt_tokens: usage.get("prompt_tokens").and_then(Value::as_u64).unwrap_or(0),
        completion_tokens: usage.get("completion_tokens").and_then(Value::as_u64).unwrap_or(0),
    });
    let response = ChatResponse {
        content: content_text(message.get("content")),
        reasoning,
        tool_calls,
        finish_reason,
        usage: usage.unwrap_or_default(),
        raw: None,
    };
    let why = match refusal {
        Some(text) => format!("the model refused: {text}"),
        None => "the provider's content filter blocked the reply (finish_reason content_filter)".to_owned(),
    };
    apply_filter(response, refusal.is_some() || wire_finish == "content_filter", &why)
}

/// Whether an error body says the `response_format` was the problem: a validation error
/// that names it (llama-cpp-python: `"loc": ["body", "response_format", "type"]`, "Input
/// should be 'text' or 'json_object'"; others: "response_format … not supported").
fn rejects_response_format(body: &str) -> bool {
    let lower = body.to_ascii_lowercase();
    lower.contains("response_format") || lower.contains("json_schema")
}

fn wire_tool_call(id: Option<&Value>, function: &Value, response_id: &str, index: usize) -> ToolCall {
    let name = function.get("name").and_then(Value::as_str).unwrap_or_default().to_owned();
    let arguments = match function.get("arguments") {
        Some(Value::String(text)) => parse_arguments_text(text),
        Some(Value::Null) | None => Value::Object(Map::new()),
        Some(other) => other.clone(),
    };
    let id = match id.and_then(Value::as_str).filter(|id| !id.is_empty()) {
        Some(id) => id.to_owned(),
        None => generated_call_id(&[response_id, &index.to_string(), &name, &arguments.to_string()]),
    };
    ToolCall { id, name, arguments }
}

/// Message content as text: a string, or the text parts of a list of parts, or nothing.
fn content_text(content: Option<&Value>) -> String {
    match content {
        Some(Value::String(text)) => text.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|part| part.as_str().or_else(|| part.get("text").and_then(Value::as_str)))
            .collect(),
        _ => String::new(),
    }
}

/// Classifies a non-2xx reply. On top of the shared status rules: `insufficient_quota` (a
/// 429 that no waiting fixes) is `Fatal`, and a content-policy error is `Refused`.
pub fn classify_error(status: u16, retry_after_header: Option<&str>, body: &str) -> ModelError {
    let hint = match status {
        401 | 403 => " (check OPENAI_API_KEY)",
        404 => " (check the model name and the base URL)",
        _ => "",
    };
    let mut error = http::status_error(status, retry_after_header, body, hint);
    if matches!(status, 400 | 422 | 500) && rejects_response_format(body) {
        // Retrying cannot help: the server does not take this request shape at all.
        error.kind = ModelErrorKind::Fatal;
        error.retry_after = None;
        error.message.push_str(
            " (this server does not accept the `response_format` sent; add #json=object or #json=none \
             to the model spec, e.g. openai:MODEL@URL#json=object)",
        );
        return error;
    }
    let value: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    let code = value.pointer("/error/code").and_then(Value::as_str).unwrap_or_default();
    let kind = value.pointer("/error/type").and_then(Value::as_str).unwrap_or_default();
    if code == "insufficient_quota" || kind == "insufficient_quota" {
        error.kind = ModelErrorKind::Fatal;
        error.retry_after = None;
    } else if ["content_filter", "content_policy_violation"].iter().any(|name| code == *name || kind == *name) {
        error.kind = ModelErrorKind::Refused;
    }
    error
}
