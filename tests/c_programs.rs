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

use kusto_devserver::{Fault, Faults, RequestLog, Server, ServerConfig};

mod programs;
use programs::*;

const MAX_REQUEST_RAW_BYTES: usize = 4 * 1024 * 1024;

struct Built {
    /// Where `make` put the programs.
    programs: PathBuf,
}

fn build_everything() -> Result<Built, String> {
    let target = target_dir();
    let lib_dir = build_host_lib()?;
    let programs = target.join("c-build");
    // The Makefile's own CFLAGS (-std=c99 ... -Werror -pedantic) are what this checks: none from the environment.
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
    Ok(Built { programs })
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
    for name in ["sensor", "kedge-send", "api_robustness"] {
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

#[test]
fn kedge_send_exits_64_on_usage_errors_and_0_for_help() {
    let _g = serial();
    let scratch = Scratch::new("usage");
    let cases: [&[&str]; 5] = [
        &["--database", "db", "--table", "T"],
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
    server.push_fault(Fault::RejectData);
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

/// Optional: only where valgrind is installed. Plain http, because ring's assembly confuses memcheck.
#[test]
fn c_programs_are_valgrind_clean_when_valgrind_is_installed() {
    if Command::new("valgrind")
        .arg("--version")
        .output()
        .map(|o| !o.status.success())
        .unwrap_or(true)
    {
        eprintln!("valgrind not installed: skipped");
        return;
    }
    let _g = serial();
    let scratch = Scratch::new("valgrind");
    let valgrind = |prog: &str| {
        let mut cmd = Command::new("valgrind");
        cmd.args([
            "-q",
            "--error-exitcode=99",
            "--leak-check=full",
            "--errors-for-leak-kinds=definite",
        ]);
        cmd.arg(built().programs.join(prog));
        cmd
    };
    let out = run(
        valgrind("api_robustness"),
        None,
        &scratch,
        Duration::from_secs(120),
    );
    assert_eq!(
        out.code(),
        Some(0),
        "api_robustness under valgrind: {}",
        out.describe()
    );

    let server = Server::start(ServerConfig::default()).expect("start devserver");
    let input = scratch.path("records.jsonl");
    write_records(&input, 2000);
    let mut cmd = valgrind("kedge-send");
    cmd.args([
        "--url",
        &server.url(),
        "--allow-http",
        "--database",
        "db",
        "--table",
        "T",
    ]);
    cmd.args(["--batch-bytes", "65536"]).arg(&input);
    let out = run(cmd, None, &scratch, Duration::from_secs(120));
    assert_eq!(
        out.code(),
        Some(0),
        "kedge-send under valgrind: {}",
        out.describe()
    );
    assert_each_seq_once(&server.records("db", "T"), 2000);
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
    let all = scratch.path("all.jsonl");
    write_records(&all, N);
    let lines: Vec<String> = fs::read_to_string(&all)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    let spool = scratch.path("spool");
    let mut rng = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move |lo: u64, hi: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        lo + rng % (hi - lo)
    };
    let mut offset = 0usize;
    let mut kills = 0u32;
    let mut runs = 0u32;
    let started = Instant::now();
    // Input runs (killed, until the input is durable), then drain-only runs killed too until there were enough kills.
    while offset < lines.len() || kills < KILLS {
        runs += 1;
        assert!(
            runs < 400 && started.elapsed() < Duration::from_secs(240),
            "no progress: {runs} runs, offset {offset}"
        );
        let input = scratch.path("rest.jsonl");
        let mut cmd = spooling_kedge_send(&server.url(), &spool, "Crash");
        cmd.args(["--batch-bytes", "8192", "--give-up-secs", "1"]);
        if offset < lines.len() {
            fs::write(&input, lines[offset..].join("\n") + "\n").unwrap();
            cmd.args(["--durable-every", "100"]).arg(&input);
        } else {
            cmd.arg("--drain-only");
        }
        let out_path = scratch.path("run.out");
        cmd.stdout(File::create(&out_path).unwrap())
            .stderr(Stdio::null())
            .stdin(Stdio::null());
        let mut child = cmd.spawn().expect("spawn kedge-send");
        let kill_at = Instant::now() + Duration::from_millis(next(5, 120));
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break Some(s);
            }
            if kills < KILLS && Instant::now() >= kill_at {
                child.kill().expect("SIGKILL");
                child.wait().unwrap();
                kills += 1;
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
            None => offset += durable.min(lines.len() - offset),
            // Finished: everything it read is acknowledged (0) or safe in the spool (75).
            Some(Some(0)) | Some(Some(75)) => offset = lines.len(),
            Some(code) => panic!("kedge-send run {runs} exited {code:?}"),
        }
    }
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
    eprintln!(
        "crash test: {runs} runs, {kills} SIGKILLs, {} records arrived, {duplicates} duplicates (at-least-once), {:?}",
        seen.len(),
        started.elapsed()
    );
    assert!(kills >= 20);
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
