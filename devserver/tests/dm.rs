//! The data-management side over a real Azurite: SAS minting, the management commands, the ingestor.

use std::time::Duration;

use kusto_devserver::azurite::Azurite;
use kusto_devserver::storage::{self, Account};
use kusto_devserver::tools;

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[test]
fn azurite_accepts_minted_sas_and_refuses_tampered_or_expired() {
    if !tools::azurite_or_skip() {
        return;
    }
    let az = shared_azurite();
    let acct = Account::new(az.endpoints());
    acct.create_container("cont1").unwrap();
    acct.create_queue("queue1").unwrap();
    if let Err(e) = acct.create_table("status1") {
        panic!("{e}")
    }
    let t = now();
    let url = acct.container_url("cont1", "rw", t - 60, t + 3600);
    let blob = storage::put_blob(&url, "a.csv.gz", b"hello", None).unwrap();
    assert_eq!(storage::get_blob(&blob, None).unwrap(), b"hello");
    // One character of the signature changed: 403 AuthenticationFailed.
    let i = url.find("sig=").unwrap() + 4;
    let mut bad = url.clone();
    let c = if &url[i..i + 1] == "A" { "B" } else { "A" };
    bad.replace_range(i..i + 1, c);
    let e = storage::put_blob(&bad, "b.csv.gz", b"x", None).unwrap_err();
    assert_eq!(e.status, 403, "{e}");
    assert!(
        e.code.starts_with("Authori") || e.code.starts_with("Authenti"),
        "{e}"
    );
    // Expired.
    let old = acct.container_url("cont1", "rw", t - 7200, t - 3600);
    assert_eq!(
        storage::put_blob(&old, "c.gz", b"x", None)
            .unwrap_err()
            .status,
        403
    );
    // Read-only SAS cannot write.
    let ro = acct.container_url("cont1", "r", t - 60, t + 3600);
    assert_eq!(
        storage::put_blob(&ro, "d.gz", b"x", None)
            .unwrap_err()
            .status,
        403
    );

    let q = acct.queue_url("queue1", "raup", t - 60, t + 3600);
    storage::put_message(&q, "aGVsbG8=", None).unwrap();
    let peek = storage::get_messages(&q, 32, None, None).unwrap();
    assert_eq!(peek.len(), 1);
    let got = storage::get_messages(&q, 32, Some(Duration::from_secs(30)), None).unwrap();
    assert_eq!(got[0].text, "aGVsbG8=");
    storage::delete_message(&q, &got[0], None).unwrap();
    assert!(storage::get_messages(&q, 32, None, None)
        .unwrap()
        .is_empty());
    let add_only = acct.queue_url("queue1", "a", t - 60, t + 3600);
    assert_eq!(
        storage::get_messages(&add_only, 1, None, None)
            .unwrap_err()
            .status,
        403
    );

    let tb = acct.table_url("status1", "raud", t - 60, t + 3600);
    let e = serde_json::json!({"PartitionKey":"p","RowKey":"r","Status":"Pending"});
    storage::insert_entity(&tb, &e, None).unwrap();
    storage::merge_entity(
        &tb,
        "p",
        "r",
        &serde_json::json!({"Status":"Succeeded"}),
        None,
    )
    .unwrap();
    assert_eq!(
        storage::get_entity(&tb, "p", "r", None).unwrap()["Status"],
        "Succeeded"
    );
}

use kusto_devserver::client;
use kusto_devserver::{gzip::gzip, DmConfig, DmFaults, Server, ServerConfig};
use serde_json::{json, Value};
use std::time::Instant;

struct Env {
    // Field order: the server (and its ingestor) stops before its own Azurite does.
    server: Server,
    az: Option<Azurite>,
}

/// One Azurite for the tests that do not stop or pause it: every DM has its own queues and containers (random
/// suffixes). Never dropped; it exits with this process (it watches its stdin).
fn shared_azurite() -> &'static Azurite {
    static AZ: std::sync::OnceLock<Azurite> = std::sync::OnceLock::new();
    AZ.get_or_init(|| Azurite::start().expect("azurite"))
}

fn env_with(tables: Option<Vec<(&str, &str)>>, token: Option<&str>) -> Env {
    env_on(shared_azurite().endpoints(), None, tables, token)
}

fn env_on(
    storage: kusto_devserver::azurite::StorageEndpoints,
    own: Option<Azurite>,
    tables: Option<Vec<(&str, &str)>>,
    token: Option<&str>,
) -> Env {
    let mut dm = DmConfig::new(storage);
    dm.poll_interval = Duration::from_millis(50);
    dm.batch_window = Duration::from_secs(3);
    let server = Server::start(ServerConfig {
        dm: Some(dm),
        tables: tables.map(|t| {
            t.into_iter()
                .map(|(d, t)| (d.to_string(), t.to_string()))
                .collect()
        }),
        token: token.map(str::to_string),
        ..ServerConfig::default()
    })
    .unwrap();
    Env { server, az: own }
}

fn mgmt(url: &str, csl: &str, token: Option<&str>, ca: Option<&str>) -> client::ClientResponse {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut h = vec![
        ("Content-Type", "application/json; charset=utf-8"),
        ("Accept", "application/json"),
        ("x-ms-version", "2024-12-12"),
        (
            "x-ms-client-request-id",
            "KEC.execute;6a1d1c39-5a8e-4b7b-8a0e-1f6d7e2c3b4a",
        ),
        ("x-ms-app", "dm-test"),
        ("x-ms-user", "[none]"),
    ];
    if let Some(a) = &auth {
        h.push(("Authorization", a));
    }
    let body = json!({"db": "NetDefaultDB", "csl": csl}).to_string();
    client::request(
        "POST",
        &format!("{url}/v1/rest/mgmt"),
        &h,
        body.as_bytes(),
        ca,
        Duration::from_secs(10),
    )
    .unwrap()
}

/// What a client learns from the DM.
struct Resources {
    rows: Vec<(String, String)>,
    token: String,
}

impl Resources {
    fn get(url: &str, token: Option<&str>, ca: Option<&str>) -> Resources {
        let r = mgmt(url, ".get ingestion resources", token, ca);
        assert_eq!(r.status, 200, "{}", r.text());
        let v: Value = serde_json::from_slice(&r.body).unwrap();
        let cols = v["Tables"][0]["Columns"].as_array().unwrap();
        let at = |n: &str| cols.iter().position(|c| c["ColumnName"] == n).unwrap();
        let (k, s) = (at("ResourceTypeName"), at("StorageRoot"));
        let rows = v["Tables"][0]["Rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r[k].as_str().unwrap().to_string(),
                    r[s].as_str().unwrap().to_string(),
                )
            })
            .collect();
        let t = mgmt(url, ".get kusto identity token", token, ca);
        assert_eq!(t.status, 200, "{}", t.text());
        let tv: Value = serde_json::from_slice(&t.body).unwrap();
        assert_eq!(
            tv["Tables"][0]["Columns"][0]["ColumnName"],
            "AuthorizationContext"
        );
        Resources {
            rows,
            token: tv["Tables"][0]["Rows"][0][0].as_str().unwrap().to_string(),
        }
    }

    fn all(&self, kind: &str) -> Vec<&str> {
        self.rows
            .iter()
            .filter(|(k, _)| k == kind)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    fn one(&self, kind: &str) -> &str {
        self.all(kind)[0]
    }
}

/// Upload `raw` gzipped as `{name}` and post the message; returns the message JSON.
#[allow(clippy::too_many_arguments)]
fn send_blob(
    res: &Resources,
    id: &str,
    table: &str,
    format: &str,
    raw: &[u8],
    raw_size: usize,
    report_level: u8,
    report_method: u8,
    ca: Option<&str>,
) -> Value {
    let name = format!("db__{table}__{id}__chunk.{format}.gz");
    let blob = storage::put_blob(res.one("TempStorage"), &name, &gzip(raw), ca).unwrap();
    let mut msg = json!({
        "Id": id, "BlobPath": blob, "RawDataSize": raw_size,
        "DatabaseName": "db", "TableName": table,
        "RetainBlobOnSuccess": true, "FlushImmediately": false, "IgnoreSizeLimit": false,
        "ReportLevel": report_level, "ReportMethod": report_method,
        "SourceMessageCreationTime": "2026-12-01T19:35:12.1234567Z",
        "ApplicationForTracing": "dm-test", "ClientVersionForTracing": "Kusto.Edge:{0.1.0}",
        "AdditionalProperties": {"authorizationContext": res.token, "format": format,
                                  "tags": "[\"ingest-by:dm-test\"]"},
    });
    if report_method != 0 {
        let table_url = res.one("IngestionsStatusTable");
        storage::insert_entity(
            table_url,
            &json!({"PartitionKey": id, "RowKey": id, "Status": "Pending", "IngestionSourceId": id,
                    "IngestionSourcePath": storage::split_sas(&blob).0, "Database": "db",
                    "Table": table, "UpdatedOn": "2026-12-01T19:35:12.1234567Z"}),
            ca,
        )
        .unwrap();
        msg["IngestionStatusInTable"] =
            json!({"TableConnectionString": table_url, "PartitionKey": id, "RowKey": id});
    }
    let text = kusto_devserver::b64::encode(msg.to_string().as_bytes());
    storage::put_message(res.one("SecuredReadyForAggregationQueue"), &text, ca).unwrap();
    msg
}

fn wait_until(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Wait for `n` notifications on a queue (dequeued and deleted), decoded.
fn notifications(queue_url: &str, n: usize, ca: Option<&str>) -> Vec<Value> {
    let mut out = Vec::new();
    wait_until("notifications", 10, || {
        for m in storage::get_messages(queue_url, 32, Some(Duration::from_secs(30)), ca).unwrap() {
            storage::delete_message(queue_url, &m, ca).unwrap();
            let raw = kusto_devserver::b64::decode(&m.text).expect("base64 notification");
            out.push(serde_json::from_slice(&raw).expect("JSON notification"));
        }
        out.len() >= n
    });
    out
}

const ID1: &str = "0b9d6b1e-7c53-4b0e-9a39-2f6c1d6a0f11";
const ID2: &str = "1c0e7c2f-8d64-4c1f-8b4a-3a7d2e7b1a22";
const ID3: &str = "2d1f8d30-9e75-4d20-9c5b-4b8e3f8c2b33";

#[test]
fn queued_blob_arrives_with_a_success_notification_and_no_violations() {
    if !tools::azurite_or_skip() {
        return;
    }
    let e = env_with(None, None);
    let url = e.server.dm_url().unwrap();
    let res = Resources::get(&url, None, None);
    assert_eq!(res.all("SecuredReadyForAggregationQueue").len(), 2);
    assert_eq!(res.all("TempStorage").len(), 2);
    for k in [
        "FailedIngestionsQueue",
        "SuccessfulIngestionsQueue",
        "IngestionsStatusTable",
    ] {
        assert_eq!(res.all(k).len(), 1, "{k}");
    }
    assert_eq!(Some(res.token.clone()), e.server.dm_identity_token());
    let raw = b"{\"a\":1}\n{\"a\":2}\n{\"a\":3}\n";
    send_blob(&res, ID1, "Events", "multijson", raw, raw.len(), 2, 0, None);
    wait_until("records", 10, || {
        e.server.records("db", "Events").len() == 3
    });
    assert_eq!(e.server.records("db", "Events")[0], b"{\"a\":1}");
    let n = notifications(res.one("SuccessfulIngestionsQueue"), 1, None);
    assert_eq!(n[0]["IngestionSourceId"], ID1);
    assert_eq!(n[0]["Database"], "db");
    assert_eq!(n[0]["Table"], "Events");
    assert!(
        !n[0]["IngestionSourcePath"].as_str().unwrap().contains('?'),
        "no SAS in reports"
    );
    for k in ["OperationId", "RootActivityId", "SucceededOn"] {
        assert!(n[0][k].is_string(), "{k}");
    }
    assert!(
        e.server.dm_violations().is_empty(),
        "{:?}",
        e.server.dm_violations()
    );
    let s = e.server.dm_stats();
    assert_eq!((s.resources_requests, s.identity_token_requests), (1, 1));
    assert_eq!(
        (s.messages_taken, s.blobs_ingested, s.records_ingested),
        (1, 1, 3)
    );
    let st = e.server.stats();
    assert_eq!(
        (st.records_queued, st.records_streamed, st.requests),
        (3, 0, 0)
    );
    let log = e.server.dm_ingestions();
    assert_eq!(
        (log[0].outcome.as_str(), log[0].raw_size_actual),
        ("Succeeded", raw.len() as u64)
    );
}

#[test]
fn wrong_raw_size_is_a_violation_and_a_missing_table_a_failure_notification() {
    if !tools::azurite_or_skip() {
        return;
    }
    let e = env_with(Some(vec![("db", "Events")]), None);
    let url = e.server.dm_url().unwrap();
    let res = Resources::get(&url, None, None);
    let raw = b"a,1\nb,2\n";
    // The compressed size instead of the raw one (Fluent Bit's bug): ingested, but a violation.
    send_blob(&res, ID1, "Events", "csv", raw, gzip(raw).len(), 0, 0, None);
    // A table that does not exist: a failure notification, no violation.
    send_blob(&res, ID2, "Nope", "csv", raw, raw.len(), 0, 0, None);
    let n = notifications(res.one("FailedIngestionsQueue"), 1, None);
    assert_eq!(n[0]["IngestionSourceId"], ID2);
    assert_eq!(n[0]["ErrorCode"], "BadRequest_TableNotExist");
    assert_eq!(n[0]["FailureStatus"], "Permanent");
    assert_eq!(n[0]["ShouldRetry"], false);
    assert_eq!(n[0]["OriginatesFromUpdatePolicy"], false);
    for k in [
        "OperationId",
        "Database",
        "Table",
        "FailedOn",
        "IngestionSourcePath",
        "Details",
        "RootActivityId",
    ] {
        assert!(n[0][k].is_string(), "{k}: {}", n[0]);
    }
    wait_until("records", 10, || {
        e.server.records("db", "Events").len() == 2
    });
    let v = e.server.dm_violations();
    assert_eq!(v.len(), 1, "{v:?}");
    assert!(v[0].contains(ID1) && v[0].contains("RawDataSize"), "{v:?}");
    assert_eq!(e.server.dm_stats().failed_ingestions, 1);
}

#[test]
fn the_same_blob_twice_in_a_batch_is_ingested_once() {
    if !tools::azurite_or_skip() {
        return;
    }
    let e = env_with(None, None);
    let res = Resources::get(&e.server.dm_url().unwrap(), None, None);
    let raw = b"{\"a\":1}\n";
    send_blob(&res, ID1, "T", "json", raw, raw.len(), 0, 0, None);
    send_blob(&res, ID1, "T", "json", raw, raw.len(), 0, 0, None);
    let n = notifications(res.one("FailedIngestionsQueue"), 1, None);
    assert_eq!(
        n[0]["ErrorCode"],
        "BlobAlreadyReceived_BlobAlreadyFoundInBatch"
    );
    assert_eq!(e.server.records("db", "T").len(), 1);
    let s = e.server.dm_stats();
    assert_eq!((s.duplicates_in_batch, s.blobs_ingested), (1, 1));
    assert!(
        e.server.dm_violations().is_empty(),
        "{:?}",
        e.server.dm_violations()
    );
}

#[test]
fn status_table_rows_are_updated() {
    if !tools::azurite_or_skip() {
        return;
    }
    let e = env_with(Some(vec![("db", "T")]), None);
    let res = Resources::get(&e.server.dm_url().unwrap(), None, None);
    let raw = b"x,1\n";
    send_blob(&res, ID1, "T", "csv", raw, raw.len(), 0, 1, None);
    send_blob(&res, ID2, "Missing", "csv", raw, raw.len(), 0, 1, None);
    let table = res.one("IngestionsStatusTable");
    wait_until("status rows", 10, || {
        [ID1, ID2]
            .iter()
            .all(|id| storage::get_entity(table, id, id, None).unwrap()["Status"] != "Pending")
    });
    assert_eq!(
        storage::get_entity(table, ID1, ID1, None).unwrap()["Status"],
        "Succeeded"
    );
    let failed = storage::get_entity(table, ID2, ID2, None).unwrap();
    assert_eq!(failed["Status"], "Failed");
    assert_eq!(failed["ErrorCode"], "BadRequest_TableNotExist");
    assert!(
        e.server.dm_violations().is_empty(),
        "{:?}",
        e.server.dm_violations()
    );
    // Nothing on the failure queue: the message asked for the table only.
    assert!(
        storage::get_messages(res.one("FailedIngestionsQueue"), 32, None, None)
            .unwrap()
            .is_empty()
    );
}

#[test]
fn a_message_naming_a_status_row_nobody_inserted_is_a_violation() {
    if !tools::azurite_or_skip() {
        return;
    }
    let e = env_with(Some(vec![("db", "T")]), None);
    let res = Resources::get(&e.server.dm_url().unwrap(), None, None);
    let raw = b"x,1\n";
    let name = format!("db__T__{ID1}__chunk.csv.gz");
    let blob = storage::put_blob(res.one("TempStorage"), &name, &gzip(raw), None).unwrap();
    let table_url = res.one("IngestionsStatusTable");
    let msg = json!({
        "Id": ID1, "BlobPath": blob, "RawDataSize": raw.len(),
        "DatabaseName": "db", "TableName": "T",
        "RetainBlobOnSuccess": true, "FlushImmediately": false, "IgnoreSizeLimit": false,
        "ReportLevel": 2, "ReportMethod": 1,
        "SourceMessageCreationTime": "2026-12-01T19:35:12.1234567Z",
        "ApplicationForTracing": "dm-test", "ClientVersionForTracing": "Kusto.Edge:{0.1.0}",
        "AdditionalProperties": {"authorizationContext": res.token, "format": "csv"},
        "IngestionStatusInTable": {"TableConnectionString": table_url, "PartitionKey": ID1, "RowKey": ID1},
    });
    let text = kusto_devserver::b64::encode(msg.to_string().as_bytes());
    storage::put_message(res.one("SecuredReadyForAggregationQueue"), &text, None).unwrap();
    wait_until("the violation", 10, || !e.server.dm_violations().is_empty());
    let v = e.server.dm_violations();
    assert!(
        v.iter()
            .any(|x| x.contains("was not inserted before the message")),
        "{v:?}"
    );
}

#[test]
fn broken_messages_are_violations() {
    if !tools::azurite_or_skip() {
        return;
    }
    let e = env_with(None, None);
    let res = Resources::get(&e.server.dm_url().unwrap(), None, None);
    let q = res.one("SecuredReadyForAggregationQueue");
    // Raw JSON instead of base64.
    storage::put_message(q, "{\"Id\":1}", None).unwrap();
    // A wrong identity token, an upper-case Id, a non-string tag list.
    let blob = storage::put_blob(res.one("TempStorage"), "x.csv.gz", &gzip(b"a\n"), None).unwrap();
    let msg = json!({"Id": ID3.to_uppercase(), "BlobPath": blob, "RawDataSize": 2,
        "DatabaseName": "db", "TableName": "T",
        "AdditionalProperties": {"authorizationContext": "someone else's", "format": "csv"}});
    storage::put_message(
        q,
        &kusto_devserver::b64::encode(msg.to_string().as_bytes()),
        None,
    )
    .unwrap();
    // Gzip data under a name without .gz, and tags as an array.
    let blob = storage::put_blob(res.one("TempStorage"), "y.csv", &gzip(b"a\n"), None).unwrap();
    let msg = json!({"Id": ID2, "BlobPath": blob, "RawDataSize": 2,
        "DatabaseName": "db", "TableName": "T",
        "AdditionalProperties": {"authorizationContext": res.token, "format": "csv", "tags": ["a"]}});
    storage::put_message(
        q,
        &kusto_devserver::b64::encode(msg.to_string().as_bytes()),
        None,
    )
    .unwrap();
    wait_until("violations", 10, || e.server.dm_stats().violations >= 5);
    let v = e.server.dm_violations().join("\n");
    for want in [
        "not standard base64",
        "lowercase uuid",
        "identity token",
        ".gz",
        "tags",
    ] {
        assert!(v.contains(want), "{want}: {v}");
    }
}

#[test]
fn mgmt_checks_auth_and_misbehaves_on_demand() {
    if !tools::azurite_or_skip() {
        return;
    }
    let e = env_with(None, Some("T0KEN"));
    let url = e.server.dm_url().unwrap();
    assert_eq!(
        mgmt(&url, ".get ingestion resources", None, None).status,
        401
    );
    assert_eq!(
        mgmt(&url, ".get ingestion resources", Some("bad"), None).status,
        401
    );
    assert_eq!(mgmt(&url, ".show tables", Some("T0KEN"), None).status, 400);
    e.server.set_dm_faults(DmFaults {
        throttle_mgmt: 2,
        ..DmFaults::default()
    });
    let r = mgmt(&url, ".get ingestion resources", Some("T0KEN"), None);
    assert_eq!(r.status, 429);
    assert_eq!(
        mgmt(&url, ".get kusto identity token", Some("T0KEN"), None).status,
        429
    );
    let s = e.server.dm_stats();
    assert_eq!(
        (s.mgmt_throttled, s.mgmt_refused, s.resources_requests),
        (2, 3, 0)
    );
    // Expired SAS: Azurite refuses the upload.
    e.server.set_dm_faults(DmFaults {
        sas_expired: true,
        ..DmFaults::default()
    });
    let res = Resources::get(&url, Some("T0KEN"), None);
    let err = storage::put_blob(res.one("TempStorage"), "a.csv.gz", b"x", None).unwrap_err();
    assert_eq!(err.status, 403, "{err}");
    // Unreachable storage: nothing listens.
    e.server.set_dm_faults(DmFaults {
        storage_unreachable: true,
        ..DmFaults::default()
    });
    let res = Resources::get(&url, Some("T0KEN"), None);
    let err = storage::put_blob(res.one("TempStorage"), "a.csv.gz", b"x", None).unwrap_err();
    assert_eq!(err.status, 0, "{err}");
    assert_eq!(e.server.dm_stats().resources_requests, 2);
    // The engine alone answers the DM's commands with "wrong endpoint".
    let engine = Server::start(ServerConfig::default()).unwrap();
    let r = mgmt(&engine.url(), ".get ingestion resources", None, None);
    assert_eq!(r.status, 400);
    assert!(
        r.text().contains("AdminCommandWrongEndpoint"),
        "{}",
        r.text()
    );
}

#[test]
fn delays_and_a_paused_azurite() {
    if !tools::azurite_or_skip() {
        return;
    }
    let az = Azurite::start().expect("azurite");
    let e = env_on(az.endpoints(), Some(az), None, None);
    let res = Resources::get(&e.server.dm_url().unwrap(), None, None);
    e.server.set_dm_faults(DmFaults {
        ingest_delay: Duration::from_millis(800),
        notification_delay: Duration::from_millis(800),
        ..DmFaults::default()
    });
    let t0 = Instant::now();
    let raw = b"{\"a\":1}\n";
    send_blob(&res, ID1, "T", "json", raw, raw.len(), 2, 0, None);
    wait_until("records", 10, || e.server.records("db", "T").len() == 1);
    assert!(t0.elapsed() >= Duration::from_millis(800));
    notifications(res.one("SuccessfulIngestionsQueue"), 1, None);
    assert!(t0.elapsed() >= Duration::from_millis(1600));
    // Frozen storage: requests hang; thawed, everything goes on.
    let az = e.az.as_ref().unwrap();
    az.pause();
    let t = std::thread::spawn({
        let q = res.one("SecuredReadyForAggregationQueue").to_string();
        move || {
            client::request(
                "GET",
                &format!("{}&comp=metadata", q),
                &[],
                b"",
                None,
                Duration::from_millis(500),
            )
        }
    });
    assert!(
        t.join().unwrap().is_err(),
        "a paused Azurite answers nothing"
    );
    az.resume();
    send_blob(&res, ID2, "T", "json", raw, raw.len(), 0, 0, None);
    wait_until("records after resume", 10, || {
        e.server.records("db", "T").len() == 2
    });
}

#[test]
fn https_end_to_end_with_one_test_ca() {
    if !tools::azurite_or_skip() {
        return;
    }
    let ca = kusto_devserver::tls::TestCa::generate().unwrap();
    let az = Azurite::start_tls(&ca).expect("azurite over https");
    assert!(az.blob_url().starts_with("https://"));
    let server = Server::start(ServerConfig {
        tls: true,
        tls_ca: Some(ca.clone()),
        dm: Some(DmConfig::new(az.endpoints())),
        ..ServerConfig::default()
    })
    .unwrap();
    let pem = Some(ca.ca_pem.as_str());
    assert_eq!(server.ca_pem().as_deref(), pem);
    let res = Resources::get(&server.dm_url().unwrap(), None, pem);
    assert!(res.one("TempStorage").starts_with("https://"));
    let raw = b"{\"a\":1}\n{\"b\":2}\n";
    send_blob(&res, ID1, "T", "json", raw, raw.len(), 2, 0, pem);
    wait_until("records", 15, || server.records("db", "T").len() == 2);
    notifications(res.one("SuccessfulIngestionsQueue"), 1, pem);
    assert!(
        server.dm_violations().is_empty(),
        "{:?}",
        server.dm_violations()
    );
    drop(server);
}

#[test]
fn binary_with_azurite_over_https_serves_the_dm_and_its_control_endpoints() {
    if !tools::azurite_or_skip() {
        return;
    }
    use std::io::BufRead;
    let dir = std::env::temp_dir().join(format!("kdev-dm-bin-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca_file = dir.join("ca.pem");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_kusto-devserver"))
        .args([
            "--azurite",
            "--tls",
            "--dm-queues",
            "3",
            "--exit-after-secs",
            "60",
            "--ca-out",
        ])
        .arg(&ca_file)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let url = first.strip_prefix("listening on ").unwrap().to_string();
    let storage_line = lines.next().unwrap().unwrap();
    assert!(
        storage_line.starts_with("storage at https://127.0.0.1:"),
        "{storage_line}"
    );
    let pem = std::fs::read_to_string(&ca_file).unwrap();
    let res = Resources::get(&url, None, Some(&pem));
    assert_eq!(res.all("SecuredReadyForAggregationQueue").len(), 3);
    let raw = b"{\"a\":1}\n";
    send_blob(&res, ID1, "T", "json", raw, raw.len(), 2, 0, Some(&pem));
    notifications(res.one("SuccessfulIngestionsQueue"), 1, Some(&pem));
    let get = |path: &str| {
        client::request(
            "GET",
            &format!("{url}{path}"),
            &[],
            b"",
            Some(&pem),
            Duration::from_secs(5),
        )
        .unwrap()
    };
    let stats: Value = serde_json::from_slice(&get("/_dev/dm/stats").body).unwrap();
    assert_eq!(stats["records_ingested"], 1);
    assert_eq!(stats["resources_requests"], 1);
    assert_eq!(get("/_dev/dm/violations").text(), "[]");
    let ing: Value = serde_json::from_slice(&get("/_dev/dm/ingestions").body).unwrap();
    assert_eq!(ing[0]["outcome"], "Succeeded");
    let st: Value = serde_json::from_slice(&get("/_dev/stats").body).unwrap();
    assert_eq!(
        (
            st["records_queued"].as_u64(),
            st["records_streamed"].as_u64()
        ),
        (Some(1), Some(0))
    );
    let post = |path: &str, body: &str| {
        client::request(
            "POST",
            &format!("{url}{path}"),
            &[],
            body.as_bytes(),
            Some(&pem),
            Duration::from_secs(5),
        )
        .unwrap()
    };
    assert_eq!(post("/_dev/dm/faults", "throttle-mgmt=1").status, 200);
    assert_eq!(
        mgmt(&url, ".get ingestion resources", None, Some(&pem)).status,
        429
    );
    assert_eq!(post("/_dev/dm/faults", "bogus").status, 400);
    assert_eq!(post("/_dev/dm/storage-pause", "").status, 200);
    assert_eq!(post("/_dev/dm/storage-resume", "").status, 200);
    assert_eq!(post("/_dev/shutdown", "").status, 200);
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            assert!(st.success());
            break;
        }
        assert!(Instant::now() < end, "binary did not exit");
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn blocks_of_gzip_members_make_one_blob() {
    if !tools::azurite_or_skip() {
        return;
    }
    let e = env_with(None, None);
    let res = Resources::get(&e.server.dm_url().unwrap(), None, None);
    let (a, b) = (
        b"{\"a\":1}\n".as_slice(),
        b"{\"b\":2}\n{\"c\":3}\n".as_slice(),
    );
    let (base, sas) = storage::split_sas(res.one("TempStorage"));
    let blob = format!("{base}/db__T__{ID3}__spool.json.gz?{sas}");
    let ids = ["YmxvY2stMDAwMDAx", "YmxvY2stMDAwMDAy"];
    storage::put_block(&blob, ids[0], &gzip(a), None).unwrap();
    storage::put_block(&blob, ids[1], &gzip(b), None).unwrap();
    storage::put_block_list(&blob, &ids, None).unwrap();
    let msg = json!({"Id": ID3, "BlobPath": blob, "RawDataSize": a.len() + b.len(),
        "DatabaseName": "db", "TableName": "T", "ReportLevel": 2, "ReportMethod": 0,
        "AdditionalProperties": {"authorizationContext": res.token, "format": "json"}});
    let text = kusto_devserver::b64::encode(msg.to_string().as_bytes());
    storage::put_message(res.one("SecuredReadyForAggregationQueue"), &text, None).unwrap();
    wait_until("records", 10, || e.server.records("db", "T").len() == 3);
    assert!(
        e.server.dm_violations().is_empty(),
        "{:?}",
        e.server.dm_violations()
    );
}

#[test]
fn many_blobs_from_several_producers_all_arrive_once() {
    if !tools::azurite_or_skip() {
        return;
    }
    let e = env_with(None, None);
    let res = std::sync::Arc::new(Resources::get(&e.server.dm_url().unwrap(), None, None));
    let t0 = Instant::now();
    let producers: Vec<_> = (0..4)
        .map(|p| {
            let res = res.clone();
            std::thread::spawn(move || {
                let queues = res.all("SecuredReadyForAggregationQueue");
                for i in 0..20 {
                    let id = format!("00000000-0000-4000-8000-{:06x}{:06x}", p, i);
                    let raw = format!("{{\"p\":{p},\"i\":{i}}}\n{{\"x\":1}}\n");
                    let name = format!("db__Many__{id}__c.json.gz");
                    let container = res.all("TempStorage")[i % 2];
                    let blob = storage::put_blob(container, &name, &gzip(raw.as_bytes()), None).unwrap();
                    let msg = json!({"Id": id, "BlobPath": blob, "RawDataSize": raw.len(),
                        "DatabaseName": "db", "TableName": "Many", "ReportLevel": 1,
                        "AdditionalProperties": {"authorizationContext": res.token, "format": "json"}});
                    let text = kusto_devserver::b64::encode(msg.to_string().as_bytes());
                    storage::put_message(queues[i % queues.len()], &text, None).unwrap();
                }
            })
        })
        .collect();
    for p in producers {
        p.join().unwrap();
    }
    wait_until("160 records", 20, || {
        e.server.records("db", "Many").len() == 160
    });
    let took = t0.elapsed();
    let s = e.server.dm_stats();
    assert_eq!(
        (s.messages_taken, s.blobs_ingested, s.duplicates_in_batch),
        (80, 80, 0)
    );
    assert_eq!(
        e.server.stats().duplicate_records,
        79,
        "every {{\"x\":1}} record after the first"
    );
    assert!(
        e.server.dm_violations().is_empty(),
        "{:?}",
        e.server.dm_violations()
    );
    eprintln!("80 blobs from 4 producers ingested in {took:?}");
}

/// The message exactly as azure-kusto-ingest 6.0.4 (Python) sent it through this DM in a manual run
/// (`QueuedIngestClient.ingest_from_file`, multijson, `FailuresAndSuccesses`): accepted without a violation.
#[test]
fn the_python_sdk_message_shape_is_accepted() {
    if !tools::azurite_or_skip() {
        return;
    }
    let e = env_with(None, None);
    let res = Resources::get(&e.server.dm_url().unwrap(), None, None);
    let id = "92504de5-d1ba-4d31-b5f9-70ce4099cbe7";
    let raw = b"{\"i\": 0, \"s\": \"x\"}\n{\"i\": 1, \"s\": \"x\"}\n";
    let name = format!("db__T__{id}__data.multijson.gz");
    let blob = storage::put_blob(res.one("TempStorage"), &name, &gzip(raw), None).unwrap();
    let msg = json!({
        "Id": id, "BlobPath": blob, "RawDataSize": raw.len(), "DatabaseName": "db", "TableName": "T",
        "RetainBlobOnSuccess": true, "FlushImmediately": false, "IgnoreSizeLimit": false,
        "ReportLevel": 2, "ReportMethod": 0,
        "SourceMessageCreationTime": "2026-12-02T02:17:32.113006",
        "ApplicationForTracing": "ingest.py",
        "ClientVersionForTracing": "Kusto.Python.Client:{6.0.4}|Runtime.{cpython}:{3.11.7_(main,_May_9_2026,_07:35:25)_[GCC_12.2.0]}",
        "AdditionalProperties": {"authorizationContext": res.token, "format": "multijson"},
    });
    let text = kusto_devserver::b64::encode(msg.to_string().as_bytes());
    storage::put_message(res.one("SecuredReadyForAggregationQueue"), &text, None).unwrap();
    let n = notifications(res.one("SuccessfulIngestionsQueue"), 1, None);
    assert_eq!(n[0]["IngestionSourceId"], id);
    assert_eq!(e.server.records("db", "T").len(), 2);
    assert!(
        e.server.dm_violations().is_empty(),
        "{:?}",
        e.server.dm_violations()
    );
    let logged: Value = serde_json::from_str(&e.server.dm_ingestions()[0].message).unwrap();
    assert!(logged["BlobPath"]
        .as_str()
        .unwrap()
        .ends_with("sig=REDACTED"));
}
