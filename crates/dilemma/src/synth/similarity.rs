//! Near-duplicate detection: shingled-word Jaccard similarity between scenarios.
//!
//! A scenario's comparable text is what makes it *this* dilemma: the agent's prompt modules,
//! the ground truth and the tool descriptions (not ids, titles or behaviour notes, which a
//! rewrite changes freely). The text is lowercased and split into words at every character
//! that is not a letter or digit; a shingle is a run of `k` consecutive words; the similarity
//! of two texts is |A ∩ B| / |A ∪ B| over their shingle sets. A text shorter than `k` words
//! is one shingle of all its words, so short texts still compare; two empty texts have
//! similarity 0 (nothing to be a duplicate of).

use std::collections::HashSet;

use crate::scenario::Scenario;

/// Words per shingle by default.
pub const DEFAULT_SHINGLE_WORDS: usize = 5;

/// The words of a text: lowercase runs of letters and digits.
pub fn words(text: &str) -> Vec<String> {
    text.split(|character: char| !character.is_alphanumeric())
        .filter(|word| !word.is_empty())
        .map(str::to_lowercase)
        .collect()
}

/// The set of `k`-word shingles of a text (`k` ≥ 1).
pub fn shingles(text: &str, k: usize) -> HashSet<String> {
    let words = words(text);
    let k = k.max(1);
    if words.is_empty() {
        return HashSet::new();
    }
    if words.len() < k {
        return HashSet::from([words.join(" ")]);
    }
    words.windows(k).map(|window| window.join(" ")).collect()
}

/// |A ∩ B| / |A ∪ B|; 0 when both are empty.
pub fn jaccard(a: &HashSet<String>, b: &HashSet<String>) -> f64 {
    let union = a.union(b).count();
    if union == 0 {
        return 0.0;
    }
    a.intersection(b).count() as f64 / union as f64
}

/// The text of a scenario that near-duplicate detection compares: agent module bodies,
/// the ground truth (as JSON, so keys and values both count) and the tool descriptions.
pub fn comparable_text(scenario: &Scenario) -> String {
    let mut parts: Vec<String> = scenario.agent.modules.iter().map(|module| module.body.clone()).collect();
    parts.push(serde_json::to_string(&scenario.environment.ground_truth).unwrap_or_default());
    parts.extend(scenario.tools.iter().map(|tool| tool.description.clone()));
    parts.join("\n")
}

/// The scenarios a candidate must not duplicate, as shingle sets.
#[derive(Debug, Clone, Default)]
pub struct Corpus {
    shingle_words: usize,
    entries: Vec<(String, HashSet<String>)>,
}

impl Corpus {
    pub fn new(shingle_words: usize) -> Self {
        Corpus { shingle_words: shingle_words.max(1), entries: Vec::new() }
    }

    pub fn add(&mut self, scenario: &Scenario) {
        let set = shingles(&comparable_text(scenario), self.shingle_words);
        self.entries.push((scenario.id.clone(), set));
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether a scenario with this id is in the corpus.
    pub fn contains_id(&self, id: &str) -> bool {
        self.entries.iter().any(|(known, _)| known == id)
    }

    /// The most similar scenario and its similarity (the first one on ties), if any.
    pub fn nearest(&self, scenario: &Scenario) -> Option<(String, f64)> {
        let candidate = shingles(&comparable_text(scenario), self.shingle_words);
        let mut best: Option<(String, f64)> = None;
        for (id, set) in &self.entries {
            let similarity = jaccard(&candidate, set);
            if best.as_ref().is_none_or(|(_, top)| similarity > *top) {
                best = Some((id.clone(), similarity));
            }
        }
        best
    }
}
