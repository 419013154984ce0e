//! The `kusto-devserver` binary as the demo and the C/shell tests run it.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{connect, connect_tls, tls_config};

fn temp_dir(name: &str) -> std::path::PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let d = std::env::temp_dir().join(format!("devserver-{name}-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn wait_exit(child: &mut Child, within: Duration) -> Option<std::process::ExitStatus> {
    let t0 = Instant::now();
    while t0.elapsed() < within {
        if let Some(st) = child.try_wait().unwrap() {
            return Some(st);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

fn addr_of(url: &str) -> SocketAddr {
    let port: u16 = url.rsplit(':').next().unwrap().trim().parse().unwrap();
    SocketAddr::from(([127, 0, 0, 1], port))
}

#[test]
fn binary_serves_tls_writes_its_files_and_shuts_down_on_request() {
    let dir = temp_dir("tls");
    let url_file = dir.join("url");
    let ca_file = dir.join("ca.pem");
    let mut child = Command::new(env!("CARGO_BIN_EXE_kusto-devserver"))
        .args([
            "--tls",
            "--table",
            "db.T",
            "--seed",
            "3",
            "--random-faults",
            "429:0.0",
            "--exit-after-secs",
            "60",
        ])
        .arg("--url-file")
        .arg(&url_file)
        .arg("--ca-out")
        .arg(&ca_file)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .trim()
        .strip_prefix("listening on ")
        .expect(&line)
        .to_string();
    assert!(url.starts_with("https://localhost:"), "{url}");
    assert_eq!(std::fs::read_to_string(&url_file).unwrap().trim(), url);
    let ca = std::fs::read_to_string(&ca_file).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&ca_file).unwrap().permissions().mode() & 0o777,
            0o644
        );
    }

    let addr = addr_of(&url);
    let mut c = connect_tls(addr, tls_config(Some(&ca)), "localhost");
    assert_eq!(
        c.ingest("db", "T", "csv", "b1", b"a\nb\n").unwrap().status,
        200
    );
    let r = c.ingest("db", "Other", "csv", "b2", b"a\n").unwrap();
    assert_eq!(r.json()["error"]["code"], "BadRequest_EntityNotFound");
    let r = c
        .request("GET", "/_dev/records?db=db&table=T", &[], b"")
        .unwrap();
    assert_eq!(r.text(), "a\nb\n");
    assert_eq!(
        c.request("POST", "/_dev/shutdown", &[], b"")
            .unwrap()
            .status,
        200
    );
    let st = wait_exit(&mut child, Duration::from_secs(10)).expect("exits after /_dev/shutdown");
    assert!(st.success());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn binary_exits_on_its_own_and_refuses_bad_arguments() {
    let dir = temp_dir("plain");
    let url_file = dir.join("url");
    let mut child = Command::new(env!("CARGO_BIN_EXE_kusto-devserver"))
        .args(["--exit-after-secs", "2", "--random-faults", "503:1.0"])
        .arg("--url-file")
        .arg(&url_file)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while !url_file.exists() {
        assert!(t0.elapsed() < Duration::from_secs(10), "no url file");
        std::thread::sleep(Duration::from_millis(20));
    }
    let url = std::fs::read_to_string(&url_file).unwrap();
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    let r = connect(addr_of(&url))
        .ingest("db", "T", "csv", "p1", b"a\n")
        .unwrap();
    assert_eq!(r.status, 503);
    let st = wait_exit(&mut child, Duration::from_secs(10)).expect("exits after --exit-after-secs");
    assert!(st.success());

    for bad in [
        &["--port", "x"][..],
        &["--random-faults", "nope:0.1"],
        &["--table", "notable"],
        &["--wat"],
    ] {
        let st = Command::new(env!("CARGO_BIN_EXE_kusto-devserver"))
            .args(bad)
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert_eq!(st.code(), Some(2), "{bad:?}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
