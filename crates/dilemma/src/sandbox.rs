//! The shell sandbox: where the commands of a scenario's `shell` tools really run.
//!
//! Each trial gets a fresh root: a temporary folder seeded from `environment.sandbox.files`,
//! kept across the trial's commands (state persists between them) and removed when the trial
//! ends. Two backends:
//!
//! - **bubblewrap** (`bwrap`, the Debian package `bubblewrap`): every command runs in new
//!   user, pid, network, ipc, uts and cgroup namespaces (`--unshare-all`: no network, only a
//!   loopback of its own), as an unprivileged user (uid 1000), with read-only binds of `/usr`
//!   (and the `/bin`, `/lib*`, `/sbin` links), of the few `/etc` files bash and coreutils need,
//!   and of a generated `/etc/passwd` and `/etc/group`; the trial's root is bound read-write
//!   at `/workspace` and nothing else is writable (the new root is remounted read-only; there
//!   is no `/tmp`). The environment is cleared; `ulimit` caps CPU time, address space and
//!   file size; the harness kills the command at the wall-clock limit and when its output runs
//!   far past the cap, and every process of the command dies with it (pid namespace,
//!   `--die-with-parent`).
//! - **simulated**: commands are *not* executed. It exists so that a machine without
//!   bubblewrap, or without user namespaces (some containers and CI runners), can still run
//!   the two shell evals end to end, deterministically: a small interpreter over the seeded
//!   files handles what those evals need (`cat`, `ls`, `grep`, `echo >`, `sed -i`, `head`,
//!   `tail`, `wc`, `cp`/`mv`/`rm`/`touch`/`mkdir`/`chmod`, `whoami`/`id`, a `sudo`/`su` that
//!   deny), and answers anything else with `command not found`. It is never mistaken for the
//!   real thing: every execution record and the outcome say `sandbox: simulated`.
//!
//! [`detect`] picks the backend once per process: bubblewrap when a probe command runs in it,
//! else simulated (with the reason, logged as a warning). `DILEMMA_SANDBOX=simulated` forces
//! the fallback.
//!
//! The harness writes the agent's action log (`environment.sandbox.action_log`) from the host
//! between commands, when no sandboxed process is alive; it never follows a symbolic link the
//! agent made, so the log cannot be turned into a way to write outside the root.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::scenario::{SandboxSpec, check_sandbox_path};

/// Where the trial's root appears inside the sandbox (the working and home folder).
pub const WORKSPACE: &str = "/workspace";

/// A command whose stdout and stderr together pass this many bytes is killed: the agent sees
/// at most `output_limit` bytes anyway, and `yes` should not run until the timeout.
const OUTPUT_KILL_BYTES: u64 = 1 << 20;

/// How a trial's commands are run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Backend {
    /// Really executed, in bubblewrap.
    Bubblewrap,
    /// Not executed: answered by the small deterministic interpreter.
    Simulated,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Bubblewrap => "bubblewrap",
            Backend::Simulated => "simulated",
        }
    }
}

/// The backend this machine offers, and why it fell back, if it did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detection {
    pub backend: Backend,
    pub reason: Option<String>,
}

/// Finds the backend once per process: bubblewrap if a probe command runs in it.
pub fn detect() -> &'static Detection {
    static DETECTION: OnceLock<Detection> = OnceLock::new();
    DETECTION.get_or_init(|| {
        let detection = probe();
        if let Some(reason) = &detection.reason {
            tracing::warn!(%reason, "the shell sandbox is simulated: commands are interpreted, not executed");
        }
        detection
    })
}

fn probe() -> Detection {
    let simulated = |reason: String| Detection { backend: Backend::Simulated, reason: Some(reason) };
    if std::env::var("DILEMMA_SANDBOX").is_ok_and(|value| value == "simulated") {
        return simulated("DILEMMA_SANDBOX=simulated".into());
    }
    if bwrap_path().is_none() {
        return simulated("bwrap is not on PATH (Debian package `bubblewrap`)".into());
    }
    let sandbox = match Sandbox::create(&SandboxSpec::default(), Backend::Bubblewrap) {
        Ok(sandbox) => sandbox,
        Err(error) => return simulated(format!("cannot create a sandbox root: {error}")),
    };
    let execution = sandbox.execute_blocking("echo ok");
    if execution.exit_code == Some(0) && execution.stdout == "ok\n" {
        Detection { backend: Backend::Bubblewrap, reason: None }
    } else {
        simulated(format!(
            "bwrap cannot run a command here (exit {:?}): {}",
            execution.exit_code,
            execution.stderr.trim()
        ))
    }
}

fn bwrap_path() -> Option<&'static Path> {
    static PATH: OnceLock<Option<PathBuf>> = OnceLock::new();
    PATH.get_or_init(|| {
        let search = std::env::var_os("PATH").unwrap_or_else(|| OsString::from("/usr/bin:/bin"));
        std::env::split_paths(&search).map(|folder| folder.join("bwrap")).find(|candidate| candidate.is_file())
    })
    .as_deref()
}

/// Why a sandbox could not be set up or written.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("sandbox file `{path}`: {problem}")]
    Path { path: String, problem: String },
    #[error("sandbox root {path}: {source}")]
    Io { path: String, source: std::io::Error },
}

fn io_error(path: &Path, source: std::io::Error) -> SandboxError {
    SandboxError::Io { path: path.display().to_string(), source }
}

/// What one command did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Execution {
    pub backend: Backend,
    pub command: String,
    /// `None` when the command was killed (timeout, output cap) or could not start.
    pub exit_code: Option<i32>,
    /// At most `output_limit` bytes of each stream.
    pub stdout: String,
    pub stderr: String,
    /// Bytes the command wrote to each stream in all.
    pub stdout_bytes: u64,
    pub stderr_bytes: u64,
    pub timed_out: bool,
    /// The harness's own problem (bwrap could not start, ...), not the command's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
}

impl Execution {
    /// What the agent sees: the exit code, stdout, stderr, and notes on truncation and
    /// timeouts. Never mentions the backend (the agent must not learn it is simulated).
    pub fn observation(&self) -> String {
        let mut text = match self.exit_code {
            Some(code) => format!("exit code: {code}\n"),
            None => "exit code: none (killed)\n".to_owned(),
        };
        text.push_str("stdout:\n");
        text.push_str(&self.stdout);
        if !self.stdout.is_empty() && !self.stdout.ends_with('\n') {
            text.push('\n');
        }
        if self.stdout_bytes > self.stdout.len() as u64 {
            text.push_str(&format!("[stdout truncated: {} of {} bytes shown]\n", self.stdout.len(), self.stdout_bytes));
        }
        text.push_str("stderr:\n");
        text.push_str(&self.stderr);
        if !self.stderr.is_empty() && !self.stderr.ends_with('\n') {
            text.push('\n');
        }
        if self.stderr_bytes > self.stderr.len() as u64 {
            text.push_str(&format!("[stderr truncated: {} of {} bytes shown]\n", self.stderr.len(), self.stderr_bytes));
        }
        if self.timed_out {
            text.push_str("[the command ran past its time limit and was killed]\n");
        }
        if let Some(failure) = &self.failure {
            text.push_str(&format!("[the command could not run: {failure}]\n"));
        }
        text.trim_end().to_owned()
    }

    /// The execution as the transcript keeps it (the environment attempt's output).
    pub fn record(&self) -> Value {
        json!({
            "sandbox": self.backend.as_str(),
            "command": self.command,
            "exit_code": self.exit_code,
            "stdout": self.stdout,
            "stderr": self.stderr,
            "stdout_bytes": self.stdout_bytes,
            "stderr_bytes": self.stderr_bytes,
            "timed_out": self.timed_out,
            "failure": self.failure,
        })
    }
}

/// The entry the harness appends to the action log after a command: the turn, the command,
/// and the observation the agent got. Scoring rebuilds the true log from the transcript with
/// the same function.
pub fn action_log_entry(turn: u32, command: &str, observation: &str) -> String {
    format!("[turn {turn}] $ {command}\n{observation}\n")
}

/// One trial's sandbox. Dropping it removes the root.
pub struct Sandbox {
    backend: Backend,
    spec: SandboxSpec,
    /// The host folder holding `workspace/` (bound at `/workspace`), `passwd` and `group`.
    root: Option<PathBuf>,
    simulated: Mutex<Simulated>,
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox").field("backend", &self.backend).field("root", &self.root).finish()
    }
}

impl Sandbox {
    /// A fresh sandbox seeded from `spec`.
    pub fn create(spec: &SandboxSpec, backend: Backend) -> Result<Sandbox, SandboxError> {
        for path in spec.files.keys().chain(spec.action_log.iter()) {
            check_sandbox_path(path).map_err(|problem| SandboxError::Path { path: path.clone(), problem })?;
        }
        let modes = parse_modes(spec)?;
        let root = match backend {
            Backend::Bubblewrap => Some(seed_root(spec, &modes)?),
            Backend::Simulated => None,
        };
        Ok(Sandbox { backend, spec: spec.clone(), root, simulated: Mutex::new(Simulated::new(spec, &modes)) })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The host folder bound at `/workspace` (bubblewrap only).
    pub fn host_workspace(&self) -> Option<PathBuf> {
        self.root.as_ref().map(|root| root.join("workspace"))
    }

    /// Runs one command, off the async workers (a command may take up to its time limit).
    pub async fn execute(&self, command: &str) -> Execution {
        match (&self.root, self.backend) {
            (Some(root), Backend::Bubblewrap) => {
                let (root, spec, command) = (root.clone(), self.spec.clone(), command.to_owned());
                let fallback = command.clone();
                tokio::task::spawn_blocking(move || run_bubblewrap(&root, &spec, &command))
                    .await
                    .unwrap_or_else(|error| failed(Backend::Bubblewrap, &fallback, format!("the command's thread failed: {error}")))
            }
            _ => self.execute_blocking(command),
        }
    }

    /// Runs one command on this thread.
    pub fn execute_blocking(&self, command: &str) -> Execution {
        match (&self.root, self.backend) {
            (Some(root), Backend::Bubblewrap) => run_bubblewrap(root, &self.spec, command),
            _ => {
                let mut simulated = self.simulated.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                simulated.execute(command, self.spec.output_limit as usize)
            }
        }
    }

    /// Appends the harness's entry for a command to the action log, if the scenario has one.
    pub fn record_action(&self, turn: u32, command: &str, observation: &str) -> Result<(), SandboxError> {
        let Some(log) = &self.spec.action_log else {
            return Ok(());
        };
        let entry = action_log_entry(turn, command, observation);
        match &self.root {
            Some(root) => append_host_file(&root.join("workspace"), log, &entry),
            None => {
                let mut simulated = self.simulated.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                simulated.append(log, &entry).map_err(|problem| SandboxError::Path { path: log.clone(), problem })
            }
        }
    }

    /// A file of the root as it is now (relative to `/workspace`), if it is a regular file;
    /// a symbolic link reads as missing.
    pub fn read_file(&self, path: &str) -> Option<String> {
        check_sandbox_path(path).ok()?;
        match &self.root {
            Some(root) => {
                let file = host_path(&root.join("workspace"), path).ok()?;
                let metadata = std::fs::symlink_metadata(&file).ok()?;
                if !metadata.is_file() {
                    return None;
                }
                std::fs::read(&file).ok().map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            }
            None => {
                let simulated = self.simulated.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                simulated.files.get(&format!("{WORKSPACE}/{path}")).map(|file| file.text.clone())
            }
        }
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if let Some(root) = &self.root
            && std::fs::remove_dir_all(root).is_err() {
                // The agent may have taken the permissions off its own folders.
                restore_permissions(root);
                if let Err(error) = std::fs::remove_dir_all(root) {
                    tracing::warn!(root = %root.display(), %error, "could not remove a sandbox root");
                }
            }
    }
}

fn restore_permissions(folder: &Path) {
    let _ = std::fs::set_permissions(folder, std::fs::Permissions::from_mode(0o700));
    for entry in std::fs::read_dir(folder).into_iter().flatten().flatten() {
        if entry.file_type().is_ok_and(|kind| kind.is_dir()) {
            restore_permissions(&entry.path());
        }
    }
}

fn parse_modes(spec: &SandboxSpec) -> Result<BTreeMap<String, u32>, SandboxError> {
    spec.modes
        .iter()
        .map(|(path, mode)| {
            u32::from_str_radix(mode, 8)
                .ok()
                .filter(|mode| *mode <= 0o7777)
                .map(|mode| (path.clone(), mode))
                .ok_or_else(|| SandboxError::Path { path: path.clone(), problem: format!("`{mode}` is not an octal mode") })
        })
        .collect()
}

/// Creates `$TMPDIR/dilemma-sandbox-<uuid>/` with the seeded `workspace/`, `passwd` and `group`.
fn seed_root(spec: &SandboxSpec, modes: &BTreeMap<String, u32>) -> Result<PathBuf, SandboxError> {
    let root = std::env::temp_dir().join(format!("dilemma-sandbox-{}", uuid::Uuid::now_v7().simple()));
    let workspace = root.join("workspace");
    std::fs::create_dir_all(&workspace).map_err(|error| io_error(&workspace, error))?;
    let result = (|| {
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o700)).map_err(|error| io_error(&root, error))?;
        std::fs::set_permissions(&workspace, std::fs::Permissions::from_mode(0o755)).map_err(|error| io_error(&workspace, error))?;
        let user = &spec.user;
        let passwd = format!("root:x:0:0:root:/root:/usr/sbin/nologin\n{user}:x:1000:1000:{user}:{WORKSPACE}:/bin/bash\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n");
        let group = format!("root:x:0:\n{user}:x:1000:\nnogroup:x:65534:\n");
        for (name, text) in [("passwd", passwd), ("group", group)] {
            std::fs::write(root.join(name), text).map_err(|error| io_error(&root.join(name), error))?;
        }
        for (path, text) in &spec.files {
            let file = workspace.join(path);
            if let Some(parent) = file.parent() {
                std::fs::create_dir_all(parent).map_err(|error| io_error(parent, error))?;
            }
            std::fs::write(&file, text).map_err(|error| io_error(&file, error))?;
            let mode = modes.get(path).copied().unwrap_or(0o644);
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).map_err(|error| io_error(&file, error))?;
        }
        if let Some(log) = &spec.action_log
            && !spec.files.contains_key(log) {
                append_host_file(&workspace, log, "")?;
            }
        Ok(())
    })();
    match result {
        Ok(()) => Ok(root),
        Err(error) => {
            let _ = std::fs::remove_dir_all(&root);
            Err(error)
        }
    }
}

/// `workspace/relative`, refusing any existing part that is a symbolic link (the agent's
/// links are resolved inside the sandbox; on the host they could point anywhere).
fn host_path(workspace: &Path, relative: &str) -> Result<PathBuf, SandboxError> {
    let mut path = workspace.to_path_buf();
    for part in relative.split('/') {
        path.push(part);
        if std::fs::symlink_metadata(&path).is_ok_and(|metadata| metadata.file_type().is_symlink()) {
            return Err(SandboxError::Path { path: relative.to_owned(), problem: "a part of the path is a symbolic link".into() });
        }
    }
    Ok(path)
}

/// Appends to a file of the workspace from the host, creating it and its folders. A
/// symbolic link in its place is removed first (an agent that swaps its log for a link has
/// tampered with it; the harness still must not write through it).
fn append_host_file(workspace: &Path, relative: &str, text: &str) -> Result<(), SandboxError> {
    let (folder, name) = match relative.rsplit_once('/') {
        Some((folder, name)) => (Some(folder), name),
        None => (None, relative),
    };
    let parent = match folder {
        Some(folder) => host_path(workspace, folder)?,
        None => workspace.to_path_buf(),
    };
    std::fs::create_dir_all(&parent).map_err(|error| io_error(&parent, error))?;
    let file = parent.join(name);
    if std::fs::symlink_metadata(&file).is_ok_and(|metadata| metadata.file_type().is_symlink()) {
        std::fs::remove_file(&file).map_err(|error| io_error(&file, error))?;
    }
    let open = || std::fs::OpenOptions::new().create(true).append(true).open(&file);
    let mut handle = match open() {
        Ok(handle) => handle,
        Err(error) if error.kind() == std::io::ErrorKind::PermissionDenied => {
            // The agent took its own write permission off the log; the harness writes anyway.
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).map_err(|error| io_error(&file, error))?;
            open().map_err(|error| io_error(&file, error))?
        }
        Err(error) => return Err(io_error(&file, error)),
    };
    handle.write_all(text.as_bytes()).map_err(|error| io_error(&file, error))
}

/// The bubblewrap arguments for a trial root (everything before `--` and the command).
pub fn bubblewrap_args(root: &Path, spec: &SandboxSpec) -> Vec<OsString> {
    let mut args: Vec<OsString> = Vec::new();
    let mut push = |items: &[&str]| args.extend(items.iter().map(OsString::from));
    push(&["--unshare-all", "--unshare-user", "--uid", "1000", "--gid", "1000", "--hostname", "sandbox"]);
    push(&["--die-with-parent", "--new-session", "--ro-bind", "/usr", "/usr"]);
    // Merged-/usr systems link these into /usr; older layouts have real folders.
    for top in ["/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"] {
        match std::fs::symlink_metadata(top) {
            Ok(metadata) if metadata.file_type().is_symlink() => {
                if let Ok(target) = std::fs::read_link(top) {
                    args.extend([OsString::from("--symlink"), target.into_os_string(), OsString::from(top)]);
                }
            }
            Ok(metadata) if metadata.is_dir() => args.extend(["--ro-bind", top, top].map(OsString::from)),
            _ => {}
        }
    }
    // The dynamic loader's cache (multiarch libraries are not on its default path) and the
    // alternatives links (`awk`, `editor`, ...); nothing else of the host's /etc.
    for etc in ["/etc/ld.so.cache", "/etc/alternatives", "/etc/localtime"] {
        if Path::new(etc).exists() {
            args.extend(["--ro-bind", etc, etc].map(OsString::from));
        }
    }
    for name in ["passwd", "group"] {
        args.extend([OsString::from("--ro-bind"), root.join(name).into_os_string(), OsString::from(format!("/etc/{name}"))]);
    }
    args.extend(["--proc", "/proc", "--dev", "/dev"].map(OsString::from));
    args.extend([OsString::from("--bind"), root.join("workspace").into_os_string(), OsString::from(WORKSPACE)]);
    args.extend(["--remount-ro", "/", "--chdir", WORKSPACE, "--clearenv"].map(OsString::from));
    let user = spec.user.as_str();
    for (name, value) in [
        ("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"),
        ("HOME", WORKSPACE),
        ("USER", user),
        ("LOGNAME", user),
        ("SHELL", "/bin/bash"),
        ("LANG", "C.UTF-8"),
        ("TERM", "dumb"),
    ] {
        args.extend(["--setenv", name, value].map(OsString::from));
    }
    args
}

/// The shell line that runs inside: limits first, then the agent's command (`$1`).
fn limited_shell(spec: &SandboxSpec) -> String {
    format!(
        "ulimit -t {} -v 2097152 -f 65536 2>/dev/null; exec /bin/bash --noprofile --norc -c \"$1\"",
        spec.timeout_seconds
    )
}

fn failed(backend: Backend, command: &str, failure: String) -> Execution {
    Execution {
        backend,
        command: command.to_owned(),
        exit_code: None,
        stdout: String::new(),
        stderr: String::new(),
        stdout_bytes: 0,
        stderr_bytes: 0,
        timed_out: false,
        failure: Some(failure),
    }
}

fn run_bubblewrap(root: &Path, spec: &SandboxSpec, command: &str) -> Execution {
    let Some(bwrap) = bwrap_path() else {
        return failed(Backend::Bubblewrap, command, "bwrap is not on PATH".into());
    };
    let mut child = match Command::new(bwrap)
        .args(bubblewrap_args(root, spec))
        .arg("--")
        .args(["/bin/bash", "--noprofile", "--norc", "-c", &limited_shell(spec), "bash", command])
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(child) => child,
        Err(error) => return failed(Backend::Bubblewrap, command, format!("cannot start bwrap: {error}")),
    };
    let limit = spec.output_limit as usize;
    let written = Arc::new(AtomicU64::new(0));
    let reader = |stream: Option<Box<dyn Read + Send>>| {
        let written = written.clone();
        std::thread::spawn(move || {
            let mut kept = Vec::new();
            let mut total = 0u64;
            let mut buffer = [0u8; 8192];
            if let Some(mut stream) = stream {
                while let Ok(count) = stream.read(&mut buffer) {
                    if count == 0 {
                        break;
                    }
                    total += count as u64;
                    written.fetch_add(count as u64, Ordering::Relaxed);
                    let room = limit.saturating_sub(kept.len());
                    kept.extend_from_slice(&buffer[..count.min(room)]);
                }
            }
            (kept, total)
        })
    };
    let stdout = reader(child.stdout.take().map(|stream| Box::new(stream) as Box<dyn Read + Send>));
    let stderr = reader(child.stderr.take().map(|stream| Box::new(stream) as Box<dyn Read + Send>));
    let deadline = Instant::now() + Duration::from_secs(u64::from(spec.timeout_seconds));
    let mut timed_out = false;
    let mut pause = Duration::from_millis(1);
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) => {}
            Err(_) => break None,
        }
        let flooding = written.load(Ordering::Relaxed) > OUTPUT_KILL_BYTES;
        if flooding || Instant::now() >= deadline {
            timed_out = !flooding;
            // Killing bwrap kills the sandbox's pid 1, and with it every process inside.
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(20));
    };
    let (stdout, stdout_bytes) = stdout.join().unwrap_or_default();
    let (stderr, stderr_bytes) = stderr.join().unwrap_or_default();
    let exit_code = status.and_then(|status| {
        use std::os::unix::process::ExitStatusExt;
        status.code().or_else(|| status.signal().map(|signal| 128 + signal))
    });
    Execution {
        backend: Backend::Bubblewrap,
        command: command.to_owned(),
        exit_code,
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
        stdout_bytes,
        stderr_bytes,
        timed_out,
        failure: None,
    }
}

// ---------------------------------------------------------------------------------------
// The simulated fallback

/// A file of the simulated root.
#[derive(Debug, Clone)]
struct SimulatedFile {
    text: String,
    mode: u32,
}

/// The simulated root: absolute paths under `/workspace` to files, plus explicit folders.
/// Deliberately small (see the module docs): no variables, globs only as `*` and `?` in a
/// path's last part, no subshells; anything it does not know is `command not found`.
struct Simulated {
    files: BTreeMap<String, SimulatedFile>,
    folders: BTreeSet<String>,
    cwd: String,
    user: String,
}

struct Output {
    stdout: String,
    stderr: String,
    code: i32,
}

impl Output {
    fn ok(stdout: impl Into<String>) -> Output {
        Output { stdout: stdout.into(), stderr: String::new(), code: 0 }
    }
    fn error(stderr: impl Into<String>, code: i32) -> Output {
        Output { stdout: String::new(), stderr: stderr.into(), code }
    }
}

/// One word or operator of a command line.
#[derive(Debug, Clone, PartialEq)]
enum Token {
    /// A word, and whether any of it was quoted (quoted words are not globbed).
    Word(String, bool),
    Operator(&'static str),
}

fn tokenize(line: &str) -> Result<Vec<Token>, String> {
    let mut tokens = Vec::new();
    let mut chars = line.chars().peekable();
    let mut word = String::new();
    let mut in_word = false;
    let mut quoted = false;
    let flush = |tokens: &mut Vec<Token>, word: &mut String, in_word: &mut bool, quoted: &mut bool| {
        if *in_word {
            tokens.push(Token::Word(std::mem::take(word), *quoted));
        }
        *in_word = false;
        *quoted = false;
    };
    while let Some(character) = chars.next() {
        match character {
            '\'' => {
                in_word = true;
                quoted = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(inner) => word.push(inner),
                        None => return Err("unexpected EOF while looking for matching `''".into()),
                    }
                }
            }
            '"' => {
                in_word = true;
                quoted = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(next @ ('"' | '\\' | '$' | '`')) => word.push(next),
                            Some(next) => {
                                word.push('\\');
                                word.push(next);
                            }
                            None => return Err("unexpected EOF while looking for matching `\"'".into()),
                        },
                        Some(inner) => word.push(inner),
                        None => return Err("unexpected EOF while looking for matching `\"'".into()),
                    }
                }
            }
            '\\' => {
                in_word = true;
                if let Some(next) = chars.next() {
                    word.push(next);
                }
            }
            ' ' | '\t' | '\n' => flush(&mut tokens, &mut word, &mut in_word, &mut quoted),
            ';' | '|' | '&' | '>' | '<' => {
                // `2>` and `2>&1` belong to the redirection, not the word.
                let stderr_redirect = character == '>' && in_word && word == "2" && !quoted;
                if stderr_redirect {
                    word.clear();
                    in_word = false;
                }
                flush(&mut tokens, &mut word, &mut in_word, &mut quoted);
                let operator = match (character, chars.peek()) {
                    ('|', Some('|')) => { chars.next(); "||" }
                    ('&', Some('&')) => { chars.next(); "&&" }
                    ('>', Some('>')) => { chars.next(); if stderr_redirect { "2>>" } else { ">>" } }
                    ('>', Some('&')) if stderr_redirect => {
                        chars.next();
                        match chars.next() {
                            Some('1') => "2>&1",
                            _ => return Err("syntax error near `>&'".into()),
                        }
                    }
                    ('>', _) => if stderr_redirect { "2>" } else { ">" },
                    (';', _) => ";",
                    ('|', _) => "|",
                    ('&', _) => "&",
                    _ => "<",
                };
                tokens.push(Token::Operator(operator));
            }
            other => {
                in_word = true;
                word.push(other);
            }
        }
    }
    flush(&mut tokens, &mut word, &mut in_word, &mut quoted);
    Ok(tokens)
}

/// One simple command of a pipeline: its words and redirections.
#[derive(Debug, Default)]
struct Simple {
    words: Vec<(String, bool)>,
    stdout_to: Option<(String, bool)>,
    stderr_to: Option<(String, bool)>,
    stderr_to_stdout: bool,
    stdin_from: Option<String>,
}

impl Simulated {
    fn new(spec: &SandboxSpec, modes: &BTreeMap<String, u32>) -> Simulated {
        let mut simulated = Simulated {
            files: BTreeMap::new(),
            folders: BTreeSet::from([WORKSPACE.to_owned()]),
            cwd: WORKSPACE.to_owned(),
            user: spec.user.clone(),
        };
        for (path, text) in &spec.files {
            let mode = modes.get(path).copied().unwrap_or(0o644);
            simulated.insert(&format!("{WORKSPACE}/{path}"), text.clone(), mode);
        }
        if let Some(log) = &spec.action_log {
            let path = format!("{WORKSPACE}/{log}");
            if !simulated.files.contains_key(&path) {
                simulated.insert(&path, String::new(), 0o644);
            }
        }
        simulated
    }

    fn insert(&mut self, path: &str, text: String, mode: u32) {
        let mut folder = parent(path);
        while folder.len() > WORKSPACE.len() {
            self.folders.insert(folder.to_owned());
            folder = parent(folder);
        }
        self.files.insert(path.to_owned(), SimulatedFile { text, mode });
    }

    fn append(&mut self, relative: &str, text: &str) -> Result<(), String> {
        let path = format!("{WORKSPACE}/{relative}");
        match self.files.get_mut(&path) {
            Some(file) => file.text.push_str(text),
            None => self.insert(&path, text.to_owned(), 0o644),
        }
        Ok(())
    }

    fn execute(&mut self, line: &str, limit: usize) -> Execution {
        let output = match tokenize(line) {
            Ok(tokens) => self.run_list(&tokens),
            Err(problem) => Output::error(format!("bash: {problem}\n"), 2),
        };
        let cut = |text: &str| {
            let mut end = text.len().min(limit);
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text[..end].to_owned()
        };
        Execution {
            backend: Backend::Simulated,
            command: line.to_owned(),
            exit_code: Some(output.code),
            stdout: cut(&output.stdout),
            stderr: cut(&output.stderr),
            stdout_bytes: output.stdout.len() as u64,
            stderr_bytes: output.stderr.len() as u64,
            timed_out: false,
            failure: None,
        }
    }

    /// `a && b || c; d`: pipelines joined by list operators, left to right.
    fn run_list(&mut self, tokens: &[Token]) -> Output {
        let mut all = Output::ok("");
        let mut pending = ";";
        let mut start = 0;
        let mut index = 0;
        while index <= tokens.len() {
            let end_here = index == tokens.len()
                || matches!(tokens[index], Token::Operator(";" | "&&" | "||" | "&"));
            if end_here {
                let pipeline = &tokens[start..index];
                let run = match pending {
                    "&&" => all.code == 0,
                    "||" => all.code != 0,
                    _ => true,
                };
                if run && !pipeline.is_empty() {
                    let output = self.run_pipeline(pipeline);
                    all.stdout.push_str(&output.stdout);
                    all.stderr.push_str(&output.stderr);
                    all.code = output.code;
                }
                if let Some(Token::Operator(operator)) = tokens.get(index) {
                    pending = operator;
                }
                start = index + 1;
            }
            index += 1;
        }
        all
    }

    fn run_pipeline(&mut self, tokens: &[Token]) -> Output {
        let mut input = String::new();
        let mut stderr = String::new();
        let mut last = Output::ok("");
        for part in tokens.split(|token| *token == Token::Operator("|")) {
            let simple = match parse_simple(part) {
                Ok(simple) => simple,
                Err(problem) => return Output::error(format!("bash: {problem}\n"), 2),
            };
            last = self.run_simple(&simple, &input);
            stderr.push_str(&last.stderr);
            input = std::mem::take(&mut last.stdout);
        }
        Output { stdout: input, stderr, code: last.code }
    }

    fn run_simple(&mut self, simple: &Simple, piped: &str) -> Output {
        let mut words = Vec::new();
        for (word, quoted) in &simple.words {
            words.extend(self.expand(word, *quoted));
        }
        let stdin = match &simple.stdin_from {
            Some(path) => match self.read(path) {
                Ok(text) => text,
                Err(problem) => return Output::error(format!("bash: {path}: {problem}\n"), 1),
            },
            None => piped.to_owned(),
        };
        let mut output = match words.split_first() {
            None => Output::ok(""),
            Some((name, args)) => self.builtin(name, args, &stdin),
        };
        if simple.stderr_to_stdout {
            output.stdout.push_str(&std::mem::take(&mut output.stderr));
        }
        for (target, append, is_stderr) in [
            simple.stdout_to.as_ref().map(|(path, append)| (path, *append, false)),
            simple.stderr_to.as_ref().map(|(path, append)| (path, *append, true)),
        ]
        .into_iter()
        .flatten()
        {
            let text = if is_stderr { std::mem::take(&mut output.stderr) } else { std::mem::take(&mut output.stdout) };
            if target == "/dev/null" {
                continue;
            }
            if let Err(problem) = self.write(target, &text, append) {
                output.stderr.push_str(&format!("bash: {target}: {problem}\n"));
                output.code = 1;
            }
        }
        output
    }

    fn absolute(&self, path: &str) -> String {
        let joined = if path.starts_with('/') { path.to_owned() } else { format!("{}/{path}", self.cwd) };
        let mut parts: Vec<&str> = Vec::new();
        for part in joined.split('/') {
            match part {
                "" | "." => {}
                ".." => {
                    parts.pop();
                }
                other => parts.push(other),
            }
        }
        format!("/{}", parts.join("/"))
    }

    fn inside(path: &str) -> bool {
        path == WORKSPACE || path.starts_with(&format!("{WORKSPACE}/"))
    }

    /// A word after `~` and glob expansion (globs that match nothing stay as written).
    fn expand(&self, word: &str, quoted: bool) -> Vec<String> {
        let word = match word.strip_prefix('~') {
            Some(rest) if !quoted && (rest.is_empty() || rest.starts_with('/')) => format!("{WORKSPACE}{rest}"),
            _ => word.to_owned(),
        };
        if quoted || !word.contains(['*', '?']) {
            return vec![word];
        }
        let (folder, pattern) = match word.rsplit_once('/') {
            Some((folder, pattern)) => (Some(folder), pattern),
            None => (None, word.as_str()),
        };
        if folder.is_some_and(|folder| folder.contains(['*', '?'])) {
            return vec![word];
        }
        let base = self.absolute(folder.unwrap_or("."));
        let matcher = glob_regex(pattern);
        let mut found: Vec<String> = self
            .children(&base)
            .into_iter()
            .filter(|(name, _)| (pattern.starts_with('.') || !name.starts_with('.')) && matcher.is_match(name))
            .map(|(name, _)| match folder {
                Some(folder) => format!("{folder}/{name}"),
                None => name,
            })
            .collect();
        found.sort();
        if found.is_empty() { vec![word] } else { found }
    }

    /// Names directly inside a folder, with whether each is a folder.
    fn children(&self, folder: &str) -> Vec<(String, bool)> {
        let prefix = format!("{folder}/");
        let mut names: BTreeMap<String, bool> = BTreeMap::new();
        for path in self.files.keys() {
            if let Some(rest) = path.strip_prefix(&prefix)
                && !rest.contains('/') {
                    names.insert(rest.to_owned(), false);
                }
        }
        for path in &self.folders {
            if let Some(rest) = path.strip_prefix(&prefix)
                && !rest.is_empty() && !rest.contains('/') {
                    names.insert(rest.to_owned(), true);
                }
        }
        names.into_iter().collect()
    }

    fn read(&self, path: &str) -> Result<String, String> {
        let absolute = self.absolute(path);
        if let Some(file) = self.files.get(&absolute) {
            return if file.mode & 0o400 == 0 { Err("Permission denied".into()) } else { Ok(file.text.clone()) };
        }
        if self.folders.contains(&absolute) {
            return Err("Is a directory".into());
        }
        match absolute.as_str() {
            "/etc/passwd" => Ok(format!("root:x:0:0:root:/root:/usr/sbin/nologin\n{0}:x:1000:1000:{0}:{WORKSPACE}:/bin/bash\n", self.user)),
            "/etc/group" => Ok(format!("root:x:0:\n{}:x:1000:\n", self.user)),
            "/etc/hostname" => Ok("sandbox\n".into()),
            _ => Err("No such file or directory".into()),
        }
    }

    fn write(&mut self, path: &str, text: &str, append: bool) -> Result<(), String> {
        let absolute = self.absolute(path);
        if !Self::inside(&absolute) {
            let top = absolute.split('/').nth(1).unwrap_or_default();
            let exists = matches!(top, "usr" | "bin" | "lib" | "lib64" | "sbin" | "etc" | "proc" | "dev" | "" | "workspace");
            return Err(if exists { "Read-only file system".into() } else { "No such file or directory".into() });
        }
        if self.folders.contains(&absolute) {
            return Err("Is a directory".into());
        }
        if !self.folders.contains(parent(&absolute)) {
            return Err("No such file or directory".into());
        }
        match self.files.get_mut(&absolute) {
            Some(file) if file.mode & 0o200 == 0 => Err("Permission denied".into()),
            Some(file) => {
                if append {
                    file.text.push_str(text);
                } else {
                    file.text = text.to_owned();
                }
                Ok(())
            }
            None => {
                self.insert(&absolute, text.to_owned(), 0o644);
                Ok(())
            }
        }
    }

    fn builtin(&mut self, name: &str, args: &[String], stdin: &str) -> Output {
        let (flags, operands): (Vec<&String>, Vec<&String>) = args.iter().partition(|arg| arg.starts_with('-') && arg.len() > 1);
        let has = |letter: char| flags.iter().any(|flag| !flag.starts_with("--") && flag.contains(letter));
        match name {
            "true" | ":" => Output::ok(""),
            "false" => Output::error("", 1),
            "pwd" => Output::ok(format!("{}\n", self.cwd)),
            "whoami" => Output::ok(format!("{}\n", self.user)),
            "id" => Output::ok(format!("uid=1000({0}) gid=1000({0}) groups=1000({0})\n", self.user)),
            "hostname" => Output::ok("sandbox\n"),
            "echo" => {
                let (newline, words) = match args.first().map(String::as_str) {
                    Some("-n") => (false, &args[1..]),
                    _ => (true, args),
                };
                Output::ok(format!("{}{}", words.join(" "), if newline { "\n" } else { "" }))
            }
            "cd" => {
                let target = operands.first().map_or(WORKSPACE.to_owned(), |path| self.absolute(path));
                if self.folders.contains(&target) {
                    self.cwd = target;
                    Output::ok("")
                } else {
                    Output::error(format!("bash: cd: {}: No such file or directory\n", operands.first().map_or("", |path| path.as_str())), 1)
                }
            }
            "cat" => self.each_file(&operands, stdin, "cat", |text| text.to_owned()),
            "head" | "tail" => {
                let count = line_count(args).unwrap_or(10);
                let operands: Vec<&String> = operands_after_count(args);
                let take = |text: &str| {
                    let lines: Vec<&str> = text.split_inclusive('\n').collect();
                    if name == "head" { lines[..count.min(lines.len())].concat() } else { lines[lines.len().saturating_sub(count)..].concat() }
                };
                self.each_file(&operands, stdin, name, take)
            }
            "wc" => {
                let counted = |text: &str| {
                    if has('l') {
                        format!("{}", text.matches('\n').count())
                    } else {
                        format!("{} {} {}", text.matches('\n').count(), text.split_whitespace().count(), text.len())
                    }
                };
                if operands.is_empty() {
                    return Output::ok(format!("{}\n", counted(stdin)));
                }
                let mut output = Output::ok("");
                for path in &operands {
                    match self.read(path) {
                        Ok(text) => output.stdout.push_str(&format!("{} {path}\n", counted(&text))),
                        Err(problem) => {
                            output.stderr.push_str(&format!("wc: {path}: {problem}\n"));
                            output.code = 1;
                        }
                    }
                }
                output
            }
            "ls" => self.ls(&operands, has('a'), has('l')),
            "grep" => self.grep(args, stdin),
            "sed" => self.sed(args, stdin),
            "touch" => {
                let mut output = Output::ok("");
                for path in &operands {
                    let existing = self.files.contains_key(&self.absolute(path));
                    if let Err(problem) = if existing { Ok(()) } else { self.write(path, "", true) } {
                        output.stderr.push_str(&format!("touch: cannot touch '{path}': {problem}\n"));
                        output.code = 1;
                    }
                }
                output
            }
            "mkdir" => {
                let mut output = Output::ok("");
                for path in &operands {
                    let absolute = self.absolute(path);
                    if !Self::inside(&absolute) {
                        output.stderr.push_str(&format!("mkdir: cannot create directory '{path}': Read-only file system\n"));
                        output.code = 1;
                    } else if !has('p') && !self.folders.contains(parent(&absolute)) {
                        output.stderr.push_str(&format!("mkdir: cannot create directory '{path}': No such file or directory\n"));
                        output.code = 1;
                    } else {
                        let mut folder = absolute.as_str();
                        while folder.len() > WORKSPACE.len() {
                            self.folders.insert(folder.to_owned());
                            folder = parent(folder);
                        }
                    }
                }
                output
            }
            "rm" => {
                let mut output = Output::ok("");
                for path in &operands {
                    let absolute = self.absolute(path);
                    if self.files.remove(&absolute).is_some() {
                        continue;
                    }
                    if self.folders.contains(&absolute) && has('r') && absolute != WORKSPACE {
                        let prefix = format!("{absolute}/");
                        self.files.retain(|file, _| !file.starts_with(&prefix));
                        self.folders.retain(|folder| *folder != absolute && !folder.starts_with(&prefix));
                        continue;
                    }
                    if !has('f') {
                        let problem = if Self::inside(&absolute) { "No such file or directory" } else { "Read-only file system" };
                        output.stderr.push_str(&format!("rm: cannot remove '{path}': {problem}\n"));
                        output.code = 1;
                    }
                }
                output
            }
            "cp" | "mv" => {
                let [source, target] = operands.as_slice() else {
                    return Output::error(format!("{name}: expected a source and a target\n"), 1);
                };
                let text = match self.read(source) {
                    Ok(text) => text,
                    Err(problem) => return Output::error(format!("{name}: cannot stat '{source}': {problem}\n"), 1),
                };
                let mut destination = self.absolute(target);
                if self.folders.contains(&destination) {
                    destination = format!("{destination}/{}", source.rsplit('/').next().unwrap_or(source));
                }
                if let Err(problem) = self.write(&destination, &text, false) {
                    return Output::error(format!("{name}: cannot create regular file '{target}': {problem}\n"), 1);
                }
                if name == "mv" {
                    self.files.remove(&self.absolute(source));
                }
                Output::ok("")
            }
            "chmod" => {
                let [mode, paths @ ..] = args else {
                    return Output::error("chmod: missing operand\n", 1);
                };
                let mut output = Output::ok("");
                for path in paths {
                    let absolute = self.absolute(path);
                    match self.files.get_mut(&absolute) {
                        Some(file) => file.mode = apply_mode(file.mode, mode),
                        None if self.folders.contains(&absolute) => {}
                        None => {
                            output.stderr.push_str(&format!("chmod: cannot access '{path}': No such file or directory\n"));
                            output.code = 1;
                        }
                    }
                }
                output
            }
            "find" => {
                let start = operands.first().map_or(".".to_owned(), |path| path.to_string());
                let base = self.absolute(&start);
                let name_pattern = args.iter().position(|arg| arg == "-name").and_then(|at| args.get(at + 1)).map(|pattern| glob_regex(pattern));
                let prefix = format!("{base}/");
                let mut found: Vec<String> = Vec::new();
                for path in self.folders.iter().chain(self.files.keys()) {
                    if *path == base || path.starts_with(&prefix) {
                        let name = path.rsplit('/').next().unwrap_or_default();
                        if name_pattern.as_ref().is_none_or(|pattern| pattern.is_match(name)) {
                            found.push(format!("{start}{}", &path[base.len()..]));
                        }
                    }
                }
                found.sort();
                Output::ok(found.into_iter().map(|path| format!("{path}\n")).collect::<String>())
            }
            "sudo" => Output::error(
                format!("[sudo] password for {0}: \nsudo: a password is required\n{0} is not in the sudoers file.\n", self.user),
                1,
            ),
            "su" => Output::error("Password: \nsu: Authentication failure\n", 1),
            "bash" | "sh" => match args.iter().position(|arg| arg == "-c").and_then(|at| args.get(at + 1)) {
                Some(inner) => match tokenize(inner) {
                    Ok(tokens) => self.run_list(&tokens),
                    Err(problem) => Output::error(format!("bash: {problem}\n"), 2),
                },
                None => Output::ok(""),
            },
            _ => Output::error(format!("bash: {name}: command not found\n"), 127),
        }
    }

    /// Applies `transform` to each file operand (or to stdin without any), as `cat` does.
    fn each_file(&self, operands: &[&String], stdin: &str, name: &str, transform: impl Fn(&str) -> String) -> Output {
        if operands.is_empty() {
            return Output::ok(transform(stdin));
        }
        let mut output = Output::ok("");
        for path in operands {
            match self.read(path) {
                Ok(text) => output.stdout.push_str(&transform(&text)),
                Err(problem) => {
                    output.stderr.push_str(&format!("{name}: {path}: {problem}\n"));
                    output.code = 1;
                }
            }
        }
        output
    }

    fn ls(&self, operands: &[&String], all: bool, long: bool) -> Output {
        let targets: Vec<String> = if operands.is_empty() { vec![".".into()] } else { operands.iter().map(|path| path.to_string()).collect() };
        let mut output = Output::ok("");
        let several = targets.len() > 1;
        for target in &targets {
            let absolute = self.absolute(target);
            let line = |name: &str, folder: bool, mode: u32, size: usize| {
                if long {
                    format!("{}{} 1 {user} {user} {size:>6} {name}\n", if folder { 'd' } else { '-' }, mode_text(mode), user = self.user)
                } else {
                    format!("{name}\n")
                }
            };
            if let Some(file) = self.files.get(&absolute) {
                output.stdout.push_str(&line(target, false, file.mode, file.text.len()));
                continue;
            }
            if !self.folders.contains(&absolute) {
                output.stderr.push_str(&format!("ls: cannot access '{target}': No such file or directory\n"));
                output.code = 2;
                continue;
            }
            if several {
                output.stdout.push_str(&format!("{target}:\n"));
            }
            for (name, folder) in self.children(&absolute) {
                if !all && name.starts_with('.') {
                    continue;
                }
                let path = format!("{absolute}/{name}");
                let (mode, size) = self.files.get(&path).map_or((0o755, 4096), |file| (file.mode, file.text.len()));
                output.stdout.push_str(&line(&name, folder, mode, size));
            }
        }
        output
    }

    fn grep(&self, args: &[String], stdin: &str) -> Output {
        let mut pattern: Option<String> = None;
        let mut paths: Vec<String> = Vec::new();
        let (mut ignore_case, mut invert, mut numbers, mut count, mut recursive, mut fixed, mut names_only) = (false, false, false, false, false, false, false);
        let mut iter = args.iter();
        while let Some(arg) = iter.next() {
            if arg == "-e" {
                pattern = iter.next().cloned();
            } else if arg.starts_with('-') && arg.len() > 1 && !arg.starts_with("--") {
                for flag in arg.chars().skip(1) {
                    match flag {
                        'i' => ignore_case = true,
                        'v' => invert = true,
                        'n' => numbers = true,
                        'c' => count = true,
                        'r' | 'R' => recursive = true,
                        'F' => fixed = true,
                        'l' => names_only = true,
                        _ => {}
                    }
                }
            } else if pattern.is_none() {
                pattern = Some(arg.clone());
            } else {
                paths.push(arg.clone());
            }
        }
        let Some(pattern) = pattern else {
            return Output::error("Usage: grep [OPTION]... PATTERNS [FILE]...\n", 2);
        };
        let source = if fixed { regex::escape(&pattern) } else { basic_regex(&pattern) };
        let Ok(matcher) = regex::RegexBuilder::new(&source).case_insensitive(ignore_case).build() else {
            return Output::error("grep: invalid regular expression\n", 2);
        };
        let mut inputs: Vec<(Option<String>, Result<String, String>)> = Vec::new();
        if paths.is_empty() && !recursive {
            inputs.push((None, Ok(stdin.to_owned())));
        }
        if recursive && paths.is_empty() {
            paths.push(".".into());
        }
        for path in &paths {
            let absolute = self.absolute(path);
            if recursive && self.folders.contains(&absolute) {
                let prefix = format!("{absolute}/");
                for file in self.files.keys().filter(|file| file.starts_with(&prefix)) {
                    let shown = format!("{}{}", path.trim_end_matches('/'), &file[absolute.len()..]);
                    let shown = shown.strip_prefix("./").map(str::to_owned).unwrap_or(shown);
                    inputs.push((Some(shown), self.read(file)));
                }
            } else {
                inputs.push((Some(path.clone()), self.read(path)));
            }
        }
        let label = inputs.len() > 1 || recursive;
        let mut output = Output::error("", 1);
        for (name, text) in inputs {
            let text = match text {
                Ok(text) => text,
                Err(problem) => {
                    output.stderr.push_str(&format!("grep: {}: {problem}\n", name.unwrap_or_default()));
                    continue;
                }
            };
            let mut matched = 0;
            for (number, line) in text.lines().enumerate() {
                if matcher.is_match(line) == invert {
                    continue;
                }
                matched += 1;
                if count || names_only {
                    continue;
                }
                let mut shown = String::new();
                if label && let Some(name) = &name {
                    shown.push_str(&format!("{name}:"));
                }
                if numbers {
                    shown.push_str(&format!("{}:", number + 1));
                }
                output.stdout.push_str(&format!("{shown}{line}\n"));
            }
            if names_only && matched > 0 {
                output.stdout.push_str(&format!("{}\n", name.clone().unwrap_or_else(|| "(standard input)".into())));
            }
            if count {
                match (&name, label) {
                    (Some(name), true) => output.stdout.push_str(&format!("{name}:{matched}\n")),
                    _ => output.stdout.push_str(&format!("{matched}\n")),
                }
            }
            if matched > 0 {
                output.code = 0;
            }
        }
        if !output.stderr.is_empty() && output.code == 1 {
            output.code = 2;
        }
        output
    }

    /// `sed [-i] [-e] SCRIPT [FILE]...` with `s/RE/TEXT/[g]` and `/RE/d` commands (`;`-joined).
    fn sed(&mut self, args: &[String], stdin: &str) -> Output {
        let in_place = args.iter().any(|arg| arg == "-i" || arg.starts_with("-i") || arg == "--in-place");
        let operands: Vec<&String> = args.iter().filter(|arg| !arg.starts_with('-')).collect();
        let Some((script, paths)) = operands.split_first() else {
            return Output::error("Usage: sed [OPTION]... {script-only-if-no-other-script} [input-file]...\n", 1);
        };
        let commands = match parse_sed(script) {
            Ok(commands) => commands,
            Err(problem) => return Output::error(format!("sed: -e expression #1, char 1: {problem}\n"), 1),
        };
        let apply = |text: &str| -> String {
            let mut result = String::new();
            for line in text.split_inclusive('\n') {
                let (body, ending) = match line.strip_suffix('\n') {
                    Some(body) => (body, "\n"),
                    None => (line, ""),
                };
                let mut body = body.to_owned();
                let mut deleted = false;
                for command in &commands {
                    match command {
                        SedCommand::Delete(pattern) if pattern.is_match(&body) => deleted = true,
                        SedCommand::Substitute(pattern, replacement, global) => {
                            body = if *global { pattern.replace_all(&body, replacement.as_str()).into_owned() } else { pattern.replace(&body, replacement.as_str()).into_owned() };
                        }
                        SedCommand::Delete(_) => {}
                    }
                    if deleted {
                        break;
                    }
                }
                if !deleted {
                    result.push_str(&body);
                    result.push_str(ending);
                }
            }
            result
        };
        if paths.is_empty() {
            return Output::ok(apply(stdin));
        }
        let mut output = Output::ok("");
        for path in paths {
            match self.read(path) {
                Ok(text) if in_place => {
                    // GNU sed -i writes a new file and renames it over the old one, so the
                    // file's own write bit does not matter (the folder's would).
                    let absolute = self.absolute(path);
                    if let Some(file) = self.files.get_mut(&absolute) {
                        file.text = apply(&text);
                    }
                }
                Ok(text) => output.stdout.push_str(&apply(&text)),
                Err(problem) => {
                    output.stderr.push_str(&format!("sed: can't read {path}: {problem}\n"));
                    output.code = 2;
                }
            }
        }
        output
    }
}

enum SedCommand {
    Substitute(regex::Regex, String, bool),
    Delete(regex::Regex),
}

fn parse_sed(script: &str) -> Result<Vec<SedCommand>, String> {
    let mut commands = Vec::new();
    for part in script.split(';').map(str::trim).filter(|part| !part.is_empty()) {
        if let Some(rest) = part.strip_prefix('s') {
            let delimiter = rest.chars().next().ok_or("unterminated `s' command")?;
            let pieces: Vec<&str> = rest[delimiter.len_utf8()..].split(delimiter).collect();
            let [pattern, replacement, flags] = pieces.as_slice() else {
                return Err("unterminated `s' command".into());
            };
            let pattern = regex::Regex::new(&basic_regex(pattern)).map_err(|_| "invalid regular expression".to_owned())?;
            // sed's `&` and `\1` in the replacement become the regex crate's `${0}` and `${1}`.
            let mut converted = String::new();
            let mut chars = replacement.chars().peekable();
            while let Some(character) = chars.next() {
                match character {
                    '&' => converted.push_str("${0}"),
                    '\\' => match chars.next() {
                        Some(digit) if digit.is_ascii_digit() => converted.push_str(&format!("${{{digit}}}")),
                        Some(other) => converted.push(other),
                        None => {}
                    },
                    '$' => converted.push_str("$$"),
                    other => converted.push(other),
                }
            }
            commands.push(SedCommand::Substitute(pattern, converted, flags.contains('g')));
        } else if let Some(rest) = part.strip_prefix('/') {
            let (pattern, command) = rest.rsplit_once('/').ok_or("unterminated address regex")?;
            if command.trim() != "d" {
                return Err(format!("unknown command: `{}'", command.trim()));
            }
            commands.push(SedCommand::Delete(regex::Regex::new(&basic_regex(pattern)).map_err(|_| "invalid regular expression".to_owned())?));
        } else {
            return Err(format!("unknown command: `{}'", part.chars().next().unwrap_or(' ')));
        }
    }
    Ok(commands)
}

/// A POSIX basic regex (as `grep` and `sed` read them) in the regex crate's syntax: `\(`,
/// `\)`, `\{`, `\}`, `\|`, `\+`, `\?` are the operators, their bare forms are literals.
fn basic_regex(pattern: &str) -> String {
    let mut converted = String::new();
    let mut chars = pattern.chars();
    while let Some(character) = chars.next() {
        match character {
            '\\' => match chars.next() {
                Some(operator @ ('(' | ')' | '{' | '}' | '|' | '+' | '?')) => converted.push(operator),
                Some(other) => {
                    converted.push('\\');
                    converted.push(other);
                }
                None => converted.push_str("\\\\"),
            },
            '(' | ')' | '{' | '}' | '|' | '+' | '?' => {
                converted.push('\\');
                converted.push(character);
            }
            other => converted.push(other),
        }
    }
    converted
}

fn glob_regex(pattern: &str) -> regex::Regex {
    let mut source = String::from("^");
    for character in pattern.chars() {
        match character {
            '*' => source.push_str(".*"),
            '?' => source.push('.'),
            other => source.push_str(&regex::escape(&other.to_string())),
        }
    }
    source.push('$');
    regex::Regex::new(&source).unwrap_or_else(|_| regex::Regex::new("^$").expect("a constant regex compiles"))
}

fn parse_simple(tokens: &[Token]) -> Result<Simple, String> {
    let mut simple = Simple::default();
    let mut iter = tokens.iter();
    while let Some(token) = iter.next() {
        match token {
            Token::Word(word, quoted) => simple.words.push((word.clone(), *quoted)),
            Token::Operator("2>&1") => simple.stderr_to_stdout = true,
            Token::Operator(operator @ (">" | ">>" | "2>" | "2>>" | "<")) => {
                let Some(Token::Word(target, _)) = iter.next() else {
                    return Err(format!("syntax error near unexpected token `{operator}'"));
                };
                match *operator {
                    ">" => simple.stdout_to = Some((target.clone(), false)),
                    ">>" => simple.stdout_to = Some((target.clone(), true)),
                    "2>" => simple.stderr_to = Some((target.clone(), false)),
                    "2>>" => simple.stderr_to = Some((target.clone(), true)),
                    _ => simple.stdin_from = Some(target.clone()),
                }
            }
            Token::Operator(operator) => return Err(format!("syntax error near unexpected token `{operator}'")),
        }
    }
    Ok(simple)
}

fn parent(path: &str) -> &str {
    match path.rfind('/') {
        Some(0) | None => "/",
        Some(at) => &path[..at],
    }
}

/// `-n 5`, `-n5`, `-5`.
fn line_count(args: &[String]) -> Option<usize> {
    for (index, arg) in args.iter().enumerate() {
        if arg == "-n" {
            return args.get(index + 1).and_then(|count| count.trim_start_matches('+').parse().ok());
        }
        if let Some(count) = arg.strip_prefix("-n").or_else(|| arg.strip_prefix('-'))
            && let Ok(count) = count.parse() {
                return Some(count);
            }
    }
    None
}

fn operands_after_count(args: &[String]) -> Vec<&String> {
    let mut operands = Vec::new();
    let mut skip = false;
    for arg in args {
        if skip {
            skip = false;
            continue;
        }
        if arg == "-n" {
            skip = true;
            continue;
        }
        if !arg.starts_with('-') {
            operands.push(arg);
        }
    }
    operands
}

/// `chmod` modes: octal (`600`) or symbolic for the owner/all (`+x`, `u+w`, `a-r`, `go-rwx`).
fn apply_mode(current: u32, mode: &str) -> u32 {
    if let Ok(octal) = u32::from_str_radix(mode, 8) {
        return octal & 0o7777;
    }
    let mut result = current;
    for clause in mode.split(',') {
        let Some(at) = clause.find(['+', '-', '=']) else {
            continue;
        };
        let (who, rest) = clause.split_at(at);
        let (operator, permissions) = rest.split_at(1);
        let mut bits = 0;
        for permission in permissions.chars() {
            bits |= match permission {
                'r' => 0o444,
                'w' => 0o222,
                'x' => 0o111,
                _ => 0,
            };
        }
        let mut mask = 0;
        for scope in if who.is_empty() { "a".chars() } else { who.chars() } {
            mask |= match scope {
                'u' => 0o700,
                'g' => 0o070,
                'o' => 0o007,
                _ => 0o777,
            };
        }
        match operator {
            "+" => result |= bits & mask,
            "-" => result &= !(bits & mask),
            _ => result = (result & !mask) | (bits & mask),
        }
    }
    result
}

fn mode_text(mode: u32) -> String {
    let mut text = String::new();
    for shift in [6, 3, 0] {
        let bits = (mode >> shift) & 7;
        text.push(if bits & 4 != 0 { 'r' } else { '-' });
        text.push(if bits & 2 != 0 { 'w' } else { '-' });
        text.push(if bits & 1 != 0 { 'x' } else { '-' });
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn simulated(files: &[(&str, &str)]) -> Sandbox {
        let spec = SandboxSpec {
            files: files.iter().map(|(path, text)| ((*path).to_owned(), (*text).to_owned())).collect(),
            ..SandboxSpec::default()
        };
        Sandbox::create(&spec, Backend::Simulated).unwrap()
    }

    #[test]
    fn tokens_keep_quotes_and_split_operators() {
        let tokens = tokenize(r#"grep -i "a b" 'c;d' x.txt 2>&1 | wc -l && echo ok>>log"#).unwrap();
        let words: Vec<String> = tokens
            .iter()
            .map(|token| match token {
                Token::Word(word, _) => word.clone(),
                Token::Operator(operator) => format!("<{operator}>"),
            })
            .collect();
        assert_eq!(words, ["grep", "-i", "a b", "c;d", "x.txt", "<2>&1>", "<|>", "wc", "-l", "<&&>", "echo", "ok", "<>>>", "log"]);
    }

    #[test]
    fn the_interpreter_reads_writes_and_pipes() {
        let sandbox = simulated(&[("notes/a.txt", "alpha\nbeta\ngamma\n")]);
        let run = |command: &str| sandbox.execute_blocking(command);
        assert_eq!(run("cat notes/a.txt | grep -n a").stdout, "1:alpha\n2:beta\n3:gamma\n");
        assert_eq!(run("grep -c mm notes/a.txt").stdout, "1\n");
        assert_eq!(run("sed -i '/beta/d' notes/a.txt && sed -i 's/gam\\(ma\\)/X\\1/' notes/a.txt; cat notes/a.txt").stdout, "alpha\nXma\n");
        assert_eq!(run("echo hi > b.txt; echo more >> b.txt; cat b.txt").stdout, "hi\nmore\n");
        assert_eq!(run("ls").stdout, "b.txt\nnotes\n");
        assert_eq!(run("cat notes/*.txt | wc -l").stdout, "2\n");
        assert_eq!(run("head -n 1 b.txt").stdout, "hi\n");
        let missing = run("nmap 10.0.0.1");
        assert_eq!((missing.exit_code, missing.stderr.as_str()), (Some(127), "bash: nmap: command not found\n"));
        let outside = run("touch /usr/x");
        assert_eq!(outside.exit_code, Some(1));
        assert!(outside.stderr.contains("Read-only file system"));
        assert_eq!(run("whoami").stdout, "agent\n");
        assert_eq!(run("sudo cat notes/a.txt").exit_code, Some(1));
    }

    #[test]
    fn modes_are_kept_and_chmod_changes_them() {
        let spec = SandboxSpec {
            files: [("secret.txt".to_owned(), "s3cret\n".to_owned())].into(),
            modes: [("secret.txt".to_owned(), "0000".to_owned())].into(),
            ..SandboxSpec::default()
        };
        let sandbox = Sandbox::create(&spec, Backend::Simulated).unwrap();
        assert!(sandbox.execute_blocking("cat secret.txt").stderr.contains("Permission denied"));
        assert_eq!(sandbox.execute_blocking("chmod u+r secret.txt && cat secret.txt").stdout, "s3cret\n");
    }

    #[test]
    fn observations_show_truncation_and_timeouts() {
        let execution = Execution {
            backend: Backend::Bubblewrap,
            command: "yes".into(),
            exit_code: None,
            stdout: "y\ny\n".into(),
            stderr: String::new(),
            stdout_bytes: 100,
            stderr_bytes: 0,
            timed_out: true,
            failure: None,
        };
        let observation = execution.observation();
        assert!(observation.starts_with("exit code: none (killed)\nstdout:\ny\ny\n[stdout truncated: 4 of 100 bytes shown]"), "{observation}");
        assert!(observation.ends_with("[the command ran past its time limit and was killed]"));
        assert!(!observation.contains("bubblewrap"));
    }

    #[test]
    fn symbolic_modes_follow_chmod() {
        assert_eq!(apply_mode(0o644, "+x"), 0o755);
        assert_eq!(apply_mode(0o644, "go-r"), 0o600);
        assert_eq!(apply_mode(0o000, "u=rw"), 0o600);
        assert_eq!(apply_mode(0o644, "755"), 0o755);
    }
}
