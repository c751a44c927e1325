//! What the mock answers: a deterministic chat completion for a request body.
//!
//! No randomness: the same request (and, for the `cycle` policy, the same position in the
//! request sequence) always gets the same reply, so a test can predict it. When tools are
//! offered the mock calls one of them with the smallest arguments its schema allows; when a
//! `json_schema` response format is given it writes a document valid against the schema
//! (picking one branch of each `anyOf`, as the agent's `{reasoning, tool_choice}` answer
//! needs); otherwise it writes a short text.
//!
//! A [`ScriptStep`] list makes the answers follow a conversation's progress instead: the
//! request whose messages already hold `k` assistant turns gets step `k` (the last step
//! repeats), so "six tool calls, then a terminal one" or "then a plain text answer" can be
//! expressed whatever the client's concurrency.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

/// How the mock picks among offered tools (and among `anyOf` branches of a schema).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Policy {
    /// Always the first.
    First,
    /// Always the last.
    Last,
    /// The request's position in the sequence of chat requests, modulo the count.
    Cycle,
    /// A hash of the request's messages, modulo the count: the same conversation always
    /// gets the same choice.
    #[default]
    Hash,
}

impl std::str::FromStr for Policy {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "first" => Ok(Policy::First),
            "last" => Ok(Policy::Last),
            "cycle" => Ok(Policy::Cycle),
            "hash" => Ok(Policy::Hash),
            other => Err(format!("unknown policy `{other}`; use first, last, cycle or hash")),
        }
    }
}

/// One answer of a script: call the offered tool at this 1-based position (and pick the
/// branch at that position of a schema's `anyOf`), or answer with plain text even when
/// tools are offered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScriptStep {
    Tool(usize),
    Text,
}

impl std::str::FromStr for ScriptStep {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        if text == "text" {
            return Ok(ScriptStep::Text);
        }
        match text.parse::<usize>() {
            Ok(position) if position >= 1 => Ok(ScriptStep::Tool(position)),
            _ => Err(format!("unknown script step `{text}`; use a 1-based tool position or `text`")),
        }
    }
}

/// The parts of a chat request the mock reads, borrowed from the body.
///
/// The messages stay unparsed text: the mock hashes them (see [`messages_digest`]) and counts
/// the assistant turns among them, and building them into a `Value` tree was most of its
/// CPU per call. It shares the cores with the client it serves, so that cost lands in the
/// client's benchmark.
#[derive(Debug, Deserialize)]
pub struct ChatRequest<'a> {
    #[serde(default, borrow)]
    pub model: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub messages: Option<&'a RawValue>,
    #[serde(default, borrow)]
    pub tools: Option<&'a RawValue>,
    #[serde(default)]
    pub tool_choice: Option<Value>,
    #[serde(default)]
    pub response_format: Option<Value>,
}

impl<'a> ChatRequest<'a> {
    /// Reads a request body; `None` when it is not a JSON object with the fields above.
    pub fn parse(body: &'a [u8]) -> Option<Self> {
        // A derived struct also accepts a JSON array of its fields in order; a request is an
        // object.
        if body.iter().find(|byte| !byte.is_ascii_whitespace()) != Some(&b'{') {
            return None;
        }
        serde_json::from_slice(body).ok()
    }

    /// The assistant messages the request carries (messages that are not objects with a
    /// string `role` do not count).
    pub fn assistant_turns(&self) -> usize {
        #[derive(Deserialize)]
        struct Role<'a> {
            #[serde(borrow)]
            role: Option<Cow<'a, str>>,
        }
        let Some(messages) = self.messages.and_then(|raw| serde_json::from_str::<Vec<&RawValue>>(raw.get()).ok()) else {
            return 0;
        };
        messages
            .iter()
            .filter(|message| {
                serde_json::from_str::<Role>(message.get()).ok().and_then(|message| message.role).as_deref() == Some("assistant")
            })
            .count()
    }
}

/// The SHA-256 of the request's messages as `serde_json` writes them compactly (keys in the
/// order sent; `null` without messages), and that text's length in bytes.
///
/// The text is streamed into the digest instead of being built: the same bytes that parsing
/// the messages into a `Value` and printing it would give, without the tree or the string.
pub fn messages_digest(messages: Option<&RawValue>) -> ([u8; 32], usize) {
    struct Digesting {
        hasher: Sha256,
        written: usize,
    }
    impl std::io::Write for Digesting {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.hasher.update(bytes);
            self.written += bytes.len();
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut sink = Digesting { hasher: Sha256::new(), written: 0 };
    // Neither can fail: the sink never refuses bytes and a `RawValue` is valid JSON.
    let _ = match messages {
        Some(raw) => serde_transcode::transcode(
            &mut serde_json::Deserializer::from_str(raw.get()),
            &mut serde_json::Serializer::new(&mut sink),
        )
        .map_err(drop),
        None => std::io::Write::write_all(&mut sink, b"null").map_err(drop),
    };
    (sink.hasher.finalize().into(), sink.written)
}

/// The script step for a request: the one at the number of assistant messages it carries,
/// the last one past the end; `None` without a script.
pub fn script_step(request: &ChatRequest, script: &[ScriptStep]) -> Option<ScriptStep> {
    let last = script.last()?;
    Some(*script.get(request.assistant_turns()).unwrap_or(last))
}

/// Picks an index in `0..count` for this request.
#[derive(Debug, Clone, Copy)]
pub struct Chooser {
    pub policy: Policy,
    /// The request's position among chat requests (0-based).
    pub sequence: u64,
    /// A hash of the request's messages.
    pub messages_hash: u64,
}

impl Chooser {
    pub fn pick(&self, count: usize) -> usize {
        if count == 0 {
            return 0;
        }
        let count64 = count as u64;
        let index = match self.policy {
            Policy::First => 0,
            Policy::Last => count64 - 1,
            Policy::Cycle => self.sequence % count64,
            Policy::Hash => self.messages_hash % count64,
        };
        index as usize
    }
}

/// The first 16 hex digits of the SHA-256 of some bytes.
pub fn short_hash(bytes: &[u8]) -> String {
    hex::encode(&Sha256::digest(bytes)[..8])
}

/// The chat completion for a parsed request body.
pub fn chat_completion(request: &ChatRequest, policy: Policy, sequence: u64) -> Value {
    chat_completion_scripted(request, policy, sequence, &[])
}

/// The chat completion for a parsed request body, following `script` when it is not empty
/// (see [`ScriptStep`]); the policy then only matters for choices the script leaves open.
pub fn chat_completion_scripted(request: &ChatRequest, policy: Policy, sequence: u64, script: &[ScriptStep]) -> Value {
    // One digest for both the chooser's hash (its first 8 bytes, big-endian) and the tag (the
    // same bytes in hex).
    let (digest, messages_len) = messages_digest(request.messages);
    let head: [u8; 8] = digest[..8].try_into().unwrap_or_default();
    let step = script_step(request, script);
    let chooser = match step {
        // `cycle` at position p - 1 picks index p - 1 (modulo the count) of every choice.
        Some(ScriptStep::Tool(position)) => Chooser { policy: Policy::Cycle, sequence: position as u64 - 1, messages_hash: 0 },
        _ => Chooser { policy, sequence, messages_hash: u64::from_be_bytes(head) },
    };
    let model = request.model.as_deref().unwrap_or("mock");
    let tag = hex::encode(head);

    // Each tool stays unparsed until it is the one called.
    let tools: Vec<&RawValue> =
        request.tools.and_then(|raw| serde_json::from_str(raw.get()).ok()).unwrap_or_default();
    let tool_choice = request.tool_choice.as_ref();
    let forced_name = tool_choice.and_then(|choice| choice.pointer("/function/name")).and_then(Value::as_str);
    let tools_allowed = tool_choice.and_then(Value::as_str) != Some("none") && step != Some(ScriptStep::Text);
    let schema = request
        .response_format
        .as_ref()
        .filter(|format| format.get("type").and_then(Value::as_str) == Some("json_schema"))
        .and_then(|format| format.pointer("/json_schema/schema"));

    let (message, finish_reason, written) = if !tools.is_empty() && tools_allowed {
        let parse = |raw: &RawValue| serde_json::from_str::<Value>(raw.get()).unwrap_or(Value::Null);
        let tool = forced_name
            .and_then(|name| {
                tools.iter().map(|raw| parse(raw)).find(|tool| tool.pointer("/function/name").and_then(Value::as_str) == Some(name))
            })
            .unwrap_or_else(|| parse(tools[chooser.pick(tools.len())]));
        let name = tool.pointer("/function/name").and_then(Value::as_str).unwrap_or_default();
        let parameters = tool.pointer("/function/parameters").cloned().unwrap_or_else(|| json!({"type": "object"}));
        let arguments = instance(&parameters, &parameters, None, &chooser, 0).to_string();
        let call = json!({"id": format!("call_{tag}"), "type": "function", "function": {"name": name, "arguments": arguments}});
        (json!({"role": "assistant", "content": null, "tool_calls": [call]}), "tool_calls", arguments)
    } else if let Some(schema) = schema.filter(|_| step != Some(ScriptStep::Text)) {
        let document = instance(schema, schema, None, &chooser, 0).to_string();
        (json!({"role": "assistant", "content": document}), "stop", document)
    } else {
        let text = format!("Mock reply {}.", &tag[..8]);
        (json!({"role": "assistant", "content": text}), "stop", text)
    };
    // Rough counts (four characters a token), so that token accounting has something to add.
    let prompt_tokens = messages_len as u64 / 4 + 1;
    let completion_tokens = written.len() as u64 / 4 + 1;
    json!({
        "id": format!("chatcmpl-mock-{tag}"),
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens},
    })
}

/// How deep `$ref`s and nesting are followed before giving up (a recursive schema).
const MAX_DEPTH: usize = 32;

/// A small JSON value valid against a (practical subset of) JSON Schema: required properties
/// only, `const`, the first `enum` value, one `anyOf`/`oneOf` branch picked by the chooser,
/// local `$ref`s, minimums and minimum lengths. `name` is the property the value is for.
pub fn instance(schema: &Value, root: &Value, name: Option<&str>, chooser: &Chooser, depth: usize) -> Value {
    if depth > MAX_DEPTH {
        return Value::Null;
    }
    let Some(schema) = schema.as_object() else {
        // `true` or `{}`-like schemas accept anything.
        return Value::Null;
    };
    if let Some(reference) = schema.get("$ref").and_then(Value::as_str) {
        let target = reference.strip_prefix('#').and_then(|pointer| root.pointer(pointer)).unwrap_or(&Value::Null);
        return instance(target, root, name, chooser, depth + 1);
    }
    if let Some(constant) = schema.get("const") {
        return constant.clone();
    }
    if let Some(first) = schema.get("enum").and_then(Value::as_array).and_then(|options| options.first()) {
        return first.clone();
    }
    for key in ["anyOf", "oneOf"] {
        if let Some(options) = schema.get(key).and_then(Value::as_array).filter(|options| !options.is_empty()) {
            return instance(&options[chooser.pick(options.len())], root, name, chooser, depth + 1);
        }
    }
    if let Some(parts) = schema.get("allOf").and_then(Value::as_array) {
        let mut merged = Map::new();
        for part in parts {
            match instance(part, root, name, chooser, depth + 1) {
                Value::Object(object) => merged.extend(object),
                other => return other,
            }
        }
        return Value::Object(merged);
    }
    let kind = match schema.get("type") {
        Some(Value::String(kind)) => kind.as_str(),
        Some(Value::Array(kinds)) => {
            kinds.iter().filter_map(Value::as_str).find(|kind| *kind != "null").unwrap_or("null")
        }
        _ if schema.contains_key("properties") => "object",
        _ => "null",
    };
    match kind {
        "object" => {
            let properties = schema.get("properties").and_then(Value::as_object);
            let mut object = Map::new();
            for key in schema.get("required").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str) {
                let property = properties.and_then(|properties| properties.get(key)).unwrap_or(&Value::Null);
                object.insert(key.to_owned(), instance(property, root, Some(key), chooser, depth + 1));
            }
            Value::Object(object)
        }
        "string" => {
            let minimum = schema.get("minLength").and_then(Value::as_u64).unwrap_or(0) as usize;
            let maximum = schema.get("maxLength").and_then(Value::as_u64).map(|max| max as usize);
            let mut text = match name {
                Some("reasoning") => "Mock reasoning: a deterministic choice.".to_owned(),
                _ => "mock".to_owned(),
            };
            while text.len() < minimum {
                text.push('x');
            }
            if let Some(maximum) = maximum {
                text.truncate(maximum);
            }
            Value::String(text)
        }
        "integer" | "number" => {
            let bound = |key: &str| schema.get(key).and_then(Value::as_f64);
            let mut value = bound("minimum").or(bound("exclusiveMinimum").map(|min| min.floor() + 1.0)).unwrap_or(0.0);
            if let Some(maximum) = bound("maximum").or(bound("exclusiveMaximum").map(|max| max.ceil() - 1.0))
                && value > maximum
            {
                value = maximum;
            }
            if kind == "integer" || value.fract() == 0.0 {
                Value::from(value.ceil() as i64)
            } else {
                Value::from(value)
            }
        }
        "boolean" => Value::Bool(false),
        "array" => {
            let count = schema.get("minItems").and_then(Value::as_u64).unwrap_or(0) as usize;
            let item = schema.get("items").map(|items| instance(items, root, None, chooser, depth + 1)).unwrap_or(Value::Null);
            Value::Array(vec![item; count])
        }
        _ => Value::Null,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The answer to `request` sent as a body.
    fn answer_to(request: &Value, policy: Policy, sequence: u64, script: &[ScriptStep]) -> Value {
        let body = request.to_string();
        let parsed = ChatRequest::parse(body.as_bytes()).expect("the request is a JSON object");
        chat_completion_scripted(&parsed, policy, sequence, script)
    }

    fn chooser(policy: Policy) -> Chooser {
        Chooser { policy, sequence: 5, messages_hash: 7 }
    }

    #[test]
    fn policies_pick_as_documented() {
        assert_eq!(chooser(Policy::First).pick(3), 0);
        assert_eq!(chooser(Policy::Last).pick(3), 2);
        assert_eq!(chooser(Policy::Cycle).pick(3), 2);
        assert_eq!(chooser(Policy::Hash).pick(3), 1);
        assert_eq!(chooser(Policy::Hash).pick(0), 0);
    }

    #[test]
    fn a_script_follows_the_conversation_not_the_arrival_order() {
        let script: Vec<ScriptStep> = "2,3,text".split(',').map(|step| step.parse().unwrap()).collect();
        assert_eq!(script, [ScriptStep::Tool(2), ScriptStep::Tool(3), ScriptStep::Text]);
        assert!("0".parse::<ScriptStep>().is_err() && "x".parse::<ScriptStep>().is_err());
        let tool = |name: &str| json!({"type": "function", "function": {"name": name, "parameters": {"type": "object"}}});
        let request = |assistant_turns: usize| {
            let mut messages = vec![json!({"role": "user", "content": "go"})];
            for _ in 0..assistant_turns {
                messages.push(json!({"role": "assistant", "content": null, "tool_calls": []}));
                messages.push(json!({"role": "tool", "content": "ok"}));
            }
            json!({"messages": messages, "tools": [tool("a"), tool("b"), tool("c")]})
        };
        let answer = |turns: usize, sequence: u64| answer_to(&request(turns), Policy::Hash, sequence, &script);
        for sequence in [0, 7, 1000] {
            assert_eq!(answer(0, sequence).pointer("/choices/0/message/tool_calls/0/function/name"), Some(&json!("b")));
            assert_eq!(answer(1, sequence).pointer("/choices/0/message/tool_calls/0/function/name"), Some(&json!("c")));
        }
        for turns in [2, 5] {
            let reply = answer(turns, 3);
            assert_eq!(reply.pointer("/choices/0/finish_reason"), Some(&json!("stop")));
            assert!(reply.pointer("/choices/0/message/content").and_then(Value::as_str).is_some_and(|text| text.starts_with("Mock reply")));
        }
        // Without a script nothing changes.
        assert_eq!(
            answer_to(&request(1), Policy::Last, 0, &[]).pointer("/choices/0/message/tool_calls/0/function/name"),
            Some(&json!("c"))
        );
    }

    #[test]
    fn the_messages_digest_is_that_of_the_messages_printed_compactly() {
        // Escapes that printing undoes or keeps, numbers in forms printing normalises, nesting,
        // whitespace between tokens, and keys out of alphabetical order.
        let body = r#"{"model": "m", "messages": [ {"role":"user", "content": "caf\u00e9 \/ \"quoted\"\n\u0007", "z": 1, "a": [1.50, -0, 2e3, 18446744073709551615]},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "function": {"name": "t", "arguments": "{}"}}]} ]}"#;
        let request = ChatRequest::parse(body.as_bytes()).expect("an object");
        let printed = serde_json::from_str::<Value>(body).expect("JSON")["messages"].to_string();
        let (digest, length) = messages_digest(request.messages);
        assert_eq!(digest, <[u8; 32]>::from(Sha256::digest(printed.as_bytes())));
        assert_eq!(length, printed.len());
        assert_eq!(request.assistant_turns(), 1);
        // No messages: the digest of `null`, as printing a missing value gives.
        let (digest, length) = messages_digest(None);
        assert_eq!((digest, length), (<[u8; 32]>::from(Sha256::digest(b"null")), 4));
    }

    #[test]
    fn only_a_json_object_is_a_request() {
        for body in ["[\"m\", null]", "\"text\"", "null", "{\"messages\": [", "", "  "] {
            assert!(ChatRequest::parse(body.as_bytes()).is_none(), "{body:?} was taken for a request");
        }
        let request = ChatRequest::parse(b" {\"messages\": [{\"role\": \"assistant\"}, 7, {\"role\": 3}], \"tools\": 5}").expect("an object");
        assert_eq!(request.assistant_turns(), 1, "messages that are not objects with a string role do not count");
        let answer = chat_completion(&request, Policy::First, 0);
        assert_eq!(answer.pointer("/choices/0/finish_reason"), Some(&json!("stop")), "tools that are not a list are none");
    }

    #[test]
    fn instances_follow_refs_bounds_and_branches() {
        let schema = json!({
            "$defs": {"hours": {"type": "integer", "minimum": 2, "maximum": 9}},
            "type": "object",
            "properties": {
                "hours": {"$ref": "#/$defs/hours"},
                "note": {"type": "string", "minLength": 6},
                "pick": {"anyOf": [{"const": "a"}, {"const": "b"}, {"const": "c"}]},
                "tags": {"type": "array", "items": {"type": "string"}, "minItems": 1},
                "optional": {"type": "string"}
            },
            "required": ["hours", "note", "pick", "tags"]
        });
        let value = instance(&schema, &schema, None, &chooser(Policy::Last), 0);
        assert_eq!(value, json!({"hours": 2, "note": "mockxx", "pick": "c", "tags": ["mock"]}));
    }
}
