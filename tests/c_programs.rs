//! The C side of the library as a C user meets it: the examples and the C test programs in `examples-c/` and
//! `tests/c/` are built with `make` against the release static library (warnings are errors), then run against an
//! in-process test endpoint.
//!
//! The static library is built once per test process with `cargo build --release --lib` into the same target
//! directory (`CARGO_TARGET_DIR` if set, else `<crate>/target`); tests that run programs are serialised so their
//! timings do not disturb each other.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use kusto_devserver::{tools, Fault, Faults, RequestLog, Server, ServerConfig};

mod programs;
use programs::*;

const MAX_REQUEST_RAW_BYTES: usize = 4 * 1024 * 1024;

struct Built {
    /// Where `make` put the programs.
    programs: PathBuf,
}

fn build_everything() -> Result<Built, String> {
    Ok(Built {
        programs: build_c_programs()?,
    })
}

fn built() -> &'static Built {
    static BUILT: OnceLock<Result<Built, String>> = OnceLock::new();
    match BUILT.get_or_init(build_everything) {
        Ok(b) => b,
        Err(e) => panic!("{e}"),
    }
}

fn program(name: &str) -> Command {
    let path = built().programs.join(name);
    assert!(path.is_file(), "{} was not built", path.display());
    Command::new(path)
}

fn assert_request_ids_unique(requests: &[RequestLog]) {
    let mut ids = HashSet::new();
    for r in requests {
        assert!(
            ids.insert(r.client_request_id.as_str()),
            "request id sent twice: {}",
            r.client_request_id
        );
    }
}

/// `KEC.executeStreamingIngest;{chunk};{attempt}` → chunk.
fn chunk_of(request_id: &str) -> &str {
    request_id
        .split(';')
        .nth(1)
        .unwrap_or_else(|| panic!("request id without a chunk: {request_id}"))
}

fn kedge_send(url: &str, ca: Option<&Path>, table: &str) -> Command {
    let mut cmd = program("kedge-send");
    cmd.args(["--url", url, "--database", "db", "--table", table]);
    if let Some(ca) = ca {
        cmd.arg("--ca-file").arg(ca);
    }
    cmd
}

#[test]
fn examples_and_c_tests_build_without_warnings_and_the_header_is_c99_and_cxx() {
    let b = built(); // the make step itself: -std=c99 -Wall -Wextra -Werror -pedantic
    for name in [
        "sensor",
        "kedge-send",
        "api_robustness",
        "config_errbuf",
        "version",
    ] {
        assert!(b.programs.join(name).is_file(), "{name} was not built");
    }
    let scratch = Scratch::new("header");
    let include = Path::new(MANIFEST_DIR).join("include");
    let src = scratch.path("uses_header.c");
    fs::write(
        &src,
        "#include \"kusto_edge.h\"\n\
         int main(void) { kedge_stats s; (void)s; return kedge_result_str(KEDGE_OK) == 0; }\n",
    )
    .unwrap();
    let compilers: [(&str, &[&str]); 2] = [
        (
            "cc",
            &[
                "-std=c99",
                "-pedantic",
                "-Wall",
                "-Wextra",
                "-Werror",
                "-fsyntax-only",
                "-x",
                "c",
            ],
        ),
        (
            "g++",
            &[
                "-std=c++11",
                "-pedantic",
                "-Wall",
                "-Wextra",
                "-Werror",
                "-fsyntax-only",
                "-x",
                "c++",
            ],
        ),
    ];
    for (compiler, flags) in compilers {
        let out = Command::new(compiler)
            .args(flags)
            .arg("-I")
            .arg(&include)
            .arg(&src)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {compiler}: {e}"));
        assert!(
            out.status.success(),
            "kusto_edge.h does not compile with {compiler} {flags:?}:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn api_robustness_gets_the_documented_code_for_every_null_and_garbage_argument() {
    let _g = serial();
    let scratch = Scratch::new("robustness");
    let out = run(
        program("api_robustness"),
        None,
        &scratch,
        Duration::from_secs(60),
    );
    assert_eq!(
        out.code(),
        Some(0),
        "api_robustness failed: {}",
        out.describe()
    );
    let last = out.stdout.lines().last().unwrap_or("");
    let (n, rest) = last.split_once(' ').unwrap_or(("", ""));
    let n: u32 = n.parse().unwrap_or(0);
    assert_eq!(rest, "passed, 0 failed", "unexpected last line: {last:?}");
    assert!(n > 100, "only {n} checks ran: {}", out.describe());
}

/// A C test program's verdict: exit 0 and a last line "N passed, 0 failed" with at least `min_checks` checks.
fn assert_c_checks_pass(name: &str, out: &Outcome, min_checks: u32) {
    assert_eq!(out.code(), Some(0), "{name} failed: {}", out.describe());
    let last = out.stdout.lines().last().unwrap_or("");
    let (n, rest) = last.split_once(' ').unwrap_or(("", ""));
    let n: u32 = n.parse().unwrap_or(0);
    assert_eq!(
        rest, "passed, 0 failed",
        "{name}: unexpected last line: {last:?}"
    );
    assert!(
        n >= min_checks,
        "{name}: only {n} checks ran: {}",
        out.describe()
    );
}

#[test]
fn ca_pem_and_spool_key_write_their_errors_into_errbuf_as_config_set_does() {
    let _g = serial();
    let scratch = Scratch::new("config-errbuf");
    let mut cmd = program("config_errbuf");
    cmd.arg(Path::new(MANIFEST_DIR).join("devserver/fixtures/client-cert.pem"));
    let out = run(cmd, None, &scratch, Duration::from_secs(30));
    // 12 failing calls with 14 checks each, the key never shown by 5 of them, three successes and the file read.
    assert_c_checks_pass("config_errbuf", &out, 12 * 14 + 5 + 4);
}

#[test]
fn the_header_version_macros_are_the_linked_library_s_version() {
    let _g = serial();
    let scratch = Scratch::new("version");
    let out = run(program("version"), None, &scratch, Duration::from_secs(30));
    assert_c_checks_pass("version", &out, 9);
    assert!(
        out.stdout.contains(&format!(
            "header {v}, library {v}",
            v = env!("CARGO_PKG_VERSION")
        )),
        "{}",
        out.describe()
    );
}

#[test]
fn every_chunk_gets_one_final_report_with_wire_bytes_and_status_and_free_spools_and_reports() {
    let _g = serial();
    let scratch = Scratch::new("reports");
    let server = Server::start(ServerConfig::default()).expect("devserver");
    server.push_fault(kusto_devserver::Fault::Unavailable { retry_after: None });
    let mut cmd = program("reports");
    cmd.arg(server.url()).arg(scratch.path("spool"));
    let out = run(cmd, None, &scratch, Duration::from_secs(60));
    assert_c_checks_pass("reports", &out, 80);
    // 3 + 5 records, then 2 of the 3 single-record chunks (the oldest was dropped by the full spool).
    assert_eq!(
        server.records("db", "Reports").len(),
        10,
        "{}",
        out.describe()
    );
}

#[test]
fn sensor_example_delivers_every_record_over_https() {
    let _g = serial();
    let scratch = Scratch::new("sensor");
    let server = tls_server(None);
    let ca = write_ca(&server, &scratch);
    let mut cmd = program("sensor");
    cmd.arg(server.url()).arg(&ca);
    let out = run(cmd, None, &scratch, Duration::from_secs(60));
    assert_eq!(out.code(), Some(0), "sensor failed: {}", out.describe());
    assert_each_seq_once(&server.records("edge", "Telemetry"), 300);
    let requests = server.requests();
    assert!(
        requests.iter().all(|r| r.status == 200 && r.gzip_ok),
        "a request failed: {requests:?}"
    );
    assert!(
        out.stdout.contains("300 acknowledged"),
        "sensor's summary: {}",
        out.describe()
    );
}

#[test]
fn kedge_send_streams_100k_records_exactly_once_over_https_in_requests_under_4_mib() {
    let _g = serial();
    let scratch = Scratch::new("e2e");
    let server = tls_server(None);
    let ca = write_ca(&server, &scratch);
    let input = scratch.path("records.jsonl");
    write_records(&input, 100_000);
    let raw_input = fs::metadata(&input).unwrap().len();

    let mut cmd = kedge_send(&server.url(), Some(&ca), "Telemetry");
    cmd.args(["--batch-bytes", "4194304"]).arg(&input);
    let out = run(cmd, None, &scratch, Duration::from_secs(180));
    assert_eq!(out.code(), Some(0), "kedge-send failed: {}", out.describe());
    eprintln!(
        "kedge-send: 100,000 records ({raw_input} bytes) in {:?}: {}",
        out.took,
        out.stderr.trim()
    );

    assert_each_seq_once(&server.records("db", "Telemetry"), 100_000);
    let requests = server.requests();
    let fewest = raw_input.div_ceil(MAX_REQUEST_RAW_BYTES as u64) as usize;
    assert!(
        requests.len() >= fewest,
        "{raw_input} bytes cannot fit in {} requests of 4 MiB",
        requests.len()
    );
    for r in &requests {
        assert!(
            r.raw_bytes <= MAX_REQUEST_RAW_BYTES,
            "request {} has {} raw bytes",
            r.client_request_id,
            r.raw_bytes
        );
        assert!(
            r.gzip_ok,
            "request {} was not valid gzip",
            r.client_request_id
        );
        assert_eq!(
            r.status, 200,
            "request {} answered {}",
            r.client_request_id, r.status
        );
    }
    assert_request_ids_unique(&requests);
    assert!(
        out.stderr
            .contains("100000 records (100000 acknowledged, 0 rejected)"),
        "summary: {}",
        out.describe()
    );
}

#[test]
fn kedge_send_rides_out_throttling_outages_and_resets_and_honours_retry_after() {
    let _g = serial();
    let scratch = Scratch::new("faults");
    let server = tls_server(None);
    let ca = write_ca(&server, &scratch);
    server.set_faults(Faults {
        seed: 20240611,
        random: vec![
            (
                Fault::Throttle {
                    retry_after: Some("1".into()),
                },
                0.1,
            ),
            (Fault::Unavailable { retry_after: None }, 0.1),
            (Fault::Reset, 0.05),
        ],
    });
    let input = scratch.path("records.jsonl");
    write_records(&input, 20_000);

    let mut cmd = kedge_send(&server.url(), Some(&ca), "Telemetry");
    cmd.args([
        "--batch-bytes",
        "65536",
        "-X",
        "retry.max_attempts=8",
        "-X",
        "retry.base_ms=20",
    ])
    .arg(&input);
    let out = run(cmd, None, &scratch, Duration::from_secs(300));
    assert_eq!(out.code(), Some(0), "kedge-send failed: {}", out.describe());
    assert_each_seq_once(&server.records("db", "Telemetry"), 20_000);

    let requests = server.requests();
    assert_request_ids_unique(&requests);
    let throttled = requests.iter().filter(|r| r.status == 429).count();
    let unavailable = requests.iter().filter(|r| r.status == 503).count();
    let reset = requests.iter().filter(|r| r.status == 0).count();
    eprintln!(
        "{} requests: {throttled} throttled, {unavailable} unavailable, {reset} reset; took {:?}",
        requests.len(),
        out.took
    );
    assert!(
        throttled > 0 && unavailable + reset > 0,
        "the faults did not happen: nothing was tested"
    );
    for (i, r) in requests.iter().enumerate() {
        if r.status != 429 {
            continue;
        }
        let chunk = chunk_of(&r.client_request_id);
        let next = requests[i + 1..]
            .iter()
            .find(|n| chunk_of(&n.client_request_id) == chunk)
            .unwrap_or_else(|| panic!("chunk {chunk} was throttled and never sent again"));
        let waited = next.at.duration_since(r.at);
        assert!(
            waited >= Duration::from_millis(950),
            "after 429 Retry-After: 1 on {}, {} came {waited:?} later",
            r.client_request_id,
            next.client_request_id
        );
    }
}

/// Feeds `input` to kedge-send (`cmd`) through a pipe, waits until the endpoint holds its `records` records, and
/// returns kedge-send's peak resident set (KiB) read from its own `/proc/<pid>/status` (`VmHWM`: the peak of its
/// address space since `exec`) while the pipe is still open, then its exit code once the pipe is closed.
/// Not `wait4`'s `ru_maxrss`: Linux folds the spawning process's peak into it at `exec`, so from a test process
/// that holds an endpoint it measures the test, not kedge-send.
fn run_for_peak_rss(
    cmd: Command,
    scratch: &Scratch,
    server: &Server,
    table: &str,
    input: &Path,
    records: usize,
) -> (Option<i32>, i64) {
    let mut child = spawn_on_pipe(cmd, scratch);
    let mut pipe = child.stdin.take().unwrap();
    std::io::copy(&mut File::open(input).unwrap(), &mut pipe).expect("feed kedge-send");
    assert!(
        wait_for_records(server, table, records, Duration::from_secs(300)),
        "kedge-send did not deliver {records} records"
    );
    let status = fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap();
    let peak_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/<pid>/status");
    drop(pipe);
    let (code, stderr) = wait_bounded(child, scratch, Duration::from_secs(60));
    assert_eq!(code, Some(0), "{stderr}");
    (code, peak_kib)
}

#[test]
fn kedge_send_peak_rss_for_57_mb_is_within_1_15_times_its_rss_for_1_mb() {
    let _g = serial();
    let scratch = Scratch::new("rss");
    let server = Server::start(ServerConfig::default()).expect("devserver");
    let mut peaks = Vec::new();
    for (name, records) in [("small", 9_000u64), ("large", 570_000)] {
        let input = scratch.path(&format!("{name}.jsonl"));
        write_records(&input, records);
        let mb = fs::metadata(&input).unwrap().len() as f64 / 1e6;
        let mut cmd = kedge_send(&server.url(), None, name);
        cmd.args(["--allow-http", "--quiet"]);
        let (code, peak_kib) =
            run_for_peak_rss(cmd, &scratch, &server, name, &input, records as usize);
        assert_eq!(code, Some(0), "kedge-send {name}");
        println!("kedge-send {mb:.1} MB: peak RSS {peak_kib} KiB");
        peaks.push((mb, peak_kib));
    }
    let (small, large) = (peaks[0], peaks[1]);
    assert!(
        small.0 < 1.5 && large.0 > 50.0,
        "inputs of about 1 and 57 MB: {peaks:?}"
    );
    assert!(
        large.1 as f64 <= 1.15 * small.1 as f64,
        "peak RSS grows with the input: {} KiB for {:.1} MB against {} KiB for {:.1} MB",
        large.1,
        large.0,
        small.1,
        small.0
    );
}

#[test]
fn kedge_send_exits_64_on_usage_errors_and_0_for_help() {
    let _g = serial();
    let scratch = Scratch::new("usage");
    let cases: [&[&str]; 7] = [
        &["--database", "db", "--table", "T"],
        &[
            "--url",
            "https://localhost:1",
            "--database",
            "db",
            "--table",
            "T",
            "--gzip-level",
            "10",
        ],
        &[
            "--url",
            "https://localhost:1",
            "--database",
            "db",
            "--table",
            "T",
            "-X",
            "no.such.key=1",
        ],
        &[
            "--url",
            "https://localhost:1",
            "--database",
            "db",
            "--table",
            "T",
            "-X",
            "batch.bytes=12k",
        ],
        &[
            "--url",
            "https://localhost:1",
            "--database",
            "db",
            "--table",
            "T",
            "--no-such-flag",
        ],
        &[
            "--url",
            "https://localhost:1",
            "--database",
            "db",
            "--table",
            "T",
            "/nonexistent/input.jsonl",
        ],
        &[
            "--url",
            "https://localhost:1",
            "--database",
            "db",
            "--table",
            "T",
            "--wait",
            "soon",
        ],
    ];
    for args in cases {
        let mut cmd = program("kedge-send");
        cmd.args(args);
        let out = run(cmd, None, &scratch, Duration::from_secs(30));
        assert_eq!(
            out.code(),
            Some(64),
            "kedge-send {args:?}: {}",
            out.describe()
        );
    }
    let mut cmd = program("kedge-send");
    cmd.arg("--help");
    let out = run(cmd, None, &scratch, Duration::from_secs(30));
    assert_eq!(out.code(), Some(0), "--help: {}", out.describe());
    assert!(
        out.stdout.starts_with("usage: kedge-send"),
        "--help prints usage to stdout: {}",
        out.describe()
    );
}

#[test]
fn kedge_send_exits_77_when_every_request_is_refused_401_and_never_prints_the_token() {
    let _g = serial();
    let scratch = Scratch::new("auth");
    let server = tls_server(Some("the-right-token"));
    let ca = write_ca(&server, &scratch);
    let input = scratch.path("records.jsonl");
    write_records(&input, 10);
    let secret = "wrong-token-5f2c9a";
    let mut cmd = kedge_send(&server.url(), Some(&ca), "T");
    cmd.args(["--token", secret, "--give-up-secs", "2", "--verbose"])
        .arg(&input);
    let out = run(cmd, None, &scratch, Duration::from_secs(60));
    assert_eq!(out.code(), Some(77), "kedge-send: {}", out.describe());
    assert!(
        !out.stderr.contains(secret) && !out.stdout.contains(secret),
        "the token was printed"
    );
    let requests = server.requests();
    assert!(
        !requests.is_empty() && requests.iter().all(|r| r.status == 401),
        "requests: {requests:?}"
    );
    assert!(server.records("db", "T").is_empty());
}

#[test]
fn kedge_send_exits_65_when_the_service_rejects_the_data() {
    let _g = serial();
    let scratch = Scratch::new("reject");
    let server = tls_server(None);
    let ca = write_ca(&server, &scratch);
    // Every request is refused: the chunk, then each half it is split into to find the bad records.
    for _ in 0..100 {
        server.push_fault(Fault::RejectData);
    }
    let input = scratch.path("records.jsonl");
    write_records(&input, 20);
    let mut cmd = kedge_send(&server.url(), Some(&ca), "T");
    cmd.arg(&input);
    let out = run(cmd, None, &scratch, Duration::from_secs(60));
    assert_eq!(out.code(), Some(65), "kedge-send: {}", out.describe());
    assert!(
        out.stderr.contains("(0 acknowledged, 20 rejected)"),
        "summary: {}",
        out.describe()
    );
    assert!(server.records("db", "T").is_empty());
}

#[test]
fn kedge_send_exits_65_on_invalid_input_lines_but_sends_the_rest() {
    let _g = serial();
    let scratch = Scratch::new("invalid");
    let server = tls_server(None);
    let ca = write_ca(&server, &scratch);
    let input = scratch.path("records.jsonl");
    let mut data = Vec::new();
    data.extend_from_slice(b"{\"seq\":0}\r\n\n{\"seq\":1}\n");
    data.extend_from_slice(b"{\"seq\":\xff}\n"); // not UTF-8
    data.extend_from_slice(format!("{{\"seq\":99,\"pad\":\"{}\"}}\n", "x".repeat(2000)).as_bytes()); // > batch.bytes
    data.extend_from_slice(b"{\"seq\":2}"); // no final newline
    fs::write(&input, data).unwrap();
    let mut cmd = kedge_send(&server.url(), Some(&ca), "T");
    cmd.args(["--format", "json", "--batch-bytes", "1024"])
        .arg(&input);
    let out = run(cmd, None, &scratch, Duration::from_secs(60));
    assert_eq!(out.code(), Some(65), "kedge-send: {}", out.describe());
    assert!(
        out.stderr.contains(":4:") && out.stderr.contains(":5:"),
        "line numbers of the bad lines: {}",
        out.describe()
    );
    assert_each_seq_once(&server.records("db", "T"), 3);
}

#[test]
fn kedge_send_exits_69_when_nothing_listens() {
    let _g = serial();
    let scratch = Scratch::new("unreachable");
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let input = scratch.path("records.jsonl");
    write_records(&input, 50);
    let url = format!("http://127.0.0.1:{port}");
    let mut cmd = kedge_send(&url, None, "T");
    cmd.args(["--allow-http", "--give-up-secs", "2", "--quiet"]);
    cmd.args([
        "-X",
        "timeout.connect_ms=500",
        "-X",
        "retry.max_attempts=2",
        "-X",
        "retry.base_ms=10",
    ]);
    cmd.args(["-X", "retry.max_total_ms=1000"]).arg(&input);
    let out = run(cmd, None, &scratch, Duration::from_secs(60));
    assert_eq!(out.code(), Some(69), "kedge-send: {}", out.describe());
    assert!(
        out.took < Duration::from_secs(20),
        "giving up after 2 s took {:?}",
        out.took
    );
    assert!(
        out.stderr.contains("gave up"),
        "--quiet still prints the final error: {}",
        out.describe()
    );
}

/// How [`c_programs_pass_under`] runs the C programs: which build, and what wraps each run.
#[derive(Clone, Copy, Debug)]
enum Checker {
    /// The Makefile's build under `valgrind --tool=memcheck`: any error or definite leak is exit code 99.
    Memcheck,
    /// The C side rebuilt with AddressSanitizer and UndefinedBehaviorSanitizer (LeakSanitizer included), linked
    /// against the same release static library: any report ends the program with exit code 99.
    Sanitizers,
}

/// The C compiler flags of the sanitizer build: the Makefile's own warnings, plus the sanitizers with no
/// recovery (the first report ends the program).
const SANITIZER_CFLAGS: &str = "-std=c99 -O1 -g -Wall -Wextra -Werror -pedantic \
     -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all";

/// Marks of a sanitizer or memcheck report in a program's output: a run that printed one fails even if its exit
/// code somehow came out 0.
const REPORT_MARKS: &[&str] = &[
    "ERROR: AddressSanitizer",
    "ERROR: LeakSanitizer",
    "runtime error:",
    "Invalid read",
    "Invalid write",
    "Invalid free",
    "definitely lost in",
    "uninitialised value",
];

fn build_sanitized() -> Result<PathBuf, String> {
    let lib_dir = build_host_lib()?;
    let programs = target_dir().join("c-build-sanitizers");
    // The flags are not among make's prerequisites: start from nothing so every program gets them.
    let _ = fs::remove_dir_all(&programs);
    let make = Command::new("make")
        .arg("-C")
        .arg(Path::new(MANIFEST_DIR).join("examples-c"))
        .arg(format!("LIBDIR={}", lib_dir.display()))
        .arg(format!("BUILD={}", programs.display()))
        .arg(format!("CFLAGS={SANITIZER_CFLAGS}"))
        .arg("LDFLAGS=-fsanitize=address,undefined")
        .env_remove("CFLAGS")
        .env_remove("LDFLAGS")
        .env_remove("MAKEFLAGS")
        .output()
        .map_err(|e| format!("cannot run make: {e}"))?;
    if !make.status.success() {
        return Err(format!(
            "make with -fsanitize=address,undefined failed:\n{}\n{}",
            String::from_utf8_lossy(&make.stdout),
            String::from_utf8_lossy(&make.stderr)
        ));
    }
    Ok(programs)
}

fn sanitized_programs() -> &'static Path {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match BUILT.get_or_init(build_sanitized) {
        Ok(p) => p,
        Err(e) => panic!("{e}"),
    }
}

/// Whether gcc here can build and run a program with the sanitizers (the runtimes are Debian's libasan and
/// libubsan, which the gcc package pulls in).
fn sanitizer_requirements() -> Result<(), String> {
    let dir = target_dir().join("sanitizer-probe");
    fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let src = dir.join("probe.c");
    fs::write(&src, "int main(void) { return 0; }\n").map_err(|e| e.to_string())?;
    let exe = dir.join("probe");
    let built = Command::new("cc")
        .args(SANITIZER_CFLAGS.split_whitespace())
        .arg("-o")
        .arg(&exe)
        .arg(&src)
        .output()
        .is_ok_and(|o| o.status.success());
    if built && tools::runs(exe.to_str().unwrap(), &[]) {
        Ok(())
    } else {
        Err("cc cannot build with -fsanitize=address,undefined: install the Debian packages gcc libasan8 \
             libubsan1"
            .into())
    }
}

impl Checker {
    fn command(self, prog: &str) -> Command {
        match self {
            Checker::Memcheck => {
                let mut cmd = Command::new("valgrind");
                cmd.args([
                    "-q",
                    "--tool=memcheck",
                    "--error-exitcode=99",
                    "--leak-check=full",
                    "--errors-for-leak-kinds=definite",
                    "--track-origins=yes",
                ]);
                cmd.arg(built().programs.join(prog));
                cmd
            }
            Checker::Sanitizers => {
                let mut cmd = Command::new(sanitized_programs().join(prog));
                cmd.env(
                    "ASAN_OPTIONS",
                    "detect_leaks=1:exitcode=99:abort_on_error=0:detect_stack_use_after_return=1",
                )
                .env(
                    "UBSAN_OPTIONS",
                    "print_stacktrace=1:halt_on_error=1:exitcode=99",
                )
                .env("LSAN_OPTIONS", "exitcode=99");
                cmd
            }
        }
    }

    /// The program's output carries no report, whatever its exit code.
    fn assert_no_report(self, prog: &str, out: &Outcome) {
        for mark in REPORT_MARKS {
            assert!(
                !out.stderr.contains(mark) && !out.stdout.contains(mark),
                "{prog} under {self:?} reported {mark:?}: {}",
                out.describe()
            );
        }
    }
}

/// The C test programs and a kedge-send end-to-end run (an outage that sends everything to the spool, then a
/// drain through throttling, 503s and connection resets) under `checker`. Plain http: ring's assembly confuses
/// memcheck, and the C side (what the checkers are for) is the same either way.
fn c_programs_pass_under(checker: Checker) {
    let _g = serial();
    let scratch = Scratch::new(&format!("checked-{checker:?}"));
    // Valgrind makes a program 20-50 times slower.
    let limit = Duration::from_secs(300);

    let out = run(checker.command("api_robustness"), None, &scratch, limit);
    checker.assert_no_report("api_robustness", &out);
    assert_c_checks_pass("api_robustness", &out, 100);

    let mut cmd = checker.command("config_errbuf");
    cmd.arg(Path::new(MANIFEST_DIR).join("devserver/fixtures/client-cert.pem"));
    let out = run(cmd, None, &scratch, limit);
    checker.assert_no_report("config_errbuf", &out);
    assert_c_checks_pass("config_errbuf", &out, 12 * 14 + 5 + 4);

    let out = run(checker.command("version"), None, &scratch, limit);
    checker.assert_no_report("version", &out);
    assert_c_checks_pass("version", &out, 9);

    let server = Server::start(ServerConfig::default()).expect("start devserver");
    server.push_fault(Fault::Unavailable { retry_after: None });
    let mut cmd = checker.command("reports");
    cmd.arg(server.url()).arg(scratch.path("reports-spool"));
    let out = run(cmd, None, &scratch, limit);
    checker.assert_no_report("reports", &out);
    assert_c_checks_pass("reports", &out, 80);
    drop(server);

    let server = Server::start(ServerConfig::default()).expect("start devserver");
    let spool = scratch.path("spool");
    let input = scratch.path("records.jsonl");
    write_records(&input, 3000);
    let spooling = |extra: &[&str]| {
        let mut cmd = checker.command("kedge-send");
        cmd.args([
            "--url",
            &server.url(),
            "--allow-http",
            "--database",
            "db",
            "--table",
            "T",
            "--quiet",
            "--batch-bytes",
            "16384",
        ])
        .arg("--spool")
        .arg(&spool);
        for x in [
            "retry.max_attempts=8",
            "retry.base_ms=5",
            "retry.max_total_ms=2000",
            "backoff.max_ms=300",
            "timeout.connect_ms=500",
            "timeout.recv_ms=2000",
        ] {
            cmd.args(["-X", x]);
        }
        cmd.args(extra);
        cmd
    };
    server.set_down(Duration::from_secs(3600));
    let mut cmd = spooling(&["--give-up-secs", "1"]);
    cmd.arg(&input);
    let out = run(cmd, None, &scratch, limit);
    checker.assert_no_report("kedge-send", &out);
    assert_eq!(
        out.code(),
        Some(75),
        "kedge-send during an outage under {checker:?}: {}",
        out.describe()
    );
    assert!(server.records("db", "T").is_empty());

    server.set_down(Duration::ZERO);
    server.set_faults(Faults {
        seed: 20261202,
        random: vec![
            (Fault::Throttle { retry_after: None }, 0.1),
            (Fault::Unavailable { retry_after: None }, 0.1),
            (Fault::Reset, 0.05),
        ],
    });
    let out = run(spooling(&["--drain-only"]), None, &scratch, limit);
    checker.assert_no_report("kedge-send", &out);
    assert_eq!(
        out.code(),
        Some(0),
        "kedge-send --drain-only through faults under {checker:?}: {}",
        out.describe()
    );
    let requests = server.requests();
    assert!(
        requests.iter().any(|r| r.status != 200),
        "no fault happened: {requests:?}"
    );
    let seen = seqs_arrived(&server, "T");
    for seq in 0..3000 {
        assert!(
            seen.contains_key(&seq),
            "record {seq} never arrived under {checker:?}"
        );
    }
    eprintln!(
        "under {checker:?}: C tests, and 3000 records spooled then drained in {} requests",
        requests.len()
    );
}

/// Memcheck over the C tests and kedge-send. `bash tests/run-all.sh` installs valgrind and sets
/// `KEDGE_REQUIRE_TOOLS=1`: there a missing valgrind fails; a plain `cargo test` without it prints a
/// `skipped:` line.
#[test]
fn c_programs_and_kedge_send_are_memcheck_clean() {
    if !tools::available_or_skip(tools::need("valgrind", "valgrind")) {
        return;
    }
    c_programs_pass_under(Checker::Memcheck);
}

/// The same runs with the C side built with -fsanitize=address,undefined (the Rust library itself is not
/// instrumented: see the README's test section).
#[test]
fn c_programs_and_kedge_send_are_clean_under_asan_and_ubsan() {
    if !tools::available_or_skip(sanitizer_requirements()) {
        return;
    }
    c_programs_pass_under(Checker::Sanitizers);
}

fn seqs_arrived(server: &Server, table: &str) -> HashMap<u64, usize> {
    let mut seen = HashMap::new();
    for r in server.records("db", table) {
        *seen
            .entry(seq_of(&r).expect("record with seq"))
            .or_insert(0usize) += 1;
    }
    seen
}

fn spooling_kedge_send(url: &str, spool: &Path, table: &str) -> Command {
    let mut cmd = kedge_send(url, None, table);
    cmd.args(["--allow-http", "--quiet", "--spool"]).arg(spool);
    cmd.args([
        "-X",
        "retry.max_attempts=2",
        "-X",
        "retry.base_ms=5",
        "-X",
        "retry.max_total_ms=300",
    ]);
    cmd.args([
        "-X",
        "backoff.max_ms=300",
        "-X",
        "timeout.connect_ms=300",
        "-X",
        "timeout.recv_ms=1000",
    ]);
    cmd
}

#[test]
fn kedge_send_exits_75_with_the_rest_safe_in_the_spool_and_drain_only_delivers_it() {
    let _g = serial();
    let scratch = Scratch::new("spool-75");
    let server = Server::start(ServerConfig::default()).expect("devserver");
    let spool = scratch.path("spool");
    let input = scratch.path("records.jsonl");
    write_records(&input, 3000);

    server.set_down(Duration::from_secs(3600));
    let mut cmd = spooling_kedge_send(&server.url(), &spool, "Spooled");
    cmd.args(["--batch-bytes", "16384", "--give-up-secs", "1"])
        .arg(&input);
    let out = run(cmd, None, &scratch, Duration::from_secs(60));
    assert_eq!(out.code(), Some(75), "kedge-send: {}", out.describe());
    assert!(server.records("db", "Spooled").is_empty());
    let chunks = fs::read_dir(&spool)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "chunk")
        })
        .count();
    assert!(chunks >= 10, "the input is on flash in chunks: {chunks}");

    server.set_down(Duration::ZERO);
    let mut cmd = spooling_kedge_send(&server.url(), &spool, "Spooled");
    cmd.arg("--drain-only");
    let out = run(cmd, None, &scratch, Duration::from_secs(60));
    assert_eq!(
        out.code(),
        Some(0),
        "kedge-send --drain-only: {}",
        out.describe()
    );
    assert_each_seq_once(&server.records("db", "Spooled"), 3000);
}

/// The crash test: kedge-send with a spool is killed with SIGKILL at random moments while the endpoint fails at
/// random. Like an integrator with a checkpoint, each run resumes the input after the last record it reported
/// durable (`--durable-every`). After the kills, `--drain-only` runs deliver the rest: every record of the input
/// must arrive (at least once; duplicates are counted, not failures).
/// `kedge-send --spool DIR` plus one administration flag, and nothing else: no endpoint, no credential.
fn spool_admin(spool: &Path, args: &[&str]) -> Command {
    let mut cmd = program("kedge-send");
    cmd.env_remove("KEDGE_TOKEN")
        .arg("--spool")
        .arg(spool)
        .args(args);
    cmd
}

#[test]
fn kedge_send_spool_status_requeue_and_purge_administer_the_spool_end_to_end() {
    let _g = serial();
    let scratch = Scratch::new("spool-admin");
    let server = Server::start(ServerConfig::default()).expect("devserver");
    let spool = scratch.path("spool");
    let input = scratch.path("records.jsonl");
    write_records(&input, 1000);

    // An outage: everything goes to the spool.
    server.set_down(Duration::from_secs(3600));
    let mut cmd = spooling_kedge_send(&server.url(), &spool, "Admin");
    cmd.args(["--batch-bytes", "16384", "--give-up-secs", "1"])
        .arg(&input);
    let out = run(cmd, None, &scratch, Duration::from_secs(60));
    assert_eq!(out.code(), Some(75), "{}", out.describe());
    let out = run(
        spool_admin(&spool, &["--spool-status"]),
        None,
        &scratch,
        Duration::from_secs(30),
    );
    assert_eq!(out.code(), Some(0), "{}", out.describe());
    let dest_line = out
        .stdout
        .lines()
        .find(|l| l.contains("db.Admin multijson streaming:"))
        .unwrap_or_else(|| panic!("no line for db.Admin: {}", out.describe()));
    let pending: u64 = dest_line
        .split(": ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no chunk count: {dest_line}"));
    assert!(pending >= 5, "{dest_line}");
    assert!(dest_line.contains("1000 records"), "{dest_line}");
    assert!(
        out.stdout.contains("rejected 0 chunks"),
        "{}",
        out.describe()
    );

    // The service refuses every chunk (a broken mapping, say): they go to rejected/, not sent again.
    server.set_down(Duration::ZERO);
    for _ in 0..pending {
        server.push_fault(kusto_devserver::Fault::RejectData);
    }
    let mut cmd = spooling_kedge_send(&server.url(), &spool, "Admin");
    cmd.arg("--drain-only");
    let out = run(cmd, None, &scratch, Duration::from_secs(60));
    assert_eq!(out.code(), Some(65), "{}", out.describe());
    assert!(server.records("db", "Admin").is_empty());
    let out = run(
        spool_admin(&spool, &["--spool-status"]),
        None,
        &scratch,
        Duration::from_secs(30),
    );
    assert!(
        out.stdout.contains("pending 0 chunks")
            && out.stdout.contains(&format!("rejected {pending} chunks")),
        "{}",
        out.describe()
    );

    // Fixed: requeue them and drain. Usage errors first: a table is needed, or --all-tables.
    let out = run(
        spool_admin(&spool, &["--spool-requeue"]),
        None,
        &scratch,
        Duration::from_secs(30),
    );
    assert_eq!(out.code(), Some(64), "{}", out.describe());
    let out = run(
        spool_admin(
            &spool,
            &["--spool-requeue", "--spool-purge", "--all-tables"],
        ),
        None,
        &scratch,
        Duration::from_secs(30),
    );
    assert_eq!(out.code(), Some(64), "{}", out.describe());
    let out = run(
        spool_admin(
            &spool,
            &["--spool-requeue", "--database", "db", "--table", "Admin"],
        ),
        None,
        &scratch,
        Duration::from_secs(30),
    );
    assert_eq!(out.code(), Some(0), "{}", out.describe());
    assert!(
        out.stdout.contains(&format!(
            "requeued {pending} rejected chunks of db.Admin; 0 left"
        )),
        "{}",
        out.describe()
    );
    let mut cmd = spooling_kedge_send(&server.url(), &spool, "Admin");
    cmd.arg("--drain-only");
    let out = run(cmd, None, &scratch, Duration::from_secs(60));
    assert_eq!(out.code(), Some(0), "{}", out.describe());
    assert_each_seq_once(&server.records("db", "Admin"), 1000);

    // Another backlog, which an operator decides to throw away: purge leaves nothing.
    server.set_down(Duration::from_secs(3600));
    let mut cmd = spooling_kedge_send(&server.url(), &spool, "Other");
    cmd.args(["--batch-bytes", "16384", "--give-up-secs", "1"])
        .arg(&input);
    assert_eq!(
        run(cmd, None, &scratch, Duration::from_secs(60)).code(),
        Some(75)
    );
    let out = run(
        spool_admin(
            &spool,
            &["--spool-purge", "--database", "db", "--table", "Elsewhere"],
        ),
        None,
        &scratch,
        Duration::from_secs(30),
    );
    assert!(
        out.stdout
            .contains("purged 0 spooled chunks of db.Elsewhere"),
        "{}",
        out.describe()
    );
    let out = run(
        spool_admin(&spool, &["--spool-purge", "--all-tables"]),
        None,
        &scratch,
        Duration::from_secs(30),
    );
    assert_eq!(out.code(), Some(0), "{}", out.describe());
    assert!(out.stdout.contains("of every table"), "{}", out.describe());
    let out = run(
        spool_admin(&spool, &["--spool-status"]),
        None,
        &scratch,
        Duration::from_secs(30),
    );
    assert!(
        out.stdout
            .contains("pending 0 chunks (0 records, 0 bytes) for 0 destinations"),
        "{}",
        out.describe()
    );
}

/// Checkpoints smaller than a batch, with a small spool that refuses new chunks when full: each checkpoint also
/// sends (a poll), and a full spool is waited out while the replay makes room, so everything goes out and the run
/// ends 0 (it used to put every record on flash, then give up at the first full spool without sending any).
#[test]
fn kedge_send_with_small_checkpoints_and_a_reject_new_spool_sends_everything() {
    let _g = serial();
    let scratch = Scratch::new("durable-small");
    let server = Server::start(ServerConfig::default()).expect("devserver");
    let input = scratch.path("records.jsonl");
    write_records(&input, 5000);
    let spool = scratch.path("spool");
    let mut cmd = spooling_kedge_send(&server.url(), &spool, "Small");
    cmd.args(["--spool-policy", "reject-new", "-X", "spool.max_chunks=16"]);
    cmd.args([
        "--batch-bytes",
        "8192",
        "--durable-every",
        "25",
        "--give-up-secs",
        "30",
    ]);
    cmd.arg(&input);
    let out = run(cmd, None, &scratch, Duration::from_secs(90));
    assert_eq!(out.code(), Some(0), "{}", out.describe());
    assert_each_seq_once(&server.records("db", "Small"), 5000);
    let durable = out
        .stdout
        .lines()
        .filter(|l| l.starts_with("durable "))
        .count();
    assert_eq!(durable, 200, "a checkpoint every 25 records");
    let left = fs::read_dir(&spool)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".chunk")
        })
        .count();
    assert_eq!(left, 0);
}

/// `n` numbered JSON records, one per line, as the SIGKILL tests feed them to kedge-send piece by piece.
fn record_lines(scratch: &Scratch, n: u64) -> Vec<String> {
    let all = scratch.path("all.jsonl");
    write_records(&all, n);
    fs::read_to_string(&all)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// What a run of SIGKILLed kedge-send invocations came to.
struct Killed {
    runs: u32,
    kills: u32,
}

/// Runs kedge-send (`make(rest)`: `Some(input)` with the records not yet durable, `None` for a drain-only run)
/// again and again, each run SIGKILLed at a random moment, resuming after what it reported durable, until the
/// input is all durable and `kills` kills were made. `before` runs before each run with a random number (to
/// change faults).
fn sigkill_runs(
    scratch: &Scratch,
    lines: &[String],
    kills: u32,
    max_kill_ms: u64,
    seed: u64,
    before: &mut dyn FnMut(u64),
    make: &mut dyn FnMut(Option<&Path>) -> Command,
) -> Killed {
    let mut rng = seed;
    let mut next = move |lo: u64, hi: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        lo + rng % (hi - lo)
    };
    let (mut offset, mut made, mut runs) = (0usize, 0u32, 0u32);
    // The kill window shrinks when a fast machine would make the whole input durable before all the kills were
    // made (a drain-only run on an empty spool ends too soon to be killed): whatever the speed, the kills land
    // while there is input left, and a run killed before it made anything durable still counts.
    let mut window = max_kill_ms;
    let started = Instant::now();
    while offset < lines.len() || made < kills {
        runs += 1;
        assert!(
            runs < 400 && started.elapsed() < Duration::from_secs(300),
            "no progress: {runs} runs, offset {offset}"
        );
        before(next(0, 1 << 16));
        let input = scratch.path("rest.jsonl");
        let mut cmd = if offset < lines.len() {
            fs::write(&input, lines[offset..].join("\n") + "\n").unwrap();
            make(Some(&input))
        } else {
            make(None)
        };
        let out_path = scratch.path("run.out");
        cmd.stdout(File::create(&out_path).unwrap())
            .stderr(Stdio::null())
            .stdin(Stdio::null());
        let mut child = cmd.spawn().expect("spawn kedge-send");
        let kill_at = Instant::now() + Duration::from_millis(next(1, window.max(2)));
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break Some(s);
            }
            if made < kills && Instant::now() >= kill_at {
                child.kill().expect("SIGKILL");
                child.wait().unwrap();
                made += 1;
                break None;
            }
            assert!(
                Instant::now() < kill_at + Duration::from_secs(60),
                "a run hangs"
            );
            std::thread::sleep(Duration::from_millis(2));
        };
        let durable = fs::read_to_string(&out_path)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                l.strip_prefix("durable ")
                    .and_then(|n| n.parse::<usize>().ok())
            })
            .max()
            .unwrap_or(0);
        match status.map(|s| s.code()) {
            // Killed: resume after what it reported durable.
            None => {
                let step = durable.min(lines.len() - offset);
                offset += step;
                let left = (lines.len() - offset) as u64;
                if made < kills && left < step as u64 * u64::from(kills - made) {
                    window = (window / 2).max(2);
                }
            }
            // Finished: everything it read is delivered (0) or safe in the spool (75).
            Some(Some(0)) | Some(Some(75)) => offset = lines.len(),
            Some(code) => panic!("kedge-send run {runs} exited {code:?}"),
        }
    }
    Killed { runs, kills: made }
}

#[test]
fn kedge_send_with_a_spool_survives_sigkill_at_random_moments_and_every_record_arrives() {
    let _g = serial();
    let scratch = Scratch::new("crash");
    let server = Server::start(ServerConfig::default()).expect("devserver");
    server.set_faults(Faults {
        seed: 2026,
        random: vec![
            (Fault::Throttle { retry_after: None }, 0.1),
            (Fault::Unavailable { retry_after: None }, 0.1),
            (Fault::Reset, 0.05),
            (Fault::LoseReply, 0.05),
        ],
    });
    const N: u64 = 40_000;
    const KILLS: u32 = 24;
    let lines = record_lines(&scratch, N);
    let spool = scratch.path("spool");
    let started = Instant::now();
    // Input runs (killed, until the input is durable), then drain-only runs killed too until there were enough kills.
    let Killed { runs, kills } = sigkill_runs(
        &scratch,
        &lines,
        KILLS,
        120,
        0x9E37_79B9_7F4A_7C15,
        &mut |_| {},
        &mut |input| {
            let mut cmd = spooling_kedge_send(&server.url(), &spool, "Crash");
            cmd.args(["--batch-bytes", "8192", "--give-up-secs", "1"]);
            match input {
                Some(i) => cmd.args(["--durable-every", "100"]).arg(i),
                None => cmd.arg("--drain-only"),
            };
            cmd
        },
    );
    server.set_faults(Faults::default());
    let mut drained = false;
    for _ in 0..20 {
        let mut cmd = spooling_kedge_send(&server.url(), &spool, "Crash");
        cmd.args(["--drain-only", "--give-up-secs", "5"]);
        let out = run(cmd, None, &scratch, Duration::from_secs(60));
        if out.code() == Some(0) {
            drained = true;
            break;
        }
        assert_eq!(out.code(), Some(75), "drain: {}", out.describe());
    }
    assert!(drained, "the spool never drained");
    let seen = seqs_arrived(&server, "Crash");
    let missing: Vec<u64> = (0..N).filter(|s| !seen.contains_key(s)).collect();
    let duplicates: usize = seen.values().map(|&c| c - 1).sum();
    let dup_chunks = server.stats().duplicate_chunks;
    eprintln!(
        "crash test: {runs} runs, {kills} SIGKILLs, {} records arrived, {duplicates} duplicates (at-least-once) in {dup_chunks} resent chunks, {:?}",
        seen.len(),
        started.elapsed()
    );
    assert!(kills >= 20);
    // At-least-once, not at-any-rate: a kill or a lost reply costs at most the chunks in flight, never a storm.
    assert!(
        duplicates < N as usize / 4,
        "{duplicates} duplicate records of {N} ({dup_chunks} chunks resent after being ingested)"
    );
    assert!(
        missing.is_empty(),
        "{} records never arrived, first {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    assert!(
        seen.keys().all(|&s| s < N),
        "records that were never in the input arrived"
    );
    let leftovers: Vec<_> = fs::read_dir(&spool)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().ends_with(".chunk"))
        .collect();
    assert!(
        leftovers.is_empty(),
        "spool not empty after drain: {leftovers:?}"
    );
}

fn auth_tls_server() -> Server {
    let server = Server::start(ServerConfig {
        tls: true,
        auth: Some(kusto_devserver::AuthConfig::default()),
        ..Default::default()
    })
    .expect("devserver");
    server.register_secret_client("app-1", "file-secret-42");
    server.register_cert_client("app-cert", kusto_devserver::TEST_CLIENT_CERT_PEM);
    server
}

fn fixture(name: &str) -> PathBuf {
    Path::new(MANIFEST_DIR)
        .join("devserver/fixtures")
        .join(name)
}

#[test]
fn kedge_send_authenticates_with_a_secret_file_a_certificate_a_connection_string_and_managed_identity(
) {
    let _g = serial();
    let scratch = Scratch::new("auth");
    let server = auth_tls_server();
    let ca = write_ca(&server, &scratch);
    let input = scratch.path("records.jsonl");
    write_records(&input, 500);
    let secret_file = scratch.path("secret");
    fs::write(&secret_file, "file-secret-42\n").unwrap();
    let url = server.url();
    let common = |table: &str| {
        let mut cmd = kedge_send(&url, Some(&ca), table);
        cmd.args(["--authority-host", &url, "--proxy", "none"]);
        cmd
    };

    let mut cmd = common("Secret");
    cmd.args([
        "--tenant",
        "test-tenant",
        "--client-id",
        "app-1",
        "--client-secret-file",
    ])
    .arg(&secret_file)
    .arg(&input);
    let out = run(cmd, None, &scratch, Duration::from_secs(60));
    assert_eq!(out.code(), Some(0), "secret: {}", out.describe());
    assert!(!out.stderr.contains("file-secret-42"));

    let mut cmd = common("Cert");
    cmd.args([
        "--tenant",
        "test-tenant",
        "--client-id",
        "app-cert",
        "--cert-file",
    ])
    .arg(fixture("client-cert.pem"));
    cmd.arg("--key-file")
        .arg(fixture("client-key-pkcs1.pem"))
        .arg(&input);
    let out = run(cmd, None, &scratch, Duration::from_secs(60));
    assert_eq!(out.code(), Some(0), "certificate: {}", out.describe());

    let cs = format!("Data Source={url};Initial Catalog=db;AAD Federated Security=True;Application Client Id=app-1;Application Key=file-secret-42;Authority Id=test-tenant");
    let mut cmd = program("kedge-send");
    cmd.args([
        "--connection-string",
        &cs,
        "--table",
        "ConnStr",
        "--authority-host",
        &url,
        "--proxy",
        "none",
    ]);
    cmd.arg("--ca-file").arg(&ca).arg(&input);
    let out = run(cmd, None, &scratch, Duration::from_secs(60));
    assert_eq!(out.code(), Some(0), "connection string: {}", out.describe());

    let mut cmd = common("Managed");
    cmd.args(["--managed-identity", "-X"])
        .arg(format!("auth.imds_endpoint={}", server.imds_endpoint()))
        .arg(&input);
    let out = run(cmd, None, &scratch, Duration::from_secs(60));
    assert_eq!(out.code(), Some(0), "managed identity: {}", out.describe());

    for table in ["Secret", "Cert", "ConnStr", "Managed"] {
        assert_each_seq_once(&server.records("db", table), 500);
    }
    let s = server.auth_stats();
    assert_eq!(
        (s.secret_requests, s.assertion_requests, s.imds_requests),
        (2, 1, 1)
    );

    let mut cmd = common("Nope");
    cmd.args([
        "--tenant",
        "test-tenant",
        "--client-id",
        "app-1",
        "--give-up-secs",
        "1",
        "--client-secret-file",
    ])
    .arg(&input)
    .arg(&input);
    let out = run(cmd, None, &scratch, Duration::from_secs(60));
    assert_eq!(
        out.code(),
        Some(77),
        "a wrong secret is refused: {}",
        out.describe()
    );
}

/// Starts kedge-send with its stdin a pipe the test keeps open, output to files.
fn spawn_on_pipe(mut cmd: Command, scratch: &Scratch) -> std::process::Child {
    cmd.stdin(Stdio::piped());
    cmd.stdout(File::create(scratch.path("stdout.txt")).unwrap());
    cmd.stderr(File::create(scratch.path("stderr.txt")).unwrap());
    cmd.env_remove("KEDGE_TOKEN");
    cmd.spawn().expect("spawn kedge-send")
}

fn signal(child: &std::process::Child, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .expect("kill")
        .success();
    assert!(ok, "kill {sig} failed");
}

/// Waits for the child to end (bounded), returning its exit code and stderr.
fn wait_bounded(
    mut child: std::process::Child,
    scratch: &Scratch,
    limit: Duration,
) -> (Option<i32>, String) {
    let started = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "kedge-send still running after {limit:?}: {}",
                fs::read_to_string(scratch.path("stderr.txt")).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    (
        status.code(),
        fs::read_to_string(scratch.path("stderr.txt")).unwrap_or_default(),
    )
}

fn wait_for_records(server: &Server, table: &str, n: usize, limit: Duration) -> bool {
    let started = Instant::now();
    while started.elapsed() < limit {
        if server.records("db", table).len() >= n {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

#[test]
fn kedge_send_on_a_pipe_sends_by_age_while_it_stays_open_and_sigterm_loses_nothing() {
    use std::io::Write as _;
    let _g = serial();
    let scratch = Scratch::new("pipe-age");
    let server = Server::start(ServerConfig::default()).expect("devserver");
    let mut cmd = kedge_send(&server.url(), None, "Piped");
    cmd.args(["--allow-http", "--quiet", "-X", "batch.max_age_ms=200"]);
    let mut child = spawn_on_pipe(cmd, &scratch);
    let mut pipe = child.stdin.take().unwrap();
    for seq in 0..5 {
        writeln!(pipe, "{{\"seq\":{seq}}}").unwrap();
    }
    pipe.flush().unwrap();
    // `tail -F log | kedge-send`: the pipe stays open, and the records still go out by age.
    assert!(
        wait_for_records(&server, "Piped", 5, Duration::from_secs(10)),
        "nothing sent while the pipe stays open"
    );
    // A line read after the last age-send, then SIGTERM: delivered before exit.
    writeln!(pipe, "{{\"seq\":5}}").unwrap();
    pipe.flush().unwrap();
    std::thread::sleep(Duration::from_millis(50));
    signal(&child, "-TERM");
    let (code, stderr) = wait_bounded(child, &scratch, Duration::from_secs(30));
    drop(pipe);
    assert_eq!(code, Some(0), "{stderr}");
    assert_each_seq_once(&server.records("db", "Piped"), 6);
}

#[test]
fn kedge_send_on_sigterm_during_an_outage_puts_what_it_read_in_the_spool_and_exits_75() {
    use std::io::Write as _;
    let _g = serial();
    let scratch = Scratch::new("pipe-term");
    let server = Server::start(ServerConfig::default()).expect("devserver");
    server.set_down(Duration::from_secs(3600));
    let spool = scratch.path("spool");
    let mut child = spawn_on_pipe(spooling_kedge_send(&server.url(), &spool, "Term"), &scratch);
    let mut pipe = child.stdin.take().unwrap();
    for seq in 0..5 {
        writeln!(pipe, "{{\"seq\":{seq}}}").unwrap();
    }
    // Half a line: not a record yet, so not taken.
    write!(pipe, "{{\"seq\":99").unwrap();
    pipe.flush().unwrap();
    std::thread::sleep(Duration::from_millis(700));
    signal(&child, "-TERM");
    let (code, stderr) = wait_bounded(child, &scratch, Duration::from_secs(30));
    drop(pipe);
    assert_eq!(code, Some(75), "{stderr}");
    assert!(stderr.contains("input resumes at line 6"), "{stderr}");
    server.set_down(Duration::ZERO);
    let mut cmd = spooling_kedge_send(&server.url(), &spool, "Term");
    cmd.arg("--drain-only");
    let out = run(cmd, None, &scratch, Duration::from_secs(60));
    assert_eq!(out.code(), Some(0), "{}", out.describe());
    assert_each_seq_once(&server.records("db", "Term"), 5);
}

#[test]
fn kedge_send_reads_a_fifo_given_as_file() {
    use std::io::Write as _;
    let _g = serial();
    let scratch = Scratch::new("fifo");
    let server = Server::start(ServerConfig::default()).expect("devserver");
    let fifo = scratch.path("in.fifo");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let mut cmd = kedge_send(&server.url(), None, "Fifo");
    cmd.args(["--allow-http", "--quiet"]).arg(&fifo);
    let child = spawn_on_pipe(cmd, &scratch);
    let writer = {
        let fifo = fifo.clone();
        std::thread::spawn(move || {
            let mut f = fs::OpenOptions::new().write(true).open(&fifo).unwrap();
            for seq in 0..100 {
                writeln!(f, "{{\"seq\":{seq}}}").unwrap();
            }
        })
    };
    let (code, stderr) = wait_bounded(child, &scratch, Duration::from_secs(30));
    writer.join().unwrap();
    assert_eq!(code, Some(0), "{stderr}");
    assert_each_seq_once(&server.records("db", "Fifo"), 100);
}

#[test]
fn kedge_send_refuses_a_directory_input_a_file_as_spool_an_empty_token_and_two_credentials() {
    let _g = serial();
    let scratch = Scratch::new("usage-more");
    let server = Server::start(ServerConfig::default()).expect("devserver");
    let input = scratch.path("records.jsonl");
    write_records(&input, 10);
    let not_dir = scratch.path("plain-file");
    fs::write(&not_dir, "x").unwrap();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec![scratch.0.display().to_string()], "is a directory"),
        (
            vec![
                "--spool".into(),
                not_dir.display().to_string(),
                input.display().to_string(),
            ],
            "not a directory",
        ),
        (
            vec!["--token".into(), "".into(), input.display().to_string()],
            "--token is empty",
        ),
        (
            vec![
                "--token".into(),
                "t".into(),
                "--managed-identity".into(),
                input.display().to_string(),
            ],
            "conflicting credentials",
        ),
    ];
    for (args, says) in cases {
        let mut cmd = kedge_send(&server.url(), None, "Usage");
        cmd.arg("--allow-http").args(&args);
        let out = run(cmd, None, &scratch, Duration::from_secs(30));
        assert_eq!(out.code(), Some(64), "{args:?}: {}", out.describe());
        assert!(out.stderr.contains(says), "{args:?}: {}", out.describe());
    }
    assert!(
        server.requests().is_empty(),
        "found before anything is sent"
    );
}

/// 20,000 records with line 12,345 cut in the middle, as a log rotated under a writer leaves it.
fn records_with_a_truncated_line(scratch: &Scratch) -> PathBuf {
    let input = scratch.path("records.jsonl");
    write_records(&input, 20_000);
    let mut text = fs::read_to_string(&input).unwrap();
    let start: usize = text.split_inclusive('\n').take(12_344).map(str::len).sum();
    let end = start + text[start..].find('\n').unwrap();
    text.replace_range(start + (end - start) / 2..end, "");
    fs::write(&input, text).unwrap();
    input
}

#[test]
fn kedge_send_one_truncated_json_line_among_20000_costs_exactly_that_line() {
    let _g = serial();
    let scratch = Scratch::new("truncated");
    let server = Server::start(ServerConfig::default()).expect("devserver");
    let input = records_with_a_truncated_line(&scratch);
    let mut cmd = kedge_send(&server.url(), None, "Trunc");
    cmd.args(["--allow-http", "--format", "json"]).arg(&input);
    let out = run(cmd, None, &scratch, Duration::from_secs(120));
    assert_eq!(out.code(), Some(65), "{}", out.describe());
    assert!(out.stderr.contains(":12345:"), "{}", out.describe());
    assert!(
        out.stderr.contains("1 invalid input lines"),
        "{}",
        out.describe()
    );
    let seen = seqs_arrived(&server, "Trunc");
    assert_eq!(seen.len(), 19_999);
    assert!(!seen.contains_key(&12_344));
    assert!(seen.values().all(|&c| c == 1));
}

/// With `json.check=false` the truncated line is taken by append, the service refuses its chunk, and the sender
/// sends that chunk in halves until the refused record stands alone: it still costs that line only.
#[test]
fn kedge_send_without_the_json_check_still_loses_only_the_truncated_line_the_service_refuses() {
    let _g = serial();
    let scratch = Scratch::new("truncated-unchecked");
    let server = Server::start(ServerConfig::default()).expect("devserver");
    let input = records_with_a_truncated_line(&scratch);
    let mut cmd = kedge_send(&server.url(), None, "Unchecked");
    cmd.args(["--allow-http", "--format", "json", "-X", "json.check=false"])
        .arg(&input);
    let out = run(cmd, None, &scratch, Duration::from_secs(120));
    assert_eq!(out.code(), Some(65), "{}", out.describe());
    assert!(
        !out.stderr.contains("invalid input lines"),
        "append took the line: {}",
        out.describe()
    );
    let seen = seqs_arrived(&server, "Unchecked");
    assert_eq!(seen.len(), 19_999, "{}", out.describe());
    assert!(!seen.contains_key(&12_344));
    assert!(seen.values().all(|&c| c == 1));
    let refused: Vec<_> = server
        .requests()
        .into_iter()
        .filter(|r| r.table == "Unchecked" && !r.ingested)
        .collect();
    assert!(
        refused.iter().all(|r| r.status == 400),
        "only refusals: {refused:?}"
    );
    // The chunk, then one refused half per level down to the record (about 14 levels for ~10,000 records; at
    // most MAX_SPLIT_DEPTH = 20).
    assert!(
        (2..=21).contains(&refused.len()),
        "the halves down to one record: {} refused requests",
        refused.len()
    );
}

#[test]
fn kedge_send_give_up_bounds_the_run_against_a_server_that_never_answers() {
    let _g = serial();
    let scratch = Scratch::new("silent");
    // Accepts connections (the kernel's backlog does) and never answers a byte.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let input = scratch.path("records.jsonl");
    write_records(&input, 20);
    let mut cmd = kedge_send(&url, None, "T");
    cmd.args(["--allow-http", "--give-up-secs", "1", "--quiet"])
        .arg(&input);
    let out = run(cmd, None, &scratch, Duration::from_secs(60));
    drop(listener);
    assert_eq!(out.code(), Some(69), "{}", out.describe());
    assert!(
        out.took < Duration::from_secs(8),
        "--give-up-secs 1 took {:?}",
        out.took
    );
}

#[test]
fn kedge_send_with_a_full_spool_counts_what_it_lost_says_where_to_resume_and_logs_a_repeated_error_once(
) {
    let _g = serial();
    let scratch = Scratch::new("full-spool");
    let server = Server::start(ServerConfig::default()).expect("devserver");
    server.set_down(Duration::from_secs(3600));
    let spool = scratch.path("spool");
    let input = scratch.path("records.jsonl");
    // About 5 MB raw, several times what a 64 KiB spool holds compressed.
    write_records(&input, 40_000);
    let mut cmd = spooling_kedge_send(&server.url(), &spool, "Full");
    cmd.args([
        "--batch-bytes",
        "65536",
        "--spool-policy",
        "reject-new",
        "--spool-max-bytes",
        "65536",
        "--give-up-secs",
        "2",
    ]);
    // Default verbosity, so the library's error lines are printed (and must not flood).
    let args: Vec<_> = cmd
        .get_args()
        .filter(|a| *a != "--quiet")
        .map(|a| a.to_owned())
        .collect();
    let mut cmd = program("kedge-send");
    cmd.args(args).arg(&input);
    let out = run(cmd, None, &scratch, Duration::from_secs(60));
    assert_eq!(
        out.code(),
        Some(69),
        "not everything is safe: {}",
        out.describe()
    );
    let lost_line = out
        .stderr
        .lines()
        .find(|l| l.contains("records taken were lost"))
        .unwrap_or_else(|| panic!("no loss reported: {}", out.describe()));
    let resume: usize = lost_line
        .rsplit("line ")
        .next()
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no resume line: {lost_line}"));
    let repeated = out
        .stderr
        .lines()
        .filter(|l| l.contains("spool full"))
        .count();
    assert!(
        repeated <= 3,
        "a repeated error is logged once with a count: {}",
        out.describe()
    );
    // Drain what is safe, then resend from the line the summary gave: every record arrives.
    server.set_down(Duration::ZERO);
    let mut cmd = spooling_kedge_send(&server.url(), &spool, "Full");
    cmd.arg("--drain-only");
    let out = run(cmd, None, &scratch, Duration::from_secs(60));
    assert_eq!(out.code(), Some(0), "{}", out.describe());
    let text = fs::read_to_string(&input).unwrap();
    let rest: String = text.split_inclusive('\n').skip(resume - 1).collect();
    let rest_file = scratch.path("rest.jsonl");
    fs::write(&rest_file, rest).unwrap();
    let mut cmd = kedge_send(&server.url(), None, "Full");
    cmd.args(["--allow-http", "--quiet"]).arg(&rest_file);
    let out = run(cmd, None, &scratch, Duration::from_secs(60));
    assert_eq!(out.code(), Some(0), "{}", out.describe());
    let seen = seqs_arrived(&server, "Full");
    let missing: Vec<u64> = (0..3000)
        .filter(|s| !seen.contains_key(s))
        .take(10)
        .collect();
    assert!(missing.is_empty(), "lost without a word: {missing:?}");
}

#[test]
fn kedge_send_keeps_a_csv_record_with_a_quoted_newline_whole_even_across_requests() {
    let _g = serial();
    let scratch = Scratch::new("csv-quoted");
    let server = Server::start(ServerConfig::default()).expect("devserver");
    let input = scratch.path("records.csv");
    let mut text = String::new();
    for seq in 0..400 {
        text.push_str(&format!(
            "{seq},\"line one\nline two, with \"\"quotes\"\"\",{}\n",
            "x".repeat(40)
        ));
    }
    fs::write(&input, &text).unwrap();
    let mut cmd = kedge_send(&server.url(), None, "Csv");
    cmd.args([
        "--allow-http",
        "--quiet",
        "--format",
        "csv",
        "--batch-bytes",
        "4096",
    ])
    .arg(&input);
    let out = run(cmd, None, &scratch, Duration::from_secs(60));
    assert_eq!(out.code(), Some(0), "{}", out.describe());
    assert!(server.requests().len() > 5, "spread over several requests");
    // The endpoint parses CSV records as Kusto does (quotes hold newlines): each arrived whole, once.
    let mut seen = HashSet::new();
    for rec in server.records("db", "Csv") {
        let rec = String::from_utf8(rec).unwrap();
        assert!(
            rec.contains("\"line one\nline two, with \"\"quotes\"\"\""),
            "{rec:?}"
        );
        let seq: u64 = rec.split(',').next().unwrap().parse().unwrap();
        assert!(seen.insert(seq), "record {seq} twice");
    }
    assert_eq!(seen.len(), 400);
}

#[test]
fn kedge_send_prints_its_stats_as_json_lines_every_stats_interval() {
    use std::io::Write as _;
    let _g = serial();
    let scratch = Scratch::new("stats-interval");
    let server = Server::start(ServerConfig::default()).expect("devserver");
    let mut cmd = kedge_send(&server.url(), None, "Stats");
    cmd.args(["--allow-http", "--quiet", "--stats-interval", "1"]);
    let mut child = spawn_on_pipe(cmd, &scratch);
    let mut pipe = child.stdin.take().unwrap();
    writeln!(pipe, "{{\"seq\":0}}").unwrap();
    pipe.flush().unwrap();
    std::thread::sleep(Duration::from_millis(2600));
    drop(pipe);
    let (code, stderr) = wait_bounded(child, &scratch, Duration::from_secs(30));
    assert_eq!(code, Some(0), "{stderr}");
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("{\"records_appended\":") && l.ends_with('}'))
        .collect();
    assert!(lines.len() >= 3, "two ticks and the final line: {stderr}");
    assert!(
        lines
            .last()
            .unwrap()
            .contains("\"records_acknowledged\":1,"),
        "{stderr}"
    );
    assert!(lines.iter().all(|l| l.contains("\"spool_io_errors\":")));
}

/// A full lane is one event in the stats, not two: when `kedge_append_lines` says the lane is full, kedge-send polls
/// before it offers the next record one at a time, instead of appending only to be refused again.
#[test]
fn kedge_send_counts_each_full_lane_once() {
    let _g = serial();
    let scratch = Scratch::new("queue-full-once");
    let server = Server::start(ServerConfig::default()).expect("devserver");
    let input = scratch.path("records.jsonl");
    write_records(&input, 20_000);
    // No sealed chunk may wait: every full batch is a full lane, then a request.
    let mut cmd = kedge_send(&server.url(), None, "Full");
    cmd.args([
        "--allow-http",
        "--quiet",
        "--batch-bytes",
        "65536",
        "-X",
        "batch.sealed=0",
        "--stats-interval",
        "3600",
    ])
    .arg(&input);
    let out = run(cmd, None, &scratch, Duration::from_secs(120));
    assert_eq!(out.code(), Some(0), "{}", out.describe());
    let last = out
        .stderr
        .lines()
        .rfind(|l| l.starts_with("{\"records_appended\":"))
        .unwrap_or_else(|| panic!("no stats line: {}", out.describe()));
    let field = |name: &str| -> u64 {
        let at = last.find(&format!("\"{name}\":")).expect(name) + name.len() + 3;
        last[at..]
            .split([',', '}'])
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    let (requests, full) = (field("requests"), field("appends_queue_full"));
    assert_eq!(field("records_acknowledged"), 20_000, "{last}");
    assert!(requests > 20, "{last}");
    // Every request but the last (sent by the final flush) followed one full lane.
    assert!(
        full >= 1 && full < requests,
        "{full} full-lane refusals for {requests} requests: {last}"
    );
}

#[test]
fn kedge_send_with_the_wrong_spool_key_keeps_the_chunks_says_so_and_exits_75() {
    use std::os::unix::fs::PermissionsExt;
    let _g = serial();
    let scratch = Scratch::new("wrong-key");
    let server = Server::start(ServerConfig::default()).expect("devserver");
    let spool = scratch.path("spool");
    let input = scratch.path("records.jsonl");
    write_records(&input, 500);
    let key = |name: &str, hex: char| {
        let p = scratch.path(name);
        fs::write(&p, hex.to_string().repeat(64)).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).unwrap();
        p
    };
    let (right, wrong) = (key("right.key", 'a'), key("wrong.key", 'b'));
    server.set_down(Duration::from_secs(3600));
    let mut cmd = spooling_kedge_send(&server.url(), &spool, "Keyed");
    cmd.args(["--give-up-secs", "1", "--spool-key-file"])
        .arg(&right)
        .arg(&input);
    let out = run(cmd, None, &scratch, Duration::from_secs(60));
    assert_eq!(out.code(), Some(75), "{}", out.describe());
    server.set_down(Duration::ZERO);
    let mut cmd = spooling_kedge_send(&server.url(), &spool, "Keyed");
    cmd.args(["--drain-only", "--spool-key-file"]).arg(&wrong);
    let out = run(cmd, None, &scratch, Duration::from_secs(60));
    assert_eq!(out.code(), Some(75), "{}", out.describe());
    assert!(
        out.stderr.contains("need another spool key"),
        "{}",
        out.describe()
    );
    assert!(server.records("db", "Keyed").is_empty());
    let mut cmd = spooling_kedge_send(&server.url(), &spool, "Keyed");
    cmd.args(["--drain-only", "--spool-key-file"]).arg(&right);
    let out = run(cmd, None, &scratch, Duration::from_secs(60));
    assert_eq!(out.code(), Some(0), "{}", out.describe());
    assert_each_seq_once(&server.records("db", "Keyed"), 500);
}

#[test]
fn kedge_send_without_a_spool_stops_at_once_on_sigterm_during_an_outage_and_counts_what_it_loses() {
    use std::io::Write as _;
    let _g = serial();
    let scratch = Scratch::new("term-outage");
    let server = Server::start(ServerConfig::default()).expect("devserver");
    server.set_down(Duration::from_secs(3600));
    let mut cmd = kedge_send(&server.url(), None, "T");
    cmd.args(["--allow-http", "--quiet", "--give-up-secs", "3600"]);
    cmd.args(["-X", "retry.max_total_ms=300", "-X", "batch.max_age_ms=100"]);
    let mut child = spawn_on_pipe(cmd, &scratch);
    let mut pipe = child.stdin.take().unwrap();
    for seq in 0..5 {
        writeln!(pipe, "{{\"seq\":{seq}}}").unwrap();
    }
    pipe.flush().unwrap();
    std::thread::sleep(Duration::from_millis(800));
    let sent_at = Instant::now();
    signal(&child, "-TERM");
    let (code, stderr) = wait_bounded(child, &scratch, Duration::from_secs(30));
    drop(pipe);
    assert!(
        sent_at.elapsed() < Duration::from_secs(10),
        "a day of --give-up-secs does not delay a stop"
    );
    assert_eq!(code, Some(69), "{stderr}");
    assert!(stderr.contains("5 records taken were lost"), "{stderr}");
    assert!(stderr.contains("line 1"), "{stderr}");
}

// ---- Queued ingestion through kedge-send: the test endpoint as the DM, over a real Azurite ----

/// The endpoint with its DM over a fresh Azurite. Field order: the server (and its ingestor) stops first.
struct DmEnv {
    server: Server,
    _az: kusto_devserver::azurite::Azurite,
}

fn dm_env(tables: Option<&[&str]>) -> DmEnv {
    let az = kusto_devserver::azurite::Azurite::start().expect("azurite");
    let mut dm = kusto_devserver::DmConfig::new(az.endpoints());
    dm.poll_interval = Duration::from_millis(50);
    let server = Server::start(ServerConfig {
        dm: Some(dm),
        tables: tables.map(|t| t.iter().map(|t| ("db".to_owned(), t.to_string())).collect()),
        ..ServerConfig::default()
    })
    .expect("devserver with a DM");
    DmEnv { server, _az: az }
}

fn queued_kedge_send(env: &DmEnv, table: &str) -> Command {
    let mut cmd = kedge_send(&env.server.url(), None, table);
    cmd.args(["--allow-http", "--mode", "queued", "--dm-url"])
        .arg(env.server.dm_url().expect("DM url"));
    cmd
}

fn wait_for_queued_records(server: &Server, table: &str, n: usize, limit: Duration) -> usize {
    let start = Instant::now();
    loop {
        let got = server.records("db", table).len();
        if got >= n || start.elapsed() > limit {
            return got;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn assert_no_dm_violations(server: &Server) {
    let v = server.dm_violations();
    assert!(v.is_empty(), "DM protocol violations: {v:#?}");
}

#[test]
fn kedge_send_queued_puts_100000_lines_through_azurite_and_the_dm_once_with_no_violations() {
    if !tools::azurite_or_skip() {
        return;
    }
    let _g = serial();
    let scratch = Scratch::new("queued-100k");
    let env = dm_env(None);
    let input = scratch.path("records.jsonl");
    let n = 100_000;
    write_records(&input, n);
    let mut cmd = queued_kedge_send(&env, "Q");
    cmd.arg(&input);
    let out = run(cmd, None, &scratch, Duration::from_secs(60));
    assert_eq!(out.code(), Some(0), "kedge-send: {}", out.describe());
    let got = wait_for_queued_records(&env.server, "Q", n as usize, Duration::from_secs(30));
    assert_eq!(got, n as usize, "{}", out.describe());
    assert_each_seq_once(&env.server.records("db", "Q"), n);
    let st = env.server.stats();
    assert_eq!(st.records_streamed, 0, "nothing streamed: {st:?}");
    assert_eq!(st.records_queued, n as usize, "{st:?}");
    assert_no_dm_violations(&env.server);
    let dm = env.server.dm_stats();
    assert_eq!(dm.resources_requests, 1, "resources fetched once: {dm:?}");
    assert_eq!(
        dm.identity_token_requests, 1,
        "identity token fetched once: {dm:?}"
    );
    assert!(dm.blobs_ingested >= 10, "many blobs, one fetch: {dm:?}");
    assert_eq!(dm.duplicates_ingested, 0, "{dm:?}");
    eprintln!("100000 lines queued in {:?}", out.took);
}

#[test]
fn kedge_send_queued_to_a_missing_table_waits_for_the_dm_and_exits_65_with_its_error_code() {
    if !tools::azurite_or_skip() {
        return;
    }
    let _g = serial();
    let scratch = Scratch::new("queued-missing");
    let env = dm_env(Some(&["T"]));
    let input = scratch.path("records.jsonl");
    write_records(&input, 200);
    let mut cmd = queued_kedge_send(&env, "Missing");
    cmd.args(["--report", "failures", "--wait", "30", "--quiet"])
        .arg(&input);
    let out = run(cmd, None, &scratch, Duration::from_secs(60));
    assert_eq!(out.code(), Some(65), "kedge-send: {}", out.describe());
    assert!(
        out.stderr.contains("BadRequest_Table"),
        "the DM's error code on stderr: {}",
        out.describe()
    );
    assert!(
        out.took < Duration::from_secs(25),
        "ends when every chunk has its report, not at the end of --wait: {:?}",
        out.took
    );
    assert!(env.server.records("db", "Missing").is_empty());
    eprintln!("missing table: exit 65 after {:?}", out.took);
    assert_no_dm_violations(&env.server);
}

#[test]
fn kedge_send_queued_with_report_all_and_wait_exits_0_once_every_chunk_is_confirmed() {
    if !tools::azurite_or_skip() {
        return;
    }
    let _g = serial();
    let scratch = Scratch::new("queued-all");
    let env = dm_env(Some(&["T"]));
    let input = scratch.path("records.jsonl");
    write_records(&input, 2000);
    let mut cmd = queued_kedge_send(&env, "T");
    cmd.args(["--report", "all", "--wait", "30", "--batch-bytes", "65536"])
        .arg(&input);
    let out = run(cmd, None, &scratch, Duration::from_secs(60));
    assert_eq!(out.code(), Some(0), "kedge-send: {}", out.describe());
    // Confirmed before the exit: the records are in the table already.
    assert_each_seq_once(&env.server.records("db", "T"), 2000);
    // The summary: "N chunks queued (the DM reported N ingested, 0 failed)".
    let (queued, rest) = out
        .stderr
        .split_once(" chunks queued (the DM reported ")
        .unwrap_or_else(|| panic!("no queued summary: {}", out.describe()));
    let queued = queued.rsplit(' ').next().unwrap();
    let ingested = rest.split(' ').next().unwrap();
    assert_eq!(
        queued,
        ingested,
        "every chunk confirmed: {}",
        out.describe()
    );
    assert!(rest.starts_with(&format!("{ingested} ingested, 0 failed)")));
    assert!(queued.parse::<u32>().unwrap() > 1, "{}", out.describe());
    eprintln!("report all: {queued} chunks confirmed in {:?}", out.took);
    assert_no_dm_violations(&env.server);
}

#[test]
fn kedge_send_queued_with_storage_unreachable_exits_75_and_drain_only_delivers_it_all_later() {
    if !tools::azurite_or_skip() {
        return;
    }
    let _g = serial();
    let scratch = Scratch::new("queued-75");
    let env = dm_env(None);
    let spool = scratch.path("spool");
    let input = scratch.path("records.jsonl");
    let n = 3000;
    write_records(&input, n);
    env.server.set_dm_faults(kusto_devserver::DmFaults {
        storage_unreachable: true,
        ..Default::default()
    });
    let mut cmd = queued_kedge_send(&env, "S");
    cmd.args(["--quiet", "--spool"]).arg(&spool);
    cmd.args(["--batch-bytes", "16384", "--give-up-secs", "2"]);
    cmd.args(["-X", "retry.max_attempts=2", "-X", "retry.base_ms=5"]);
    cmd.args(["-X", "backoff.max_ms=300", "-X", "timeout.connect_ms=300"]);
    cmd.arg(&input);
    let out = run(cmd, None, &scratch, Duration::from_secs(60));
    assert_eq!(out.code(), Some(75), "kedge-send: {}", out.describe());
    assert!(env.server.records("db", "S").is_empty());
    let spooled = fs::read_dir(&spool)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "chunk")
        })
        .count();
    assert!(spooled >= 10, "the input is on flash in chunks: {spooled}");

    env.server.set_dm_faults(Default::default());
    let mut cmd = queued_kedge_send(&env, "S");
    cmd.args(["--quiet", "--drain-only", "--spool"]).arg(&spool);
    let out = run(cmd, None, &scratch, Duration::from_secs(60));
    assert_eq!(
        out.code(),
        Some(0),
        "kedge-send --drain-only: {}",
        out.describe()
    );
    let got = wait_for_queued_records(&env.server, "S", n as usize, Duration::from_secs(30));
    assert_eq!(got, n as usize);
    assert_each_seq_once(&env.server.records("db", "S"), n);
    assert_eq!(env.server.stats().records_streamed, 0);
    let left = fs::read_dir(&spool)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "chunk")
        })
        .count();
    assert_eq!(left, 0, "the spool is empty");
    assert_no_dm_violations(&env.server);
}

/// SIGKILL at random moments of queued runs (mid-upload, mid-enqueue, mid-spool-write), with the storage and
/// the DM misbehaving between runs: every record the runs made durable arrives, by the queue only.
#[test]
fn kedge_send_queued_with_a_spool_survives_sigkill_during_uploads_and_enqueues_and_every_record_arrives(
) {
    if !tools::azurite_or_skip() {
        return;
    }
    let _g = serial();
    let scratch = Scratch::new("queued-crash");
    let env = dm_env(None);
    const N: u64 = 20_000;
    const KILLS: u32 = 20;
    let lines = record_lines(&scratch, N);
    let spool = scratch.path("spool");
    let queued = |extra: &[&str]| {
        let mut cmd = queued_kedge_send(&env, "QCrash");
        cmd.args(["--quiet", "--spool"]).arg(&spool);
        cmd.args(["--batch-bytes", "8192", "--give-up-secs", "1"]);
        cmd.args(["-X", "retry.max_attempts=2", "-X", "retry.base_ms=5"]);
        cmd.args(["-X", "backoff.max_ms=300", "-X", "timeout.connect_ms=300"]);
        cmd.args(extra);
        cmd
    };
    let mut faulty = 0u32;
    let started = Instant::now();
    let Killed { runs, kills } = sigkill_runs(
        &scratch,
        &lines,
        KILLS,
        200,
        0x2545_F491_4F6C_DD1D,
        // One run in four meets trouble: an expired SAS (403 from Azurite, then fresh resources) or a DM that
        // throttles its management commands.
        &mut |r| {
            let faults = match r % 8 {
                0 => kusto_devserver::DmFaults {
                    sas_expired: true,
                    ..Default::default()
                },
                1 => kusto_devserver::DmFaults {
                    throttle_mgmt: 2,
                    ..Default::default()
                },
                _ => Default::default(),
            };
            if faults != kusto_devserver::DmFaults::default() {
                faulty += 1;
            }
            env.server.set_dm_faults(faults);
        },
        &mut |input| match input {
            Some(i) => {
                let mut c = queued(&["--durable-every", "100"]);
                c.arg(i);
                c
            }
            None => queued(&["--drain-only"]),
        },
    );
    env.server.set_dm_faults(Default::default());
    let mut drained = false;
    for _ in 0..10 {
        let out = run(
            queued(&["--drain-only", "--give-up-secs", "5"]),
            None,
            &scratch,
            Duration::from_secs(60),
        );
        if out.code() == Some(0) {
            drained = true;
            break;
        }
        assert_eq!(out.code(), Some(75), "drain: {}", out.describe());
    }
    assert!(drained, "the spool never drained");
    wait_for_queued_records(&env.server, "QCrash", N as usize, Duration::from_secs(30));
    // Let the ingestor finish what is still on the queue (resends after a kill) before counting duplicates.
    std::thread::sleep(Duration::from_millis(500));
    let seen = seqs_arrived(&env.server, "QCrash");
    let missing: Vec<u64> = (0..N).filter(|s| !seen.contains_key(s)).collect();
    let duplicates: usize = seen.values().map(|&c| c - 1).sum();
    let dm = env.server.dm_stats();
    eprintln!(
        "queued crash test: {runs} runs ({faulty} with DM faults), {kills} SIGKILLs, {} records arrived, {duplicates} duplicates, {:?}; {dm:?}",
        seen.len(),
        started.elapsed()
    );
    assert!(kills >= KILLS);
    assert!(
        missing.is_empty(),
        "{} records never arrived, first {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    assert!(seen.keys().all(|&s| s < N));
    assert!(
        duplicates < N as usize / 4,
        "{duplicates} duplicate records of {N}"
    );
    assert_eq!(env.server.stats().records_streamed, 0, "nothing streamed");
    let leftovers: Vec<_> = fs::read_dir(&spool)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().ends_with(".chunk"))
        .collect();
    assert!(leftovers.is_empty(), "spool not empty: {leftovers:?}");
    assert_no_dm_violations(&env.server);
}

#[test]
fn kedge_send_managed_streams_to_a_table_with_streaming_and_queues_one_without_after_at_most_two_refusals(
) {
    if !tools::azurite_or_skip() {
        return;
    }
    let _g = serial();
    let scratch = Scratch::new("managed");
    let env = dm_env(None);
    let input = scratch.path("records.jsonl");
    let n = 20_000;
    write_records(&input, n);
    let managed = |table: &str| {
        let mut cmd = queued_kedge_send(&env, table);
        cmd.args(["--mode", "managed", "--batch-bytes", "65536", "--quiet"])
            .arg(&input);
        cmd
    };

    // Streaming on: everything streamed, the DM never asked.
    let out = run(managed("On"), None, &scratch, Duration::from_secs(60));
    assert_eq!(out.code(), Some(0), "kedge-send: {}", out.describe());
    assert_each_seq_once(&env.server.records("db", "On"), n);
    let st = env.server.stats();
    assert_eq!(st.records_streamed, n as usize, "{st:?}");
    assert_eq!(st.records_queued, 0, "{st:?}");
    assert_eq!(env.server.dm_stats().resources_requests, 0);
    let streamed_chunks = env
        .server
        .requests()
        .iter()
        .filter(|r| r.table == "On")
        .count();
    assert!(streamed_chunks > 10, "many chunks: {streamed_chunks}");

    // Streaming off (every streaming request refused): through the queue after at most two refusals.
    env.server.set_faults(Faults {
        seed: 1,
        random: vec![(Fault::StreamingDisabled, 1.0)],
    });
    let out = run(managed("Off"), None, &scratch, Duration::from_secs(60));
    assert_eq!(out.code(), Some(0), "kedge-send: {}", out.describe());
    let got = wait_for_queued_records(&env.server, "Off", n as usize, Duration::from_secs(30));
    assert_eq!(got, n as usize);
    assert_each_seq_once(&env.server.records("db", "Off"), n);
    let refused = env
        .server
        .requests()
        .iter()
        .filter(|r| r.table == "Off")
        .count();
    assert!(
        (1..=2).contains(&refused),
        "at most two refused streaming requests, saw {refused}"
    );
    let st = env.server.stats();
    assert_eq!(
        st.records_streamed, n as usize,
        "only the first table's: {st:?}"
    );
    assert_eq!(st.records_queued, n as usize, "{st:?}");
    assert_no_dm_violations(&env.server);
    eprintln!(
        "managed: {streamed_chunks} chunks streamed; {refused} refused, then queued in {:?}",
        out.took
    );
}
