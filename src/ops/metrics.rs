//! `GET /metrics`: the run's figures in the Prometheus/OpenMetrics text format, through the
//! `prometheus-client` crate. Counters count what this process did (they restart at zero
//! with the process, as Prometheus expects); gauges are current values.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::base::role::Role;
use crate::state::record::RunRecord;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::engine::progress::Progress;
use crate::engine::stats::Insight;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PlanLabels {
    plan: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LaneLabels {
    plan: String,
    lane: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClusterLabels {
    plan: String,
    cluster: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StageLabels {
    plan: String,
    lane: String,
    stage: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NamespaceLabels {
    plan: String,
    lane: String,
    namespace: String,
}

type FGauge<L> = Family<L, Gauge<f64, AtomicU64>>;

pub struct Metrics {
    registry: Registry,
    lag: FGauge<LaneLabels>,
    events_applied: Family<LaneLabels, Counter>,
    events_read: Family<LaneLabels, Counter>,
    copied_bytes: Family<LaneLabels, Counter>,
    copied_documents: Family<LaneLabels, Counter>,
    copy_estimated_bytes: FGauge<LaneLabels>,
    applied_during_copy: Family<LaneLabels, Counter>,
    held_events: Family<LaneLabels, Gauge>,
    held_bytes: Family<LaneLabels, Gauge>,
    can_commit: Family<LaneLabels, Gauge>,
    paused: Family<PlanLabels, Gauge>,
    write_blocked: Family<ClusterLabels, Gauge>,
    commit_window: FGauge<PlanLabels>,
    read_rate: FGauge<LaneLabels>,
    applied_rate: FGauge<LaneLabels>,
    stage_busy: FGauge<StageLabels>,
    namespace_rate: FGauge<NamespaceLabels>,
    catch_up: FGauge<LaneLabels>,
    oplog_remaining: FGauge<LaneLabels>,
    disk_low: Family<ClusterLabels, Gauge>,
    disk_free: FGauge<ClusterLabels>,
    lease_unconfirmed: Family<PlanLabels, Gauge>,
    /// Counter values already exported, per lane instance and counter.
    seen: HashMap<(usize, &'static str), u64>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut r = Registry::default();
        let m = Metrics {
            lag: Default::default(),
            events_applied: Default::default(),
            events_read: Default::default(),
            copied_bytes: Default::default(),
            copied_documents: Default::default(),
            copy_estimated_bytes: Default::default(),
            applied_during_copy: Default::default(),
            held_events: Default::default(),
            held_bytes: Default::default(),
            can_commit: Default::default(),
            paused: Default::default(),
            write_blocked: Default::default(),
            commit_window: Default::default(),
            read_rate: Default::default(),
            applied_rate: Default::default(),
            stage_busy: Default::default(),
            namespace_rate: Default::default(),
            catch_up: Default::default(),
            oplog_remaining: Default::default(),
            disk_low: Default::default(),
            disk_free: Default::default(),
            lease_unconfirmed: Default::default(),
            seen: HashMap::new(),
            registry: Registry::default(),
        };
        r.register(
            "cutover_lag_seconds",
            "How far change application is behind the source",
            m.lag.clone(),
        );
        // Counters get their `_total` suffix from the encoder.
        r.register(
            "cutover_events_applied",
            "Change events applied to the destination (durable)",
            m.events_applied.clone(),
        );
        r.register(
            "cutover_events_read",
            "Change events read from the source",
            m.events_read.clone(),
        );
        r.register(
            "cutover_copied_bytes",
            "Bytes copied by the initial copy",
            m.copied_bytes.clone(),
        );
        r.register(
            "cutover_copied_documents",
            "Documents copied by the initial copy",
            m.copied_documents.clone(),
        );
        r.register(
            "cutover_copy_estimated_total_bytes",
            "Estimated size of the data to copy",
            m.copy_estimated_bytes.clone(),
        );
        r.register(
            "cutover_events_applied_during_copy",
            "Change events applied while the initial copy ran",
            m.applied_during_copy.clone(),
        );
        r.register(
            "cutover_held_events",
            "Change events held until the copy of their range is durable (or deferred behind a DDL event)",
            m.held_events.clone(),
        );
        r.register(
            "cutover_held_bytes",
            "Bytes of the change events held during the copy",
            m.held_bytes.clone(),
        );
        r.register(
            "cutover_can_commit",
            "1 when the copy is done and the lag is within max_lag",
            m.can_commit.clone(),
        );
        r.register(
            "cutover_paused",
            "1 while the run is paused (cutover pause)",
            m.paused.clone(),
        );
        r.register(
            "cutover_write_blocked",
            "1 while cutover blocks (or may block) user writes on the cluster",
            m.write_blocked.clone(),
        );
        r.register(
            "cutover_commit_window_seconds",
            "Write-blocked window of the last commit",
            m.commit_window.clone(),
        );
        r.register(
            "cutover_events_read_per_second",
            "Change events read per second (10 s window)",
            m.read_rate.clone(),
        );
        r.register(
            "cutover_events_applied_per_second",
            "Change events applied per second (10 s window)",
            m.applied_rate.clone(),
        );
        r.register(
            "cutover_stage_busy_ratio",
            "Share of the window each stage of change application was busy",
            m.stage_busy.clone(),
        );
        r.register(
            "cutover_namespace_events_per_second",
            "Change events per second of the five busiest namespaces",
            m.namespace_rate.clone(),
        );
        r.register(
            "cutover_catch_up_seconds",
            "Estimated time until the lag is gone at the current rate",
            m.catch_up.clone(),
        );
        r.register(
            "cutover_oplog_remaining_seconds",
            "Time before the source's oplog rolls past the lane's resume point",
            m.oplog_remaining.clone(),
        );
        r.register(
            "cutover_destination_disk_low",
            "1 while the copy holds because the cluster it writes to (label `cluster`: the plan's \
             destination, or its source during the reverse lane) is short of disk space",
            m.disk_low.clone(),
        );
        r.register(
            "cutover_destination_free_bytes",
            "Free bytes on the data filesystem of the cluster the lane writes to (label `cluster`) \
             at the disk watch's last sample",
            m.disk_free.clone(),
        );
        r.register(
            "cutover_lease_unconfirmed",
            "1 while this runner's lease is unconfirmed: the state store did not confirm a renewal \
             for a whole TTL, every write waits, and the run goes on when the store answers unless \
             another runner took the plan",
            m.lease_unconfirmed.clone(),
        );
        Metrics { registry: r, ..m }
    }

    /// Updates every metric from the live progress, the run document and the insight, and
    /// returns the text exposition.
    pub fn render(
        &mut self,
        plan: &str,
        progress: Option<&Progress>,
        run: Option<&RunRecord>,
        insight: Option<&Insight>,
    ) -> String {
        let plan_l = PlanLabels { plan: plan.into() };
        let lane = run
            .map(|r| r.direction)
            .unwrap_or_default()
            .as_str()
            .to_string();
        let lane_l = LaneLabels {
            plan: plan.into(),
            lane: lane.clone(),
        };
        if let Some(p) = progress {
            let id = p as *const Progress as usize;
            let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
            for (name, family, value) in [
                ("applied", &self.events_applied, load(&p.events_applied)),
                ("read", &self.events_read, load(&p.stats.events_read)),
                ("bytes", &self.copied_bytes, load(&p.copied_bytes)),
                ("docs", &self.copied_documents, load(&p.copied_docs)),
                (
                    "during_copy",
                    &self.applied_during_copy,
                    load(&p.events_applied_during_copy),
                ),
            ] {
                // Created at zero, so every counter is exported from the first scrape.
                let counter = family.get_or_create(&lane_l);
                let seen = self.seen.entry((id, name)).or_insert(0);
                if value > *seen {
                    counter.inc_by(value - *seen);
                    *seen = value;
                }
            }
            self.copy_estimated_bytes
                .get_or_create(&lane_l)
                .set(load(&p.estimated_total_bytes) as f64);
            self.held_events
                .get_or_create(&lane_l)
                .set(load(&p.held_events) as i64);
            self.held_bytes
                .get_or_create(&lane_l)
                .set(load(&p.held_bytes) as i64);
            match p.lag_seconds() {
                Some(l) => {
                    self.lag.get_or_create(&lane_l).set(l);
                }
                None => {
                    self.lag.remove(&lane_l);
                }
            }
            self.can_commit
                .get_or_create(&lane_l)
                .set(i64::from(p.can_commit.load(Ordering::Relaxed)));
        } else {
            // No lane replicates (e.g. after the commit): nothing can commit, no lag.
            self.can_commit.get_or_create(&lane_l).set(0);
            self.lag.remove(&lane_l);
        }
        // The disk watch runs in this process (see `crate::ops::diskwatch`).
        // The watch follows the running lane: only the cluster it samples has a series (the
        // destination before the first sample).
        let sample = crate::ops::diskwatch::last_free();
        let role = sample.map_or(Role::Destination, |(r, _)| r);
        let low = crate::base::pause_gate::disk_low().is_some_and(|(r, _)| r == role);
        for c in [Role::Source, Role::Destination] {
            let l = ClusterLabels {
                plan: plan.to_string(),
                cluster: c.as_str().to_string(),
            };
            if c == role {
                self.disk_low.get_or_create(&l).set(i64::from(low));
                if let Some((_, free)) = sample {
                    self.disk_free.get_or_create(&l).set(free as f64);
                }
            } else {
                self.disk_low.remove(&l);
                self.disk_free.remove(&l);
            }
        }
        self.lease_unconfirmed.get_or_create(&plan_l).set(i64::from(
            crate::state::lease::process_unconfirmed().is_some(),
        ));
        if let Some(run) = run {
            self.paused
                .get_or_create(&plan_l)
                .set(i64::from(run.pause.paused));
            for cluster in ["source", "destination"] {
                let on = run.blocks.get(cluster).copied().unwrap_or(false);
                self.write_blocked
                    .get_or_create(&ClusterLabels {
                        plan: plan.into(),
                        cluster: cluster.into(),
                    })
                    .set(i64::from(on));
            }
            if let Some(w) = run.last_window_ms() {
                self.commit_window
                    .get_or_create(&plan_l)
                    .set(w as f64 / 1000.0);
            }
        }
        if let Some(i) = insight {
            self.read_rate
                .get_or_create(&lane_l)
                .set(i.events_read_per_second);
            self.applied_rate
                .get_or_create(&lane_l)
                .set(i.events_applied_per_second);
            for s in &i.stages {
                self.stage_busy
                    .get_or_create(&StageLabels {
                        plan: plan.into(),
                        lane: lane.clone(),
                        stage: s.stage.clone(),
                    })
                    .set(s.busy_fraction);
            }
            self.namespace_rate.clear();
            for n in &i.busiest_namespaces {
                self.namespace_rate
                    .get_or_create(&NamespaceLabels {
                        plan: plan.into(),
                        lane: lane.clone(),
                        namespace: n.namespace.clone(),
                    })
                    .set(n.events_per_second);
            }
            match i.catch_up_seconds {
                Some(c) => {
                    self.catch_up.get_or_create(&lane_l).set(c);
                }
                None => {
                    self.catch_up.remove(&lane_l);
                }
            }
            match i.oplog_remaining_seconds {
                Some(o) => {
                    self.oplog_remaining.get_or_create(&lane_l).set(o);
                }
                None => {
                    self.oplog_remaining.remove(&lane_l);
                }
            }
        }
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
