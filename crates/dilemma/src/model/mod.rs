//! Models: the thin [`ChatModel`] trait that providers implement, and the [`Model`] wrapper
//! that owns call policy (timeouts, retries with backoff, token accounting) and produces a
//! [`ModelCall`] record for the journal.
//!
//! Providers only translate [`ChatRequest`]s to their wire format and back; they never
//! retry, sleep, count or store. That keeps policy in one place for every provider.

pub mod anthropic;
pub mod gemini;
pub mod http;
pub mod http1;
pub mod openai;
pub mod limit;
pub mod reask;
pub mod scripted;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use backon::{ExponentialBuilder, Retryable};
use tracing::Instrument;
use serde::{Deserialize, Serialize};

use crate::chat::{ChatRequest, ChatResponse, Usage};

/// A boxed future, so that `ChatModel` stays object safe (`Arc<dyn ChatModel>`).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The part of the engine a model plays in a trial.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelRole {
    /// The model under test.
    Agent,
    /// Simulates the world the agent acts in.
    Environment,
    /// Simulates a person talking to the agent.
    User,
    /// Grades transcripts.
    Judge,
    /// Writes scenarios.
    Synthesizer,
}

impl ModelRole {
    pub const ALL: [ModelRole; 5] = [
        ModelRole::Agent,
        ModelRole::Environment,
        ModelRole::User,
        ModelRole::Judge,
        ModelRole::Synthesizer,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ModelRole::Agent => "agent",
            ModelRole::Environment => "environment",
            ModelRole::User => "user",
            ModelRole::Judge => "judge",
            ModelRole::Synthesizer => "synthesizer",
        }
    }

    pub fn parse(name: &str) -> Option<ModelRole> {
        ModelRole::ALL.into_iter().find(|role| role.as_str() == name)
    }
}

impl fmt::Display for ModelRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where in a run a call is made. Providers may ignore it; the scripted provider uses
/// `call_index` to pick its reply without keeping state of its own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallContext {
    pub role: ModelRole,
    pub trial: String,
    pub turn: u32,
    /// How many calls this role has made earlier in the same trial (re-asks included).
    pub call_index: u32,
}

/// What kind of failure a provider call ended in; decides whether a retry can help.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelErrorKind {
    /// The provider asked us to slow down (HTTP 429 and the like).
    RateLimited,
    /// A fault that may pass: 5xx, a dropped connection, a malformed or truncated body.
    Transient,
    /// No answer within the policy's timeout.
    Timeout,
    /// The provider refused the content itself.
    Refused,
    /// Retrying cannot help: bad request, bad key, unknown model, context overflow.
    Fatal,
}

impl ModelErrorKind {
    pub fn is_retryable(self) -> bool {
        matches!(self, ModelErrorKind::RateLimited | ModelErrorKind::Transient | ModelErrorKind::Timeout)
    }
}

/// A failed provider call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
#[error("{kind:?}: {message}")]
pub struct ModelError {
    pub kind: ModelErrorKind,
    pub message: String,
    /// How long the provider asked us to wait before trying again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<Duration>,
}

impl ModelError {
    pub fn new(kind: ModelErrorKind, message: impl Into<String>) -> Self {
        ModelError { kind, message: message.into(), retry_after: None }
    }
    pub fn fatal(message: impl Into<String>) -> Self {
        Self::new(ModelErrorKind::Fatal, message)
    }
}

/// A provider: speaks one wire format (or runs a model in process). Keep it thin.
pub trait ChatModel: Send + Sync {
    /// A stable identifier, stored with every call: `local:smollm2`, `scripted:path`, ...
    fn id(&self) -> &str;

    /// One completion. No retries, no sleeping: the [`Model`] wrapper owns that.
    fn chat<'a>(
        &'a self,
        request: &'a ChatRequest,
        context: &'a CallContext,
    ) -> BoxFuture<'a, Result<ChatResponse, ModelError>>;

    /// Whether answers may be served from the response cache. Providers whose answer depends
    /// on more than the request (the scripted provider reads `CallContext`) say no.
    fn cacheable(&self) -> bool {
        true
    }
}

/// Finished responses, kept so that a rerun or a resumed run never pays for a call twice.
/// Implemented by the store; the model layer only sees this trait.
pub trait ResponseCache: Send + Sync {
    /// A lookup fast enough to run on the async worker (a primary-key read).
    fn get(&self, key: &str) -> Option<ChatResponse>;
    /// Stores an answer. The future resolves once the answer is durable (`true`) or could
    /// not be stored (`false`): a crash after it resolved cannot lose the answer. Writes may
    /// be grouped, so many calls share one commit.
    fn put(&self, key: &str, model: &str, role: ModelRole, response: &ChatResponse) -> BoxFuture<'static, bool>;
    /// Offers the writer of a run on the store at `store`: a cache that writes that same
    /// store sends its answers there from then on, to be committed with the run's journal by
    /// one connection, and returns true; `None` takes the offer back. Two writers on one
    /// store would take turns at its lock and empty each other's page cache at every commit.
    fn share_writer(&self, _store: &str, _writer: Option<CacheWriteRoute>) -> bool {
        false
    }
}

/// An answer on its way to a store writer, and who waits for it to be durable.
pub struct CacheWrite {
    pub key: String,
    pub model: String,
    pub role: ModelRole,
    pub response: ChatResponse,
    /// Told `true` once the answer is committed, `false` if it could not be.
    pub durable: tokio::sync::oneshot::Sender<bool>,
}

/// Where a cache may send its writes instead of writing them itself (see
/// [`ResponseCache::share_writer`]); gives the write back when that writer has stopped.
pub type CacheWriteRoute = Arc<dyn Fn(Box<CacheWrite>) -> Result<(), Box<CacheWrite>> + Send + Sync>;

/// The cache key of a call: everything that changes the answer — the provider (its id names
/// the model and base URL), the role, and the whole request (messages, tools, output format,
/// sampling settings including the seed). The engine derives seeds from the trial key, which
/// holds the epoch, so epochs never share an entry.
pub fn cache_key(provider: &str, role: ModelRole, request: &ChatRequest) -> String {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    hasher.update(provider.as_bytes());
    hasher.update([0]);
    hasher.update(role.as_str().as_bytes());
    hasher.update([0]);
    // Streamed into the hasher: the same bytes as `serde_json::to_vec`, without building them.
    let _ = serde_json::to_writer(HashWriter(&mut hasher), request);
    hex::encode(hasher.finalize())
}

/// Feeds serialised bytes straight into a hasher, without building the text first.
pub(crate) struct HashWriter<'a>(pub(crate) &'a mut sha2::Sha256);

impl std::io::Write for HashWriter<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        sha2::Digest::update(self.0, bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Timeouts and retries for one role's calls.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallPolicy {
    /// Limit on one attempt.
    pub timeout: Duration,
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    /// First backoff delay; it doubles per retry, with jitter, up to `max_delay`.
    pub min_delay: Duration,
    pub max_delay: Duration,
}

impl Default for CallPolicy {
    fn default() -> Self {
        CallPolicy {
            // Generous: the embedded model on two cores needs tens of seconds for a long prompt.
            timeout: Duration::from_secs(600),
            max_attempts: 4,
            min_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(60),
        }
    }
}

/// One attempt that failed before the call's final result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FailedAttempt {
    pub error: ModelError,
    pub latency_ms: u64,
}

/// The journal entry for one model call: what was asked, what came back, and what it cost.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelCall {
    pub role: ModelRole,
    pub model: String,
    pub request: ChatRequest,
    pub result: Result<ChatResponse, ModelError>,
    /// Attempts that failed and were retried (empty when the first attempt answered).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed_attempts: Vec<FailedAttempt>,
    /// Wall time of the whole call, retries and backoff included.
    pub latency_ms: u64,
    /// Served from the response cache: nothing was sent, nothing was paid.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cached: bool,
    /// The response cache's key, when the cache durably holds this call's response (the
    /// store then keeps the response once, in the cache, and refers to it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_key: Option<String>,
}

impl ModelCall {
    pub fn usage(&self) -> Usage {
        self.result.as_ref().map(|response| response.usage).unwrap_or_default()
    }
}

/// Token totals of one model in one role.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Accounting {
    pub calls: u64,
    /// Calls answered from the response cache (included in `calls`, not in `usage`).
    pub cached_calls: u64,
    pub failed_calls: u64,
    pub retries: u64,
    pub usage: Usage,
}

/// A provider in a role, with the policy every call of that role goes through.
pub struct Model {
    provider: Arc<dyn ChatModel>,
    role: ModelRole,
    policy: CallPolicy,
    cache: Option<Arc<dyn ResponseCache>>,
    limit: Option<Arc<limit::AdaptiveLimit>>,
    accounting: Mutex<Accounting>,
}

impl fmt::Debug for Model {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Model").field("id", &self.provider.id()).field("role", &self.role).finish()
    }
}

impl Model {
    pub fn new(provider: Arc<dyn ChatModel>, role: ModelRole, policy: CallPolicy) -> Self {
        Model { provider, role, policy, cache: None, limit: None, accounting: Mutex::new(Accounting::default()) }
    }

    /// Bounds this model's calls in flight by an adaptive limit (shared per endpoint and role).
    pub fn with_limit(mut self, limit: Arc<limit::AdaptiveLimit>) -> Self {
        self.limit = Some(limit);
        self
    }

    /// Serves repeated calls from `cache` and records every finished call in it.
    pub fn with_cache(mut self, cache: Arc<dyn ResponseCache>) -> Self {
        self.cache = Some(cache);
        self
    }

    /// The response cache this model reads and writes, if any.
    pub(crate) fn cache(&self) -> Option<&Arc<dyn ResponseCache>> {
        self.cache.as_ref()
    }

    pub fn id(&self) -> &str {
        self.provider.id()
    }

    pub fn role(&self) -> ModelRole {
        self.role
    }

    pub fn accounting(&self) -> Accounting {
        *self.accounting.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Makes one call under the policy. Never fails: a call that could not be completed
    /// is returned with its error so the trial can record it.
    pub async fn call(&self, request: ChatRequest, context: CallContext) -> ModelCall {
        let span = tracing::info_span!("model_call", role = %self.role, model = self.provider.id(), turn = context.turn);
        self.call_inner(request, context).instrument(span).await
    }

    async fn call_inner(&self, request: ChatRequest, context: CallContext) -> ModelCall {
        let cache = self.cache.as_ref().filter(|_| self.provider.cacheable());
        let key = cache.map(|_| cache_key(self.provider.id(), self.role, &request));
        if let (Some(cache), Some(key)) = (cache, &key)
            && let Some(response) = cache.get(key)
        {
            {
                let mut accounting = self.accounting.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                accounting.calls += 1;
                accounting.cached_calls += 1;
                return ModelCall {
                    role: self.role,
                    model: self.provider.id().to_owned(),
                    request,
                    result: Ok(response),
                    failed_attempts: Vec::new(),
                    latency_ms: 0,
                    cached: true,
                    cache_key: Some(key.clone()),
                };
            }
        }
        let started = Instant::now();
        let failed_attempts = Mutex::new(Vec::new());
        let backoff = ExponentialBuilder::default()
            .with_min_delay(self.policy.min_delay)
            .with_max_delay(self.policy.max_delay)
            .with_max_times(self.policy.max_attempts.saturating_sub(1) as usize)
            .with_jitter();
        let attempt = || async {
            let _slot = match &self.limit {
                Some(limit) => Some(limit.acquire().await),
                None => None,
            };
            let attempt_started = Instant::now();
            let outcome = match tokio::time::timeout(
                self.policy.timeout,
                self.provider.chat(&request, &context),
            )
            .await
            {
                Ok(outcome) => outcome,
                Err(_) => Err(ModelError::new(
                    ModelErrorKind::Timeout,
                    format!("no answer within {} s", self.policy.timeout.as_secs()),
                )),
            };
            if let Some(limit) = &self.limit {
                match &outcome {
                    Ok(_) => limit.on_success(),
                    Err(error) if error.kind == ModelErrorKind::RateLimited => limit.on_rate_limited(),
                    Err(_) => {}
                }
            }
            if let Err(error) = &outcome {
                tracing::warn!(model = self.provider.id(), role = %self.role, %error, "model call failed");
                failed_attempts
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .push(FailedAttempt { error: error.clone(), latency_ms: millis(attempt_started) });
            }
            outcome
        };
        let result = attempt
            .retry(backoff)
            .sleep(tokio::time::sleep)
            .when(|error: &ModelError| error.kind.is_retryable())
            .adjust(|error: &ModelError, delay| match (error.retry_after, delay) {
                // Honour the provider's Retry-After, but stop when the backoff says stop.
                (Some(wait), Some(_)) => Some(wait),
                (_, delay) => delay,
            })
            .await;
        let mut failed_attempts = failed_attempts.into_inner().unwrap_or_else(|poisoned| poisoned.into_inner());
        if result.is_err() {
            // The final error is the call's result, not a retried attempt.
            failed_attempts.pop();
        }
        let mut call = ModelCall {
            role: self.role,
            model: self.provider.id().to_owned(),
            request,
            result,
            failed_attempts,
            latency_ms: millis(started),
            cached: false,
            cache_key: None,
        };
        if let (Some(cache), Some(key), Ok(response)) = (cache, key, &call.result) {
            // Durable before the call returns: a crash after this point cannot lose the answer.
            if cache.put(&key, &call.model, self.role, response).await {
                call.cache_key = Some(key);
            }
        }
        let mut accounting = self.accounting.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        accounting.calls += 1;
        accounting.retries += call.failed_attempts.len() as u64;
        accounting.failed_calls += u64::from(call.result.is_err());
        accounting.usage += call.usage();
        call
    }
}

fn millis(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX)
}
