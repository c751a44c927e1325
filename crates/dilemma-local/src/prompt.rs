//! Turning a provider-neutral [`ChatRequest`] into the role/content pairs a GGUF chat
//! template understands.
//!
//! Small instruct models such as SmolLM2 ship a plain ChatML template with only `system`,
//! `user` and `assistant` roles and no notion of tools. So tool use is expressed in text:
//! the tools are described in the system message, an assistant tool call is replayed as the
//! JSON object the constraint makes the model write, and a tool result becomes a user turn.
//! Everything here is deterministic, so that consecutive turns of a trial render to prompts
//! that share a long token prefix (see the KV cache reuse in `engine`).

use dilemma::chat::{ChatRequest, Message, OutputFormat, Speaker};
use serde_json::json;

use crate::schema::to_spaced_json;

/// One message as the chat template will see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TemplateMessage {
    pub role: &'static str,
    pub content: String,
}

/// Maps the request's messages to template messages. With `OutputFormat::ToolCall` the tool
/// list is added to the system message (a new leading one if the request has none): a native
/// provider would get the tools on the wire, here the prompt is the only channel.
pub(crate) fn template_messages(request: &ChatRequest) -> Vec<TemplateMessage> {
    let mut messages: Vec<TemplateMessage> = request.messages.iter().map(template_message).collect();
    if request.output == OutputFormat::ToolCall && !request.tools.is_empty() {
        let tools = tools_text(request);
        match messages.first_mut() {
            Some(first) if first.role == "system" => {
                first.content.push_str("\n\n");
                first.content.push_str(&tools);
            }
            _ => messages.insert(0, TemplateMessage { role: "system", content: tools }),
        }
    }
    messages
}

fn template_message(message: &Message) -> TemplateMessage {
    match message.speaker {
        Speaker::System => TemplateMessage { role: "system", content: message.content.to_string() },
        Speaker::User => TemplateMessage { role: "user", content: message.content.to_string() },
        Speaker::Assistant => {
            // Replay tool calls exactly as the constrained decoder writes them (same keys,
            // same separators) so the model sees its own earlier output.
            let mut parts: Vec<String> = Vec::new();
            if !message.content.is_empty() {
                parts.push(message.content.to_string());
            }
            parts.extend(
                message
                    .tool_calls
                    .iter()
                    .map(|call| to_spaced_json(&json!({"tool": call.name, "arguments": call.arguments}))),
            );
            TemplateMessage { role: "assistant", content: parts.join("\n") }
        }
        Speaker::Tool => {
            let id = message.tool_call_id.as_deref().unwrap_or("(unknown)");
            TemplateMessage { role: "user", content: format!("Result of tool call {id}: {}", message.content) }
        }
    }
}

/// The tool list in the system message, in the request's order.
fn tools_text(request: &ChatRequest) -> String {
    let mut text = String::from(
        "You can use the following tools. Answer with exactly one tool call, written as a JSON object \
         {\"tool\": <tool name>, \"arguments\": <arguments object>}.\nTools:",
    );
    for tool in request.tools.iter() {
        text.push_str(&format!(
            "\n- {}: {}\n  Arguments (JSON Schema): {}",
            tool.name,
            tool.description.trim(),
            to_spaced_json(&tool.parameters)
        ));
    }
    text
}

#[cfg(test)]
mod tests {
    use dilemma::chat::{Sampling, ToolCall, ToolSpec};

    use super::*;

    #[test]
    fn tool_messages_become_text_turns() {
        let mut assistant = Message::assistant("");
        assistant.tool_calls = std::sync::Arc::new([ToolCall { id: "call_0".into(), name: "ping".into(), arguments: json!({"n": 1}) }]);
        let request = ChatRequest {
            messages: vec![
                Message::system("Be brief."),
                Message::user("Go"),
                assistant,
                Message::tool_result("call_0", "pong"),
            ],
            tools: vec![ToolSpec { name: "ping".into(), description: "Pings.".into(), parameters: json!({}) }].into(),
            output: OutputFormat::ToolCall,
            sampling: Sampling::default(),
        };
        let messages = template_messages(&request);
        assert_eq!(messages.len(), 4);
        assert!(messages[0].content.starts_with("Be brief.\n\nYou can use the following tools."));
        assert!(messages[0].content.contains("- ping: Pings."));
        assert_eq!(messages[2].content, r#"{"tool": "ping", "arguments": {"n": 1}}"#);
        assert_eq!(messages[3], TemplateMessage { role: "user", content: "Result of tool call call_0: pong".into() });
    }
}
