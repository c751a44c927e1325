//! Provider-neutral chat types: what the engine asks of a model and what it gets back.
//!
//! Only `model::<provider>` modules translate these to and from a wire format. Everything
//! here serialises to JSON so that the store can keep the exact request the engine made.

use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A message's text, shared rather than copied: a trial's conversation goes into every request
/// it makes, hundreds of trials wait on replies at once, and every trial of a scenario opens
/// with the same system prompt. Reads as a `&str`.
#[derive(Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Text(Arc<str>);

impl Text {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Deref for Text {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for Text {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&*self.0, f)
    }
}

impl From<String> for Text {
    fn from(text: String) -> Text {
        Text(Arc::from(text))
    }
}

impl From<&str> for Text {
    fn from(text: &str) -> Text {
        Text(Arc::from(text))
    }
}

impl From<&String> for Text {
    fn from(text: &String) -> Text {
        Text(Arc::from(text.as_str()))
    }
}

impl PartialEq<str> for Text {
    fn eq(&self, other: &str) -> bool {
        &*self.0 == other
    }
}

impl PartialEq<&str> for Text {
    fn eq(&self, other: &&str) -> bool {
        &*self.0 == *other
    }
}

impl PartialEq<String> for Text {
    fn eq(&self, other: &String) -> bool {
        *self.0 == **other
    }
}

/// Who said a message in a conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Speaker {
    System,
    User,
    Assistant,
    /// The result of a tool call, answering the assistant's `tool_calls` by id.
    Tool,
}

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub speaker: Speaker,
    #[serde(default)]
    pub content: Text,
    /// Tool calls made by an assistant message (native tool protocol only); shared, like
    /// the text, by every request that repeats the message.
    #[serde(default, skip_serializing_if = "<[_]>::is_empty")]
    pub tool_calls: Arc<[ToolCall]>,
    /// For `Speaker::Tool`: the id of the call this message answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<Text>,
}

impl Message {
    pub fn system(content: impl Into<Text>) -> Self {
        Self::text(Speaker::System, content)
    }
    pub fn user(content: impl Into<Text>) -> Self {
        Self::text(Speaker::User, content)
    }
    pub fn assistant(content: impl Into<Text>) -> Self {
        Self::text(Speaker::Assistant, content)
    }
    pub fn tool_result(call_id: impl Into<Text>, content: impl Into<Text>) -> Self {
        Message {
            speaker: Speaker::Tool,
            content: content.into(),
            tool_calls: Arc::default(),
            tool_call_id: Some(call_id.into()),
        }
    }
    fn text(speaker: Speaker, content: impl Into<Text>) -> Self {
        Message { speaker, content: content.into(), tool_calls: Arc::default(), tool_call_id: None }
    }
}

/// A tool the model may call: name, description and a JSON Schema for its arguments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolSpec {
    pub name: String,
    pub description: String,
    pub parameters: Value,
}

/// A tool call as a model produced it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    /// The arguments as the model wrote them; usually an object, but kept as any JSON value
    /// so that a malformed call can be recorded and reported instead of dropped.
    pub arguments: Value,
}

/// How the model must answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "schema")]
pub enum OutputFormat {
    /// Free text.
    Text,
    /// A JSON document matching this schema, as message content.
    JsonSchema(Value),
    /// Exactly one native call of one of the request's tools.
    ToolCall,
}

/// Sampling settings. Part of the request because they change the answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sampling {
    pub temperature: f32,
    pub max_tokens: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
}

impl Default for Sampling {
    fn default() -> Self {
        // The Toxic Proactivity reference samples agent and environment at 0.7.
        Sampling { temperature: 0.7, max_tokens: 1024, seed: None }
    }
}

/// Everything a provider needs for one completion.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatRequest {
    pub messages: Vec<Message>,
    /// The tools of the action space. Adapters put them on the wire only when `output` is
    /// `ToolCall`; with `JsonSchema` they are context (the schema already names them).
    /// Shared: every call of every trial of a scenario sends the same list.
    #[serde(default, skip_serializing_if = "<[_]>::is_empty")]
    pub tools: std::sync::Arc<[ToolSpec]>,
    pub output: OutputFormat,
    pub sampling: Sampling,
}

/// Token counts reported by the provider (or counted locally).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

impl std::ops::AddAssign for Usage {
    fn add_assign(&mut self, other: Usage) {
        self.prompt_tokens += other.prompt_tokens;
        self.completion_tokens += other.completion_tokens;
    }
}

/// Why generation stopped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    #[default]
    Stop,
    Length,
    ToolCalls,
    ContentFilter,
    Other,
}

/// A provider's answer, normalised.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChatResponse {
    #[serde(default)]
    pub content: String,
    /// Reasoning text the provider returned separately from the content, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    #[serde(default)]
    pub finish_reason: FinishReason,
    #[serde(default)]
    pub usage: Usage,
    /// The provider's exact reply (wire JSON, or the generated text for in-process models),
    /// kept for audits and for diffing providers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw: Option<String>,
}
