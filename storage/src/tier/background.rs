//! A runtime of its own, on threads of a lower CPU priority, for the object-store work that
//! may wait: GETs of remote segments and their read-ahead, uploads, retention and the HTTP
//! connections under them.
//!
//! A cold replay from the object store keeps the CPUs busy (receiving and collecting 4 MiB
//! chunks, and on a small machine the consumer and a local S3 server too), and produce
//! requests then wait for a CPU behind it: on two cores a producer's p99 went from tens to
//! hundreds of milliseconds. With the replay's broker-side work on threads `nice` steps
//! below the broker's others, the scheduler runs a produce request's thread first whenever
//! both are ready (its weight is ~9× at 10 steps), and the replay takes what produce leaves.
//!
//! Threads are niced one by one (Linux keeps a nice value per thread; `setpriority` on the
//! thread's own id), relative to the thread that starts the runtime, and never past 19. A
//! lower priority needs no privilege, so a failure is an error, not something to go on
//! without.

use std::sync::{Arc, Mutex, PoisonError};

use tokio::runtime::{Handle, Runtime};

use super::TierError;

/// The highest nice value Linux has.
const MAX_NICE: i32 = 19;

/// The runtime; shut down (without waiting for its tasks) when dropped.
pub struct Background {
    runtime: Option<Runtime>,
    handle: Handle,
    nice: i32,
}

impl std::fmt::Debug for Background {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Background")
            .field("nice", &self.nice)
            .finish_non_exhaustive()
    }
}

impl Background {
    /// Starts `threads` worker threads (and the runtime's blocking pool) `steps` nice steps
    /// below the calling thread (0: the same priority).
    pub fn start(threads: usize, steps: i32) -> Result<Self, TierError> {
        let bad = |reason: String| TierError::Config {
            key: "object_store.background_nice",
            reason,
        };
        if !(0..=MAX_NICE).contains(&steps) {
            return Err(bad(format!("{steps} is not between 0 and {MAX_NICE}")));
        }
        let base = rustix::process::getpriority_process(None)
            .map_err(|e| bad(format!("reading this thread's priority: {e}")))?;
        let nice = base.saturating_add(steps).min(MAX_NICE);
        let failed: Arc<Mutex<Option<String>>> = Arc::default();
        let on_start = failed.clone();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .thread_name("strata-bg")
            .enable_all()
            .on_thread_start(move || {
                if let Err(e) = lower_this_thread(nice) {
                    tracing::warn!(nice, error = %e, "could not lower a background thread's priority");
                    on_start
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .get_or_insert(e.to_string());
                }
            })
            .build()
            .map_err(|e| bad(format!("starting its runtime: {e}")))?;
        let handle = runtime.handle().clone();
        let this = Self {
            runtime: Some(runtime),
            handle,
            nice,
        };
        // A worker's priority, read on it: the runtime's threads are running, niced.
        let (tx, rx) = std::sync::mpsc::channel();
        this.handle.spawn(async move {
            let _ = tx.send(rustix::process::getpriority_process(None));
        });
        let seen = rx
            .recv()
            .map_err(|_| bad("its runtime stopped at once".into()))?
            .map_err(|e| bad(format!("reading a worker's priority: {e}")))?;
        if let Some(e) = failed.lock().unwrap_or_else(PoisonError::into_inner).take() {
            return Err(bad(format!("lowering a thread's priority to {nice}: {e}")));
        }
        if seen != nice {
            return Err(bad(format!(
                "a worker runs at nice {seen}, not the {nice} asked for"
            )));
        }
        Ok(this)
    }

    /// Where to spawn background work.
    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    /// The nice value of its threads.
    pub fn nice(&self) -> i32 {
        self.nice
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            // Dropping a runtime waits for its blocking threads, which an async caller may
            // not do; the tasks left are cancelled work the object store does not need.
            rt.shutdown_background();
        }
    }
}

/// Runs `work` on `io` and waits for it: the task is aborted if the wait is dropped (its
/// caller was cancelled or timed out), and a panic in it goes on in the caller. Fails only
/// when `io` is shutting down.
pub async fn run_on<F>(io: &Handle, work: F) -> Result<F::Output, TierError>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let mut task = AbortOnDrop(io.spawn(work));
    match (&mut task.0).await {
        Ok(out) => Ok(out),
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(_) => Err(TierError::Closed),
    }
}

/// A task aborted when whoever waits for it goes away.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Sets the calling thread's nice value (Linux: per thread, by its id).
fn lower_this_thread(nice: i32) -> std::io::Result<()> {
    let me = rustix::thread::gettid();
    if rustix::process::getpriority_process(Some(me))? >= nice {
        return Ok(());
    }
    rustix::process::setpriority_process(Some(me), nice)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn its_threads_run_below_the_caller_and_the_caller_is_left_alone() {
        let base = rustix::process::getpriority_process(None).expect("priority");
        let bg = Background::start(2, 5).expect("start");
        assert_eq!(bg.nice(), (base + 5).min(MAX_NICE));
        let (tx, rx) = std::sync::mpsc::channel();
        for _ in 0..8 {
            let tx = tx.clone();
            bg.handle().spawn(async move {
                let worker = rustix::process::getpriority_process(None).expect("priority");
                let blocking = tokio::task::spawn_blocking(|| {
                    rustix::process::getpriority_process(None).expect("priority")
                })
                .await
                .expect("blocking");
                let _ = tx.send((worker, blocking));
            });
        }
        drop(tx);
        let seen: Vec<(i32, i32)> = rx.iter().collect();
        assert_eq!(seen.len(), 8);
        assert!(
            seen.iter().all(|&(w, b)| w == bg.nice() && b == bg.nice()),
            "{seen:?}"
        );
        assert_eq!(
            rustix::process::getpriority_process(None).expect("priority"),
            base,
            "the caller's priority is unchanged"
        );
    }

    #[test]
    fn a_nice_value_out_of_range_is_refused() {
        for steps in [-1, 20] {
            let e = Background::start(1, steps).expect_err("refused");
            assert!(e.to_string().contains("background_nice"), "{e}");
        }
    }
}
