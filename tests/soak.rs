//! The soak (`tests/soak.sh --minutes N`, which runs `SOAK_MINUTES=N cargo test --test soak -- --ignored
//! --nocapture`): kedge-send against the real test endpoint and its data-management service over a real Azurite,
//! on loopback over HTTPS, with Entra ID tokens that expire, for N minutes of random faults. Then the faults stop,
//! every spool is drained, and what arrived is counted against what kedge-send said it had taken.
//!
//! Four lanes, each with its own table, spool and record ids (`"seq":N`, unique per lane):
//! - `stream-kill`, `queued-kill`: kedge-send runs over input files (`--mode streaming` / `--mode queued`), each
//!   SIGKILLed at a random moment or left to end by itself. A run's "accepted" records are what it reported
//!   `durable N` (`--durable-every`) before it died, or its whole input when it exited 0 or 75. What it did not
//!   accept is offered again to the next run, as an integrator with a checkpoint does; such offers are counted as
//!   refused, with the reason (exit code and last line of stderr).
//! - `stream-long`, `queued-long`: one kedge-send each, alive for the whole soak, reading a pipe the driver feeds at
//!   a steady rate: their memory and descriptors are what the growth check looks at. Their records count as
//!   accepted when the process ends with 0 or 75 after the pipe is closed (no `--durable-every` here: see
//!   `long_lane`); a full spool holds their input back.
//!
//! Every spool is small (`--spool-max-bytes 65536`, 16 chunks) with `--spool-policy reject-new`, so outages fill
//! it: a full spool refuses new chunks (kedge-send then does not report them durable, and the driver counts them
//! refused) and never drops what it already holds. Faults: the endpoint's random ones all along (429, 503, 500,
//! resets, lost replies, slow replies), and one event at a time on top: outages, bursts of throttling, every
//! token expired at once, and the DM's misbehaviours (storage unreachable, SAS expired, management throttled,
//! Azurite frozen with SIGSTOP, the ingestor paused). Tokens live 60 s, so they also expire on their own.
//!
//! Fails on: an accepted record that never arrived, a record that was never sent, growth of a long-lived
//! kedge-send (its last quarter of samples: RSS above the first quarter's highest by more than 10 % + 512 KiB,
//! or more descriptors than the first quarter's highest), a spool not empty after the drain, DM protocol
//! violations, a long-lived kedge-send that dies or ends with anything but 0/75, a run that hangs.
//! Duplicates are counted and reported (delivery is at-least-once), and fail only beyond a quarter of the records.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use kusto_devserver::azurite::Azurite;
use kusto_devserver::{AuthConfig, DmConfig, DmFaults, Fault, Faults, Server, ServerConfig};

mod programs;
use programs::*;

const DB: &str = "db";
const SPOOL_MAX_BYTES: u64 = 65536;
const SPOOL_MAX_CHUNKS: u32 = 16;
const TOKEN_LIFETIME: Duration = Duration::from_secs(60);
/// Records per second each long-lived kedge-send is fed.
const LONG_RATE: u64 = 150;

/// xorshift64: the driver's own randomness (kill moments, fault events), seeded by `SOAK_SEED`.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    /// Uniform in lo..hi.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo).max(1)
    }
    fn chance(&mut self, p: f64) -> bool {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }
}

/// The endpoint with its DM over Azurite, both on HTTPS with one test CA, and Entra ID tokens. Field order: the
/// server (and its ingestor) stops before Azurite.
struct Env {
    server: Server,
    az: Azurite,
    ca: PathBuf,
    secret: PathBuf,
}

fn start_env(scratch: &Scratch) -> Env {
    let ca = kusto_devserver::tls::TestCa::generate().expect("test CA");
    let az = Azurite::start_tls(&ca).expect("azurite");
    let mut dm = DmConfig::new(az.endpoints());
    dm.poll_interval = Duration::from_millis(100);
    let server = Server::start(ServerConfig {
        tls: true,
        tls_ca: Some(ca.clone()),
        dm: Some(dm),
        auth: Some(AuthConfig {
            token_lifetime: TOKEN_LIFETIME,
            ..AuthConfig::default()
        }),
        ..ServerConfig::default()
    })
    .expect("devserver");
    server.register_secret_client("soak-app", "soak-secret-7d1e");
    let ca_path = scratch.path("ca.pem");
    fs::write(&ca_path, &ca.ca_pem).unwrap();
    let secret = scratch.path("secret");
    fs::write(&secret, "soak-secret-7d1e\n").unwrap();
    Env {
        server,
        az,
        ca: ca_path,
        secret,
    }
}

fn kedge_send_path() -> PathBuf {
    let lib_dir = build_host_lib().unwrap_or_else(|e| panic!("{e}"));
    let build = target_dir().join("c-build");
    let make = Command::new("make")
        .arg("-C")
        .arg(Path::new(MANIFEST_DIR).join("examples-c"))
        .arg(format!("LIBDIR={}", lib_dir.display()))
        .arg(format!("BUILD={}", build.display()))
        .arg(build.join("kedge-send"))
        .env_remove("CFLAGS")
        .env_remove("LDFLAGS")
        .output()
        .expect("make");
    assert!(
        make.status.success(),
        "make kedge-send failed:\n{}{}",
        String::from_utf8_lossy(&make.stdout),
        String::from_utf8_lossy(&make.stderr)
    );
    build.join("kedge-send")
}

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Streaming,
    Queued,
}

struct Lane {
    name: &'static str,
    table: &'static str,
    mode: Mode,
    long_lived: bool,
    spool: PathBuf,
    /// The kedge-send running now (for the sampler).
    pid: Mutex<Option<u32>>,
    ledger: Mutex<Ledger>,
}

#[derive(Default)]
struct Ledger {
    /// id → times offered to kedge-send.
    offered: HashMap<u64, u32>,
    /// Ids kedge-send reported durable or acknowledged.
    accepted: HashSet<u64>,
    /// Offers not accepted (each one offered again later, unless the soak ended first).
    refused_offers: u64,
    /// Runs that ended without accepting everything, by exit and the last line of stderr (digits as N).
    reasons: BTreeMap<String, u64>,
    runs: u64,
    kills: u64,
    /// Runs whose stderr says the spool was full (`spool full`, reject-new).
    spool_full_runs: u64,
    /// What must fail the soak (a hang, a long-lived client that died).
    failures: Vec<String>,
}

impl Ledger {
    fn offer(&mut self, ids: &[u64]) {
        for &id in ids {
            *self.offered.entry(id).or_default() += 1;
        }
    }
}

fn record(lane: &str, id: u64) -> String {
    format!(
        "{{\"seq\":{id},\"lane\":\"{lane}\",\"device\":\"gw-{}\",\"temp\":{:.1},\"status\":\"ok\",\"fw\":\"1.4.2\"}}",
        id % 7,
        20.0 + (id % 100) as f64 / 10.0
    )
}

impl Lane {
    fn command(&self, exe: &Path, env: &Env) -> Command {
        let url = env.server.url();
        let mut cmd = Command::new(exe);
        cmd.args(["--url", &url, "--database", DB, "--table", self.table]);
        cmd.arg("--ca-file").arg(&env.ca);
        cmd.args(["--authority-host", &url, "--proxy", "none", "--quiet"]);
        cmd.args(["--tenant", "test-tenant", "--client-id", "soak-app"]);
        cmd.arg("--client-secret-file").arg(&env.secret);
        if self.mode == Mode::Queued {
            cmd.args(["--mode", "queued", "--dm-url"])
                .arg(env.server.dm_url().expect("DM url"));
        }
        cmd.arg("--spool").arg(&self.spool);
        cmd.args(["--spool-max-bytes", &SPOOL_MAX_BYTES.to_string()]);
        cmd.args(["--spool-policy", "reject-new", "--batch-bytes", "8192"]);
        cmd.arg("-X")
            .arg(format!("spool.max_chunks={SPOOL_MAX_CHUNKS}"));
        for x in [
            "retry.max_attempts=3",
            "retry.base_ms=20",
            "retry.max_total_ms=2000",
            "backoff.max_ms=2000",
            "timeout.connect_ms=1000",
            "timeout.send_ms=3000",
            "timeout.recv_ms=3000",
            "batch.max_age_ms=500",
        ] {
            cmd.args(["-X", x]);
        }
        for var in [
            "KEDGE_TOKEN",
            "KEDGE_URL",
            "KEDGE_CA_FILE",
            "HTTPS_PROXY",
            "NO_PROXY",
        ] {
            cmd.env_remove(var);
        }
        cmd
    }

    fn set_pid(&self, pid: Option<u32>) {
        *self.pid.lock().unwrap() = pid;
    }
}

/// The first non-empty line of a file (kedge-send --quiet prints its final error first, then what follows from
/// it), digits replaced by N, cut to 120 characters: a run's reason.
fn reason(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let line = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
    let mut out = String::new();
    let mut prev_digit = false;
    for c in line.chars() {
        if c.is_ascii_digit() {
            if !prev_digit {
                out.push('N');
            }
            prev_digit = true;
        } else {
            out.push(c);
            prev_digit = false;
        }
        if out.len() >= 120 {
            break;
        }
    }
    out
}

fn durable_of(stdout: &str) -> usize {
    stdout
        .lines()
        .filter_map(|l| l.strip_prefix("durable ")?.parse().ok())
        .max()
        .unwrap_or(0)
}

fn describe(status: Option<ExitStatus>) -> String {
    match status {
        None => "SIGKILL (driver)".into(),
        Some(s) => match s.code() {
            Some(c) => format!("exit {c}"),
            None => format!("{s}"),
        },
    }
}

/// kedge-send over input files, SIGKILLed at random moments, until `stop`.
fn killed_lane(lane: &Lane, exe: &Path, env: &Env, stop: &AtomicBool, seed: u64, dir: &Path) {
    let mut rng = Rng::new(seed);
    let mut next_id = 0u64;
    let mut pending: VecDeque<u64> = VecDeque::new();
    let input = dir.join(format!("{}.jsonl", lane.name));
    let out_path = dir.join(format!("{}.out", lane.name));
    let err_path = dir.join(format!("{}.err", lane.name));
    while !stop.load(Ordering::SeqCst) {
        let n = rng.range(300, 3000) as usize;
        let mut ids: Vec<u64> = Vec::with_capacity(n);
        while ids.len() < n {
            match pending.pop_front() {
                Some(id) => ids.push(id),
                None => {
                    ids.push(next_id);
                    next_id += 1;
                }
            }
        }
        {
            let mut w = BufWriter::new(File::create(&input).unwrap());
            for &id in &ids {
                writeln!(w, "{}", record(lane.name, id)).unwrap();
            }
            w.flush().unwrap();
        }
        lane.ledger.lock().unwrap().offer(&ids);
        // Small checkpoints fill the spool (each is a chunk on flash), large ones let batches fill and go out.
        let every = [25, 100, 400, 1500][rng.range(0, 4) as usize];
        let mut cmd = lane.command(exe, env);
        cmd.args(["--give-up-secs", "3", "--durable-every", &every.to_string()])
            .arg(&input)
            .stdin(Stdio::null())
            .stdout(File::create(&out_path).unwrap())
            .stderr(File::create(&err_path).unwrap());
        let mut child = cmd.spawn().expect("spawn kedge-send");
        lane.set_pid(Some(child.id()));
        let started = Instant::now();
        let kill_at = rng
            .chance(0.6)
            .then(|| started + Duration::from_millis(rng.range(100, 4000)));
        let mut hung = false;
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break Some(s);
            }
            let now = Instant::now();
            if kill_at.is_some_and(|k| now >= k) || now - started > Duration::from_secs(120) {
                hung = kill_at.is_none_or(|k| now < k);
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            thread::sleep(Duration::from_millis(5));
        };
        lane.set_pid(None);
        let durable = durable_of(&fs::read_to_string(&out_path).unwrap_or_default()).min(ids.len());
        let took_all = matches!(status.and_then(|s| s.code()), Some(0) | Some(75));
        let accepted = if took_all { ids.len() } else { durable };
        let mut l = lane.ledger.lock().unwrap();
        l.runs += 1;
        if status.is_none() {
            l.kills += 1;
        }
        if fs::read_to_string(&err_path)
            .unwrap_or_default()
            .contains(": spool full")
        {
            l.spool_full_runs += 1;
        }
        if hung {
            l.failures.push(format!(
                "{}: a kedge-send run hung for 120 s: {}",
                lane.name,
                reason(&err_path)
            ));
        }
        l.accepted.extend(&ids[..accepted]);
        if accepted < ids.len() {
            l.refused_offers += (ids.len() - accepted) as u64;
            let why = match status {
                None => "SIGKILL (driver)".to_string(),
                Some(_) => format!("{}: {}", describe(status), reason(&err_path)),
            };
            *l.reasons.entry(why).or_default() += 1;
        }
        drop(l);
        for &id in ids[accepted..].iter().rev() {
            pending.push_front(id);
        }
        thread::sleep(Duration::from_millis(rng.range(100, 600)));
    }
}

/// One kedge-send for the whole soak, fed through a pipe at `LONG_RATE` records per second until `stop`.
fn long_lane(lane: &Lane, exe: &Path, env: &Env, stop: &AtomicBool, dir: &Path) {
    let mut next_id = 0u64;
    let mut generation = 0;
    'process: loop {
        generation += 1;
        let err_path = dir.join(format!("{}-{generation}.err", lane.name));
        // No --durable-every: a checkpoint the full spool refuses ends kedge-send at once, whatever
        // --give-up-secs says (see the soak's report); without it a full spool holds the input back instead.
        // What this process took counts as accepted only when it ends with 0 or 75.
        let mut cmd = lane.command(exe, env);
        cmd.args(["--give-up-secs", "1000000"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(File::create(&err_path).unwrap());
        let mut child: Child = cmd.spawn().expect("spawn kedge-send");
        lane.set_pid(Some(child.id()));
        let mut pipe = BufWriter::new(child.stdin.take().unwrap());
        let first_id = next_id;
        let started = Instant::now();
        let mut died = None;
        while !stop.load(Ordering::SeqCst) {
            if let Some(s) = child.try_wait().unwrap() {
                died = Some(s);
                break;
            }
            let due = started.elapsed().as_millis() as u64 * LONG_RATE / 1000;
            let mut batch = Vec::new();
            while next_id - first_id < due {
                batch.push(next_id);
                next_id += 1;
            }
            lane.ledger.lock().unwrap().offer(&batch);
            let mut ok = true;
            for &id in &batch {
                ok &= writeln!(pipe, "{}", record(lane.name, id)).is_ok();
            }
            ok &= pipe.flush().is_ok();
            if !ok {
                died = Some(child.wait().unwrap());
                break;
            }
            thread::sleep(Duration::from_millis(20));
        }
        // The end of the input: kedge-send delivers (or spools) what it has and exits.
        drop(pipe);
        let status = match died {
            Some(s) => s,
            None => {
                let until = Instant::now() + Duration::from_secs(180);
                loop {
                    if let Some(s) = child.try_wait().unwrap() {
                        break s;
                    }
                    if Instant::now() > until {
                        lane.ledger.lock().unwrap().failures.push(format!(
                            "{}: did not finish within 180 s of its input's end: SIGKILL",
                            lane.name
                        ));
                        let _ = child.kill();
                        break child.wait().unwrap();
                    }
                    thread::sleep(Duration::from_millis(50));
                }
            }
        };
        lane.set_pid(None);
        let sent = next_id - first_id;
        let ok = died.is_none() && matches!(status.code(), Some(0) | Some(75));
        let accepted = if ok { sent } else { 0 };
        let mut l = lane.ledger.lock().unwrap();
        l.runs += 1;
        l.accepted.extend(first_id..first_id + accepted);
        if accepted < sent {
            l.refused_offers += sent - accepted;
            let why = format!("{}: {}", describe(Some(status)), reason(&err_path));
            *l.reasons.entry(why).or_default() += 1;
        }
        if !ok {
            l.failures.push(format!(
                "{} (process {generation}): {} {}: {}",
                lane.name,
                if died.is_some() {
                    "died during the soak"
                } else {
                    "ended with"
                },
                describe(Some(status)),
                reason(&err_path)
            ));
        }
        drop(l);
        if died.is_none() || stop.load(Ordering::SeqCst) {
            break 'process;
        }
        // Keep the lane going with a new process (its records from `next_id` on).
    }
}

/// Faults on top of the endpoint's random ones, one at a time, until `stop`; then every fault off.
fn faults(env: &Env, stop: &AtomicBool, seed: u64, events: &Mutex<BTreeMap<&'static str, u64>>) {
    let baseline = || Faults {
        seed,
        random: vec![
            (
                Fault::Throttle {
                    retry_after: Some("1".into()),
                },
                0.03,
            ),
            (Fault::Unavailable { retry_after: None }, 0.03),
            (Fault::InternalError, 0.02),
            (Fault::Reset, 0.02),
            (Fault::LoseReply, 0.02),
            (Fault::Slow(Duration::from_millis(400)), 0.03),
        ],
    };
    let server = &env.server;
    server.set_faults(baseline());
    let mut rng = Rng::new(seed ^ 0xFA17);
    let sleep = |d: Duration| {
        let end = Instant::now() + d;
        while Instant::now() < end && !stop.load(Ordering::SeqCst) {
            thread::sleep(Duration::from_millis(50));
        }
    };
    while !stop.load(Ordering::SeqCst) {
        sleep(Duration::from_millis(rng.range(2000, 8000)));
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let secs = Duration::from_millis(rng.range(2000, 8000));
        let name = match rng.range(0, 9) {
            0 | 1 => {
                server.set_down(secs);
                sleep(secs);
                "outage (streaming endpoint closes every request)"
            }
            2 => {
                server.set_faults(Faults {
                    seed: rng.next(),
                    random: vec![
                        (
                            Fault::Throttle {
                                retry_after: Some("2".into()),
                            },
                            0.5,
                        ),
                        (Fault::Unavailable { retry_after: None }, 0.3),
                    ],
                });
                sleep(secs);
                server.set_faults(baseline());
                "burst of 429/503"
            }
            3 => {
                server.expire_all_tokens();
                "every token expired at once"
            }
            4 => {
                server.set_dm_faults(DmFaults {
                    sas_expired: true,
                    ..DmFaults::default()
                });
                sleep(secs);
                server.set_dm_faults(DmFaults::default());
                "DM: SAS expired"
            }
            5 => {
                server.set_dm_faults(DmFaults {
                    storage_unreachable: true,
                    ..DmFaults::default()
                });
                sleep(secs);
                server.set_dm_faults(DmFaults::default());
                "DM: storage unreachable"
            }
            6 => {
                server.set_dm_faults(DmFaults {
                    throttle_mgmt: rng.range(1, 6) as usize,
                    ..DmFaults::default()
                });
                "DM: management commands throttled"
            }
            7 => {
                env.az.pause();
                sleep(secs);
                env.az.resume();
                "DM: storage frozen (SIGSTOP)"
            }
            _ => {
                server.set_dm_faults(DmFaults {
                    ingestor_paused: true,
                    ..DmFaults::default()
                });
                sleep(secs);
                server.set_dm_faults(DmFaults::default());
                "DM: ingestor paused"
            }
        };
        *events.lock().unwrap().entry(name).or_default() += 1;
    }
    server.set_faults(Faults::default());
    server.set_down(Duration::ZERO);
    server.set_dm_faults(DmFaults::default());
    env.az.resume();
}

#[derive(Clone, Copy, Default)]
struct Proc {
    rss_kib: u64,
    hwm_kib: u64,
    fds: u64,
}

struct Sample {
    at: Duration,
    /// Taken while the traffic and the faults ran (not during the wind-down): what the growth check looks at.
    traffic: bool,
    /// Per lane: its kedge-send now (None between runs), and its spool's bytes on disk.
    lanes: Vec<(Option<Proc>, u64)>,
}

fn read_proc(pid: u32) -> Option<Proc> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    };
    let fds = fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64;
    Some(Proc {
        rss_kib: field("VmRSS:")?,
        hwm_kib: field("VmHWM:")?,
        fds,
    })
}

/// Bytes of every file under `dir` (pending chunks, quarantine, lock).
fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// Files ending in `.chunk` under `dir`, by subdirectory ("" for pending).
fn chunk_files(dir: &Path) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    let mut walk = vec![(dir.to_path_buf(), String::new())];
    while let Some((d, rel)) = walk.pop() {
        for e in fs::read_dir(&d).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if e.path().is_dir() {
                walk.push((e.path(), format!("{rel}{name}/")));
            } else if name.ends_with(".chunk") {
                *out.entry(rel.clone()).or_default() += 1;
            }
        }
    }
    out
}

fn sampler(
    lanes: &[Lane],
    traffic: &AtomicBool,
    stop: &AtomicBool,
    every: Duration,
    start: Instant,
) -> Vec<Sample> {
    let mut out = Vec::new();
    let mut next = start;
    while !stop.load(Ordering::SeqCst) {
        let lanes = lanes
            .iter()
            .map(|l| {
                let pid = *l.pid.lock().unwrap();
                (pid.and_then(read_proc), dir_bytes(&l.spool))
            })
            .collect();
        out.push(Sample {
            at: start.elapsed(),
            traffic: !traffic.load(Ordering::SeqCst),
            lanes,
        });
        next += every;
        while Instant::now() < next && !stop.load(Ordering::SeqCst) {
            thread::sleep(Duration::from_millis(50));
        }
    }
    out
}

/// The growth check of one long-lived lane's samples: `Err` names what grew.
fn growth(samples: &[Proc]) -> Result<String, String> {
    if samples.len() < 8 {
        return Err(format!("only {} samples: too few to judge", samples.len()));
    }
    let q = samples.len() / 4;
    let (first, last) = (&samples[..q], &samples[samples.len() - q..]);
    let rss1 = first.iter().map(|p| p.rss_kib).max().unwrap();
    let rss4 = last.iter().map(|p| p.rss_kib).max().unwrap();
    let fds1 = first.iter().map(|p| p.fds).max().unwrap();
    let fds4 = last.iter().map(|p| p.fds).max().unwrap();
    let rss_limit = rss1 + rss1 / 10 + 512;
    let text = format!(
        "RSS max first quarter {rss1} KiB, last quarter {rss4} KiB (limit {rss_limit}); fds max first quarter {fds1}, last quarter {fds4}"
    );
    if rss4 > rss_limit || fds4 > fds1 {
        Err(text)
    } else {
        Ok(text)
    }
}

/// Runs `--drain-only` on a lane's spool until it exits 0 (at most 10 times); the exits seen.
fn drain(lane: &Lane, exe: &Path, env: &Env, dir: &Path) -> (bool, Vec<String>) {
    let mut exits = Vec::new();
    let err_path = dir.join(format!("{}-drain.err", lane.name));
    for _ in 0..10 {
        let mut cmd = lane.command(exe, env);
        cmd.args(["--drain-only", "--give-up-secs", "10"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&err_path).unwrap());
        let mut child = cmd.spawn().expect("spawn kedge-send --drain-only");
        let until = Instant::now() + Duration::from_secs(120);
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break Some(s);
            }
            if Instant::now() > until {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            thread::sleep(Duration::from_millis(20));
        };
        let code = status.and_then(|s| s.code());
        exits.push(match code {
            Some(0) => "exit 0".to_string(),
            _ => format!(
                "{}: {}",
                if status.is_none() {
                    "hung 120 s".to_string()
                } else {
                    describe(status)
                },
                reason(&err_path)
            ),
        });
        if code == Some(0) {
            return (true, exits);
        }
        thread::sleep(Duration::from_secs(1));
    }
    (false, exits)
}

struct Counted {
    sent: usize,
    accepted: usize,
    arrived: usize,
    lost: Vec<u64>,
    duplicates: usize,
    /// Of `duplicates`: copies of records the driver offered only once (the library's own resends).
    duplicates_offered_once: usize,
    strays: usize,
    unaccepted_arrived: usize,
}

fn count(lane: &Lane, server: &Server) -> Counted {
    let l = lane.ledger.lock().unwrap();
    let mut seen: HashMap<u64, usize> = HashMap::new();
    for r in server.records(DB, lane.table) {
        let id = seq_of(&r).unwrap_or_else(|| {
            panic!("stored record without seq: {}", String::from_utf8_lossy(&r))
        });
        *seen.entry(id).or_default() += 1;
    }
    let mut lost: Vec<u64> = l
        .accepted
        .iter()
        .copied()
        .filter(|id| !seen.contains_key(id))
        .collect();
    lost.sort_unstable();
    Counted {
        sent: l.offered.len(),
        accepted: l.accepted.len(),
        arrived: seen.len(),
        lost,
        duplicates: seen.values().map(|c| c - 1).sum(),
        duplicates_offered_once: seen
            .iter()
            .filter(|(id, _)| l.offered.get(id) == Some(&1))
            .map(|(_, c)| c - 1)
            .sum(),
        strays: seen.keys().filter(|id| !l.offered.contains_key(id)).count(),
        unaccepted_arrived: seen
            .keys()
            .filter(|id| l.offered.contains_key(id) && !l.accepted.contains(id))
            .count(),
    }
}

fn minutes() -> f64 {
    std::env::var("SOAK_MINUTES")
        .ok()
        .and_then(|m| m.parse().ok())
        .filter(|m: &f64| *m > 0.0)
        .unwrap_or(1.0)
}

#[test]
#[ignore = "the soak runs for minutes: tests/soak.sh --minutes N"]
fn soak() {
    let minutes = minutes();
    let seed: u64 = std::env::var("SOAK_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs()
        });
    let duration = Duration::from_secs_f64(minutes * 60.0);
    let every = Duration::from_secs_f64((duration.as_secs_f64() / 60.0).clamp(1.0, 30.0));
    let exe = kedge_send_path();
    let scratch = Scratch::new("soak");
    let env = start_env(&scratch);
    eprintln!(
        "soak: {minutes} min, seed {seed} (SOAK_SEED to repeat the driver's choices), endpoint {}, sampling every {:?}",
        env.server.url(),
        every
    );
    let lane = |name, table, mode, long_lived| Lane {
        name,
        table,
        mode,
        long_lived,
        spool: scratch.path(&format!("spool-{name}")),
        pid: Mutex::new(None),
        ledger: Mutex::new(Ledger::default()),
    };
    let lanes = vec![
        lane("stream-long", "SoakStreamLong", Mode::Streaming, true),
        lane("queued-long", "SoakQueuedLong", Mode::Queued, true),
        lane("stream-kill", "SoakStreamKill", Mode::Streaming, false),
        lane("queued-kill", "SoakQueuedKill", Mode::Queued, false),
    ];
    let stop = AtomicBool::new(false);
    let sampling = AtomicBool::new(false);
    let events = Mutex::new(BTreeMap::new());
    let started = Instant::now();
    let (samples, ran) = thread::scope(|s| {
        let sampler = s.spawn(|| sampler(&lanes, &stop, &sampling, every, started));
        let fault_thread = s.spawn(|| faults(&env, &stop, seed, &events));
        let mut workers = Vec::new();
        for (i, l) in lanes.iter().enumerate() {
            let (exe, env, stop, dir) = (&exe, &env, &stop, &scratch.0);
            workers.push(s.spawn(move || {
                if l.long_lived {
                    long_lane(l, exe, env, stop, dir)
                } else {
                    killed_lane(l, exe, env, stop, seed.wrapping_add(i as u64), dir)
                }
            }));
        }
        while started.elapsed() < duration {
            thread::sleep(Duration::from_millis(200));
        }
        stop.store(true, Ordering::SeqCst);
        fault_thread.join().unwrap(); // every fault off before the lanes wind down
        for w in workers {
            w.join().unwrap();
        }
        sampling.store(true, Ordering::SeqCst);
        (sampler.join().unwrap(), started.elapsed())
    });

    // The faults are off: deliver every spool, then wait for the DM's ingestor.
    let drains: Vec<(bool, Vec<String>)> = lanes
        .iter()
        .map(|l| drain(l, &exe, &env, &scratch.0))
        .collect();
    let wait_until = Instant::now() + Duration::from_secs(120);
    loop {
        let missing: usize = lanes.iter().map(|l| count(l, &env.server).lost.len()).sum();
        if missing == 0 || Instant::now() > wait_until {
            break;
        }
        thread::sleep(Duration::from_millis(500));
    }
    thread::sleep(Duration::from_secs(2)); // late duplicates
    let counted: Vec<Counted> = lanes.iter().map(|l| count(l, &env.server)).collect();

    let mut report = String::new();
    let mut failures: Vec<String> = Vec::new();
    let w = &mut report;
    writeln!(
        w,
        "soak: {:.1} min of traffic (+ drain), seed {seed}, kedge-send {}",
        ran.as_secs_f64() / 60.0,
        exe.display()
    )
    .unwrap();
    writeln!(
        w,
        "\nsamples (RSS KiB / VmHWM KiB / open fds / spool bytes; '-' between runs):"
    )
    .unwrap();
    let mut header = format!("{:>7}", "t (s)");
    for l in &lanes {
        write!(header, " | {:^27}", l.name).unwrap();
    }
    writeln!(w, "{header}").unwrap();
    for s in &samples {
        let mut row = format!("{:>7.0}", s.at.as_secs_f64());
        for (p, spool) in &s.lanes {
            let proc_text = match p {
                Some(p) => format!("{:>6} {:>6} {:>3}", p.rss_kib, p.hwm_kib, p.fds),
                None => format!("{:>6} {:>6} {:>3}", "-", "-", "-"),
            };
            write!(row, " | {proc_text} {spool:>9}").unwrap();
        }
        if !s.traffic {
            row.push_str("  (wind-down)");
        }
        writeln!(w, "{row}").unwrap();
    }
    writeln!(w, "\ngrowth (long-lived kedge-send):").unwrap();
    for (i, l) in lanes.iter().enumerate().filter(|(_, l)| l.long_lived) {
        let procs: Vec<Proc> = samples
            .iter()
            .filter(|s| s.traffic)
            .filter_map(|s| s.lanes[i].0)
            .collect();
        match growth(&procs) {
            Ok(t) => writeln!(w, "  {}: ok: {t}", l.name).unwrap(),
            Err(t) => {
                writeln!(w, "  {}: GROWTH: {t}", l.name).unwrap();
                failures.push(format!("{}: growth: {t}", l.name));
            }
        }
    }
    let spool_peak: Vec<u64> = (0..lanes.len())
        .map(|i| samples.iter().map(|s| s.lanes[i].1).max().unwrap_or(0))
        .collect();

    writeln!(w, "\nper lane:").unwrap();
    let mut total = [0usize; 8];
    let (mut kills, mut runs, mut refused, mut spool_full) = (0u64, 0u64, 0u64, 0u64);
    for (i, l) in lanes.iter().enumerate() {
        let c = &counted[i];
        let ledger = l.ledger.lock().unwrap();
        writeln!(
            w,
            "  {} ({}, {}): {} runs, {} SIGKILLs, {} runs ended by a full spool; sent {}, accepted {}, refused offers {}, arrived {}, lost {}, duplicated {} ({} of records offered once), arrived though not accepted {}, never sent {}; spool peak {} bytes (limits {SPOOL_MAX_BYTES} bytes, {SPOOL_MAX_CHUNKS} chunks), drain: {}",
            l.name,
            l.table,
            if l.mode == Mode::Queued { "queued" } else { "streaming" },
            ledger.runs,
            ledger.kills,
            ledger.spool_full_runs,
            c.sent,
            c.accepted,
            ledger.refused_offers,
            c.arrived,
            c.lost.len(),
            c.duplicates,
            c.duplicates_offered_once,
            c.unaccepted_arrived,
            c.strays,
            spool_peak[i],
            drains[i].1.join(", ")
        )
        .unwrap();
        for (why, n) in &ledger.reasons {
            writeln!(w, "      {n:>5} × {why}").unwrap();
        }
        for (k, v) in [
            c.sent,
            c.accepted,
            c.arrived,
            c.lost.len(),
            c.duplicates,
            c.strays,
            c.unaccepted_arrived,
            c.duplicates_offered_once,
        ]
        .into_iter()
        .enumerate()
        {
            total[k] += v;
        }
        kills += ledger.kills;
        runs += ledger.runs;
        spool_full += ledger.spool_full_runs;
        refused += ledger.refused_offers;
        failures.extend(ledger.failures.iter().cloned());
        if !c.lost.is_empty() {
            failures.push(format!(
                "{}: {} accepted records never arrived, first {:?}",
                l.name,
                c.lost.len(),
                &c.lost[..c.lost.len().min(10)]
            ));
        }
        if c.strays > 0 {
            failures.push(format!(
                "{}: {} records arrived that were never sent",
                l.name, c.strays
            ));
        }
        if !drains[i].0 {
            failures.push(format!(
                "{}: the spool did not drain: {:?}",
                l.name, drains[i].1
            ));
        }
        let left = chunk_files(&l.spool);
        if let Some(n) = left.get("") {
            failures.push(format!(
                "{}: {n} chunks left in the spool after the drain",
                l.name
            ));
        }
        if left.keys().any(|k| !k.is_empty()) {
            failures.push(format!(
                "{}: quarantined chunks after the drain: {left:?}",
                l.name
            ));
        }
    }
    let [sent, accepted, arrived, lost, duplicates, strays, unaccepted_arrived, dup_once] = total;
    // Records the driver offered again (after a run that did not accept them) may have gone in the first time
    // too: those copies are the integrator's. The library's own (a lost reply, a kill between the answer and the
    // spool's delete) are bounded: at-least-once, not a resend storm.
    if dup_once > sent / 4 {
        failures.push(format!(
            "{dup_once} duplicates of {sent} records offered once: a resend storm"
        ));
    }
    let st = env.server.stats();
    let dm = env.server.dm_stats();
    let auth = env.server.auth_stats();
    let violations = env.server.dm_violations();
    if !violations.is_empty() {
        failures.push(format!(
            "{} DM protocol violations, first: {:?}",
            violations.len(),
            &violations[..violations.len().min(3)]
        ));
    }
    writeln!(w, "\nfaults injected:").unwrap();
    writeln!(w, "  per streaming request: {:?}", st.faults_injected).unwrap();
    for (name, n) in events.lock().unwrap().iter() {
        writeln!(w, "  {n:>5} × {name}").unwrap();
    }
    writeln!(
        w,
        "  tokens: {} issued (lifetime {} s), {} ingest/management requests refused for an expired token, {} for an unknown one",
        auth.tokens.len(),
        TOKEN_LIFETIME.as_secs(),
        auth.expired_token_rejections,
        auth.invalid_token_rejections
    )
    .unwrap();
    writeln!(
        w,
        "  DM: {} resource fetches, {} management commands throttled, {} refused, {} blobs ingested, {} failed ingestions, {} duplicates refused in the batch window, {} ingested again",
        dm.resources_requests,
        dm.mgmt_throttled,
        dm.mgmt_refused,
        dm.blobs_ingested,
        dm.failed_ingestions,
        dm.duplicates_in_batch,
        dm.duplicates_ingested
    )
    .unwrap();
    writeln!(
        w,
        "  endpoint: {} streaming requests, {} ingested, {} chunks ingested twice",
        st.requests, st.ingested_requests, st.duplicate_chunks
    )
    .unwrap();
    writeln!(
        w,
        "\nsummary: records sent {sent}, accepted {accepted}, refused offers {refused} (offered again, or still unaccepted at the end: {}), arrived {arrived}, lost {lost}, duplicated {duplicates} ({dup_once} of records offered once, the rest of records the driver offered again), arrived though not accepted {unaccepted_arrived}, never sent {strays}; {runs} kedge-send runs, {kills} SIGKILLs, {spool_full} runs ended by a full spool; {} fault events, {} faulted streaming requests; took {:.1} min with the drain",
        sent - accepted,
        events.lock().unwrap().values().sum::<u64>(),
        st.faults_injected.values().sum::<usize>(),
        started.elapsed().as_secs_f64() / 60.0
    )
    .unwrap();
    if failures.is_empty() {
        writeln!(w, "result: PASS").unwrap();
    } else {
        writeln!(w, "result: FAIL").unwrap();
        for f in &failures {
            writeln!(w, "  - {f}").unwrap();
        }
    }
    eprintln!("{report}");
    let report_path = std::env::var_os("SOAK_REPORT")
        .map(PathBuf::from)
        .unwrap_or_else(|| target_dir().join("soak-report.txt"));
    let _ = fs::write(&report_path, &report);
    eprintln!("report written to {}", report_path.display());
    assert!(failures.is_empty(), "soak failed:\n{}", failures.join("\n"));
}
