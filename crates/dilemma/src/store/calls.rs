//! How a model call's request is stored without repeating what the store already holds.
//!
//! A trial's agent sends its whole conversation on every call, so storing each request as
//! it went out grows with the square of the turns, and every epoch of a scenario repeats the
//! same system prompt, opening and tool list. A request is stored instead as:
//!
//! - `inherited_messages`: how many leading messages equal those of the same trial's previous
//!   call in the same role (a common prefix, checked message by message, so a re-ask that
//!   sent other messages simply inherits fewer);
//! - the rest of the request as JSON, where a long message content and the tool list are
//!   replaced by the hash of a row in `texts`, which holds each distinct text once.
//!
//! Reading walks a trial's calls in order and rebuilds every request exactly (tested in
//! `tests/it/run.rs` by comparing the stored transcript with the one the trial returned).

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::chat::{ChatRequest, Message};
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

/// The digest of each message, to find the prefix a call shares with the previous one.
pub(super) fn message_digests(messages: &[Message]) -> Vec<Digest128> {
    messages.iter().map(|message| digest(&serde_json::to_vec(message).unwrap_or_default())).collect()
}

/// How many leading messages two calls share.
pub(super) fn common_prefix(previous: &[Digest128], current: &[Digest128]) -> usize {
    previous.iter().zip(current).take_while(|(left, right)| left == right).count()
}

/// The stored JSON of `request` without its first `inherited` messages. `share` stores a
/// text in `texts` (if it is not there) and returns its reference.
pub(super) fn encode_request(
    request: &ChatRequest,
    inherited: usize,
    mut share: impl FnMut(&str) -> Result<String, StoreError>,
) -> Result<String, StoreError> {
    let Value::Object(mut stored) = serde_json::to_value(request)? else {
        return Ok(serde_json::to_string(request)?);
    };
    let mut messages = Vec::with_capacity(request.messages.len().saturating_sub(inherited));
    for message in request.messages.iter().skip(inherited) {
        let Value::Object(mut fields) = serde_json::to_value(message)? else { continue };
        if message.content.len() >= SHARED_TEXT_MIN {
            fields.remove("content");
            fields.insert("content_text".into(), Value::String(share(&message.content)?));
        }
        messages.push(Value::Object(fields));
    }
    stored.insert("messages".into(), Value::Array(messages));
    if let Some(tools) = stored.remove("tools") {
        stored.insert("tools_text".into(), Value::String(share(&tools.to_string())?));
    }
    Ok(Value::Object(stored).to_string())
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
    Ok(serde_json::from_value(Value::Object(stored))?)
}
