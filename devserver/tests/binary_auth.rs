//! The binary with the auth endpoints and a proxy beside it, as C/shell tests run it.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::connect;

fn addr_of(url: &str) -> SocketAddr {
    let port: u16 = url.rsplit(':').next().unwrap().trim().parse().unwrap();
    SocketAddr::from(([127, 0, 0, 1], port))
}

#[test]
fn binary_serves_tokens_and_runs_a_proxy_beside_the_server() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_kusto-devserver"))
        .args([
            "--auth-secret-client",
            "app:pw",
            "--auth-token-lifetime-secs",
            "120",
            "--proxy-port",
            "0",
            "--proxy-user",
            "u",
            "--proxy-pass",
            "p",
            "--exit-after-secs",
            "60",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let url = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap()
        .to_string();
    line.clear();
    out.read_line(&mut line).unwrap();
    let proxy = line
        .trim()
        .strip_prefix("proxy listening on ")
        .unwrap()
        .to_string();
    let (server, proxy) = (addr_of(&url), addr_of(&proxy));

    // A token through the proxy (absolute URI, Basic credentials).
    let body = b"grant_type=client_credentials&client_id=app&client_secret=pw&scope=https%3A%2F%2Fkusto.kusto.windows.net%2F.default";
    let r = connect(proxy)
        .request(
            "POST",
            &format!("{url}/test-tenant/oauth2/v2.0/token"),
            &[
                (
                    "Content-Type".into(),
                    "application/x-www-form-urlencoded".into(),
                ),
                ("Proxy-Authorization".into(), "Basic dTpw".into()),
            ],
            body,
        )
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["expires_in"], 120);

    let stats = connect(server)
        .request("GET", "/_dev/auth/stats", &[], b"")
        .unwrap()
        .json();
    assert_eq!(stats["secret_requests"], 1);
    assert_eq!(stats["tokens"][0]["kind"], "secret");

    let r = connect(server)
        .request("POST", "/_dev/shutdown", &[], b"")
        .unwrap();
    assert_eq!(r.status, 200);
    let t0 = Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            assert!(st.success());
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}
