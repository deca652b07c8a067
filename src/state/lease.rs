//! The plan's lease and its fencing epoch: the one place that decides whether this process
//! may still write a plan's state or change a cluster.
//!
//! - **Expiry by the state store's clock.** The lease's `until` is written as `$$NOW + TTL`
//!   by an aggregation-pipeline update, and a takeover matches only `$expr: until < $$NOW`:
//!   both times come from the destination's primary, never from a host. The host's clock
//!   appears only in the informational `lease.host_clock`.
//! - **Epoch.** Taking the lease increments the run document's `epoch` (never decreases,
//!   kept across releases and `--restart`) and stamps every state record of the plan with it
//!   (lanes, partitions, relaxations, verify records). Every later write by a runner filters
//!   on `epoch <= mine` and sets `epoch = mine`; writes to the run document filter on
//!   `epoch == mine` and `lease.id == mine`. Once a newer runner has taken the plan, a stale
//!   runner's write matches nothing: [`LeaseLost`], fatal.
//! - **Self-fencing, then waiting.** A runner that could not renew for a whole TTL (measured
//!   on its own monotonic clock: intervals only, no cross-host comparison) counts its lease
//!   as *unconfirmed* before anyone else can take it: every write to a cluster or to the
//!   state store waits ([`Fence::ready`]) while renewals go on. A renewal is conditional on
//!   this runner's own epoch and lease id, so one that matches after any gap proves nobody
//!   took the plan meanwhile: the writes carry on. One that matches nothing means another
//!   runner took it: [`LeaseLost`] ([`Loss::TakenOver`]). After the TTL plus
//!   `--retry-timeout` without confirmation the runner stops for good ([`Loss::Unconfirmed`]).
//! - Before a transition that changes a cluster (user write blocking, restoring the
//!   relaxations) the runner renews, which proves it still holds the epoch.
//!
//! [`Fence`] is the small handle passed to writers; everything else asks it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use mongodb::bson::{doc, Bson, DateTime, Document};
use mongodb::options::ReturnDocument;
use mongodb::Collection;
use tokio::sync::watch;

use crate::base::env::{self, LEASE_TTL};
use crate::base::role::Role;
use crate::cluster::retry::{Failure, Retry, Retryable};

/// How long a lease lasts without renewal, unless `CUTOVER_LEASE_TTL` says otherwise.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(20);
/// The field every fenced record carries.
pub const EPOCH: &str = "epoch";
/// The lease's `--retry-timeout` in milliseconds: how long its holder keeps trying to confirm
/// it after `until` (see [`stored_unconfirmed`]).
const PATIENCE_MS: &str = "patience_ms";

/// The lease TTL: `CUTOVER_LEASE_TTL` or [`DEFAULT_LEASE_TTL`].
pub fn lease_ttl() -> Result<Duration, String> {
    match env::get(env::LEASE_TTL) {
        None => Ok(DEFAULT_LEASE_TTL),
        Some(v) => match humantime::parse_duration(v.trim()) {
            Ok(d) if d >= Duration::from_secs(1) => Ok(d),
            Ok(_) => Err(format!(
                "{LEASE_TTL}=`{v}`: the lease TTL must be at least 1s"
            )),
            Err(e) => Err(format!(
                "{LEASE_TTL}=`{v}` is not a duration ({e}): write e.g. `20s`"
            )),
        },
    }
}

/// Who asks for a plan's lease: informational identity plus a unique id.
#[derive(Clone, Debug)]
pub struct Holder {
    pub id: String,
    pub host: String,
    pub pid: i64,
}

impl Holder {
    pub fn mine() -> Self {
        let host = host_name();
        let pid = i64::from(std::process::id());
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        Self {
            id: format!("{host}/{pid}/{nanos}"),
            host,
            pid,
        }
    }
}

/// This machine's host name, as leases record it (`unknown` when it cannot be read).
fn host_name() -> String {
    hostname::get()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "unknown".into())
}

/// `host H pid P, epoch E` from a run document's `lease` (and `epoch`).
pub fn describe_holder(run: &Document) -> String {
    let empty = Document::new();
    let l = run.get_document("lease").unwrap_or(&empty);
    let mut s = format!(
        "host {} pid {}",
        l.get_str("host").unwrap_or("?"),
        int(l.get("pid")).unwrap_or(0)
    );
    if let Some(e) = int(run.get(EPOCH)) {
        s.push_str(&format!(", epoch {e}"));
    }
    s
}

fn int(b: Option<&Bson>) -> Option<i64> {
    match b {
        Some(Bson::Int64(v)) => Some(*v),
        Some(Bson::Int32(v)) => Some(i64::from(*v)),
        Some(Bson::Double(v)) => Some(*v as i64),
        _ => None,
    }
}

/// The epoch stored in a run document (0 before any lease).
pub fn stored_epoch(run: &Document) -> i64 {
    int(run.get(EPOCH)).unwrap_or(0)
}

/// Why a runner stopped holding its plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Loss {
    /// Another runner took the plan (a newer epoch, another holder, or the lease released
    /// by a newer runner): this runner must never write again.
    TakenOver,
    /// The state store could not confirm the lease for a whole TTL plus `--retry-timeout`:
    /// this runner stopped for good, but as far as it knows no other runner took the plan;
    /// running the plan again continues it.
    Unconfirmed,
}

/// This runner lost the plan (another runner took it over), or gave up confirming it (the
/// state store did not answer, or refused its writes, for the TTL plus `--retry-timeout`).
/// Fatal; the runner stops without writing further.
#[derive(Clone, Debug)]
pub struct LeaseLost {
    pub plan: String,
    pub epoch: i64,
    pub reason: String,
    /// The runner that holds the plan now (`host H pid P, epoch E`), when known.
    pub holder: Option<String>,
    pub kind: Loss,
}

impl std::fmt::Display for LeaseLost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.kind {
            Loss::TakenOver => write!(
                f,
                "this runner lost its lease on plan `{}` (its epoch {}): {}",
                self.plan, self.epoch, self.reason
            )?,
            Loss::Unconfirmed => write!(
                f,
                "this runner could not confirm its lease on plan `{}` (its epoch {}) and gave up \
                 waiting: {}",
                self.plan, self.epoch, self.reason
            )?,
        }
        if let Some(h) = &self.holder {
            write!(f, "; the plan is now held by {h}")?;
        }
        write!(f, "; it stopped without writing further")
    }
}

impl std::error::Error for LeaseLost {}

impl LeaseLost {
    /// Another runner holds (or held) the plan: this one must not be run again while it lives.
    pub fn taken_over(&self) -> bool {
        self.kind == Loss::TakenOver
    }
}

/// Adds the epoch condition to a filter: matches records stamped with `epoch` or older (or
/// never stamped), never those of a newer runner.
pub fn fenced_filter(mut filter: Document, epoch: i64) -> Document {
    filter.insert(EPOCH, doc! {"$not": {"$gt": epoch}});
    filter
}

/// Stamps an update (operator form) with the epoch: `$set: {epoch}`.
pub fn stamped_update(mut update: Document, epoch: i64) -> Document {
    match update.get_mut("$set") {
        Some(Bson::Document(set)) => {
            set.insert(EPOCH, epoch);
        }
        _ => {
            update.insert("$set", doc! {EPOCH: epoch});
        }
    }
    update
}

/// Stamps a whole record (insert or replacement) with the epoch.
pub fn stamped_doc(mut d: Document, epoch: i64) -> Document {
    d.insert(EPOCH, epoch);
    d
}

/// The filter of a takeover: no lease, an expired one by the server's clock, or one whose
/// holder is known to be gone (`dead_id`, a dead process on this host).
pub fn takeover_filter(plan: &str, dead_id: Option<&str>) -> Document {
    let mut or = vec![
        doc! {"lease": {"$exists": false}},
        doc! {"lease.until": {"$exists": false}},
        doc! {"$expr": {"$lt": ["$lease.until", "$$NOW"]}},
    ];
    if let Some(id) = dead_id {
        or.push(doc! {"lease.id": id});
    }
    doc! {"_id": plan, "$or": or}
}

/// The pipeline that takes the lease: epoch + 1, `until = $$NOW + ttl`. `patience`
/// (`--retry-timeout`) is stored so that `cutover status` can tell, after `until`, that the
/// holder may still be waiting to confirm its lease (see [`Fence`]) until `until + patience`.
pub fn takeover_pipeline(h: &Holder, ttl: Duration, patience: Duration) -> Vec<Document> {
    vec![
        doc! {"$set": {EPOCH: {"$add": [{"$ifNull": ["$epoch", 0_i64]}, 1_i64]}}},
        doc! {"$set": {"lease": {
            "id": {"$literal": &h.id},
            "host": {"$literal": &h.host},
            "pid": {"$literal": h.pid},
            "epoch": "$epoch",
            "acquired": "$$NOW",
            "renewed": "$$NOW",
            "until": {"$add": ["$$NOW", ttl.as_millis() as i64]},
            "ttl_ms": {"$literal": ttl.as_millis() as i64},
            PATIENCE_MS: {"$literal": patience.as_millis() as i64},
            // Informational only: never compared with anything.
            "host_clock": {"$literal": DateTime::now()},
        }}},
    ]
}

/// The pipeline that renews a held lease: `until = $$NOW + ttl`.
pub fn renew_pipeline(ttl: Duration) -> Vec<Document> {
    vec![doc! {"$set": {
        "lease.renewed": "$$NOW",
        "lease.until": {"$add": ["$$NOW", ttl.as_millis() as i64]},
        "lease.host_clock": {"$literal": DateTime::now()},
    }}]
}

/// The filter of this holder's own lease at `epoch` (renewal, run-document writes).
pub fn held_filter(plan: &str, id: &str, epoch: i64) -> Document {
    doc! {"_id": plan, "lease.id": id, EPOCH: epoch}
}

/// How one renewal attempt of [`Fence::verify`] failed.
enum Renewal {
    Lost(LeaseLost),
    /// A database error (the last one, described): retried.
    Failed(String),
}

impl Retryable for Renewal {
    fn is_transient(&self) -> bool {
        matches!(self, Renewal::Failed(_))
    }
    fn describe(&self) -> String {
        match self {
            Renewal::Lost(l) => l.to_string(),
            Renewal::Failed(last) => last.clone(),
        }
    }
}

struct Inner {
    runs: Collection<Document>,
    plan: String,
    holder: Holder,
    epoch: i64,
    ttl: Duration,
    /// How long the runner keeps trying to confirm an unconfirmed lease (no renewal for a
    /// TTL) before it stops for good: `--retry-timeout`.
    patience: Duration,
    /// When the last successful renewal was *sent* (the server's `until` is later).
    renewed: Mutex<Instant>,
    /// Renewals failing since (the first failure), and the last failure: for messages.
    trouble: Mutex<Option<Trouble>>,
    /// Whether the current stretch without confirmation was logged.
    said_unconfirmed: AtomicBool,
    lost: watch::Sender<Option<LeaseLost>>,
}

/// Renewals that fail: since when, and why (the real cause when the server gave one).
#[derive(Clone, Debug)]
struct Trouble {
    since: Instant,
    last: String,
}

/// A held lease at one epoch: cheap to clone, passed to every state writer.
///
/// Three states, by this process's knowledge:
/// - **confirmed**: renewed within the TTL; writes go ahead;
/// - **unconfirmed**: no renewal for a whole TTL (the state store unreachable, or refusing
///   writes): another runner *may* have taken the plan by now, so every write to a cluster
///   or to the state store waits ([`Fence::ready`], [`crate::state::StateStore::write_budget`])
///   while the renewal task keeps trying, for up to `--retry-timeout`. When the store answers
///   and the conditional renewal (same epoch, same lease id) matches, no other runner took
///   the plan: the writes carry on where they stopped;
/// - **lost**: another epoch or holder (the renewal matches nothing), or the wait gave up.
#[derive(Clone)]
pub struct Fence {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Fence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fence")
            .field("plan", &self.inner.plan)
            .field("epoch", &self.inner.epoch)
            .finish()
    }
}

/// Why the lease could not be taken.
pub enum AcquireError {
    /// Another live runner holds it: its description (`host H pid P, epoch E`) and `until`.
    Held {
        holder: String,
        until: String,
    },
    Db(mongodb::error::Error),
}

impl From<mongodb::error::Error> for AcquireError {
    fn from(e: mongodb::error::Error) -> Self {
        AcquireError::Db(e)
    }
}

/// How often a waiting writer looks at the lease again.
const POLL: Duration = Duration::from_millis(50);

impl Fence {
    /// Takes the plan's lease (the run document must exist), incrementing the epoch and
    /// stamping the plan's records in `collections` (each with a `plan` field) with it.
    /// `patience`: how long an unconfirmed lease is waited for (see [`Fence`]).
    pub async fn acquire(
        runs: Collection<Document>,
        records: &[Collection<Document>],
        plan: &str,
        holder: Holder,
        ttl: Duration,
        patience: Duration,
    ) -> Result<Fence, AcquireError> {
        let sent = Instant::now();
        let current = runs.find_one(doc! {"_id": plan}).await?;
        // A lease held by a process of this host that no longer exists (kill -9, crash) is
        // taken over at once.
        let dead = current.as_ref().and_then(|d| {
            let l = d.get_document("lease").ok()?;
            let pid = int(l.get("pid")).unwrap_or(0);
            (l.get_str("host").ok() == Some(holder.host.as_str())
                && pid > 0
                && pid != holder.pid
                && !process_alive(pid))
            .then(|| l.get_str("id").unwrap_or_default().to_string())
        });
        let mut filter = takeover_filter(plan, dead.as_deref());
        // This holder's own lease: an earlier attempt whose reply was lost took it (the
        // state store retries a failed acquisition).
        if let Ok(or) = filter.get_array_mut("$or") {
            or.push(Bson::Document(doc! {"lease.id": &holder.id}));
        }
        let taken = runs
            .find_one_and_update(filter, takeover_pipeline(&holder, ttl, patience))
            .return_document(ReturnDocument::After)
            .await?;
        let Some(taken) = taken else {
            let run = runs.find_one(doc! {"_id": plan}).await?.unwrap_or_default();
            let until = run
                .get_document("lease")
                .ok()
                .and_then(|l| l.get_datetime("until").ok())
                .map(|d| d.try_to_rfc3339_string().unwrap_or_default())
                .unwrap_or_default();
            return Err(AcquireError::Held {
                holder: describe_holder(&run),
                until,
            });
        };
        let epoch = stored_epoch(&taken);
        // From here on, a record written by an older epoch's runner is refused.
        for c in records {
            c.update_many(
                doc! {"plan": plan, EPOCH: {"$not": {"$gte": epoch}}},
                doc! {"$set": {EPOCH: epoch}},
            )
            .await?;
        }
        tracing::info!(plan, epoch, ttl = %humantime::format_duration(ttl), "Lease taken.");
        let (lost, _) = watch::channel(None);
        Ok(Fence {
            inner: Arc::new(Inner {
                runs,
                plan: plan.to_string(),
                holder,
                epoch,
                ttl,
                patience,
                renewed: Mutex::new(sent),
                trouble: Mutex::new(None),
                said_unconfirmed: AtomicBool::new(false),
                lost,
            }),
        })
    }

    pub fn epoch(&self) -> i64 {
        self.inner.epoch
    }

    pub fn ttl(&self) -> Duration {
        self.inner.ttl
    }

    /// Time since the last successful renewal was sent (this process's monotonic clock).
    fn since_renewed(&self) -> Duration {
        self.inner
            .renewed
            .lock()
            .map(|r| r.elapsed())
            .unwrap_or_default()
    }

    /// Whether the lease is unconfirmed now: no renewal for a whole TTL (and not lost).
    pub fn unconfirmed(&self) -> bool {
        self.lost_error().is_none() && self.since_renewed() >= self.inner.ttl
    }

    /// How long the lease is certainly still this runner's on the server: the TTL from when
    /// the last successful renewal was *sent* (the server's `until` counts from its arrival,
    /// later); zero while unconfirmed. Err once lost.
    pub fn time_left(&self) -> Result<Duration, LeaseLost> {
        self.check()?;
        Ok(self.inner.ttl.saturating_sub(self.since_renewed()))
    }

    pub fn holder(&self) -> &Holder {
        &self.inner.holder
    }

    /// While the lease is unconfirmed: what `status`, the HTTP API and the page show.
    pub fn unconfirmed_view(&self) -> Option<UnconfirmedView> {
        if !self.unconfirmed() {
            return None;
        }
        let since = self.since_renewed();
        let left = (self.inner.ttl + self.inner.patience).saturating_sub(since);
        let at = |d: Duration| {
            let t = SystemTime::now().checked_sub(d)?;
            DateTime::from_system_time(t).try_to_rfc3339_string().ok()
        };
        Some(UnconfirmedView {
            holder: format!(
                "host {} pid {}",
                self.inner.holder.host, self.inner.holder.pid
            ),
            epoch: self.inner.epoch,
            last_renewed: at(since),
            gives_up: SystemTime::now()
                .checked_add(left)
                .and_then(|t| DateTime::from_system_time(t).try_to_rfc3339_string().ok()),
            process: Some("this runner".into()),
            last_error: Some(self.last_trouble()),
        })
    }

    /// The filter that matches only the run document while this runner holds the lease.
    pub fn run_filter(&self) -> Document {
        held_filter(&self.inner.plan, &self.inner.holder.id, self.inner.epoch)
    }

    pub fn filter(&self, f: Document) -> Document {
        fenced_filter(f, self.inner.epoch)
    }

    pub fn stamp(&self, update: Document) -> Document {
        stamped_update(update, self.inner.epoch)
    }

    pub fn stamp_doc(&self, d: Document) -> Document {
        stamped_doc(d, self.inner.epoch)
    }

    /// Whether the lease was lost (by this process's knowledge).
    pub fn lost_error(&self) -> Option<LeaseLost> {
        self.inner.lost.borrow().clone()
    }

    /// The local check, without waiting: Err once lost (or once the wait for an unconfirmed
    /// lease gave up). `Ok` while unconfirmed: a caller about to write must wait with
    /// [`Fence::ready`] (or send its write with [`crate::state::StateStore::write_budget`]'s
    /// deadline, which waits too).
    pub fn check(&self) -> Result<(), LeaseLost> {
        if let Some(l) = self.lost_error() {
            return Err(l);
        }
        if self.since_renewed() >= self.inner.ttl + self.inner.patience {
            return Err(self.give_up());
        }
        Ok(())
    }

    /// Waits until this runner may write: at once while the lease is confirmed; while it is
    /// unconfirmed, until the renewal task confirms it again. Err once lost, or once it was
    /// unconfirmed for `--retry-timeout` (the runner then stops for good).
    pub async fn ready(&self) -> Result<(), LeaseLost> {
        loop {
            self.check()?;
            if self.since_renewed() < self.inner.ttl {
                return Ok(());
            }
            self.note_unconfirmed();
            tokio::time::sleep(POLL).await;
        }
    }

    /// Logs, once per stretch, that the lease is unconfirmed and every write waits.
    fn note_unconfirmed(&self) {
        if self.inner.said_unconfirmed.swap(true, Ordering::SeqCst) {
            return;
        }
        let mut last = self
            .inner
            .trouble
            .lock()
            .ok()
            .and_then(|t| t.as_ref().map(|t| t.last.clone()))
            .unwrap_or_else(|| "no answer".into());
        if let Some((crate::base::role::Role::Destination, why)) =
            crate::base::pause_gate::disk_low()
        {
            last.push_str(&format!("; at its last sample, {why}"));
        }
        tracing::warn!(
            plan = %self.inner.plan,
            epoch = self.inner.epoch,
            error = %last,
            "Lease unconfirmed: no renewal for {} (the TTL). Every write to the clusters and to the \
             state store waits until the state store confirms this runner still holds the plan \
             (for up to {}, --retry-timeout). No other runner holds this plan as far as this one knows: \
             it continues when the destination answers.",
            humantime::format_duration(self.inner.ttl),
            humantime::format_duration(self.inner.patience)
        );
    }

    /// Records the loss (first reason wins) and wakes [`Fence::lost`] waiters.
    pub fn lose(&self, reason: String) -> LeaseLost {
        self.lose_to(reason, None, Loss::TakenOver)
    }

    /// The wait for an unconfirmed lease is over: stop for good (no other runner is known to
    /// hold the plan).
    fn give_up(&self) -> LeaseLost {
        let mut last = match self.inner.trouble.lock().ok().and_then(|t| t.clone()) {
            Some(t) => t.last,
            None => "no answer".to_string(),
        };
        // A full disk stops mongod (WiredTiger error 28 is fatal): the driver sees only a
        // dropped connection, so say what the disk watch saw last.
        if let Some((crate::base::role::Role::Destination, why)) =
            crate::base::pause_gate::disk_low()
        {
            last.push_str(&format!("; at its last sample, {why}"));
        }
        self.lose_to(
            format!(
                "the state store on the destination did not confirm it for {} since its last \
                 renewal (TTL {} plus --retry-timeout {}); last error: {last}",
                humantime::format_duration(Duration::from_secs(self.since_renewed().as_secs())),
                humantime::format_duration(self.inner.ttl),
                humantime::format_duration(self.inner.patience),
            ),
            None,
            Loss::Unconfirmed,
        )
    }

    fn lose_to(&self, reason: String, holder: Option<String>, kind: Loss) -> LeaseLost {
        let mut out = None;
        self.inner.lost.send_if_modified(|cur| {
            let changed = cur.is_none();
            if changed {
                *cur = Some(LeaseLost {
                    plan: self.inner.plan.clone(),
                    epoch: self.inner.epoch,
                    reason: reason.clone(),
                    holder: holder.clone(),
                    kind,
                });
            }
            out = cur.clone();
            changed
        });
        out.expect("set above")
    }

    /// Completes a loss with who holds the plan now: one read of the run document, bounded
    /// in time. Writes nothing. A runner that gave up waiting learns here whether another
    /// runner took the plan meanwhile (then it is a takeover).
    pub async fn explain(&self, l: LeaseLost) -> LeaseLost {
        if l.holder.is_some() {
            return l;
        }
        let read = self.inner.runs.find_one(doc! {"_id": &self.inner.plan});
        match tokio::time::timeout(Duration::from_secs(3), read).await {
            Ok(Ok(Some(run))) if stored_epoch(&run) != self.inner.epoch => LeaseLost {
                holder: run
                    .get_document("lease")
                    .is_ok()
                    .then(|| describe_holder(&run)),
                kind: Loss::TakenOver,
                reason: format!(
                    "{}; meanwhile another runner took the plan (now at epoch {})",
                    l.reason,
                    stored_epoch(&run)
                ),
                ..l
            },
            Ok(Ok(Some(_))) => LeaseLost {
                reason: format!("{}; no other runner has taken the plan", l.reason),
                ..l
            },
            _ => l,
        }
    }

    /// Resolves once the lease is lost.
    pub async fn lost(&self) -> LeaseLost {
        let mut rx = self.inner.lost.subscribe();
        loop {
            if let Some(l) = rx.borrow_and_update().clone() {
                return l;
            }
            if rx.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }

    /// Renews the lease on the server, conditionally: only this runner's own epoch and lease
    /// id match. `Err(Some)`: lost (another epoch or holder, or unconfirmed past the wait);
    /// `Err(None)` after a database error (the caller retries).
    ///
    /// A renewal that matches after any gap proves that no other runner took the plan
    /// meanwhile: a takeover increments the epoch and replaces the lease id, and a release
    /// removes the lease; and this runner wrote nothing while unconfirmed.
    pub async fn renew(&self) -> Result<(), Option<LeaseLost>> {
        if let Some(l) = self.lost_error() {
            return Err(Some(l));
        }
        let sent = Instant::now();
        match self
            .inner
            .runs
            .update_one(self.run_filter(), renew_pipeline(self.inner.ttl))
            .await
        {
            Ok(r) if r.matched_count == 1 => {
                let gap = self.since_renewed();
                if let Ok(mut g) = self.inner.renewed.lock() {
                    if sent > *g {
                        *g = sent;
                    }
                }
                let trouble = self.inner.trouble.lock().ok().and_then(|mut t| t.take());
                if self.inner.said_unconfirmed.swap(false, Ordering::SeqCst) {
                    tracing::info!(
                        plan = %self.inner.plan,
                        epoch = self.inner.epoch,
                        waited = %humantime::format_duration(Duration::from_secs(
                            gap.saturating_sub(self.inner.ttl).as_secs()
                        )),
                        "Lease confirmed again: the state store answers and no other runner took \
                         the plan; writes carry on where they stopped (waited {}s without a \
                         confirmed lease, {}s since the last renewal).",
                        gap.saturating_sub(self.inner.ttl).as_secs(),
                        gap.as_secs()
                    );
                } else if let Some(t) = trouble {
                    tracing::info!(
                        failing_for = t.since.elapsed().as_secs(),
                        "Lease renewed again."
                    );
                }
                Ok(())
            }
            Ok(_) => Err(Some(self.taken_over().await)),
            Err(e) => {
                let last = crate::cluster::server_error::with_cause(&e);
                if let Ok(mut t) = self.inner.trouble.lock() {
                    match t.as_mut() {
                        // Once per stretch of failures: they repeat every few hundred ms.
                        Some(t) => {
                            tracing::debug!(error = %last, "Could not renew the plan's lease; retrying.");
                            t.last = last;
                        }
                        None => {
                            tracing::warn!(error = %last, "Could not renew the plan's lease; retrying.");
                            *t = Some(Trouble {
                                since: Instant::now(),
                                last,
                            })
                        }
                    }
                }
                self.check().map_err(Some)?;
                Err(None)
            }
        }
    }

    /// Proves, on the server, that this runner still holds the plan (renewing it): before a
    /// transition that changes a cluster. Waits through an unconfirmed lease (see
    /// [`Fence`]), retrying failed renewals for `budget` (`cutover run`: `--retry-timeout`);
    /// then, or once the lease was unconfirmed for the TTL plus `--retry-timeout`, the runner
    /// stops for good ([`Loss::Unconfirmed`]).
    pub async fn verify(&self, budget: Duration) -> Result<(), LeaseLost> {
        // Renewals retried every 100 to 200 ms, as the unconfirmed wait polls.
        let mut retry = Retry::new(budget)
            .with_delays(Duration::from_millis(200), Duration::from_millis(200))
            .on(Role::Destination);
        let out = retry
            .run(
                "renewing the plan's lease before changing a cluster",
                |_| async {
                    match self.renew().await {
                        Ok(()) => Ok(()),
                        Err(Some(l)) => Err(Renewal::Lost(l)),
                        Err(None) => {
                            if self.since_renewed() >= self.inner.ttl {
                                self.note_unconfirmed();
                            }
                            Err(Renewal::Failed(self.last_trouble()))
                        }
                    }
                },
            )
            .await;
        match out {
            Ok(()) => Ok(()),
            Err(Failure::Permanent(Renewal::Lost(l)) | Failure::GaveUp(Renewal::Lost(l), _)) => {
                Err(l)
            }
            Err(Failure::GaveUp(Renewal::Failed(_), g)) => Err(self.lose_to(
                format!("the state store did not renew it before changing a cluster: {g}"),
                None,
                Loss::Unconfirmed,
            )),
            // A failed renewal is always transient.
            Err(Failure::Permanent(Renewal::Failed(last))) => Err(self.lose_to(
                format!("the state store did not renew it before changing a cluster: {last}"),
                None,
                Loss::Unconfirmed,
            )),
        }
    }

    /// The last renewal failure, for messages.
    fn last_trouble(&self) -> String {
        self.inner
            .trouble
            .lock()
            .ok()
            .and_then(|t| t.as_ref().map(|t| t.last.clone()))
            .unwrap_or_else(|| "no answer".into())
    }

    /// A fenced write matched nothing: lost if the run document shows another epoch or
    /// holder (then the error names it); `Ok` if this runner still holds the plan (the record
    /// simply did not exist).
    pub async fn confirm(&self) -> Result<(), LeaseLost> {
        self.ready().await?;
        match self
            .inner
            .runs
            .find_one(doc! {"_id": &self.inner.plan})
            .await
        {
            Ok(Some(run))
                if stored_epoch(&run) == self.inner.epoch
                    && run
                        .get_document("lease")
                        .ok()
                        .and_then(|l| l.get_str("id").ok())
                        == Some(self.inner.holder.id.as_str()) =>
            {
                Ok(())
            }
            Ok(run) => Err(self.lost_to(run.as_ref())),
            // Unknown: the next write waits for the lease to be confirmed again.
            Err(_) => Ok(()),
        }
    }

    async fn taken_over(&self) -> LeaseLost {
        let run = self
            .inner
            .runs
            .find_one(doc! {"_id": &self.inner.plan})
            .await
            .ok()
            .flatten();
        self.lost_to(run.as_ref())
    }

    fn lost_to(&self, run: Option<&Document>) -> LeaseLost {
        match run {
            None => self.lose("the plan's run document is gone".to_string()),
            Some(r) if r.get_document("lease").is_err() => self.lose(format!(
                "another runner took the plan and released it (the plan is now at epoch {})",
                stored_epoch(r)
            )),
            Some(r) => self.lose_to(
                "another runner took the plan over".to_string(),
                Some(describe_holder(r)),
                Loss::TakenOver,
            ),
        }
    }

    /// Runs renewals every TTL/4 until the lease is lost or the returned handle is aborted.
    /// Renewals go on while the lease is unconfirmed (every write waits meanwhile), until one
    /// matches (carry on) or matches nothing (lost), or `--retry-timeout` is spent.
    pub fn spawn_renewal(&self) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            let every = (me.inner.ttl / 4).max(Duration::from_millis(100));
            // After a failed renewal, try again soon: waiting the regular quarter of the TTL
            // left four chances per TTL, and a destination answering most writes with
            // transient errors for one TTL cost the lease (tests/it/transient.rs
            // `transient_errors_on_state_store_writes_are_retried`, seen in a full run).
            let soon = (every / 5).clamp(Duration::from_millis(100), Duration::from_secs(1));
            let mut wait = every;
            loop {
                tokio::time::sleep(wait).await;
                // A renewal that hangs (an unanswered connection) must not hold the others
                // back: each attempt is bounded by the TTL.
                let attempt = tokio::time::timeout(me.inner.ttl, me.renew()).await;
                wait = match attempt {
                    Ok(Ok(())) => every,
                    Ok(Err(None)) | Err(_) => {
                        if me.since_renewed() >= me.inner.ttl {
                            me.note_unconfirmed();
                        }
                        if let Err(_lost) = me.check() {
                            return;
                        }
                        soon
                    }
                    Ok(Err(Some(_))) => return,
                };
            }
        })
    }

    /// Gives the lease up (end of run): the next runner takes it at once.
    pub async fn release(&self) {
        if self.lost_error().is_some() {
            return;
        }
        let _ = self
            .inner
            .runs
            .update_one(self.run_filter(), doc! {"$unset": {"lease": ""}})
            .await;
    }
}

fn process_fence() -> &'static Mutex<Option<Fence>> {
    static FENCE: std::sync::OnceLock<Mutex<Option<Fence>>> = std::sync::OnceLock::new();
    FENCE.get_or_init(|| Mutex::new(None))
}

/// Makes `fence` the fence of this process's runner (one runner per process), for the
/// cluster commands that have no handle on it ([`crate::state::lease::run_majority`]: catalog
/// DDL, relaxations, views): they wait while its lease is unconfirmed. `None` removes it.
pub fn install(fence: Option<&Fence>) {
    if let Ok(mut g) = process_fence().lock() {
        *g = fence.cloned();
    }
}

/// This process's runner's lease while it is unconfirmed (`None` when confirmed, lost, or
/// when no runner holds a lease in this process).
pub fn process_unconfirmed() -> Option<UnconfirmedView> {
    let fence = process_fence().lock().ok().and_then(|g| g.clone());
    fence.and_then(|f| f.unconfirmed_view())
}

/// A lease whose holder has not confirmed it for a whole TTL (the state store did not answer
/// its renewals, or refused them) and may still be trying: writes wait, nothing is lost, and
/// the holder carries on if no other runner took the plan, or stops at `gives_up`.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct UnconfirmedView {
    /// `host H pid P`.
    pub holder: String,
    pub epoch: i64,
    /// When the last successful renewal was sent (RFC 3339).
    pub last_renewed: Option<String>,
    /// When the holder stops trying (its `--retry-timeout` after the TTL).
    pub gives_up: Option<String>,
    /// What is known of the holder's process: `this runner` (the runner's own API),
    /// `alive on this host`, `on another host` (from `cutover status`).
    pub process: Option<String>,
    /// The last renewal failure, when the runner itself answers.
    pub last_error: Option<String>,
}

/// The stored lease of `run` (a run document read by `cutover status` with the state store's
/// clock: `lease_waiting` set by [`crate::state::StateStore::run_doc_for_status`]) while its
/// holder may still be waiting to confirm it. `None` when the lease is live, released,
/// older than its holder's patience, or held by a process of this host that is gone.
pub fn stored_unconfirmed(run: &Document) -> Option<UnconfirmedView> {
    if run.get_bool("lease_waiting") != Ok(true) {
        return None;
    }
    let l = run.get_document("lease").ok()?;
    let host = l.get_str("host").unwrap_or("?");
    let pid = int(l.get("pid")).unwrap_or(0);
    let process = if host_name() == host {
        if pid <= 0 || !process_alive(pid) {
            return None;
        }
        "alive on this host"
    } else {
        "on another host"
    };
    let rfc = |d: Option<DateTime>| d.and_then(|d| d.try_to_rfc3339_string().ok());
    let until = l.get_datetime("until").ok().copied();
    let patience = int(l.get(PATIENCE_MS)).unwrap_or(0);
    Some(UnconfirmedView {
        holder: format!("host {host} pid {pid}"),
        epoch: stored_epoch(run),
        last_renewed: rfc(l.get_datetime("renewed").ok().copied()),
        gives_up: rfc(until.map(|u| DateTime::from_millis(u.timestamp_millis() + patience))),
        process: Some(process.into()),
        last_error: None,
    })
}

/// Waits until this process's runner may act on a cluster ([`Fence::ready`]); at once when
/// no runner holds a lease in this process (`check`, `verify`, …).
pub async fn process_ready() -> Result<(), LeaseLost> {
    let fence = process_fence().lock().ok().and_then(|g| g.clone());
    match fence {
        Some(f) => f.ready().await,
        None => Ok(()),
    }
}

fn process_alive(pid: i64) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Runs a command that changes the catalog (DDL, `create`) with majority write concern, so
/// that a primary stepdown cannot roll it back after cutover has moved on. `run_command` sends the command as given and only
/// fails on `ok: 0`: a `writeConcernError` in an `ok: 1` reply is turned into an error here
/// (transient or not by its code, like any other).
pub async fn run_majority(
    db: &mongodb::Database,
    mut cmd: Document,
) -> Result<Document, mongodb::error::Error> {
    // Inside `cutover run`, no command while the runner's lease is unconfirmed; none once
    // it is lost (the run then ends).
    process_ready()
        .await
        .map_err(mongodb::error::Error::custom)?;
    cmd.insert("writeConcern", doc! {"w": "majority"});
    let reply = db.run_command(cmd).await?;
    if let Ok(wce) = reply.get_document("writeConcernError") {
        let wce: mongodb::error::WriteConcernError =
            mongodb::bson::from_document(wce.clone()).map_err(mongodb::error::Error::custom)?;
        return Err(mongodb::error::ErrorKind::Write(
            mongodb::error::WriteFailure::WriteConcernError(wce),
        )
        .into());
    }
    Ok(reply)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fenced_filter_refuses_newer_epochs_only() {
        let f = fenced_filter(doc! {"_id": "p/forward"}, 3);
        assert_eq!(
            f,
            doc! {"_id": "p/forward", "epoch": {"$not": {"$gt": 3_i64}}}
        );
        // `$not: {$gt}` also matches records never stamped (written before fencing).
    }

    #[test]
    fn stamped_update_adds_to_an_existing_set_or_creates_one() {
        let u = stamped_update(doc! {"$set": {"done": true}, "$inc": {"n": 1}}, 7);
        assert_eq!(
            u,
            doc! {"$set": {"done": true, "epoch": 7_i64}, "$inc": {"n": 1}}
        );
        let u = stamped_update(doc! {"$unset": {"x": ""}}, 7);
        assert_eq!(u, doc! {"$unset": {"x": ""}, "$set": {"epoch": 7_i64}});
        assert_eq!(
            stamped_doc(doc! {"_id": 1}, 2),
            doc! {"_id": 1, "epoch": 2_i64}
        );
    }

    #[test]
    fn expiry_is_decided_by_the_server_clock() {
        let f = takeover_filter("p", None);
        let text = format!("{f}");
        assert!(text.contains("$$NOW"), "{text}");
        // No host time in the takeover condition or in `until`.
        let pipe = takeover_pipeline(
            &Holder {
                id: "$weird".into(),
                host: "$host".into(),
                pid: 1,
            },
            Duration::from_secs(20),
            Duration::from_secs(60),
        );
        let lease = pipe[1]
            .get_document("$set")
            .unwrap()
            .get_document("lease")
            .unwrap();
        assert_eq!(
            lease.get_document("until").unwrap(),
            &doc! {"$add": ["$$NOW", 20_000_i64]}
        );
        // Host-provided strings are literals, never field paths.
        assert_eq!(
            lease.get_document("id").unwrap(),
            &doc! {"$literal": "$weird"}
        );
        let renew = renew_pipeline(Duration::from_secs(3));
        assert_eq!(
            renew[0]
                .get_document("$set")
                .unwrap()
                .get_document("lease.until")
                .unwrap(),
            &doc! {"$add": ["$$NOW", 3_000_i64]}
        );
    }

    #[test]
    fn a_dead_holder_is_taken_over_by_id() {
        let f = takeover_filter("p", Some("h/1/2"));
        let or = f.get_array("$or").unwrap();
        assert!(or.contains(&Bson::Document(doc! {"lease.id": "h/1/2"})));
    }

    #[test]
    fn a_stored_lease_is_unconfirmed_only_while_its_holder_may_still_wait() {
        let until = DateTime::from_millis(1_000_000);
        let lease = |host: &str, pid: i64| {
            doc! {"host": host, "pid": pid, "until": until, "renewed": until,
            PATIENCE_MS: 60_000_i64}
        };
        // Expired and within its patience, held on another host: may be waiting.
        let run = doc! {"epoch": 3_i64, "lease_waiting": true,
        "lease": lease("elsewhere.invalid", 42)};
        let u = stored_unconfirmed(&run).expect("unconfirmed");
        assert_eq!(u.holder, "host elsewhere.invalid pid 42");
        assert_eq!(u.epoch, 3);
        assert_eq!(u.process.as_deref(), Some("on another host"));
        assert_eq!(
            u.gives_up,
            DateTime::from_millis(1_060_000)
                .try_to_rfc3339_string()
                .ok()
        );
        // Not waiting by the state store's clock (live, released, or past its patience).
        let mut past = run.clone();
        past.insert("lease_waiting", false);
        assert_eq!(stored_unconfirmed(&past), None);
        // Held by a process of this host that is gone: nobody waits.
        let me = Holder::mine();
        let gone = doc! {"epoch": 3_i64, "lease_waiting": true,
        "lease": lease(&me.host, i64::from(i32::MAX))};
        assert_eq!(stored_unconfirmed(&gone), None);
        // ... and one that is alive (this test's own process) may.
        let alive = doc! {"epoch": 3_i64, "lease_waiting": true, "lease": lease(&me.host, me.pid)};
        assert_eq!(
            stored_unconfirmed(&alive).and_then(|u| u.process),
            Some("alive on this host".to_string())
        );
    }

    #[test]
    fn describe_holder_names_host_pid_and_epoch() {
        let run = doc! {"epoch": 4_i64, "lease": {"host": "db1", "pid": 99_i64}};
        assert_eq!(describe_holder(&run), "host db1 pid 99, epoch 4");
    }

    #[test]
    fn lease_ttl_env_is_parsed_and_bounded() {
        // One test touches the variable (tests run in threads of one process).
        std::env::set_var(env::LEASE_TTL, "3s");
        assert_eq!(lease_ttl(), Ok(Duration::from_secs(3)));
        std::env::set_var(env::LEASE_TTL, "10ms");
        assert!(lease_ttl().is_err());
        std::env::set_var(env::LEASE_TTL, "soon");
        assert!(lease_ttl().is_err());
        std::env::remove_var(env::LEASE_TTL);
        assert_eq!(lease_ttl(), Ok(DEFAULT_LEASE_TTL));
    }
}
