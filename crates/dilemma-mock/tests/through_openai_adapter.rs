//! The mock, started in process, driven through the real `openai:` adapter of the library:
//! tool calls, JSON-schema answers, every fault kind classified as the right error kind,
//! latency, and the request counts of `/stats`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dilemma::chat::{ChatRequest, FinishReason, Message, OutputFormat, Sampling, ToolSpec};
use dilemma::model::openai::OpenAiModel;
use dilemma::model::{CallContext, CallPolicy, ChatModel, Model, ModelErrorKind, ModelRole};
use dilemma_mock::{Fault, MockConfig, MockHandle, Policy, Stats, fault_for};
use serde_json::{Value, json};

async fn start(config: MockConfig) -> (MockHandle, OpenAiModel) {
    let (address, handle) = dilemma_mock::serve(config).await.expect("the mock starts");
    assert!(address.ip().is_loopback());
    let model = OpenAiModel::new("mock-model", Some(&handle.base_url()), None).expect("a valid base URL");
    (handle, model)
}

fn context(call_index: u32) -> CallContext {
    CallContext { role: ModelRole::Agent, trial: "t1".into(), turn: 1, call_index }
}

fn tools() -> Vec<ToolSpec> {
    let tool = |name: &str, parameters: Value| ToolSpec { name: name.into(), description: format!("The {name} tool."), parameters };
    vec![
        tool("check_records", json!({"type": "object", "properties": {"batch_id": {"type": "string", "minLength": 3}}, "required": ["batch_id"]})),
        tool("notify_quality", json!({"type": "object", "properties": {"urgent": {"type": "boolean"}, "note": {"type": "string"}}, "required": ["urgent"]})),
        tool(
            "release_batch",
            json!({
                "type": "object",
                "properties": {"batch_id": {"type": "string"}, "hours": {"type": "integer", "minimum": 2}, "mode": {"enum": ["fast", "safe"]}},
                "required": ["batch_id", "hours", "mode"],
                "additionalProperties": false
            }),
        ),
    ]
}

fn tool_request(text: &str) -> ChatRequest {
    ChatRequest {
        messages: vec![Message::system("You release batches."), Message::user(text)],
        tools: tools().into(),
        output: OutputFormat::ToolCall,
        sampling: Sampling { temperature: 0.7, max_tokens: 256, seed: Some(1) },
    }
}

/// The paper's agent answer: `{reasoning, tool_choice}` with one `anyOf` branch per tool.
fn answer_schema() -> Value {
    let branches: Vec<Value> = tools()
        .iter()
        .enumerate()
        .map(|(index, tool)| {
            json!({
                "type": "object",
                "properties": {"id": {"const": index + 1}, "name": {"const": tool.name}, "parameters": tool.parameters},
                "required": ["id", "name", "parameters"],
                "additionalProperties": false
            })
        })
        .collect();
    json!({
        "type": "object",
        "properties": {"reasoning": {"type": "string"}, "tool_choice": {"anyOf": branches}},
        "required": ["reasoning", "tool_choice"],
        "additionalProperties": false
    })
}

fn schema_request(text: &str) -> ChatRequest {
    ChatRequest { output: OutputFormat::JsonSchema(answer_schema()), ..tool_request(text) }
}

#[tokio::test]
async fn tool_requests_get_a_valid_call_of_an_offered_tool() {
    let (_handle, model) = start(MockConfig { policy: Policy::Last, ..MockConfig::default() }).await;
    let response = model.chat(&tool_request("Release B-7."), &context(0)).await.expect("an answer");
    assert_eq!(response.finish_reason, FinishReason::ToolCalls);
    assert_eq!(response.tool_calls.len(), 1);
    let call = &response.tool_calls[0];
    assert_eq!(call.name, "release_batch");
    assert_eq!(call.arguments, json!({"batch_id": "mock", "hours": 2, "mode": "fast"}));
    assert!(jsonschema::is_valid(&tools()[2].parameters, &call.arguments));
    assert!(call.id.starts_with("call_"));
    assert!(response.usage.prompt_tokens > 0 && response.usage.completion_tokens > 0);
    assert!(response.raw.is_some_and(|raw| raw.contains("chat.completion")));

    // `cycle` walks the tools in order; `hash` is a function of the conversation.
    let (_cycle_handle, cycling) = start(MockConfig { policy: Policy::Cycle, ..MockConfig::default() }).await;
    let mut names = Vec::new();
    for index in 0..4 {
        let response = cycling.chat(&tool_request("Release B-7."), &context(index)).await.unwrap();
        names.push(response.tool_calls[0].name.clone());
    }
    assert_eq!(names, ["check_records", "notify_quality", "release_batch", "check_records"]);
    let (_hash_handle, hashing) = start(MockConfig::default()).await;
    for text in ["a", "b", "c", "d", "e"] {
        let first = hashing.chat(&tool_request(text), &context(0)).await.unwrap();
        let second = hashing.chat(&tool_request(text), &context(0)).await.unwrap();
        assert_eq!(first.tool_calls, second.tool_calls, "the same conversation gets the same call");
        let tool = tools().into_iter().find(|tool| tool.name == first.tool_calls[0].name).unwrap();
        assert!(jsonschema::is_valid(&tool.parameters, &first.tool_calls[0].arguments));
    }
}

#[tokio::test]
async fn json_schema_requests_get_a_document_valid_against_the_schema() {
    for (policy, id) in [(Policy::First, 1), (Policy::Last, 3)] {
        let (_handle, model) = start(MockConfig { policy, ..MockConfig::default() }).await;
        let response = model.chat(&schema_request("Choose."), &context(0)).await.expect("an answer");
        assert!(response.tool_calls.is_empty());
        assert_eq!(response.finish_reason, FinishReason::Stop);
        let document: Value = serde_json::from_str(&response.content).expect("JSON content");
        assert!(jsonschema::is_valid(&answer_schema(), &document), "{document}");
        assert_eq!(document["tool_choice"]["id"], json!(id), "{policy:?}");
        assert!(document["reasoning"].as_str().is_some_and(|text| !text.is_empty()));
    }
    let (_handle, model) = start(MockConfig::default()).await;
    let text = ChatRequest { output: OutputFormat::Text, tools: Default::default(), ..tool_request("Hello") };
    let response = model.chat(&text, &context(0)).await.unwrap();
    assert!(response.content.starts_with("Mock reply "), "{}", response.content);
}

fn only(fault: Fault) -> MockConfig {
    MockConfig { fault_rate: 1.0, faults: vec![fault], retry_after_secs: 3, hang: Duration::from_secs(30), ..MockConfig::default() }
}

#[tokio::test]
async fn each_fault_is_classified_as_the_right_error_kind() {
    for (fault, kind) in [
        (Fault::RateLimit, ModelErrorKind::RateLimited),
        (Fault::ServerError, ModelErrorKind::Transient),
        (Fault::Malformed, ModelErrorKind::Transient),
        (Fault::Truncated, ModelErrorKind::Transient),
    ] {
        let (handle, model) = start(only(fault)).await;
        let error = model.chat(&tool_request("x"), &context(0)).await.expect_err("a fault");
        assert_eq!(error.kind, kind, "{fault:?}: {error}");
        if fault == Fault::RateLimit {
            assert_eq!(error.retry_after, Some(Duration::from_secs(3)));
        }
        if fault == Fault::Truncated {
            assert!(error.message.contains("cut off"), "{fault:?}: {}", error.message);
        }
        let stats = handle.stats();
        assert_eq!((stats.requests, stats.answered, stats.fault(fault)), (1, 0, 1), "{fault:?}: {stats:?}");
    }

    // A hang outlasts the Model wrapper's timeout.
    let (handle, model) = start(only(Fault::Hang)).await;
    let policy = CallPolicy { timeout: Duration::from_millis(300), max_attempts: 1, ..CallPolicy::default() };
    let wrapped = Model::new(Arc::new(model), ModelRole::Agent, policy);
    let started = Instant::now();
    let call = wrapped.call(tool_request("x"), context(0)).await;
    let error = call.result.expect_err("a timeout");
    assert_eq!(error.kind, ModelErrorKind::Timeout, "{error}");
    assert!(started.elapsed() < Duration::from_secs(5), "the hang was cut by the timeout");
    assert_eq!(handle.stats().fault(Fault::Hang), 1);
    // Shutting down ends the hanging request instead of waiting 30 s.
    let stopping = Instant::now();
    handle.shutdown().await;
    assert!(stopping.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn latency_is_applied_to_every_answer() {
    let (_handle, model) = start(MockConfig { latency: Duration::from_millis(400), ..MockConfig::default() }).await;
    let started = Instant::now();
    model.chat(&tool_request("x"), &context(0)).await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(400), "{:?}", started.elapsed());
    let (_fast_handle, fast) = start(MockConfig::default()).await;
    let started = Instant::now();
    fast.chat(&tool_request("x"), &context(0)).await.unwrap();
    assert!(started.elapsed() < Duration::from_millis(400), "{:?}", started.elapsed());
}

async fn http_stats(base: &str, reset: bool) -> Stats {
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let root = base.trim_end_matches("/v1");
    let response = if reset {
        client.post(format!("{root}/stats/reset")).send().await.unwrap()
    } else {
        client.get(format!("{root}/stats")).send().await.unwrap()
    };
    assert!(response.status().is_success());
    response.json().await.unwrap()
}

#[tokio::test]
async fn stats_count_requests_faults_and_bodies() {
    // A seed whose first draw is a fault and whose second is not, at a 50% rate.
    let mut config = MockConfig { fault_rate: 0.5, faults: vec![Fault::ServerError], ..MockConfig::default() };
    config.seed = (0..1000)
        .find(|seed| {
            let trial = MockConfig { seed: *seed, ..config.clone() };
            fault_for(&trial, 0).is_some() && fault_for(&trial, 1).is_none()
        })
        .expect("such a seed exists");
    let (handle, model) = start(config).await;
    let base = handle.base_url();
    let policy = CallPolicy { min_delay: Duration::from_millis(5), max_delay: Duration::from_millis(20), ..CallPolicy::default() };
    let wrapped = Model::new(Arc::new(model), ModelRole::Agent, policy);

    // The first attempt fails with a 500, the retry is answered, and nothing more is sent.
    let call = wrapped.call(tool_request("first"), context(0)).await;
    assert!(call.result.is_ok(), "{:?}", call.result);
    assert_eq!(call.failed_attempts.len(), 1);
    assert_eq!(call.failed_attempts[0].error.kind, ModelErrorKind::Transient);
    let stats = http_stats(&base, false).await;
    assert_eq!((stats.requests, stats.answered, stats.fault(Fault::ServerError)), (2, 1, 1), "{stats:?}");
    assert_eq!(stats.bodies.len(), 1, "the retry sent the same body");
    let counts = stats.bodies.values().next().unwrap();
    assert_eq!((counts.requests, counts.answered), (2, 1));
    assert_eq!(stats, handle.stats(), "GET /stats and the handle agree");

    // Different requests are counted apart; none was answered twice.
    for text in ["second", "third"] {
        let _ = wrapped.call(tool_request(text), context(0)).await;
    }
    let stats = handle.stats();
    assert_eq!(stats.bodies.len(), 3);
    assert!(stats.bodies.values().all(|count| count.answered == 1), "{stats:?}");

    // A body that is not JSON is a 400, counted as a bad request.
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let mut status = 0;
    for _ in 0..4 {
        // Retry past any injected fault: the draw does not look at the body.
        status = client.post(format!("{base}/chat/completions")).body("not json").send().await.unwrap().status().as_u16();
        if status == 400 {
            break;
        }
    }
    assert_eq!(status, 400);
    assert_eq!(handle.stats().bad_requests, 1);

    let zero = http_stats(&base, true).await;
    assert_eq!((zero.requests, zero.answered, zero.bodies.len()), (0, 0, 0));
    assert_eq!(zero.faults.len(), Fault::ALL.len(), "every fault kind is listed");
    assert_eq!(handle.stats(), zero);
}

#[tokio::test]
async fn the_binary_prints_its_address_and_serves() {
    use tokio::io::AsyncBufReadExt;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_dilemma-mock"))
        .args(["--port", "0", "--policy", "first", "--faults", "429,500"])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the binary starts");
    let stdout = child.stdout.take().unwrap();
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line()).await.unwrap().unwrap().unwrap();
    let base = line.strip_prefix("listening on ").unwrap_or_else(|| panic!("unexpected first line: {line}"));
    assert!(base.starts_with("http://127.0.0.1:"), "{base}");
    let model = OpenAiModel::new("m", Some(&format!("{base}/v1")), None).unwrap();
    let response = model.chat(&tool_request("x"), &context(0)).await.unwrap();
    assert_eq!(response.tool_calls[0].name, "check_records");
    child.kill().await.unwrap();
}

#[tokio::test]
async fn a_script_makes_six_tool_turns_then_a_final_one_and_stats_carry_times() {
    use dilemma::chat::Speaker;
    use dilemma_mock::ScriptStep;
    // Tools 1, 2, 1, 2, 1, 2 (six turns), then tool 3, whatever order requests arrive in.
    let script = [1, 2, 1, 2, 1, 2, 3].map(ScriptStep::Tool).to_vec();
    let (handle, model) = start(MockConfig { script, ..MockConfig::default() }).await;
    let before = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_micros() as u64;
    let mut request = tool_request("Release B-7.");
    let mut names = Vec::new();
    for turn in 0..7 {
        let response = model.chat(&request, &context(turn)).await.expect("an answer");
        let call = response.tool_calls[0].clone();
        names.push(call.name.clone());
        request.messages.push(Message { speaker: Speaker::Assistant, content: Default::default(), tool_calls: std::sync::Arc::new([call.clone()]), tool_call_id: None });
        request.messages.push(Message::tool_result(call.id, "ok"));
    }
    let expected = ["check_records", "notify_quality"].repeat(3).into_iter().chain(["release_batch"]).collect::<Vec<_>>();
    assert_eq!(names, expected);
    // A `text` step answers in words even though tools are offered; the last step repeats.
    let (_text_handle, texting) = start(MockConfig { script: vec![ScriptStep::Tool(3), ScriptStep::Text], ..MockConfig::default() }).await;
    let response = texting.chat(&request, &context(7)).await.unwrap();
    assert!(response.tool_calls.is_empty() && response.content.starts_with("Mock reply"), "{response:?}");

    let stats = http_stats(&handle.base_url(), false).await;
    assert_eq!(stats.requests, 7);
    let (first, last) = (stats.first_request_unix_us.unwrap(), stats.last_answer_unix_us.unwrap());
    assert!(before <= first && first < last, "{before} {first} {last}");
    let zero = http_stats(&handle.base_url(), true).await;
    assert_eq!((zero.first_request_unix_us, zero.last_answer_unix_us), (None, None));
}
