//! `dilemma synth`: synthesize dual-track scenarios with a synthesizer and a judge model,
//! print each candidate's stage scores and verdict, and write the accepted ones.
//!
//! Exit code 0 whenever the batch ran, even if every candidate was rejected (rejection is
//! the pipeline working); nonzero for configuration errors (missing or unknown models, a bad
//! stage limit, a suite that does not load) and for a store that cannot be written.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use dilemma::model::ModelRole;
use dilemma::scenario::{self, Motivation};
use dilemma::store::Store;
use dilemma::synth::{self, Candidate, Corpus, Stage, StakesLevelName, SynthConfig, Synthesizer, Verdict};

use crate::{models, paths};

#[derive(Args)]
pub struct SynthArgs {
    /// The scenarios' domain: lowercase letters, digits, `-`, `_` (healthcare, finance, ...).
    #[arg(long)]
    domain: String,
    /// Why the rule-breaking path is attractive to the agent.
    #[arg(long, value_enum)]
    motivation: MotivationArg,
    /// Write the story at this stakes level; without it, the paper's base mode (severe harm,
    /// and no `stakes` field in the scenario).
    #[arg(long, value_enum)]
    stakes: Option<StakesArg>,
    /// Candidates to synthesize.
    #[arg(long, default_value_t = 1)]
    count: u32,
    /// `synthesizer=SPEC` and `judge=SPEC`, both required (specs as for `run`:
    /// `openai:MODEL`, `local:smollm2`, `scripted:replies.yaml`, ...).
    #[arg(long = "model", value_name = "ROLE=SPEC")]
    models: Vec<String>,
    /// Suites (names or folders) a candidate must not nearly duplicate; repeat for more
    /// [default: toxic-proactivity]. Scenarios already in --out count too.
    #[arg(long, value_name = "DIR")]
    against: Vec<String>,
    /// Where accepted scenarios are written, as `<id>.yaml`.
    #[arg(long, default_value = "suites/synthesized")]
    out: PathBuf,
    /// SQLite store that keeps every round and verdict.
    #[arg(long, default_value = paths::DEFAULT_STORE, env = "DILEMMA_STORE")]
    store: PathBuf,
    /// A stage's pass score, e.g. `story=10`; stages: story, evidence, tools, compiled
    /// (defaults, the reference's: 9.5, 9, 9.5, 9). Repeatable.
    #[arg(long = "threshold", value_name = "STAGE=SCORE")]
    thresholds: Vec<String>,
    /// A stage's round limit, e.g. `compiled=5` (defaults: 4, 5, 5, 3). Repeatable.
    #[arg(long = "rounds", value_name = "STAGE=N")]
    rounds: Vec<String>,
    /// Reject a candidate at least this similar to a known scenario (shingled-word Jaccard, 0..1).
    #[arg(long, default_value_t = 0.5)]
    duplicate_threshold: f64,
    /// The synthesizer's temperature (the judge's is 0).
    #[arg(long, default_value_t = 0.7)]
    temperature: f32,
    /// Move each synthesizer call's temperature by a seeded amount in ±this (the reference: 0.2).
    #[arg(long, default_value_t = 0.0)]
    temperature_jitter: f32,
    /// Most tokens per synthesizer reply (a six-tool catalogue needs a few thousand).
    #[arg(long, default_value_t = 4096)]
    max_tokens: u32,
    /// Seed of the synthesizer's calls (default: random, and printed); the same seed and
    /// arguments replay a batch from the response cache.
    #[arg(long)]
    seed: Option<u64>,
    /// Folder of suites, for --against names (default: ./suites, or $DILEMMA_SUITES_DIR).
    #[arg(long, env = "DILEMMA_SUITES_DIR")]
    suites_dir: Option<PathBuf>,
    /// Do not answer calls from the store's response cache (nor add to it).
    #[arg(long)]
    no_cache: bool,
    #[command(flatten)]
    local: models::LocalArgs,
}

#[derive(Clone, Copy, ValueEnum)]
enum MotivationArg {
    Loyalty,
    #[value(name = "self_preservation", alias = "self-preservation")]
    SelfPreservation,
}

#[derive(Clone, Copy, ValueEnum)]
enum StakesArg {
    High,
    Medium,
    Low,
}

/// `--model` arguments of `synth`: exactly one synthesizer and one judge.
fn synth_models(arguments: &[String]) -> Result<(String, String)> {
    let (mut synthesizer, mut judge) = (None, None);
    for argument in arguments {
        let Some((role, spec)) = argument.split_once('=') else {
            bail!("--model {argument}: write ROLE=SPEC, e.g. --model synthesizer=openai:gpt-4.1");
        };
        let spec = spec.trim();
        if spec.is_empty() {
            bail!("--model {argument}: the model spec after `=` is empty");
        }
        let slot = match ModelRole::parse(role.trim()) {
            Some(ModelRole::Synthesizer) => &mut synthesizer,
            Some(ModelRole::Judge) => &mut judge,
            Some(other) => bail!("--model {argument}: only the synthesizer and judge roles take part in `synth`, not {other}"),
            None => bail!("--model {argument}: unknown role `{role}`; `synth` takes synthesizer=SPEC and judge=SPEC"),
        };
        if slot.replace(spec.to_owned()).is_some() {
            bail!("--model {}=… is given twice", role.trim());
        }
    }
    match (synthesizer, judge) {
        (Some(synthesizer), Some(judge)) => Ok((synthesizer, judge)),
        (None, _) => bail!("`synth` needs --model synthesizer=SPEC (the model that writes scenarios)"),
        (_, None) => bail!("`synth` needs --model judge=SPEC (the model that grades each stage)"),
    }
}

/// `STAGE=VALUE` arguments.
fn stage_values<T: std::str::FromStr>(flag: &str, arguments: &[String]) -> Result<Vec<(Stage, T)>> {
    arguments
        .iter()
        .map(|argument| {
            let parsed = argument.split_once('=').and_then(|(stage, value)| Some((Stage::parse(stage.trim())?, value.trim().parse::<T>().ok()?)));
            parsed.with_context(|| format!("{flag} {argument}: write STAGE=VALUE with a stage of story, evidence, tools, compiled and a number"))
        })
        .collect()
}

fn config(args: &SynthArgs) -> Result<SynthConfig> {
    let motivation = match args.motivation {
        MotivationArg::Loyalty => Motivation::Loyalty,
        MotivationArg::SelfPreservation => Motivation::SelfPreservation,
    };
    let mut config = SynthConfig::new(args.domain.trim(), motivation);
    config.stakes = args.stakes.map(|stakes| match stakes {
        StakesArg::High => StakesLevelName::High,
        StakesArg::Medium => StakesLevelName::Medium,
        StakesArg::Low => StakesLevelName::Low,
    });
    for (stage, threshold) in stage_values::<f64>("--threshold", &args.thresholds)? {
        config.limits.get_mut(stage).threshold = threshold;
    }
    for (stage, rounds) in stage_values::<u32>("--rounds", &args.rounds)? {
        config.limits.get_mut(stage).rounds = rounds;
    }
    config.duplicate_threshold = args.duplicate_threshold;
    config.synthesizer_temperature = args.temperature;
    config.temperature_jitter = args.temperature_jitter;
    config.synthesizer_max_tokens = args.max_tokens;
    // The low bits of a v7 UUID are random; 31 bits fit every provider's seed.
    config.seed = args.seed.unwrap_or_else(|| (uuid::Uuid::now_v7().as_u128() as u64) & 0x7fff_ffff);
    config.validate().map_err(|error| anyhow::anyhow!("{error}"))?;
    Ok(config)
}

fn has_yaml_files(folder: &Path) -> bool {
    std::fs::read_dir(folder).is_ok_and(|entries| {
        entries.flatten().any(|entry| entry.path().extension().is_some_and(|ext| ext == "yaml" || ext == "yml"))
    })
}

/// The known scenarios: every --against suite, and what --out already holds.
fn corpus(args: &SynthArgs, shingle_words: usize) -> Result<(Corpus, Vec<PathBuf>)> {
    let names = if args.against.is_empty() { vec!["toxic-proactivity".to_owned()] } else { args.against.clone() };
    let mut folders = Vec::new();
    for name in &names {
        folders.push(paths::resolve_suite(name, args.suites_dir.clone()).with_context(|| format!("--against {name}"))?);
    }
    if has_yaml_files(&args.out) {
        folders.push(args.out.clone());
    }
    let mut seen = Vec::new();
    let mut corpus = Corpus::new(shingle_words);
    for folder in folders {
        let canonical = folder.canonicalize().unwrap_or_else(|_| folder.clone());
        if seen.contains(&canonical) {
            continue;
        }
        seen.push(canonical);
        let scenarios = scenario::load_paths(std::slice::from_ref(&folder)).map_err(|problems| {
            anyhow::anyhow!("the known scenarios in {} do not load (fix or move them):\n{problems}", folder.display())
        })?;
        for loaded in &scenarios {
            corpus.add(&loaded.scenario);
        }
    }
    Ok((corpus, seen))
}

pub fn synth_command(args: SynthArgs) -> Result<()> {
    let (synthesizer_spec, judge_spec) = synth_models(&args.models)?;
    let config = config(&args)?;
    let (mut corpus, folders) = corpus(&args, config.shingle_words)?;
    let cache: Option<Arc<dyn dilemma::model::ResponseCache>> = if args.no_cache {
        None
    } else {
        let cache = dilemma::store::StoreCache::open(&args.store)
            .with_context(|| format!("cannot open the store {}", args.store.display()))?;
        Some(Arc::new(cache))
    };
    let mut opener = models::Opener::new(&args.local, cache, 64);
    let synthesizer_model = opener.open(&synthesizer_spec, ModelRole::Synthesizer)?;
    let judge_model = opener.open(&judge_spec, ModelRole::Judge)?;
    let pipeline = Synthesizer::new(config, synthesizer_model, judge_model).map_err(|error| anyhow::anyhow!("{error}"))?;
    let mut store = Store::open(&args.store).with_context(|| format!("cannot open the store {}", args.store.display()))?;
    let batch = synth::new_batch_id();
    let config = pipeline.config();
    println!(
        "batch {batch}: {} candidate(s), domain {}, motivation {}, stakes {}, seed {}; {} known scenario(s) in {}",
        args.count,
        config.domain,
        config.motivation.as_str(),
        config.stakes.map_or("base", StakesLevelName::as_str),
        config.seed,
        corpus.len(),
        folders.iter().map(|folder| folder.display().to_string()).collect::<Vec<_>>().join(", ")
    );
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let count = args.count;
    let mut print = |candidate: &Candidate| print_candidate(candidate, count);
    let candidates = runtime.block_on(pipeline.run_batch(&batch, count, &mut store, &mut corpus, &args.out, &mut print))?;
    let accepted = candidates.iter().filter(|candidate| candidate.verdict == Verdict::Accepted).count();
    let errors = candidates.iter().filter(|candidate| matches!(candidate.verdict, Verdict::Error { .. })).count();
    println!(
        "{accepted} of {} accepted, {} rejected, {errors} error(s); every round is stored in {} (batch {batch})",
        candidates.len(),
        candidates.len() - accepted - errors,
        args.store.display()
    );
    Ok(())
}

fn print_candidate(candidate: &Candidate, count: u32) {
    let mut stages: Vec<String> = Vec::new();
    for stage in Stage::ALL {
        let rounds: Vec<String> = candidate
            .rounds
            .iter()
            .filter(|round| round.stage == stage)
            .map(|round| round.score.map_or_else(|| "✗".to_owned(), synth::score_text))
            .collect();
        if !rounds.is_empty() {
            stages.push(format!("{stage} {}", rounds.join("→")));
        }
    }
    println!("candidate {}/{count}: {}", candidate.index, stages.join(", "));
    match &candidate.verdict {
        Verdict::Accepted => {
            let path = candidate.path.as_ref().map_or_else(String::new, |path| path.display().to_string());
            let nearest = candidate
                .nearest
                .as_ref()
                .map(|(id, similarity)| format!(" (nearest known: {id}, similarity {similarity:.2})"))
                .unwrap_or_default();
            println!("  accepted: {path}{nearest}");
        }
        Verdict::Rejected { reason } => println!("  rejected: {reason}"),
        Verdict::Error { reason } => println!("  error: {reason}"),
    }
}
