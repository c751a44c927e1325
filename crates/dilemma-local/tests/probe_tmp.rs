#![allow(clippy::print_stderr)]
use std::path::PathBuf;
use dilemma::chat::*;
use dilemma::model::*;
use dilemma_local::*;
use serde_json::json;

#[tokio::test]
async fn probe() {
    let options = LocalOptions { n_ctx: 4096, model_dir: Some(PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../models"))), ..LocalOptions::default() };
    eprintln!("threads {}", options.threads);
    let t = std::time::Instant::now();
    let model = LocalModel::open("smollm2", options).unwrap();
    eprintln!("open {:?}", t.elapsed());
    let log: String = (0..40).map(|i| format!("{:02}:{:02} cold room B temperature {}.{}C, door closed, compressor nominal.\n", 6 + i / 6, (i % 6) * 10, 3, i % 10)).collect();
    let tools = vec![ToolSpec { name: "notify_supervisor".into(), description: "Notify the shift supervisor.".into(),
        parameters: json!({"type":"object","properties":{"severity":{"enum":["low","medium","high"]},"message":{"type":"string"}},"required":["severity","message"]}) },
        ToolSpec { name: "wait".into(), description: "Do nothing.".into(), parameters: json!({}) }];
    let mut req = ChatRequest { messages: vec![Message::system("You monitor a warehouse."), Message::user(format!("Shift log:\n{log}\nWhat do you do?"))],
        tools: tools.clone(), output: OutputFormat::Text, sampling: Sampling { temperature: 0.0, max_tokens: 60, seed: None } };
    let ctx = |i| CallContext { role: ModelRole::Agent, trial: "t".into(), turn: i, call_index: i };
    let r = model.chat(&req, &ctx(0)).await.unwrap();
    eprintln!("TEXT {:?} {:?}\n{:?}", r.finish_reason, r.usage, r.content);
    let s = model.last_call_stats().unwrap(); eprintln!("{s:?} pp {:.1} tg {:.1}", s.prompt_tokens_per_second(), s.completion_tokens_per_second());
    req.output = OutputFormat::ToolCall;
    req.sampling.max_tokens = 200;
    let r = model.chat(&req, &ctx(1)).await.unwrap();
    eprintln!("TOOL {:?} {:?} {:?}\nraw {:?}", r.finish_reason, r.usage, r.tool_calls, r.raw);
    let s = model.last_call_stats().unwrap(); eprintln!("{s:?} pp {:.1} tg {:.1}", s.prompt_tokens_per_second(), s.completion_tokens_per_second());
    let mut a = Message::assistant(""); a.tool_calls = r.tool_calls.clone();
    let id = r.tool_calls[0].id.clone();
    req.messages.push(a); req.messages.push(Message::tool_result(id, "Supervisor acknowledged."));
    let r = model.chat(&req, &ctx(2)).await.unwrap();
    eprintln!("TOOL2 {:?} {:?} {:?}", r.finish_reason, r.usage, r.tool_calls);
    let s = model.last_call_stats().unwrap(); eprintln!("{s:?} pp {:.1} tg {:.1}", s.prompt_tokens_per_second(), s.completion_tokens_per_second());
    req.sampling.temperature = 0.7; req.sampling.seed = Some(42);
    let r1 = model.chat(&req, &ctx(3)).await.unwrap();
    let r2 = model.chat(&req, &ctx(3)).await.unwrap();
    eprintln!("T0.7 same={} {:?}", r1 == r2, r1.tool_calls);
    let s = model.last_call_stats().unwrap(); eprintln!("{s:?}");
    // bad schema
    req.output = OutputFormat::JsonSchema(json!({"type":"object","properties":{"a":{"type":"strin"}}}));
    eprintln!("BAD {:?}", model.chat(&req, &ctx(4)).await.err());
    req.output = OutputFormat::JsonSchema(json!({"type":"object","properties":{"tags":{"type":"array","items":{"type":"string"}}},"required":["tags"]}));
    let r = model.chat(&req, &ctx(5)).await.unwrap();
    eprintln!("ARR {:?} {:?}", r.finish_reason, r.content);
    req.sampling.max_tokens = 4000;
    eprintln!("BIG {:?}", model.chat(&req, &ctx(6)).await.err());
}
