//! [`IoRetry`]: how long a data path (block volume, filesystem client) keeps retrying I/O that
//! failed transiently (a storage node or the metadata service unreachable) before failing it.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

/// The I/O timeout when nothing sets one: open-iscsi's `replacement_timeout`.
pub const DEFAULT_IO_TIMEOUT: Duration = Duration::from_secs(120);

/// Retrying of transient failures: with backoff, for at most `timeout` from the first failure;
/// a zero timeout fails at once. Whether a failure is transient is its error type's call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IoRetry {
    /// How long to keep trying (0: never retry).
    pub timeout: Duration,
    /// First pause between attempts.
    pub initial_backoff: Duration,
    /// Longest pause between attempts.
    pub max_backoff: Duration,
}

impl Default for IoRetry {
    fn default() -> Self {
        IoRetry::new(DEFAULT_IO_TIMEOUT)
    }
}

impl IoRetry {
    /// Retries for `timeout`, pausing 50 ms at first and 1 s at most between attempts.
    pub fn new(timeout: Duration) -> Self {
        IoRetry { timeout, initial_backoff: Duration::from_millis(50), max_backoff: Duration::from_secs(1) }
    }

    /// Never retries (failures are returned at once).
    pub fn none() -> Self {
        IoRetry::new(Duration::ZERO)
    }

    /// Runs `op` until it succeeds, fails with an error `is_transient` refuses, or fails
    /// transiently after `timeout` has passed since its first failure (that error is returned).
    /// `what` names the operation in the log lines of waiting and recovering.
    pub async fn run<T, E, F, Fut>(&self, what: &str, is_transient: impl Fn(&E) -> bool, mut op: F) -> Result<T, E>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: std::fmt::Display,
    {
        let mut attempts = self.attempts(what);
        loop {
            match op().await {
                Ok(v) => return Ok(attempts.succeeded(v)),
                Err(e) => attempts.failed(e, &is_transient).await?,
            }
        }
    }

    /// The bookkeeping of one operation's attempts, for callers that loop themselves (when the
    /// operation cannot be a closure returning a future, e.g. it borrows a lock guard).
    pub fn attempts<'a>(&self, what: &'a str) -> Attempts<'a> {
        Attempts { retry: *self, what, first_failure: None, backoff: self.initial_backoff, count: 0 }
    }
}

/// One operation's attempts so far (see [`IoRetry::attempts`]).
#[derive(Debug)]
pub struct Attempts<'a> {
    retry: IoRetry,
    what: &'a str,
    first_failure: Option<Instant>,
    backoff: Duration,
    count: u64,
}

impl Attempts<'_> {
    /// The operation succeeded with `v` (logged if it had failed before).
    pub fn succeeded<T>(&self, v: T) -> T {
        if let Some(at) = self.first_failure {
            tracing::info!(what = self.what, attempts = self.count + 1, waited = ?at.elapsed(), "I/O recovered after transient failures");
        }
        v
    }

    /// The operation failed with `e`: Ok after the pause before the next attempt, or `e` back
    /// when it is not transient or the timeout has passed.
    pub async fn failed<E: std::fmt::Display>(&mut self, e: E, is_transient: impl Fn(&E) -> bool) -> Result<(), E> {
        self.count += 1;
        if !is_transient(&e) {
            return Err(e);
        }
        let timeout = self.retry.timeout;
        let since = *self.first_failure.get_or_insert_with(Instant::now);
        let left = timeout.saturating_sub(since.elapsed());
        if left.is_zero() {
            if !timeout.is_zero() {
                tracing::warn!(what = self.what, attempts = self.count, ?timeout, error = %e, "I/O still failing; giving up");
            }
            return Err(e);
        }
        if self.count == 1 {
            tracing::warn!(what = self.what, error = %e, ?timeout, "I/O failed transiently; retrying");
        }
        tokio::time::sleep(self.backoff.min(left)).await;
        self.backoff = (self.backoff * 2).min(self.retry.max_backoff);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[derive(Debug, PartialEq)]
    enum E {
        Transient,
        Fatal,
    }
    impl std::fmt::Display for E {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "{self:?}")
        }
    }
    fn transient(e: &E) -> bool {
        *e == E::Transient
    }

    #[tokio::test(start_paused = true)]
    async fn transient_failures_are_retried_until_success() {
        let calls = AtomicU32::new(0);
        let r = IoRetry::new(Duration::from_secs(120))
            .run("test", transient, || async {
                if calls.fetch_add(1, Ordering::SeqCst) < 5 { Err(E::Transient) } else { Ok(7) }
            })
            .await;
        assert_eq!(r, Ok(7));
        assert_eq!(calls.load(Ordering::SeqCst), 6);
    }

    #[tokio::test(start_paused = true)]
    async fn the_deadline_is_honoured_with_the_last_error() {
        let calls = AtomicU32::new(0);
        let start = Instant::now();
        let r: Result<(), E> = IoRetry::new(Duration::from_secs(120))
            .run("test", transient, || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(E::Transient)
            })
            .await;
        assert_eq!(r, Err(E::Transient));
        let waited = start.elapsed();
        assert!(waited >= Duration::from_secs(120), "gave up after {waited:?}");
        assert!(waited < Duration::from_secs(122), "kept going until {waited:?}");
        // Backoff capped at 1 s: about one attempt a second once it has grown.
        let n = calls.load(Ordering::SeqCst);
        assert!((100..=130).contains(&n), "{n} attempts in 120 s");
    }

    #[tokio::test(start_paused = true)]
    async fn errors_that_are_not_transient_fail_at_once() {
        let calls = AtomicU32::new(0);
        let start = Instant::now();
        let r: Result<(), E> = IoRetry::default()
            .run("test", transient, || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(E::Fatal)
            })
            .await;
        assert_eq!(r, Err(E::Fatal));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(start.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn a_zero_timeout_fails_at_once() {
        let calls = AtomicU32::new(0);
        let r: Result<(), E> = IoRetry::none()
            .run("test", transient, || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(E::Transient)
            })
            .await;
        assert_eq!(r, Err(E::Transient));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failure_after_recovery_gets_a_whole_new_timeout_per_call() {
        // Each call has its own clock: a call that starts after a long outage still waits.
        let retry = IoRetry::new(Duration::from_secs(10));
        let calls = AtomicU32::new(0);
        let r = retry
            .run("test", transient, || async {
                if calls.fetch_add(1, Ordering::SeqCst) < 8 { Err(E::Transient) } else { Ok(()) }
            })
            .await;
        assert_eq!(r, Ok(()));
        let start = Instant::now();
        let r: Result<(), E> = retry.run("test", transient, || async { Err(E::Transient) }).await;
        assert_eq!(r, Err(E::Transient));
        assert!(start.elapsed() >= Duration::from_secs(10));
    }
}
