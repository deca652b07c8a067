//! MongoDB errors: the server codes cutover names and one transient classification, shared
//! by the copy, change application, the state store, the commit's cluster commands and
//! verify (the backoff and the retry driver are in [`super::retry`]).
//!
//! A leaf module: it uses the driver, `tokio` and `tracing`, and nothing else of cutover, so
//! every other module can use it without an import cycle.

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

#[cfg(test)]
mod tests {
    use super::*;
    use mongodb::bson::doc;

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
}
