//! The llama.cpp side: the process-wide backend, one loaded model with its llama context,
//! prompt evaluation with KV cache prefix reuse, and the (optionally constrained) sampling
//! loop.
//!
//! Everything here is blocking and CPU-bound; `LocalModel` runs it on tokio's blocking pool.
//! One context per model is guarded by a mutex, so calls to one `LocalModel` run one at a
//! time, each seeing the KV cache the previous call left behind.

use std::num::NonZeroU32;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::Instant;

use dilemma::chat::{ChatRequest, ChatResponse, FinishReason, OutputFormat, Sampling, ToolCall, Usage};
use dilemma::model::{ModelError, ModelErrorKind};
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::{LlamaChatMessage, LlamaChatTemplate, LlamaModel};
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;
use llama_cpp_2::token::data::LlamaTokenData;
use llama_cpp_2::token::data_array::LlamaTokenDataArray;
use llguidance::api::TopLevelGrammar;
use llguidance::{Matcher, ParserFactory};
use serde_json::Value;

use crate::{CallStats, LocalError, LocalOptions, prompt, schema};

/// llama.cpp's backend may be initialised only once per process (a second
/// `LlamaBackend::init` fails), so every model shares this one. The error is kept as text
/// because the first failure must be reported to every later caller too.
static BACKEND: OnceLock<Result<LlamaBackend, String>> = OnceLock::new();

fn backend() -> Result<&'static LlamaBackend, LocalError> {
    BACKEND
        .get_or_init(|| {
            let mut backend = LlamaBackend::init().map_err(|error| error.to_string())?;
            // llama.cpp logs every tensor and setting at INFO to stderr. The harness owns the
            // terminal (progress bars, reports), and load failures are reported through
            // `LocalError` anyway, so the logs are dropped.
            backend.void_logs();
            Ok(backend)
        })
        .as_ref()
        .map_err(|message| LocalError::Backend { message: format!("could not initialise llama.cpp: {message}") })
}

/// A loaded model: weights, chat template, constraint compiler and the one inference session.
pub(crate) struct Engine {
    /// Declared first so that it is dropped first: the session's context refers to `model`
    /// (see [`Session::context`]).
    session: Mutex<Session>,
    last_stats: Mutex<Option<CallStats>>,
    template: LlamaChatTemplate,
    /// Built once per model: it holds the token trie (a walk over the whole vocabulary,
    /// about 0.3 s) that every grammar compiles against.
    factory: ParserFactory,
    n_ctx: u32,
    /// `LocalOptions::reuse_prefix`.
    reuse_prefix: bool,
    /// Boxed so its address is obviously stable while the context refers to it.
    model: Box<LlamaModel>,
}

/// The llama context and what its KV cache holds (sequence 0 only).
struct Session {
    /// The context really borrows `Engine::model`. The `'static` is a promise kept by
    /// `Engine`: it owns both, never hands the context out, and drops the session (field
    /// order) before the model.
    context: LlamaContext<'static>,
    /// The tokens whose keys and values are in the cache, in position order.
    cached: Vec<LlamaToken>,
    batch: usize,
}

impl Session {
    /// Forgets the whole cache, after an error left it in an unknown state.
    fn reset(&mut self) {
        self.context.clear_kv_cache();
        self.cached.clear();
    }

    /// Drops the cache after the longest prefix it shares with `tokens` and returns how many
    /// tokens are reused. At least one token is always left to evaluate, because sampling
    /// needs the logits of the prompt's last token.
    fn keep_common_prefix(&mut self, tokens: &[LlamaToken]) -> usize {
        let mut common = self.cached.iter().zip(tokens).take_while(|(cached, new)| cached == new).count();
        if common == tokens.len() {
            common = common.saturating_sub(1);
        }
        if common < self.cached.len() {
            let position = u32::try_from(common).unwrap_or(u32::MAX);
            // Partial removal can fail for recurrent models; starting over is always correct.
            match self.context.clear_kv_cache_seq(Some(0), Some(position), None) {
                Ok(true) => self.cached.truncate(common),
                Ok(false) | Err(_) => {
                    self.reset();
                    common = 0;
                }
            }
        }
        common
    }

    /// Evaluates `tokens` at the positions after the cache, in batches, requesting logits for
    /// the last one. Returns that token's logits index for the sampler.
    fn evaluate(&mut self, tokens: &[LlamaToken], cancel: &AtomicBool) -> Result<i32, ModelError> {
        let mut batch = LlamaBatch::new(self.batch, 1);
        let mut last_index = 0;
        for (chunk_index, chunk) in tokens.chunks(self.batch).enumerate() {
            if cancel.load(Ordering::Relaxed) {
                return Err(cancelled());
            }
            let is_last_chunk = (chunk_index + 1) * self.batch >= tokens.len();
            batch.clear();
            for (offset, token) in chunk.iter().enumerate() {
                let position = i32::try_from(self.cached.len() + offset)
                    .map_err(|_| ModelError::fatal("token position does not fit llama.cpp's i32"))?;
                let wants_logits = is_last_chunk && offset + 1 == chunk.len();
                batch
                    .add(*token, position, &[0], wants_logits)
                    .map_err(|error| ModelError::fatal(format!("llama.cpp batch: {error}")))?;
            }
            if let Err(error) = self.context.decode(&mut batch) {
                self.reset();
                return Err(ModelError::fatal(format!("llama.cpp could not evaluate the prompt: {error}")));
            }
            self.cached.extend_from_slice(chunk);
            last_index = i32::try_from(chunk.len()).unwrap_or(i32::MAX) - 1;
        }
        Ok(last_index)
    }
}

impl Engine {
    /// Loads the GGUF at `path` and prepares everything a call needs. Blocking (about a second
    /// for the 98 MB default model).
    pub(crate) fn load(path: &Path, options: &LocalOptions) -> Result<Engine, LocalError> {
        let n_ctx = NonZeroU32::new(options.n_ctx)
            .ok_or_else(|| LocalError::InvalidOptions { message: "n_ctx must be positive".to_owned() })?;
        let backend = backend()?;
        let model = LlamaModel::load_from_file(backend, path, &LlamaModelParams::default()).map_err(|error| {
            LocalError::Load { message: format!("llama.cpp could not load {}: {error}", path.display()) }
        })?;
        let model = Box::new(model);
        let template = model.chat_template(None).map_err(|error| LocalError::Template {
            message: format!("{} has no usable chat template: {error}", path.display()),
        })?;
        // Fail at open, not on the first call, if llama.cpp cannot apply the template.
        apply_template(&model, &template, &[prompt::TemplateMessage { role: "user", content: "hi".to_owned() }])
            .map_err(|error| LocalError::Template { message: format!("{}: {}", path.display(), error.message) })?;

        let tok_env = LlamaSampler::llguidance_tok_env(&model);
        let mut factory = ParserFactory::new_simple(&tok_env)
            .map_err(|error| LocalError::Load { message: format!("llguidance tokenizer setup failed: {error}") })?;
        // llguidance prints grammar warnings to stderr at its default log level.
        factory.quiet();

        let batch = options.n_batch.clamp(1, options.n_ctx);
        let threads = i32::try_from(options.threads.max(1)).unwrap_or(i32::MAX);
        let params = LlamaContextParams::default()
            .with_n_ctx(Some(n_ctx))
            .with_n_batch(batch)
            .with_n_ubatch(batch)
            .with_n_threads(threads)
            .with_n_threads_batch(threads);
        let context = model.new_context(backend, params).map_err(|error| LocalError::Context {
            message: format!("llama.cpp could not create a context of {} tokens: {error}", options.n_ctx),
        })?;
        let n_ctx = context.n_ctx();
        // SAFETY: only the lifetime changes. The context refers to the model behind `model`'s
        // box, which `Engine` owns together with the context and drops after it (field
        // order); the context is never moved out of the `Engine`.
        let context = unsafe { std::mem::transmute::<LlamaContext<'_>, LlamaContext<'static>>(context) };
        let session = Session { context, cached: Vec::new(), batch: usize::try_from(batch).unwrap_or(512) };
        Ok(Engine {
            session: Mutex::new(session),
            last_stats: Mutex::new(None),
            template,
            factory,
            n_ctx,
            reuse_prefix: options.reuse_prefix,
            model,
        })
    }

    pub(crate) fn n_ctx(&self) -> u32 {
        self.n_ctx
    }

    pub(crate) fn last_stats(&self) -> Option<CallStats> {
        *self.last_stats.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// One completion. `call_id` names a tool call if one is produced; `cancel` is set when
    /// the caller stopped waiting, and aborts the call between tokens.
    pub(crate) fn complete(
        &self,
        request: &ChatRequest,
        call_id: &str,
        cancel: &AtomicBool,
    ) -> Result<ChatResponse, ModelError> {
        let text_prompt = apply_template(&self.model, &self.template, &prompt::template_messages(request))?;
        // `add_special` lets the vocabulary decide about BOS; `parse_special` turns the
        // template's `<|im_start|>` markers into their control tokens.
        let tokens = self.model.vocab().tokenize(text_prompt.as_bytes(), true, true);
        if tokens.is_empty() {
            return Err(ModelError::fatal("the prompt is empty"));
        }
        let mut matcher = match &request.output {
            OutputFormat::Text => None,
            OutputFormat::JsonSchema(schema) => Some(self.matcher(schema::tighten(schema.clone()))?),
            OutputFormat::ToolCall => {
                if request.tools.is_empty() {
                    return Err(ModelError::fatal("tool call output was requested, but the request offers no tools"));
                }
                Some(self.matcher(schema::tighten(schema::tool_call_schema(&request.tools)))?)
            }
        };
        let mut sampler = sampler(&request.sampling);
        let max_tokens = usize::try_from(request.sampling.max_tokens).unwrap_or(usize::MAX);

        let mut session = self.lock_session();
        let n_ctx = usize::try_from(self.n_ctx).unwrap_or(usize::MAX);
        if tokens.len().saturating_add(max_tokens) > n_ctx {
            return Err(ModelError::fatal(format!(
                "the prompt ({} tokens) plus max_tokens ({max_tokens}) does not fit the context of {n_ctx} tokens; \
                 use a larger context (LocalOptions.n_ctx) or a smaller max_tokens",
                tokens.len()
            )));
        }

        let started = Instant::now();
        let reused = if self.reuse_prefix {
            session.keep_common_prefix(&tokens)
        } else {
            session.reset();
            0
        };
        let mut logits_index = session.evaluate(&tokens[reused..], cancel)?;
        let prompt_eval = started.elapsed();

        let generation_started = Instant::now();
        let vocab = self.model.vocab();
        let mut text = Vec::new();
        let mut completion_tokens = 0_usize;
        let finish = loop {
            if completion_tokens >= max_tokens {
                break FinishReason::Length;
            }
            if matcher.as_ref().is_some_and(Matcher::is_stopped) {
                break FinishReason::Stop;
            }
            if cancel.load(Ordering::Relaxed) {
                return Err(cancelled());
            }
            if let Some(matcher) = matcher.as_mut() {
                let forced = forced_tokens(matcher, &vocab, max_tokens - completion_tokens)?;
                if !forced.is_empty() {
                    for token in &forced {
                        vocab.token_to_piece_into(*token, &mut text, false, None);
                    }
                    completion_tokens += forced.len();
                    if completion_tokens >= max_tokens {
                        break FinishReason::Length;
                    }
                    if matcher.is_stopped() {
                        break FinishReason::Stop;
                    }
                    logits_index = session.evaluate(&forced, cancel)?;
                    continue;
                }
            }
            let token = pick(&session.context, logits_index, matcher.as_mut(), sampler.as_mut())?;
            if vocab.is_eog(token) {
                break FinishReason::Stop;
            }
            if let Some(matcher) = matcher.as_mut() {
                matcher
                    .consume_token(token.0.cast_unsigned())
                    .map_err(|error| ModelError::fatal(format!("llguidance rejected a sampled token: {error}")))?;
            }
            vocab.token_to_piece_into(token, &mut text, false, None);
            completion_tokens += 1;
            if completion_tokens >= max_tokens {
                break FinishReason::Length;
            }
            if matcher.as_ref().is_some_and(Matcher::is_stopped) {
                break FinishReason::Stop;
            }
            // Feed the token back; its logits give the next one.
            logits_index = session.evaluate(&[token], cancel)?;
        };
        drop(session);

        let stats = CallStats {
            prompt_tokens: tokens.len(),
            reused_tokens: reused,
            evaluated_tokens: tokens.len() - reused,
            completion_tokens,
            prompt_eval,
            generation: generation_started.elapsed(),
        };
        tracing::debug!(
            prompt_tokens = stats.prompt_tokens,
            reused_tokens = stats.reused_tokens,
            evaluated_tokens = stats.evaluated_tokens,
            completion_tokens = stats.completion_tokens,
            prompt_ms = u64::try_from(stats.prompt_eval.as_millis()).unwrap_or(u64::MAX),
            generation_ms = u64::try_from(stats.generation.as_millis()).unwrap_or(u64::MAX),
            "local completion"
        );
        *self.last_stats.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(stats);

        let text = String::from_utf8_lossy(&text).into_owned();
        Ok(respond(request, text, finish, call_id, stats))
    }

    /// Compiles a (tightened) schema into a fresh matcher. A schema llguidance cannot handle
    /// is the caller's mistake and retrying cannot help, hence `Fatal`.
    fn matcher(&self, schema: Value) -> Result<Matcher, ModelError> {
        let parser = self
            .factory
            .create_parser(TopLevelGrammar::from_json_schema(schema))
            .map_err(|error| ModelError::fatal(format!("llguidance rejected the JSON schema: {error}")))?;
        let mut matcher = Matcher::new(Ok(parser));
        if let Some(error) = matcher.get_error() {
            return Err(ModelError::fatal(format!("llguidance rejected the JSON schema: {error}")));
        }
        for warning in matcher.grammar_warnings() {
            tracing::debug!(%warning, "llguidance grammar warning");
        }
        Ok(matcher)
    }

    /// Locks the session. A panic during an earlier call may have left the cache half
    /// updated, so a poisoned session is reset rather than trusted.
    fn lock_session(&self) -> MutexGuard<'_, Session> {
        match self.session.lock() {
            Ok(session) => session,
            Err(poisoned) => {
                let mut session = poisoned.into_inner();
                session.reset();
                session
            }
        }
    }
}

/// Renders template messages with the model's chat template, ending with the opening of the
/// assistant's turn.
fn apply_template(
    model: &LlamaModel,
    template: &LlamaChatTemplate,
    messages: &[prompt::TemplateMessage],
) -> Result<String, ModelError> {
    let messages = messages
        .iter()
        .map(|message| LlamaChatMessage::new(message.role.to_owned(), message.content.clone()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| ModelError::fatal(format!("a message cannot be passed to llama.cpp: {error}")))?;
    model
        .apply_chat_template(template, &messages, true)
        .map_err(|error| ModelError::fatal(format!("llama.cpp could not apply the model's chat template: {error}")))
}

/// The sampler chain for the request. Temperature 0 means greedy decoding: `None`, done by
/// [`pick`] as an argmax over the allowed logits (llama.cpp's greedy sampler would first copy
/// every logit, 49,152 for SmolLM2, into a candidate array on each token). Otherwise it is
/// llama.cpp's default chain (top-k 40, top-p 0.95, min-p 0.05, then temperature), which
/// keeps a tiny model at 0.7 from wandering into the vocabulary's long tail. The seed
/// defaults to 0 so that runs are reproducible; llama.cpp's seed is 32 bits, so a 64-bit
/// seed is folded.
fn sampler(sampling: &Sampling) -> Option<LlamaSampler> {
    if sampling.temperature <= 0.0 {
        return None;
    }
    let seed = sampling.seed.unwrap_or(0);
    let seed = (seed ^ (seed >> 32)) as u32;
    Some(LlamaSampler::chain_simple([
        LlamaSampler::top_k(40),
        LlamaSampler::top_p(0.95, 1),
        LlamaSampler::min_p(0.05, 1),
        LlamaSampler::temp(sampling.temperature),
        LlamaSampler::dist(seed),
    ]))
}

/// Picks the next token from the logits at `index`, allowing only what the constraint allows.
///
/// The constraint is applied here, in Rust, instead of as a llama.cpp sampler: the matcher
/// then stays ours to ask whether the document is complete (so generation stops without
/// waiting for an end-of-turn token), its errors surface as errors instead of being ignored
/// by the C callback, and no grammar state lives inside a C sampler that a stray `accept`
/// could advance twice (which aborts the process). The sampler chain is only *applied* to
/// the candidates, never asked to accept, for the same reason.
fn pick(
    context: &LlamaContext<'_>,
    index: i32,
    matcher: Option<&mut Matcher>,
    sampler: Option<&mut LlamaSampler>,
) -> Result<LlamaToken, ModelError> {
    let logits = context.get_logits_ith(index);
    let token = |id: usize| LlamaToken(i32::try_from(id).unwrap_or(i32::MAX));
    let mask = match matcher {
        None => None,
        Some(matcher) => Some(
            matcher
                .compute_mask()
                .map_err(|error| ModelError::fatal(format!("llguidance could not compute a token mask: {error}")))?,
        ),
    };
    let allowed = |id: usize| mask.as_ref().is_none_or(|mask| u32::try_from(id).is_ok_and(|id| mask.is_allowed(id)));
    let Some(sampler) = sampler else {
        // Greedy: the first of the highest allowed logits, as llama.cpp's greedy sampler picks.
        let best = logits
            .iter()
            .enumerate()
            .filter(|(id, _)| allowed(*id))
            .fold(None, |best: Option<(usize, f32)>, (id, &logit)| match best {
                Some((_, highest)) if highest >= logit => best,
                _ => Some((id, logit)),
            });
        return best.map(|(id, _)| token(id)).ok_or_else(|| ModelError::fatal("the constraint allows no token at all"));
    };
    let candidates: Vec<LlamaTokenData> = logits
        .iter()
        .enumerate()
        .filter(|(id, _)| allowed(*id))
        .map(|(id, logit)| LlamaTokenData::new(token(id), *logit, 0.0))
        .collect();
    if candidates.is_empty() {
        return Err(ModelError::fatal("the constraint allows no token at all"));
    }
    let mut candidates = LlamaTokenDataArray::new(candidates, false);
    candidates.apply_sampler(sampler);
    candidates.selected_token().ok_or_else(|| ModelError::fatal("llama.cpp's sampler selected no token"))
}

/// Takes the text the constraint forces next (`{"tool": "` before any tool name, a property
/// name, closing brackets) as tokens of llama.cpp's own tokenizer, consumed by `matcher`.
///
/// Sampling such text token by token lets the model spell it with odd token splits (`{` `"`
/// where the tokenizer writes `{"`): a tiny model then reads unusual input, and when the
/// call comes back as history the re-tokenised prompt no longer matches the KV cache. Forced
/// tokens are also evaluated as one batch, which is several times faster than one by one.
///
/// The last forced token is given back (left to the sampler) unless it completes the
/// document: the text after it is not known yet, and the tokenizer might merge across that
/// boundary (`{` followed by `"` is one token). `budget` caps how many tokens are taken.
fn forced_tokens(
    matcher: &mut Matcher,
    vocab: &llama_cpp_2::vocab::LlamaVocab<'_>,
    budget: usize,
) -> Result<Vec<LlamaToken>, ModelError> {
    let bytes = matcher.compute_ff_bytes();
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    let mut tokens = vocab.tokenize(&bytes, false, false);
    tokens.truncate(budget);
    let ids: Vec<u32> = tokens.iter().map(|token| token.0.cast_unsigned()).collect();
    let consumed = matcher
        .try_consume_tokens(&ids)
        .map_err(|error| ModelError::fatal(format!("llguidance rejected forced tokens: {error}")))?;
    tokens.truncate(consumed);
    if !tokens.is_empty() && !matcher.is_stopped() {
        matcher
            .rollback(1)
            .map_err(|error| ModelError::fatal(format!("llguidance could not roll back a token: {error}")))?;
        tokens.pop();
    }
    Ok(tokens)
}

/// Builds the provider-neutral response from the generated text.
fn respond(request: &ChatRequest, text: String, finish: FinishReason, call_id: &str, stats: CallStats) -> ChatResponse {
    let usage = Usage { prompt_tokens: stats.prompt_tokens as u64, completion_tokens: stats.completion_tokens as u64 };
    let mut response = ChatResponse { finish_reason: finish, usage, raw: Some(text.clone()), ..ChatResponse::default() };
    match (&request.output, parse_tool_call(&text)) {
        (OutputFormat::ToolCall, Some((name, arguments))) => {
            response.tool_calls = vec![ToolCall { id: call_id.to_owned(), name, arguments }];
            response.finish_reason = FinishReason::ToolCalls;
        }
        // Text, JSON documents, and tool calls cut off by max_tokens: the text is the answer,
        // so a truncated call is recorded rather than lost.
        _ => response.content = text,
    }
    response
}

/// Reads `{"tool": NAME, "arguments": ARGS}`; `None` unless it is complete.
fn parse_tool_call(text: &str) -> Option<(String, Value)> {
    let Value::Object(mut call) = serde_json::from_str::<Value>(text).ok()? else {
        return None;
    };
    let name = call.get("tool")?.as_str()?.to_owned();
    let arguments = call.remove("arguments")?;
    Some((name, arguments))
}

fn cancelled() -> ModelError {
    ModelError::new(ModelErrorKind::Transient, "the local call was cancelled")
}
