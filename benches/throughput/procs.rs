//! `cutover` processes (exit code, wall time, peak RSS) and reads of its state records.

use super::*;

pub struct Finished {
    pub code: Option<i32>,
    pub wall: Duration,
    pub max_rss_kb: i64,
    pub stdout: String,
    pub stderr: String,
}

/// A running `cutover` whose peak RSS is read from `wait4` when it exits.
pub struct Proc {
    pub pid: i32,
    pub started: Instant,
    pub out: PathBuf,
    pub err: PathBuf,
    pub _child: std::process::Child,
}

pub fn spawn_cutover(
    opts: &Opts,
    args: &[&str],
    env: &[(&str, &str)],
    dir: &Path,
    tag: &str,
) -> Proc {
    let out = dir.join(format!("{tag}.stdout"));
    let err = dir.join(format!("{tag}.stderr"));
    let mut cmd = Command::new(&opts.cutover);
    cmd.args(args)
        .env("NO_COLOR", "1")
        .env_remove("RUST_LOG")
        .env_remove("CUTOVER_LOG")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).expect("stdout file"))
        .stderr(std::fs::File::create(&err).expect("stderr file"));
    for (k, v) in env {
        cmd.env(k, v);
    }
    let started = Instant::now();
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", opts.cutover.display()));
    Proc {
        pid: child.id() as i32,
        started,
        out,
        err,
        _child: child,
    }
}

impl Proc {
    /// Waits (on a blocking thread) and returns exit code, wall time and peak RSS.
    pub async fn wait(self) -> Finished {
        let pid = self.pid;
        // Peak RSS from the kernel's VmHWM of the process, polled until it exits. Not wait4's
        // ru_maxrss: Rust spawns with posix_spawn (CLONE_VM), and exec records the parent's
        // high-water mark into the child's maxrss, so it reported this bench's own memory (the
        // data set it holds). VmHWM belongs to the new address space; it only grows, so polling
        // misses at most the last few milliseconds.
        let hwm = Arc::new(AtomicU64::new(0));
        let done = Arc::new(AtomicBool::new(false));
        let poller = {
            let (hwm, done) = (hwm.clone(), done.clone());
            tokio::spawn(async move {
                while !done.load(Ordering::Relaxed) {
                    if let Some(kb) = vm_hwm_kb(pid) {
                        hwm.fetch_max(kb, Ordering::Relaxed);
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
        };
        let (code, _maxrss_with_parent) = tokio::task::spawn_blocking(move || {
            let mut status = 0i32;
            // SAFETY: a zeroed rusage is a valid out-parameter; wait4 fills it.
            let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
            // SAFETY: waits for our own child; status and ru are valid pointers.
            let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
            assert_eq!(r, pid, "wait4 on cutover failed");
            let code = if libc::WIFEXITED(status) {
                Some(libc::WEXITSTATUS(status))
            } else {
                None
            };
            (code, ru.ru_maxrss)
        })
        .await
        .expect("wait task");
        let wall = self.started.elapsed();
        done.store(true, Ordering::Relaxed);
        let _ = poller.await;
        Finished {
            code,
            wall,
            max_rss_kb: hwm.load(Ordering::Relaxed) as i64,
            stdout: std::fs::read_to_string(&self.out).unwrap_or_default(),
            stderr: std::fs::read_to_string(&self.err).unwrap_or_default(),
        }
    }
}

/// CPU seconds (user + system) a live process has used so far, from `/proc/PID/stat`.
pub fn cpu_secs(pid: i32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start at field 3.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let (utime, stime): (f64, f64) = (f.get(11)?.parse().ok()?, f.get(12)?.parse().ok()?);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some((utime + stime) / hz)
}

/// The pid of a replica set's first member (the primary of the bench's single-node sets).
pub fn mongod_pid(rs: &ReplicaSet) -> i32 {
    rs.members[0].child.as_ref().map_or(0, |c| c.id() as i32)
}

/// `VmHWM` (peak resident set) of a live process, in KB.
pub fn vm_hwm_kb(pid: i32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

impl Finished {
    pub fn expect_ok(&self, what: &str) {
        assert_eq!(
            self.code,
            Some(0),
            "{what} failed:\n--- stdout\n{}\n--- stderr (tail)\n{}",
            self.stdout,
            tail(&self.stderr, 40)
        );
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or(serde_json::Value::Null)
    }
}

pub fn tail(s: &str, n: usize) -> String {
    let l: Vec<&str> = s.lines().collect();
    l[l.len().saturating_sub(n)..].join("\n")
}

pub fn run_args<'a>(opts: &'a Opts, plan: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec!["run", plan, "--format", "json"];
    v.extend_from_slice(extra);
    v.extend(opts.cutover_args.iter().map(String::as_str));
    v
}

pub fn plan_file(dir: &Path, name: &str, body: &str) -> String {
    let text = common::plan_text(name, body);
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).expect("write plan");
    path.display().to_string()
}

pub fn env_for(src: &ReplicaSet, dst: &ReplicaSet) -> Vec<(String, String)> {
    vec![
        ("SOURCE_URI".into(), src.root_uri()),
        ("DESTINATION_URI".into(), dst.root_uri()),
    ]
}

pub fn env_refs(e: &[(String, String)]) -> Vec<(&str, &str)> {
    e.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect()
}

pub async fn run_doc(dst: &Client, plan: &str) -> Option<Document> {
    dst.database(STATE_DB)
        .collection::<Document>("runs")
        .find_one(doc! {"_id": plan})
        .await
        .ok()
        .flatten()
}

pub async fn lane_doc(dst: &Client, plan: &str) -> Option<Document> {
    dst.database(STATE_DB)
        .collection::<Document>("lanes")
        .find_one(doc! {"_id": format!("{plan}/forward")})
        .await
        .ok()
        .flatten()
}

/// The source's last write time.
pub async fn last_write(c: &Client) -> Timestamp {
    let h = c
        .database("admin")
        .run_command(doc! {"hello": 1})
        .await
        .expect("hello");
    h.get_document("lastWrite")
        .and_then(|l| l.get_document("opTime"))
        .and_then(|o| o.get_timestamp("ts"))
        .expect("lastWrite.opTime.ts")
}

pub async fn unblock(c: &Client) {
    let _ = c
        .database("admin")
        .run_command(doc! {"setUserWriteBlockMode": 1, "global": false})
        .await;
}

pub fn has_verify(opts: &Opts) -> bool {
    let out = Command::new(&opts.cutover)
        .arg("--help")
        .output()
        .expect("cutover --help");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.trim_start().starts_with("verify "))
}

/// `cutover approve PLAN`: approves the manual commit a running `cutover run` waits for.
pub fn approve(opts: &Opts, env: &[(String, String)], plan: &str) {
    let appr = Command::new(&opts.cutover)
        .args(["approve", plan, "--note", "bench"])
        .envs(env.iter().map(|(a, b)| (a.clone(), b.clone())))
        .output()
        .expect("cutover approve");
    assert!(
        appr.status.success(),
        "cutover approve failed: {}",
        common::show(&appr)
    );
}
