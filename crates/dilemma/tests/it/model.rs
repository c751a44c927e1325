//! The `Model` wrapper's policy: retries, timeouts, accounting and the response cache.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use dilemma::chat::{ChatRequest, ChatResponse, OutputFormat, Sampling, Usage};
use dilemma::model::{BoxFuture, CallContext, CallPolicy, ChatModel, Model, ModelError, ModelErrorKind, ModelRole, ResponseCache};
use dilemma::store::StoreCache;

/// Fails with the given errors first, then answers; counts every call it receives.
struct Flaky {
    failures: Vec<ModelError>,
    calls: AtomicU32,
    hang: Option<Duration>,
}

impl Flaky {
    fn new(failures: Vec<ModelError>) -> Arc<Flaky> {
        Arc::new(Flaky { failures, calls: AtomicU32::new(0), hang: None })
    }
    fn count(&self) -> u32 {
        self.calls.load(Ordering::SeqCst)
    }
}

impl ChatModel for Flaky {
    fn id(&self) -> &str {
        "flaky:test"
    }
    fn chat<'a>(&'a self, _request: &'a ChatRequest, _context: &'a CallContext) -> BoxFuture<'a, Result<ChatResponse, ModelError>> {
        Box::pin(async move {
            let index = self.calls.fetch_add(1, Ordering::SeqCst) as usize;
            if let Some(hang) = self.hang {
                tokio::time::sleep(hang).await;
            }
            match self.failures.get(index) {
                Some(error) => Err(error.clone()),
                None => Ok(ChatResponse {
                    content: "answer".into(),
                    usage: Usage { prompt_tokens: 10, completion_tokens: 2 },
                    ..ChatResponse::default()
                }),
            }
        })
    }
}

fn request(text: &str) -> ChatRequest {
    ChatRequest {
        messages: vec![dilemma::chat::Message::user(text)],
        tools: Default::default(),
        output: OutputFormat::Text,
        sampling: Sampling { temperature: 0.0, max_tokens: 16, seed: Some(7) },
    }
}

fn context() -> CallContext {
    CallContext { role: ModelRole::Agent, trial: "t".into(), turn: 1, call_index: 0 }
}

fn fast_policy(attempts: u32) -> CallPolicy {
    CallPolicy { timeout: Duration::from_secs(5), max_attempts: attempts, min_delay: Duration::from_millis(1), max_delay: Duration::from_millis(5) }
}

fn transient() -> ModelError {
    ModelError::new(ModelErrorKind::Transient, "HTTP 500")
}

#[tokio::test]
async fn transient_failures_are_retried_and_recorded() {
    let provider = Flaky::new(vec![transient(), ModelError { retry_after: Some(Duration::from_millis(20)), ..ModelError::new(ModelErrorKind::RateLimited, "429") }]);
    let model = Model::new(provider.clone(), ModelRole::Agent, fast_policy(4));
    let started = std::time::Instant::now();
    let call = model.call(request("hi"), context()).await;
    assert_eq!(call.result.as_ref().unwrap().content, "answer");
    assert_eq!(call.failed_attempts.len(), 2);
    assert_eq!(call.failed_attempts[1].error.kind, ModelErrorKind::RateLimited);
    assert!(started.elapsed() >= Duration::from_millis(20), "Retry-After was not honoured");
    assert_eq!(provider.count(), 3);
    let accounting = model.accounting();
    assert_eq!((accounting.calls, accounting.retries, accounting.failed_calls), (1, 2, 0));
    assert_eq!(accounting.usage, Usage { prompt_tokens: 10, completion_tokens: 2 });
}

#[tokio::test]
async fn fatal_errors_are_not_retried_and_attempts_are_bounded() {
    let fatal = Flaky::new(vec![ModelError::fatal("HTTP 401: bad key")]);
    let call = Model::new(fatal.clone(), ModelRole::Agent, fast_policy(4)).call(request("hi"), context()).await;
    assert_eq!(call.result.unwrap_err().kind, ModelErrorKind::Fatal);
    assert_eq!(fatal.count(), 1);

    let always = Flaky::new(vec![transient(); 10]);
    let model = Model::new(always.clone(), ModelRole::Agent, fast_policy(3));
    let call = model.call(request("hi"), context()).await;
    assert!(call.result.is_err());
    assert_eq!(always.count(), 3);
    assert_eq!(call.failed_attempts.len(), 2, "the final error is the result, not a retried attempt");
    assert_eq!(model.accounting().failed_calls, 1);
}

#[tokio::test]
async fn a_hanging_provider_times_out() {
    let provider = Arc::new(Flaky { failures: Vec::new(), calls: AtomicU32::new(0), hang: Some(Duration::from_secs(30)) });
    let policy = CallPolicy { timeout: Duration::from_millis(30), ..fast_policy(2) };
    let call = Model::new(provider.clone(), ModelRole::Agent, policy).call(request("hi"), context()).await;
    assert_eq!(call.result.unwrap_err().kind, ModelErrorKind::Timeout);
    assert_eq!(provider.count(), 2);
}

#[tokio::test]
async fn finished_calls_are_served_from_the_cache_even_after_a_restart() {
    let folder = tempfile::tempdir().unwrap();
    let path = folder.path().join("store.sqlite");
    let provider = Flaky::new(Vec::new());
    {
        let cache: Arc<dyn ResponseCache> = Arc::new(StoreCache::open(&path).unwrap());
        let model = Model::new(provider.clone(), ModelRole::Agent, fast_policy(1)).with_cache(cache);
        let first = model.call(request("hi"), context()).await;
        assert!(!first.cached);
        let second = model.call(request("hi"), context()).await;
        assert!(second.cached);
        assert_eq!(second.result.unwrap().content, "answer");
        assert_eq!(provider.count(), 1);
        let accounting = model.accounting();
        assert_eq!((accounting.calls, accounting.cached_calls), (2, 1));
        assert_eq!(accounting.usage.prompt_tokens, 10, "cached calls cost nothing");
    }
    // A new process (a resumed run) opens the same store: still no call.
    let cache = StoreCache::open(&path).unwrap();
    assert_eq!(cache.len(), 1);
    let model = Model::new(provider.clone(), ModelRole::Agent, fast_policy(1)).with_cache(Arc::new(cache));
    assert!(model.call(request("hi"), context()).await.cached);
    // Anything that changes the answer misses: the text, the seed, the role.
    assert!(!model.call(request("hello"), context()).await.cached);
    let mut reseeded = request("hi");
    reseeded.sampling.seed = Some(8);
    assert!(!model.call(reseeded, context()).await.cached);
    assert_eq!(provider.count(), 3);
}

#[tokio::test]
async fn failures_are_not_cached() {
    let folder = tempfile::tempdir().unwrap();
    let cache: Arc<dyn ResponseCache> = Arc::new(StoreCache::open(&folder.path().join("s.sqlite")).unwrap());
    let provider = Flaky::new(vec![ModelError::fatal("no")]);
    let model = Model::new(provider.clone(), ModelRole::Agent, fast_policy(1)).with_cache(cache);
    assert!(model.call(request("hi"), context()).await.result.is_err());
    let retry = model.call(request("hi"), context()).await;
    assert!(!retry.cached && retry.result.is_ok());
    assert_eq!(provider.count(), 2);
}
