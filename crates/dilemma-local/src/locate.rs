//! Finding and checking the GGUF file a `local:` model spec names.
//!
//! The harness never downloads a model: `make model` (which runs `scripts/fetch-model.sh`)
//! puts the embedded default into `models/`, and everything here only looks at local files.
//! The default model's sha256 is checked before llama.cpp sees the file, so that a truncated
//! or corrupted download is reported as such instead of as an obscure GGUF parse failure.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::LocalError;

/// The spec that names the embedded default model (`local:smollm2`).
pub const DEFAULT_SPEC: &str = "smollm2";

/// File name of the embedded default model inside the model directory.
pub const DEFAULT_MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// sha256 of [`DEFAULT_MODEL_FILE`] as `scripts/fetch-model.sh` installs it.
pub const DEFAULT_MODEL_SHA256: &str = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";

/// Environment variable that overrides where the default model is looked up.
pub const MODEL_DIR_ENV: &str = "DILEMMA_MODEL_DIR";

/// What to tell a user whose model file is missing or damaged.
const REMEDY: &str = "run `make model` (it runs scripts/fetch-model.sh) to fetch the embedded model, \
                      or pass `local:/path/to/model.gguf`";

/// A model spec resolved to a file on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Located {
    pub path: PathBuf,
    /// True for the embedded default, whose checksum is known.
    pub is_default: bool,
}

/// Resolves `spec` (what follows `local:`) to an existing, plausible GGUF file.
///
/// `explicit_dir` (from `LocalOptions::model_dir`) wins over the environment so that callers,
/// tests in particular, need not mutate process-wide state.
pub(crate) fn locate(spec: &str, explicit_dir: Option<&Path>) -> Result<Located, LocalError> {
    if spec == DEFAULT_SPEC {
        let candidates = default_candidates(explicit_dir);
        let Some(path) = candidates.iter().find(|path| path.is_file()).cloned() else {
            return Err(LocalError::ModelMissing {
                message: format!(
                    "the embedded model file {DEFAULT_MODEL_FILE} was not found (looked at: {}); {REMEDY}",
                    candidates.iter().map(|path| path.display().to_string()).collect::<Vec<_>>().join(", ")
                ),
            });
        };
        verify_sha256(&path, DEFAULT_MODEL_SHA256)?;
        return Ok(Located { path, is_default: true });
    }
    if !spec.to_ascii_lowercase().ends_with(".gguf") {
        return Err(LocalError::UnknownSpec {
            message: format!(
                "unknown local model `local:{spec}`: use `local:{DEFAULT_SPEC}` for the embedded model \
                 or `local:/path/to/model.gguf` for any GGUF file"
            ),
        });
    }
    let path = PathBuf::from(spec);
    if !path.is_file() {
        return Err(LocalError::ModelMissing {
            message: format!("model file {} does not exist; {REMEDY}", path.display()),
        });
    }
    check_gguf_magic(&path)?;
    Ok(Located { path, is_default: false })
}

/// Where the default model may be, in order of preference.
///
/// 1. `explicit_dir`, if given (nothing else is tried);
/// 2. `$DILEMMA_MODEL_DIR`, if set and non-empty (nothing else is tried: an explicit setting
///    that points at the wrong place should fail loudly, not be papered over);
/// 3. `./models` relative to the working directory;
/// 4. `models/` in every ancestor of the executable's directory, which finds the workspace
///    root from `target/release/dilemma` (`../../models`) and from test binaries in
///    `target/release/deps`.
fn default_candidates(explicit_dir: Option<&Path>) -> Vec<PathBuf> {
    if let Some(dir) = explicit_dir {
        return vec![dir.join(DEFAULT_MODEL_FILE)];
    }
    if let Some(dir) = std::env::var_os(MODEL_DIR_ENV).filter(|dir| !dir.is_empty()) {
        return vec![PathBuf::from(dir).join(DEFAULT_MODEL_FILE)];
    }
    let mut candidates = vec![Path::new("models").join(DEFAULT_MODEL_FILE)];
    if let Ok(exe) = std::env::current_exe() {
        let exe = exe.canonicalize().unwrap_or(exe);
        if let Some(dir) = exe.parent() {
            candidates.extend(dir.ancestors().map(|ancestor| ancestor.join("models").join(DEFAULT_MODEL_FILE)));
        }
    }
    candidates
}

/// Fails unless the file at `path` has the sha256 `expected` (lowercase hex).
pub(crate) fn verify_sha256(path: &Path, expected: &str) -> Result<(), LocalError> {
    let actual = sha256_file(path).map_err(|source| LocalError::Io { path: path.to_owned(), source })?;
    if actual != expected {
        return Err(LocalError::Checksum {
            message: format!(
                "checksum mismatch for {}: sha256 is {actual}, expected {expected}; the file is truncated \
                 or corrupted (an interrupted download?). Delete it and run `make model` again",
                path.display()
            ),
        });
    }
    Ok(())
}

fn sha256_file(path: &Path) -> io::Result<String> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0_u8; 1 << 20];
    loop {
        let read = file.read(&mut buffer)?;
        if read == 0 {
            break;
        }
        hasher.update(&buffer[..read]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// A cheap sanity check for files without a known checksum: llama.cpp's own error for a
/// non-GGUF file is only a log line (which is silenced) and a null pointer.
fn check_gguf_magic(path: &Path) -> Result<(), LocalError> {
    let mut file = File::open(path).map_err(|source| LocalError::Io { path: path.to_owned(), source })?;
    let mut magic = [0_u8; 4];
    // A file shorter than four bytes is just as much "not GGUF" as one with the wrong bytes.
    if file.read_exact(&mut magic).is_ok() && &magic == b"GGUF" {
        Ok(())
    } else {
        Err(LocalError::NotGguf {
            message: format!("{} is not a GGUF file (it does not start with the GGUF magic bytes)", path.display()),
        })
    }
}
