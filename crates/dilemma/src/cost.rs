//! Prices, costs and the pre-run estimate behind `dilemma plan`. Pure; no IO.
//!
//! Prices are USD per million tokens, per model id, from a TOML file the user gives
//! (`--prices`), because prices change and a stale built-in table would mislead. In-process
//! and scripted models (`local:`, `scripted:`) are free. A model without a price has no cost
//! (shown as unknown, never as zero), and `--max-cost` refuses to start without prices.
//!
//! ```toml
//! [prices."openai:gpt-4o"]
//! input = 2.5      # USD per million prompt tokens
//! output = 10.0    # USD per million completion tokens
//! [prices."anthropic:*"]   # a trailing * matches any id with that prefix
//! input = 3.0
//! output = 15.0
//! ```

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::chat::Usage;

/// USD per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    pub input: f64,
    pub output: f64,
}

/// Prices by model id (or id prefix ending in `*`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriceTable {
    #[serde(default)]
    pub prices: BTreeMap<String, Price>,
}

impl PriceTable {
    /// Parses a prices file; errors name the line.
    pub fn from_toml(text: &str) -> Result<PriceTable, String> {
        let table: PriceTable = toml::from_str(text).map_err(|error| error.to_string())?;
        for (model, price) in &table.prices {
            if !(price.input >= 0.0 && price.output >= 0.0) {
                return Err(format!("prices.\"{model}\": prices must be zero or more"));
            }
        }
        Ok(table)
    }

    /// The price of a model: an exact entry, else the longest matching `prefix*` entry;
    /// in-process and scripted models are free.
    pub fn price(&self, model: &str) -> Option<Price> {
        if let Some(price) = self.prices.get(model) {
            return Some(*price);
        }
        let by_prefix = self
            .prices
            .iter()
            .filter_map(|(pattern, price)| pattern.strip_suffix('*').filter(|prefix| model.starts_with(prefix)).map(|prefix| (prefix.len(), *price)))
            .max_by_key(|(length, _)| *length)
            .map(|(_, price)| price);
        by_prefix.or_else(|| (model.starts_with("local:") || model.starts_with("scripted:")).then_some(Price { input: 0.0, output: 0.0 }))
    }

    /// What `usage` of `model` cost, if the model has a price.
    pub fn cost(&self, model: &str, usage: Usage) -> Option<f64> {
        self.price(model).map(|price| {
            (usage.prompt_tokens as f64 * price.input + usage.completion_tokens as f64 * price.output) / 1_000_000.0
        })
    }
}

/// Rough token count of a text (four characters a token, the usual rule of thumb for
/// English); good enough for a budget estimate, never used for accounting.
pub fn approximate_tokens(text: &str) -> u64 {
    (text.chars().count() as u64).div_ceil(4)
}

/// Tokens and calls expected for one role of one model.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RoleEstimate {
    pub role: String,
    pub model: String,
    pub calls: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// `None` when the model has no price.
    pub cost: Option<f64>,
}

/// The estimate for a whole plan, for a given number of turns per trial.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Estimate {
    pub turns_per_trial: String,
    pub roles: Vec<RoleEstimate>,
}

impl Estimate {
    pub fn total_cost(&self) -> Option<f64> {
        self.roles.iter().map(|role| role.cost).sum()
    }
    pub fn calls(&self) -> u64 {
        self.roles.iter().map(|role| role.calls).sum()
    }
}

/// The tokens of one trial's calls when it runs `turns` turns: the prompt grows each turn by
/// the agent's reply and the observation. Re-asks are not counted (an estimate, not a bound).
pub fn trial_tokens(base_prompt: u64, reply: u64, observation: u64, turns: u64) -> (u64, u64) {
    let prompt: u64 = (0..turns).map(|turn| base_prompt + turn * (reply + observation)).sum();
    (prompt, turns * reply)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prices_match_exactly_then_by_longest_prefix_and_local_models_are_free() {
        let table = PriceTable::from_toml(
            "[prices.\"openai:*\"]\ninput = 1.0\noutput = 2.0\n[prices.\"openai:gpt-4o*\"]\ninput = 2.5\noutput = 10.0\n",
        )
        .unwrap();
        assert_eq!(table.price("openai:gpt-4o-mini").unwrap().input, 2.5);
        assert_eq!(table.price("openai:o3").unwrap().input, 1.0);
        assert_eq!(table.price("local:smollm2").unwrap().output, 0.0);
        assert!(table.price("gemini:flash").is_none());
        let cost = table.cost("openai:gpt-4o", Usage { prompt_tokens: 1_000_000, completion_tokens: 500_000 }).unwrap();
        assert!((cost - 7.5).abs() < 1e-9);
        assert!(table.cost("gemini:flash", Usage::default()).is_none());
    }

    #[test]
    fn bad_price_files_are_refused_with_the_reason() {
        assert!(PriceTable::from_toml("[prices.\"x\"]\ninput = -1.0\noutput = 0.0\n").unwrap_err().contains("zero or more"));
        assert!(PriceTable::from_toml("[prices.\"x\"]\ninput = 1.0\n").unwrap_err().contains("output"));
    }

    #[test]
    fn trial_tokens_grow_with_the_history() {
        // Three turns over a 1,000-token base, 100-token replies and 50-token observations.
        assert_eq!(trial_tokens(1000, 100, 50, 3), (1000 + 1150 + 1300, 300));
    }
}
