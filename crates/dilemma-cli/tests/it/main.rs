//! End-to-end tests of the `dilemma` binary: what a user types, what they see.

mod cli;
#[cfg(feature = "local-llm")]
mod embedded;
mod html_report;
mod providers;
mod resume;
mod support;
mod synth;
