//! Asking a model for a structured answer until it gives one that parses.
//!
//! The LLM environment and the judge both ask for one JSON document and, when the reply cannot
//! be used, show the model what was wrong and ask again, a bounded number of times. The agent
//! has its own loop (`trial::agent_step`): its re-asks depend on the protocol and feed the
//! conversation it keeps across turns.

use crate::chat::{ChatRequest, Message, OutputFormat, Sampling};
use crate::model::{CallContext, Model, ModelCall, ModelError};

/// Why no usable answer came back.
#[derive(Debug, Clone, PartialEq)]
pub enum ReaskFailure {
    /// A call failed (after the model's own retries); nothing more was asked.
    Call(ModelError),
    /// Every attempt answered, none could be used; the last problem found.
    Unusable(String),
}

/// Every call made, every answer with the problem that made it unusable, and the outcome.
#[derive(Debug)]
pub struct Reasked<T> {
    pub calls: Vec<ModelCall>,
    pub answers: Vec<(String, Option<String>)>,
    pub outcome: Result<T, ReaskFailure>,
}

/// How to ask: the output format, how many attempts in all, and per attempt (from 0) the
/// sampling settings and the call's context.
pub struct Asking<S, C> {
    pub output: OutputFormat,
    pub attempts: u32,
    pub sampling: S,
    pub context: C,
}

/// Asks `model` with `messages` until `parse` accepts an answer. After an unusable answer the
/// conversation goes on with that answer and `reask(problem)` as the next user message.
pub async fn ask_until_parsed<T, S, C>(
    model: &Model,
    mut messages: Vec<Message>,
    asking: Asking<S, C>,
    parse: impl Fn(&str) -> Result<T, String>,
    reask: impl Fn(&str) -> String,
) -> Reasked<T>
where
    S: Fn(u32) -> Sampling,
    C: Fn(u32) -> CallContext,
{
    let mut asked = Reasked { calls: Vec::new(), answers: Vec::new(), outcome: Err(ReaskFailure::Unusable(String::new())) };
    for attempt in 0..asking.attempts {
        let request = ChatRequest {
            messages: messages.clone(),
            tools: Default::default(),
            output: asking.output.clone(),
            sampling: (asking.sampling)(attempt),
        };
        let call = model.call(request, (asking.context)(attempt)).await;
        let result = call.result.clone();
        asked.calls.push(call);
        let content = match result {
            Ok(response) => response.content,
            Err(error) => {
                asked.outcome = Err(ReaskFailure::Call(error));
                return asked;
            }
        };
        match parse(&content) {
            Ok(answer) => {
                asked.answers.push((content, None));
                asked.outcome = Ok(answer);
                return asked;
            }
            Err(problem) => {
                asked.answers.push((content.clone(), Some(problem.clone())));
                messages.push(Message::assistant(content));
                messages.push(Message::user(reask(&problem)));
                asked.outcome = Err(ReaskFailure::Unusable(problem));
            }
        }
    }
    asked
}
