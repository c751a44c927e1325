//! Model specs from the command line (`--model ROLE=SPEC`) to providers.
//!
//! Specs: `local:smollm2` (the embedded default), `local:/path/to/model.gguf`,
//! `scripted:/path/to/replies.yaml`, `openai:MODEL[@BASE_URL]`, `anthropic:MODEL[@BASE_URL]`,
//! `gemini:MODEL[@BASE_URL]` (keys from OPENAI_API_KEY, ANTHROPIC_API_KEY, GEMINI_API_KEY).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Result, bail};
use clap::Args;
use dilemma::model::{CallPolicy, ChatModel, Model, ModelRole, ResponseCache};

/// The agent when none is given.
pub const DEFAULT_AGENT: &str = "local:smollm2";

/// Settings of the embedded llama.cpp backend.
#[derive(Args, Clone, Debug)]
pub struct LocalArgs {
    /// Context size (tokens) for local models.
    #[arg(long, default_value_t = 8192)]
    pub local_ctx: u32,
    /// CPU threads for local models (default: all cores, at most 8).
    #[arg(long)]
    pub local_threads: Option<usize>,
}

/// `--model` arguments sorted by role.
#[derive(Debug, Default)]
pub struct Roles {
    pub agents: Vec<String>,
    pub environment: Option<String>,
    pub user: Option<String>,
    pub judge: Option<String>,
    pub others: Vec<String>,
}

pub fn parse_roles(arguments: &[String]) -> Result<Roles> {
    let mut roles = Roles::default();
    for argument in arguments {
        let Some((role, spec)) = argument.split_once('=') else {
            bail!("--model {argument}: write ROLE=SPEC, e.g. --model agent=local:smollm2");
        };
        let Some(parsed) = ModelRole::parse(role.trim()) else {
            bail!("--model {argument}: unknown role `{role}`; roles are agent, environment, user, judge, synthesizer");
        };
        let spec = spec.trim().to_owned();
        if spec.is_empty() {
            bail!("--model {argument}: the model spec after `=` is empty");
        }
        match parsed {
            ModelRole::Agent => roles.agents.push(spec),
            ModelRole::Environment if roles.environment.is_some() => bail!("--model environment=… is given twice"),
            ModelRole::Environment => roles.environment = Some(spec),
            ModelRole::User if roles.user.is_some() => bail!("--model user=… is given twice"),
            ModelRole::User => roles.user = Some(spec),
            ModelRole::Judge if roles.judge.is_some() => bail!("--model judge=… is given twice"),
            ModelRole::Judge => roles.judge = Some(spec),
            _ => roles.others.push(argument.clone()),
        }
    }
    Ok(roles)
}

/// Opens providers, sharing one instance per spec (one local model in memory serves both
/// agent and environment).
pub struct Opener {
    local: LocalArgs,
    opened: HashMap<String, Arc<dyn ChatModel>>,
    cache: Option<Arc<dyn ResponseCache>>,
    limits: dilemma::model::limit::Limits,
}

impl Opener {
    /// `cache`: where finished responses are kept (the run's store), if anywhere.
    /// `endpoint_concurrency`: the ceiling of each remote endpoint's adaptive limit per role.
    pub fn new(local: &LocalArgs, cache: Option<Arc<dyn ResponseCache>>, endpoint_concurrency: usize) -> Self {
        Opener { local: local.clone(), opened: HashMap::new(), cache, limits: dilemma::model::limit::Limits::new(endpoint_concurrency) }
    }

    pub fn open(&mut self, spec: &str, role: ModelRole) -> Result<Arc<Model>> {
        let provider = match self.opened.get(spec) {
            Some(provider) => provider.clone(),
            None => {
                let provider = self.open_provider(spec)?;
                self.opened.insert(spec.to_owned(), provider.clone());
                provider
            }
        };
        let mut model = Model::new(provider.clone(), role, CallPolicy::default());
        if let Some(cache) = &self.cache {
            model = model.with_cache(cache.clone());
        }
        // Remote endpoints get an adaptive limit; in-process models serialise themselves.
        if dilemma::model::http::is_http_spec(spec) {
            model = model.with_limit(self.limits.for_endpoint(provider.id(), role));
        }
        Ok(Arc::new(model))
    }

    fn open_provider(&self, spec: &str) -> Result<Arc<dyn ChatModel>> {
        let Some((kind, rest)) = spec.split_once(':') else {
            bail!("model spec `{spec}` has no provider; write e.g. local:smollm2 or scripted:replies.yaml");
        };
        match kind {
            "scripted" => {
                let model = dilemma::model::scripted::ScriptedModel::from_file(Path::new(rest))?;
                Ok(Arc::new(model))
            }
            "local" => self.open_local(rest),
            "openai" | "anthropic" | "gemini" => {
                dilemma::model::http::open_http_model(spec).map_err(|message| anyhow::anyhow!("{message}"))
            }
            other => bail!(
                "unknown model provider `{other}` in `{spec}`; known: local:, scripted:, openai:, anthropic:, gemini:"
            ),
        }
    }

    #[cfg(feature = "local-llm")]
    fn open_local(&self, rest: &str) -> Result<Arc<dyn ChatModel>> {
        use anyhow::Context as _;
        let mut options = dilemma_local::LocalOptions { n_ctx: self.local.local_ctx, ..Default::default() };
        if let Some(threads) = self.local.local_threads {
            options.threads = threads;
        }
        let model = dilemma_local::LocalModel::open(rest, options).with_context(|| format!("cannot open local:{rest}"))?;
        Ok(Arc::new(model))
    }

    #[cfg(not(feature = "local-llm"))]
    fn open_local(&self, rest: &str) -> Result<Arc<dyn ChatModel>> {
        let _ = &self.local;
        bail!("local:{rest}: this dilemma was built without the `local-llm` feature; rebuild with default features")
    }
}
