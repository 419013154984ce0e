//! The demo: builds the C API's static library and the C demo program, starts the Kusto-compatible endpoint over
//! HTTPS on loopback, runs the demo (sensors streaming through the C API), takes the endpoint down for a few
//! seconds in the middle so the outage goes to the flash spool and is replayed, then prints what arrived.
//!
//!   cargo run --release -p kusto-devserver --bin kedge-demo

#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kusto_devserver::{Server, ServerConfig};

const SECONDS: u64 = 9;
const OUTAGE_AT: Duration = Duration::from_millis(2500);
const OUTAGE_FOR: Duration = Duration::from_secs(3);

fn run(cmd: &mut Command, what: &str) {
    let status = cmd
        .status()
        .unwrap_or_else(|e| fail(&format!("{what}: cannot start: {e}")));
    if !status.success() {
        fail(&format!("{what} failed ({status})"));
    }
}

fn fail(msg: &str) -> ! {
    eprintln!("kedge-demo: {msg}");
    std::process::exit(1)
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf();
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    println!("== building libkusto_edge.a and the C demo");
    run(
        Command::new(&cargo)
            .args(["build", "--quiet", "--release", "--lib", "-p", "kusto-edge"])
            .current_dir(&root),
        "cargo build",
    );
    let build = target.join("c-demo");
    run(
        Command::new("make")
            .arg("--quiet")
            .arg("-C")
            .arg(root.join("examples-c"))
            .arg(format!("LIBDIR={}", target.join("release").display()))
            .arg(format!("BUILD={}", build.display()))
            .arg(build.join("demo")),
        "make",
    );

    let tables = vec![
        ("edge".to_string(), "Telemetry".to_string()),
        ("edge".to_string(), "Events".to_string()),
    ];
    let server = Server::start(ServerConfig {
        tls: true,
        tables: Some(tables),
        ..Default::default()
    })
    .unwrap_or_else(|e| fail(&format!("cannot start the endpoint: {e}")));
    let work = std::env::temp_dir().join(format!("kedge-demo-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).unwrap_or_else(|e| fail(&format!("{}: {e}", work.display())));
    let ca = work.join("test-ca.pem");
    std::fs::write(&ca, server.ca_pem().unwrap_or_default())
        .unwrap_or_else(|e| fail(&format!("{e}")));
    let spool = work.join("spool");
    println!(
        "== Kusto-compatible endpoint at {} (TLS, test CA {})",
        server.url(),
        ca.display()
    );
    println!("== spool directory {}", spool.display());
    println!(
        "== streaming for {SECONDS} s; the endpoint goes down at {:?} for {:?}\n",
        OUTAGE_AT, OUTAGE_FOR
    );

    let mut child = Command::new(build.join("demo"))
        .arg(server.url())
        .arg(&ca)
        .arg(&spool)
        .arg(SECONDS.to_string())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| fail(&format!("cannot start the demo: {e}")));
    let stdout = child.stdout.take().expect("piped");
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        let mut appended = None;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            println!("{line}");
            if let Some(n) = line
                .strip_prefix("demo: appended ")
                .and_then(|r| r.split_whitespace().next())
            {
                appended = n.parse::<usize>().ok();
            }
        }
        appended
    });
    let started = Instant::now();
    std::thread::sleep(OUTAGE_AT);
    println!(
        "\n        *** outage: the endpoint drops every connection for {:?} ***\n",
        OUTAGE_FOR
    );
    server.set_down(OUTAGE_FOR);
    std::thread::sleep(OUTAGE_FOR);
    println!(
        "\n        *** the endpoint is back after {:.1} s ***\n",
        started.elapsed().as_secs_f64() - OUTAGE_AT.as_secs_f64()
    );
    let status = child.wait().unwrap_or_else(|e| fail(&format!("{e}")));
    let appended = reader.join().ok().flatten();

    println!("\n== what arrived at the endpoint");
    let stats = server.stats();
    let mut arrived = 0;
    for (db, table) in [("edge", "Telemetry"), ("edge", "Events")] {
        let records = server.records(db, table);
        arrived += records.len();
        println!("{db}.{table}: {} records", records.len());
        for r in records.iter().take(2).chain(records.iter().rev().take(1)) {
            println!("    {}", String::from_utf8_lossy(r));
        }
    }
    let requests = server.requests();
    let refused = requests.iter().filter(|r| !r.ingested).count();
    println!(
        "{} requests ({} ingested, {} cut off by the outage), every body gzip: {}, duplicates after lost replies: {} chunks, {} records",
        requests.len(),
        stats.ingested_requests,
        refused,
        requests.iter().filter(|r| r.ingested).all(|r| r.gzip_ok),
        stats.duplicate_chunks,
        stats.duplicate_records
    );
    let _ = std::fs::remove_dir_all(&work);
    match appended {
        Some(n) if n <= arrived && status.success() => {
            println!("\nOK: all {n} records appended through the C API arrived ({arrived} rows, at-least-once).")
        }
        _ => fail(&format!(
            "records missing: appended {appended:?}, arrived {arrived}, demo exit {status}"
        )),
    }
}
