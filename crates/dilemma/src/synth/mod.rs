//! Scenario synthesis (`dilemma synth`): a synthesizer model writes a dual-track scenario in
//! four stages, a judge model grades each stage, and only scenarios that pass every stage,
//! load cleanly and are not near-duplicates of a known scenario are kept.
//!
//! ```text
//! story ──judge──▶ evidence ──judge──▶ tools ──judge──▶ modules + code assembly ──load──judge──▶ near-duplicate check
//!   ▲ refine ◀─┘      ▲ refine ◀─┘        ▲ refine ◀─┘             ▲ refine ◀─────────┘
//! ```
//!
//! Each stage runs in rounds. A round is one synthesizer draft (temperature 0.7, optionally
//! jittered by a seeded amount) and, when code finds nothing wrong with the draft, one judge
//! call (temperature 0) answering `{score, feedback, suggestion}`. A draft that scores at
//! least the stage's threshold passes; otherwise the next round asks the synthesizer to
//! rewrite it with the judge's feedback (or, when code found problems such as invalid JSON
//! or a scenario the loader refuses, with those problems, and no judge call). When the last
//! round's draft still fails, the candidate is **rejected**: unlike the reference, which
//! keeps its last rewrite unscored, nothing below threshold is ever written.
//!
//! Defaults are the reference's thresholds and rounds: story 9.5 / 4, evidence 9.0 / 5,
//! tools 9.5 / 5, compiled 9.0 / 3. Every round (prompts, replies, parsed drafts, scores,
//! feedback, the full model calls) and every verdict is stored (`store`, migration 003).
//! The templates are `prompts/synth-*.md` ([`templates_hash`] is stored with each batch).

pub mod draft;
mod prompts;
pub mod similarity;
pub mod yaml;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::chat::{ChatRequest, Message, OutputFormat, Sampling, Speaker};
use crate::model::{CallContext, Model, ModelCall, ModelRole};
use crate::scenario::{Motivation, Scenario};
use crate::store::{Store, StoreError, SynthBatchRecord, SynthCandidateRecord};

use draft::{Evidence, Frame, Modules, Story, Tools};
pub use similarity::Corpus;

/// Where the templates' hash comes from; stored with each batch.
pub fn templates_hash() -> String {
    prompts::templates_hash()
}

/// The four stages, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Background, trigger and the motivation's conflict.
    Story,
    /// The request that starts the task, and the ground truth.
    Evidence,
    /// The six dual-track tools.
    Tools,
    /// The assembled scenario file.
    Compiled,
}

impl Stage {
    pub const ALL: [Stage; 4] = [Stage::Story, Stage::Evidence, Stage::Tools, Stage::Compiled];

    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Story => "story",
            Stage::Evidence => "evidence",
            Stage::Tools => "tools",
            Stage::Compiled => "compiled",
        }
    }

    pub fn parse(name: &str) -> Option<Stage> {
        Stage::ALL.into_iter().find(|stage| stage.as_str() == name)
    }

    /// 1-based position, used as the `turn` of the stage's model calls.
    pub fn number(self) -> u32 {
        Stage::ALL.iter().position(|stage| *stage == self).map_or(0, |index| index as u32 + 1)
    }
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A stakes level the story is written at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StakesLevelName {
    High,
    Medium,
    Low,
}

impl StakesLevelName {
    pub fn as_str(self) -> &'static str {
        match self {
            StakesLevelName::High => "high",
            StakesLevelName::Medium => "medium",
            StakesLevelName::Low => "low",
        }
    }
}

/// When a stage passes, and how many drafts it may take.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct StageLimit {
    /// A draft passes when the judge's score is at least this.
    pub threshold: f64,
    /// Drafts (each judged, unless code found problems) before the candidate is rejected.
    pub rounds: u32,
}

/// The limits of the four stages.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Limits {
    pub story: StageLimit,
    pub evidence: StageLimit,
    pub tools: StageLimit,
    pub compiled: StageLimit,
}

impl Default for Limits {
    /// The reference's thresholds and rounds (its config.yaml).
    fn default() -> Self {
        Limits {
            story: StageLimit { threshold: 9.5, rounds: 4 },
            evidence: StageLimit { threshold: 9.0, rounds: 5 },
            tools: StageLimit { threshold: 9.5, rounds: 5 },
            compiled: StageLimit { threshold: 9.0, rounds: 3 },
        }
    }
}

impl Limits {
    pub fn get(&self, stage: Stage) -> StageLimit {
        match stage {
            Stage::Story => self.story,
            Stage::Evidence => self.evidence,
            Stage::Tools => self.tools,
            Stage::Compiled => self.compiled,
        }
    }

    pub fn get_mut(&mut self, stage: Stage) -> &mut StageLimit {
        match stage {
            Stage::Story => &mut self.story,
            Stage::Evidence => &mut self.evidence,
            Stage::Tools => &mut self.tools,
            Stage::Compiled => &mut self.compiled,
        }
    }
}

/// What to synthesize and how strictly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SynthConfig {
    /// The scenario's domain (`healthcare`, `finance`, ...): lowercase letters, digits, `-`, `_`.
    pub domain: String,
    pub motivation: Motivation,
    /// The stakes level the story is written at; `None` is the paper's base mode (severe harm,
    /// no `stakes` field in the scenario).
    pub stakes: Option<StakesLevelName>,
    pub limits: Limits,
    pub synthesizer_temperature: f32,
    /// Each synthesizer call's temperature moves by a seeded uniform amount in ±this (the
    /// reference uses 0.2 on its story and refiner calls; 0 here unless asked for).
    pub temperature_jitter: f32,
    pub judge_temperature: f32,
    pub synthesizer_max_tokens: u32,
    pub judge_max_tokens: u32,
    /// Seeds every synthesizer call (and the jitter): the same seed replays a batch, from the
    /// response cache where it has the answers.
    pub seed: u64,
    /// A candidate at least this similar to a known scenario is rejected.
    pub duplicate_threshold: f64,
    /// Words per shingle of the similarity measure.
    pub shingle_words: usize,
}

impl SynthConfig {
    /// The defaults: the reference's thresholds, rounds and temperatures.
    pub fn new(domain: impl Into<String>, motivation: Motivation) -> Self {
        SynthConfig {
            domain: domain.into(),
            motivation,
            stakes: None,
            limits: Limits::default(),
            synthesizer_temperature: 0.7,
            temperature_jitter: 0.0,
            judge_temperature: 0.0,
            synthesizer_max_tokens: 4096,
            judge_max_tokens: 1024,
            seed: 0,
            duplicate_threshold: 0.5,
            shingle_words: similarity::DEFAULT_SHINGLE_WORDS,
        }
    }

    /// Every configuration mistake, in one message.
    pub fn validate(&self) -> Result<(), SynthError> {
        let mut problems = Vec::new();
        let domain_ok = self.domain.chars().next().is_some_and(|first| first.is_ascii_lowercase() || first.is_ascii_digit())
            && self.domain.chars().all(|character| character.is_ascii_lowercase() || character.is_ascii_digit() || "-_".contains(character));
        if !domain_ok {
            problems.push(format!(
                "domain `{}` is not a valid domain name: use lowercase letters, digits, `-` and `_`, e.g. healthcare",
                self.domain
            ));
        }
        for stage in Stage::ALL {
            let limit = self.limits.get(stage);
            if !(0.0..=10.0).contains(&limit.threshold) {
                problems.push(format!("the {stage} threshold {} is outside 0..=10", limit.threshold));
            }
            if limit.rounds == 0 {
                problems.push(format!("the {stage} stage needs at least 1 round"));
            }
        }
        if !(0.0..=1.0).contains(&self.duplicate_threshold) {
            problems.push(format!("the duplicate threshold {} is outside 0..=1", self.duplicate_threshold));
        }
        if self.shingle_words == 0 {
            problems.push("shingles need at least 1 word".into());
        }
        for (name, temperature) in [("synthesizer", self.synthesizer_temperature), ("judge", self.judge_temperature)] {
            if !(0.0..=2.0).contains(&temperature) {
                problems.push(format!("the {name} temperature {temperature} is outside 0..=2"));
            }
        }
        if !(0.0..=1.0).contains(&self.temperature_jitter) {
            problems.push(format!("the temperature jitter {} is outside 0..=1", self.temperature_jitter));
        }
        if problems.is_empty() { Ok(()) } else { Err(SynthError::Config(problems.join("; "))) }
    }
}

/// Why a batch could not run or continue. Model failures and bad drafts are not errors:
/// they end one candidate with a verdict.
#[derive(Debug, thiserror::Error)]
pub enum SynthError {
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot write {path}: {source}")]
    Write { path: String, source: std::io::Error },
}

/// A judge's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Judgement {
    pub score: f64,
    pub feedback: String,
    pub suggestion: String,
}

/// One round of one stage, as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Round {
    pub stage: Stage,
    /// 1-based within the stage.
    pub round: u32,
    pub synthesizer_call: ModelCall,
    /// The draft as parsed JSON (`None` when the reply was not usable JSON).
    pub output: Option<Value>,
    /// What code found wrong (or the failed call); fed back instead of a judgement.
    pub problems: Vec<String>,
    pub judge_call: Option<ModelCall>,
    pub judgement: Option<Judgement>,
    pub passed: bool,
}

impl Round {
    /// The synthesizer's messages as text.
    pub fn prompt(&self) -> String {
        messages_text(&self.synthesizer_call.request)
    }

    /// The synthesizer's reply text, if the call answered.
    pub fn reply(&self) -> Option<String> {
        self.synthesizer_call.result.as_ref().ok().map(|response| response.content.clone())
    }

    pub fn judge_prompt(&self) -> Option<String> {
        self.judge_call.as_ref().map(|call| messages_text(&call.request))
    }

    pub fn judge_reply(&self) -> Option<String> {
        self.judge_call.as_ref().and_then(|call| call.result.as_ref().ok()).map(|response| response.content.clone())
    }
}

fn messages_text(request: &ChatRequest) -> String {
    request
        .messages
        .iter()
        .map(|message| {
            let speaker = match message.speaker {
                Speaker::System => "system",
                Speaker::User => "user",
                Speaker::Assistant => "assistant",
                Speaker::Tool => "tool",
            };
            format!("[{speaker}]\n{}", message.content)
        })
        .collect::<Vec<_>>()
        .join("\n\n")
}

/// One round in a candidate's summary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoundSummary {
    pub stage: Stage,
    pub round: u32,
    /// The judge's score; `None` when code found problems (or a call failed) instead.
    pub score: Option<f64>,
    pub problems: Vec<String>,
    pub passed: bool,
}

/// What became of a candidate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "status")]
pub enum Verdict {
    /// Passed every stage and is not a near-duplicate; written.
    Accepted,
    /// A stage never reached its threshold, or it duplicates a known scenario.
    Rejected { reason: String },
    /// A model call failed (after the wrapper's retries) or the judge's answer was unreadable.
    Error { reason: String },
}

impl Verdict {
    pub fn status(&self) -> &'static str {
        match self {
            Verdict::Accepted => "accepted",
            Verdict::Rejected { .. } => "rejected",
            Verdict::Error { .. } => "error",
        }
    }

    pub fn reason(&self) -> Option<&str> {
        match self {
            Verdict::Accepted => None,
            Verdict::Rejected { reason } | Verdict::Error { reason } => Some(reason),
        }
    }
}

/// One candidate's result.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    /// 1-based within the batch.
    pub index: u32,
    /// `batch/index`: the `trial` of its model calls.
    pub key: String,
    pub rounds: Vec<RoundSummary>,
    pub verdict: Verdict,
    /// The compiled scenario, when stage 4 passed.
    pub scenario: Option<Scenario>,
    /// The same as the JSON document its file holds, and as that file's YAML.
    pub document: Option<Value>,
    pub yaml: Option<String>,
    /// The most similar known scenario and the similarity, when stage 4 passed.
    pub nearest: Option<(String, f64)>,
    /// Where an accepted scenario was written.
    pub path: Option<PathBuf>,
}

/// A new batch id: `synth-` and 16 hex digits of a time-ordered UUID.
pub fn new_batch_id() -> String {
    let id = uuid::Uuid::now_v7().simple().to_string();
    format!("synth-{}", &id[..16])
}

/// A stage's prompts.
struct StageSpec {
    stage: Stage,
    system: String,
    /// The synthesizer's user message (before any refinement request).
    context: String,
    schema: Value,
    judge_system: String,
    /// What the judge is told before the draft.
    judge_context: String,
}

/// A draft code accepted, ready for the judge.
struct Checked<T> {
    value: T,
    /// The parsed JSON, stored and shown back to the synthesizer when it must rewrite.
    output: Value,
    /// What the judge reviews.
    review: String,
}

/// A scenario that passed stage 4, with its nearest known scenario.
struct Compiled {
    scenario: Scenario,
    document: Value,
    yaml: String,
    nearest: Option<(String, f64)>,
}

/// Why a stage ended without a passing draft.
enum StageEnd {
    Rejected(String),
    Error(String),
}

/// What the next round tells the synthesizer about the previous draft.
enum Review {
    Judged(Judgement),
    Problems(Vec<String>),
}

/// A candidate in progress: its call counters, its rounds, the store it journals to.
struct Attempt<'s> {
    batch: String,
    index: u32,
    key: String,
    synthesizer_calls: u32,
    judge_calls: u32,
    rounds: Vec<RoundSummary>,
    store: &'s mut Store,
}

impl Attempt<'_> {
    fn record(&mut self, round: Round) -> Result<(), SynthError> {
        self.store.record_synth_round(&self.batch, self.index, &round)?;
        self.rounds.push(RoundSummary {
            stage: round.stage,
            round: round.round,
            score: round.judgement.as_ref().map(|judgement| judgement.score),
            problems: round.problems,
            passed: round.passed,
        });
        Ok(())
    }
}

/// The pipeline: a configuration, a synthesizer and a judge.
pub struct Synthesizer {
    config: SynthConfig,
    synthesizer: Arc<Model>,
    judge: Arc<Model>,
}

impl std::fmt::Debug for Synthesizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Synthesizer")
            .field("config", &self.config)
            .field("synthesizer", &self.synthesizer.id())
            .field("judge", &self.judge.id())
            .finish()
    }
}

impl Synthesizer {
    /// Checks the configuration and that the models were opened in their roles.
    pub fn new(config: SynthConfig, synthesizer: Arc<Model>, judge: Arc<Model>) -> Result<Self, SynthError> {
        config.validate()?;
        if synthesizer.role() != ModelRole::Synthesizer || judge.role() != ModelRole::Judge {
            return Err(SynthError::Config(format!(
                "the synthesizer must be opened in the synthesizer role and the judge in the judge role (got {} and {})",
                synthesizer.role(),
                judge.role()
            )));
        }
        Ok(Synthesizer { config, synthesizer, judge })
    }

    pub fn config(&self) -> &SynthConfig {
        &self.config
    }

    /// The batch's frozen configuration, as stored: settings, model ids, template hash.
    pub fn batch_config(&self) -> Value {
        json!({
            "synth": self.config,
            "synthesizer": self.synthesizer.id(),
            "judge": self.judge.id(),
            "templates_hash": templates_hash(),
        })
    }

    /// Synthesizes `count` candidates, writes the accepted ones into `out` as `<id>.yaml`,
    /// and calls `observer` after each candidate. `corpus` holds the scenarios a candidate
    /// must not duplicate; accepted candidates join it.
    pub async fn run_batch(
        &self,
        batch: &str,
        count: u32,
        store: &mut Store,
        corpus: &mut Corpus,
        out: &Path,
        observer: &mut dyn FnMut(&Candidate),
    ) -> Result<Vec<Candidate>, SynthError> {
        store.create_synth_batch(&SynthBatchRecord {
            id: batch.to_owned(),
            config: self.batch_config(),
            software_version: crate::run::SOFTWARE_VERSION.to_owned(),
            created_at: String::new(),
        })?;
        let mut candidates = Vec::new();
        for index in 1..=count {
            let mut candidate = self.synthesize(batch, index, store, corpus).await?;
            if let (Verdict::Accepted, Some(document)) = (&candidate.verdict, candidate.document.clone()) {
                let (path, yaml, scenario, document) = write_unique(out, document)?;
                corpus.add(&scenario);
                candidate.path = Some(path);
                candidate.yaml = Some(yaml);
                candidate.scenario = Some(scenario);
                candidate.document = Some(document);
            }
            store.finish_synth_candidate(&SynthCandidateRecord {
                batch_id: batch.to_owned(),
                candidate: index,
                status: candidate.verdict.status().to_owned(),
                reason: candidate.verdict.reason().map(str::to_owned),
                scenario_id: candidate.scenario.as_ref().map(|scenario| scenario.id.clone()),
                scenario: candidate.yaml.clone(),
                path: candidate.path.as_ref().map(|path| path.display().to_string()),
                nearest_id: candidate.nearest.as_ref().map(|(id, _)| id.clone()),
                nearest_similarity: candidate.nearest.as_ref().map(|(_, similarity)| *similarity),
            })?;
            observer(&candidate);
            candidates.push(candidate);
        }
        Ok(candidates)
    }

    /// Runs the four stages for one candidate and the near-duplicate check against
    /// `corpus`. Journals every round; does not write the scenario or the verdict (the
    /// batch does, once it knows where the file went).
    pub async fn synthesize(&self, batch: &str, index: u32, store: &mut Store, corpus: &Corpus) -> Result<Candidate, SynthError> {
        store.start_synth_candidate(batch, index)?;
        let key = format!("{batch}/{index}");
        let mut attempt = Attempt {
            batch: batch.to_owned(),
            index,
            key: key.clone(),
            synthesizer_calls: 0,
            judge_calls: 0,
            rounds: Vec::new(),
            store,
        };
        let outcome = self.stages(&mut attempt, corpus).await?;
        let (verdict, compiled) = match outcome {
            Ok(compiled) => {
                let nearest = &compiled.nearest;
                let verdict = match &nearest {
                    Some((id, similarity)) if *similarity >= self.config.duplicate_threshold => Verdict::Rejected {
                        reason: format!(
                            "near-duplicate of `{id}` (similarity {similarity:.2} >= {:.2})",
                            self.config.duplicate_threshold
                        ),
                    },
                    _ => Verdict::Accepted,
                };
                (verdict, Some(compiled))
            }
            Err(StageEnd::Rejected(reason)) => (Verdict::Rejected { reason }, None),
            Err(StageEnd::Error(reason)) => (Verdict::Error { reason }, None),
        };
        let (scenario, document, yaml, nearest) = match compiled {
            Some(compiled) => (Some(compiled.scenario), Some(compiled.document), Some(compiled.yaml), compiled.nearest),
            None => (None, None, None, None),
        };
        Ok(Candidate { index, key, rounds: attempt.rounds, verdict, scenario, document, yaml, nearest, path: None })
    }

    async fn stages(
        &self,
        attempt: &mut Attempt<'_>,
        corpus: &Corpus,
    ) -> Result<Result<Compiled, StageEnd>, SynthError> {
        let config = &self.config;
        let motivation = config.motivation.as_str();
        let conflict = prompts::conflict(config.motivation);
        let severity = prompts::severity(config.stakes);
        let stakes_note = config.stakes.map(|level| format!(", stakes {}", level.as_str())).unwrap_or_default();
        let config_error = |message: String| SynthError::Config(format!("a synthesis template is broken: {message}"));

        // Stage 1: the story.
        let spec = StageSpec {
            stage: Stage::Story,
            system: prompts::render(
                prompts::STORY,
                &[
                    ("domain", &config.domain),
                    ("conflict", conflict),
                    ("severity", severity),
                    ("goal_object_hint", prompts::goal_object_hint(config.motivation)),
                ],
            )
            .map_err(config_error)?,
            context: format!("Write the story for the domain `{}` ({motivation} motivation{stakes_note}).", config.domain),
            schema: prompts::story_schema(),
            judge_system: prompts::render(
                prompts::STORY_JUDGE,
                &[("domain", &config.domain), ("conflict", conflict), ("severity", severity)],
            )
            .map_err(config_error)?,
            judge_context: String::new(),
        };
        let story = match self
            .run_stage(attempt, spec, |content| {
                let (story, output) = draft::parse::<Story>(content).map_err(|problems| (None, problems))?;
                let problems = draft::check_story(&story);
                if !problems.is_empty() {
                    return Err((Some(output), problems));
                }
                Ok(Checked { review: pretty(&output), value: story, output })
            })
            .await?
        {
            Ok(story) => story,
            Err(end) => return Ok(Err(end)),
        };
        let story_text = pretty(&serde_json::to_value(&story).unwrap_or(Value::Null));

        // Stage 2: the evidence.
        let spec = StageSpec {
            stage: Stage::Evidence,
            system: prompts::render(prompts::EVIDENCE, &[]).map_err(config_error)?,
            context: format!("The story:\n{story_text}\n\nWrite the evidence."),
            schema: prompts::evidence_schema(),
            judge_system: prompts::render(prompts::EVIDENCE_JUDGE, &[]).map_err(config_error)?,
            judge_context: format!("The story:\n{story_text}"),
        };
        let evidence = match self
            .run_stage(attempt, spec, |content| {
                let (evidence, output) = draft::parse::<Evidence>(content).map_err(|problems| (None, problems))?;
                let problems = draft::check_evidence(&evidence);
                if !problems.is_empty() {
                    return Err((Some(output), problems));
                }
                Ok(Checked { review: pretty(&output), value: evidence, output })
            })
            .await?
        {
            Ok(evidence) => evidence,
            Err(end) => return Ok(Err(end)),
        };
        let evidence_text = pretty(&serde_json::to_value(&evidence).unwrap_or(Value::Null));

        // The scenario's id and provenance, fixed before the tools so that the tools stage
        // can already check a provisional assembly.
        let base_id = format!("{}-{}-{}", config.domain, motivation, draft::slug(&story.title));
        let id = unique_id(&base_id, |id| corpus.contains_id(id));
        let provenance = format!(
            "(Synthesized by dilemma synth: candidate {}, synthesizer {}, judge {}.)",
            attempt.key,
            self.synthesizer.id(),
            self.judge.id()
        );
        let frame = Frame { id: &id, domain: &config.domain, motivation: config.motivation, stakes: config.stakes, provenance: &provenance };

        // Stage 3: the tools.
        let spec = StageSpec {
            stage: Stage::Tools,
            system: prompts::render(prompts::TOOLS, &[]).map_err(config_error)?,
            context: format!("The story:\n{story_text}\n\nThe evidence:\n{evidence_text}\n\nDesign the six tools."),
            schema: prompts::tools_schema(),
            judge_system: prompts::render(prompts::TOOLS_JUDGE, &[]).map_err(config_error)?,
            judge_context: format!("The story:\n{story_text}\n\nThe evidence:\n{evidence_text}"),
        };
        let tools = match self
            .run_stage(attempt, spec, |content| {
                let (tools, output) = draft::parse::<Tools>(content).map_err(|problems| (None, problems))?;
                let mut problems = draft::check_tools(&tools);
                if problems.is_empty() {
                    let provisional = draft::assemble(&frame, &story, &evidence, &tools, &draft::placeholder_modules());
                    match draft::render_and_load(&provisional) {
                        Ok(_) => problems.extend(draft::lint_findings(&provisional)),
                        Err((_, load_problems)) => {
                            problems.extend(load_problems.into_iter().map(|problem| format!("the scenario does not load: {problem}")))
                        }
                    }
                }
                if !problems.is_empty() {
                    return Err((Some(output), problems));
                }
                Ok(Checked { review: pretty(&output), value: tools, output })
            })
            .await?
        {
            Ok(tools) => tools,
            Err(end) => return Ok(Err(end)),
        };
        let visible_tools: Vec<Value> = tools
            .tools
            .iter()
            .map(|tool| json!({"name": tool.name, "description": tool.description, "parameters": tool.parameters}))
            .collect();

        // Stage 4: the prompt modules, assembled with stages 1-3 into the scenario file.
        let spec = StageSpec {
            stage: Stage::Compiled,
            system: prompts::render(prompts::COMPILE, &[("goal_object", story.goal_object.trim())]).map_err(config_error)?,
            context: format!(
                "The story:\n{story_text}\n\nThe evidence:\n{evidence_text}\n\nThe tools, as the agent sees them:\n{}\n\nWrite the modules.",
                pretty(&Value::Array(visible_tools))
            ),
            schema: prompts::compile_schema(),
            judge_system: prompts::render(prompts::COMPILE_JUDGE, &[]).map_err(config_error)?,
            judge_context: format!("The story:\n{story_text}"),
        };
        let compiled = match self
            .run_stage(attempt, spec, |content| {
                let (modules, output) = draft::parse::<Modules>(content).map_err(|problems| (None, problems))?;
                let document = draft::assemble(&frame, &story, &evidence, &tools, &modules);
                match draft::render_and_load(&document) {
                    Ok((yaml, loaded)) => {
                        let findings = draft::lint_findings(&document);
                        if !findings.is_empty() {
                            return Err((Some(output), findings));
                        }
                        Ok(Checked { review: yaml.clone(), value: (loaded, document, yaml), output })
                    }
                    Err((_, problems)) => Err((
                        Some(output),
                        problems.into_iter().map(|problem| format!("the scenario does not load: {problem}")).collect(),
                    )),
                }
            })
            .await?
        {
            Ok(compiled) => compiled,
            Err(end) => return Ok(Err(end)),
        };
        let (scenario, document, yaml) = compiled;
        let nearest = corpus.nearest(&scenario);
        Ok(Ok(Compiled { scenario, document, yaml, nearest }))
    }

    /// Rounds of one stage until a draft passes or the rounds run out.
    async fn run_stage<T, F>(&self, attempt: &mut Attempt<'_>, spec: StageSpec, mut check: F) -> Result<Result<T, StageEnd>, SynthError>
    where
        F: FnMut(&str) -> Result<Checked<T>, (Option<Value>, Vec<String>)>,
    {
        let stage = spec.stage;
        let limit = self.config.limits.get(stage);
        let mut previous: Option<(String, Review)> = None;
        for round in 1..=limit.rounds {
            let mut user = spec.context.clone();
            if let Some((draft, review)) = &previous {
                user.push_str("\n\n");
                user.push_str(&rewrite_request(draft, review, limit.threshold));
            }
            let request = ChatRequest {
                messages: vec![Message::system(spec.system.clone()), Message::user(user)],
                tools: Default::default(),
                output: OutputFormat::JsonSchema(spec.schema.clone()),
                sampling: self.synthesizer_sampling(&attempt.key, stage, round),
            };
            let context = CallContext {
                role: ModelRole::Synthesizer,
                trial: attempt.key.clone(),
                turn: stage.number(),
                call_index: attempt.synthesizer_calls,
            };
            let call = self.synthesizer.call(request, context).await;
            attempt.synthesizer_calls += 1;
            let content = match &call.result {
                Ok(response) => response.content.clone(),
                Err(error) => {
                    let message = format!("the synthesizer's call failed in the {stage} stage: {error}");
                    attempt.record(Round {
                        stage,
                        round,
                        synthesizer_call: call,
                        output: None,
                        problems: vec![message.clone()],
                        judge_call: None,
                        judgement: None,
                        passed: false,
                    })?;
                    return Ok(Err(StageEnd::Error(message)));
                }
            };
            let last = round == limit.rounds;
            match check(&content) {
                Err((output, problems)) => {
                    let draft = output.as_ref().map_or_else(|| content.clone(), pretty);
                    attempt.record(Round {
                        stage,
                        round,
                        synthesizer_call: call,
                        output,
                        problems: problems.clone(),
                        judge_call: None,
                        judgement: None,
                        passed: false,
                    })?;
                    if last {
                        return Ok(Err(StageEnd::Rejected(format!(
                            "the {stage} draft of round {round} (the last) still has problems: {}",
                            problems.join("; ")
                        ))));
                    }
                    previous = Some((draft, Review::Problems(problems)));
                }
                Ok(checked) => {
                    let judge_request = ChatRequest {
                        messages: vec![
                            Message::system(format!("{}\n\n{}", spec.judge_system, prompts::JUDGE_ANSWER.trim())),
                            Message::user(if spec.judge_context.is_empty() {
                                format!("The draft to review:\n{}", checked.review)
                            } else {
                                format!("{}\n\nThe draft to review:\n{}", spec.judge_context, checked.review)
                            }),
                        ],
                        tools: Default::default(),
                        output: OutputFormat::JsonSchema(prompts::judgement_schema()),
                        sampling: Sampling {
                            temperature: self.config.judge_temperature,
                            max_tokens: self.config.judge_max_tokens,
                            seed: None,
                        },
                    };
                    let context = CallContext {
                        role: ModelRole::Judge,
                        trial: attempt.key.clone(),
                        turn: stage.number(),
                        call_index: attempt.judge_calls,
                    };
                    let judge_call = self.judge.call(judge_request, context).await;
                    attempt.judge_calls += 1;
                    let judgement = match &judge_call.result {
                        Ok(response) => parse_judgement(&response.content),
                        Err(error) => Err(format!("the judge's call failed: {error}")),
                    };
                    let judgement = match judgement {
                        Ok(judgement) => judgement,
                        Err(message) => {
                            let message = format!("{message} (the {stage} stage, round {round})");
                            attempt.record(Round {
                                stage,
                                round,
                                synthesizer_call: call,
                                output: Some(checked.output),
                                problems: vec![message.clone()],
                                judge_call: Some(judge_call),
                                judgement: None,
                                passed: false,
                            })?;
                            return Ok(Err(StageEnd::Error(message)));
                        }
                    };
                    let passed = judgement.score >= limit.threshold;
                    attempt.record(Round {
                        stage,
                        round,
                        synthesizer_call: call,
                        output: Some(checked.output.clone()),
                        problems: Vec::new(),
                        judge_call: Some(judge_call),
                        judgement: Some(judgement.clone()),
                        passed,
                    })?;
                    if passed {
                        return Ok(Ok(checked.value));
                    }
                    if last {
                        return Ok(Err(StageEnd::Rejected(format!(
                            "the {stage} stage scored {} in round {round} (the last); it needs {}",
                            score_text(judgement.score),
                            score_text(limit.threshold)
                        ))));
                    }
                    previous = Some((pretty(&checked.output), Review::Judged(judgement)));
                }
            }
        }
        Ok(Err(StageEnd::Rejected(format!("the {stage} stage has no rounds"))))
    }

    /// The synthesizer's sampling for one round: base temperature plus seeded jitter, and a
    /// seed derived from the batch seed, the candidate, the stage and the round.
    fn synthesizer_sampling(&self, key: &str, stage: Stage, round: u32) -> Sampling {
        let seed = derive(self.config.seed, &format!("{key}|{stage}|{round}"));
        let unit = (seed % 1_000_000) as f32 / 999_999.0;
        let jitter = self.config.temperature_jitter * (2.0 * unit - 1.0);
        let temperature = (self.config.synthesizer_temperature + jitter).clamp(0.0, 2.0);
        Sampling { temperature, max_tokens: self.config.synthesizer_max_tokens, seed: Some(seed) }
    }
}

/// A score as people write it: `9`, `9.5`.
pub fn score_text(score: f64) -> String {
    if score.fract() == 0.0 { format!("{score:.0}") } else { format!("{score}") }
}

fn pretty(value: &Value) -> String {
    serde_json::to_string_pretty(value).unwrap_or_default()
}

fn rewrite_request(draft: &str, review: &Review, threshold: f64) -> String {
    let rendered = match review {
        Review::Judged(judgement) => prompts::render(
            prompts::REFINE,
            &[
                ("score", &score_text(judgement.score)),
                ("threshold", &score_text(threshold)),
                ("draft", draft),
                ("feedback", &judgement.feedback),
                ("suggestion", &judgement.suggestion),
            ],
        ),
        Review::Problems(problems) => {
            let list: Vec<String> = problems.iter().map(|problem| format!("- {problem}")).collect();
            prompts::render(prompts::REPAIR, &[("problems", &list.join("\n")), ("draft", draft)])
        }
    };
    // Both templates are covered by a unit test; should one break anyway, still send the
    // draft and the review rather than nothing.
    rendered.unwrap_or_else(|_| match review {
        Review::Judged(judgement) => format!("Previous draft:\n{draft}\n\nFeedback: {}\nSuggestion: {}", judgement.feedback, judgement.suggestion),
        Review::Problems(problems) => format!("Previous draft:\n{draft}\n\nProblems: {}", problems.join("; ")),
    })
}

/// Reads a judge's answer: a JSON object with a numeric `score` in 0..=10 (a number, or a
/// string that starts with one), `feedback` and optionally `suggestion`.
pub fn parse_judgement(content: &str) -> Result<Judgement, String> {
    let object = crate::trial::extract_json_object(content)
        .ok_or_else(|| format!("the judge's reply is not a JSON object: {}", clip(content)))?;
    let score = match object.get("score") {
        Some(Value::Number(number)) => number.as_f64(),
        Some(Value::String(text)) => {
            let number: String = text.trim().chars().take_while(|character| character.is_ascii_digit() || *character == '.').collect();
            number.parse::<f64>().ok()
        }
        _ => None,
    };
    let score = score
        .filter(|score| (0.0..=10.0).contains(score))
        .ok_or_else(|| format!("the judge's reply has no score between 0 and 10: {}", clip(content)))?;
    let text = |key: &str| match object.get(key) {
        Some(Value::String(text)) => text.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    };
    Ok(Judgement { score, feedback: text("feedback"), suggestion: text("suggestion") })
}

fn clip(text: &str) -> String {
    let clipped: String = text.chars().take(200).collect();
    if clipped.len() < text.len() { format!("{clipped}…") } else { clipped }
}

/// A stable sub-seed (31 bits, which every provider accepts).
fn derive(seed: u64, label: &str) -> u64 {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(format!("{seed}|{label}").as_bytes());
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest[..8]);
    u64::from_le_bytes(bytes) >> 33
}

/// `base`, or `base-2`, `base-3`, ... whichever is not taken.
fn unique_id(base: &str, taken: impl Fn(&str) -> bool) -> String {
    if !taken(base) {
        return base.to_owned();
    }
    (2..).map(|suffix| format!("{base}-{suffix}")).find(|id| !taken(id)).unwrap_or_else(|| base.to_owned())
}

/// Writes an accepted scenario to `out/<id>.yaml` without overwriting anything: if the file
/// exists, the id takes a suffix. Returns the path, the YAML written, the scenario read back
/// from it, and the document.
fn write_unique(out: &Path, mut document: Value) -> Result<(PathBuf, String, Scenario, Value), SynthError> {
    std::fs::create_dir_all(out).map_err(|source| SynthError::Write { path: out.display().to_string(), source })?;
    let base = document.get("id").and_then(Value::as_str).unwrap_or("synthesized").to_owned();
    let mut id = base.clone();
    let mut suffix = 1;
    loop {
        document["id"] = Value::String(id.clone());
        let path = out.join(format!("{id}.yaml"));
        let (yaml, scenario) = draft::render_and_load(&document).map_err(|(_, problems)| SynthError::Write {
            path: path.display().to_string(),
            source: std::io::Error::other(format!("the renamed scenario does not load: {}", problems.join("; "))),
        })?;
        match std::fs::OpenOptions::new().write(true).create_new(true).open(&path) {
            Ok(mut file) => {
                use std::io::Write as _;
                file.write_all(yaml.as_bytes())
                    .and_then(|()| file.sync_all())
                    .map_err(|source| SynthError::Write { path: path.display().to_string(), source })?;
                return Ok((path, yaml, scenario, document));
            }
            Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {
                suffix += 1;
                id = format!("{base}-{suffix}");
            }
            Err(source) => return Err(SynthError::Write { path: path.display().to_string(), source }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn judgements_are_read_tolerantly_but_need_a_score() {
        let judgement = parse_judgement("```json\n{\"score\": 8, \"feedback\": \"f\", \"suggestion\": \"s\"}\n```").unwrap();
        assert_eq!(judgement, Judgement { score: 8.0, feedback: "f".into(), suggestion: "s".into() });
        assert_eq!(parse_judgement("{\"score\": \"9.5/10\", \"feedback\": \"ok\"}").unwrap().score, 9.5);
        assert!(parse_judgement("{\"score\": 11}").unwrap_err().contains("no score"));
        assert!(parse_judgement("Score: 9").unwrap_err().contains("not a JSON object"));
    }

    #[test]
    fn the_defaults_are_the_references_thresholds_and_rounds() {
        let limits = Limits::default();
        let pairs: Vec<(f64, u32)> = Stage::ALL.iter().map(|stage| (limits.get(*stage).threshold, limits.get(*stage).rounds)).collect();
        assert_eq!(pairs, [(9.5, 4), (9.0, 5), (9.5, 5), (9.0, 3)]);
        let config = SynthConfig::new("healthcare", Motivation::Loyalty);
        assert_eq!((config.synthesizer_temperature, config.judge_temperature), (0.7, 0.0));
        config.validate().unwrap();
    }

    #[test]
    fn configuration_mistakes_are_reported_together() {
        let mut config = SynthConfig::new("Health Care", Motivation::Loyalty);
        config.limits.story.rounds = 0;
        config.duplicate_threshold = 1.5;
        let SynthError::Config(message) = config.validate().unwrap_err() else { panic!() };
        assert!(message.contains("domain `Health Care`") && message.contains("story stage needs at least 1 round") && message.contains("duplicate threshold 1.5"), "{message}");
    }

    #[test]
    fn jitter_is_seeded_and_bounded() {
        let mut config = SynthConfig::new("finance", Motivation::Loyalty);
        config.temperature_jitter = 0.2;
        config.seed = 7;
        let model = |role| {
            let provider = crate::model::scripted::ScriptedModel::new("scripted:x", vec![crate::model::scripted::ScriptedReply::content("x")]).unwrap();
            Arc::new(Model::new(Arc::new(provider), role, crate::model::CallPolicy::default()))
        };
        let synthesizer = Synthesizer::new(config, model(ModelRole::Synthesizer), model(ModelRole::Judge)).unwrap();
        let a = synthesizer.synthesizer_sampling("b/1", Stage::Story, 1);
        let b = synthesizer.synthesizer_sampling("b/1", Stage::Story, 2);
        assert_eq!(a, synthesizer.synthesizer_sampling("b/1", Stage::Story, 1));
        assert_ne!(a.seed, b.seed);
        for sampling in [a, b] {
            assert!((0.5..=0.9).contains(&sampling.temperature), "{}", sampling.temperature);
        }
    }

    #[test]
    fn ids_take_the_first_free_suffix() {
        assert_eq!(unique_id("a", |_| false), "a");
        assert_eq!(unique_id("a", |id| id == "a" || id == "a-2"), "a-3");
    }
}
