//! One way to run the broker's background work. Every task is named and owned by the
//! supervisor, stops when its cancellation token fires, and says how each run ended:
//! - [`Outcome::Ok`]: done for now (a periodic task runs again at its next period);
//! - [`Outcome::Retry`]: failed in a way worth retrying; the task runs again after a backoff
//!   that doubles up to a ceiling and starts over after a success (a panic counts as this);
//! - [`Outcome::Fenced`]: someone else owns the work now (a newer leader); the task stops;
//! - [`Outcome::Fatal`]: cannot go on; the task stops and its state says why.
//!
//! Nothing is silently gone: every task's state is readable ([`Supervisor::states`]), and
//! each retry, fence and failure is logged once with the task's name. Time goes through
//! tokio's clock, so tests drive it with `tokio::time::pause` and `advance`.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How one run of a task ended.
#[derive(Clone, Debug, PartialEq, Eq)]
// Fenced and Fatal are for the tasks replication brings (a follower fetcher, a leader's
// uploads handed over); today's tasks retry or end.
#[allow(dead_code)]
pub(crate) enum Outcome {
    Ok,
    Retry(String),
    Fenced(String),
    Fatal(String),
}

/// Waits between failed runs: `first`, doubling up to `max`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Backoff {
    pub(crate) first: Duration,
    pub(crate) max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            first: Duration::from_millis(100),
            max: Duration::from_secs(30),
        }
    }
}

impl Backoff {
    /// The wait after `failures` failed runs in a row (at least one).
    fn after(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(31);
        self.first.saturating_mul(1 << doublings).min(self.max)
    }
}

/// Where a task stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum TaskState {
    /// Running, or waiting for its next period.
    Running,
    /// Failed `failures` times in a row, the last with `error`; waiting out a backoff.
    Retrying { failures: u32, error: String },
    /// Stopped: another owner took the work over.
    Fenced(String),
    /// Stopped on an error it cannot get past.
    Failed(String),
    /// Finished, or stopped by cancellation.
    Stopped,
}

type States = Arc<Mutex<BTreeMap<&'static str, TaskState>>>;

/// Owns the broker's background tasks.
#[derive(Debug)]
pub(crate) struct Supervisor {
    cancel: CancellationToken,
    tasks: JoinSet<()>,
    states: States,
}

impl Supervisor {
    /// A supervisor whose tasks stop when `cancel` fires (or [`Supervisor::stop`] is called).
    pub(crate) fn new(cancel: CancellationToken) -> Self {
        Self {
            cancel,
            tasks: JoinSet::new(),
            states: States::default(),
        }
    }

    /// Runs `step` now and then every `every` (a late run delays the next rather than
    /// bunching up), until cancelled or it is fenced or fails for good.
    pub(crate) fn every<F, Fut>(
        &mut self,
        name: &'static str,
        every: Duration,
        backoff: Backoff,
        mut step: F,
    ) where
        F: FnMut() -> Fut + Send + 'static,
        Fut: Future<Output = Outcome> + Send + 'static,
    {
        let run = Run::new(name, backoff, self.cancel.clone(), self.states.clone());
        self.tasks.spawn(run.drive(Some(every), move |_| step()));
    }

    /// Runs a long-lived `service`, which gets the cancellation token and should return when
    /// it fires; run again after a backoff when it ends with a retry (or panics).
    pub(crate) fn service<F, Fut>(&mut self, name: &'static str, backoff: Backoff, service: F)
    where
        F: FnMut(CancellationToken) -> Fut + Send + 'static,
        Fut: Future<Output = Outcome> + Send + 'static,
    {
        let run = Run::new(name, backoff, self.cancel.clone(), self.states.clone());
        self.tasks.spawn(run.drive(None, service));
    }

    /// Every task's state, by name (for health reporting; read by tests until `/readyz`).
    #[allow(dead_code)]
    pub(crate) fn states(&self) -> BTreeMap<&'static str, TaskState> {
        self.states
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Cancels every task and waits for them to end.
    pub(crate) async fn stop(&mut self) {
        self.cancel.cancel();
        while self.tasks.join_next().await.is_some() {}
    }
}

/// A service meant to run until `cancel`: done when it returns after cancellation, run again
/// (after the backoff) when it returns before.
pub(crate) async fn until_cancelled(
    service: impl Future<Output = ()>,
    cancel: CancellationToken,
) -> Outcome {
    service.await;
    if cancel.is_cancelled() {
        Outcome::Ok
    } else {
        Outcome::Retry("stopped before the broker did".into())
    }
}

/// One task's loop.
struct Run {
    name: &'static str,
    backoff: Backoff,
    cancel: CancellationToken,
    states: States,
}

impl Run {
    fn new(
        name: &'static str,
        backoff: Backoff,
        cancel: CancellationToken,
        states: States,
    ) -> Self {
        let run = Self {
            name,
            backoff,
            cancel,
            states,
        };
        run.set(TaskState::Running);
        run
    }

    fn set(&self, state: TaskState) {
        self.states
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(self.name, state);
    }

    /// Runs `make`'s futures one at a time, each in its own tokio task so a panic ends only
    /// that run; with `period`, again every period, otherwise until one ends well.
    async fn drive<F, Fut>(self, period: Option<Duration>, mut make: F)
    where
        F: FnMut(CancellationToken) -> Fut,
        Fut: Future<Output = Outcome> + Send + 'static,
    {
        let mut failures = 0u32;
        loop {
            let started = Instant::now();
            if failures > 0 {
                self.set(TaskState::Running);
            }
            let mut attempt = tokio::spawn(make(self.cancel.child_token()));
            let outcome = tokio::select! {
                () = self.cancel.cancelled() => {
                    // A service sees the token and returns; a periodic step is cut short.
                    if period.is_some() {
                        attempt.abort();
                    }
                    let _ = attempt.await;
                    break;
                }
                joined = &mut attempt => match joined {
                    Ok(outcome) => outcome,
                    Err(e) if e.is_panic() => Outcome::Retry(format!("panicked: {e}")),
                    Err(e) => Outcome::Retry(e.to_string()),
                },
            };
            let wait = match outcome {
                Outcome::Ok => {
                    failures = 0;
                    match period {
                        Some(every) => (started + every).saturating_duration_since(Instant::now()),
                        None => break,
                    }
                }
                Outcome::Retry(error) => {
                    failures = failures.saturating_add(1);
                    let wait = self.backoff.after(failures);
                    tracing::warn!(task = self.name, failures, ?wait, %error, "background task failed; retrying");
                    self.set(TaskState::Retrying { failures, error });
                    wait
                }
                Outcome::Fenced(reason) => {
                    tracing::info!(task = self.name, %reason, "background task fenced; stopping it");
                    self.set(TaskState::Fenced(reason));
                    return;
                }
                Outcome::Fatal(error) => {
                    tracing::error!(task = self.name, %error, "background task failed for good");
                    self.set(TaskState::Failed(error));
                    return;
                }
            };
            tokio::select! {
                () = self.cancel.cancelled() => break,
                () = tokio::time::sleep(wait) => {}
            }
        }
        self.set(TaskState::Stopped);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// Instants of each run, relative to the start, in milliseconds.
    type Runs = Arc<Mutex<Vec<u128>>>;

    fn recorder() -> (Runs, Instant) {
        (Runs::default(), Instant::now())
    }

    fn log(runs: &Runs, start: Instant) {
        runs.lock()
            .expect("runs")
            .push(Instant::now().duration_since(start).as_millis());
    }

    #[tokio::test(start_paused = true)]
    async fn a_periodic_task_runs_at_once_then_every_period() {
        let mut s = Supervisor::new(CancellationToken::new());
        let (runs, start) = recorder();
        let r = runs.clone();
        s.every(
            "tick",
            Duration::from_secs(1),
            Backoff::default(),
            move || {
                log(&r, start);
                async { Outcome::Ok }
            },
        );
        tokio::time::sleep(Duration::from_millis(3_500)).await;
        assert_eq!(*runs.lock().expect("runs"), vec![0, 1_000, 2_000, 3_000]);
        s.stop().await;
        assert_eq!(s.states()["tick"], TaskState::Stopped);
    }

    #[tokio::test(start_paused = true)]
    async fn failures_back_off_doubling_to_the_ceiling_and_a_success_starts_over() {
        let mut s = Supervisor::new(CancellationToken::new());
        let (runs, start) = recorder();
        let r = runs.clone();
        let n = Arc::new(AtomicU32::new(0));
        let backoff = Backoff {
            first: Duration::from_millis(100),
            max: Duration::from_millis(300),
        };
        s.every("flaky", Duration::from_secs(10), backoff, move || {
            log(&r, start);
            // Four failures, a success, then one more failure.
            let k = n.fetch_add(1, Ordering::SeqCst);
            async move {
                match k {
                    0..=3 | 5 => Outcome::Retry(format!("failure {k}")),
                    _ => Outcome::Ok,
                }
            }
        });
        tokio::time::sleep(Duration::from_millis(10_950)).await;
        // 0, +100, +200, +300 (ceiling), +300, success at 900, next period at 10,900, which
        // fails and waits the first backoff again.
        assert_eq!(
            *runs.lock().expect("runs"),
            vec![0, 100, 300, 600, 900, 10_900]
        );
        assert_eq!(
            s.states()["flaky"],
            TaskState::Retrying {
                failures: 1,
                error: "failure 5".into()
            }
        );
        s.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_panicking_service_is_restarted_and_a_fenced_or_fatal_one_is_not() {
        let mut s = Supervisor::new(CancellationToken::new());
        let starts = Arc::new(AtomicU32::new(0));
        let n = starts.clone();
        s.service("crashy", Backoff::default(), move |cancel| {
            let k = n.fetch_add(1, Ordering::SeqCst);
            async move {
                if k < 2 {
                    panic!("run {k} panics");
                }
                cancel.cancelled().await;
                Outcome::Ok
            }
        });
        s.service("fenced", Backoff::default(), |_| async {
            Outcome::Fenced("a newer leader".into())
        });
        s.service("doomed", Backoff::default(), |_| async {
            Outcome::Fatal("the disk is gone".into())
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(
            starts.load(Ordering::SeqCst),
            3,
            "restarted after each panic"
        );
        let states = s.states();
        assert_eq!(states["crashy"], TaskState::Running);
        assert_eq!(states["fenced"], TaskState::Fenced("a newer leader".into()));
        assert_eq!(
            states["doomed"],
            TaskState::Failed("the disk is gone".into())
        );
        s.stop().await;
        assert_eq!(s.states()["crashy"], TaskState::Stopped);
    }

    #[tokio::test(start_paused = true)]
    async fn a_service_that_returns_before_the_broker_stops_is_run_again() {
        let mut s = Supervisor::new(CancellationToken::new());
        let starts = Arc::new(AtomicU32::new(0));
        let n = starts.clone();
        s.service("quits", Backoff::default(), move |cancel| {
            let first = n.fetch_add(1, Ordering::SeqCst) == 0;
            let token = cancel.clone();
            until_cancelled(
                async move {
                    if !first {
                        token.cancelled().await;
                    }
                },
                cancel,
            )
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(
            starts.load(Ordering::SeqCst),
            2,
            "run again after quitting early"
        );
        s.stop().await;
        assert_eq!(s.states()["quits"], TaskState::Stopped);
    }

    #[tokio::test(start_paused = true)]
    async fn stopping_cancels_services_and_cuts_periodic_steps_short() {
        let cancel = CancellationToken::new();
        let mut s = Supervisor::new(cancel.clone());
        let saw_cancel = Arc::new(AtomicU32::new(0));
        let seen = saw_cancel.clone();
        s.service("server", Backoff::default(), move |token| {
            let seen = seen.clone();
            async move {
                token.cancelled().await;
                seen.fetch_add(1, Ordering::SeqCst);
                Outcome::Ok
            }
        });
        s.every(
            "slow",
            Duration::from_secs(1),
            Backoff::default(),
            || async {
                tokio::time::sleep(Duration::from_secs(3_600)).await;
                Outcome::Ok
            },
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
        let before = Instant::now();
        s.stop().await;
        assert!(cancel.is_cancelled());
        assert_eq!(
            saw_cancel.load(Ordering::SeqCst),
            1,
            "the service saw the token"
        );
        assert!(Instant::now().duration_since(before) < Duration::from_secs(1));
        assert_eq!(s.states()["slow"], TaskState::Stopped);
    }
}
