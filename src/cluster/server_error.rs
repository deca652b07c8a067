//! MongoDB errors: the server codes cutover names, one transient classification and one
//! backoff, shared by the copy, change application, the state store, the commit's cluster
//! commands and verify.
//!
//! A leaf module: it uses the driver, `tokio` and `tracing`, and nothing else of cutover, so
//! every other module can use it without an import cycle.

use std::fmt;
use std::future::Future;
use std::time::{Duration, Instant, SystemTime};

use mongodb::error::{Error, ErrorKind, WriteFailure};

/// Server error codes, as named in MongoDB's `src/mongo/base/error_codes.yml`.
pub mod code {
    pub const BAD_VALUE: i32 = 2;
    pub const HOST_UNREACHABLE: i32 = 6;
    pub const HOST_NOT_FOUND: i32 = 7;
    pub const UNAUTHORIZED: i32 = 13;
    pub const TYPE_MISMATCH: i32 = 14;
    pub const AUTHENTICATION_FAILED: i32 = 18;
    pub const NAMESPACE_NOT_FOUND: i32 = 26;
    pub const INDEX_NOT_FOUND: i32 = 27;
    pub const PATH_NOT_VIABLE: i32 = 28;
    pub const CURSOR_NOT_FOUND: i32 = 43;
    pub const NAMESPACE_EXISTS: i32 = 48;
    pub const MAX_TIME_MS_EXPIRED: i32 = 50;
    pub const WRITE_CONCERN_FAILED: i32 = 64;
    pub const INDEX_OPTIONS_CONFLICT: i32 = 85;
    pub const INDEX_KEY_SPECS_CONFLICT: i32 = 86;
    pub const NETWORK_TIMEOUT: i32 = 89;
    pub const SHUTDOWN_IN_PROGRESS: i32 = 91;
    pub const READ_CONCERN_MAJORITY_NOT_AVAILABLE_YET: i32 = 134;
    pub const QUERY_PLAN_KILLED: i32 = 175;
    pub const PRIMARY_STEPPED_DOWN: i32 = 189;
    pub const CURSOR_KILLED: i32 = 237;
    pub const SNAPSHOT_TOO_OLD: i32 = 239;
    pub const SNAPSHOT_UNAVAILABLE: i32 = 246;
    pub const EXCEEDED_TIME_LIMIT: i32 = 262;
    pub const CHANGE_STREAM_HISTORY_LOST: i32 = 286;
    pub const CANNOT_CONVERT_INDEX_TO_UNIQUE: i32 = 359;
    pub const TRANSACTION_TOO_LARGE_FOR_CACHE: i32 = 388;
    pub const SOCKET_EXCEPTION: i32 = 9001;
    pub const NOT_WRITABLE_PRIMARY: i32 = 10107;
    pub const DUPLICATE_KEY: i32 = 11000;
    pub const INTERRUPTED_AT_SHUTDOWN: i32 = 11600;
    pub const INTERRUPTED_DUE_TO_REPL_STATE_CHANGE: i32 = 11602;
    pub const NOT_PRIMARY_NO_SECONDARY_OK: i32 = 13435;
    pub const NOT_PRIMARY_OR_SECONDARY: i32 = 13436;
    pub const USER_WRITES_BLOCKED: i32 = 371;
    /// mongod refuses writes when its dbpath's free space is below its floor.
    pub const OUT_OF_DISK_SPACE: i32 = 14031;
}

use code::*;

/// Codes after which the same operation can succeed once the deployment has settled: the
/// retryable-writes specification's list (HostUnreachable … ExceededTimeLimit, all the
/// "not primary" and shutdown codes), plus ReadConcernMajorityNotAvailableYet from the
/// retryable-reads specification (a fresh primary that has not committed a majority yet).
const RETRYABLE: &[i32] = &[
    HOST_UNREACHABLE,
    HOST_NOT_FOUND,
    NETWORK_TIMEOUT,
    SHUTDOWN_IN_PROGRESS,
    READ_CONCERN_MAJORITY_NOT_AVAILABLE_YET,
    PRIMARY_STEPPED_DOWN,
    EXCEEDED_TIME_LIMIT,
    SOCKET_EXCEPTION,
    NOT_WRITABLE_PRIMARY,
    INTERRUPTED_AT_SHUTDOWN,
    INTERRUPTED_DUE_TO_REPL_STATE_CHANGE,
    NOT_PRIMARY_NO_SECONDARY_OK,
    NOT_PRIMARY_OR_SECONDARY,
    // Not in the specifications: the storage engine rolled the write back because its cache
    // was too full of other dirty data to hold it (mongod 6.0 returns it for a single
    // large-document write under cache pressure, as a command error or a write error). Nothing
    // was written; the same write succeeds once the cache has evicted.
    TRANSACTION_TOO_LARGE_FOR_CACHE,
    // Not in the specifications: mongod refuses writes while its disk is short of space
    // (OutOfDiskSpace). Nothing was written; the same write succeeds once space is freed, so
    // a run waits for it (within `--retry-timeout`) and names the cause meanwhile.
    OUT_OF_DISK_SPACE,
];

/// Codes that mean "the cursor this read was using is gone" (a failover, a rename or drop of
/// the collection, `killCursors`): the read can start over from its last checkpoint, but they
/// say nothing about whether a write or a command took effect.
const CURSOR_LOST: &[i32] = &[CURSOR_NOT_FOUND, QUERY_PLAN_KILLED, CURSOR_KILLED];

/// Whether a server code (a command's or a write error's) means the same operation can
/// succeed when sent again (see [`transience`]).
pub fn code_is_transient(c: i32) -> bool {
    RETRYABLE.contains(&c)
}

/// Whether retrying an operation that failed with some error can succeed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transience {
    /// Retrying cannot help (a refused command, bad input, a permission).
    Permanent,
    /// The read's cursor was killed or lost: a re-read from the last checkpoint can succeed.
    CursorLost,
    /// The network, an election or a shutdown: any idempotent operation can be retried.
    Transient,
}

impl Transience {
    /// Worth re-reading (a find, a change stream, a verify range).
    pub fn for_read(self) -> bool {
        self != Transience::Permanent
    }

    /// Worth sending an idempotent write or command again.
    pub fn for_write(self) -> bool {
        self == Transience::Transient
    }
}

/// The one classification of driver errors: by kind, label and code, never by message text.
pub fn transience(e: &Error) -> Transience {
    // Labels the server and the driver attach (retryable-writes, change-streams and
    // transactions specifications).
    if e.contains_label("RetryableWriteError")
        || e.contains_label("ResumableChangeStreamError")
        || e.contains_label("TransientTransactionError")
        || e.contains_label("RetryableError")
    {
        return Transience::Transient;
    }
    let by_code = |c: i32| {
        if RETRYABLE.contains(&c) {
            Transience::Transient
        } else if CURSOR_LOST.contains(&c) {
            Transience::CursorLost
        } else {
            Transience::Permanent
        }
    };
    let wce = |c: i32| {
        // A write-concern timeout: the write is applied on the primary but not yet known to
        // be majority-committed; the same idempotent write waits again.
        if c == WRITE_CONCERN_FAILED || RETRYABLE.contains(&c) {
            Transience::Transient
        } else {
            Transience::Permanent
        }
    };
    match e.kind.as_ref() {
        ErrorKind::Io(_)
        | ErrorKind::ServerSelection { .. }
        | ErrorKind::ConnectionPoolCleared { .. } => Transience::Transient,
        ErrorKind::Command(c) => by_code(c.code),
        ErrorKind::Write(WriteFailure::WriteConcernError(w)) => wce(w.code),
        ErrorKind::InsertMany(im) if im.write_errors.as_ref().is_none_or(|w| w.is_empty()) => im
            .write_concern_error
            .as_ref()
            .map_or(Transience::Permanent, |w| wce(w.code)),
        _ => Transience::Permanent,
    }
}

/// Transient for an idempotent write or command (the common case).
pub fn is_transient(e: &Error) -> bool {
    transience(e).for_write()
}

/// The server's code, for a command error or a single write error.
pub fn code_of(e: &Error) -> Option<i32> {
    match e.kind.as_ref() {
        ErrorKind::Command(c) => Some(c.code),
        ErrorKind::Write(WriteFailure::WriteError(w)) => Some(w.code),
        _ => None,
    }
}

/// A duplicate key (11000), from a single write or a command.
pub fn is_duplicate_key(e: &Error) -> bool {
    code_of(e) == Some(DUPLICATE_KEY)
}

/// Whether the driver could not reach a server at all (no answer, refused, dropped).
pub fn is_unreachable(e: &Error) -> bool {
    matches!(
        e.kind.as_ref(),
        ErrorKind::ServerSelection { .. }
            | ErrorKind::Io(_)
            | ErrorKind::ConnectionPoolCleared { .. }
    )
}

/// What is wrong, in a few words, when the server or the driver says it: a full disk, a
/// server that cannot be reached, no primary, user writes blocked. `None`: the message says
/// it best.
pub fn cause(e: &Error) -> Option<&'static str> {
    let codes: Vec<i32> = match e.kind.as_ref() {
        ErrorKind::Command(c) => vec![c.code],
        ErrorKind::Write(WriteFailure::WriteError(w)) => vec![w.code],
        ErrorKind::Write(WriteFailure::WriteConcernError(w)) => vec![w.code],
        ErrorKind::InsertMany(im) => im
            .write_errors
            .iter()
            .flatten()
            .map(|w| w.code)
            .chain(im.write_concern_error.iter().map(|w| w.code))
            .collect(),
        _ => Vec::new(),
    };
    cause_of(&codes, &e.to_string(), is_unreachable(e))
}

/// [`cause`] from server codes and the message text (a write error reported inside a reply
/// document, or a driver error).
pub fn cause_of(codes: &[i32], message: &str, unreachable: bool) -> Option<&'static str> {
    let m = message.to_ascii_lowercase();
    if codes.contains(&OUT_OF_DISK_SPACE)
        || m.contains("no space left on device")
        || m.contains("outofdiskspace")
        || m.contains("enospc")
    {
        Some("the server is out of disk space")
    } else if unreachable && message.contains("ReplicaSetNoPrimary") {
        // The driver saw the members but none is primary (server selection for a write).
        Some("the replica set has no primary (an election, or no majority of members up)")
    } else if unreachable {
        Some("the server cannot be reached")
    } else if codes.iter().any(|c| {
        [
            NOT_WRITABLE_PRIMARY,
            NOT_PRIMARY_NO_SECONDARY_OK,
            NOT_PRIMARY_OR_SECONDARY,
            PRIMARY_STEPPED_DOWN,
            INTERRUPTED_DUE_TO_REPL_STATE_CHANGE,
        ]
        .contains(c)
    }) {
        Some("the server is not primary (an election, or no majority)")
    } else if codes.contains(&USER_WRITES_BLOCKED) {
        Some("user writes are blocked on the server, and not by this runner's user")
    } else if codes.contains(&SHUTDOWN_IN_PROGRESS) || codes.contains(&INTERRUPTED_AT_SHUTDOWN) {
        Some("the server is shutting down")
    } else {
        None
    }
}

/// [`short_message`], led by its [`cause`] when there is one.
pub fn with_cause(e: &Error) -> String {
    match cause(e) {
        Some(c) => format!("{c}: {}", short_message(e)),
        None => short_message(e),
    }
}

/// The driver's message without its debug dump of the topology and labels.
pub fn short_message(e: &Error) -> String {
    match e.kind.as_ref() {
        ErrorKind::ServerSelection { message, .. } => {
            // "... Servers: [ { Address: h:1, Type: Unknown, Error: Kind: I/O error: refused, labels ..."
            let mut reasons: Vec<String> = Vec::new();
            for part in message.split("Address: ").skip(1) {
                let addr = part.split(',').next().unwrap_or_default().trim();
                let why = part
                    .split("Error: ")
                    .nth(1)
                    .map(|w| {
                        w.trim_start_matches("Kind: ")
                            .split(", labels")
                            .next()
                            .unwrap_or(w)
                    })
                    .unwrap_or("no answer");
                reasons.push(format!("{addr}: {}", why.trim()));
            }
            if reasons.is_empty() {
                "no server answered in time".to_string()
            } else {
                format!("no usable server answered in time ({})", reasons.join("; "))
            }
        }
        ErrorKind::Command(c) => format!("{} ({}, code {})", c.message, c.code_name, c.code),
        other => {
            let s = other.to_string();
            s.split(", labels:").next().unwrap_or(&s).to_string()
        }
    }
}

/// Exponential backoff with a cap and jitter, reset by progress, within a give-up budget.
///
/// An *outage* starts at the first transient failure after progress; each further failure
/// sleeps `first × 2^attempt` (capped at `cap`, then jittered down by up to half) until the
/// outage has lasted `budget`, when [`Backoff::wait`] returns [`GaveUp`]. [`Backoff::progress`]
/// (something succeeded) ends the outage: the attempt count and the budget start over.
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

    /// After a transient failure `last` of `what` on the `cluster` cluster: sleeps, or
    /// gives up once the outage has lasted the budget.
    pub async fn wait(&mut self, cluster: &str, what: &str, last: &str) -> Result<(), GaveUp> {
        match self.next_delay() {
            Some(d) => {
                tracing::warn!(
                    cluster,
                    what,
                    attempt = self.attempt,
                    error = %last,
                    "Transient failure; retrying."
                );
                tokio::time::sleep(d).await;
                Ok(())
            }
            None => Err(self.gave_up(cluster, what, last)),
        }
    }

    fn gave_up(&self, cluster: &str, what: &str, last: &str) -> GaveUp {
        GaveUp {
            cluster: cluster.to_string(),
            what: what.to_string(),
            secs: self.outage().unwrap_or_default().as_secs(),
            attempts: self.attempt,
            last: last.to_string(),
        }
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

/// How [`retry`] ended without a result.
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

/// An error [`retry`] can judge and name.
pub trait Retryable {
    /// Worth sending the same idempotent operation again.
    fn is_transient(&self) -> bool;
    /// A one-line description for logs and the give-up message.
    fn describe(&self) -> String;
}

impl Retryable for Error {
    fn is_transient(&self) -> bool {
        is_transient(self)
    }
    fn describe(&self) -> String {
        short_message(self)
    }
}

/// Runs `op` (given the attempt number, from 1) until it succeeds, fails with an error that
/// is not transient, or transient failures outlast `backoff`'s budget. `op` must be
/// idempotent: an attempt whose reply was lost may have taken effect.
pub async fn retry<T, E, F, Fut>(
    backoff: &mut Backoff,
    cluster: &str,
    what: &str,
    mut op: F,
) -> Result<T, Failure<E>>
where
    E: Retryable,
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut attempt = 1;
    loop {
        match op(attempt).await {
            Ok(v) => {
                if backoff.attempts() > 0 {
                    tracing::info!(
                        cluster,
                        what,
                        attempts = attempt,
                        "Succeeded after retrying."
                    );
                }
                backoff.progress();
                return Ok(v);
            }
            Err(e) if e.is_transient() => {
                if let Err(g) = backoff.wait(cluster, what, &e.describe()).await {
                    return Err(Failure::GaveUp(e, g));
                }
                attempt += 1;
            }
            Err(e) => return Err(Failure::Permanent(e)),
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
    use mongodb::bson::doc;

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

    fn command(code: i32) -> Error {
        let c: mongodb::error::CommandError =
            mongodb::bson::from_document(doc! {"code": code, "codeName": "X", "errmsg": "m"})
                .unwrap();
        ErrorKind::Command(c).into()
    }

    #[test]
    fn shutdowns_and_stepdowns_are_transient_for_everything() {
        for c in [
            SHUTDOWN_IN_PROGRESS,
            INTERRUPTED_AT_SHUTDOWN,
            NOT_WRITABLE_PRIMARY,
            PRIMARY_STEPPED_DOWN,
            INTERRUPTED_DUE_TO_REPL_STATE_CHANGE,
            READ_CONCERN_MAJORITY_NOT_AVAILABLE_YET,
        ] {
            assert_eq!(transience(&command(c)), Transience::Transient, "{c}");
            assert!(is_transient(&command(c)));
        }
        let io: Error = ErrorKind::Io(std::sync::Arc::new(std::io::Error::from(
            std::io::ErrorKind::ConnectionReset,
        )))
        .into();
        assert!(is_transient(&io));
        assert!(is_unreachable(&io));
    }

    #[test]
    fn a_lost_cursor_is_transient_for_a_reread_only() {
        for c in [QUERY_PLAN_KILLED, CURSOR_KILLED, CURSOR_NOT_FOUND] {
            let t = transience(&command(c));
            assert_eq!(t, Transience::CursorLost, "{c}");
            assert!(t.for_read());
            assert!(!t.for_write());
        }
        for c in [DUPLICATE_KEY, UNAUTHORIZED, NAMESPACE_EXISTS, 2] {
            let t = transience(&command(c));
            assert!(!t.for_read() && !t.for_write(), "{c}");
        }
    }

    #[test]
    fn causes_are_named_from_codes_and_messages() {
        let disk = cause(&command(OUT_OF_DISK_SPACE)).unwrap();
        assert!(disk.contains("out of disk space"), "{disk}");
        // WiredTiger's ENOSPC, as mongod reports it in a message.
        assert_eq!(
            cause_of(
                &[8],
                "pwrite: failed to write: No space left on device",
                false
            ),
            Some(disk)
        );
        assert!(cause(&command(NOT_WRITABLE_PRIMARY))
            .unwrap()
            .contains("not primary"));
        assert!(cause(&command(USER_WRITES_BLOCKED))
            .unwrap()
            .contains("user writes are blocked"));
        let io: Error = ErrorKind::Io(std::sync::Arc::new(std::io::Error::from(
            std::io::ErrorKind::ConnectionRefused,
        )))
        .into();
        assert!(with_cause(&io).starts_with("the server cannot be reached: "));
        assert!(cause_of(
            &[],
            "Server selection timeout: No available servers. Topology: { Type: ReplicaSetNoPrimary, Servers: [] }",
            true
        )
        .unwrap()
        .contains("no primary"));
        assert_eq!(cause(&command(DUPLICATE_KEY)), None);
    }

    #[test]
    fn write_concern_timeouts_are_transient() {
        let w: mongodb::error::WriteConcernError = mongodb::bson::from_document(
            doc! {"code": 64, "codeName": "WriteConcernFailed", "errmsg": "t"},
        )
        .unwrap();
        let e: Error = ErrorKind::Write(WriteFailure::WriteConcernError(w)).into();
        assert!(is_transient(&e));
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
    async fn retry_gives_up_after_its_budget_naming_cluster_and_operation() {
        let mut b = Backoff::new(Duration::from_millis(50))
            .with_delays(Duration::from_millis(10), Duration::from_millis(20));
        let started = Instant::now();
        let r: Result<(), _> = retry(
            &mut b,
            "destination",
            "writing the lane record",
            |_| async { Err(T(true, "ShutdownInProgress")) },
        )
        .await;
        let Err(Failure::GaveUp(last, g)) = r else {
            panic!("expected to give up")
        };
        assert_eq!(last.1, "ShutdownInProgress");
        assert!(started.elapsed() >= Duration::from_millis(50));
        let text = g.to_string();
        assert!(text.contains("destination cluster"), "{text}");
        assert!(text.contains("writing the lane record"), "{text}");
        assert!(text.contains("ShutdownInProgress"), "{text}");
    }

    #[tokio::test]
    async fn retry_surfaces_a_permanent_error_at_once_and_counts_attempts() {
        let mut b = Backoff::new(Duration::from_secs(60))
            .with_delays(Duration::from_millis(1), Duration::from_millis(2));
        let mut seen = Vec::new();
        let r: Result<u32, _> = retry(&mut b, "source", "x", |a| {
            seen.push(a);
            async move {
                match a {
                    1 | 2 => Err(T(true, "again")),
                    _ => Ok(a),
                }
            }
        })
        .await;
        assert_eq!(r.unwrap(), 3);
        assert_eq!(seen, vec![1, 2, 3]);
        assert_eq!(b.attempts(), 0, "success resets the outage");
        let r: Result<(), _> =
            retry(&mut b, "source", "x", |_| async { Err(T(false, "no")) }).await;
        assert!(matches!(r, Err(Failure::Permanent(T(false, "no")))));
    }
}
