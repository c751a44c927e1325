//! Scoring: turns a finished trial into a verdict. Pure functions; no IO.

pub mod classify;
pub mod cms;
pub mod judge;
pub mod primary;
pub mod sandbox_evals;
