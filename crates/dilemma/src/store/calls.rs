//! How a model call's request is stored without repeating what the store already holds.
//!
//! A trial's agent sends its whole conversation on every call, so storing each request as
//! it went out grows with the square of the turns, and every epoch of a scenario repeats the
//! same system prompt, opening and tool list. A request is stored instead as:
//!
//! - `inherited_messages`: how many leading messages equal those of the same trial's previous
//!   call in the same role (a common prefix, checked message by message, so a re-ask that
//!   sent other messages simply inherits fewer);
//! - the rest of the request as JSON, where a long message content, the tool list and a
//!   long output format (a JSON schema) are replaced by the hash of a row in `texts`, which
//!   holds each distinct text once.
//!
//! Reading walks a trial's calls in order and rebuilds every request exactly (tested in
//! `tests/it/run.rs` by comparing the stored transcript with the one the trial returned).

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use serde::Serialize;

use crate::chat::{ChatRequest, Message, OutputFormat, Sampling, Speaker, Text, ToolCall};
use crate::store::StoreError;

/// Stored requests: 1 is the ChatRequest as JSON (stores written before migration 004).
pub(super) const FORMAT_FULL: i64 = 1;
/// The form this module writes.
pub(super) const FORMAT_COMPACT: i64 = 2;

/// Contents at least this long are stored once in `texts`; shorter ones cost less inline
/// than a 32-character reference.
const SHARED_TEXT_MIN: usize = 96;

/// A 128-bit content hash: collisions are out of reach for any store's size.
pub(super) type Digest128 = [u8; 16];

pub(super) fn digest(bytes: &[u8]) -> Digest128 {
    let full = Sha256::digest(bytes);
    let mut short = [0u8; 16];
    short.copy_from_slice(&full[..16]);
    short
}

/// A request as stored, borrowing from the request: written directly, so that storing a
/// call never copies the conversation it inherits.
#[derive(Serialize)]
struct StoredRequest<'a> {
    messages: Vec<StoredMessage<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tools_text: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    output: Option<&'a OutputFormat>,
    #[serde(skip_serializing_if = "Option::is_none")]
    output_text: Option<&'a str>,
    sampling: &'a Sampling,
}

#[derive(Serialize)]
struct StoredMessage<'a> {
    speaker: &'a Speaker,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content_text: Option<String>,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    tool_calls: &'a [ToolCall],
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_call_id: &'a Option<Text>,
}

/// The stored JSON of `request` without its first `inherited` messages. `share` stores a
/// text in `texts` (if it is not there) and returns its reference; `tools` and `output` are
/// the references of the request's tool list and output format when they are shared (the
/// caller keeps them per scenario, so they are serialised and hashed once, not per call).
pub(super) fn encode_request(
    request: &ChatRequest,
    inherited: usize,
    tools: Option<&str>,
    output: Option<&str>,
    mut share: impl FnMut(&str) -> Result<String, StoreError>,
) -> Result<String, StoreError> {
    // Destructured in full, so that a new field of `ChatRequest` cannot be left out here.
    let ChatRequest { messages, tools: _, output: output_format, sampling } = request;
    let mut stored = Vec::with_capacity(messages.len().saturating_sub(inherited));
    for message in messages.iter().skip(inherited) {
        let Message { speaker, content, tool_calls, tool_call_id } = message;
        let shared = content.len() >= SHARED_TEXT_MIN;
        stored.push(StoredMessage {
            speaker,
            content: (!shared).then_some(content.as_str()),
            content_text: if shared { Some(share(content)?) } else { None },
            tool_calls,
            tool_call_id,
        });
    }
    let view = StoredRequest {
        messages: stored,
        tools_text: tools,
        output: if output.is_none() { Some(output_format) } else { None },
        output_text: output,
        sampling,
    };
    Ok(serde_json::to_string(&view)?)
}

/// The text a tool list or an output format is shared as, when it is long enough to be.
pub(super) fn shared_form<T: Serialize + ?Sized>(value: &T) -> Result<Option<String>, StoreError> {
    let text = serde_json::to_string(value)?;
    Ok((text.len() >= SHARED_TEXT_MIN).then_some(text))
}

/// Rebuilds a request stored by [`encode_request`]: `previous` is the full message list of
/// the same trial's previous call in the same role; `text` looks a shared text up.
pub(super) fn decode_request(
    stored: &str,
    format: i64,
    inherited: usize,
    previous: &[Message],
    mut text: impl FnMut(&str) -> Result<String, StoreError>,
) -> Result<ChatRequest, StoreError> {
    if format == FORMAT_FULL {
        return Ok(serde_json::from_str(stored)?);
    }
    let mut stored: Map<String, Value> = serde_json::from_str(stored)?;
    let mut messages: Vec<Value> = previous
        .iter()
        .take(inherited)
        .map(serde_json::to_value)
        .collect::<Result<_, _>>()?;
    if let Some(Value::Array(new)) = stored.remove("messages") {
        for message in new {
            let Value::Object(mut fields) = message else { continue };
            if let Some(Value::String(reference)) = fields.remove("content_text") {
                fields.insert("content".into(), Value::String(text(&reference)?));
            }
            messages.push(Value::Object(fields));
        }
    }
    stored.insert("messages".into(), Value::Array(messages));
    if let Some(Value::String(reference)) = stored.remove("tools_text") {
        stored.insert("tools".into(), serde_json::from_str(&text(&reference)?)?);
    }
    if let Some(Value::String(reference)) = stored.remove("output_text") {
        stored.insert("output".into(), serde_json::from_str(&text(&reference)?)?);
    }
    Ok(serde_json::from_value(Value::Object(stored))?)
}
