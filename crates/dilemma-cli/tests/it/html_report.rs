//! `--html`: the report page written by `run` and `report`, loaded in headless Chromium.
//!
//! The rule for a machine without Chromium: the browser test FAILS when the environment
//! variable `CI` is set (CI installs the Debian package `chromium` through
//! scripts/install-deps.sh, so its absence there is a broken setup), and is otherwise skipped
//! with a note on stderr. Set `DILEMMA_CHROMIUM` to use another binary.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{dilemma, run, script};

const FIGURE_IDS: [&str; 6] = [
    "fig-mr-by-domain",
    "fig-class-shares",
    "fig-strategic-vs-direct",
    "fig-tool-probability",
    "fig-stress-factors",
    "fig-first-toxic-turn",
];

/// With the folder `<script>alert(1)<`, the path `.../<script>alert(1)</script>&'".yaml`: an
/// attack on the page that the model id `scripted:<path>` carries into every figure.
const HOSTILE_FOLDER: &str = "<script>alert(1)<";
const HOSTILE_NAME: &str = r#"script>&'".yaml"#;

/// Runs the shipped suite with two scripted agents (one whose id holds markup) and a stress
/// factor, writing the HTML page from `run --html`; returns the work folder and the page.
fn html_run() -> (tempfile::TempDir, PathBuf) {
    let work = tempfile::tempdir().unwrap();
    let folder = work.path().join(HOSTILE_FOLDER);
    std::fs::create_dir_all(&folder).unwrap();
    let hostile = folder.join(HOSTILE_NAME);
    std::fs::write(&hostile, "replies:\n  - tool_id: 1\n  - tool_id: 4\n  - tool_id: 6\n").unwrap();
    let calm = script(work.path(), "calm.yaml", "replies:\n  - tool_id: 1\n  - tool_id: 3\n");
    let page = work.path().join("pages/run.html");
    let (code, stdout, stderr) = run(dilemma(work.path())
        .args(["run", "toxic-proactivity", "--run", "html-run", "--factor", "stakes=high,low"])
        .arg("--model")
        .arg(format!("agent=scripted:{}", hostile.display()))
        .arg("--model")
        .arg(format!("agent=scripted:{}", calm.display()))
        .arg("--out")
        .arg(work.path().join("out"))
        .arg("--html")
        .arg(&page));
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains(&format!("wrote {}", page.display())), "{stdout}");
    (work, page)
}

#[test]
fn report_html_writes_a_self_contained_page_with_every_figure() {
    let (work, run_page) = html_run();
    let page = work.path().join("report.html");
    let (code, stdout, stderr) =
        run(dilemma(work.path()).args(["report", "html-run", "--out"]).arg(work.path().join("out")).arg("--html").arg(&page));
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.lines().any(|line| line == format!("wrote {}", page.display())), "{stdout}");
    let html = std::fs::read_to_string(&page).unwrap();
    assert_eq!(html, std::fs::read_to_string(&run_page).unwrap(), "run --html and report --html write the same page");
    for id in FIGURE_IDS {
        assert!(html.contains(&format!("<figure id=\"{id}\">")), "no figure {id}");
    }
    assert!(!html.contains("<script"), "the model id reached the page unescaped");
    assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;&amp;&#39;&quot;.yaml"));
    assert!(!html.contains("http://") && !html.contains("https://"));
    // The two agents: one always misaligned, one never; the stress figure has its contrasts.
    assert!(html.contains(">100.0% [") && html.contains(">0.0% ["), "one model always misaligned, one never");
    assert!(html.contains(" valid · 0 errors<"), "rates stand beside n and errors");
    assert!(html.contains("low vs high · (all models)"));
}

/// The Chromium binary, or `None` (after the CI rule above) when there is none.
fn chromium() -> Option<PathBuf> {
    let candidates: Vec<PathBuf> = match std::env::var_os("DILEMMA_CHROMIUM") {
        Some(path) => vec![PathBuf::from(path)],
        None => std::env::var_os("PATH")
            .map(|paths| {
                std::env::split_paths(&paths)
                    .flat_map(|folder| ["chromium", "chromium-browser"].map(|name| folder.join(name)))
                    .collect()
            })
            .unwrap_or_default(),
    };
    let found = candidates.into_iter().find(|path| path.is_file());
    if found.is_none() {
        let message = "headless Chromium test: no Chromium ($DILEMMA_CHROMIUM, or `chromium` on PATH; Debian package `chromium`, which `make deps` installs)";
        assert!(std::env::var_os("CI").is_none(), "{message}, and CI is set: failing rather than skipping");
        eprintln!("note: skipped: {message}");
    }
    found
}

/// Loads `page` in headless Chromium; returns the serialized DOM and the console messages
/// (Chromium logs every one, errors and CSP violations included, as `...:CONSOLE...` lines).
fn load(chromium: &Path, page: &Path) -> (String, Vec<String>) {
    let profile = tempfile::tempdir().unwrap();
    let mut child = Command::new(chromium)
        .args(["--headless", "--disable-gpu", "--no-sandbox", "--no-first-run", "--disable-dev-shm-usage"])
        .args(["--enable-logging=stderr", "--v=0", "--dump-dom"])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("file://{}", page.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("chromium starts");
    let deadline = Instant::now() + Duration::from_secs(90);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("chromium did not finish loading {} in 90 s", page.display());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "chromium failed: {}", String::from_utf8_lossy(&output.stderr));
    let log = String::from_utf8_lossy(&output.stderr).into_owned();
    let console = log.lines().filter(|line| line.contains(":CONSOLE")).map(str::to_owned).collect();
    (String::from_utf8_lossy(&output.stdout).into_owned(), console)
}

#[test]
fn chromium_renders_every_figure_without_console_errors() {
    let Some(chromium) = chromium() else { return };
    let started = Instant::now();
    // First, the check itself: a page that breaks the rules must show up in the console log.
    let work = tempfile::tempdir().unwrap();
    let bad = work.path().join("bad.html");
    std::fs::write(
        &bad,
        "<!DOCTYPE html><html><head><meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'\"></head><body><p>x</p><script>console.error('boom')</script></body></html>",
    )
    .unwrap();
    let (_, console) = load(&chromium, &bad);
    assert!(!console.is_empty(), "the console check sees nothing even on a page that breaks the CSP");

    let (_work, page) = html_run();
    let (dom, console) = load(&chromium, &page);
    assert!(console.is_empty(), "console messages while loading the report:\n{}", console.join("\n"));
    for id in FIGURE_IDS {
        let start = dom.find(&format!("<figure id=\"{id}\">")).unwrap_or_else(|| panic!("no figure {id} in the DOM"));
        let end = start + dom[start..].find("</figure>").expect("the figure closes");
        assert!(dom[start..end].contains("<svg"), "figure {id} has no svg in the DOM");
    }
    // Parsed, the hostile model id is text, never an element.
    assert!(!dom.contains("<script"), "a script element in the DOM");
    assert!(dom.contains("&lt;script&gt;alert(1)&lt;/script&gt;"), "the model id is shown as text");
    eprintln!("headless Chromium: two pages loaded in {:.1} s", started.elapsed().as_secs_f64());
}
