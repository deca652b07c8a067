//! Test harness: throwaway MongoDB replica sets on free loopback ports, with keyFile auth,
//! a small WiredTiger cache, a `root` user (holds `bypassWriteBlockingMode`) and an `app`
//! user with `readWriteAnyDatabase` (does not). Processes are killed when the `ReplicaSet`
//! is dropped, also when the test panics, and die with the test process (PR_SET_PDEATHSIG).
//!
//! Tests that need mongod FAIL when it is missing: run `./scripts/install-mongod.sh` or set
//! `MONGOD=/path/to/mongod`.
#![allow(dead_code)]

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use mongodb::bson::{doc, Document};
use mongodb::options::ClientOptions;
use mongodb::Client;

pub const ROOT_USER: &str = "root";
pub const ROOT_PASSWORD: &str = "r00t-Secret-pw";
pub const APP_USER: &str = "app";
pub const APP_PASSWORD: &str = "app-Secret-pw";

/// The `mongod` binary: `$MONGOD`, else the one `scripts/install-mongod.sh` installs.
pub fn mongod_path() -> PathBuf {
    if let Some(p) = std::env::var_os("MONGOD") {
        return PathBuf::from(p);
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join(".mongod/bin/mongod")
}

/// The `cutover` binary built for these tests.
pub fn cutover_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_cutover"))
}

fn require_mongod() -> PathBuf {
    let p = mongod_path();
    assert!(
        p.exists(),
        "this test needs MongoDB's mongod, and {} does not exist.\n\
         Run ./scripts/install-mongod.sh (or ./scripts/test.sh, which does), or set MONGOD=/path/to/mongod.",
        p.display()
    );
    p
}

pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind a free loopback port");
    l.local_addr().expect("local addr").port()
}

#[derive(Clone, Debug)]
pub struct RsOptions {
    pub members: usize,
    /// Oplog size in MB (mongod's minimum is 990 MB unless set lower by `replSetResizeOplog`;
    /// `--oplogSize` accepts smaller values for tests).
    pub oplog_mb: u32,
    pub cache_gb: f64,
    /// `--syncdelay` (seconds between checkpoints; mongod truncates its oplog only up to the
    /// last checkpoint, so a small oplog needs frequent ones to truncate promptly).
    pub syncdelay: Option<u32>,
    /// Each member's dbpath on its own tmpfs of this many MB (a small disk that can fill up;
    /// mounting needs root). Unmounted when the set is dropped.
    pub tmpfs_mb: Option<u32>,
    /// WiredTiger closes a file handle idle for this many seconds (mongod's default is 600):
    /// lets a member hold more collections than this machine's open-file limit (20,000),
    /// as long as they are not all in use at once (the breadth benchmark at 10,000).
    pub close_idle_files_secs: Option<u32>,
}

impl Default for RsOptions {
    fn default() -> Self {
        Self {
            members: 1,
            oplog_mb: 256,
            cache_gb: 0.25,
            syncdelay: None,
            tmpfs_mb: None,
            close_idle_files_secs: None,
        }
    }
}

pub struct Member {
    pub port: u16,
    pub dbpath: PathBuf,
    pub child: Option<Child>,
    args: Vec<String>,
}

/// A running replica set. Dropping it kills its processes and removes its files.
pub struct ReplicaSet {
    pub name: String,
    pub members: Vec<Member>,
    dir: tempfile::TempDir,
    /// The members' dbpaths are tmpfs mounts (unmounted on drop).
    tmpfs: bool,
}

impl ReplicaSet {
    pub async fn start() -> Self {
        Self::start_with(RsOptions::default()).await
    }

    pub async fn start_with(opts: RsOptions) -> Self {
        let mongod = require_mongod();
        let dir = tempfile::Builder::new()
            .prefix("cutover-rs-")
            .tempdir()
            .expect("temp dir");
        let keyfile = dir.path().join("keyfile");
        std::fs::write(&keyfile, "cutoverTestKeyFile0123456789abcdefABCDEF")
            .expect("write keyfile");
        std::fs::set_permissions(
            &keyfile,
            std::os::unix::fs::PermissionsExt::from_mode(0o400),
        )
        .expect("chmod keyfile");
        let name = format!("rs{}", free_port());
        let mut members = Vec::new();
        for i in 0..opts.members {
            let dbpath = dir.path().join(format!("m{i}"));
            std::fs::create_dir_all(&dbpath).expect("dbpath");
            if let Some(mb) = opts.tmpfs_mb {
                let st = Command::new("mount")
                    .args(["-t", "tmpfs", "-o", &format!("size={mb}m"), "tmpfs"])
                    .arg(&dbpath)
                    .status()
                    .expect("run mount");
                assert!(
                    st.success(),
                    "mounting a {mb} MB tmpfs on {} failed (this test needs root)",
                    dbpath.display()
                );
            }
            members.push(Member {
                port: 0,
                dbpath,
                child: None,
                args: Vec::new(),
            });
        }
        let mut rs = ReplicaSet {
            name,
            members,
            dir,
            tmpfs: opts.tmpfs_mb.is_some(),
        };
        for i in 0..opts.members {
            rs.spawn_member(i, &mongod, &keyfile, &opts);
        }
        rs.initiate().await;
        rs
    }

    fn spawn_member(&mut self, i: usize, mongod: &Path, keyfile: &Path, opts: &RsOptions) {
        for attempt in 0..5 {
            let port = free_port();
            let m = &mut self.members[i];
            let log = m.dbpath.join("mongod.log");
            m.args = vec![
                "--replSet".into(),
                self.name.clone(),
                "--port".into(),
                port.to_string(),
                "--bind_ip".into(),
                "127.0.0.1".into(),
                "--dbpath".into(),
                m.dbpath.display().to_string(),
                "--keyFile".into(),
                keyfile.display().to_string(),
                "--wiredTigerCacheSizeGB".into(),
                opts.cache_gb.to_string(),
                "--oplogSize".into(),
                opts.oplog_mb.to_string(),
                "--setParameter".into(),
                "enableTestCommands=1".into(),
                "--setParameter".into(),
                "diagnosticDataCollectionEnabled=false".into(),
                "--unixSocketPrefix".into(),
                m.dbpath.display().to_string(),
                "--logpath".into(),
                log.display().to_string(),
            ];
            if let Some(d) = opts.syncdelay {
                m.args.extend(["--syncdelay".to_string(), d.to_string()]);
            }
            if let Some(secs) = opts.close_idle_files_secs {
                for p in [
                    format!("wiredTigerFileHandleCloseIdleTime={secs}"),
                    "wiredTigerFileHandleCloseScanInterval=1".to_string(),
                    "wiredTigerFileHandleCloseMinimum=1000".to_string(),
                ] {
                    m.args.extend(["--setParameter".to_string(), p]);
                }
            }
            let child = spawn_with_deathsig(mongod, &m.args);
            m.port = port;
            m.child = Some(child);
            if wait_listening(
                port,
                m.child.as_mut().expect("child"),
                Duration::from_secs(60),
            ) {
                return;
            }
            let tail = std::fs::read_to_string(&log).unwrap_or_default();
            if let Some(mut c) = m.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
            if !tail.contains("Address already in use") || attempt == 4 {
                panic!(
                    "mongod on port {port} did not start; log tail:\n{}",
                    last_lines(&tail, 30)
                );
            }
        }
    }

    /// Restarts a member that was stopped with [`ReplicaSet::kill_member`], on the same port.
    pub fn restart_member(&mut self, i: usize) {
        let mongod = require_mongod();
        let m = &mut self.members[i];
        let child = spawn_with_deathsig(&mongod, &m.args);
        m.child = Some(child);
        assert!(
            wait_listening(
                m.port,
                m.child.as_mut().expect("child"),
                Duration::from_secs(60)
            ),
            "mongod member {i} did not restart"
        );
    }

    /// SIGKILLs one member.
    pub fn kill_member(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    async fn initiate(&self) {
        let hosts: Vec<Document> = self
            .members
            .iter()
            .enumerate()
            .map(|(i, m)| {
                doc! {"_id": i as i32, "host": format!("127.0.0.1:{}", m.port),
                "priority": if i == 0 { 2 } else { 1 }}
            })
            .collect();
        // The localhost exception allows replSetInitiate and the first user before auth exists.
        let direct = direct_client(self.members[0].port, None).await;
        direct
            .database("admin")
            .run_command(doc! {"replSetInitiate": {"_id": &self.name, "members": hosts}})
            .await
            .expect("replSetInitiate");
        wait_until(
            Duration::from_secs(60),
            "the first member to become primary",
            || async {
                direct
                    .database("admin")
                    .run_command(doc! {"hello": 1})
                    .await
                    .map(|h| h.get_bool("isWritablePrimary").unwrap_or(false))
                    .unwrap_or(false)
            },
        )
        .await;
        direct
            .database("admin")
            .run_command(
                doc! {"createUser": ROOT_USER, "pwd": ROOT_PASSWORD, "roles": ["root"],
                "writeConcern": {"w": "majority"}},
            )
            .await
            .expect("create root user");
        let root = self.root_client().await;
        root.database("admin")
            .run_command(doc! {"createUser": APP_USER, "pwd": APP_PASSWORD,
            "roles": ["readWriteAnyDatabase"], "writeConcern": {"w": "majority"}})
            .await
            .expect("create app user");
        if self.members.len() > 1 {
            let n = self.members.len();
            wait_until(
                Duration::from_secs(90),
                "all members to be PRIMARY or SECONDARY",
                || async {
                    match root
                        .database("admin")
                        .run_command(doc! {"replSetGetStatus": 1})
                        .await
                    {
                        Ok(s) => s
                            .get_array("members")
                            .map(|ms| {
                                ms.iter()
                                    .filter_map(|m| m.as_document())
                                    .filter(|m| matches!(m.get_i32("state"), Ok(1) | Ok(2)))
                                    .count()
                                    == n
                            })
                            .unwrap_or(false),
                        Err(_) => false,
                    }
                },
            )
            .await;
        }
    }

    pub fn hosts(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("127.0.0.1:{}", m.port))
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn uri_for(&self, user: &str, password: &str) -> String {
        format!(
            "mongodb://{user}:{password}@{}/?replicaSet={}",
            self.hosts(),
            self.name
        )
    }

    /// The `root` user: may write while user writes are blocked.
    pub fn root_uri(&self) -> String {
        self.uri_for(ROOT_USER, ROOT_PASSWORD)
    }

    /// The `app` user (`readWriteAnyDatabase`): refused while user writes are blocked.
    pub fn app_uri(&self) -> String {
        self.uri_for(APP_USER, APP_PASSWORD)
    }

    pub async fn root_client(&self) -> Client {
        client(&self.root_uri()).await
    }

    pub async fn app_client(&self) -> Client {
        client(&self.app_uri()).await
    }

    /// A root client connected directly to member `i`.
    pub async fn member_client(&self, i: usize) -> Client {
        direct_client(self.members[i].port, Some((ROOT_USER, ROOT_PASSWORD))).await
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for ReplicaSet {
    fn drop(&mut self) {
        for m in &mut self.members {
            if let Some(mut c) = m.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
            if self.tmpfs {
                let _ = Command::new("umount").arg(&m.dbpath).status();
            }
        }
    }
}

pub fn spawn_with_deathsig(bin: &Path, args: &[String]) -> Child {
    let mut cmd = Command::new(bin);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: prctl is async-signal-safe; it only asks the kernel to SIGKILL the child when
    // the thread that spawned it exits, so a crashed test leaves no mongod behind.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    cmd.spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()))
}

pub fn wait_listening(port: u16, child: &mut Child, limit: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

fn last_lines(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

pub async fn client(uri: &str) -> Client {
    let mut o = ClientOptions::parse(uri).await.expect("parse test uri");
    o.server_selection_timeout = Some(Duration::from_secs(30));
    Client::with_options(o).expect("client")
}

pub async fn direct_client(port: u16, auth: Option<(&str, &str)>) -> Client {
    let uri = match auth {
        Some((u, p)) => format!("mongodb://{u}:{p}@127.0.0.1:{port}/?directConnection=true"),
        None => format!("mongodb://127.0.0.1:{port}/?directConnection=true"),
    };
    client(&uri).await
}

/// Polls `f` every 100 ms until it returns true; panics naming `what` after `limit`.
pub async fn wait_until<F, Fut>(limit: Duration, what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if f().await {
            return;
        }
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs the `cutover` binary to completion with extra environment variables.
pub fn run_cutover(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(cutover_bin());
    cmd.args(args)
        .env("NO_COLOR", "1")
        .env_remove("RUST_LOG")
        .env_remove("CUTOVER_LOG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run cutover")
}

/// Writes `text` to a plan file in a fresh temp dir and returns (dir, path).
pub fn write_plan(text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("plan.toml");
    std::fs::write(&path, text).expect("write plan");
    (dir, path)
}

/// A plan over two clusters given by `${SOURCE_URI}` / `${DESTINATION_URI}`, with `body`
/// (options and steps) appended.
pub fn plan_text(name: &str, body: &str) -> String {
    format!(
        "name = \"{name}\"\n\n[clusters.source]\nuri = \"${{SOURCE_URI}}\"\n\n\
         [clusters.destination]\nuri = \"${{DESTINATION_URI}}\"\n\n{body}\n"
    )
}

/// The last oplog entry's timestamp (to prove a command wrote nothing).
pub async fn last_oplog_ts(c: &Client) -> mongodb::bson::Timestamp {
    let coll = c.database("local").collection::<Document>("oplog.rs");
    let last = coll
        .find_one(doc! {})
        .sort(doc! {"$natural": -1})
        .await
        .expect("read oplog")
        .expect("oplog not empty");
    last.get_timestamp("ts").expect("ts")
}

/// Oplog entries after `ts` that touch user namespaces or the state database (ignores
/// no-ops and the server's own `config.`/`admin.` bookkeeping).
pub async fn oplog_writes_since(
    c: &Client,
    ts: mongodb::bson::Timestamp,
    state_db: &str,
) -> Vec<Document> {
    use futures::TryStreamExt;
    let coll = c.database("local").collection::<Document>("oplog.rs");
    let entries: Vec<Document> = coll
        .find(doc! {"ts": {"$gt": ts}, "op": {"$ne": "n"}})
        .await
        .expect("read oplog")
        .try_collect()
        .await
        .expect("oplog cursor");
    entries
        .into_iter()
        .filter(|e| {
            let ns = e.get_str("ns").unwrap_or_default();
            let db = ns.split('.').next().unwrap_or_default();
            db == state_db || !matches!(db, "admin" | "config" | "local" | "")
        })
        .collect()
}

/// Every user namespace (not admin/config/local/state) of a cluster: `(db, coll)` sorted,
/// excluding `system.*` collections except time-series buckets.
pub async fn user_collections(c: &Client, state_db: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for db in c.list_database_names().await.expect("list dbs") {
        if matches!(db.as_str(), "admin" | "config" | "local") || db == state_db {
            continue;
        }
        for coll in c
            .database(&db)
            .list_collection_names()
            .await
            .expect("list colls")
        {
            if coll.starts_with("system.") && !coll.starts_with("system.buckets.") {
                continue;
            }
            out.push((db.clone(), coll));
        }
    }
    out.sort();
    out
}

/// All documents of a collection as raw BSON bytes, in `_id` order (natural order for
/// collections without an `_id` index).
pub async fn raw_docs(c: &Client, db: &str, coll: &str) -> Vec<Vec<u8>> {
    use futures::TryStreamExt;
    let col = c
        .database(db)
        .collection::<mongodb::bson::RawDocumentBuf>(coll);
    let cur = match col.find(doc! {}).sort(doc! {"_id": 1}).await {
        Ok(c) => c,
        Err(_) => col.find(doc! {}).await.expect("find"),
    };
    let docs: Vec<mongodb::bson::RawDocumentBuf> = cur.try_collect().await.expect("read docs");
    docs.into_iter().map(|d| d.into_bytes()).collect()
}

/// Asserts both clusters hold the same user namespaces with byte-identical documents.
pub async fn assert_same_data(src: &Client, dst: &Client, state_db: &str) {
    let a = user_collections(src, state_db).await;
    let b = user_collections(dst, state_db).await;
    assert_eq!(a, b, "namespaces differ between source and destination");
    for (db, coll) in &a {
        let x = raw_docs(src, db, coll).await;
        let y = raw_docs(dst, db, coll).await;
        if x.len() != y.len() {
            panic!(
                "`{db}.{coll}`: {} documents on the source, {} on the destination; _ids only on \
                 the source: {:?}; only on the destination: {:?}",
                x.len(),
                y.len(),
                ids_only_in(&x, &y),
                ids_only_in(&y, &x)
            );
        }
        for (i, (p, q)) in x.iter().zip(y.iter()).enumerate() {
            if p != q {
                let pd = mongodb::bson::RawDocument::from_bytes(p)
                    .map(|d| format!("{d:?}"))
                    .unwrap_or_default();
                let qd = mongodb::bson::RawDocument::from_bytes(q)
                    .map(|d| format!("{d:?}"))
                    .unwrap_or_default();
                panic!(
                    "`{db}.{coll}` document #{i} differs:\nsource:      {pd}\ndestination: {qd}"
                );
            }
        }
    }
}

/// Asserts both clusters hold the same user namespaces with the same kinds, options and index
/// specs (the catalog layer's [`compare_specs`]: ignores collection UUIDs only).
///
/// [`compare_specs`]: cutover::engine::catalog::compare_specs
pub async fn assert_same_catalog(src: &Client, dst: &Client, state_db: &str) {
    use cutover::engine::catalog::{compare_specs, list_selected};
    let all = cutover::plan::NamespaceSelector::new(&[], &[], state_db).expect("selector");
    let a = list_selected(src, &all).await.expect("list source catalog");
    let b = list_selected(dst, &all)
        .await
        .expect("list destination catalog");
    let names = |v: &[cutover::engine::catalog::NsSpec]| {
        v.iter().map(|s| s.ns.to_string()).collect::<Vec<_>>()
    };
    assert_eq!(
        names(&a),
        names(&b),
        "selected namespaces differ between source and destination"
    );
    let mut diffs = Vec::new();
    for (x, y) in a.iter().zip(b.iter()) {
        diffs.extend(compare_specs(x, y));
    }
    assert!(diffs.is_empty(), "catalog differs:\n{}", diffs.join("\n"));
}

/// `(KEY, value)` pairs as the `&[(&str, &str)]` that [`run_cutover`] takes.
pub fn env_refs<'a>(env: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    env.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

/// The plan's source/destination URIs as root.
pub fn root_env(src: &ReplicaSet, dst: &ReplicaSet) -> Vec<(&'static str, String)> {
    vec![
        ("SOURCE_URI", src.root_uri()),
        ("DESTINATION_URI", dst.root_uri()),
    ]
}

/// Up to 10 `_id`s of documents in `a` whose `_id` is not in `b`.
pub fn ids_only_in(a: &[Vec<u8>], b: &[Vec<u8>]) -> Vec<String> {
    let id = |d: &Vec<u8>| {
        mongodb::bson::RawDocument::from_bytes(d)
            .ok()
            .and_then(|r| r.get("_id").ok().flatten())
            .and_then(|v| mongodb::bson::Bson::try_from(v).ok())
    };
    let bs: Vec<Option<mongodb::bson::Bson>> = b.iter().map(id).collect();
    a.iter()
        .map(id)
        .filter(|i| !bs.contains(i))
        .take(10)
        .map(|i| format!("{i:?}"))
        .collect()
}

/// Starts `cutover` with the given args/env, returning the child (for kill tests).
pub fn spawn_cutover(args: &[&str], env: &[(&str, &str)]) -> Child {
    let mut cmd = Command::new(cutover_bin());
    cmd.args(args)
        .env("NO_COLOR", "1")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn().expect("spawn cutover")
}

/// Waits until `cutover` (`child`) creates `path` (a pause point's `.reached` file), failing
/// with its stderr if it exits first.
pub async fn wait_pause_file(path: &std::path::Path, child: &mut std::process::Child) {
    let start = std::time::Instant::now();
    while !path.exists() {
        if let Some(st) = child.try_wait().unwrap() {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                use std::io::Read;
                let _ = e.read_to_string(&mut err);
            }
            panic!("cutover exited ({st}) before {}:\n{err}", path.display());
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(180),
            "timed out waiting for {}",
            path.display()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Waits for `child` to exit and returns its output.
pub async fn finish_child(child: std::process::Child) -> std::process::Output {
    tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap()
}

/// Formats an Output for assertion messages.
pub fn show(o: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}
/// A standalone `mongod` (no replica set, no auth), only to prove cutover refuses one.
/// Killed on drop.
pub struct Standalone {
    pub port: u16,
    child: Option<Child>,
    _dir: tempfile::TempDir,
}

impl Standalone {
    pub fn start() -> Self {
        let mongod = require_mongod();
        let dir = tempfile::Builder::new()
            .prefix("cutover-standalone-")
            .tempdir()
            .expect("temp dir");
        for _ in 0..5 {
            let port = free_port();
            let args: Vec<String> = vec![
                "--port".into(),
                port.to_string(),
                "--bind_ip".into(),
                "127.0.0.1".into(),
                "--dbpath".into(),
                dir.path().display().to_string(),
                "--wiredTigerCacheSizeGB".into(),
                "0.25".into(),
                "--unixSocketPrefix".into(),
                dir.path().display().to_string(),
                "--logpath".into(),
                dir.path().join("mongod.log").display().to_string(),
            ];
            let mut child = spawn_with_deathsig(&mongod, &args);
            if wait_listening(port, &mut child, Duration::from_secs(60)) {
                return Self {
                    port,
                    child: Some(child),
                    _dir: dir,
                };
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("a standalone mongod did not start");
    }

    pub fn uri(&self) -> String {
        format!("mongodb://127.0.0.1:{}/?directConnection=true", self.port)
    }
}

impl Drop for Standalone {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `cutover status PLAN --format json` (plus `extra` arguments), run off the async runtime.
pub async fn status_json(
    plan: &str,
    env: &[(&'static str, String)],
    extra: &[&str],
) -> serde_json::Value {
    let (plan, env) = (plan.to_string(), env.to_vec());
    let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let mut args = vec!["status", plan.as_str(), "--format", "json"];
        args.extend(extra.iter().map(String::as_str));
        let o = run_cutover(&args, &env_refs(&env));
        assert_eq!(o.status.code(), Some(0), "{}", show(&o));
        serde_json::from_slice(&o.stdout)
            .unwrap_or_else(|e| panic!("status json: {e}: {}", show(&o)))
    })
    .await
    .expect("status task")
}

/// A `cutover run` started by [`spawn_run_until`], with what a test needs to drive it.
pub struct RunningPlan {
    /// Holds the plan file: dropping it deletes the file.
    pub dir: tempfile::TempDir,
    pub plan: String,
    pub env: Vec<(&'static str, String)>,
    pub child: Child,
}

/// Writes the plan `name` (`body` after the clusters), starts `cutover run` on it as the root
/// users of `src` and `dst`, and waits (2 min at most) until `cutover status` satisfies
/// `ready`, naming `what` if it never does.
pub async fn spawn_run_until(
    src: &ReplicaSet,
    dst: &ReplicaSet,
    name: &str,
    body: &str,
    what: &str,
    ready: impl Fn(&serde_json::Value) -> bool,
) -> RunningPlan {
    let (dir, plan) = write_plan(&plan_text(name, body));
    let plan = plan.to_str().unwrap().to_string();
    let env = root_env(src, dst);
    let child = spawn_cutover(&["run", &plan], &env_refs(&env));
    wait_status(&plan, &env, &[], Duration::from_secs(120), what, ready).await;
    RunningPlan {
        dir,
        plan,
        env,
        child,
    }
}

/// Polls `cutover status --format json` until `pred` holds; panics naming `what` after `limit`.
pub async fn wait_status(
    plan: &str,
    env: &[(&'static str, String)],
    extra: &[&str],
    limit: Duration,
    what: &str,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let start = Instant::now();
    loop {
        let v = status_json(plan, env, extra).await;
        if pred(&v) {
            return v;
        }
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}; last status: {v}"
        );
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
}
