//! The torture run (issue 9): a seeded generator writes random documents, transactions and DDL
//! to the source of a real `cutover run` on local replica sets — and, for a reversible plan,
//! to the new source after the first commit — while faults are injected at random moments
//! (kill -9 of the runner, crash points, primary stepdowns, dropped connections, `failCommand`
//! fail points). At the end both clusters must be identical (documents byte for byte in
//! natural order for capped collections and `_id` order otherwise, indexes, options, views)
//! and `cutover verify` must say so.
//!
//! Shared by `tests/it/torture.rs` (the fixed CI seeds) and `benches/torture.rs` (the soak:
//! `cargo bench --bench torture --features test-hooks -- --seed N --minutes M`). Both declare `mod common;` at
//! their root.
//!
//! Reproducibility: the generator's operation sequence is a function of the seed alone (a
//! `StdRng` whose draws never depend on what the servers answered), so the same seed replays
//! the same operations in the same order; how many of them run before each phase, and when
//! faults land relative to the copy, depends on timing. The fault schedule (kinds, order,
//! delays) has its own RNG derived from the seed.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use mongodb::bson::spec::BinarySubtype;
use mongodb::bson::{
    doc, oid::ObjectId, Binary, Bson, DateTime, Decimal128, Document, JavaScriptCodeWithScope,
    Regex, Timestamp,
};
use mongodb::options::ReturnDocument;
use mongodb::Client;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::io::copy_bidirectional;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::watch;

use crate::common::{self, ReplicaSet, RsOptions, ROOT_PASSWORD, ROOT_USER};

pub const STATE_DB: &str = "__cutover";
pub const PLAN_NAME: &str = "torture";
const GEN_USER: &str = "gen";
const GEN_PASSWORD: &str = "gen-Secret-pw";

/// Which faults the run injects.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Faults {
    /// SIGKILL of the `cutover run` process, then the same command again.
    pub kill: bool,
    /// `CUTOVER_TEST_CRASH_AT` armed for the next incarnation (commit, reverse and drain points).
    pub crash: bool,
    /// `replSetStepDown` on either side (three-node replica sets).
    pub stepdown: bool,
    /// A TCP proxy in front of each cluster drops every connection for a moment.
    pub proxy: bool,
    /// `failCommand` fail points (transient errors, closed connections) for cutover's commands.
    pub fail_command: bool,
}

impl Faults {
    pub const NONE: Faults = Faults {
        kill: false,
        crash: false,
        stepdown: false,
        proxy: false,
        fail_command: false,
    };

    /// Parses `kill,crash,stepdown,proxy,failcommand`, `all` or `none`.
    pub fn parse(s: &str) -> Result<Faults, String> {
        let mut f = Faults::NONE;
        for p in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match p {
                "all" => {
                    f = Faults {
                        kill: true,
                        crash: true,
                        stepdown: true,
                        proxy: true,
                        fail_command: true,
                    }
                }
                "none" => f = Faults::NONE,
                "kill" => f.kill = true,
                "crash" => f.crash = true,
                "stepdown" => f.stepdown = true,
                "proxy" => f.proxy = true,
                "failcommand" | "fail-command" => f.fail_command = true,
                _ => {
                    return Err(format!(
                    "unknown fault `{p}` (kill, crash, stepdown, proxy, failcommand, all, none)"
                ))
                }
            }
        }
        Ok(f)
    }

    fn names(&self) -> String {
        let mut v = Vec::new();
        for (on, n) in [
            (self.kill, "kill"),
            (self.crash, "crash"),
            (self.stepdown, "stepdown"),
            (self.proxy, "proxy"),
            (self.fail_command, "failcommand"),
        ] {
            if on {
                v.push(n);
            }
        }
        if v.is_empty() {
            "none".into()
        } else {
            v.join(",")
        }
    }
}

/// Workload features. Each can be switched off where a known bug makes it fail (see
/// `tests/it/torture.rs` for which are gated and why).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Features {
    /// DDL at random moments (create, drop, rename, dropDatabase, indexes, collMod, views...).
    pub ddl: bool,
    /// Renames while the copy is still running (issue 9: renames during the copy).
    pub rename_in_copy: bool,
    /// Multi-document transactions across collections and databases.
    pub txn: bool,
    /// Now and then a transaction of several hundred operations (spans apply batches).
    pub txn_large: bool,
    /// Field names with dots and `$` prefixes, and `$setField`/`$unsetField` on them.
    pub dotted: bool,
    /// Documents close to 16 MB (rare).
    pub big: bool,
    /// Unique indexes on `u` and updates that swap `u` between documents.
    pub unique: bool,
    /// Forward plans only: a database (`tx`) outside the plan's filter, with renames into and
    /// out of it.
    pub filter: bool,
    /// `collMod`, views and `create` with options while the copy is still running (a runner
    /// restarted during the copy then refuses the collections it created itself).
    pub catalog_in_copy: bool,
    /// `failCommand` also on catalog commands (`create`, `createIndexes`, `collMod`, `drop`)
    /// and on the state store's writes, which are not retried on transient errors.
    pub fail_catalog: bool,
}

impl Features {
    pub const ALL: Features = Features {
        ddl: true,
        rename_in_copy: true,
        txn: true,
        txn_large: true,
        dotted: true,
        big: true,
        unique: true,
        filter: true,
        catalog_in_copy: true,
        fail_catalog: true,
    };

    /// Parses a comma list of `name` / `-name` / `all` / `none` applied to `base`.
    pub fn parse(base: Features, s: &str) -> Result<Features, String> {
        let mut f = base;
        for p in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (on, name) = match p.strip_prefix('-') {
                Some(n) => (false, n),
                None => (true, p),
            };
            match name {
                "all" => f = if on { Features::ALL } else { Features::none() },
                "none" => f = Features::none(),
                "ddl" => f.ddl = on,
                "rename-in-copy" => f.rename_in_copy = on,
                "txn" => f.txn = on,
                "txn-large" => f.txn_large = on,
                "dotted" => f.dotted = on,
                "big" => f.big = on,
                "unique" => f.unique = on,
                "filter" => f.filter = on,
                "catalog-in-copy" => f.catalog_in_copy = on,
                "fail-catalog" => f.fail_catalog = on,
                _ => {
                    return Err(format!(
                        "unknown feature `{name}` (ddl, rename-in-copy, txn, txn-large, dotted, big, unique, filter, catalog-in-copy, fail-catalog)"
                    ))
                }
            }
        }
        Ok(f)
    }

    pub const fn none() -> Features {
        Features {
            ddl: false,
            rename_in_copy: false,
            txn: false,
            txn_large: false,
            dotted: false,
            big: false,
            unique: false,
            filter: false,
            catalog_in_copy: false,
            fail_catalog: false,
        }
    }

    fn names(&self) -> String {
        let mut v = Vec::new();
        for (on, n) in [
            (self.ddl, "ddl"),
            (self.rename_in_copy, "rename-in-copy"),
            (self.txn, "txn"),
            (self.txn_large, "txn-large"),
            (self.dotted, "dotted"),
            (self.big, "big"),
            (self.unique, "unique"),
            (self.filter, "filter"),
            (self.catalog_in_copy, "catalog-in-copy"),
            (self.fail_catalog, "fail-catalog"),
        ] {
            if on {
                v.push(n);
            }
        }
        v.join(",")
    }
}

#[derive(Clone, Debug)]
pub struct Config {
    pub seed: u64,
    pub reversible: bool,
    pub faults: Faults,
    pub features: Features,
    /// Documents in `ta.bulk` before the run (the copy must last a while).
    pub seed_docs: usize,
    /// The generator also writes to `ta.bulk` (updates, deletes, inserts of its `_id`s; 40%
    /// of its data operations while the copy runs, 10% after): writes land in ranges not
    /// read yet, being read and read, for as long as the copy lasts.
    pub bulk_writes: bool,
    /// Generator operations before the run starts (a deterministic prefix: the initial shapes).
    pub pre_ops: usize,
    /// How long the generator writes during change application before each commit is approved.
    pub apply_secs: u64,
    /// Mean delay between faults.
    pub fault_every: Duration,
    /// At most this many faults per seed (a runner killed every few seconds never finishes).
    pub max_faults: u64,
    /// The whole run fails after this long.
    pub limit: Duration,
    /// Where the runner's logs go (a temp dir when `None`).
    pub log_dir: Option<PathBuf>,
}

impl Config {
    pub fn new(seed: u64, reversible: bool, faults: Faults, features: Features) -> Config {
        Config {
            seed,
            reversible,
            faults,
            features,
            seed_docs: 3000,
            bulk_writes: false,
            pre_ops: 400,
            apply_secs: 4,
            fault_every: Duration::from_millis(3000),
            max_faults: 6,
            limit: Duration::from_secs(300),
            log_dir: None,
        }
    }

    fn filter(&self) -> bool {
        self.features.filter && !self.reversible
    }
}

/// Counts by name.
#[derive(Default, Debug, Clone)]
pub struct Counts(pub BTreeMap<String, (u64, u64)>);

impl Counts {
    fn add(&mut self, name: &str, ok: bool) {
        let e = self.0.entry(name.to_string()).or_default();
        if ok {
            e.0 += 1;
        } else {
            e.1 += 1;
        }
    }
    pub fn ok_total(&self) -> u64 {
        self.0.values().map(|v| v.0).sum()
    }
    pub fn total(&self) -> u64 {
        self.0.values().map(|v| v.0 + v.1).sum()
    }
    fn line(&self) -> String {
        self.0
            .iter()
            .map(|(k, (ok, err))| {
                if *err > 0 {
                    format!("{k} {ok}/{}", ok + err)
                } else {
                    format!("{k} {ok}")
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

#[derive(Debug, Clone, Default)]
pub struct Report {
    pub seed: u64,
    pub reversible: bool,
    pub faults_cfg: String,
    pub features_cfg: String,
    pub ops: Counts,
    pub ddl: Counts,
    pub faults: Counts,
    pub incarnations: u64,
    /// Runner exits other than success, a kill or a crash point: `exit N: last lines`.
    pub runner_errors: Vec<String>,
    /// Differences between the clusters at the end (empty: identical).
    pub differences: Vec<String>,
    /// `cutover verify`'s verdict: `None` when it reported identical.
    pub verify: Option<String>,
    /// The run did not finish (limit reached, or stopped with errors three times in a row).
    pub unfinished: Option<String>,
    /// Reversible plans: operations the generator wrote to the new source after its first
    /// acknowledged insert there (the reverse lane's workload).
    pub new_source_ops: Option<u64>,
    pub elapsed: Duration,
    pub log_dir: String,
}

impl Report {
    /// Identical clusters, `verify` agrees, the plan finished; runner errors are allowed only
    /// when `allow_runner_errors` (faults such as a dropped connection may end one run with
    /// exit 3; the re-run must then finish).
    pub fn passed(&self) -> bool {
        self.differences.is_empty() && self.verify.is_none() && self.unfinished.is_none()
    }

    pub fn summary(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "torture seed {} ({}; faults: {}; features: {}): {} in {:.1}s",
            self.seed,
            if self.reversible {
                "reversible"
            } else {
                "forward"
            },
            self.faults_cfg,
            self.features_cfg,
            if self.passed() { "PASS" } else { "FAIL" },
            self.elapsed.as_secs_f64()
        );
        let _ = writeln!(
            s,
            "  operations: {} ({} acknowledged{}): {}",
            self.ops.total(),
            self.ops.ok_total(),
            match self.new_source_ops {
                Some(n) => format!("; {n} on the new source"),
                None => String::new(),
            },
            self.ops.line()
        );
        let _ = writeln!(
            s,
            "  DDL: {} ({} acknowledged): {}",
            self.ddl.total(),
            self.ddl.ok_total(),
            self.ddl.line()
        );
        let _ = writeln!(
            s,
            "  faults: {}: {}; runner incarnations: {}",
            self.faults.total(),
            self.faults.line(),
            self.incarnations
        );
        for e in &self.runner_errors {
            let _ = writeln!(s, "  runner error: {e}");
        }
        if let Some(u) = &self.unfinished {
            let _ = writeln!(s, "  UNFINISHED: {u}");
        }
        let _ = writeln!(s, "  differences: {}", self.differences.len());
        for d in self.differences.iter().take(20) {
            let _ = writeln!(s, "    {d}");
        }
        match &self.verify {
            None => {
                let _ = writeln!(s, "  cutover verify: identical");
            }
            Some(v) => {
                let _ = writeln!(s, "  cutover verify: {v}");
            }
        }
        let _ = writeln!(s, "  runner logs: {}", self.log_dir);
        s
    }
}

// ---------------------------------------------------------------------------------------------
// Random values and documents
// ---------------------------------------------------------------------------------------------

const PLAIN_FIELDS: &[&str] = &[
    "a", "b", "k", "s", "arr", "n", "x", "deep", "f", "é", "sp ace",
];
const ODD_FIELDS: &[&str] = &["a.b", "x.y.z", "$d", "$e.f", "b."];
const STRINGS: &[&str] = &[
    "",
    "x",
    "hello",
    "ünïcödé",
    "a.b",
    "$notop",
    "{}",
    "\u{1F600}",
];

fn dec(bytes: [u8; 16]) -> Bson {
    Bson::Decimal128(Decimal128::from_bytes(bytes))
}

struct Shapes {
    dotted: bool,
}

impl Shapes {
    fn field(&self, rng: &mut StdRng) -> &'static str {
        if self.dotted && rng.random_bool(0.15) {
            ODD_FIELDS[rng.random_range(0..ODD_FIELDS.len())]
        } else {
            PLAIN_FIELDS[rng.random_range(0..PLAIN_FIELDS.len())]
        }
    }

    fn scalar(&self, rng: &mut StdRng) -> Bson {
        match rng.random_range(0..22) {
            0 => Bson::Double(match rng.random_range(0..6) {
                0 => f64::NAN,
                1 => -0.0,
                2 => f64::INFINITY,
                3 => f64::MIN_POSITIVE,
                _ => rng.random_range(-1e6..1e6),
            }),
            1 | 2 => Bson::String(STRINGS[rng.random_range(0..STRINGS.len())].to_string()),
            3 => Bson::Binary(Binary {
                subtype: match rng.random_range(0..4) {
                    0 => BinarySubtype::Generic,
                    1 => BinarySubtype::Uuid,
                    2 => BinarySubtype::Md5,
                    _ => BinarySubtype::UserDefined(0x80),
                },
                bytes: {
                    let n = if rng.random_bool(0.5) {
                        16
                    } else {
                        rng.random_range(0..40)
                    };
                    (0..n).map(|_| rng.random::<u8>()).collect()
                },
            }),
            4 => Bson::Undefined,
            5 => {
                let mut b = [0u8; 12];
                rng.fill(&mut b);
                Bson::ObjectId(ObjectId::from_bytes(b))
            }
            6 => Bson::Boolean(rng.random()),
            7 => Bson::DateTime(DateTime::from_millis(
                rng.random_range(-2_000_000_000_000i64..4_000_000_000_000),
            )),
            8 => Bson::Null,
            9 => Bson::RegularExpression(Regex {
                pattern: "^a.*b$".into(),
                options: ["", "i", "ims"][rng.random_range(0..3)].into(),
            }),
            10 => Bson::JavaScriptCode("function() { return 1; }".into()),
            11 => Bson::Symbol("sym".into()),
            12 => Bson::JavaScriptCodeWithScope(JavaScriptCodeWithScope {
                code: "function() { return x; }".into(),
                scope: doc! {"x": rng.random_range(0..9)},
            }),
            13 | 14 => Bson::Int32(rng.random_range(-5..100)),
            15 => Bson::Timestamp(Timestamp {
                time: rng.random_range(1..2_000_000_000),
                increment: rng.random_range(1..100),
            }),
            16 => Bson::Int64(match rng.random_range(0..4) {
                0 => i64::MAX,
                1 => i64::MIN,
                _ => rng.random_range(-1000..1000),
            }),
            17 => match rng.random_range(0..4) {
                // 1, -0, NaN, 1.5E+3
                0 => dec([1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x40, 0x30]),
                1 => dec([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x40, 0xb0]),
                2 => dec([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x7c]),
                _ => dec([15, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x44, 0x30]),
            },
            18 => Bson::MinKey,
            19 => Bson::MaxKey,
            20 => {
                let j = serde_json::json!({"$dbPointer": {"$ref": "ta.c0", "$id": {"$oid": "5f0000000000000000000001"}}});
                Bson::try_from(j).unwrap_or(Bson::Null)
            }
            _ => Bson::Double(rng.random_range(0.0..1.0)),
        }
    }

    fn value(&self, rng: &mut StdRng, depth: usize) -> Bson {
        if depth >= 4 {
            return self.scalar(rng);
        }
        match rng.random_range(0..10) {
            0 | 1 => Bson::Document(self.subdoc(rng, depth + 1)),
            2 | 3 => {
                let n = rng.random_range(0..6);
                Bson::Array((0..n).map(|_| self.value(rng, depth + 1)).collect())
            }
            _ => self.scalar(rng),
        }
    }

    fn subdoc(&self, rng: &mut StdRng, depth: usize) -> Document {
        let mut d = Document::new();
        for _ in 0..rng.random_range(0..5) {
            let f = self.field(rng);
            let v = self.value(rng, depth);
            d.insert(f, v);
        }
        d
    }

    /// A top-level document: `_id`, `k` (an int for indexes and filters), `u` (unique per
    /// `_id`, for unique indexes), `arr`, `ts` (a date: time-series collections accept it),
    /// then random fields.
    fn document(&self, rng: &mut StdRng, id: Bson) -> Document {
        let mut d = doc! {"_id": id.clone()};
        let n = id_num(&id);
        d.insert("k", rng.random_range(0..50));
        d.insert("u", n);
        d.insert(
            "arr",
            Bson::Array(
                (0..rng.random_range(0..6))
                    .map(|_| self.value(rng, 2))
                    .collect(),
            ),
        );
        d.insert(
            "ts",
            DateTime::from_millis(1_700_000_000_000 + rng.random_range(0..10_000_000)),
        );
        for _ in 0..rng.random_range(0..5) {
            let f = self.field(rng);
            if matches!(f, "k" | "arr") {
                continue;
            }
            let v = self.value(rng, 1);
            d.insert(f, v);
        }
        d
    }

    /// A path to update: plain names, nested, or array positions.
    fn path(&self, rng: &mut StdRng) -> String {
        match rng.random_range(0..8) {
            0 => format!("arr.{}", rng.random_range(0..6)),
            1 => format!(
                "deep.{}",
                PLAIN_FIELDS[rng.random_range(0..PLAIN_FIELDS.len())]
            ),
            2 => format!("a.{}.b", rng.random_range(0..3)),
            3 => "deep.x.y.z".into(),
            _ => loop {
                let f = PLAIN_FIELDS[rng.random_range(0..PLAIN_FIELDS.len())];
                if f != "k" && f != "u" {
                    break f.to_string();
                }
            },
        }
    }
}

fn id_num(id: &Bson) -> i64 {
    match id {
        Bson::Int32(i) => *i as i64,
        Bson::Int64(i) => *i,
        Bson::String(s) => s.trim_start_matches('s').parse::<i64>().unwrap_or(0) + 1_000_000,
        _ => 0,
    }
}

fn nested(levels: usize) -> Bson {
    let mut v = Bson::String("bottom".into());
    for i in 0..levels {
        v = if i % 2 == 0 {
            Bson::Document(doc! {"n": v, "i": i as i32})
        } else {
            Bson::Array(vec![v, Bson::Int32(i as i32)])
        };
    }
    v
}

// ---------------------------------------------------------------------------------------------
// The generator
// ---------------------------------------------------------------------------------------------

const COLLS: &[&str] = &["c0", "c1", "c2", "c3", "cap0", "ts0", "clu0", "ttl0"];
const VIEWS: &[&str] = &["v0", "v1"];

/// Where the generator writes.
const ON_SOURCE: u8 = 0;
const ON_DESTINATION: u8 = 1;
const STOPPED: u8 = 2;

pub struct GenState {
    pub stop: AtomicBool,
    /// `ON_SOURCE`, `ON_DESTINATION` or `STOPPED`.
    pub side: AtomicU8,
    pub ops_on_destination: AtomicU64,
    /// The first errors of the generator's operations on the new source (for the report when
    /// it wrote too little there).
    pub dst_errors: Mutex<Vec<String>>,
    /// The generator's last operations (side, kind, outcome, duration), for the report when it
    /// wrote too little on the new source.
    pub trail: Mutex<std::collections::VecDeque<String>>,
    /// Set by the controller once the forward copy is done (gates renames during the copy).
    pub copy_done: AtomicBool,
    pub ops: Mutex<Counts>,
    pub ddl: Mutex<Counts>,
    /// Reversible plans: the generator moves to the destination when the source refuses.
    reversible: bool,
}

pub struct Generator {
    rng: StdRng,
    shapes: Shapes,
    features: Features,
    dbs: Vec<&'static str>,
    n: u64,
    /// The last step's dice roll and target, to name an operation that hangs.
    last: String,
    /// `ta.bulk`'s seeded document count when the generator writes to it too.
    bulk: Option<usize>,
}

/// Refused by user write blocking (code 371). By name, not by number: "371" also appears in
/// other errors' text (a duplicate key `{u: 371}`, an `_id`), and taking one of those for a
/// block sent the generator to the still-blocked destination during the sync, where it then
/// stopped for good ("refused after writing there"): a reversible seed then never approved its
/// final commit and ran into the time limit.
fn is_blocked(e: &mongodb::error::Error) -> bool {
    let s = e.to_string();
    s.contains("User writes blocked") || s.contains("UserWritesBlocked")
}

type R = Result<(), mongodb::error::Error>;

impl Generator {
    pub fn new(cfg: &Config) -> Generator {
        let mut dbs = vec!["ta", "tb"];
        if cfg.filter() {
            dbs.push("tx");
        }
        Generator {
            rng: StdRng::seed_from_u64(cfg.seed),
            shapes: Shapes {
                dotted: cfg.features.dotted,
            },
            features: cfg.features,
            dbs,
            n: 0,
            last: String::new(),
            bulk: cfg.bulk_writes.then_some(cfg.seed_docs),
        }
    }

    fn db(&mut self) -> &'static str {
        // The filtered-out database gets fewer writes.
        let i = self.rng.random_range(0..self.dbs.len() * 2);
        self.dbs[i % self.dbs.len()]
    }

    fn coll(&mut self) -> &'static str {
        if self.rng.random_bool(0.7) {
            COLLS[self.rng.random_range(0..4)]
        } else {
            COLLS[self.rng.random_range(0..COLLS.len())]
        }
    }

    fn id(&mut self) -> Bson {
        if self.rng.random_bool(0.9) {
            Bson::Int32(self.rng.random_range(0..300))
        } else {
            Bson::String(format!("s{}", self.rng.random_range(0..30)))
        }
    }

    /// One step: draws everything it needs from the RNG first, then runs it. Returns
    /// `(kind, is_ddl, result)`.
    pub async fn step(&mut self, c: &Client, st: &GenState) -> (&'static str, bool, R) {
        self.n += 1;
        let dice = self.rng.random_range(0..1000);
        let mut db = self.db();
        let mut coll_name = self.coll();
        let mut id = self.id();
        if let Some(n) = self.bulk {
            // Data operations only (DDL on `ta.bulk` would end its copy early).
            let share = if st.copy_done.load(Ordering::Relaxed) {
                0.1
            } else {
                0.4
            };
            if self.rng.random_bool(share) && dice < 875 {
                db = "ta";
                coll_name = "bulk";
                id = Bson::Int32(self.rng.random_range(0..(n + n / 20) as i32));
            }
        }
        let coll = c.database(db).collection::<Document>(coll_name);
        self.last = format!("op {} (dice {dice}) on {db}.{coll_name} _id {id}", self.n);
        if coll_name == "ts0" && dice < 900 {
            // Time series: measurements only.
            let d = doc! {"ts": DateTime::from_millis(1_700_000_000_000 + self.rng.random_range(0..100_000_000)),
            "m": {"h": self.rng.random_range(0..4)}, "v": self.shapes.value(&mut self.rng, 2)};
            return ("ts.insert", false, coll.insert_one(d).await.map(|_| ()));
        }
        match dice {
            0..=139 => {
                let d = self.shapes.document(&mut self.rng, id);
                ("insert", false, coll.insert_one(d).await.map(|_| ()))
            }
            140..=179 => {
                let n = self.rng.random_range(2..20);
                let docs: Vec<Document> = (0..n)
                    .map(|_| {
                        let id = self.id();
                        self.shapes.document(&mut self.rng, id)
                    })
                    .collect();
                (
                    "insertMany",
                    false,
                    coll.insert_many(docs).ordered(false).await.map(|_| ()),
                )
            }
            180..=339 => {
                // $set / $unset / $inc / $min / $max / $mul / $rename / $currentDate; type flips.
                let p = self.shapes.path(&mut self.rng);
                let v = self.shapes.value(&mut self.rng, 0);
                let u = match self.rng.random_range(0..9) {
                    0 => doc! {"$unset": {&p: ""}},
                    1 => doc! {"$inc": {"k": 1, "n": self.rng.random_range(-3i64..4)}},
                    2 => doc! {"$min": {"k": self.rng.random_range(0..50)}},
                    3 => doc! {"$mul": {"k": 2}},
                    4 => doc! {"$rename": {"s": "s2"}},
                    5 => {
                        doc! {"$currentDate": {"cd": true}, "$set": {"k": self.rng.random_range(0..50)}}
                    }
                    _ => doc! {"$set": {&p: v}},
                };
                let upsert = self.rng.random_bool(0.2);
                (
                    "update",
                    false,
                    coll.update_one(doc! {"_id": id}, u)
                        .upsert(upsert)
                        .await
                        .map(|_| ()),
                )
            }
            340..=429 => {
                // Arrays: by index, $push (with $each/$position/$slice), $pull, $pop, $addToSet.
                let v = self.shapes.value(&mut self.rng, 2);
                let u = match self.rng.random_range(0..6) {
                    0 => doc! {"$set": {format!("arr.{}", self.rng.random_range(0..8)): v}},
                    1 => doc! {"$push": {"arr": v}},
                    2 => {
                        doc! {"$push": {"arr": {"$each": [1, 2, v], "$position": self.rng.random_range(0..3), "$slice": 8}}}
                    }
                    3 => doc! {"$pull": {"arr": {"$in": [1, 2, Bson::Null]}}},
                    4 => doc! {"$pop": {"arr": if self.rng.random_bool(0.5) { 1 } else { -1 }}},
                    _ => doc! {"$addToSet": {"arr": self.rng.random_range(0..5)}},
                };
                (
                    "update.array",
                    false,
                    coll.update_one(doc! {"_id": id}, u).await.map(|_| ()),
                )
            }
            430..=509 => {
                // Pipeline updates.
                let v = self.shapes.value(&mut self.rng, 1);
                let odd = self.features.dotted && self.rng.random_bool(0.5);
                let field = if odd {
                    ODD_FIELDS[self.rng.random_range(0..ODD_FIELDS.len())]
                } else {
                    PLAIN_FIELDS[self.rng.random_range(0..PLAIN_FIELDS.len())]
                };
                let pipeline = match self.rng.random_range(0..5) {
                    0 => vec![
                        doc! {"$replaceWith": {"$setField": {"field": field, "input": "$$ROOT", "value": {"$literal": v}}}},
                    ],
                    1 => vec![
                        doc! {"$replaceWith": {"$unsetField": {"field": field, "input": "$$ROOT"}}},
                    ],
                    2 => vec![
                        doc! {"$set": {"k": {"$add": [{"$ifNull": [{"$toInt": "$k"}, 0]}, 1]}, "p": {"$literal": v}}},
                    ],
                    3 => vec![doc! {"$unset": ["s", "x"]}],
                    _ => {
                        let mut nd = self.shapes.document(&mut self.rng, id.clone());
                        nd.remove("_id");
                        vec![
                            doc! {"$replaceWith": {"$mergeDocuments": [{"_id": "$_id"}, {"$literal": nd}]}},
                        ]
                    }
                };
                (
                    "update.pipeline",
                    false,
                    coll.update_one(doc! {"_id": id}, pipeline)
                        .await
                        .map(|_| ()),
                )
            }
            510..=559 => {
                let d = self.shapes.document(&mut self.rng, id.clone());
                let upsert = self.rng.random_bool(0.4);
                (
                    "replace",
                    false,
                    coll.replace_one(doc! {"_id": id}, d)
                        .upsert(upsert)
                        .await
                        .map(|_| ()),
                )
            }
            560..=639 => {
                // findAndModify.
                let v = self.shapes.value(&mut self.rng, 1);
                let upsert = self.rng.random_bool(0.3);
                let r = match self.rng.random_range(0..3) {
                    0 => coll
                        .find_one_and_update(
                            doc! {"_id": id},
                            doc! {"$set": {"fm": v}, "$inc": {"k": 1}},
                        )
                        .upsert(upsert)
                        .return_document(ReturnDocument::After)
                        .await
                        .map(|_| ()),
                    1 => {
                        let d = self.shapes.document(&mut self.rng, id.clone());
                        coll.find_one_and_replace(doc! {"_id": id}, d)
                            .upsert(upsert)
                            .await
                            .map(|_| ())
                    }
                    _ => coll.find_one_and_delete(doc! {"_id": id}).await.map(|_| ()),
                };
                ("findAndModify", false, r)
            }
            640..=669 => {
                let k = self.rng.random_range(0..50);
                let v = self.shapes.value(&mut self.rng, 1);
                (
                    "updateMany",
                    false,
                    coll.update_many(
                        doc! {"k": {"$gte": k, "$lt": k + 3}},
                        doc! {"$set": {"m2": v}},
                    )
                    .await
                    .map(|_| ()),
                )
            }
            670..=729 => (
                "delete",
                false,
                coll.delete_one(doc! {"_id": id}).await.map(|_| ()),
            ),
            730..=744 => {
                let k = self.rng.random_range(0..50);
                (
                    "deleteMany",
                    false,
                    coll.delete_many(doc! {"k": k}).await.map(|_| ()),
                )
            }
            745..=759 => {
                // Deep nesting (100 levels).
                let d = doc! {"$set": {"deep": nested(self.rng.random_range(20..100))}};
                (
                    "update.deep",
                    false,
                    coll.update_one(doc! {"_id": id}, d)
                        .upsert(true)
                        .await
                        .map(|_| ()),
                )
            }
            760..=789 if self.features.unique => {
                // Swap `u` between two documents (a unique index on `u` may exist).
                let other = self.id();
                let r = swap_u(c, db, coll_name, id, other).await;
                ("swap.u", false, r)
            }
            790..=869 if self.features.txn => {
                let large = self.features.txn_large && self.rng.random_bool(0.04);
                let n = if large {
                    self.rng.random_range(200..1200)
                } else {
                    self.rng.random_range(2..8)
                };
                let mut ops = Vec::new();
                for _ in 0..n {
                    let db = self.dbs[self.rng.random_range(0..2)];
                    let coll = COLLS[self.rng.random_range(0..4)];
                    let id = self.id();
                    let kind = self.rng.random_range(0..4);
                    let d = self.shapes.document(&mut self.rng, id.clone());
                    ops.push((db, coll, id, kind, d));
                }
                let abort = self.rng.random_bool(0.1);
                let r = transaction(c, ops, abort).await;
                (if large { "txn.large" } else { "txn" }, false, r)
            }
            870..=874 if self.features.big => {
                // A document close to 16 MB.
                let size = self.rng.random_range(12..15) * 1024 * 1024
                    + self.rng.random_range(0..1024 * 1024);
                let fill = self.rng.random::<u8>();
                let d = doc! {"_id": id.clone(), "k": 1, "blob": Binary { subtype: BinarySubtype::Generic, bytes: vec![fill; size] }};
                let r = if self.rng.random_bool(0.5) {
                    coll.replace_one(doc! {"_id": id}, d)
                        .upsert(true)
                        .await
                        .map(|_| ())
                } else {
                    coll.insert_one(d).await.map(|_| ())
                };
                ("big", false, r)
            }
            875..=999 if self.features.ddl => {
                let copying = !st.copy_done.load(Ordering::Relaxed);
                let (kind, r) = self.ddl(c, db, coll_name, copying).await;
                (kind, true, r)
            }
            _ => {
                let d = self.shapes.document(&mut self.rng, id.clone());
                (
                    "upsert",
                    false,
                    coll.update_one(
                        doc! {"_id": id},
                        doc! {"$setOnInsert": d.clone(), "$inc": {"up": 1}},
                    )
                    .upsert(true)
                    .await
                    .map(|_| ()),
                )
            }
        }
    }

    async fn ddl(
        &mut self,
        c: &Client,
        db: &'static str,
        coll: &'static str,
        copying: bool,
    ) -> (&'static str, R) {
        let d = c.database(db);
        let dice = self.rng.random_range(0..100);
        let other_db = self.dbs[self.rng.random_range(0..self.dbs.len())];
        let other = COLLS[self.rng.random_range(0..4)];
        let drop_target = self.rng.random_bool(0.5);
        let num = self.rng.random_range(0..1000);
        let catalog = matches!(dice, 0..=9 | 63..=87);
        if copying && catalog && !self.features.catalog_in_copy {
            return ("catalog.skipped-in-copy", Ok(()));
        }
        let cmd = |x: Document| {
            let d = d.clone();
            async move { d.run_command(x).await.map(|_| ()) }
        };
        match dice {
            0..=9 => {
                // create, with the kind the name says.
                let spec = match coll {
                    "cap0" => {
                        doc! {"create": coll, "capped": true, "size": 65536 + num * 64, "max": 200 + num}
                    }
                    "ts0" => {
                        doc! {"create": coll, "timeseries": {"timeField": "ts", "metaField": "m",
                        "granularity": (["seconds", "minutes", "hours"][num as usize % 3])}}
                    }
                    "clu0" => {
                        doc! {"create": coll, "clusteredIndex": {"key": {"_id": 1}, "unique": true}}
                    }
                    _ if num % 3 == 0 => {
                        doc! {"create": coll, "collation": {"locale": "fr", "strength": 2}}
                    }
                    _ if num % 3 == 1 => {
                        doc! {"create": coll, "validator": {"k": {"$exists": true}},
                        "validationLevel": "moderate", "validationAction": "warn"}
                    }
                    _ => doc! {"create": coll},
                };
                ("create", cmd(spec).await)
            }
            10..=17 => ("drop", cmd(doc! {"drop": coll}).await),
            18..=29 => {
                if copying && !self.features.rename_in_copy {
                    return ("rename.skipped", Ok(()));
                }
                let within = num % 2 == 0;
                let to_db = if within { db } else { other_db };
                let r = c
                    .database("admin")
                    .run_command(doc! {"renameCollection": format!("{db}.{coll}"),
                    "to": format!("{to_db}.{other}"), "dropTarget": drop_target})
                    .await
                    .map(|_| ());
                (
                    match (within, to_db == "tx" || db == "tx") {
                        (true, _) => "rename",
                        (false, true) => "rename.filter",
                        (false, false) => "rename.crossdb",
                    },
                    r,
                )
            }
            30..=31 => {
                let victim = ["tb", "tx"][num as usize % 2];
                if victim == "tx" && !self.dbs.contains(&"tx") {
                    return ("dropDatabase", c.database("tb").drop().await);
                }
                ("dropDatabase", c.database(victim).drop().await)
            }
            32..=54 => {
                let (key, name, extra) = match num % 10 {
                    0 => (doc! {"k": 1}, "k_1", doc! {}),
                    1 => (doc! {"k": -1, "s": 1}, "k_-1_s_1", doc! {}),
                    2 => (doc! {"u": 1}, "u_1", doc! {"unique": self.features.unique}),
                    3 => (
                        doc! {"exp": 1},
                        "exp_ttl",
                        doc! {"expireAfterSeconds": 3600 + num},
                    ),
                    4 => (doc! {"a.b": 1}, "ab_sparse", doc! {"sparse": true}),
                    5 => (
                        doc! {"k": 1},
                        "k_partial",
                        doc! {"partialFilterExpression": {"k": {"$gt": 10}}},
                    ),
                    6 => (
                        doc! {"s": 1},
                        "s_collated",
                        doc! {"collation": {"locale": "en", "strength": 1}},
                    ),
                    7 => (doc! {"$**": 1}, "wildcard", doc! {}),
                    8 => (doc! {"k": "hashed"}, "k_hashed", doc! {}),
                    _ => (doc! {"arr": 1, "k": 1}, "arr_k", doc! {"hidden": true}),
                };
                let mut spec = doc! {"key": key, "name": name};
                spec.extend(extra);
                let kind = if spec.get_bool("unique").unwrap_or(false) {
                    "createIndexes.unique"
                } else {
                    "createIndexes"
                };
                (
                    kind,
                    cmd(doc! {"createIndexes": coll, "indexes": [spec]}).await,
                )
            }
            55..=62 => {
                let name = ["k_1", "u_1", "exp_ttl", "wildcard", "k_hashed", "*"][num as usize % 6];
                (
                    "dropIndexes",
                    cmd(doc! {"dropIndexes": coll, "index": name}).await,
                )
            }
            63..=72 => {
                let spec = match num % 5 {
                    0 => {
                        doc! {"collMod": coll, "validator": {"k": {"$type": "int"}}, "validationLevel": "off"}
                    }
                    1 => {
                        doc! {"collMod": coll, "index": {"name": "exp_ttl", "expireAfterSeconds": 7200 + num}}
                    }
                    2 => doc! {"collMod": coll, "index": {"name": "arr_k", "hidden": num % 2 == 0}},
                    3 => doc! {"collMod": "cap0", "cappedSize": 131072 + num * 64},
                    _ => {
                        doc! {"collMod": coll, "index": {"keyPattern": {"u": 1}, "prepareUnique": true}}
                    }
                };
                ("collMod", cmd(spec).await)
            }
            73..=80 => {
                let v = VIEWS[num as usize % 2];
                (
                    "createView",
                    cmd(doc! {"create": v, "viewOn": other, "pipeline": [
                    {"$match": {"k": {"$gte": num % 40}}}, {"$project": {"arr": 0}}]})
                    .await,
                )
            }
            81..=84 => {
                let v = VIEWS[num as usize % 2];
                (
                    "collMod.view",
                    cmd(doc! {"collMod": v, "viewOn": other, "pipeline": [{"$match": {"k": num % 50}}]})
                        .await,
                )
            }
            85..=87 => (
                "dropView",
                cmd(doc! {"drop": VIEWS[num as usize % 2]}).await,
            ),
            88..=91 => (
                "createIndexes.ttl",
                cmd(doc! {"createIndexes": "ttl0", "indexes": [
                {"key": {"exp": 1}, "name": "exp_ttl", "expireAfterSeconds": 3600}]})
                .await,
            ),
            _ => {
                // A fresh collection with data, later renamed or dropped.
                let docs: Vec<Document> = (0..self.rng.random_range(1..30))
                    .map(|i| {
                        let mut d = self.shapes.document(&mut self.rng, Bson::Int32(i));
                        d.insert("exp", DateTime::from_millis(4_000_000_000_000));
                        d
                    })
                    .collect();
                (
                    "create.withData",
                    d.collection::<Document>(coll)
                        .insert_many(docs)
                        .ordered(false)
                        .await
                        .map(|_| ()),
                )
            }
        }
    }
}

async fn swap_u(c: &Client, db: &str, coll: &str, a: Bson, b: Bson) -> R {
    let col = c.database(db).collection::<Document>(coll);
    let (Some(x), Some(y)) = (
        col.find_one(doc! {"_id": a.clone()}).await?,
        col.find_one(doc! {"_id": b.clone()}).await?,
    ) else {
        return Ok(());
    };
    let (ux, uy) = (x.get("u").cloned(), y.get("u").cloned());
    let (Some(ux), Some(uy)) = (ux, uy) else {
        return Ok(());
    };
    // Through a temporary value, as an application would with a unique index.
    col.update_one(
        doc! {"_id": a.clone()},
        doc! {"$set": {"u": -1_000_000 - id_num(&a)}},
    )
    .await?;
    col.update_one(doc! {"_id": b}, doc! {"$set": {"u": ux}})
        .await?;
    col.update_one(doc! {"_id": a}, doc! {"$set": {"u": uy}})
        .await?;
    Ok(())
}

async fn transaction(
    c: &Client,
    ops: Vec<(&'static str, &'static str, Bson, i32, Document)>,
    abort: bool,
) -> R {
    let mut s = c.start_session().await?;
    s.start_transaction().await?;
    for (db, coll, id, kind, d) in ops {
        let col = c.database(db).collection::<Document>(coll);
        let r = match kind {
            0 => col
                .update_one(
                    doc! {"_id": id.clone()},
                    doc! {"$inc": {"k": 1}, "$set": {"tx": 1}},
                )
                .upsert(true)
                .session(&mut s)
                .await
                .map(|_| ()),
            1 => col
                .replace_one(doc! {"_id": id.clone()}, d)
                .upsert(true)
                .session(&mut s)
                .await
                .map(|_| ()),
            2 => col
                .delete_one(doc! {"_id": id.clone()})
                .session(&mut s)
                .await
                .map(|_| ()),
            _ => col
                .update_one(
                    doc! {"_id": id.clone()},
                    doc! {"$push": {"arr": {"$each": [1], "$slice": -5}}},
                )
                .session(&mut s)
                .await
                .map(|_| ()),
        };
        if let Err(e) = r {
            let _ = s.abort_transaction().await;
            return Err(e);
        }
    }
    if abort {
        s.abort_transaction().await
    } else {
        s.commit_transaction().await
    }
}

/// Runs the generator until `st.stop`, or (forward plans) until the source refuses writes,
/// or (reversible plans) until the destination refuses writes after having accepted some.
async fn generate(mut g: Generator, src: Client, dst: Client, st: Arc<GenState>) {
    let mut wrote_dst = false;
    while !st.stop.load(Ordering::Relaxed) {
        let side = st.side.load(Ordering::Relaxed);
        if side == STOPPED {
            break;
        }
        let c = if side == ON_DESTINATION { &dst } else { &src };
        let t0 = Instant::now();
        let (kind, is_ddl, r) =
            match tokio::time::timeout(Duration::from_secs(30), g.step(c, &st)).await {
                Ok(r) => {
                    let mut trail = st.trail.lock().unwrap();
                    if trail.len() >= 12 {
                        trail.pop_front();
                    }
                    trail.push_back(format!(
                        "{} {} {} in {} ms",
                        if side == ON_DESTINATION { "dst" } else { "src" },
                        r.0,
                        match &r.2 {
                            Ok(()) => "ok".to_string(),
                            Err(e) => e.to_string().chars().take(60).collect(),
                        },
                        t0.elapsed().as_millis()
                    ));
                    r
                }
                Err(_) => {
                    // Named in the report: an operation that never answers stalls the whole
                    // workload (seen after the first commit of reversible seeds).
                    let mut errs = st.dst_errors.lock().unwrap();
                    if errs.len() < 3 {
                        errs.push(format!(
                            "{} on the {}: no answer in 30 s",
                            g.last,
                            if side == ON_DESTINATION {
                                "destination"
                            } else {
                                "source"
                            }
                        ));
                    }
                    continue;
                }
            };
        if side == ON_DESTINATION {
            if let Err(e) = &r {
                let mut errs = st.dst_errors.lock().unwrap();
                if errs.len() < 3 {
                    errs.push(format!(
                        "{kind}: {}",
                        e.to_string().chars().take(200).collect::<String>()
                    ));
                }
            }
        }
        match &r {
            Err(e) if is_blocked(e) => {
                if !st.reversible || (side == ON_DESTINATION && wrote_dst) {
                    st.side.store(STOPPED, Ordering::Relaxed);
                    break;
                }
                st.side.store(1 - side, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(30)).await;
                continue;
            }
            _ => {}
        }
        if side == ON_DESTINATION && r.is_ok() {
            // A blocked cluster accepts a write that changes nothing (an update or delete that
            // matches no document, verified on 6.0.5): only an acknowledged insert proves the
            // new source writable. Taking a no-op for a write made the generator stop for good
            // on the still-blocked destination during the commit (reversible seeds wrote 1–3
            // operations to the new source).
            wrote_dst |= matches!(kind, "insert" | "insertMany" | "ts.insert");
            if wrote_dst {
                st.ops_on_destination.fetch_add(1, Ordering::Relaxed);
            }
        }
        let counts = if is_ddl { &st.ddl } else { &st.ops };
        counts.lock().unwrap().add(kind, r.is_ok());
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// The runner and its faults
// ---------------------------------------------------------------------------------------------

#[derive(Default)]
struct RunnerState {
    child: Option<Child>,
    crash_next: Option<String>,
    incarnations: u64,
    errors: Vec<String>,
    outcome: Option<Result<(), String>>,
}

struct Runner {
    st: Mutex<RunnerState>,
    stop: AtomicBool,
}

impl Runner {
    /// SIGKILLs the running incarnation (if any); returns whether one was running.
    fn kill(&self) -> bool {
        let mut g = self.st.lock().unwrap();
        match g.child.as_mut() {
            Some(c) => c.kill().is_ok(),
            None => false,
        }
    }
}

fn tail(path: &Path, n: usize) -> String {
    let mut s = String::new();
    if let Ok(mut f) = std::fs::File::open(path) {
        let _ = f.read_to_string(&mut s);
    }
    let lines: Vec<&str> = s.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

/// Runs `cutover run PLAN ...` until it exits 0: a killed or crashed incarnation is started
/// again; an exit with an error is recorded and started again, up to 3 times in a row.
fn supervise(r: Arc<Runner>, args: Vec<String>, env: Vec<(&'static str, String)>, logs: PathBuf) {
    let mut consecutive = 0;
    loop {
        if r.stop.load(Ordering::Relaxed) {
            r.st.lock().unwrap().outcome = Some(Err("stopped (time limit)".into()));
            return;
        }
        let (n, crash) = {
            let mut g = r.st.lock().unwrap();
            g.incarnations += 1;
            (g.incarnations, g.crash_next.take())
        };
        let log = logs.join(format!("run-{n:03}.log"));
        let f = std::fs::File::create(&log).expect("runner log");
        let mut cmd = Command::new(common::cutover_bin());
        cmd.args(&args)
            .env("NO_COLOR", "1")
            .env_remove("RUST_LOG")
            .env_remove("CUTOVER_LOG")
            .env_remove(CRASH_ENV)
            .stdin(Stdio::null())
            .stdout(f.try_clone().expect("log"))
            .stderr(f);
        for (k, v) in &env {
            cmd.env(k, v);
        }
        if let Some(p) = &crash {
            cmd.env(CRASH_ENV, p);
        }
        let child = cmd.spawn().expect("spawn cutover");
        r.st.lock().unwrap().child = Some(child);
        let status = loop {
            std::thread::sleep(Duration::from_millis(50));
            let mut g = r.st.lock().unwrap();
            if r.stop.load(Ordering::Relaxed) {
                if let Some(mut c) = g.child.take() {
                    let _ = c.kill();
                    let _ = c.wait();
                }
                g.outcome = Some(Err("stopped (time limit)".into()));
                return;
            }
            let c = g.child.as_mut().expect("child");
            if let Ok(Some(s)) = c.try_wait() {
                g.child = None;
                break s;
            }
        };
        match status.code() {
            Some(0) => {
                r.st.lock().unwrap().outcome = Some(Ok(()));
                return;
            }
            None => {
                // SIGKILL (a kill fault) or SIGABRT (a crash point): run it again.
                consecutive = 0;
            }
            Some(code) => {
                consecutive += 1;
                let msg = format!("exit {code}: {}", tail(&log, 4));
                let mut g = r.st.lock().unwrap();
                g.errors.push(msg.clone());
                if consecutive >= 3 {
                    g.outcome = Some(Err(format!(
                        "`cutover run` failed 3 times in a row; last: {msg}"
                    )));
                    return;
                }
                drop(g);
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }
}

const CRASH_ENV: &str = "CUTOVER_TEST_CRASH_AT";

fn crash_points(reversible: bool) -> Vec<String> {
    let commits: &[usize] = if reversible { &[2, 4] } else { &[1] };
    let mut v = vec!["apply.drain-round".to_string()];
    for c in commits {
        for p in [
            "commit.blocked",
            "commit.draining",
            "commit.committed",
            "commit.before-unblock",
        ] {
            v.push(format!("{p}@{c}"));
        }
    }
    if reversible {
        v.push("reverse.starting@3".into());
    }
    v
}

/// A loopback TCP proxy to one mongod that can drop every connection for a moment (the same
/// design as `tests/it/outage.rs`).
struct Proxy {
    port: u16,
    drop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start(upstream: u16) -> Proxy {
        let listener = bind(0).expect("bind the proxy");
        let port = listener.local_addr().unwrap().port();
        let (tx, rx) = watch::channel(false);
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    continue;
                };
                if *rx.borrow() {
                    drop(client);
                    continue;
                }
                let mut conn_rx = rx.clone();
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(("127.0.0.1", upstream)).await else {
                        return;
                    };
                    tokio::select! {
                        _ = copy_bidirectional(&mut client, &mut server) => {}
                        _ = async {
                            while !*conn_rx.borrow_and_update() {
                                if conn_rx.changed().await.is_err() { break; }
                            }
                        } => {}
                    }
                });
            }
        });
        Proxy {
            port,
            drop: tx,
            task,
        }
    }

    fn uri(&self) -> String {
        format!(
            "mongodb://{ROOT_USER}:{ROOT_PASSWORD}@127.0.0.1:{}/?directConnection=true",
            self.port
        )
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn bind(port: u16) -> std::io::Result<tokio::net::TcpListener> {
    let s = TcpSocket::new_v4()?;
    s.set_reuseaddr(true)?;
    s.bind(std::net::SocketAddr::from(([127, 0, 0, 1], port)))?;
    s.listen(128)
}

async fn primary(rs: &ReplicaSet) -> Option<usize> {
    for i in 0..rs.members.len() {
        let c = rs.member_client(i).await;
        if let Ok(h) = c.database("admin").run_command(doc! {"hello": 1}).await {
            if h.get_bool("isWritablePrimary").unwrap_or(false) {
                return Some(i);
            }
        }
    }
    None
}

/// Steps the primary down and waits (up to 60 s) for another member to take over.
async fn step_down(rs: &ReplicaSet) -> Result<(), String> {
    let Some(old) = primary(rs).await else {
        return Err("no primary".into());
    };
    let c = rs.member_client(old).await;
    let _ = c
        .database("admin")
        .run_command(doc! {"replSetStepDown": 10, "secondaryCatchUpPeriodSecs": 5})
        .await;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(60) {
        if let Some(p) = primary(rs).await {
            if p != old {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err("no new primary after 60 s".into())
}

async fn fail_command(rs: &ReplicaSet, rng: &mut StdRng, catalog: bool) -> Result<String, String> {
    let Some(p) = primary(rs).await else {
        return Err("no primary".into());
    };
    let c = rs.member_client(p).await;
    let cmds = [
        "insert",
        "update",
        "delete",
        "find",
        "getMore",
        "aggregate",
        "createIndexes",
        "create",
        "collMod",
        "drop",
        "findAndModify",
    ];
    let pick: Vec<&str> = cmds
        .iter()
        .filter(|_| rng.random_bool(0.4))
        .copied()
        .filter(|c| {
            catalog
                || !matches!(
                    *c,
                    "createIndexes" | "create" | "collMod" | "drop" | "findAndModify" | "update"
                )
        })
        .collect();
    // Without `catalog`, never `update`: the state store's writes are updates (see
    // `Features::fail_catalog`).
    let pick = match (pick.is_empty(), catalog) {
        (false, _) => pick,
        (true, true) => vec!["insert", "update"],
        (true, false) => vec!["insert", "delete"],
    };
    let times = rng.random_range(1..4);
    let mut data = doc! {"failCommands": pick.clone(), "appName": "cutover"};
    let what = if rng.random_bool(0.3) {
        data.insert("closeConnection", true);
        "closeConnection".to_string()
    } else {
        let code = [91, 189, 11600, 10107][rng.random_range(0..4)];
        data.insert("errorCode", code);
        format!("error {code}")
    };
    c.database("admin")
        .run_command(
            doc! {"configureFailPoint": "failCommand", "mode": {"times": times}, "data": data},
        )
        .await
        .map_err(|e| e.to_string())?;
    Ok(format!("{what} ×{times} on {pick:?}"))
}

async fn clear_fail_points(rs: &ReplicaSet) {
    for i in 0..rs.members.len() {
        let c = rs.member_client(i).await;
        let _ = c
            .database("admin")
            .run_command(doc! {"configureFailPoint": "failCommand", "mode": "off"})
            .await;
    }
}

// ---------------------------------------------------------------------------------------------
// Comparing the clusters
// ---------------------------------------------------------------------------------------------

async fn docs_of(c: &Client, db: &str, coll: &str, natural: bool) -> Result<Vec<Vec<u8>>, String> {
    let col = c
        .database(db)
        .collection::<mongodb::bson::RawDocumentBuf>(coll);
    let sort = if natural {
        doc! {"$natural": 1}
    } else {
        doc! {"_id": 1}
    };
    let cur = col
        .find(doc! {})
        .sort(sort)
        .await
        .map_err(|e| e.to_string())?;
    let v: Vec<mongodb::bson::RawDocumentBuf> =
        cur.try_collect().await.map_err(|e| e.to_string())?;
    Ok(v.into_iter().map(|d| d.into_bytes()).collect())
}

fn cut(s: &str, n: usize) -> &str {
    let mut i = n.min(s.len());
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    &s[..i]
}

fn show_raw(b: &[u8]) -> String {
    let s = mongodb::bson::RawDocument::from_bytes(b)
        .map(|d| format!("{d:?}"))
        .unwrap_or_default();
    if s.len() > 600 {
        format!("{}… ({} bytes)", cut(&s, 600), b.len())
    } else {
        s
    }
}

/// Every difference between the selected namespaces of both clusters (bounded).
pub async fn compare(
    s: &Client,
    d: &Client,
    selector: &cutover::plan::NamespaceSelector,
) -> Vec<String> {
    use cutover::engine::catalog::{compare_specs, list_selected, NsKind};
    let mut out = Vec::new();
    let (a, b) = match (
        list_selected(s, selector).await,
        list_selected(d, selector).await,
    ) {
        (Ok(a), Ok(b)) => (a, b),
        (x, y) => return vec![format!("listing failed: {:?} / {:?}", x.err(), y.err())],
    };
    let names = |v: &[cutover::engine::catalog::NsSpec]| {
        v.iter().map(|s| s.ns.to_string()).collect::<Vec<_>>()
    };
    let (na, nb) = (names(&a), names(&b));
    for n in &na {
        if !nb.contains(n) {
            out.push(format!("`{n}` exists only on the source"));
        }
    }
    for n in &nb {
        if !na.contains(n) {
            out.push(format!("`{n}` exists only on the destination"));
        }
    }
    for x in &a {
        let Some(y) = b.iter().find(|y| y.ns == x.ns) else {
            continue;
        };
        out.extend(compare_specs(x, y));
        let coll = match x.kind {
            NsKind::View => continue,
            NsKind::Timeseries => format!("system.buckets.{}", x.ns.coll),
            NsKind::Collection => x.ns.coll.clone(),
        };
        let natural = x.options().get_bool("capped").unwrap_or(false);
        let (p, q) = match (
            docs_of(s, &x.ns.db, &coll, natural).await,
            docs_of(d, &x.ns.db, &coll, natural).await,
        ) {
            (Ok(p), Ok(q)) => (p, q),
            (e1, e2) => {
                out.push(format!(
                    "`{}.{coll}`: reading failed: {:?} / {:?}",
                    x.ns.db,
                    e1.err(),
                    e2.err()
                ));
                continue;
            }
        };
        if p.len() != q.len() {
            out.push(format!(
                "`{}.{coll}`: {} documents on the source, {} on the destination; _ids only on the source: {:?}; only on the destination: {:?}",
                x.ns.db,
                p.len(),
                q.len(),
                common::ids_only_in(&p, &q),
                common::ids_only_in(&q, &p)
            ));
            continue;
        }
        let mut shown = 0;
        for (i, (u, v)) in p.iter().zip(q.iter()).enumerate() {
            if u != v {
                shown += 1;
                if shown <= 3 {
                    out.push(format!(
                        "`{}.{coll}` document #{i} differs:\n      source:      {}\n      destination: {}",
                        x.ns.db,
                        show_raw(u),
                        show_raw(v)
                    ));
                }
            }
        }
        if shown > 3 {
            out.push(format!(
                "`{}.{coll}`: {} documents differ in all",
                x.ns.db, shown
            ));
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// One seed
// ---------------------------------------------------------------------------------------------

fn plan_body(cfg: &Config) -> String {
    let mut s =
        String::from("[options]\nwrite_blocking = \"source-and-destination\"\nmax_lag = \"2s\"\n");
    if cfg.reversible {
        s.push_str("reversible = true\n");
    }
    if cfg.filter() {
        s.push_str("\n[[options.exclude]]\ndatabase = \"tx\"\n");
    }
    s.push_str("\n[[steps]]\nkind = \"sync\"\n");
    if cfg.reversible {
        s.push_str("\n[[steps]]\nkind = \"validate-indexes\"\n");
    }
    s.push_str("\n[[steps]]\nkind = \"commit\"\napproval = \"manual\"\ntimeout = \"10m\"\n");
    if cfg.reversible {
        s.push_str("\n[[steps]]\nkind = \"reverse\"\n");
        s.push_str("\n[[steps]]\nkind = \"commit\"\napproval = \"manual\"\ntimeout = \"10m\"\n");
    }
    s
}

async fn create_gen_user(rs: &ReplicaSet) {
    rs.root_client()
        .await
        .database("admin")
        .run_command(doc! {"createUser": GEN_USER, "pwd": GEN_PASSWORD,
        "roles": ["readWriteAnyDatabase", "dbAdminAnyDatabase"], "writeConcern": {"w": "majority"}})
        .await
        .expect("create the generator's user");
}

async fn gen_client(rs: &ReplicaSet) -> Client {
    common::client(&format!(
        "{}&w=majority",
        rs.uri_for(GEN_USER, GEN_PASSWORD)
    ))
    .await
}

async fn lane_copy_done(d: &Client, dir: &str) -> bool {
    d.database(STATE_DB)
        .collection::<Document>("lanes")
        .find_one(doc! {"_id": format!("{PLAN_NAME}/{dir}")})
        .await
        .ok()
        .flatten()
        .and_then(|l| l.get_bool("copy_done").ok())
        .unwrap_or(false)
}

fn approve(plan: &str, env: &[(&'static str, String)], step: usize) -> Result<(), String> {
    let o = common::run_cutover(
        &["approve", plan, "--step", &step.to_string()],
        &common::env_refs(env),
    );
    if o.status.code() == Some(0) {
        Ok(())
    } else {
        Err(common::show(&o))
    }
}

/// Runs one seed end to end and reports; never panics on a finding (only on harness errors).
pub async fn run(cfg: &Config) -> Report {
    let started = Instant::now();
    let members = if cfg.faults.stepdown { 3 } else { 1 };
    // 1 GB of WiredTiger cache, not the suite's 0.25 GB: once the generator also writes its
    // 12–16 MB documents and transactions of hundreds of operations to the new source, a
    // 0.25 GB destination stalled for good (soak 2026-11-30, seed 10: dirty bytes above the
    // eviction trigger, the oldest timestamp pinned for five minutes, every operation waiting,
    // mongod at 100% CPU). That is the test mongod's limit, not cutover's.
    let opts = RsOptions {
        members,
        cache_gb: 1.0,
        ..Default::default()
    };
    let (src, dst) = tokio::join!(
        ReplicaSet::start_with(opts.clone()),
        ReplicaSet::start_with(opts)
    );
    tokio::join!(create_gen_user(&src), create_gen_user(&dst));
    let (gs, gd) = (gen_client(&src).await, gen_client(&dst).await);
    let (s, d) = (src.root_client().await, dst.root_client().await);

    // Seed: a bulk collection the copy takes a while over, then the generator's prefix.
    let mut seed_rng = StdRng::seed_from_u64(cfg.seed ^ 0xb01c);
    let shapes = Shapes {
        dotted: cfg.features.dotted,
    };
    let bulk = s.database("ta").collection::<Document>("bulk");
    for chunk in 0..cfg.seed_docs.div_ceil(1000) {
        let docs: Vec<Document> = (chunk * 1000..((chunk + 1) * 1000).min(cfg.seed_docs))
            .map(|i| {
                let mut d = shapes.document(&mut seed_rng, Bson::Int32(i as i32));
                d.insert("pad", "p".repeat(seed_rng.random_range(10..400)));
                d
            })
            .collect();
        bulk.insert_many(docs).await.expect("seed bulk");
    }
    let gst = Arc::new(GenState {
        stop: AtomicBool::new(false),
        side: AtomicU8::new(ON_SOURCE),
        ops_on_destination: AtomicU64::new(0),
        dst_errors: Mutex::new(Vec::new()),
        trail: Mutex::new(std::collections::VecDeque::new()),
        copy_done: AtomicBool::new(true),
        ops: Mutex::new(Counts::default()),
        ddl: Mutex::new(Counts::default()),
        reversible: cfg.reversible,
    });
    let mut generator = Generator::new(cfg);
    for _ in 0..cfg.pre_ops {
        let (kind, is_ddl, r) = generator.step(&gs, &gst).await;
        let counts = if is_ddl { &gst.ddl } else { &gst.ops };
        counts.lock().unwrap().add(kind, r.is_ok());
    }
    gst.copy_done.store(false, Ordering::Relaxed);

    // Proxies (single-node sets only: a replica-set URI would go around them).
    let proxies = if cfg.faults.proxy && members == 1 {
        Some((
            Proxy::start(src.members[0].port).await,
            Proxy::start(dst.members[0].port).await,
        ))
    } else {
        None
    };
    let env: Vec<(&'static str, String)> = match &proxies {
        Some((p, q)) => vec![("SOURCE_URI", p.uri()), ("DESTINATION_URI", q.uri())],
        None => common::root_env(&src, &dst),
    };
    let logs_tmp;
    let log_dir = match &cfg.log_dir {
        Some(p) => {
            std::fs::create_dir_all(p).expect("log dir");
            p.clone()
        }
        None => {
            logs_tmp = tempfile::Builder::new()
                .prefix("cutover-torture-")
                .tempdir()
                .expect("tempdir");
            logs_tmp.path().to_path_buf()
        }
    };
    let plan_path = log_dir.join("plan.toml");
    std::fs::write(&plan_path, common::plan_text(PLAN_NAME, &plan_body(cfg))).expect("write plan");
    let plan = plan_path.display().to_string();

    // The runner.
    let runner = Arc::new(Runner {
        st: Mutex::new(RunnerState::default()),
        stop: AtomicBool::new(false),
    });
    let args: Vec<String> = [
        "run",
        plan.as_str(),
        "--docs-per-range",
        "250",
        "--copy-concurrency",
        "2",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let sup = {
        let (r, env, logs) = (runner.clone(), env.clone(), log_dir.clone());
        std::thread::spawn(move || supervise(r, args, env, logs))
    };

    // The generator.
    let gen_task = tokio::spawn(generate(generator, gs.clone(), gd.clone(), gst.clone()));

    // Faults.
    let faults = Arc::new(Mutex::new(Counts::default()));
    let faults_done = Arc::new(AtomicBool::new(false));
    let src = Arc::new(src);
    let dst = Arc::new(dst);
    let fault_task = {
        let (faults, done, runner, src, dst) = (
            faults.clone(),
            faults_done.clone(),
            runner.clone(),
            src.clone(),
            dst.clone(),
        );
        let cfgf = cfg.faults;
        let fail_catalog = cfg.features.fail_catalog;
        let max_faults = cfg.max_faults;
        let mut rng = StdRng::seed_from_u64(cfg.seed ^ 0xfa17);
        let every = cfg.fault_every.as_millis() as u64;
        let points = crash_points(cfg.reversible);
        let proxies = proxies
            .as_ref()
            .map(|(p, q)| (p.drop.clone(), q.drop.clone()));
        tokio::spawn(async move {
            let mut kinds = Vec::new();
            if cfgf.kill {
                kinds.push("kill");
            }
            if cfgf.crash {
                kinds.push("crash");
            }
            if cfgf.stepdown {
                kinds.push("stepdown");
            }
            if proxies.is_some() {
                kinds.push("proxy");
            }
            if cfgf.fail_command {
                kinds.push("failCommand");
            }
            if kinds.is_empty() {
                return;
            }
            loop {
                let wait = rng.random_range(every / 2..every * 3 / 2);
                let kind = kinds[rng.random_range(0..kinds.len())];
                let side_src = rng.random_bool(0.5);
                let point = points[rng.random_range(0..points.len())].clone();
                let outage = rng.random_range(200..2500);
                let mut sub = StdRng::seed_from_u64(rng.random());
                tokio::time::sleep(Duration::from_millis(wait)).await;
                if done.load(Ordering::Relaxed) || faults.lock().unwrap().total() >= max_faults {
                    return;
                }
                let (name, ok) = match kind {
                    "kill" => ("kill -9", runner.kill()),
                    "crash" => {
                        runner.st.lock().unwrap().crash_next = Some(point.clone());
                        ("crash point", runner.kill())
                    }
                    "stepdown" => {
                        let rs = if side_src { &src } else { &dst };
                        let r = step_down(rs).await;
                        (
                            if side_src {
                                "stepdown.source"
                            } else {
                                "stepdown.destination"
                            },
                            r.is_ok(),
                        )
                    }
                    "proxy" => {
                        let (p, q) = proxies.as_ref().expect("proxies");
                        let tx = if side_src { p } else { q };
                        tx.send_replace(true);
                        tokio::time::sleep(Duration::from_millis(outage)).await;
                        tx.send_replace(false);
                        (
                            if side_src {
                                "proxy.source"
                            } else {
                                "proxy.destination"
                            },
                            true,
                        )
                    }
                    _ => {
                        let rs = if side_src { &src } else { &dst };
                        let r = fail_command(rs, &mut sub, fail_catalog).await;
                        (
                            if side_src {
                                "failCommand.source"
                            } else {
                                "failCommand.destination"
                            },
                            r.is_ok(),
                        )
                    }
                };
                faults.lock().unwrap().add(name, ok);
            }
        })
    };

    // The controller: approvals, the copy-done flag, the time limit.
    let env_c = env.clone();
    let mut approved_first = false;
    let mut approved_last = !cfg.reversible;
    let mut copy_done_at: Option<Instant> = None;
    let mut dst_since: Option<Instant> = None;
    let mut first_approved_at: Option<Instant> = None;
    let mut notes: Vec<String> = Vec::new();
    let first_commit = if cfg.reversible { 2 } else { 1 };
    let unfinished;
    loop {
        if let Some(o) = runner.st.lock().unwrap().outcome.clone() {
            unfinished = o.err();
            break;
        }
        if started.elapsed() > cfg.limit {
            runner.stop.store(true, Ordering::Relaxed);
            // The supervisor records the outcome once it stopped its runner; if it does not
            // within a minute (its thread died), end the seed anyway rather than hang.
            if started.elapsed() > cfg.limit + Duration::from_secs(60) {
                unfinished =
                    Some("stopped (time limit; the runner's supervisor did not stop)".into());
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        }
        if copy_done_at.is_none() && lane_copy_done(&d, "forward").await {
            copy_done_at = Some(Instant::now());
            gst.copy_done.store(true, Ordering::Relaxed);
        }
        if !approved_first
            && copy_done_at.is_some_and(|t| t.elapsed() >= Duration::from_secs(cfg.apply_secs))
        {
            let (p, e) = (plan.clone(), env_c.clone());
            match tokio::task::spawn_blocking(move || approve(&p, &e, first_commit))
                .await
                .unwrap()
            {
                Ok(()) => {
                    approved_first = true;
                    first_approved_at = Some(Instant::now());
                }
                Err(e) => eprintln!("approve failed (will retry): {e}"),
            }
        }
        if !approved_last {
            if dst_since.is_none() && gst.ops_on_destination.load(Ordering::Relaxed) > 0 {
                dst_since = Some(Instant::now());
            }
            // Fallback: the generator has not written 20 operations to the new source 45 s
            // after the first approval (it stopped, or the new source is slow): approve anyway
            // and say so.
            let stalled = gst.ops_on_destination.load(Ordering::Relaxed) < 20
                && first_approved_at
                    .is_some_and(|t: Instant| t.elapsed() > Duration::from_secs(45));
            if stalled {
                notes.push(format!(
                    "the generator wrote {} operations to the new source; the final commit was approved after 45 s; its first errors there: {:?}; generator {}; its last operations: {:?}",
                    gst.ops_on_destination.load(Ordering::Relaxed),
                    gst.dst_errors.lock().unwrap(),
                    match gst.side.load(Ordering::Relaxed) {
                        ON_SOURCE => "on the source",
                        ON_DESTINATION => "on the destination",
                        _ => "stopped (refused)",
                    },
                    gst.trail.lock().unwrap()
                ));
            }
            if stalled
                || (dst_since.is_some_and(|t| t.elapsed() >= Duration::from_secs(cfg.apply_secs))
                    && gst.ops_on_destination.load(Ordering::Relaxed) >= 20)
            {
                let (p, e) = (plan.clone(), env_c.clone());
                match tokio::task::spawn_blocking(move || approve(&p, &e, 4))
                    .await
                    .unwrap()
                {
                    Ok(()) => approved_last = true,
                    Err(e) => eprintln!("approve failed (will retry): {e}"),
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let _ = tokio::task::spawn_blocking(move || sup.join()).await;
    faults_done.store(true, Ordering::Relaxed);
    fault_task.abort();
    let _ = fault_task.await;
    gst.stop.store(true, Ordering::Relaxed);
    let gen_end = match gen_task.await {
        Ok(()) => None,
        Err(e) => Some(format!("the generator failed: {e}")),
    };
    let gen_side = match gst.side.load(Ordering::Relaxed) {
        ON_SOURCE => "on the source",
        ON_DESTINATION => "on the destination",
        _ => "stopped (refused)",
    };
    if let Some((p, q)) = &proxies {
        p.drop.send_replace(false);
        q.drop.send_replace(false);
    }
    clear_fail_points(&src).await;
    clear_fail_points(&dst).await;

    // The end state.
    let exclude = if cfg.filter() {
        vec![cutover::plan::model::NamespaceFilter {
            database: Some("tx".into()),
            ..Default::default()
        }]
    } else {
        vec![]
    };
    let selector =
        cutover::plan::NamespaceSelector::new(&[], &exclude, STATE_DB).expect("selector");
    let (s, d) = (src.root_client().await, dst.root_client().await);
    let differences = if unfinished.is_none() {
        compare(&s, &d, &selector).await
    } else {
        Vec::new()
    };
    let verify = if unfinished.is_none() {
        let (p, e) = (plan.clone(), common::root_env(&src, &dst));
        let o = tokio::task::spawn_blocking(move || {
            common::run_cutover(&["verify", &p, "--format", "json"], &common::env_refs(&e))
        })
        .await
        .unwrap();
        if o.status.code() == Some(0) {
            None
        } else {
            let out = String::from_utf8_lossy(&o.stdout);
            let err = String::from_utf8_lossy(&o.stderr);
            Some(format!(
                "exit {:?}: {} {}",
                o.status.code(),
                cut(&out, 1500),
                cut(&err, 500)
            ))
        }
    } else {
        None
    };
    let st = runner.st.lock().unwrap();
    let report = Report {
        seed: cfg.seed,
        reversible: cfg.reversible,
        faults_cfg: cfg.faults.names(),
        features_cfg: cfg.features.names(),
        ops: gst.ops.lock().unwrap().clone(),
        ddl: gst.ddl.lock().unwrap().clone(),
        faults: faults.lock().unwrap().clone(),
        incarnations: st.incarnations,
        runner_errors: st.errors.iter().cloned().chain(notes).collect(),
        differences,
        verify,
        unfinished: match (unfinished, gen_end) {
            (Some(u), _) => Some(format!(
                "{u} (generator {gen_side}, {} operations on the destination)",
                gst.ops_on_destination.load(Ordering::Relaxed)
            )),
            (None, g) => g,
        },
        new_source_ops: cfg
            .reversible
            .then(|| gst.ops_on_destination.load(Ordering::Relaxed)),
        elapsed: started.elapsed(),
        log_dir: if cfg.log_dir.is_some() {
            log_dir.display().to_string()
        } else {
            "(temporary, removed)".into()
        },
    };
    drop(st);
    if !report.passed() && cfg.log_dir.is_none() {
        // Keep the logs of a failed seed.
        let keep = std::env::temp_dir().join(format!("cutover-torture-seed-{}", cfg.seed));
        let _ = std::fs::remove_dir_all(&keep);
        let _ = copy_dir(&log_dir, &keep);
        let mut r = report;
        r.log_dir = keep.display().to_string();
        return r;
    }
    report
}

fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        std::fs::copy(e.path(), to.join(e.file_name()))?;
    }
    Ok(())
}
