//! The embedded model provider: runs a GGUF model in process with llama.cpp, behind
//! dilemma's provider-neutral [`ChatModel`] trait.
//!
//! `local:smollm2` names the default, SmolLM2-135M-Instruct (Q4_1), which `make model`
//! installs into `models/`; `local:/path/to/model.gguf` names any other GGUF file. Nothing here
//! ever downloads a model.
//!
//! The crate exists separately from `dilemma` so that the 12-minute llama.cpp C++ build is
//! only paid by binaries that want the embedded model.
//!
//! How a call runs:
//! - The request is rendered with the GGUF's own chat template (`prompt` maps tool turns
//!   to text, since small models' templates have no tool role).
//! - `JsonSchema` and `ToolCall` outputs are decoded under an llguidance constraint built from
//!   the schema (tightened first, see `schema`); a 135M model cannot follow a tool format
//!   without one.
//! - One llama context per [`LocalModel`] keeps its KV cache between calls, and each call
//!   evaluates only the tokens after the prefix it shares with the previous one, so a
//!   multi-turn trial pays for the new turn only ([`LocalModel::last_call_stats`] shows it).

mod engine;
pub mod locate;
mod prompt;
mod schema;
mod worker;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use dilemma::chat::{ChatRequest, ChatResponse};
use dilemma::model::{BoxFuture, CallContext, ChatModel, ModelError};

use crate::engine::Engine;

/// Settings for opening a local model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalOptions {
    /// Context size in tokens: the longest prompt plus `max_tokens` one call may use. The KV
    /// cache is allocated for it up front (about 190 MB at 8192 tokens for SmolLM2-135M).
    pub n_ctx: u32,
    /// CPU threads for llama.cpp.
    pub threads: usize,
    /// Tokens evaluated per llama.cpp batch while reading a prompt.
    pub n_batch: u32,
    /// Where to look for the default model's file, overriding `$DILEMMA_MODEL_DIR` and the
    /// built-in search (see [`locate`]). Ignored for `local:/path/to/model.gguf`.
    pub model_dir: Option<PathBuf>,
    /// Keep the KV cache between calls and evaluate only the tokens after the shared prefix
    /// (the default). `false` evaluates every prompt whole, which only benchmarks want (W3 in
    /// bench/): `DILEMMA_LOCAL_PREFIX_CACHE=off` in the environment also turns it off.
    pub reuse_prefix: bool,
}

impl Default for LocalOptions {
    fn default() -> Self {
        LocalOptions { n_ctx: 8192, threads: default_threads(), n_batch: 512, model_dir: None, reuse_prefix: true }
    }
}

/// All available cores, but at most 8: a model this small gains little from more, and
/// several local models (agent, environment, judge) may run at once.
fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(2, |cores| cores.get().min(8))
}

/// Why a local model could not be opened. Every message says what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    /// The model file is not where it should be.
    #[error("{message}")]
    ModelMissing { message: String },
    /// The default model's file is there but its sha256 is wrong (truncated download).
    #[error("{message}")]
    Checksum { message: String },
    /// The spec is neither `smollm2` nor a path to a `.gguf` file.
    #[error("{message}")]
    UnknownSpec { message: String },
    /// The file is not a GGUF file.
    #[error("{message}")]
    NotGguf { message: String },
    /// The model file exists but could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    /// llama.cpp's backend could not be initialised.
    #[error("{message}")]
    Backend { message: String },
    /// llama.cpp or llguidance could not load the model.
    #[error("{message}")]
    Load { message: String },
    /// The model has no chat template llama.cpp can apply.
    #[error("{message}")]
    Template { message: String },
    /// The llama context could not be created (usually: not enough memory for `n_ctx`).
    #[error("{message}")]
    Context { message: String },
    /// A [`LocalOptions`] value llama.cpp cannot use (such as `n_ctx == 0`).
    #[error("{message}")]
    InvalidOptions { message: String },
}

/// A model that cannot be opened cannot answer, whatever the retry policy.
impl From<LocalError> for ModelError {
    fn from(error: LocalError) -> Self {
        ModelError::fatal(error.to_string())
    }
}

/// Token counts and timings of one call, for logs, benchmarks and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallStats {
    /// The whole prompt, as the template rendered it.
    pub prompt_tokens: usize,
    /// Prompt tokens whose KV cache entries were kept from the previous call.
    pub reused_tokens: usize,
    /// Prompt tokens evaluated by this call (`prompt_tokens - reused_tokens`).
    pub evaluated_tokens: usize,
    /// Tokens generated (the end-of-turn token not counted).
    pub completion_tokens: usize,
    /// Time to evaluate the prompt tokens that were not reused.
    pub prompt_eval: Duration,
    /// Time spent generating.
    pub generation: Duration,
}

impl CallStats {
    /// Prompt evaluation speed (evaluated tokens only).
    pub fn prompt_tokens_per_second(&self) -> f64 {
        per_second(self.evaluated_tokens, self.prompt_eval)
    }

    /// Generation speed.
    pub fn completion_tokens_per_second(&self) -> f64 {
        per_second(self.completion_tokens, self.generation)
    }
}

fn per_second(tokens: usize, time: Duration) -> f64 {
    let seconds = time.as_secs_f64();
    if seconds > 0.0 { tokens as f64 / seconds } else { 0.0 }
}

/// A GGUF model running in this process. Cheap to share (`Arc<dyn ChatModel>`); calls to
/// one `LocalModel` run one at a time, because they share one KV cache.
pub struct LocalModel {
    id: String,
    path: PathBuf,
    engine: Arc<Engine>,
}

impl fmt::Debug for LocalModel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalModel").field("id", &self.id).field("path", &self.path).finish()
    }
}

impl LocalModel {
    /// Opens the model that `spec` (what follows `local:`) names: `smollm2` for the embedded
    /// default, or a path to a `.gguf` file.
    ///
    /// The default model's sha256 is verified before loading. Blocking: it reads and hashes
    /// the file and loads it (about a second for the default); from async code call it
    /// inside `spawn_blocking`.
    pub fn open(spec: &str, mut options: LocalOptions) -> Result<LocalModel, LocalError> {
        if std::env::var("DILEMMA_LOCAL_PREFIX_CACHE").is_ok_and(|value| matches!(value.trim(), "off" | "0" | "false")) {
            options.reuse_prefix = false;
        }
        let located = locate::locate(spec, options.model_dir.as_deref())?;
        let engine = Engine::load(&located.path, &options)?;
        tracing::debug!(spec, path = %located.path.display(), n_ctx = engine.n_ctx(), "opened local model");
        Ok(LocalModel { id: format!("local:{spec}"), path: located.path, engine: Arc::new(engine) })
    }

    /// The GGUF file in use.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The context size in tokens that llama.cpp actually allocated.
    pub fn n_ctx(&self) -> u32 {
        self.engine.n_ctx()
    }

    /// Token counts and timings of the most recent successful call, if any.
    pub fn last_call_stats(&self) -> Option<CallStats> {
        self.engine.last_stats()
    }
}

/// Sets the flag when dropped: when the caller stops waiting (a timeout drops the future),
/// the blocking inference notices between tokens and stops, releasing the model.
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

impl ChatModel for LocalModel {
    fn id(&self) -> &str {
        &self.id
    }

    fn chat<'a>(
        &'a self,
        request: &'a ChatRequest,
        context: &'a CallContext,
    ) -> BoxFuture<'a, Result<ChatResponse, ModelError>> {
        let engine = Arc::clone(&self.engine);
        let request = request.clone();
        // Tool call ids are derived from the call's place in the trial, not a counter, so
        // that a rerun produces the same ids, and hence the same prompts.
        let call_id = format!("call_{}", context.call_index);
        Box::pin(async move {
            let cancel = Arc::new(AtomicBool::new(false));
            let _cancel_on_drop = CancelOnDrop(Arc::clone(&cancel));
            worker::run(move || engine.complete(&request, &call_id, &cancel))
                .await
                .ok_or_else(|| ModelError::fatal("local inference failed: it stopped without an answer (see the log)"))?
        })
    }
}
