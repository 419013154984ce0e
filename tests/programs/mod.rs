//! What the tests that run the C programs share, native (`c_programs.rs`) or under qemu (`arm.rs`): scratch
//! directories, running a program with bounded time and captured output, the test endpoint, record files and the
//! check that every record arrived exactly once.
#![allow(dead_code)] // each test file uses its own subset

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use kusto_devserver::{Server, ServerConfig};

#[path = "../common/mod.rs"]
mod common;
pub use common::seq_of;

pub const MANIFEST_DIR: &str = env!("CARGO_MANIFEST_DIR");

/// Cargo's target directory as cargo itself uses it (`CARGO_TARGET_DIR`, relative to the crate, or `target`).
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) if !d.is_empty() => {
            let d = PathBuf::from(d);
            if d.is_absolute() {
                d
            } else {
                Path::new(MANIFEST_DIR).join(d)
            }
        }
        _ => Path::new(MANIFEST_DIR).join("target"),
    }
}

/// Builds the host's static library the way a C user does (`cargo build --release --lib`, cargo's lock is free
/// while tests run) and returns the directory holding `libkusto_edge.a`. Both test files call it, so neither
/// rebuilds it for the other.
pub fn build_host_lib() -> Result<PathBuf, String> {
    let target = target_dir();
    let cargo = Command::new(env!("CARGO"))
        .args(["build", "--release", "--lib"])
        .current_dir(MANIFEST_DIR)
        .env("CARGO_TARGET_DIR", &target)
        .output()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if !cargo.status.success() {
        return Err(format!(
            "cargo build --release --lib failed:\n{}",
            String::from_utf8_lossy(&cargo.stderr)
        ));
    }
    let lib_dir = target.join("release");
    if !lib_dir.join("libkusto_edge.a").is_file() {
        return Err(format!(
            "{} has no libkusto_edge.a after the build",
            lib_dir.display()
        ));
    }
    Ok(lib_dir)
}

/// Builds the host library and the C programs of `examples-c` with its Makefile (its own CFLAGS: `-std=c99 ...
/// -Werror -pedantic`, none from the environment) and returns the directory holding them (`target/c-build`).
pub fn build_c_programs() -> Result<PathBuf, String> {
    let lib_dir = build_host_lib()?;
    let programs = target_dir().join("c-build");
    let make = Command::new("make")
        .arg("-C")
        .arg(Path::new(MANIFEST_DIR).join("examples-c"))
        .arg(format!("LIBDIR={}", lib_dir.display()))
        .arg(format!("BUILD={}", programs.display()))
        .env_remove("CFLAGS")
        .env_remove("LDFLAGS")
        .output()
        .map_err(|e| format!("cannot run make: {e}"))?;
    if !make.status.success() {
        return Err(format!(
            "make failed (warnings are errors):\n{}\n{}",
            String::from_utf8_lossy(&make.stdout),
            String::from_utf8_lossy(&make.stderr)
        ));
    }
    Ok(programs)
}

/// Waits for `child` to end and returns its exit code (None when a signal ended it) and the kernel's account of
/// its resources (`wait4`: CPU times, peak resident set). Beware `ru_maxrss`: Linux records the old address
/// space's peak at `exec`, and a child's old address space is this (test) process's, so the figure is at least
/// this process's own peak when the child was spawned, not the program's alone.
pub fn wait_with_usage(child: std::process::Child) -> (Option<i32>, libc::rusage) {
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: a zeroed rusage is a valid out-parameter (plain integers).
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid out-parameters; pid is our own child, reaped exactly once here (forgotten below, so std does
    // not wait for it again).
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(r, pid, "wait4");
    std::mem::forget(child);
    (
        libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status)),
        usage,
    )
}

/// Tests that run programs take turns, so one program's CPU use does not distort another's timings.
pub fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// A fresh directory for one test's files, removed when the test passes (kept for a look when it fails).
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(name: &str) -> Scratch {
        // Unique per call: several tests run the same helper with the same name.
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let d = target_dir()
            .join("test-scratch")
            .join(format!("{name}-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).expect("scratch dir");
        Scratch(d)
    }
    pub fn path(&self, file: &str) -> PathBuf {
        self.0.join(file)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
}

/// How a program ended.
pub struct Outcome {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub took: Duration,
}

impl Outcome {
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }
    pub fn describe(&self) -> String {
        format!(
            "{:?} after {:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.status,
            self.took,
            tail(&self.stdout),
            tail(&self.stderr)
        )
    }
}

/// The last 8000 bytes of a long output.
pub fn tail(s: &str) -> &str {
    let mut start = s.len().saturating_sub(8000);
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

/// Runs a program with its output going to files (no pipe to fill up), killing it after `limit`. The
/// environment variables the programs read are removed so the machine's own cannot leak in.
pub fn run(mut cmd: Command, stdin: Option<&Path>, scratch: &Scratch, limit: Duration) -> Outcome {
    let out_path = scratch.path("stdout.txt");
    let err_path = scratch.path("stderr.txt");
    cmd.stdout(File::create(&out_path).expect("stdout file"));
    cmd.stderr(File::create(&err_path).expect("stderr file"));
    cmd.stdin(match stdin {
        Some(p) => Stdio::from(File::open(p).expect("stdin file")),
        None => Stdio::null(),
    });
    for var in [
        "KEDGE_TOKEN",
        "KEDGE_URL",
        "KEDGE_CA_FILE",
        "KEDGE_DATABASE",
        "KEDGE_TABLE",
        "SENSOR_RECORDS",
    ] {
        cmd.env_remove(var);
    }
    let started = Instant::now();
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{cmd:?} still running after {limit:?}\n--- stderr\n{}",
                tail(&fs::read_to_string(&err_path).unwrap_or_default())
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Outcome {
        status,
        stdout: fs::read_to_string(&out_path).unwrap_or_default(),
        stderr: fs::read_to_string(&err_path).unwrap_or_default(),
        took: started.elapsed(),
    }
}

/// The test endpoint over HTTPS, with a static token if given.
pub fn tls_server(token: Option<&str>) -> Server {
    Server::start(ServerConfig {
        tls: true,
        token: token.map(str::to_owned),
        ..Default::default()
    })
    .expect("start devserver")
}

/// The endpoint's test CA, as a file for `--ca-file` / `tls.ca_file`.
pub fn write_ca(server: &Server, scratch: &Scratch) -> PathBuf {
    let path = scratch.path("ca.pem");
    fs::write(&path, server.ca_pem().expect("TLS server has a CA")).expect("write CA");
    path
}

/// `n` JSON lines of about 100 bytes, each with its own sequence number.
pub fn write_records(path: &Path, n: u64) {
    let mut w = BufWriter::new(File::create(path).expect("records file"));
    for seq in 0..n {
        writeln!(
            w,
            "{{\"seq\":{seq},\"device\":\"gw-1\",\"site\":\"plant-7\",\"temp\":{:.1},\"humidity\":{},\"status\":\"ok\",\"fw\":\"1.4.2\"}}",
            20.0 + (seq % 100) as f64 / 10.0,
            30 + seq % 40
        )
        .expect("write record");
    }
    w.flush().expect("flush records");
}

/// Every sequence number 0..n arrived exactly once, and nothing else did.
pub fn assert_each_seq_once(records: &[Vec<u8>], n: u64) {
    let mut seen: HashMap<u64, usize> = HashMap::new();
    for r in records {
        let seq = seq_of(r)
            .unwrap_or_else(|| panic!("stored record without seq: {}", String::from_utf8_lossy(r)));
        *seen.entry(seq).or_default() += 1;
    }
    let missing: Vec<u64> = (0..n).filter(|s| !seen.contains_key(s)).take(10).collect();
    let dups: Vec<(u64, usize)> = seen
        .iter()
        .filter(|(_, &c)| c > 1)
        .map(|(&s, &c)| (s, c))
        .take(10)
        .collect();
    let strays: Vec<u64> = seen.keys().copied().filter(|&s| s >= n).take(10).collect();
    assert!(
        missing.is_empty(),
        "records missing (first 10): {missing:?}; {} stored of {n}",
        records.len()
    );
    assert!(
        dups.is_empty(),
        "records stored more than once (seq, times): {dups:?}"
    );
    assert!(
        strays.is_empty(),
        "records that were never sent: {strays:?}"
    );
    assert_eq!(records.len() as u64, n);
}
