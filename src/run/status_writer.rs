//! The runner's progress reporter: every second it writes the live progress of the running
//! lane into the run document (what `cutover status`, the HTTP API and the metrics read) and
//! draws the progress bar on a terminal.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use mongodb::bson::{doc, Bson, Document};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::engine::progress::Progress;
use crate::state::StateStore;

pub struct Reporter {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Reporter {
    pub async fn stop(self) {
        self.stop.send_replace(true);
        let _ = self.task.await;
    }

    /// Stops at once, without a last update (the lease was lost).
    pub fn abort(self) {
        self.task.abort();
    }
}

/// Every second: publishes the current lane's progress to the store;
/// draws a progress bar (TTY) or logs a line every 10 s.
pub fn spawn_reporter(
    store: StateStore,
    current: Arc<Mutex<Option<Arc<Progress>>>>,
    source_hosts: String,
    destination_hosts: String,
    bars: bool,
) -> Reporter {
    let (stop, mut stop_rx) = watch::channel(false);
    let task = tokio::spawn(async move {
        let bar = bars.then(|| {
            let b = ProgressBar::new(0);
            b.set_style(
                ProgressStyle::with_template(
                    "{spinner} {prefix:>10} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta} {msg}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            b
        });
        let mut last_log = Instant::now();
        loop {
            let progress = current.lock().ok().and_then(|g| g.clone());
            if let Some(p) = &progress {
                let dir = store
                    .record()
                    .await
                    .map(|r| r.direction)
                    .unwrap_or_default();
                let (s, d) = if dir == crate::state::record::Direction::Reverse {
                    (destination_hosts.clone(), source_hosts.clone())
                } else {
                    (source_hosts.clone(), destination_hosts.clone())
                };
                let _ = store.set(doc! {"status": status_fields(p, &s, &d)}).await;
                if let Some(b) = &bar {
                    let total = p.estimated_total_bytes.load(Ordering::Relaxed);
                    b.set_length(total.max(p.copied_bytes.load(Ordering::Relaxed)));
                    b.set_position(p.copied_bytes.load(Ordering::Relaxed));
                    b.set_prefix(p.phase().to_string());
                    b.set_message(line_suffix(p));
                    b.tick();
                } else if last_log.elapsed() >= Duration::from_secs(10) {
                    last_log = Instant::now();
                    tracing::info!(
                        phase = %p.phase(),
                        copied_docs = p.copied_docs.load(Ordering::Relaxed),
                        copied_bytes = p.copied_bytes.load(Ordering::Relaxed),
                        estimated_total_bytes = p.estimated_total_bytes.load(Ordering::Relaxed),
                        events_applied = p.events_applied.load(Ordering::Relaxed),
                        lag_seconds = p.lag_seconds().unwrap_or(-1.0),
                        can_commit = p.can_commit.load(Ordering::Relaxed),
                        "Progress."
                    );
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(1000)) => {}
                _ = stop_rx.changed() => break,
            }
        }
        // A last update, so the stored status is current when the process ends.
        if let Some(p) = current.lock().ok().and_then(|g| g.clone()) {
            let mut fields = status_fields(&p, "", "");
            fields.remove("direction");
            let mut set = Document::new();
            for (k, v) in fields {
                set.insert(format!("status.{k}"), v);
            }
            let _ = store.set(set).await;
        }
        if let Some(b) = bar {
            b.finish_and_clear();
        }
    });
    Reporter { stop, task }
}

fn line_suffix(p: &Progress) -> String {
    let mut s = format!(
        "{}/{} collections, {} docs, {} events",
        p.collections_done.load(Ordering::Relaxed),
        p.collections_total.load(Ordering::Relaxed),
        p.copied_docs.load(Ordering::Relaxed),
        p.events_applied.load(Ordering::Relaxed)
    );
    if let Some(l) = p.lag_seconds() {
        s.push_str(&format!(", lag {l:.1}s"));
    }
    if p.can_commit.load(Ordering::Relaxed) {
        s.push_str(", can commit");
    }
    if let Some(r) = p.reconnecting() {
        s.push_str(&format!(", reconnecting: {r}"));
    }
    s
}

fn status_fields(p: &Progress, source: &str, destination: &str) -> Document {
    doc! {
        "phase": p.phase(),
        "can_commit": p.can_commit.load(Ordering::Relaxed),
        "lag_seconds": p.lag_seconds().map_or(Bson::Null, Bson::Double),
        "collection_copy": {
            "estimated_total_bytes": p.estimated_total_bytes.load(Ordering::Relaxed) as i64,
            "estimated_copied_bytes": p.copied_bytes.load(Ordering::Relaxed) as i64,
            "copied_documents": p.copied_docs.load(Ordering::Relaxed) as i64,
            "events_applied": p.events_applied_during_copy.load(Ordering::Relaxed) as i64,
            "events_dropped": p.events_dropped_during_copy.load(Ordering::Relaxed) as i64,
            "held_events": p.held_events.load(Ordering::Relaxed) as i64,
            "held_bytes": p.held_bytes.load(Ordering::Relaxed) as i64,
            "held_peak_bytes": p.held_peak_bytes.load(Ordering::Relaxed) as i64,
        },
        "events_applied": p.events_applied.load(Ordering::Relaxed) as i64,
        "reconnecting": p.reconnecting().map_or(Bson::Null, Bson::String),
        "direction": {"source": source, "destination": destination},
        "at": mongodb::bson::DateTime::now(),
    }
}
