//! What the three HTTP providers (`openai:`, `anthropic:`, `gemini:`) share: model specs,
//! API keys that never leak, one pooled client per provider instance (`model::http1` for
//! plain HTTP, reqwest for HTTPS and proxies), sending a JSON body and reading the reply, and
//! the rules that turn an HTTP status into a [`ModelErrorKind`].
//!
//! The adapters themselves (`model::openai`, `model::anthropic`, `model::gemini`) are pure
//! translators: `request_body` builds the exact wire JSON and `parse_response` reads a reply,
//! so both can be checked against recorded fixtures without a network. This module holds the
//! little IO they need, so that the rules below are written once:
//!
//! - **Keys come only from the environment** (`OPENAI_API_KEY`, `ANTHROPIC_API_KEY`,
//!   `GEMINI_API_KEY`) and live in an [`ApiKey`], whose `Debug` is redacted and which cannot be
//!   serialised or displayed. Keys travel in headers, never in URLs, and every error message
//!   and every raw reply is scrubbed of the key in case a server echoes it.
//! - **No retries, no request timeout here.** The `Model` wrapper owns timeouts and retries;
//!   the client only limits connecting (10 s), so a dead host fails fast as `Transient`.
//! - **Errors are classified**: 429 is `RateLimited` (with `Retry-After` in seconds or as an
//!   HTTP date); 408, 409, 425 and 5xx (529 included) are `Transient`; other 4xx are `Fatal`
//!   with the provider's own message; a 2xx body that is not JSON (malformed or cut short) is
//!   `Transient`; a connection refused, reset or timed out is `Transient`.
//! - **Refusals**: when a provider says its filter blocked the output (OpenAI
//!   `content_filter` or `refusal`, Anthropic `refusal`, Gemini `SAFETY` and kin) the finish
//!   reason is `ContentFilter`; when nothing usable came back at all it is a `Refused` error.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::chat::{ChatResponse, FinishReason};
use crate::model::{ChatModel, ModelError, ModelErrorKind};

/// The longest a provider may take to accept a TCP (and TLS) connection. Everything after
/// that is bounded by the `Model` wrapper's timeout, which is longer.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How much of a non-JSON error body goes into an error message.
const BODY_EXCERPT_CHARS: usize = 300;

/// What replaces a key wherever it would have appeared.
const REDACTED: &str = "[redacted]";

/// A provider API key. It can only be read inside the crate, to put it into a request header;
/// `Debug` shows `ApiKey([redacted])`, and there is no `Display` and no `Serialize`.
#[derive(Clone)]
pub struct ApiKey(String);

impl ApiKey {
    /// `None` for an empty or blank value, which counts as unset.
    pub fn new(key: impl Into<String>) -> Option<ApiKey> {
        let key = key.into().trim().to_owned();
        if key.is_empty() { None } else { Some(ApiKey(key)) }
    }

    pub(crate) fn expose(&self) -> &str {
        &self.0
    }

    /// `text` with every occurrence of the key replaced by `[redacted]`.
    pub fn redact(&self, text: &str) -> String {
        text.replace(&self.0, REDACTED)
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ApiKey({REDACTED})")
    }
}

/// The three wire formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    /// OpenAI chat completions, and everything that speaks it (vLLM, SGLang, Ollama's `/v1`,
    /// llama.cpp server, OpenRouter).
    OpenAi,
    /// Anthropic Messages.
    Anthropic,
    /// Google Gemini `generateContent`.
    Gemini,
}

impl Provider {
    pub fn prefix(self) -> &'static str {
        match self {
            Provider::OpenAi => "openai",
            Provider::Anthropic => "anthropic",
            Provider::Gemini => "gemini",
        }
    }

    /// The environment variable that holds this provider's key.
    pub fn key_variable(self) -> &'static str {
        match self {
            Provider::OpenAi => "OPENAI_API_KEY",
            Provider::Anthropic => "ANTHROPIC_API_KEY",
            Provider::Gemini => "GEMINI_API_KEY",
        }
    }

    fn from_prefix(prefix: &str) -> Option<Provider> {
        [Provider::OpenAi, Provider::Anthropic, Provider::Gemini].into_iter().find(|provider| provider.prefix() == prefix)
    }
}

/// A parsed `PROVIDER:MODEL[@BASE_URL][#OPTIONS]` spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpSpec {
    pub provider: Provider,
    pub model: String,
    /// The base URL given in the spec, checked and without a trailing slash.
    pub base_url: Option<String>,
    /// How JSON answers are asked for (`#json=MODE`, OpenAI-compatible servers only).
    pub json_mode: JsonMode,
    /// `#tool_choice=auto`: send `tool_choice: "auto"` instead of `"required"` (OpenAI-compatible
    /// servers only; llama-cpp-python's function-calling handler knows no `required`). A reply
    /// without a tool call is then re-asked like any other reply that breaks the protocol.
    pub tool_choice_auto: bool,
}

/// How an OpenAI-compatible server is asked for an answer that follows a JSON schema.
/// Servers differ here more than anywhere else, so the spec chooses: `#json=schema` (the
/// default), `#json=object` or `#json=none`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum JsonMode {
    /// `response_format: {type: json_schema, json_schema: {name, schema, strict: false}}`:
    /// OpenAI, vLLM, SGLang, Ollama, llama.cpp's `llama-server`.
    #[default]
    Schema,
    /// `response_format: {type: json_object, schema}`: llama-cpp-python's server, which
    /// answers `json_schema` with HTTP 500 but constrains `json_object` to the given schema.
    Object,
    /// No `response_format` at all: the answer shape is only in the prompt, and replies that
    /// do not parse are re-asked. For servers that accept neither.
    None,
}

impl JsonMode {
    /// The option's value as written in a spec.
    pub fn name(self) -> &'static str {
        match self {
            JsonMode::Schema => "schema",
            JsonMode::Object => "object",
            JsonMode::None => "none",
        }
    }

    fn parse(value: &str) -> Option<JsonMode> {
        [JsonMode::Schema, JsonMode::Object, JsonMode::None].into_iter().find(|mode| mode.name() == value)
    }
}

/// Whether a model spec names one of the HTTP providers.
pub fn is_http_spec(spec: &str) -> bool {
    spec.split_once(':').is_some_and(|(prefix, _)| Provider::from_prefix(prefix).is_some())
}

/// Parses `openai:MODEL`, `openai:MODEL@BASE_URL`, `anthropic:MODEL[@BASE_URL]` and
/// `gemini:MODEL[@BASE_URL]`. The base URL starts at the first `@http://` or `@https://`, so
/// a model name may contain `@` (for example `claude-x@20250101`). Options follow a `#`
/// (a URL fragment is never sent, so it cannot clash with a base URL): `#json=object`.
pub fn parse_spec(spec: &str) -> Result<HttpSpec, String> {
    let Some((prefix, rest)) = spec.split_once(':') else {
        return Err(format!("`{spec}` is not a model spec; write PROVIDER:MODEL, e.g. openai:gpt-4o-mini"));
    };
    let provider = Provider::from_prefix(prefix).ok_or_else(|| {
        format!("unknown HTTP provider `{prefix}` in `{spec}`; use openai:, anthropic: or gemini:")
    })?;
    let (rest, options) = match rest.split_once('#') {
        Some((rest, options)) => (rest, Some(options)),
        None => (rest, None),
    };
    let mut json_mode = JsonMode::default();
    let mut tool_choice_auto = false;
    for option in options.into_iter().flat_map(|options| options.split(',')) {
        match option.split_once('=') {
            Some((name @ ("json" | "tool_choice"), _)) if provider != Provider::OpenAi => {
                return Err(format!("`{spec}`: #{name}= is an option of openai: specs only"));
            }
            Some(("json", value)) => {
                json_mode = JsonMode::parse(value).ok_or_else(|| {
                    format!("`{spec}`: unknown json mode `{value}`; use #json=schema, #json=object or #json=none")
                })?;
            }
            Some(("tool_choice", value)) => {
                tool_choice_auto = match value {
                    "auto" => true,
                    "required" => false,
                    _ => return Err(format!("`{spec}`: unknown tool_choice `{value}`; use #tool_choice=required or auto")),
                };
            }
            _ => {
                return Err(format!(
                    "`{spec}`: unknown option `{option}`; options are #json=schema|object|none and \
                     #tool_choice=required|auto, separated by commas"
                ));
            }
        }
    }
    let split = ["@http://", "@https://"].iter().filter_map(|marker| rest.find(marker)).min();
    let (model, base_url) = match split {
        Some(at) => (&rest[..at], Some(check_base_url(&rest[at + 1..])?)),
        None => (rest, None),
    };
    let model = model.trim();
    if model.is_empty() {
        return Err(format!("`{spec}` names no model; write {prefix}:MODEL[@BASE_URL]"));
    }
    Ok(HttpSpec { provider, model: model.to_owned(), base_url, json_mode, tool_choice_auto })
}

/// Checks a base URL and drops its trailing slash. Credentials, queries and fragments are
/// refused: keys belong in environment variables, where they cannot end up in a model id.
pub fn check_base_url(base: &str) -> Result<String, String> {
    let trimmed = base.trim().trim_end_matches('/');
    let parsed = url::Url::parse(trimmed).map_err(|error| format!("base URL `{trimmed}` is not a URL: {error}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!("base URL `{trimmed}` must start with http:// or https://"));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err("a base URL must not carry credentials; put the key in the provider's API key variable".into());
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(format!("base URL `{}` must not have a query or fragment", parsed.host_str().unwrap_or("?")));
    }
    Ok(trimmed.to_owned())
}

/// Opens an HTTP provider from its spec, with keys and `OPENAI_BASE_URL` read from the
/// process environment. See [`parse_spec`] for the syntax.
pub fn open_http_model(spec: &str) -> Result<Arc<dyn ChatModel>, String> {
    open_http_model_with_env(spec, &|name| std::env::var(name).ok())
}

/// [`open_http_model`] with the environment given as a lookup function (for tests, which
/// must not change the process environment while other threads read it).
pub fn open_http_model_with_env(spec: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Arc<dyn ChatModel>, String> {
    let parsed = parse_spec(spec)?;
    let key = env(parsed.provider.key_variable()).and_then(ApiKey::new);
    let base_url = match (&parsed.base_url, parsed.provider) {
        (Some(base), _) => Some(base.clone()),
        (None, Provider::OpenAi) => {
            env("OPENAI_BASE_URL").filter(|base| !base.trim().is_empty()).map(|base| check_base_url(&base)).transpose()?
        }
        (None, _) => None,
    };
    let model: Arc<dyn ChatModel> = match parsed.provider {
        Provider::OpenAi => Arc::new(
            crate::model::openai::OpenAiModel::new(&parsed.model, base_url.as_deref(), key)?.with_wire_options(parsed.json_mode, parsed.tool_choice_auto),
        ),
        Provider::Anthropic => {
            let key = key.ok_or_else(|| missing_key(parsed.provider, spec))?;
            Arc::new(crate::model::anthropic::AnthropicModel::new(&parsed.model, base_url.as_deref(), key)?)
        }
        Provider::Gemini => {
            let key = key.ok_or_else(|| missing_key(parsed.provider, spec))?;
            Arc::new(crate::model::gemini::GeminiModel::new(&parsed.model, base_url.as_deref(), key)?)
        }
    };
    Ok(model)
}

fn missing_key(provider: Provider, spec: &str) -> String {
    let variable = provider.key_variable();
    format!("{variable} is not set: `{spec}` needs an API key; export it as {variable}")
}

/// The id a provider reports: `PROVIDER:MODEL` on the default base URL, and
/// `PROVIDER:MODEL@BASE_URL` on any other, since another server is another model.
pub(crate) fn model_id(provider: Provider, model: &str, base_url: &str, default_base: &str) -> String {
    if base_url == default_base {
        format!("{}:{model}", provider.prefix())
    } else {
        format!("{}:{model}@{base_url}", provider.prefix())
    }
}

/// How a request proves who it is.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Auth {
    /// `Authorization: Bearer KEY` when there is a key, nothing otherwise.
    Bearer,
    /// The key in this header.
    Header(&'static str),
}

/// An HTTP reply as read off the wire.
#[derive(Debug, Clone)]
pub(crate) struct HttpReply {
    pub status: u16,
    pub retry_after: Option<String>,
    pub body: String,
}

/// Where a provider lives and how to reach it: the pooled client, base URL and key.
pub(crate) struct Endpoint {
    pub id: String,
    pub base_url: String,
    api_key: Option<ApiKey>,
    transport: Transport,
}

/// How an endpoint's requests travel.
enum Transport {
    /// Plain HTTP, directly: `model::http1`, lean with many connections open at once.
    Direct(super::http1::Http1Client),
    /// HTTPS, or plain HTTP through a proxy set in the environment: reqwest.
    Pooled(reqwest::Client),
}

/// The variables through which reqwest routes plain HTTP through a proxy.
const HTTP_PROXY_VARIABLES: [&str; 4] = ["HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"];

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("id", &self.id)
            .field("base_url", &self.base_url)
            .field("api_key", &self.api_key.as_ref().map(|_| REDACTED))
            .finish_non_exhaustive()
    }
}

impl Endpoint {
    pub(crate) fn new(id: String, base_url: &str, api_key: Option<ApiKey>) -> Result<Endpoint, String> {
        let base_url = check_base_url(base_url)?;
        // A local server (vLLM, llama.cpp, the mock) is never reached through a proxy that
        // happens to be set in the environment; a remote plain-HTTP one is when one is set,
        // and reqwest knows the rules (`NO_PROXY` and the rest).
        let proxy_set = HTTP_PROXY_VARIABLES.iter().any(|name| std::env::var_os(name).is_some_and(|value| !value.is_empty()));
        let direct = is_loopback(&base_url) || !proxy_set;
        Endpoint::with_transport(id, base_url, api_key, direct)
    }

    /// An endpoint whose plain-HTTP requests go directly (`model::http1`) when `direct`, and
    /// through reqwest otherwise; HTTPS always goes through reqwest.
    fn with_transport(id: String, base_url: String, api_key: Option<ApiKey>, direct: bool) -> Result<Endpoint, String> {
        let user_agent = concat!("dilemma/", env!("CARGO_PKG_VERSION"));
        let direct = direct
            .then(|| url::Url::parse(&base_url).ok())
            .flatten()
            .and_then(|url| super::http1::Http1Client::for_url(&url, user_agent, CONNECT_TIMEOUT));
        let transport = match direct {
            Some(client) => Transport::Direct(client),
            None => {
                let mut builder = reqwest::Client::builder().connect_timeout(CONNECT_TIMEOUT).user_agent(user_agent);
                if is_loopback(&base_url) {
                    builder = builder.no_proxy();
                }
                let client = builder.build().map_err(|error| format!("cannot set up the HTTP client for {id}: {error}"))?;
                Transport::Pooled(client)
            }
        };
        Ok(Endpoint { id, base_url, api_key, transport })
    }

    /// `text` with the key scrubbed out.
    pub(crate) fn redact(&self, text: &str) -> String {
        match &self.api_key {
            Some(key) => key.redact(text),
            None => text.to_owned(),
        }
    }

    /// POSTs `body` to `url` and reads the whole reply. Fails only when no complete HTTP reply
    /// came back (connect, reset, cut-off body): those are `Transient`.
    ///
    /// Takes the body by value and serialises it before the first await: a `Value` tree of a
    /// long conversation is several times its text, and hundreds of calls wait on replies at
    /// once, so only the bytes may stay alive while waiting.
    pub(crate) async fn post_json(
        &self,
        url: &str,
        auth: Auth,
        headers: &[(&'static str, &'static str)],
        body: Value,
    ) -> Result<HttpReply, ModelError> {
        let bytes = serde_json::to_vec(&body)
            .map_err(|error| ModelError::fatal(format!("cannot encode the request for {}: {error}", self.id)))?;
        drop(body);
        self.post_bytes(url, auth, headers, bytes).await
    }

    /// [`Endpoint::post_json`] for a body already encoded as JSON.
    pub(crate) async fn post_bytes(
        &self,
        url: &str,
        auth: Auth,
        headers: &[(&'static str, &'static str)],
        bytes: Vec<u8>,
    ) -> Result<HttpReply, ModelError> {
        let key_header = match &self.api_key {
            Some(key) => {
                let (name, value) = match auth {
                    Auth::Bearer => ("authorization", format!("Bearer {}", key.expose())),
                    Auth::Header(name) => (name, key.expose().to_owned()),
                };
                let mut header = reqwest::header::HeaderValue::from_str(&value)
                    .map_err(|_| ModelError::fatal(format!("the API key for {} is not a valid header value", self.id)))?;
                header.set_sensitive(true);
                Some((name, value, header))
            }
            None => None,
        };
        match &self.transport {
            Transport::Direct(client) => {
                let target = url::Url::parse(url)
                    .map(|parsed| parsed[url::Position::BeforePath..url::Position::AfterQuery].to_owned())
                    .map_err(|error| ModelError::fatal(format!("{}: cannot send to {url}: {error}", self.id)))?;
                let mut all_headers: Vec<(&str, &str)> = headers.to_vec();
                if let Some((name, value, _)) = &key_header {
                    all_headers.push((name, value));
                }
                let reply = client.post(&target, &all_headers, bytes).await.map_err(|error| {
                    let message = format!("{}: {error}", self.id);
                    ModelError::new(ModelErrorKind::Transient, self.redact(&message))
                })?;
                Ok(HttpReply { status: reply.status, retry_after: reply.retry_after, body: utf8_lossy(reply.body) })
            }
            Transport::Pooled(client) => {
                let mut request = client
                    .post(url)
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    // A one-shot body rather than reqwest's reusable bytes: reqwest keeps a
                    // reusable body alive until the reply comes, in case a redirect asks for it
                    // again, and hundreds of requests wait at once (4.4 MB at 1,000 in flight
                    // in W1). API calls are not redirected, and retries are the Model's, which
                    // encodes the body anew.
                    .body(reqwest::Body::wrap(http_body_util::Full::new(bytes::Bytes::from(bytes))));
                for (name, value) in headers {
                    request = request.header(*name, *value);
                }
                if let Some((name, _, header)) = key_header {
                    request = request.header(name, header);
                }
                let response = request.send().await.map_err(|error| self.network_error("sending the request", error))?;
                let status = response.status().as_u16();
                let retry_after = response
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|value| value.to_str().ok())
                    .map(str::to_owned);
                let bytes = response.bytes().await.map_err(|error| self.network_error("reading the reply", error))?;
                Ok(HttpReply { status, retry_after, body: utf8_lossy(Vec::from(bytes)) })
            }
        }
    }

    /// Turns a reply into a response (2xx) or a classified error, with the key scrubbed from
    /// both and `raw` set to the exact body text.
    pub(crate) fn finish(
        &self,
        reply: HttpReply,
        classify: fn(u16, Option<&str>, &str) -> ModelError,
        parse: impl FnOnce(&Value) -> Result<ChatResponse, ModelError>,
    ) -> Result<ChatResponse, ModelError> {
        let body = self.redact(&reply.body);
        let result = if (200..300).contains(&reply.status) {
            parse_body(&body, parse)
        } else {
            Err(classify(reply.status, reply.retry_after.as_deref(), &body))
        };
        result.map_err(|mut error| {
            error.message = self.redact(&error.message);
            error
        })
    }

    fn network_error(&self, doing: &str, error: reqwest::Error) -> ModelError {
        // `without_url` keeps any URL (and so anything in it) out of the message.
        let kind = if error.is_builder() { ModelErrorKind::Fatal } else { ModelErrorKind::Transient };
        let error = error.without_url();
        let what = if error.is_connect() {
            "cannot connect"
        } else if error.is_timeout() {
            "timed out"
        } else if error.is_body() || error.is_decode() {
            "the reply was cut off"
        } else {
            "the request failed"
        };
        let message = format!("{}: {what} while {doing}: {}", self.id, error_chain(&error));
        ModelError::new(kind, self.redact(&message))
    }
}

/// A reply body as text; bytes that are not UTF-8 become U+FFFD (copied only then).
fn utf8_lossy(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).unwrap_or_else(|error| String::from_utf8_lossy(error.as_bytes()).into_owned())
}

/// An error and its causes, `a: b: c`, so that "connection refused" is not hidden behind
/// "error sending request".
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut parts = vec![error.to_string()];
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !parts.iter().any(|part| part.contains(&text)) {
            parts.push(text);
        }
        source = cause.source();
    }
    parts.join(": ")
}

fn is_loopback(base_url: &str) -> bool {
    url::Url::parse(base_url).ok().is_some_and(|url| match url.host() {
        Some(url::Host::Domain(domain)) => domain == "localhost",
        Some(url::Host::Ipv4(address)) => address.is_loopback(),
        Some(url::Host::Ipv6(address)) => address.is_loopback(),
        None => false,
    })
}

/// Parses a 2xx body: JSON that does not parse (malformed, or cut short by a dropped
/// connection) is `Transient`, since asking again may well work. `raw` is the body text.
pub fn parse_body(
    body: &str,
    parse: impl FnOnce(&Value) -> Result<ChatResponse, ModelError>,
) -> Result<ChatResponse, ModelError> {
    let value: Value = serde_json::from_str(body).map_err(|error| {
        ModelError::new(
            ModelErrorKind::Transient,
            format!("the reply is not valid JSON ({error}); it starts with: {}", excerpt(body)),
        )
    })?;
    let mut response = parse(&value)?;
    response.raw = Some(body.to_owned());
    Ok(response)
}

/// The kind an HTTP error status stands for, before any provider-specific refinement.
pub fn kind_for_status(status: u16) -> ModelErrorKind {
    match status {
        429 => ModelErrorKind::RateLimited,
        408 | 409 | 425 | 500..=599 => ModelErrorKind::Transient,
        _ => ModelErrorKind::Fatal,
    }
}

/// A classified HTTP error: the status's kind, `Retry-After` when the server sent one, and a
/// message naming the status and the provider's own words.
pub(crate) fn status_error(status: u16, retry_after_header: Option<&str>, body: &str, hint: &str) -> ModelError {
    let mut error = ModelError::new(kind_for_status(status), format!("HTTP {status}: {}{hint}", body_message(body)));
    error.retry_after = retry_after_header.and_then(|value| parse_retry_after(value, SystemTime::now()));
    error
}

/// The provider's error message in a body: `error.message` (OpenAI, Anthropic, Gemini),
/// `error` as a string (Ollama), `detail` or `message` (other compatible servers), else an
/// excerpt of the body itself.
pub fn body_message(body: &str) -> String {
    let value: Option<Value> = serde_json::from_str(body).ok();
    let found = value.as_ref().and_then(|value| {
        [
            value.pointer("/error/message"),
            value.get("error").filter(|error| error.is_string()),
            value.get("detail"),
            value.get("message"),
        ]
        .into_iter()
        .flatten()
        .find_map(|text| match text {
            Value::String(text) if !text.trim().is_empty() => Some(text.trim().to_owned()),
            Value::Null | Value::String(_) => None,
            other => Some(other.to_string()),
        })
    });
    found.unwrap_or_else(|| if body.trim().is_empty() { "(empty body)".to_owned() } else { excerpt(body) })
}

fn excerpt(body: &str) -> String {
    let flat: String = body.trim().chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    if flat.chars().count() > BODY_EXCERPT_CHARS {
        format!("{}…", flat.chars().take(BODY_EXCERPT_CHARS).collect::<String>())
    } else {
        flat
    }
}

/// A `Retry-After` value: delay seconds (`120`, or `1.5` as some servers send) or an HTTP
/// date (`Wed, 21 Oct 2026 07:28:00 GMT`), measured from `now`. A date in the past is zero.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<f64>() {
        return (seconds.is_finite() && seconds >= 0.0).then(|| Duration::from_secs_f64(seconds));
    }
    let at = parse_http_date(value)?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Parses the IMF-fixdate form of an HTTP date (RFC 9110 §5.6.7), the one servers must send.
fn parse_http_date(value: &str) -> Option<SystemTime> {
    // "Sun, 06 Nov 1994 08:49:37 GMT"
    let rest = value.split_once(", ")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let [day, month, year, time, zone] = fields.as_slice() else { return None };
    if *zone != "GMT" {
        return None;
    }
    const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let month = MONTHS.iter().position(|name| name == month)? as i64 + 1;
    let day: i64 = day.parse().ok()?;
    let year: i64 = year.parse().ok()?;
    let clock: Vec<i64> = time.split(':').map(|part| part.parse().ok()).collect::<Option<_>>()?;
    let [hour, minute, second] = clock.as_slice() else { return None };
    if !(1..=31).contains(&day) || *hour > 23 || *minute > 59 || *second > 60 {
        return None;
    }
    let seconds = days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second;
    Some(UNIX_EPOCH + Duration::from_secs(u64::try_from(seconds).ok()?))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let day_of_year = (153 * (month + if month > 2 { -3 } else { 9 }) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// A JSON number for an `f32` setting as people write it (`0.7`, not `0.699999988079071`).
pub(crate) fn float_value(value: f32) -> Value {
    value.to_string().parse::<f64>().ok().and_then(serde_json::Number::from_f64).map(Value::Number).unwrap_or(Value::Null)
}

/// Tool arguments as the JSON text OpenAI's wire format wants. A string is already the text
/// the model wrote (a malformed call kept for the record), so it goes back as it was.
pub(crate) fn arguments_text(arguments: &Value) -> String {
    match arguments {
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

/// Tool arguments as the JSON object Anthropic and Gemini want: an object as is, a string
/// holding an object parsed, anything else (a malformed call) as `{}`.
pub(crate) fn arguments_object(arguments: &Value) -> Value {
    match arguments {
        Value::Object(_) => arguments.clone(),
        Value::String(text) => match serde_json::from_str::<Value>(text) {
            Ok(object @ Value::Object(_)) => object,
            _ => Value::Object(Default::default()),
        },
        _ => Value::Object(Default::default()),
    }
}

/// Arguments read from JSON text: blank is `{}` (a call with no arguments), text that does
/// not parse stays a string so the malformed call can be reported rather than dropped.
pub(crate) fn parse_arguments_text(text: &str) -> Value {
    if text.trim().is_empty() {
        return Value::Object(Default::default());
    }
    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_owned()))
}

/// A stable id for a tool call the provider sent without one: a hash of what identifies it,
/// so the same reply always gets the same id (cached replays stay identical).
pub(crate) fn generated_call_id(parts: &[&str]) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part.as_bytes());
        hasher.update([0]);
    }
    format!("call_{}", &hex::encode(hasher.finalize())[..24])
}

/// The refusal rule shared by the adapters: a filtered reply with something usable in it is
/// kept (finish reason `ContentFilter`); one with nothing in it is a `Refused` error.
pub(crate) fn apply_filter(response: ChatResponse, filtered: bool, why: &str) -> Result<ChatResponse, ModelError> {
    if !filtered {
        return Ok(response);
    }
    if response.content.trim().is_empty() && response.tool_calls.is_empty() {
        return Err(ModelError::new(ModelErrorKind::Refused, why.to_owned()));
    }
    Ok(ChatResponse { finish_reason: FinishReason::ContentFilter, ..response })
}

/// Appends content blocks for a role, merging into the previous entry when the role is the
/// same: Anthropic and Gemini want one turn per role, with all tool results of a turn together.
pub(crate) fn push_blocks(turns: &mut Vec<(&'static str, Vec<Value>)>, role: &'static str, blocks: Vec<Value>) {
    if blocks.is_empty() {
        return;
    }
    match turns.last_mut() {
        Some((last_role, last_blocks)) if *last_role == role => last_blocks.extend(blocks),
        _ => turns.push((role, blocks)),
    }
}

/// A request body as JSON bytes of exactly its length. Serialised into a buffer each thread
/// keeps (then copied once), because `serde_json::to_vec` starts small and doubles, so a
/// conversation of a few kilobytes was copied six times as it grew. A buffer that a rare
/// huge body grew past [`KEPT_BODY_BUFFER`] is given back.
pub(crate) fn json_body<T: serde::Serialize + ?Sized>(value: &T) -> serde_json::Result<Vec<u8>> {
    thread_local! {
        static BUFFER: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    BUFFER.with_borrow_mut(|buffer| {
        buffer.clear();
        let written = serde_json::to_writer(&mut *buffer, value).map(|()| buffer.as_slice().to_vec());
        if buffer.capacity() > KEPT_BODY_BUFFER {
            *buffer = Vec::new();
        }
        written
    })
}

/// The largest body buffer a thread keeps between requests (see [`json_body`]).
const KEPT_BODY_BUFFER: usize = 1 << 20;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_json_body_is_the_same_bytes_as_to_vec_whatever_came_before_it() {
        let small = serde_json::json!({"model": "m", "messages": [{"role": "user", "content": "héllo \"quoted\""}]});
        let huge = serde_json::json!({"content": "x".repeat(KEPT_BODY_BUFFER + 10)});
        for value in [&small, &huge, &small] {
            let body = json_body(value).unwrap();
            assert_eq!(body, serde_json::to_vec(value).unwrap());
            assert_eq!(body.capacity(), body.len(), "the body holds no spare room");
        }
    }

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        let now = UNIX_EPOCH + Duration::from_secs(784_111_777); // Sun, 06 Nov 1994 08:49:37 GMT
        assert_eq!(parse_retry_after("7", now), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after(" 1.5 ", now), Some(Duration::from_millis(1500)));
        assert_eq!(parse_retry_after("Sun, 06 Nov 1994 08:50:07 GMT", now), Some(Duration::from_secs(30)));
        assert_eq!(parse_retry_after("Sun, 06 Nov 1994 08:00:00 GMT", now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("Tue, 29 Feb 2028 00:00:00 GMT", UNIX_EPOCH), Some(Duration::from_secs(1_835_395_200)));
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-3", now), None);
    }

    #[test]
    fn specs_split_model_and_base_url() {
        let spec = parse_spec("openai:qwen2.5@http://127.0.0.1:8000/v1/").unwrap();
        assert_eq!(spec.provider, Provider::OpenAi);
        assert_eq!(spec.model, "qwen2.5");
        assert_eq!(spec.base_url.as_deref(), Some("http://127.0.0.1:8000/v1"));
        let spec = parse_spec("anthropic:claude-x@20250101").unwrap();
        assert_eq!((spec.model.as_str(), spec.base_url), ("claude-x@20250101", None));
        assert!(parse_spec("openai:").unwrap_err().contains("names no model"));
        assert!(parse_spec("cohere:x").unwrap_err().contains("unknown HTTP provider"));
        assert!(parse_spec("openai:m@http://user:pw@host/v1").unwrap_err().contains("credentials"));
        assert!(parse_spec("openai:m@http://host/v1?key=1").unwrap_err().contains("query"));
        assert_eq!(parse_spec("openai:m@http://host/v1#json=object").unwrap().json_mode, JsonMode::Object);
        assert_eq!(parse_spec("openai:m#json=none").unwrap().json_mode, JsonMode::None);
        assert_eq!(parse_spec("openai:m@http://host/v1").unwrap().json_mode, JsonMode::Schema);
        assert!(parse_spec("openai:m#json=grammar").unwrap_err().contains("unknown json mode `grammar`"));
        assert!(parse_spec("anthropic:m#json=object").unwrap_err().contains("openai: specs only"));
        assert!(parse_spec("openai:m#temp=1").unwrap_err().contains("unknown option `temp=1`"));
        let both = parse_spec("openai:m@http://host/v1#json=object,tool_choice=auto").unwrap();
        assert!(both.tool_choice_auto && both.json_mode == JsonMode::Object);
        assert!(parse_spec("openai:m#tool_choice=any").unwrap_err().contains("unknown tool_choice `any`"));
        assert!(parse_spec("gemini:m#tool_choice=auto").unwrap_err().contains("openai: specs only"));
        assert!(is_http_spec("gemini:gemini-2.5-flash") && !is_http_spec("local:smollm2"));
    }

    #[test]
    fn floats_are_written_as_people_write_them() {
        assert_eq!(float_value(0.7).to_string(), "0.7");
        assert_eq!(float_value(1.0).to_string(), "1.0");
    }

    #[test]
    fn keys_do_not_show_in_debug() {
        let key = ApiKey::new("sk-secret-123").unwrap();
        assert_eq!(format!("{key:?}"), "ApiKey([redacted])");
        assert_eq!(key.redact("echo sk-secret-123!"), "echo [redacted]!");
        assert!(ApiKey::new("  ").is_none());
    }

    #[test]
    fn plain_http_goes_directly_unless_a_proxy_applies_and_https_goes_through_reqwest() {
        let direct = |base: &str, direct: bool| {
            let endpoint = Endpoint::with_transport("t".into(), check_base_url(base).unwrap(), None, direct).unwrap();
            matches!(endpoint.transport, Transport::Direct(_))
        };
        assert!(direct("http://127.0.0.1:8000/v1", true));
        assert!(direct("http://gpu-box:8000/v1", true));
        assert!(!direct("http://gpu-box:8000/v1", false), "a proxy set in the environment applies");
        assert!(!direct("https://api.openai.com/v1", true));
    }

    /// A server on loopback that answers one request with `reply` and hands back what it read.
    fn answer_once(reply: &'static str) -> (String, std::sync::mpsc::Receiver<String>) {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut seen = Vec::new();
            let mut chunk = [0u8; 4096];
            while !String::from_utf8_lossy(&seen).contains("\r\n\r\n{}") {
                let read = stream.read(&mut chunk).unwrap();
                if read == 0 {
                    break;
                }
                seen.extend_from_slice(&chunk[..read]);
            }
            stream.write_all(reply.as_bytes()).unwrap();
            sender.send(String::from_utf8_lossy(&seen).into_owned()).unwrap();
        });
        (base, receiver)
    }

    #[tokio::test]
    async fn both_transports_send_the_same_request_and_read_the_same_reply() {
        const REPLY: &str = "HTTP/1.1 429 Busy\r\nretry-after: 3\r\ncontent-length: 8\r\nconnection: close\r\n\r\n{\"x\":\u{e9}}";
        for direct in [true, false] {
            let (base, seen) = answer_once(REPLY);
            let endpoint = Endpoint::with_transport("t".into(), base.clone(), ApiKey::new("k-9"), direct).unwrap();
            let url = format!("{base}/v1/messages");
            let reply = endpoint.post_bytes(&url, Auth::Header("x-api-key"), &[("anthropic-version", "1")], b"{}".to_vec()).await.unwrap();
            assert_eq!(
                (reply.status, reply.retry_after.as_deref(), reply.body.as_str()),
                (429, Some("3"), "{\"x\":\u{e9}}"),
                "direct: {direct}"
            );
            let request = seen.recv().unwrap();
            assert!(request.starts_with("POST /v1/messages HTTP/1.1\r\n"), "{request}");
            for line in ["content-type: application/json\r\n", "x-api-key: k-9\r\n", "anthropic-version: 1\r\n", "content-length: 2\r\n"] {
                assert!(request.contains(line), "direct: {direct}, {line:?} missing from {request}");
            }
        }
    }

    #[tokio::test]
    async fn a_key_that_cannot_be_a_header_is_refused_before_sending() {
        let endpoint = Endpoint::with_transport("t".into(), "http://127.0.0.1:9".into(), ApiKey::new("k\n1"), true).unwrap();
        let error = endpoint.post_bytes("http://127.0.0.1:9/v1", Auth::Bearer, &[], b"{}".to_vec()).await.unwrap_err();
        assert_eq!((error.kind, error.message.as_str()), (ModelErrorKind::Fatal, "the API key for t is not a valid header value"));
    }
}
