//! The one retry driver: every operation cutover retries through an outage (a lost
//! connection, an election, a shutdown) goes through [`Retry`], which logs one way, counts
//! one budget and reports the "reconnecting" state through an optional hook.
//!
//! - **Budget.** A [`Retry`] gives up once an *outage* (transient failures with no progress
//!   between them) has lasted its budget: `cutover run`'s `--retry-timeout` wherever a run
//!   retries, [`DEFAULT_RETRY_TIMEOUT`] (the same default) where a command has no such
//!   option, and a fixed budget where the caller documents why. A zero budget does not
//!   retry: the first failure is surfaced as it is, without a log line.
//! - **Logs.** One `warn` per transient failure ("Transient failure; retrying.", with the
//!   cluster, what was being done, the attempt and the error), one `warn` when giving up
//!   ("Giving up.", same fields), one `info` when an operation succeeds after failures
//!   ("Succeeded after retrying.").
//! - **Progress.** A [`Reconnecting`] hook (the engine's progress, shown by `cutover
//!   status`) hears what is being retried, and `None` once it succeeded or gave up.
//!
//! Layering: this module knows nothing of the engine; the engine implements [`Reconnecting`].

use std::fmt;
use std::future::Future;
use std::time::{Duration, Instant, SystemTime};

use crate::base::role::{role_name, Role};

/// The default of `cutover run --retry-timeout` ("5m"), also the budget of commands that
/// have no such option (`cutover verify`).
pub const DEFAULT_RETRY_TIMEOUT: Duration = Duration::from_secs(5 * 60);

/// Exponential backoff with a cap and jitter, reset by progress, within a give-up budget.
///
/// An *outage* starts at the first transient failure after progress; each further failure
/// sleeps `first × 2^attempt` (capped at `cap`, then jittered down by up to half) until the
/// outage has lasted `budget`, when [`Backoff::next_delay`] returns `None`.
/// [`Backoff::progress`] (something succeeded) ends the outage: the attempt count and the
/// budget start over.
#[derive(Clone, Debug)]
pub struct Backoff {
    first: Duration,
    cap: Duration,
    budget: Duration,
    attempt: u32,
    since: Option<Instant>,
}

impl Backoff {
    /// Delays from 100 ms doubling up to 5 s, giving up after `budget` of failures.
    pub fn new(budget: Duration) -> Self {
        Self {
            first: Duration::from_millis(100),
            cap: Duration::from_secs(5),
            budget,
            attempt: 0,
            since: None,
        }
    }

    /// Other first delay and cap.
    pub fn with_delays(mut self, first: Duration, cap: Duration) -> Self {
        self.first = first;
        self.cap = cap.max(first);
        self
    }

    pub fn budget(&self) -> Duration {
        self.budget
    }

    /// Failures in the current outage (0: none).
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// How long the current outage has lasted.
    pub fn outage(&self) -> Option<Duration> {
        self.since.map(|s| s.elapsed())
    }

    /// Something succeeded: the next failure starts a new outage with a fresh budget.
    pub fn progress(&mut self) {
        self.attempt = 0;
        self.since = None;
    }

    /// Counts a transient failure: the delay to sleep before the next attempt, or `None`
    /// once the outage has lasted the budget.
    pub fn next_delay(&mut self) -> Option<Duration> {
        let since = *self.since.get_or_insert_with(Instant::now);
        self.attempt = self.attempt.saturating_add(1);
        if since.elapsed() >= self.budget {
            return None;
        }
        let exp = self
            .first
            .saturating_mul(1u32 << (self.attempt - 1).min(16))
            .min(self.cap);
        // Jitter: between half and all of the delay, so runners and workers that failed
        // together do not retry in step.
        let half = exp / 2;
        let jitter = half.mul_f64(unit_random());
        let delay = half + jitter;
        // Never sleep past the budget by more than one short delay.
        Some(delay.min(self.budget.saturating_sub(since.elapsed()) + self.first))
    }
}

/// A transient failure that outlasted its budget.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GaveUp {
    pub cluster: String,
    pub what: String,
    pub secs: u64,
    pub attempts: u32,
    pub last: String,
}

impl fmt::Display for GaveUp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "gave up {} on the {} cluster after {}s and {} attempt{}: {}",
            self.what,
            self.cluster,
            self.secs,
            self.attempts,
            if self.attempts == 1 { "" } else { "s" },
            self.last
        )
    }
}

/// How [`Retry::run`] ended without a result.
#[derive(Debug)]
pub enum Failure<E> {
    /// Not transient: surfaced at once.
    Permanent(E),
    /// Transient, but failing for longer than the budget (the last error, and what it says).
    GaveUp(E, GaveUp),
}

impl<E> Failure<E> {
    pub fn into_inner(self) -> E {
        match self {
            Failure::Permanent(e) | Failure::GaveUp(e, _) => e,
        }
    }
}

/// An error [`Retry`] can judge and name.
pub trait Retryable {
    /// Worth sending the same idempotent operation again.
    fn is_transient(&self) -> bool;
    /// A one-line description for logs and the give-up message.
    fn describe(&self) -> String;
    /// The cluster that failed, when the error knows (else the [`Retry`]'s own).
    fn role(&self) -> Option<Role> {
        None
    }
}

impl Retryable for mongodb::error::Error {
    fn is_transient(&self) -> bool {
        super::server_error::is_transient(self)
    }
    fn describe(&self) -> String {
        super::server_error::short_message(self)
    }
}

/// Hears what is being retried (`Some`, for `cutover status`) and when that is over
/// (`None`). The engine's progress implements it.
pub trait Reconnecting: Sync {
    fn reconnecting(&self, what: Option<String>);
}

/// The retry driver: a [`Backoff`] within a budget, the cluster it retries on, and an
/// optional [`Reconnecting`] hook. One per loop; [`Retry::progress`] when the loop made
/// progress between failures.
pub struct Retry<'h> {
    backoff: Backoff,
    role: Option<Role>,
    /// The cluster the last failure named (the success line names the same one).
    failed_on: Option<Role>,
    hook: Option<&'h dyn Reconnecting>,
}

impl<'h> Retry<'h> {
    /// Gives up once transient failures have lasted `budget` (delays from 100 ms to 5 s).
    pub fn new(budget: Duration) -> Self {
        Self {
            backoff: Backoff::new(budget),
            role: None,
            failed_on: None,
            hook: None,
        }
    }

    /// Other first delay and cap.
    pub fn with_delays(mut self, first: Duration, cap: Duration) -> Self {
        self.backoff = self.backoff.with_delays(first, cap);
        self
    }

    /// The cluster retried on, for errors that do not name theirs.
    pub fn on(mut self, role: Role) -> Self {
        self.role = Some(role);
        self
    }

    /// Reports the reconnecting state to `hook`.
    pub fn reporting(mut self, hook: &'h dyn Reconnecting) -> Self {
        self.hook = Some(hook);
        self
    }

    pub fn budget(&self) -> Duration {
        self.backoff.budget()
    }

    /// Failures in the current outage (0: none).
    pub fn attempts(&self) -> u32 {
        self.backoff.attempts()
    }

    /// The loop made progress: the outage is over (the reconnecting state is cleared), and
    /// the next failure starts a new one with a fresh budget.
    pub fn progress(&mut self) {
        if self.backoff.attempts() > 0 {
            if let Some(h) = self.hook {
                h.reconnecting(None);
            }
        }
        self.backoff.progress();
    }

    /// The operation succeeded: ends the outage, logging it and clearing the reconnecting
    /// state if there was one.
    pub fn succeeded(&mut self, what: &str) {
        if self.backoff.attempts() > 0 {
            tracing::info!(
                cluster = role_name(self.failed_on.or(self.role)),
                what,
                attempts = self.backoff.attempts() + 1,
                "Succeeded after retrying."
            );
            if let Some(h) = self.hook {
                h.reconnecting(None);
            }
        }
        self.backoff.progress();
    }

    /// After a transient failure `e` of `what`: logs it, reports the reconnecting state and
    /// sleeps; or, once the outage has lasted the budget, logs and returns [`GaveUp`].
    pub async fn wait<E: Retryable + ?Sized>(&mut self, what: &str, e: &E) -> Result<(), GaveUp> {
        let role = e.role().or(self.role);
        self.failed_on = role;
        let cluster = role_name(role);
        let last = e.describe();
        let zero = self.backoff.budget().is_zero();
        let Some(delay) = self.backoff.next_delay() else {
            if let Some(h) = self.hook {
                h.reconnecting(None);
            }
            // A zero budget means "do not retry": the caller surfaces the error as it is.
            if !zero {
                tracing::warn!(cluster, what, attempts = self.backoff.attempts(), error = %last, "Giving up.");
            }
            return Err(GaveUp {
                cluster: cluster.to_string(),
                what: what.to_string(),
                secs: self.backoff.outage().unwrap_or_default().as_secs(),
                attempts: self.backoff.attempts(),
                last,
            });
        };
        if let Some(h) = self.hook {
            h.reconnecting(Some(format!(
                "{what}: {cluster} cluster unavailable for {}s (attempt {}): {last}",
                self.backoff.outage().unwrap_or_default().as_secs(),
                self.backoff.attempts()
            )));
        }
        tracing::warn!(cluster, what, attempt = self.backoff.attempts(), error = %last, "Transient failure; retrying.");
        tokio::time::sleep(delay).await;
        Ok(())
    }

    /// Runs `op` (given the attempt number, from 1) until it succeeds, fails with an error
    /// that is not transient, or transient failures outlast the budget. `op` must be
    /// idempotent: an attempt whose reply was lost may have taken effect.
    pub async fn run<T, E, F, Fut>(&mut self, what: &str, mut op: F) -> Result<T, Failure<E>>
    where
        E: Retryable,
        F: FnMut(u32) -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let mut attempt = 1;
        loop {
            match op(attempt).await {
                Ok(v) => {
                    self.succeeded(what);
                    return Ok(v);
                }
                Err(e) if e.is_transient() => {
                    if let Err(g) = self.wait(what, &e).await {
                        return Err(Failure::GaveUp(e, g));
                    }
                    attempt += 1;
                }
                Err(e) => return Err(Failure::Permanent(e)),
            }
        }
    }
}

/// A number in [0, 1) that differs between calls and processes (jitter only; not random
/// enough for anything else).
fn unit_random() -> f64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static STATE: AtomicU64 = AtomicU64::new(0);
    let seed = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
        ^ u64::from(std::process::id()).rotate_left(32);
    let mut x = STATE.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed) ^ seed;
    // splitmix64
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^= x >> 31;
    (x >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Debug, PartialEq)]
    struct T(bool, &'static str);

    impl Retryable for T {
        fn is_transient(&self) -> bool {
            self.0
        }
        fn describe(&self) -> String {
            self.1.to_string()
        }
    }

    #[derive(Default)]
    struct Hook(Mutex<Vec<Option<String>>>);

    impl Reconnecting for Hook {
        fn reconnecting(&self, what: Option<String>) {
            self.0.lock().unwrap().push(what);
        }
    }

    #[test]
    fn backoff_grows_to_its_cap_and_resets_on_progress() {
        let mut b = Backoff::new(Duration::from_secs(3600))
            .with_delays(Duration::from_millis(100), Duration::from_millis(800));
        let d: Vec<Duration> = (0..6).map(|_| b.next_delay().unwrap()).collect();
        // Jittered between half and all of 100, 200, 400, 800, 800, 800 ms.
        for (got, full) in d.iter().zip([100u64, 200, 400, 800, 800, 800]) {
            let full = Duration::from_millis(full);
            assert!(*got >= full / 2 && *got <= full, "{got:?} for {full:?}");
        }
        assert_eq!(b.attempts(), 6);
        b.progress();
        assert_eq!(b.attempts(), 0);
        assert!(b.outage().is_none());
        assert!(b.next_delay().unwrap() <= Duration::from_millis(100));
    }

    #[tokio::test]
    async fn gives_up_after_its_budget_naming_cluster_and_operation() {
        let hook = Hook::default();
        let mut r = Retry::new(Duration::from_millis(50))
            .with_delays(Duration::from_millis(10), Duration::from_millis(20))
            .on(Role::Destination)
            .reporting(&hook);
        let started = Instant::now();
        let out: Result<(), _> = r
            .run("writing the lane record", |_| async {
                Err(T(true, "ShutdownInProgress"))
            })
            .await;
        let Err(Failure::GaveUp(last, g)) = out else {
            panic!("expected to give up")
        };
        assert_eq!(last.1, "ShutdownInProgress");
        assert!(started.elapsed() >= Duration::from_millis(50));
        assert!(g.attempts > 1);
        let text = g.to_string();
        assert!(text.contains("destination cluster"), "{text}");
        assert!(text.contains("writing the lane record"), "{text}");
        assert!(text.contains("ShutdownInProgress"), "{text}");
        // Reconnecting while retrying, cleared on giving up.
        let seen = hook.0.lock().unwrap().clone();
        assert!(seen.len() >= 2, "{seen:?}");
        let first = seen[0].as_deref().unwrap();
        assert!(
            first.contains("writing the lane record: destination cluster unavailable"),
            "{first}"
        );
        assert_eq!(seen.last().unwrap(), &None);
    }

    #[tokio::test]
    async fn succeeds_after_transient_failures_and_stops_at_a_permanent_one() {
        let hook = Hook::default();
        let mut r = Retry::new(Duration::from_secs(60))
            .with_delays(Duration::from_millis(1), Duration::from_millis(2))
            .on(Role::Source)
            .reporting(&hook);
        let mut seen = Vec::new();
        let out: Result<u32, _> = r
            .run("x", |a| {
                seen.push(a);
                async move {
                    match a {
                        1 | 2 => Err(T(true, "again")),
                        _ => Ok(a),
                    }
                }
            })
            .await;
        assert_eq!(out.unwrap(), 3);
        assert_eq!(seen, vec![1, 2, 3]);
        assert_eq!(r.attempts(), 0, "success resets the outage");
        {
            let h = hook.0.lock().unwrap();
            assert_eq!(h.len(), 3, "{h:?}");
            assert!(h[0].as_deref().unwrap().contains("source cluster"));
            assert_eq!(h[2], None, "success clears the reconnecting state");
        }
        let mut calls = 0;
        let out: Result<(), _> = r
            .run("x", |_| {
                calls += 1;
                async { Err(T(false, "no")) }
            })
            .await;
        assert!(matches!(out, Err(Failure::Permanent(T(false, "no")))));
        assert_eq!(calls, 1, "a permanent error is not retried");
        assert_eq!(hook.0.lock().unwrap().len(), 3, "nor reported");
    }

    #[tokio::test]
    async fn a_zero_budget_does_not_retry() {
        let mut r = Retry::new(Duration::ZERO);
        let mut calls = 0;
        let out: Result<(), _> = r
            .run("x", |_| {
                calls += 1;
                async { Err(T(true, "down")) }
            })
            .await;
        let Err(Failure::GaveUp(_, g)) = out else {
            panic!("expected to give up")
        };
        assert_eq!((calls, g.attempts), (1, 1));
        assert_eq!(g.cluster, "source or destination");
    }
}
