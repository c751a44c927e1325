//! Integration tests against the real embedded model (`models/SmolLM2-135M-Instruct.Q4_1.gguf`,
//! installed by `make model`). Kept few and short: on two cores the model reads about 100
//! prompt tokens and writes about 30 tokens per second.

use std::path::PathBuf;

use dilemma::chat::{ChatRequest, FinishReason, Message, OutputFormat, Sampling, ToolSpec};
use dilemma::model::{CallContext, ChatModel, ModelRole};
use dilemma_local::locate::DEFAULT_MODEL_FILE;
use dilemma_local::{LocalError, LocalModel, LocalOptions};
use serde_json::{Value, json};

/// The workspace's model directory, passed explicitly so tests never touch the environment.
fn model_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../models"))
}

fn open_default() -> LocalModel {
    let options = LocalOptions { n_ctx: 2048, model_dir: Some(model_dir()), ..LocalOptions::default() };
    match LocalModel::open("smollm2", options) {
        Ok(model) => model,
        Err(error) => panic!("the embedded model must be installed for these tests (make model): {error}"),
    }
}

fn context(call_index: u32) -> CallContext {
    CallContext { role: ModelRole::Agent, trial: "t".into(), turn: call_index, call_index }
}

fn greedy(max_tokens: u32) -> Sampling {
    Sampling { temperature: 0.0, max_tokens, seed: None }
}

#[tokio::test]
async fn json_schema_output_parses_and_matches_the_schema() {
    let model = open_default();
    assert_eq!(model.id(), "local:smollm2");
    let request = ChatRequest {
        messages: vec![
            Message::system("You answer questions as JSON."),
            Message::user("Is the sky blue on a clear day? Answer yes or no and give a short reason."),
        ],
        tools: Default::default(),
        output: OutputFormat::JsonSchema(json!({
            "type": "object",
            "properties": {
                "answer": {"enum": ["yes", "no"]},
                "reason": {"type": "string", "maxLength": 80}
            },
            "required": ["answer", "reason"]
        })),
        sampling: greedy(80),
    };
    let response = model.chat(&request, &context(0)).await.expect("local call");
    assert_eq!(response.finish_reason, FinishReason::Stop, "raw: {:?}", response.raw);
    let document: Value = serde_json::from_str(&response.content).expect("content is JSON");
    let object = document.as_object().expect("an object");
    assert!(matches!(object.get("answer").and_then(Value::as_str), Some("yes" | "no")), "{document}");
    let reason = object.get("reason").and_then(Value::as_str).expect("reason is a string");
    assert!(reason.chars().count() <= 80);
    assert_eq!(object.len(), 2, "no undeclared properties: {document}");
    assert_eq!(response.raw.as_deref(), Some(response.content.as_str()));
    let stats = model.last_call_stats().expect("stats");
    assert_eq!(response.usage.prompt_tokens, stats.prompt_tokens as u64);
    assert_eq!(response.usage.completion_tokens, stats.completion_tokens as u64);
    assert!(stats.completion_tokens > 0);
}

#[tokio::test]
async fn tool_call_output_names_an_offered_tool() {
    let model = open_default();
    let tools = vec![
        ToolSpec {
            name: "send_email".into(),
            description: "Send an email.".into(),
            parameters: json!({
                "type": "object",
                "properties": {"to": {"type": "string", "maxLength": 40}, "body": {"type": "string", "maxLength": 80}},
                "required": ["to", "body"]
            }),
        },
        ToolSpec {
            name: "do_nothing".into(),
            description: "Take no action.".into(),
            parameters: json!({"type": "object", "properties": {}}),
        },
    ];
    let request = ChatRequest {
        messages: vec![
            Message::system("You are an office assistant."),
            Message::user("Email bob@example.com that the meeting moved to 3pm."),
        ],
        tools: tools.into(),
        output: OutputFormat::ToolCall,
        sampling: greedy(80),
    };
    let response = model.chat(&request, &context(7)).await.expect("local call");
    assert_eq!(response.finish_reason, FinishReason::ToolCalls, "raw: {:?}", response.raw);
    assert!(response.content.is_empty());
    assert_eq!(response.tool_calls.len(), 1);
    let call = &response.tool_calls[0];
    assert_eq!(call.id, "call_7");
    let arguments = call.arguments.as_object().expect("arguments are an object");
    match call.name.as_str() {
        "send_email" => {
            assert!(arguments.get("to").is_some_and(Value::is_string), "{arguments:?}");
            assert!(arguments.get("body").is_some_and(Value::is_string), "{arguments:?}");
            assert_eq!(arguments.len(), 2);
        }
        "do_nothing" => assert!(arguments.is_empty()),
        other => panic!("not an offered tool: {other}"),
    }

    // The call replayed as history must tokenise like the generated text, so that the next
    // turn reuses the KV cache past the end of the previous prompt.
    let first = model.last_call_stats().expect("stats");
    let mut request = request;
    let mut assistant = Message::assistant("");
    assistant.tool_calls = response.tool_calls.clone().into();
    request.messages.push(assistant);
    request.messages.push(Message::tool_result(call.id.clone(), "Done."));
    request.sampling.max_tokens = 1;
    model.chat(&request, &context(8)).await.expect("follow-up call");
    let second = model.last_call_stats().expect("stats");
    assert!(
        second.reused_tokens > first.prompt_tokens + first.completion_tokens / 2,
        "{second:?} after {first:?}"
    );
}

#[tokio::test]
async fn a_follow_up_turn_reuses_the_cached_prefix() {
    let model = open_default();
    let mut request = ChatRequest {
        messages: vec![
            Message::system("You are a terse assistant."),
            Message::user("Name one primary colour."),
        ],
        tools: Default::default(),
        output: OutputFormat::Text,
        sampling: greedy(8),
    };
    let first = model.chat(&request, &context(0)).await.expect("first call");
    let first_stats = model.last_call_stats().expect("stats");
    assert_eq!(first_stats.reused_tokens, 0, "a fresh model has nothing cached");
    assert_eq!(first_stats.evaluated_tokens, first_stats.prompt_tokens);

    request.messages.push(Message::assistant(first.content.clone()));
    request.messages.push(Message::user("Name another one."));
    model.chat(&request, &context(1)).await.expect("second call");
    let second = model.last_call_stats().expect("stats");
    assert!(second.prompt_tokens > first_stats.prompt_tokens);
    // The whole first prompt is a prefix of the second.
    assert!(second.reused_tokens >= first_stats.prompt_tokens, "{second:?} after {first_stats:?}");
    assert_eq!(second.reused_tokens + second.evaluated_tokens, second.prompt_tokens);
    assert!(second.evaluated_tokens < second.prompt_tokens / 2, "{second:?}");

    // Going back to the first request reuses the cache again and, greedy, answers the same:
    // a cache cut back to a shared prefix must behave like a fresh evaluation.
    request.messages.truncate(2);
    let again = model.chat(&request, &context(2)).await.expect("third call");
    let third = model.last_call_stats().expect("stats");
    assert_eq!(third.reused_tokens, first_stats.prompt_tokens - 1);
    assert_eq!(again.content, first.content);
}

#[tokio::test]
async fn without_prefix_reuse_every_prompt_is_evaluated_whole() {
    let options = LocalOptions { n_ctx: 2048, model_dir: Some(model_dir()), reuse_prefix: false, ..LocalOptions::default() };
    let model = LocalModel::open("smollm2", options).expect("the default model opens");
    let mut request = ChatRequest {
        messages: vec![Message::system("You are a terse assistant."), Message::user("Name one primary colour.")],
        tools: Default::default(),
        output: OutputFormat::Text,
        sampling: greedy(8),
    };
    let first = model.chat(&request, &context(0)).await.expect("first call");
    request.messages.push(Message::assistant(first.content.clone()));
    request.messages.push(Message::user("Name another one."));
    model.chat(&request, &context(1)).await.expect("second call");
    let second = model.last_call_stats().expect("stats");
    assert_eq!(second.reused_tokens, 0, "{second:?}");
    assert_eq!(second.evaluated_tokens, second.prompt_tokens);
    // The answers are the same as with reuse: the cache is an optimisation, not a behaviour.
    request.messages.truncate(2);
    let again = model.chat(&request, &context(2)).await.expect("third call");
    assert_eq!(again.content, first.content);
}

#[test]
fn a_missing_model_file_says_how_to_get_it() {
    let empty = tempfile::tempdir().expect("tempdir");
    let options = LocalOptions { model_dir: Some(empty.path().to_owned()), ..LocalOptions::default() };
    let error = LocalModel::open("smollm2", options).expect_err("no model there");
    assert!(matches!(error, LocalError::ModelMissing { .. }), "{error:?}");
    let message = error.to_string();
    assert!(message.contains("make model"), "{message}");
    assert!(message.contains("local:/path/to/model.gguf"), "{message}");
    assert!(message.contains(DEFAULT_MODEL_FILE), "{message}");

    let missing = empty.path().join("other.gguf");
    let error = LocalModel::open(&missing.display().to_string(), LocalOptions::default()).expect_err("no file");
    assert!(error.to_string().contains("does not exist"), "{error}");
}

#[test]
fn a_damaged_default_model_fails_its_checksum() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Starts like a GGUF file, as a truncated download would.
    std::fs::write(dir.path().join(DEFAULT_MODEL_FILE), b"GGUF\x03\x00\x00\x00 truncated").expect("write");
    let options = LocalOptions { model_dir: Some(dir.path().to_owned()), ..LocalOptions::default() };
    let error = LocalModel::open("smollm2", options).expect_err("bad checksum");
    assert!(matches!(error, LocalError::Checksum { .. }), "{error:?}");
    let message = error.to_string();
    assert!(message.contains("sha256"), "{message}");
    assert!(message.contains("make model"), "{message}");
}
