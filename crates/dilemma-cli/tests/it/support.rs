//! Running the binary.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn fixture(name: &str) -> PathBuf {
    repo_root().join("crates/dilemma/tests/fixtures").join(name)
}

/// `dilemma` run from the repository root, with the store and results in `work`.
pub fn dilemma(work: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_dilemma"));
    command
        .current_dir(repo_root())
        .env("DILEMMA_STORE", work.join("store.sqlite"))
        .env("DILEMMA_MODEL_DIR", repo_root().join("models"))
        .env_remove("DILEMMA_SUITES_DIR")
        .env_remove("OPENAI_API_KEY")
        .env_remove("OPENAI_BASE_URL")
        .env_remove("ANTHROPIC_API_KEY")
        .env_remove("GEMINI_API_KEY");
    command
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs and returns (exit code, stdout, stderr).
pub fn run(command: &mut Command) -> (i32, String, String) {
    let Output { status, stdout, stderr } = command.output().expect("the binary runs");
    (status.code().unwrap_or(-1), text(&stdout), text(&stderr))
}

/// Writes a scripted model file and returns its path.
pub fn script(work: &Path, name: &str, body: &str) -> PathBuf {
    let path = work.join(name);
    std::fs::write(&path, body).unwrap();
    path
}
