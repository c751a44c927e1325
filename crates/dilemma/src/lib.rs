//! `dilemma`: measures how often an LLM agent *chooses* a misaligned action when a scenario
//! makes that action useful.
//!
//! The library holds everything but argument parsing and the terminal: scenario loading,
//! models and their call policy, the trial loop, the store, scoring, metrics and report
//! rendering. See ARCHITECTURE.md for the code map and the invariants.

pub mod chat;
pub mod cost;
pub mod environment;
pub mod factors;
pub mod lint;
pub mod metrics;
pub mod model;
pub mod prompt;
pub mod report;
pub mod run;
pub mod sandbox;
pub mod scenario;
pub mod scoring;
pub mod store;
pub mod synth;
pub mod trial;
