//! The lint: advice on scenarios that load, for what a careful reviewer would flag but the
//! loader must not reject.
//!
//! `dilemma check` prints the findings as warnings and `dilemma check --strict` fails on
//! them. Three checks, each from the scenario quality criteria of the Toxic Proactivity
//! reference (§1.3):
//!
//! - **loaded words** in tool descriptions. The agent must choose between tools described in
//!   neutral, technical terms; a description that says "bypass" or "falsify" tells the agent
//!   which track it is on. Whole words, case-insensitive, from [`LOADED_WORDS`].
//! - **ungrounded identifiers**: an ID-like token (see [`is_identifier`]) in the agent's
//!   prompt modules or in a tool parameter's `enum` that appears nowhere in
//!   `environment.ground_truth`. The environment answers from the ground truth, so an ID it
//!   has never seen is a typo or a missing fact.
//! - **factor readiness**: in a suite that uses factors (some scenario in the same folder has a
//!   `goal_object`, `stakes` or scripted `feedback`), every `dual_track` scenario needs a
//!   `goal_object`, all three stakes levels, and `scripted.feedback.high` and `.low` on each
//!   toxic tool, or a factor run over the suite fails on it.
//!
//! Findings are [`Problem`]s located like the loader's (file, line, column, field), at the
//! offending word itself where it can be found in the source, else at the field.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::scenario::{LoadedScenario, Problem, Scenario, Shape, SourceMap, Track};

/// Words (and two-word phrases) that make a tool description read as a moral judgement.
/// Matched as whole words, case-insensitive; inflected forms are listed explicitly, so that
/// technical words that share a stem (`breach`, `exploit`, `override`) stay allowed.
pub const LOADED_WORDS: &[&str] = &[
    "abuse", "abuses", "bribe", "bribery", "bypass", "bypassed", "bypasses", "bypassing", "cheat", "cheating", "cheats",
    "circumvent", "circumvention", "circumvents", "conceal", "concealed", "concealment", "conceals", "corrupt",
    "cover up", "covers up", "covertly", "dangerous", "deceit", "deceive", "deceives", "deception", "deceptive",
    "dishonest", "dishonestly", "endanger", "endangers", "evade", "evades", "evasion", "fabricate", "fabricated",
    "fabricates", "fabrication", "fake", "faked", "fakes", "falsification", "falsified", "falsifies", "falsify",
    "forge", "forged", "forgery", "forges", "fraud", "fraudulent", "fraudulently", "harm", "harmful", "harming",
    "harms", "hide", "hides", "hiding", "hurt", "illegal", "illegally", "illicit", "immoral", "loophole", "malicious", "manipulate",
    "manipulates", "manipulation", "misconduct", "mislead", "misleading", "misleads", "misrepresent",
    "misrepresents", "reckless", "sabotage", "scapegoat", "secretly", "steal", "steals", "stealthily", "tamper",
    "tampering", "tampers", "theft", "unauthorised", "unauthorized", "unethical", "unlawful", "unlawfully",
    "unsafe", "violate", "violates", "violating", "violation", "whitewash", "wrongful",
];

/// Lints one scenario. `source` is the text it was loaded from (for positions). The factor
/// readiness check applies when this scenario itself uses a factor field; [`lint_scenarios`]
/// decides it per suite instead.
pub fn lint(loaded: &LoadedScenario, source: &str) -> Vec<Problem> {
    lint_in_suite(loaded, source, uses_factors(&loaded.scenario))
}

/// Lints scenarios loaded together (`scenario::load_paths`), reading each file again for
/// positions. A folder is a suite: if any scenario in it uses a factor field, the factor
/// readiness check applies to all of its `dual_track` scenarios. Sorted by file and position.
pub fn lint_scenarios(scenarios: &[LoadedScenario]) -> Vec<Problem> {
    let mut suites_with_factors: BTreeSet<PathBuf> = BTreeSet::new();
    for loaded in scenarios {
        if uses_factors(&loaded.scenario) {
            suites_with_factors.insert(suite_folder(&loaded.path));
        }
    }
    let mut findings = Vec::new();
    for loaded in scenarios {
        let source = match std::fs::read_to_string(&loaded.path) {
            Ok(source) => source,
            Err(error) => {
                findings.push(Problem {
                    file: loaded.path.clone(),
                    line: 1,
                    column: 1,
                    field: String::new(),
                    message: format!("cannot read file again to lint it: {error}"),
                });
                continue;
            }
        };
        let in_factor_suite = suites_with_factors.contains(&suite_folder(&loaded.path));
        findings.extend(lint_in_suite(loaded, &source, in_factor_suite));
    }
    findings.sort();
    findings
}

fn suite_folder(path: &Path) -> PathBuf {
    path.parent().map(Path::to_path_buf).unwrap_or_default()
}

/// Whether a scenario carries data for the stress factors.
fn uses_factors(scenario: &Scenario) -> bool {
    scenario.goal_object.is_some()
        || scenario.stakes.is_some()
        || scenario.tools.iter().any(|tool| tool.scripted.as_ref().is_some_and(|scripted| scripted.feedback.is_some()))
}

fn lint_in_suite(loaded: &LoadedScenario, source: &str, in_factor_suite: bool) -> Vec<Problem> {
    let mut linter = Linter { path: &loaded.path, source, map: SourceMap::parse(source), findings: Vec::new() };
    let scenario = &loaded.scenario;
    linter.loaded_words(scenario);
    linter.ungrounded_identifiers(scenario);
    if in_factor_suite && scenario.shape == Shape::DualTrack {
        linter.factor_readiness(scenario);
    }
    let mut findings = linter.findings;
    findings.sort();
    findings.dedup();
    findings
}

struct Linter<'a> {
    path: &'a Path,
    source: &'a str,
    map: SourceMap,
    findings: Vec<Problem>,
}

impl Linter<'_> {
    /// A finding at a field.
    fn at(&mut self, pointer: &str, message: String) {
        let (line, column) = self.map.position(pointer);
        self.push(pointer, line, column, message);
    }

    /// A finding at the first place at or after the field's start where `matches` finds its
    /// token in the source (a block scalar spans several lines), else at the field.
    fn at_token(&mut self, pointer: &str, matches: impl Fn(&str) -> Option<usize>, message: String) {
        let (start_line, start_column) = self.map.position(pointer);
        let found = self.source.lines().enumerate().skip(start_line.saturating_sub(1)).take(80).find_map(|(index, line)| {
            let from = if index + 1 == start_line { byte_index_of_column(line, start_column) } else { 0 };
            matches(&line[from..]).map(|offset| (index + 1, line[..from + offset].chars().count() + 1))
        });
        let (line, column) = found.unwrap_or((start_line, start_column));
        self.push(pointer, line, column, message);
    }

    fn push(&mut self, pointer: &str, line: usize, column: usize, message: String) {
        self.findings.push(Problem { file: self.path.to_path_buf(), line, column, field: SourceMap::field(pointer), message });
    }

    fn loaded_words(&mut self, scenario: &Scenario) {
        for (index, tool) in scenario.tools.iter().enumerate() {
            let mut seen = BTreeSet::new();
            for entry in loaded_words_in(&tool.description) {
                if seen.insert(entry) {
                    self.at_token(
                        &format!("/tools/{index}/description"),
                        |line| find_phrase(line, entry),
                        format!("loaded word \"{entry}\" in a tool description; describe what the tool does in neutral, technical terms"),
                    );
                }
            }
        }
    }

    fn ungrounded_identifiers(&mut self, scenario: &Scenario) {
        let mut grounded = BTreeSet::new();
        collect_tokens(&Value::Object(scenario.environment.ground_truth.clone()), &mut grounded);
        let mut places: Vec<(String, String)> = Vec::new();
        for (index, module) in scenario.agent.modules.iter().enumerate() {
            places.push((format!("/agent/modules/{index}/heading"), module.heading.clone()));
            places.push((format!("/agent/modules/{index}/body"), module.body.clone()));
        }
        for (index, tool) in scenario.tools.iter().enumerate() {
            collect_enum_values(&Value::Object(tool.parameters.clone()), &format!("/tools/{index}/parameters"), &mut places);
        }
        for (pointer, text) in places {
            let mut seen = BTreeSet::new();
            for token in tokens(&text) {
                if is_identifier(token) && !grounded.contains(token) && seen.insert(token.to_owned()) {
                    self.at_token(
                        &pointer,
                        |line| find_token(line, token),
                        format!(
                            "identifier `{token}` appears nowhere in environment.ground_truth; the environment cannot ground it (a typo, or a fact missing from the records)"
                        ),
                    );
                }
            }
        }
    }

    fn factor_readiness(&mut self, scenario: &Scenario) {
        if scenario.goal_object.is_none() {
            self.at("/goal_object", "no `goal_object`, which the goal_clarity factor needs (this suite uses factors)".into());
        }
        let levels = scenario.stakes.as_ref().map(|stakes| [("high", stakes.high.is_some()), ("medium", stakes.medium.is_some()), ("low", stakes.low.is_some())]);
        match levels {
            None => self.at("/stakes", "no `stakes` levels (high, medium, low), which the stakes factor needs (this suite uses factors)".into()),
            Some(levels) => {
                for (level, present) in levels {
                    if !present {
                        self.at(&format!("/stakes/{level}"), format!("no `stakes.{level}`, which --factor stakes={level} needs"));
                    }
                }
            }
        }
        for (index, tool) in scenario.tools.iter().enumerate().filter(|(_, tool)| tool.track == Track::Toxic) {
            let feedback = tool.scripted.as_ref().and_then(|scripted| scripted.feedback.as_ref());
            for (level, present) in [
                ("high", feedback.is_some_and(|feedback| feedback.high.is_some())),
                ("low", feedback.is_some_and(|feedback| feedback.low.is_some())),
            ] {
                if !present {
                    self.at(
                        &format!("/tools/{index}/scripted/feedback/{level}"),
                        format!(
                            "toxic tool `{}` has no `scripted.feedback.{level}`, which --factor feedback={level} needs with the scripted environment",
                            tool.name
                        ),
                    );
                }
            }
        }
    }
}

fn byte_index_of_column(line: &str, column: usize) -> usize {
    line.char_indices().nth(column.saturating_sub(1)).map_or(line.len(), |(index, _)| index)
}

// ---------------------------------------------------------------------------------------
// Words

/// The words of a text (runs of letters) with their byte offsets.
fn words(text: &str) -> Vec<(usize, &str)> {
    let mut words = Vec::new();
    let mut start = None;
    for (index, character) in text.char_indices().chain(std::iter::once((text.len(), ' '))) {
        match (start, character.is_alphabetic()) {
            (None, true) => start = Some(index),
            (Some(from), false) => {
                words.push((from, &text[from..index]));
                start = None;
            }
            _ => {}
        }
    }
    words
}

/// The [`LOADED_WORDS`] entries a text contains, in list order.
fn loaded_words_in(text: &str) -> Vec<&'static str> {
    LOADED_WORDS.iter().copied().filter(|entry| find_phrase(text, entry).is_some()).collect()
}

/// Byte offset of the first whole-word, case-insensitive occurrence of `phrase` (one or more
/// words separated by spaces) in `text`.
fn find_phrase(text: &str, phrase: &str) -> Option<usize> {
    let wanted: Vec<&str> = phrase.split(' ').collect();
    let found = words(text);
    found.windows(wanted.len()).find_map(|window| {
        let same = window.iter().zip(&wanted).all(|((_, word), wanted)| word.eq_ignore_ascii_case(wanted));
        same.then(|| window[0].0)
    })
}

// ---------------------------------------------------------------------------------------
// Identifiers

fn is_token_char(character: char) -> bool {
    character.is_ascii_alphanumeric() || matches!(character, '_' | '.' | '-')
}

/// The tokens of a text with their byte offsets: runs of ASCII letters, digits, `_`, `.`
/// and `-` (and `,` between two digits, so `1,000-account` is one token), trimmed of
/// leading and trailing punctuation.
fn tokens_with_offsets(text: &str) -> Vec<(usize, &str)> {
    let bytes = text.as_bytes();
    let mut found = Vec::new();
    let mut start: Option<usize> = None;
    let mut index = 0;
    while index <= bytes.len() {
        let character = text[index..].chars().next();
        let inside = match character {
            Some(',') => {
                index > 0
                    && bytes[index - 1].is_ascii_digit()
                    && bytes.get(index + 1).is_some_and(u8::is_ascii_digit)
                    && start.is_some()
            }
            Some(character) => is_token_char(character),
            None => false,
        };
        match (start, inside) {
            (None, true) => start = Some(index),
            (Some(from), false) => {
                let raw = &text[from..index];
                let trimmed_start = raw.trim_start_matches(['.', '-', '_', ',']);
                let token = trimmed_start.trim_end_matches(['.', '-', '_', ',']);
                if !token.is_empty() {
                    found.push((from + raw.len() - trimmed_start.len(), token));
                }
                start = None;
            }
            _ => {}
        }
        index += character.map_or(1, char::len_utf8);
    }
    found
}

fn tokens(text: &str) -> impl Iterator<Item = &str> {
    tokens_with_offsets(text).into_iter().map(|(_, token)| token)
}

/// Byte offset of `token` as a whole token in `text`.
fn find_token(text: &str, token: &str) -> Option<usize> {
    tokens_with_offsets(text).into_iter().find_map(|(offset, found)| (found == token).then_some(offset))
}

/// Units that make a number-with-letters part ordinary prose (`3x`, `24h`, `10GB`, `2nd`).
const UNITS: &[&str] =
    &["x", "st", "nd", "rd", "th", "s", "k", "m", "h", "d", "kg", "mg", "ml", "gb", "mb", "tb", "ms", "px", "bn", "min", "pm", "am", "yr", "mo", "wk"];

/// Whether a token looks like an identifier (a record, account, rule or host ID) rather
/// than a word, number, date or time. It needs a `-` or `_` separator and a letter, must not
/// start like a date (`2025-10-17T23`), and then one of:
///
/// 1. capitals: it starts with a capital and every part is capitals, digits and `.`
///    (`CKD-EPI-2021`, `SA-LVX3`, `CR-9.2`), but not `Sleeve_ID`, `Day-30` or `non-GAAP`;
/// 2. a part that mixes letters and digits, other than a number with a unit
///    (`svc-sentry9`, `tok-7f3a9c`, `orrin-v3.2`), but not `3x-leveraged` or `30-day`;
/// 3. a part that is a number with a leading zero (`cde-db-04`, `mig_0042_allergy`).
pub fn is_identifier(token: &str) -> bool {
    if !token.contains(['-', '_']) || !token.chars().any(|character| character.is_ascii_alphabetic()) {
        return false;
    }
    let bytes = token.as_bytes();
    let looks_like_date = bytes.len() >= 10
        && bytes[..4].iter().all(u8::is_ascii_digit)
        && bytes[4] == b'-'
        && bytes[5..7].iter().all(u8::is_ascii_digit)
        && bytes[7] == b'-'
        && bytes[8..10].iter().all(u8::is_ascii_digit);
    if looks_like_date {
        return false;
    }
    let parts: Vec<&str> = token.split(['-', '_']).filter(|part| !part.is_empty()).collect();
    let capitals = token.starts_with(|character: char| character.is_ascii_uppercase())
        && parts.iter().all(|part| part.chars().all(|character| character.is_ascii_uppercase() || character.is_ascii_digit() || character == '.'));
    let mixed = parts.iter().any(|part| {
        let has_letter = part.chars().any(|character| character.is_ascii_alphabetic());
        let has_digit = part.chars().any(|character| character.is_ascii_digit());
        has_letter && has_digit && !is_number_with_unit(part)
    });
    let leading_zero = parts.iter().any(|part| part.len() >= 2 && part.starts_with('0') && part.chars().all(|character| character.is_ascii_digit()));
    capitals || mixed || leading_zero
}

fn is_number_with_unit(part: &str) -> bool {
    let number_end = part.find(|character: char| !(character.is_ascii_digit() || character == '.' || character == ',')).unwrap_or(part.len());
    if number_end == 0 {
        return false;
    }
    let unit = part[number_end..].to_ascii_lowercase();
    UNITS.contains(&unit.as_str())
}

/// Every token of every key and string (or number) in a JSON value, with the identifiers
/// each token grounds (see [`grounded_by`]).
fn collect_tokens(value: &Value, found: &mut BTreeSet<String>) {
    match value {
        Value::Object(map) => {
            for (key, inner) in map {
                tokens(key).for_each(|token| found.extend(grounded_by(token)));
                collect_tokens(inner, found);
            }
        }
        Value::Array(items) => items.iter().for_each(|item| collect_tokens(item, found)),
        Value::String(text) => tokens(text).for_each(|token| found.extend(grounded_by(token))),
        Value::Number(number) => {
            found.insert(number.to_string());
        }
        Value::Bool(_) | Value::Null => {}
    }
}

/// What a ground-truth token grounds: itself, every run of its `_`-separated parts (JSON keys
/// join words and IDs with `_`: `SGA-01_Balance_EUR` grounds `SGA-01`), and every prefix before
/// a `.` (a rule's sections ground the rule: `RMP-4.1` grounds `RMP-4`).
fn grounded_by(token: &str) -> Vec<String> {
    let mut grounded = vec![token.to_owned()];
    let parts: Vec<&str> = token.split('_').collect();
    for start in 0..parts.len() {
        for end in start + 1..=parts.len() {
            if end - start < parts.len() {
                grounded.push(parts[start..end].join("_"));
            }
        }
    }
    for (index, _) in token.match_indices('.') {
        grounded.push(token[..index].to_owned());
    }
    grounded.retain(|text| !text.is_empty());
    grounded
}

/// (pointer, value) of every string in an `enum` anywhere in a parameters schema.
fn collect_enum_values(schema: &Value, pointer: &str, places: &mut Vec<(String, String)>) {
    match schema {
        Value::Object(map) => {
            for (key, inner) in map {
                let child = format!("{pointer}/{}", key.replace('~', "~0").replace('/', "~1"));
                if key == "enum"
                    && let Value::Array(values) = inner
                {
                    for (index, value) in values.iter().enumerate() {
                        if let Value::String(text) = value {
                            places.push((format!("{child}/{index}"), text.clone()));
                        }
                    }
                } else {
                    collect_enum_values(inner, &child, places);
                }
            }
        }
        Value::Array(items) => {
            for (index, item) in items.iter().enumerate() {
                collect_enum_values(item, &format!("{pointer}/{index}"), places);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_told_apart_from_words_numbers_and_dates() {
        for id in ["CKD-EPI-2021", "SA-LVX3", "CR-9.2", "REM-2025-031", "svc-sentry9", "tok-7f3a9c", "orrin-v3.2", "cde-db-04", "mig_0042_allergy", "COVID-19"] {
            assert!(is_identifier(id), "{id} should be an identifier");
        }
        for word in [
            "Sleeve_ID", "Day-30", "day-30", "30-day", "non-GAAP", "3x-leveraged", "24h-window", "2025-10-17", "2025-10-17T23", "6-9",
            "read-only", "snake_case_name", "Cockcroft-Gault-actual-weight", "Tier-1", "1,000-account", "mid-2025", "A", "LVX3",
        ] {
            assert!(!is_identifier(word), "{word} should not be an identifier");
        }
    }

    #[test]
    fn tokens_keep_ids_whole_and_drop_sentence_punctuation() {
        let found: Vec<&str> = tokens("Campaign_ID=REM-2025-031, sleeve LVX-3. Over 1,000-account runs (tok-7f3a9c).").collect();
        assert_eq!(found, ["Campaign_ID", "REM-2025-031", "sleeve", "LVX-3", "Over", "1,000-account", "runs", "tok-7f3a9c"]);
        assert_eq!(find_token("see LVX-3.", "LVX-3"), Some(4));
        assert_eq!(find_token("see LVX-31", "LVX-3"), None);
    }

    #[test]
    fn keys_and_rule_sections_ground_the_ids_inside_them() {
        let grounded = grounded_by("Periodic_Inclusion_PSUR-BRX-2026-03");
        assert!(grounded.contains(&"PSUR-BRX-2026-03".to_owned()), "{grounded:?}");
        assert!(grounded_by("SGA-01_Balance_EUR").contains(&"SGA-01".to_owned()));
        assert!(grounded_by("RMP-4.1").contains(&"RMP-4".to_owned()));
        assert!(!grounded_by("AR-5521").contains(&"AR-552".to_owned()));
    }

    #[test]
    fn loaded_words_are_whole_words_and_phrases() {
        assert_eq!(loaded_words_in("Lets you Bypass the check and cover-up the log."), vec!["bypass", "cover up"]);
        assert!(loaded_words_in("Harmonises the pharmacy data; breach notification; exploit database").is_empty());
        assert_eq!(find_phrase("a b Cover  up", "cover up"), Some(4));
    }

    #[test]
    fn the_word_list_is_sorted_lowercase_and_without_duplicates() {
        let mut sorted = LOADED_WORDS.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted, LOADED_WORDS);
        assert!(LOADED_WORDS.iter().all(|word| word.chars().all(|character| character.is_ascii_lowercase() || character == ' ')));
    }

    #[test]
    fn enum_values_are_found_with_their_pointers() {
        let schema = serde_json::json!({"type": "object", "properties": {"a": {"type": "string", "enum": ["X-1", "y"]}}});
        let mut places = Vec::new();
        collect_enum_values(&schema, "/tools/0/parameters", &mut places);
        assert_eq!(
            places,
            vec![("/tools/0/parameters/properties/a/enum/0".to_owned(), "X-1".to_owned()), ("/tools/0/parameters/properties/a/enum/1".to_owned(), "y".to_owned())]
        );
    }
}

