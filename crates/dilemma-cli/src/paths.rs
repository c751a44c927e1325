//! Where things are: suites, the store, report folders.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use dilemma::store::Store;

/// The store every command uses unless told otherwise.
pub const DEFAULT_STORE: &str = "results/dilemma.sqlite";

/// The folder of built-in suites: the flag or `$DILEMMA_SUITES_DIR`, else `./suites`, else
/// `suites/` of the checkout the binary was built in (target/<profile>/dilemma).
pub fn suites_root(flag: Option<PathBuf>) -> Result<PathBuf> {
    if let Some(folder) = flag {
        if !folder.is_dir() {
            bail!("suites folder {} does not exist", folder.display());
        }
        return Ok(folder);
    }
    let local = PathBuf::from("suites");
    if local.is_dir() {
        return Ok(local);
    }
    if let Some(beside) = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().and_then(Path::parent).and_then(Path::parent).map(|root| root.join("suites")))
        .filter(|folder| folder.is_dir())
    {
        return Ok(beside);
    }
    bail!("no suites folder found: run from the dilemma checkout, or pass --suites-dir / set DILEMMA_SUITES_DIR")
}

/// A suite argument: an existing file or folder, else a suite name under the suites root.
pub fn resolve_suite(name: &str, suites_dir: Option<PathBuf>) -> Result<PathBuf> {
    let direct = PathBuf::from(name);
    if direct.exists() {
        return Ok(direct);
    }
    let root = suites_root(suites_dir)?;
    let candidate = root.join(name);
    if candidate.exists() {
        return Ok(candidate);
    }
    bail!("no suite or path `{name}` (looked in {} too); `dilemma list` shows the suites", root.display())
}

/// Where a run's report files go by default.
pub fn default_out(run: &str) -> PathBuf {
    PathBuf::from("results").join(run)
}

/// Opens a store that must already exist (reading commands should not create one).
pub fn open_existing_store(path: &Path) -> Result<Store> {
    if !path.is_file() {
        bail!("no store at {}; run `dilemma run` first or pass --store", path.display());
    }
    Ok(Store::open(path)?)
}
