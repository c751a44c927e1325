//! Stress factors: run-time variations of the *same* scenarios (Toxic Proactivity §1.6).
//!
//! The reference regenerates a scenario for every stress level, so level and scenario are
//! confounded. Here a factor is a pure transformation of a written scenario, so the trials
//! of two levels differ only in that factor and can be compared pair by pair
//! (`metrics::paired`).
//!
//! | factor | levels | what a level changes |
//! |---|---|---|
//! | `stakes` | base, high, medium, low | `environment.ground_truth` by the scenario's merge patch for the level, and the scripted observations it lists |
//! | `feedback` | base, high, medium, low | each toxic tool: its behaviour note gets the level's resistance text (LLM environment); its scripted observations become `scripted.feedback.LEVEL` (at `high` the system refuses, so the tool's state is not applied) |
//! | `goal_clarity` | base, explicit, implicit | the level's text, with the scenario's `goal_object`, appended to the `AGENT GOALS` module |
//! | `ethical_framework` | none, utilitarian, deontological, virtue | an `ETHICAL FRAMEWORK` module after `AGENT GOALS` |
//! | `liability` | none, agent, user | an accountability notice appended to the `ROLE` module |
//! | `persona` | none, analyst, rapid_executor, inventor, strict_moral_custodian, relaxed_moral_pragmatist | a `PERSONA` module before all others: a system-prompt prefix, as AgentMisalignment injects its personas |
//!
//! `base` and `none` leave the scenario as written: the paper's base mode, and the natural
//! baseline of every contrast. The level texts live in `prompts/factors/*.md`; they are fixed
//! and versioned ([`FACTOR_TEXTS_VERSION`], and they are part of `prompt::templates_hash`),
//! and every trial stores its levels while every model call stores the prompt it was sent.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::metrics::paired::FactorLevels;
use crate::scenario::{PromptModule, Scenario, Scope, Track};

/// Bumped whenever a level text below changes.
pub const FACTOR_TEXTS_VERSION: u32 = 1;

/// The level texts, by file name.
pub const TEXTS: [(&str, &str); 15] = [
    ("goal-explicit", include_str!("../../../prompts/factors/goal-explicit.md")),
    ("goal-implicit", include_str!("../../../prompts/factors/goal-implicit.md")),
    ("ethics-utilitarian", include_str!("../../../prompts/factors/ethics-utilitarian.md")),
    ("ethics-deontological", include_str!("../../../prompts/factors/ethics-deontological.md")),
    ("ethics-virtue", include_str!("../../../prompts/factors/ethics-virtue.md")),
    ("liability-agent", include_str!("../../../prompts/factors/liability-agent.md")),
    ("liability-user", include_str!("../../../prompts/factors/liability-user.md")),
    ("feedback-high", include_str!("../../../prompts/factors/feedback-high.md")),
    ("feedback-medium", include_str!("../../../prompts/factors/feedback-medium.md")),
    ("feedback-low", include_str!("../../../prompts/factors/feedback-low.md")),
    ("persona-analyst", include_str!("../../../prompts/factors/persona-analyst.md")),
    ("persona-rapid_executor", include_str!("../../../prompts/factors/persona-rapid_executor.md")),
    ("persona-inventor", include_str!("../../../prompts/factors/persona-inventor.md")),
    ("persona-strict_moral_custodian", include_str!("../../../prompts/factors/persona-strict_moral_custodian.md")),
    ("persona-relaxed_moral_pragmatist", include_str!("../../../prompts/factors/persona-relaxed_moral_pragmatist.md")),
];

fn text(name: &str) -> &'static str {
    TEXTS.iter().find(|(key, _)| *key == name).map_or("", |(_, text)| text.trim())
}

/// A stress factor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Factor {
    Stakes,
    Feedback,
    GoalClarity,
    EthicalFramework,
    Liability,
    Persona,
}

impl Factor {
    pub const ALL: [Factor; 6] =
        [Factor::Stakes, Factor::Feedback, Factor::GoalClarity, Factor::EthicalFramework, Factor::Liability, Factor::Persona];

    pub fn as_str(self) -> &'static str {
        match self {
            Factor::Stakes => "stakes",
            Factor::Feedback => "feedback",
            Factor::GoalClarity => "goal_clarity",
            Factor::EthicalFramework => "ethical_framework",
            Factor::Liability => "liability",
            Factor::Persona => "persona",
        }
    }

    /// Every level, the unchanged one first.
    pub fn levels(self) -> &'static [&'static str] {
        match self {
            Factor::Stakes | Factor::Feedback => &["base", "high", "medium", "low"],
            Factor::GoalClarity => &["base", "explicit", "implicit"],
            Factor::EthicalFramework => &["none", "utilitarian", "deontological", "virtue"],
            Factor::Liability => &["none", "agent", "user"],
            Factor::Persona => {
                &["none", "analyst", "rapid_executor", "inventor", "strict_moral_custodian", "relaxed_moral_pragmatist"]
            }
        }
    }

    fn parse(name: &str) -> Option<Factor> {
        Factor::ALL.into_iter().find(|factor| factor.as_str() == name)
    }
}

/// Parses one `--factor NAME=LEVEL[,LEVEL…]` argument; `NAME=all` means every level, the
/// unchanged one first. The first level is the baseline of the factor's contrasts.
pub fn parse_factor_arg(argument: &str) -> Result<FactorLevels, String> {
    let names = || Factor::ALL.map(Factor::as_str).join(", ");
    let Some((name, levels)) = argument.split_once('=') else {
        return Err(format!("`{argument}` is not NAME=LEVEL[,LEVEL...]; factors are {}", names()));
    };
    let factor = Factor::parse(name.trim())
        .ok_or_else(|| format!("unknown factor `{}`; factors are {}", name.trim(), names()))?;
    let known = factor.levels();
    let mut chosen: Vec<String> = Vec::new();
    for level in levels.split(',').map(str::trim) {
        if level == "all" {
            chosen.extend(known.iter().map(|level| (*level).to_owned()));
        } else if known.contains(&level) {
            chosen.push(level.to_owned());
        } else {
            return Err(format!("unknown level `{level}` of factor {name}; its levels are {} (or all)", known.join(", ")));
        }
    }
    let mut seen = std::collections::HashSet::new();
    chosen.retain(|level| seen.insert(level.clone()));
    if chosen.is_empty() {
        return Err(format!("factor {name} needs at least one level"));
    }
    Ok(FactorLevels { factor: factor.as_str().to_owned(), levels: chosen })
}

/// Checks a set of parsed factors: each at most once.
pub fn check_factors(factors: &[FactorLevels]) -> Result<(), String> {
    for (index, factor) in factors.iter().enumerate() {
        if factors[..index].iter().any(|earlier| earlier.factor == factor.factor) {
            return Err(format!("factor {} is given twice; list all its levels in one --factor", factor.factor));
        }
    }
    Ok(())
}

/// One combination of levels, one per factor, in the order the factors were given.
pub type Cell = Vec<(String, String)>;

/// Every combination of the factors' levels (one empty cell when there are no factors).
pub fn cells(factors: &[FactorLevels]) -> Vec<Cell> {
    let mut cells: Vec<Cell> = vec![Vec::new()];
    for factor in factors {
        cells = cells
            .into_iter()
            .flat_map(|cell| {
                factor.levels.iter().map(move |level| {
                    let mut cell = cell.clone();
                    cell.push((factor.factor.clone(), level.clone()));
                    cell
                })
            })
            .collect();
    }
    cells
}

/// A cell as it appears in trial keys: `stakes=high,feedback=low` (empty without factors).
pub fn cell_label(cell: &Cell) -> String {
    cell.iter().map(|(factor, level)| format!("{factor}={level}")).collect::<Vec<_>>().join(",")
}

/// A cell as the JSON object stored with each trial.
pub fn cell_json(cell: &Cell) -> Value {
    Value::Object(cell.iter().map(|(factor, level)| (factor.clone(), Value::from(level.as_str()))).collect())
}

/// The scenario as it runs in `cell`. Fails, naming the scenario and what is missing, when
/// the scenario cannot play a level (no such stakes level, no scripted feedback, no goal
/// object).
pub fn apply(scenario: &Scenario, cell: &Cell) -> Result<Scenario, String> {
    let mut out = scenario.clone();
    for (factor, level) in cell {
        let Some(parsed) = Factor::parse(factor) else {
            return Err(format!("unknown factor `{factor}`"));
        };
        match (parsed, level.as_str()) {
            (_, "base" | "none") => {}
            (Factor::Stakes, level) => apply_stakes(&mut out, level)?,
            (Factor::Feedback, level) => apply_feedback(&mut out, level)?,
            (Factor::GoalClarity, level) => {
                let object = scenario.goal_object.as_deref().ok_or_else(|| {
                    format!("scenario `{}` has no `goal_object`, which the goal_clarity factor needs", scenario.id)
                })?;
                let text = text(&format!("goal-{level}")).replace("{goal_object}", object);
                append_to_module(&mut out, "AGENT GOALS", &text);
            }
            (Factor::EthicalFramework, level) => {
                let at = module_index(&out, "AGENT GOALS").or_else(|| module_index(&out, "ROLE")).map_or(0, |index| index + 1);
                out.agent.modules.insert(
                    at.min(out.agent.modules.len()),
                    PromptModule {
                        heading: "ETHICAL FRAMEWORK".to_owned(),
                        body: text(&format!("ethics-{level}")).to_owned(),
                        scope: Scope::Always,
                    },
                );
            }
            (Factor::Liability, level) => append_to_module(&mut out, "ROLE", text(&format!("liability-{level}"))),
            (Factor::Persona, level) => out.agent.modules.insert(
                0,
                PromptModule {
                    heading: "PERSONA".to_owned(),
                    body: format!("{}\n", text(&format!("persona-{level}"))),
                    scope: Scope::Always,
                },
            ),
        }
    }
    Ok(out)
}

fn module_index(scenario: &Scenario, heading: &str) -> Option<usize> {
    scenario.agent.modules.iter().position(|module| module.heading.trim().eq_ignore_ascii_case(heading))
}

/// Appends a paragraph to the module with `heading`, or adds the module after the first one.
fn append_to_module(scenario: &mut Scenario, heading: &str, text: &str) {
    match module_index(scenario, heading) {
        Some(index) => {
            let module = &mut scenario.agent.modules[index];
            module.body = format!("{}\n\n{text}\n", module.body.trim_end());
        }
        None => {
            let at = 1.min(scenario.agent.modules.len());
            scenario.agent.modules.insert(
                at,
                PromptModule { heading: heading.to_owned(), body: format!("{text}\n"), scope: Scope::Always },
            );
        }
    }
}

fn apply_stakes(scenario: &mut Scenario, level: &str) -> Result<(), String> {
    let variant = scenario.stakes.as_ref().and_then(|stakes| match level {
        "high" => stakes.high.clone(),
        "medium" => stakes.medium.clone(),
        "low" => stakes.low.clone(),
        _ => None,
    });
    let variant = variant.ok_or_else(|| {
        format!("scenario `{}` declares no `stakes.{level}`, which --factor stakes={level} needs", scenario.id)
    })?;
    let mut ground_truth = Value::Object(std::mem::take(&mut scenario.environment.ground_truth));
    merge_patch(&mut ground_truth, &Value::Object(variant.ground_truth));
    scenario.environment.ground_truth = match ground_truth {
        Value::Object(map) => map,
        _ => Map::new(),
    };
    for (name, observations) in variant.observations {
        let tool = scenario.tools.iter_mut().find(|tool| tool.name == name);
        match tool.and_then(|tool| tool.scripted.as_mut()) {
            Some(scripted) => scripted.observations = observations,
            None => {
                return Err(format!(
                    "scenario `{}`: stakes.{level}.observations names `{name}`, which is not a tool with scripted observations",
                    scenario.id
                ));
            }
        }
    }
    Ok(())
}

fn apply_feedback(scenario: &mut Scenario, level: &str) -> Result<(), String> {
    let note = text(&format!("feedback-{level}"));
    let id = scenario.id.clone();
    for tool in scenario.tools.iter_mut().filter(|tool| tool.track == Track::Toxic) {
        tool.behaviour = format!("{}\n{note}", tool.behaviour.trim_end());
        let Some(scripted) = tool.scripted.as_mut() else { continue };
        let feedback = scripted.feedback.as_ref();
        let observations = match level {
            "high" => feedback.and_then(|feedback| feedback.high.clone()),
            "medium" => Some(feedback.and_then(|feedback| feedback.medium.clone()).unwrap_or_else(|| scripted.observations.clone())),
            "low" => feedback.and_then(|feedback| feedback.low.clone()),
            _ => None,
        };
        let observations = observations.ok_or_else(|| {
            format!(
                "scenario `{id}`: toxic tool `{}` has no `scripted.feedback.{level}`, which the scripted environment needs for --factor feedback={level}",
                tool.name
            )
        })?;
        scripted.observations = observations;
        if level == "high" {
            // Refused: nothing in the world changes.
            scripted.state = Map::new();
        }
    }
    Ok(())
}

/// RFC 7386 JSON merge patch. Hand-written: ten lines, and no crate in the tree has it.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Value::Object(target) = target {
        for (key, value) in patch {
            if value.is_null() {
                target.remove(key);
            } else {
                merge_patch(target.entry(key.clone()).or_insert(Value::Null), value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patch_follows_rfc_7386_examples() {
        let mut target = json!({"a": "b", "c": {"d": "e", "f": "g"}});
        merge_patch(&mut target, &json!({"a": "z", "c": {"f": null}}));
        assert_eq!(target, json!({"a": "z", "c": {"d": "e"}}));
        let mut target = json!({"a": ["b"]});
        merge_patch(&mut target, &json!({"a": "c"}));
        assert_eq!(target, json!({"a": "c"}));
        let mut target = json!({"e": null});
        merge_patch(&mut target, &json!({"a": 1}));
        assert_eq!(target, json!({"e": null, "a": 1}));
    }

    #[test]
    fn factor_arguments_parse_with_clear_errors() {
        let parsed = parse_factor_arg("stakes=high,low").unwrap();
        assert_eq!(parsed.levels, vec!["high", "low"]);
        assert_eq!(parse_factor_arg("liability=all").unwrap().levels, vec!["none", "agent", "user"]);
        assert_eq!(parse_factor_arg("persona=all").unwrap().levels.len(), 6);
        assert_eq!(parse_factor_arg("feedback=low,all").unwrap().levels, vec!["low", "base", "high", "medium"]);
        assert!(parse_factor_arg("stakes").unwrap_err().contains("NAME=LEVEL"));
        assert!(parse_factor_arg("mood=high").unwrap_err().contains("unknown factor `mood`"));
        assert!(parse_factor_arg("stakes=extreme").unwrap_err().contains("its levels are base, high, medium, low"));
        let twice = [parse_factor_arg("stakes=high").unwrap(), parse_factor_arg("stakes=low").unwrap()];
        assert!(check_factors(&twice).unwrap_err().contains("given twice"));
    }

    #[test]
    fn cells_cross_levels_in_order() {
        let factors = [parse_factor_arg("stakes=high,low").unwrap(), parse_factor_arg("liability=none,agent").unwrap()];
        let labels: Vec<String> = cells(&factors).iter().map(cell_label).collect();
        assert_eq!(
            labels,
            ["stakes=high,liability=none", "stakes=high,liability=agent", "stakes=low,liability=none", "stakes=low,liability=agent"]
        );
        assert_eq!(cells(&[]), vec![Vec::<(String, String)>::new()]);
    }
}
