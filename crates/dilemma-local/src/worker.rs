//! The one thread on which this process runs llama.cpp.
//!
//! llama.cpp's CPU backend computes each graph on an OpenMP team, and libgomp keeps one
//! team per thread that starts parallel work. Calls made from tokio's blocking pool land on
//! whichever pooled thread is free, so a few calls in, the process holds several idle teams.
//! libgomp then counts more OpenMP threads than cores and stops spinning in its barriers: it
//! sleeps in the kernel at each of the dozens of barriers per token instead. On 2 cores
//! that showed as ~40,000 context switches in a 128-token generation benchmark (llama-bench,
//! whose single thread owns the only team: ~150) and 10–20% fewer tokens per second,
//! depending on which pooled threads the calls happened to land on.
//!
//! So every local model's work runs here, one job at a time, in the order asked. Running
//! two models' work side by side would only split the same cores between them.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{OnceLock, mpsc};

use tokio::sync::oneshot;

type Job = Box<dyn FnOnce() + Send>;

/// The thread's queue; started on first use and kept for the life of the process.
fn queue() -> &'static mpsc::Sender<Job> {
    static QUEUE: OnceLock<mpsc::Sender<Job>> = OnceLock::new();
    QUEUE.get_or_init(|| {
        let (sender, receiver) = mpsc::channel::<Job>();
        let started = std::thread::Builder::new().name("dilemma-local".into()).spawn(move || {
            for job in receiver {
                // A job that panics loses its answer (its caller sees the channel close), not
                // the thread that later jobs need.
                let _ = catch_unwind(AssertUnwindSafe(job));
            }
        });
        if let Err(error) = started {
            // Without the thread every job's answer channel closes, and each call reports it.
            tracing::error!(%error, "cannot start the local inference thread");
        }
        sender
    })
}

/// Runs `job` on the inference thread; `None` when it did not finish (it panicked, or the
/// thread could not be started).
pub(crate) async fn run<T: Send + 'static>(job: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    let (answer, answered) = oneshot::channel();
    let job: Job = Box::new(move || {
        let _ = answer.send(job());
    });
    queue().send(job).ok()?;
    answered.await.ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_job_runs_on_the_same_thread_and_a_panic_loses_only_its_own_answer() {
        let names = threads_running(8).await;
        let first = names[0].clone();
        assert!(names.iter().all(|name| *name == first), "jobs ran on several threads: {names:?}");
        assert_eq!(first.0.as_deref(), Some("dilemma-local"));
        assert_eq!(run(|| -> u32 { panic!("a job that fails") }).await, None);
        assert_eq!(run(|| 7).await, Some(7), "the thread outlives a job that panicked");
        assert_eq!(run(|| std::thread::current().id()).await, Some(first.1));
    }

    async fn threads_running(count: usize) -> Vec<(Option<String>, std::thread::ThreadId)> {
        let tasks: Vec<_> = (0..count)
            .map(|_| {
                tokio::spawn(run(|| {
                    let thread = std::thread::current();
                    (thread.name().map(str::to_owned), thread.id())
                }))
            })
            .collect();
        let mut names = Vec::new();
        for task in tasks {
            names.push(task.await.expect("the task ends").expect("the job ran"));
        }
        names
    }
}
