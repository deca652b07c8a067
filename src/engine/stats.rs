//! Lag explained: where change application spends its time. The engine adds busy time per
//! stage and counts events per namespace ([`LaneStats`], inside `Progress`); the service's
//! sampler turns consecutive samples into rates, busy fractions and a bottleneck
//! ([`Insight`]), which `status`, the HTTP API and the metrics show.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// The stages of change application, in pipeline order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Waiting on the source's change stream (`getMore`), in the read-ahead task.
    SourceRead = 0,
    /// Parsing events and translating them into write statements.
    Decode = 1,
    /// A batch read from the source waiting for the applier to take it.
    ApplyQueue = 2,
    /// Writes to the destination (statements, DDL and the checkpoint).
    DestinationWrite = 3,
}

pub const STAGES: [Stage; 4] = [
    Stage::SourceRead,
    Stage::Decode,
    Stage::ApplyQueue,
    Stage::DestinationWrite,
];

impl Stage {
    pub fn name(self) -> &'static str {
        match self {
            Stage::SourceRead => "source_read",
            Stage::Decode => "decode",
            Stage::ApplyQueue => "apply_queue",
            Stage::DestinationWrite => "destination_write",
        }
    }
}

/// Counters of one lane beyond `Progress`'s: events read, busy nanoseconds per stage,
/// events per namespace.
#[derive(Debug, Default)]
pub struct LaneStats {
    pub events_read: AtomicU64,
    busy_ns: [AtomicU64; 4],
    namespaces: Mutex<HashMap<String, u64>>,
}

impl LaneStats {
    pub fn add_busy(&self, stage: Stage, d: Duration) {
        self.busy_ns[stage as usize].fetch_add(d.as_nanos() as u64, Ordering::Relaxed);
    }

    pub fn busy(&self, stage: Stage) -> Duration {
        Duration::from_nanos(self.busy_ns[stage as usize].load(Ordering::Relaxed))
    }

    /// Adds one batch's per-namespace event counts.
    pub fn add_namespaces(&self, counts: HashMap<String, u64>) {
        if counts.is_empty() {
            return;
        }
        if let Ok(mut g) = self.namespaces.lock() {
            for (ns, n) in counts {
                *g.entry(ns).or_default() += n;
            }
        }
    }

    pub fn namespaces(&self) -> HashMap<String, u64> {
        self.namespaces
            .lock()
            .map(|g| g.clone())
            .unwrap_or_default()
    }
}

/// What the sampler derives from the counters over its window (also stored in the status
/// document as `insight`).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Insight {
    /// The span the rates are measured over.
    pub window_seconds: f64,
    pub events_read_per_second: f64,
    pub events_applied_per_second: f64,
    /// Busy time per stage over the window.
    pub stages: Vec<StageBusy>,
    /// The stage with the largest busy share (`none` while the lane is caught up).
    pub bottleneck: String,
    /// The five namespaces with the most events per second.
    pub busiest_namespaces: Vec<NamespaceRate>,
    /// Time to catch up at the current rate of lag reduction; `None` while the lag does not
    /// shrink (or is already below a second).
    pub catch_up_seconds: Option<f64>,
    /// How long before the source's oplog rolls past the lane's resume point at the current
    /// oplog write rate (also how long a pause can last).
    pub oplog_remaining_seconds: Option<f64>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct StageBusy {
    pub stage: String,
    pub busy_seconds: f64,
    /// Busy time divided by the window (can exceed 1 where work runs in parallel).
    pub busy_fraction: f64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct NamespaceRate {
    pub namespace: String,
    pub events_per_second: f64,
}

#[derive(Clone, Debug)]
pub struct Sample {
    pub at: Instant,
    pub read: u64,
    pub applied: u64,
    pub busy: [Duration; 4],
    pub namespaces: HashMap<String, u64>,
    pub lag: Option<f64>,
}

/// Keeps the last samples of one lane and derives an [`Insight`].
#[derive(Debug, Default)]
pub struct Sampler {
    samples: VecDeque<Sample>,
    /// The lane the samples belong to (a new lane starts the window over).
    lane: usize,
}

/// The span rates are computed over.
const WINDOW: Duration = Duration::from_secs(10);

impl Sampler {
    /// Adds `now`, a sample of the lane identified by `lane` (another lane starts over: see
    /// `Progress::sample`), and derives the insight over the last [`WINDOW`].
    pub fn sample(&mut self, lane: usize, now: Sample) -> Insight {
        if lane != self.lane {
            self.samples.clear();
            self.lane = lane;
        }
        self.samples.push_back(now.clone());
        while self.samples.len() > 2 && now.at.duration_since(self.samples[1].at) >= WINDOW {
            self.samples.pop_front();
        }
        let first = self.samples.front().cloned().unwrap_or(now.clone());
        derive(&first, &now)
    }
}

fn derive(a: &Sample, b: &Sample) -> Insight {
    let secs = b.at.duration_since(a.at).as_secs_f64();
    let rate = |x: u64, y: u64| {
        if secs > 0.0 {
            y.saturating_sub(x) as f64 / secs
        } else {
            0.0
        }
    };
    let stages: Vec<StageBusy> = STAGES
        .iter()
        .map(|s| {
            let i = *s as usize;
            let busy = b.busy[i].saturating_sub(a.busy[i]).as_secs_f64();
            StageBusy {
                stage: s.name().into(),
                busy_seconds: round3(busy),
                busy_fraction: if secs > 0.0 { round3(busy / secs) } else { 0.0 },
            }
        })
        .collect();
    let read = rate(a.read, b.read);
    let applied = rate(a.applied, b.applied);
    let lagging = b.lag.is_some_and(|l| l >= 1.0);
    // The source read includes the stream's wait for new events: only a lane that is
    // behind has a bottleneck. The apply queue is the applier's backlog, not work: the
    // bottleneck is the busiest of the stages that do work.
    let bottleneck = if lagging && (read > 0.0 || applied > 0.0) {
        stages
            .iter()
            .filter(|s| s.stage != Stage::ApplyQueue.name())
            .max_by(|x, y| x.busy_fraction.total_cmp(&y.busy_fraction))
            .map(|s| s.stage.clone())
            .unwrap_or_else(|| "none".into())
    } else {
        "none".into()
    };
    let mut namespaces: Vec<NamespaceRate> = b
        .namespaces
        .iter()
        .map(|(ns, n)| NamespaceRate {
            namespace: ns.clone(),
            events_per_second: round3(rate(a.namespaces.get(ns).copied().unwrap_or(0), *n)),
        })
        .filter(|r| r.events_per_second > 0.0)
        .collect();
    namespaces.sort_by(|x, y| {
        y.events_per_second
            .total_cmp(&x.events_per_second)
            .then_with(|| x.namespace.cmp(&y.namespace))
    });
    namespaces.truncate(5);
    let catch_up_seconds = match (a.lag, b.lag) {
        (Some(l0), Some(l1)) if l1 >= 1.0 && l1 < l0 && secs > 0.0 => {
            Some(round3(l1 / ((l0 - l1) / secs)))
        }
        _ => None,
    };
    Insight {
        window_seconds: round3(secs),
        events_read_per_second: round3(read),
        events_applied_per_second: round3(applied),
        stages,
        bottleneck,
        busiest_namespaces: namespaces,
        catch_up_seconds,
        oplog_remaining_seconds: None,
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// One look at the source's oplog: its first and last entry times (seconds), the lane's
/// resume point, and its used and maximum size in bytes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OplogSample {
    pub first: u32,
    pub last: u32,
    pub resume: u32,
    pub used: f64,
    pub max: f64,
}

/// How long until the oplog rolls past `resume` (seconds) at the *current* write rate: the
/// bytes still to be written before the entry at `resume` is deleted (the free space, then
/// the history older than `resume`), divided by the rate.
///
/// The current rate is the growth of the oplog since the previous sample while it is not
/// full. A full oplog (≥ 95% of its maximum) or one that did not grow uses the average over
/// its history, which is then the usual "oplog window". Unknown (`None`) on the first
/// sample of an oplog that is not full: the history average alone is badly wrong on a young
/// oplog (an initial bulk load in its first seconds made a 256 MB oplog written at 70
/// writes/s look 40 s from rolling over).
pub fn oplog_remaining(prev: Option<&OplogSample>, now: &OplogSample) -> Option<f64> {
    if now.resume < now.first {
        return Some(0.0);
    }
    let span = f64::from(now.last.saturating_sub(now.first)).max(1.0);
    let history_rate = now.used / span; // bytes per second of source time
    let full = now.used >= 0.95 * now.max;
    let rate = match prev {
        Some(p) if !full && now.last > p.last && now.used > p.used => {
            (now.used - p.used) / f64::from(now.last - p.last)
        }
        Some(_) => history_rate,
        None if full => history_rate,
        None => return None,
    };
    if rate <= 0.0 || history_rate <= 0.0 {
        return None;
    }
    let free = (now.max - now.used).max(0.0);
    let before_resume = now.used * (f64::from(now.resume - now.first) / span).min(1.0);
    Some(((free + before_resume) / rate).round())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oplog_remaining_counts_free_space_then_history_before_the_resume_point() {
        // 1000 s of history in 100 MB of a 200 MB oplog: 100 KB/s; 1000 s to fill, then the
        // resume point 400 s after the first entry rolls off 400 s later.
        let s = |last: u32, resume: u32, used: f64| OplogSample {
            first: 1000,
            last,
            resume,
            used,
            max: 200e6,
        };
        let prev = s(1900, 1400, 100e6);
        assert_eq!(
            oplog_remaining(Some(&prev), &s(2000, 1400, 100e6)),
            Some(1400.0)
        );
        assert_eq!(oplog_remaining(None, &s(2000, 900, 100e6)), Some(0.0));
        assert_eq!(oplog_remaining(None, &s(2000, 1400, 100e6)), None);
        // The same oplog now growing 10 KB/s (1 MB in 100 s): 100 MB free plus the 40 MB
        // older than the resume point take 14,000 s, not 1,400.
        let prev = s(1900, 1400, 99e6);
        assert_eq!(
            oplog_remaining(Some(&prev), &s(2000, 1400, 100e6)),
            Some(14000.0)
        );
        // A full oplog uses the history average, from its first sample on.
        let full = |used: f64| OplogSample {
            max: 100e6,
            ..s(2000, 1400, used)
        };
        assert_eq!(
            oplog_remaining(Some(&full(99.9e6)), &full(100e6)),
            Some(400.0)
        );
        assert_eq!(oplog_remaining(None, &full(100e6)), Some(400.0));
    }

    #[test]
    fn bottleneck_and_rates_come_from_the_window() {
        let t0 = Instant::now();
        let a = Sample {
            at: t0,
            read: 0,
            applied: 0,
            busy: [Duration::ZERO; 4],
            namespaces: HashMap::from([("a.x".to_string(), 0)]),
            lag: Some(20.0),
        };
        let b = Sample {
            at: t0 + Duration::from_secs(10),
            read: 1000,
            applied: 800,
            busy: [
                Duration::from_secs(1),
                Duration::from_secs(2),
                Duration::from_secs(9),
                Duration::from_secs(8),
            ],
            namespaces: HashMap::from([("a.x".to_string(), 500), ("a.y".to_string(), 300)]),
            lag: Some(10.0),
        };
        let i = derive(&a, &b);
        assert_eq!(i.events_read_per_second, 100.0);
        assert_eq!(i.events_applied_per_second, 80.0);
        assert_eq!(i.bottleneck, "destination_write");
        assert_eq!(i.busiest_namespaces[0].namespace, "a.x");
        assert_eq!(i.busiest_namespaces[0].events_per_second, 50.0);
        assert_eq!(i.catch_up_seconds, Some(10.0));
    }
}
