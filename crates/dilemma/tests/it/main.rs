//! Integration tests of the `dilemma` library: one binary, one module per area.

mod agent_misalignment;
mod cms;
mod conversation;
mod evals_report;
mod factors;
mod html;
mod http1;
mod judge;
mod lint;
mod model;
mod providers;
mod report;
mod run;
mod sandbox;
mod store;
mod scenario;
mod suite;
mod support;
mod synth;
mod tidy;
mod trial;
