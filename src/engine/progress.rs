//! Progress flows one way: the engine bumps these counters; a reporter turns them into
//! progress bars (TTY), periodic log lines (no TTY) and the status document in the store.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;

use crate::state::states::LanePhase;

/// Shared, lock-free counters of one replication lane.
#[derive(Debug, Default)]
pub struct Progress {
    pub phase: Mutex<LanePhase>,
    pub estimated_total_bytes: AtomicU64,
    pub estimated_total_docs: AtomicU64,
    pub copied_bytes: AtomicU64,
    pub copied_docs: AtomicU64,
    pub collections_total: AtomicU64,
    pub collections_done: AtomicU64,
    pub events_applied: AtomicU64,
    /// Change events applied while the copy ran (part of `events_applied`).
    pub events_applied_during_copy: AtomicU64,
    /// Change events dropped during the copy because their range's read saw them.
    pub events_dropped_during_copy: AtomicU64,
    /// Change events held until their range's copy is durable, and their bytes (with
    /// events deferred behind a DDL event waiting for a collection's copy).
    pub held_events: AtomicU64,
    pub held_bytes: AtomicU64,
    pub held_peak_bytes: AtomicU64,
    /// Milliseconds behind the source; -1 while unknown (before change application starts).
    pub lag_ms: AtomicI64,
    pub copy_done: AtomicBool,
    pub can_commit: AtomicBool,
    /// Set while the lane retries a lost connection.
    pub reconnecting: Mutex<Option<String>>,
    /// The lane's direction (set when it starts): which cluster it writes to.
    pub direction: std::sync::OnceLock<crate::base::role::Direction>,
    /// Events read, stage busy time, events per namespace (lag explained).
    pub stats: crate::engine::stats::LaneStats,
    /// Ranges compared and rewritten after a lost resume point.
    pub recovery: RecoveryStats,
    /// The namespaces change events touched since [`Touched::start`] (the commit's count
    /// check before the write block: only these are counted again inside it).
    pub touched: Touched,
}

/// Namespaces that change events touched since tracking started; any DDL event makes it
/// "everything" (a rename or drop changes which namespaces exist).
#[derive(Debug, Default)]
pub struct Touched {
    on: AtomicBool,
    all: AtomicBool,
    set: Mutex<std::collections::HashSet<crate::base::namespace::Namespace>>,
}

impl Touched {
    /// Starts (or restarts) tracking from an empty set.
    pub fn start(&self) {
        if let Ok(mut g) = self.set.lock() {
            g.clear();
        }
        self.all.store(false, Ordering::SeqCst);
        self.on.store(true, Ordering::SeqCst);
    }

    pub fn tracking(&self) -> bool {
        self.on.load(Ordering::Relaxed)
    }

    /// A CRUD event on `ns` was read (`None`: a DDL event, or one without a namespace).
    pub fn touch(&self, ns: Option<crate::base::namespace::Namespace>) {
        if !self.tracking() {
            return;
        }
        match ns {
            Some(ns) => {
                if let Ok(mut g) = self.set.lock() {
                    g.insert(ns);
                }
            }
            None => self.all.store(true, Ordering::SeqCst),
        }
    }

    /// What was touched since [`Self::start`]: `None` means "possibly everything" (a DDL
    /// event, or tracking never started).
    pub fn since_start(
        &self,
    ) -> Option<std::collections::HashSet<crate::base::namespace::Namespace>> {
        if !self.tracking() || self.all.load(Ordering::SeqCst) {
            return None;
        }
        self.set.lock().ok().map(|g| g.clone())
    }
}

impl Progress {
    pub fn new() -> Self {
        let p = Self::default();
        p.lag_ms.store(-1, Ordering::Relaxed);
        p
    }

    pub fn set_phase(&self, phase: LanePhase) {
        if let Ok(mut g) = self.phase.lock() {
            *g = phase;
        }
    }

    pub fn phase(&self) -> LanePhase {
        self.phase.lock().map(|g| g.clone()).unwrap_or_default()
    }

    pub fn set_reconnecting(&self, what: Option<String>) {
        if let Ok(mut g) = self.reconnecting.lock() {
            *g = what;
        }
    }

    pub fn reconnecting(&self) -> Option<String> {
        self.reconnecting.lock().ok().and_then(|g| g.clone())
    }

    pub fn add_copied(&self, docs: u64, bytes: u64) {
        self.copied_docs.fetch_add(docs, Ordering::Relaxed);
        self.copied_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    pub fn lag_seconds(&self) -> Option<f64> {
        let ms = self.lag_ms.load(Ordering::Relaxed);
        (ms >= 0).then(|| ms as f64 / 1000.0)
    }
}

impl Progress {
    /// This lane's counters now, with an identity for the lane (its address: a new lane's
    /// progress is a new value), for [`crate::engine::stats::Sampler::sample`].
    pub fn sample(&self) -> (usize, crate::engine::stats::Sample) {
        use std::sync::atomic::Ordering;
        let now = crate::engine::stats::Sample {
            at: std::time::Instant::now(),
            read: self.stats.events_read.load(Ordering::Relaxed),
            applied: self.events_applied.load(Ordering::Relaxed),
            busy: crate::engine::stats::STAGES.map(|s| self.stats.busy(s)),
            namespaces: self.stats.namespaces(),
            lag: self.lag_seconds(),
        };
        (self as *const Progress as usize, now)
    }
}

/// Live counters of a recovery from a lost resume point (see `engine::recover`).
#[derive(Debug, Default)]
pub struct RecoveryStats {
    pub ranges: AtomicU64,
    pub ranges_differing: AtomicU64,
    pub documents_written: AtomicU64,
    pub bytes_written: AtomicU64,
    pub documents_deleted: AtomicU64,
}

impl RecoveryStats {
    /// One range compared: whether it differed, what was written and deleted.
    pub fn add_range(&self, differs: bool, written: u64, bytes: u64, deleted: u64) {
        self.ranges.fetch_add(1, Ordering::Relaxed);
        if differs {
            self.ranges_differing.fetch_add(1, Ordering::Relaxed);
        }
        self.documents_written.fetch_add(written, Ordering::Relaxed);
        self.bytes_written.fetch_add(bytes, Ordering::Relaxed);
        self.documents_deleted.fetch_add(deleted, Ordering::Relaxed);
    }
}
