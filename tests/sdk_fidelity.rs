//! Fidelity with the official SDK: the Python `azure-kusto-ingest` (pinned in `tests/sdk/requirements.txt`, in a
//! virtual environment under `target/sdk-venv`) ingests a file with its `QueuedIngestClient` through the test
//! endpoint's DM and Azurite. What it sends must be accepted (no violations, the records arrive), so the
//! endpoint is faithful to the service; and our queue message must carry every key the SDK's carries, so we
//! are faithful to the SDK.
//!
//! Needs python3 with the venv module (Debian: python3 python3-venv python3-pip); `tests/run-all.sh` installs
//! them and the requirements, so the test itself downloads nothing then. Without them it fails, saying so.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

use kusto_devserver::azurite::Azurite;
use kusto_devserver::dm::QueuedIngestion;
use kusto_devserver::tools;
use kusto_devserver::{DmConfig, Server, ServerConfig};
use kusto_edge_core::{Client, Config};
use serde_json::Value;

#[path = "sdk/venv.rs"]
mod venv;
use venv::{python_requirements, run, sdk_dir, venv_python};

const TOKEN: &str = "sdk-fidelity-static-token";
fn wait_for(server: &Server, db: &str, table: &str, n: usize) -> usize {
    let start = Instant::now();
    loop {
        let got = server.records(db, table).len();
        if got >= n || start.elapsed() > Duration::from_secs(30) {
            return got;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The top-level keys of a message and those of its `AdditionalProperties` (prefixed so).
fn keys(ingestion: &QueuedIngestion) -> BTreeSet<String> {
    let v: Value = serde_json::from_str(&ingestion.message).unwrap();
    let mut keys = BTreeSet::new();
    for (k, val) in v.as_object().unwrap() {
        keys.insert(k.clone());
        if k == "AdditionalProperties" {
            for inner in val.as_object().unwrap().keys() {
                keys.insert(format!("AdditionalProperties.{inner}"));
            }
        }
    }
    keys
}

#[test]
fn the_official_sdk_is_accepted_and_our_message_carries_every_key_it_sends() {
    if !tools::available_or_skip(tools::azurite_requirements().and_then(|()| python_requirements()))
    {
        return;
    }
    let python = venv_python();
    let az = Azurite::start().expect("azurite");
    let mut dm = DmConfig::new(az.endpoints());
    dm.poll_interval = Duration::from_millis(50);
    let server = Server::start(ServerConfig {
        token: Some(TOKEN.into()),
        dm: Some(dm),
        ..ServerConfig::default()
    })
    .unwrap();
    let dm_url = server.dm_url().unwrap();

    // The SDK: one file of records, queued.
    let n = 200;
    let dir = std::env::temp_dir().join(format!("kedge-sdk-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("records.json");
    let data: String = (0..n)
        .map(|i| format!("{{\"seq\":{i},\"from\":\"sdk\"}}\n"))
        .collect();
    std::fs::write(&file, data).unwrap();
    let out = run(
        Command::new(&python)
            .arg(sdk_dir().join("queued_ingest.py"))
            .args([&dm_url, TOKEN, "db", "Sdk", "multijson"])
            .arg(&file),
        "tests/sdk/queued_ingest.py",
    );
    let _ = std::fs::remove_dir_all(&dir);
    let sdk_id = out.trim().to_string();
    assert_eq!(wait_for(&server, "db", "Sdk", n), n, "the SDK's records");
    let violations = server.dm_violations();
    assert!(violations.is_empty(), "DM violations: {violations:#?}");

    // Ours: the same records, queued.
    let mut cfg = Config::default();
    cfg.set("url", &server.url()).unwrap();
    cfg.set("http.allow_plain", "true").unwrap();
    cfg.set("auth.token", TOKEN).unwrap();
    cfg.set("ingest.mode", "queued").unwrap();
    cfg.set("ingest.dm_url", &dm_url).unwrap();
    cfg.set("client.app", "sdk-fidelity").unwrap();
    let c = Client::with_options(&cfg, Default::default()).unwrap();
    let d = c.add_destination("db", "Ours", "multijson", None).unwrap();
    for i in 0..n {
        c.append(d, format!("{{\"seq\":{i},\"from\":\"ours\"}}").as_bytes())
            .unwrap();
    }
    c.flush().unwrap();
    assert_eq!(wait_for(&server, "db", "Ours", n), n, "our records");
    let violations = server.dm_violations();
    assert!(violations.is_empty(), "DM violations: {violations:#?}");

    let ingestions = server.dm_ingestions();
    let sdk = ingestions
        .iter()
        .find(|i| i.id == sdk_id)
        .unwrap_or_else(|| panic!("the SDK's message {sdk_id:?} not among {ingestions:#?}"));
    assert_eq!(sdk.outcome, "Succeeded", "{sdk:#?}");
    let ours = ingestions
        .iter()
        .find(|i| i.table == "Ours")
        .expect("our message");
    let (sdk_keys, our_keys) = (keys(sdk), keys(ours));
    for k in [
        "BlobPath",
        "Id",
        "AdditionalProperties.authorizationContext",
    ] {
        assert!(sdk_keys.contains(k), "{k} not in {sdk_keys:?}");
    }
    let missing: Vec<&String> = sdk_keys.difference(&our_keys).collect();
    assert!(
        missing.is_empty(),
        "keys the SDK sends and we do not: {missing:?}\nSDK: {}\nours: {}",
        sdk.message,
        ours.message
    );
}
