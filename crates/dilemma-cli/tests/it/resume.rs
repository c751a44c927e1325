//! `kill -9` in the middle of a run, then the same command again: exactly the planned trials,
//! none stored twice, every transcript complete.

use std::time::Duration;

use dilemma::store::Store;

use crate::support::{dilemma, run, script};

#[test]
fn kill_9_then_the_same_command_finishes_the_run_exactly_once() {
    let work = tempfile::tempdir().unwrap();
    let agent = script(work.path(), "agent.yaml", "delay_ms: 40\nreplies:\n  - tool_id: 1\n  - tool_id: 4\n  - tool_id: 6\n");
    let spec = format!("agent=scripted:{}", agent.display());
    let arguments = ["run", "toxic-proactivity", "--run", "crashy", "--epochs", "5", "--concurrency", "4", "--model", &spec];
    let mut kills = 0;
    for wait_ms in [350u64, 600, 250] {
        let mut child = dilemma(work.path())
            .args(arguments)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(wait_ms));
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap(); // SIGKILL: no destructors, no flushing
            kills += 1;
        }
        child.wait().unwrap();
    }
    assert!(kills >= 2, "the run finished too fast to be interrupted");
    let (code, stdout, stderr) = run(dilemma(work.path()).args(arguments));
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stderr.contains("resuming run crashy: 120 trials"), "{stderr}");
    assert!(stdout.contains("120 of 120 trials finished; 120 valid"), "{stdout}");

    let store = Store::open(&work.path().join("store.sqlite")).unwrap();
    let (trials, turns, calls) = store.row_counts("crashy").unwrap();
    assert_eq!((trials, turns, calls), (120, 360, 360), "every trial exactly once, with its three turns");
    for record in store.trials("crashy").unwrap() {
        let outcome = record.outcome.expect("finished");
        let transcript = store.transcript("crashy", &record.plan.key).unwrap();
        assert_eq!(transcript.len() as u32, outcome.turns, "{}", record.plan.key);
        let indices: Vec<u32> = transcript.iter().map(|turn| turn.index).collect();
        assert_eq!(indices, vec![1, 2, 3]);
    }
}
