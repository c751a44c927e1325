//! `dilemma-mock`: a loopback OpenAI-compatible provider for testing the harness.
//!
//! It answers `POST /v1/chat/completions` deterministically (see [`reply`]): a call of one
//! offered tool, a document valid against a `json_schema` response format, or a short text,
//! with token counts. Around that it adds what real providers do to a harness and what the
//! harness must survive: latency, and faults injected at a rate with a seed (429 with
//! `Retry-After`, 500, a hang longer than any sane client timeout, a malformed JSON body, and
//! a body cut off mid-way with a `Content-Length` larger than what was sent).
//!
//! `GET /stats` counts requests, faults, and requests per distinct request body (SHA-256),
//! with how many of those were answered, so a test can prove that a call that was answered
//! was never sent again (resume, cache), and when the first request arrived and the last
//! answer left (Unix microseconds), so a benchmark can time a client's start-up and its
//! busy span. `POST /stats/reset` zeroes the counts.
//!
//! Start it in process with [`serve`], or run the `dilemma-mock` binary. It binds 127.0.0.1
//! only.

pub mod reply;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use reply::{Policy, ScriptStep};

/// A fault the mock can inject instead of an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Fault {
    /// HTTP 429 with `Retry-After`.
    RateLimit,
    /// HTTP 500.
    ServerError,
    /// No answer for [`MockConfig::hang`], then a 504.
    Hang,
    /// HTTP 200 whose body is not JSON.
    Malformed,
    /// HTTP 200 whose body stops half-way: the connection closes before `Content-Length`
    /// bytes were sent.
    Truncated,
}

impl Fault {
    pub const ALL: [Fault; 5] = [Fault::RateLimit, Fault::ServerError, Fault::Hang, Fault::Malformed, Fault::Truncated];

    /// The name used on the command line and in `/stats`.
    pub fn name(self) -> &'static str {
        match self {
            Fault::RateLimit => "rate_limit",
            Fault::ServerError => "server_error",
            Fault::Hang => "hang",
            Fault::Malformed => "malformed",
            Fault::Truncated => "truncated",
        }
    }
}

impl std::str::FromStr for Fault {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.trim() {
            "rate_limit" | "429" => Ok(Fault::RateLimit),
            "server_error" | "500" => Ok(Fault::ServerError),
            "hang" => Ok(Fault::Hang),
            "malformed" => Ok(Fault::Malformed),
            "truncated" => Ok(Fault::Truncated),
            other => Err(format!("unknown fault `{other}`; use rate_limit (429), server_error (500), hang, malformed or truncated")),
        }
    }
}

/// How the mock behaves.
#[derive(Debug, Clone, PartialEq)]
pub struct MockConfig {
    /// Port on 127.0.0.1; 0 picks a free one.
    pub port: u16,
    /// Every chat answer's time from the request's arrival (faults included; a hang then
    /// holds the request for [`MockConfig::hang`] more).
    pub latency: Duration,
    /// Share of chat requests that get a fault, 0.0 to 1.0.
    pub fault_rate: f64,
    /// Seeds the fault draw: the same seed and request order give the same faults.
    pub seed: u64,
    /// The faults drawn from (uniformly) when a request is picked for a fault.
    pub faults: Vec<Fault>,
    /// How a tool (and a schema branch) is picked.
    pub policy: Policy,
    /// How long a `hang` fault holds the request before giving up with a 504.
    pub hang: Duration,
    /// The `Retry-After` seconds of a 429.
    pub retry_after_secs: u64,
    /// Answers by the conversation's progress (see [`ScriptStep`]); empty: the policy alone.
    pub script: Vec<ScriptStep>,
}

impl Default for MockConfig {
    fn default() -> Self {
        MockConfig {
            port: 0,
            latency: Duration::ZERO,
            fault_rate: 0.0,
            seed: 0,
            faults: Fault::ALL.to_vec(),
            policy: Policy::Hash,
            // Longer than the harness's default 600 s call timeout.
            hang: Duration::from_secs(660),
            retry_after_secs: 1,
            script: Vec::new(),
        }
    }
}

/// Counts of one distinct request body.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BodyCount {
    /// Times this body was received.
    pub requests: u64,
    /// Times it was answered with a completion (not a fault).
    pub answered: u64,
}

/// What `GET /stats` returns.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Chat requests received.
    pub requests: u64,
    /// Chat requests answered with a completion.
    pub answered: u64,
    /// Chat requests whose body was not a JSON object (answered 400).
    pub bad_requests: u64,
    /// Injected faults by name (every fault kind is listed, zero or not).
    pub faults: BTreeMap<String, u64>,
    /// Counts per request body, keyed by the first 16 hex digits of its SHA-256.
    pub bodies: BTreeMap<String, BodyCount>,
    /// When the first chat request (since start or reset) arrived, in Unix microseconds.
    #[serde(default)]
    pub first_request_unix_us: Option<u64>,
    /// When the latest chat answer (a completion or a fault) was ready, in Unix microseconds.
    #[serde(default)]
    pub last_answer_unix_us: Option<u64>,
}

impl Stats {
    fn new() -> Self {
        Stats { faults: Fault::ALL.iter().map(|fault| (fault.name().to_owned(), 0)).collect(), ..Stats::default() }
    }

    /// The fault count of one kind.
    pub fn fault(&self, fault: Fault) -> u64 {
        self.faults.get(fault.name()).copied().unwrap_or(0)
    }
}

struct Shared {
    config: MockConfig,
    sequence: AtomicU64,
    stats: Mutex<Stats>,
    shutdown: watch::Receiver<bool>,
}

impl Shared {
    fn stats(&self) -> std::sync::MutexGuard<'_, Stats> {
        self.stats.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A running mock. Dropping it stops the server.
pub struct MockHandle {
    address: SocketAddr,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for MockHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockHandle").field("address", &self.address).field("config", &self.shared.config).finish()
    }
}

impl MockHandle {
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// The base URL an OpenAI-compatible client uses: `http://127.0.0.1:PORT/v1`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.address)
    }

    /// The current counts (the same as `GET /stats`).
    pub fn stats(&self) -> Stats {
        self.shared.stats().clone()
    }

    /// Zeroes the counts (the same as `POST /stats/reset`). The request sequence that the
    /// fault draw and the `cycle` policy use is not reset.
    pub fn reset_stats(&self) {
        *self.shared.stats() = Stats::new();
    }

    /// Stops the server: open connections are closed and hanging requests end.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let abort = task.abort_handle();
            if tokio::time::timeout(Duration::from_secs(5), task).await.is_err() {
                abort.abort();
            }
        }
    }
}

impl Drop for MockHandle {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Connections waiting to be accepted, at most (see [`serve`]).
pub const LISTEN_BACKLOG: u32 = 4096;

/// Starts the mock on 127.0.0.1 and returns its address and a handle that stops it.
pub async fn serve(config: MockConfig) -> std::io::Result<(SocketAddr, MockHandle)> {
    // The queue of connections the kernel completes before they are accepted. Tokio's
    // `TcpListener::bind` asks for 128, so a client opening hundreds of connections at once
    // overflows it, and every dropped handshake is retried only after TCP's one-second
    // timeout (`ListenOverflows` in `nstat`). Servers built for load ask for more (uvicorn
    // 2048, nginx 511); the kernel caps the request at `net.core.somaxconn`.
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(SocketAddr::from(([127, 0, 0, 1], config.port)))?;
    let listener = socket.listen(LISTEN_BACKLOG)?;
    let address = listener.local_addr()?;
    let (stop, shutdown) = watch::channel(false);
    let shared = Arc::new(Shared { config, sequence: AtomicU64::new(0), stats: Mutex::new(Stats::new()), shutdown });
    let app = Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/chat/completions", post(chat))
        .route("/v1/models", get(models))
        .route("/stats", get(stats))
        .route("/stats/reset", post(reset))
        .with_state(shared.clone());
    let mut signal = shared.shutdown.clone();
    let task = tokio::spawn(async move {
        let stopped = async move {
            let _ = signal.wait_for(|stop| *stop).await;
        };
        // Serving ends only on shutdown; an accept error is retried inside axum.
        let _ = axum::serve(listener, app).with_graceful_shutdown(stopped).await;
    });
    Ok((address, MockHandle { address, shared, stop, task: Some(task) }))
}

async fn models() -> Response {
    axum::Json(json!({"object": "list", "data": [{"id": "mock", "object": "model", "owned_by": "dilemma-mock"}]}))
        .into_response()
}

async fn stats(State(shared): State<Arc<Shared>>) -> Response {
    axum::Json(shared.stats().clone()).into_response()
}

async fn reset(State(shared): State<Arc<Shared>>) -> Response {
    let fresh = Stats::new();
    *shared.stats() = fresh.clone();
    axum::Json(fresh).into_response()
}

/// A splitmix64 step: a well-mixed 64-bit value from a counter, for the fault draw.
fn mix(mut value: u64) -> u64 {
    value = value.wrapping_add(0x9E37_79B9_7F4A_7C15);
    value = (value ^ (value >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    value = (value ^ (value >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    value ^ (value >> 31)
}

/// The fault (if any) for the request at this position: a pure function of the seed and the
/// position, so a run with the same seed and order sees the same faults.
pub fn fault_for(config: &MockConfig, sequence: u64) -> Option<Fault> {
    if config.faults.is_empty() || config.fault_rate <= 0.0 {
        return None;
    }
    let draw = mix(config.seed ^ mix(sequence));
    let unit = (draw >> 11) as f64 / (1u64 << 53) as f64;
    if unit >= config.fault_rate {
        return None;
    }
    let pick = mix(draw) % config.faults.len() as u64;
    Some(config.faults[pick as usize])
}

fn unix_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| u64::try_from(since.as_micros()).unwrap_or(u64::MAX))
}

fn error_response(status: StatusCode, kind: &str, message: &str) -> Response {
    (status, axum::Json(json!({"error": {"message": message, "type": kind, "code": kind}}))).into_response()
}

async fn chat(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    // The latency is the provider's time to answer, counted from the request's arrival: the
    // answer is built first and sent when the latency is up, as a server's own work falls
    // inside its response time. (Sleeping first and building after added the mock's own CPU,
    // queued behind the burst of requests that woke with it, to every call's latency.)
    let due = (!shared.config.latency.is_zero()).then(|| tokio::time::Instant::now() + shared.config.latency);
    let arrived = unix_micros();
    let sequence = shared.sequence.fetch_add(1, Ordering::SeqCst);
    let body_hash = reply::short_hash(&body);
    {
        let mut stats = shared.stats();
        stats.first_request_unix_us.get_or_insert(arrived);
        stats.requests += 1;
        stats.bodies.entry(body_hash.clone()).or_default().requests += 1;
    }
    if let Some(fault) = fault_for(&shared.config, sequence) {
        answer_at(due).await;
        *shared.stats().faults.entry(fault.name().to_owned()).or_default() += 1;
        let response = fault_response(&shared, fault).await;
        shared.stats().last_answer_unix_us = Some(unix_micros());
        return response;
    }
    let Some(request) = reply::ChatRequest::parse(&body) else {
        answer_at(due).await;
        let mut stats = shared.stats();
        stats.bad_requests += 1;
        stats.last_answer_unix_us = Some(unix_micros());
        return error_response(StatusCode::BAD_REQUEST, "invalid_request_error", "the request body is not a JSON object");
    };
    let answer = reply::chat_completion_scripted(&request, shared.config.policy, sequence, &shared.config.script);
    // Serialised now, before the wait, so that nothing but sending is left when it is up.
    let response = axum::Json(answer).into_response();
    answer_at(due).await;
    {
        let mut stats = shared.stats();
        stats.last_answer_unix_us = Some(unix_micros());
        stats.answered += 1;
        stats.bodies.entry(body_hash).or_default().answered += 1;
    }
    response
}

/// Waits until the call is due (see `chat`); at once without a latency.
async fn answer_at(due: Option<tokio::time::Instant>) {
    if let Some(due) = due {
        tokio::time::sleep_until(due).await;
    }
}

async fn fault_response(shared: &Shared, fault: Fault) -> Response {
    match fault {
        Fault::RateLimit => {
            let mut response = error_response(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_exceeded",
                "Rate limit reached for requests (injected by dilemma-mock)",
            );
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(shared.config.retry_after_secs));
            response
        }
        Fault::ServerError => error_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "The server had an error while processing your request (injected by dilemma-mock)",
        ),
        Fault::Hang => {
            let mut shutdown = shared.shutdown.clone();
            tokio::select! {
                _ = tokio::time::sleep(shared.config.hang) => {}
                _ = shutdown.wait_for(|stop| *stop) => {}
            }
            error_response(StatusCode::GATEWAY_TIMEOUT, "timeout", "gave up after hanging (injected by dilemma-mock)")
        }
        Fault::Malformed => (
            [(header::CONTENT_TYPE, "application/json")],
            r#"{"id": "chatcmpl-mock", "object": "chat.completion", "choices": [{"index": 0, "message": {"role": "assistant", "content": not json"#,
        )
            .into_response(),
        Fault::Truncated => {
            let full = json!({
                "id": "chatcmpl-mock-truncated",
                "object": "chat.completion",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "This reply is cut off half-way by dilemma-mock."}, "finish_reason": "stop"}],
            })
            .to_string();
            let half = Bytes::from(full.as_bytes()[..full.len() / 2].to_vec());
            // The first half, a pause (so that the head and the half reach the client), then an
            // error: hyper closes the connection with fewer bytes sent than Content-Length says.
            let cut = futures_util::stream::once(async {
                tokio::time::sleep(Duration::from_millis(50)).await;
                Err::<Bytes, _>(std::io::Error::new(std::io::ErrorKind::ConnectionAborted, "cut off by dilemma-mock"))
            });
            let chunks = futures_util::StreamExt::chain(futures_util::stream::iter([Ok(half)]), cut);
            let mut response = Response::new(Body::from_stream(chunks));
            let headers = response.headers_mut();
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(full.len()));
            response
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fault_draw_follows_rate_and_seed() {
        let config = MockConfig { fault_rate: 0.3, seed: 42, ..MockConfig::default() };
        let drawn: Vec<Option<Fault>> = (0..1000).map(|sequence| fault_for(&config, sequence)).collect();
        let faults = drawn.iter().filter(|fault| fault.is_some()).count();
        assert!((240..=360).contains(&faults), "{faults} faults in 1000 at rate 0.3");
        for kind in Fault::ALL {
            assert!(drawn.contains(&Some(kind)), "{kind:?} never drawn");
        }
        let again: Vec<Option<Fault>> = (0..1000).map(|sequence| fault_for(&config, sequence)).collect();
        assert_eq!(drawn, again);
        let other_seed = MockConfig { seed: 43, ..config.clone() };
        assert_ne!(drawn, (0..1000).map(|sequence| fault_for(&other_seed, sequence)).collect::<Vec<_>>());
        assert!((0..100).all(|sequence| fault_for(&MockConfig::default(), sequence).is_none()));
        let always = MockConfig { fault_rate: 1.0, faults: vec![Fault::Hang], ..MockConfig::default() };
        assert!((0..100).all(|sequence| fault_for(&always, sequence) == Some(Fault::Hang)));
    }

    #[test]
    fn fault_names_round_trip() {
        for fault in Fault::ALL {
            assert_eq!(fault.name().parse::<Fault>(), Ok(fault));
        }
        assert_eq!("429".parse::<Fault>(), Ok(Fault::RateLimit));
        assert!("teapot".parse::<Fault>().is_err());
    }
}
