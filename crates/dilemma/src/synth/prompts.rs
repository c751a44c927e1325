//! The synthesis templates (`prompts/synth-*.md`, compiled in), their placeholders, and the
//! JSON Schemas of each stage's answer.
//!
//! Templates use `{{name}}` placeholders. [`render`] fills them and reports a placeholder it
//! was not given as an error, so a template edit cannot silently send `{{...}}` to a model.

use serde_json::{Value, json};

use crate::scenario::{Motivation, ToolRole};

pub const STORY: &str = include_str!("../../../../prompts/synth-story.md");
pub const STORY_JUDGE: &str = include_str!("../../../../prompts/synth-story-judge.md");
pub const CONFLICT_LOYALTY: &str = include_str!("../../../../prompts/synth-conflict-loyalty.md");
pub const CONFLICT_SELF_PRESERVATION: &str = include_str!("../../../../prompts/synth-conflict-self-preservation.md");
pub const SEVERITY_BASE: &str = include_str!("../../../../prompts/synth-severity-base.md");
pub const SEVERITY_HIGH: &str = include_str!("../../../../prompts/synth-severity-high.md");
pub const SEVERITY_MEDIUM: &str = include_str!("../../../../prompts/synth-severity-medium.md");
pub const SEVERITY_LOW: &str = include_str!("../../../../prompts/synth-severity-low.md");
pub const EVIDENCE: &str = include_str!("../../../../prompts/synth-evidence.md");
pub const EVIDENCE_JUDGE: &str = include_str!("../../../../prompts/synth-evidence-judge.md");
pub const TOOLS: &str = include_str!("../../../../prompts/synth-tools.md");
pub const TOOLS_JUDGE: &str = include_str!("../../../../prompts/synth-tools-judge.md");
pub const COMPILE: &str = include_str!("../../../../prompts/synth-compile.md");
pub const COMPILE_JUDGE: &str = include_str!("../../../../prompts/synth-compile-judge.md");
pub const JUDGE_ANSWER: &str = include_str!("../../../../prompts/synth-judge-answer.md");
pub const REFINE: &str = include_str!("../../../../prompts/synth-refine.md");
pub const REPAIR: &str = include_str!("../../../../prompts/synth-repair.md");

/// Every synthesis template, by file name (for the hash stored with each batch).
pub const ALL: [(&str, &str); 17] = [
    ("synth-story", STORY),
    ("synth-story-judge", STORY_JUDGE),
    ("synth-conflict-loyalty", CONFLICT_LOYALTY),
    ("synth-conflict-self-preservation", CONFLICT_SELF_PRESERVATION),
    ("synth-severity-base", SEVERITY_BASE),
    ("synth-severity-high", SEVERITY_HIGH),
    ("synth-severity-medium", SEVERITY_MEDIUM),
    ("synth-severity-low", SEVERITY_LOW),
    ("synth-evidence", EVIDENCE),
    ("synth-evidence-judge", EVIDENCE_JUDGE),
    ("synth-tools", TOOLS),
    ("synth-tools-judge", TOOLS_JUDGE),
    ("synth-compile", COMPILE),
    ("synth-compile-judge", COMPILE_JUDGE),
    ("synth-judge-answer", JUDGE_ANSWER),
    ("synth-refine", REFINE),
    ("synth-repair", REPAIR),
];

/// A hash of every synthesis template, stored with each batch.
pub fn templates_hash() -> String {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    for (name, text) in ALL {
        hasher.update(name.as_bytes());
        hasher.update([0]);
        hasher.update(text.as_bytes());
        hasher.update([0]);
    }
    hex::encode(hasher.finalize())[..16].to_owned()
}

/// Fills `{{name}}` placeholders; a placeholder without a value is an error naming it.
pub fn render(template: &str, values: &[(&str, &str)]) -> Result<String, String> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            return Err("a `{{` placeholder is not closed".into());
        };
        let name = after[..end].trim();
        let Some((_, value)) = values.iter().find(|(key, _)| *key == name) else {
            return Err(format!("no value for the placeholder `{{{{{name}}}}}`"));
        };
        out.push_str(value);
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out.trim().to_owned())
}

/// The conflict requirements of a motivation.
pub fn conflict(motivation: Motivation) -> &'static str {
    match motivation {
        Motivation::Loyalty => CONFLICT_LOYALTY.trim(),
        Motivation::SelfPreservation => CONFLICT_SELF_PRESERVATION.trim(),
    }
}

/// What "goal_object" should name for a motivation.
pub fn goal_object_hint(motivation: Motivation) -> &'static str {
    match motivation {
        Motivation::Loyalty => "the stakeholder's name, e.g. \"Corvane Asset Management\"",
        Motivation::SelfPreservation => "\"your own continued operation\"",
    }
}

/// The severity requirement of a stakes level (`None`: the paper's base mode).
pub fn severity(stakes: Option<super::StakesLevelName>) -> &'static str {
    use super::StakesLevelName;
    match stakes {
        None => SEVERITY_BASE.trim(),
        Some(StakesLevelName::High) => SEVERITY_HIGH.trim(),
        Some(StakesLevelName::Medium) => SEVERITY_MEDIUM.trim(),
        Some(StakesLevelName::Low) => SEVERITY_LOW.trim(),
    }
}

fn text() -> Value {
    json!({"type": "string"})
}

/// The answer schema of the story stage.
pub fn story_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "title": text(), "agent_name": text(), "goal_object": text(), "story": text(),
            "compliant_outcome": text(), "toxic_outcome": text()
        },
        "required": ["title", "agent_name", "goal_object", "story", "compliant_outcome", "toxic_outcome"],
        "additionalProperties": false
    })
}

/// The answer schema of the evidence stage.
pub fn evidence_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "requester": text(),
            "user_request": text(),
            "key_identifiers": {"type": "object", "additionalProperties": {"type": ["string", "number"]}},
            "ground_truth": {"type": "object"},
            "initial_state": {"type": "object"}
        },
        "required": ["requester", "user_request", "key_identifiers", "ground_truth", "initial_state"],
        "additionalProperties": false
    })
}

/// The answer schema of the tools stage.
pub fn tools_schema() -> Value {
    let roles: Vec<&str> = ToolRole::ALL.iter().map(|role| role.as_str()).collect();
    let lines = json!({"type": "array", "items": text(), "minItems": 1});
    json!({
        "type": "object",
        "properties": {
            "tools": {
                "type": "array",
                "minItems": 6,
                "maxItems": 6,
                "items": {
                    "type": "object",
                    "properties": {
                        "name": text(),
                        "role": {"type": "string", "enum": roles},
                        "description": text(),
                        "parameters": {"type": "object"},
                        "behaviour": text(),
                        "observations": lines,
                        "state": {"type": "object"},
                        "feedback_high": lines,
                        "feedback_low": lines
                    },
                    "required": ["name", "role", "description", "parameters", "behaviour", "observations"],
                    "additionalProperties": false
                }
            }
        },
        "required": ["tools"],
        "additionalProperties": false
    })
}

/// The answer schema of the compile stage.
pub fn compile_schema() -> Value {
    json!({
        "type": "object",
        "properties": {"role": text(), "capabilities": text(), "agent_goals": text(), "environment_behaviour": text()},
        "required": ["role", "capabilities", "agent_goals", "environment_behaviour"],
        "additionalProperties": false
    })
}

/// The answer schema of every discriminator.
pub fn judgement_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "score": {"type": "number", "minimum": 1, "maximum": 10},
            "feedback": text(),
            "suggestion": text()
        },
        "required": ["score", "feedback", "suggestion"],
        "additionalProperties": false
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_fills_and_refuses_unknown_placeholders() {
        assert_eq!(render("a {{x}} b {{ y }}", &[("x", "1"), ("y", "2")]).unwrap(), "a 1 b 2");
        assert!(render("a {{z}}", &[("x", "1")]).unwrap_err().contains("{{z}}"));
        assert!(render("a {{z", &[]).is_err());
    }

    #[test]
    fn every_template_renders_with_the_values_the_pipeline_gives() {
        let values = [
            ("domain", "d"),
            ("conflict", "c"),
            ("severity", "s"),
            ("goal_object_hint", "h"),
            ("goal_object", "g"),
            ("score", "1"),
            ("threshold", "2"),
            ("draft", "{}"),
            ("feedback", "f"),
            ("suggestion", "x"),
            ("problems", "p"),
        ];
        for (name, template) in ALL {
            let rendered = render(template, &values).unwrap_or_else(|error| panic!("{name}: {error}"));
            assert!(!rendered.contains("{{"), "{name}");
        }
    }
}
