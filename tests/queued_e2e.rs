//! Queued ingestion end to end: the client, the test endpoint as a DM, and a real Azure Storage server (Azurite).
//! What the client uploads and posts is what the DM checks and ingests; the assertion that matters is zero
//! protocol violations.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kusto_devserver::azurite::Azurite;
use kusto_devserver::tools;
use kusto_devserver::{DmConfig, Server, ServerConfig};
use kusto_edge_core::client::{DeliveryReport, Outcome};
use kusto_edge_core::{Client, ClientOptions, Config};

struct Env {
    // Field order: the server (and its ingestor) stops before Azurite does.
    server: Server,
    az: Azurite,
}

fn env(tables: Option<Vec<(&str, &str)>>) -> Env {
    let az = Azurite::start().expect("azurite");
    let mut dm = DmConfig::new(az.endpoints());
    dm.poll_interval = Duration::from_millis(50);
    let server = Server::start(ServerConfig {
        dm: Some(dm),
        tables: tables.map(|t| {
            t.into_iter()
                .map(|(d, t)| (d.to_string(), t.to_string()))
                .collect()
        }),
        ..ServerConfig::default()
    })
    .unwrap();
    Env { server, az }
}

type Reports = Arc<Mutex<Vec<(String, Outcome, bool, String)>>>;

fn client(env: &Env, extra: &[(&str, &str)]) -> (Client, Reports) {
    let mut cfg = Config::default();
    cfg.set("url", &env.server.url()).unwrap();
    cfg.set("http.allow_plain", "true").unwrap();
    cfg.set("ingest.mode", "queued").unwrap();
    cfg.set("ingest.dm_url", &env.server.dm_url().unwrap())
        .unwrap();
    cfg.set("client.app", "queued-e2e").unwrap();
    cfg.set("batch.bytes", "65536").unwrap();
    for (k, v) in extra {
        cfg.set(k, v).unwrap();
    }
    let reports: Reports = Arc::default();
    let r = reports.clone();
    let c = Client::with_options(
        &cfg,
        ClientOptions {
            delivery: Some(Arc::new(move |d: &DeliveryReport<'_>| {
                r.lock().unwrap().push((
                    d.chunk_id.to_owned(),
                    d.outcome,
                    d.is_final,
                    d.message.to_owned(),
                ))
            })),
            log: Some(Arc::new(|_, line: &str| {
                assert!(!line.contains("sig="), "a SAS in a log line: {line}");
            })),
            ..Default::default()
        },
    )
    .unwrap();
    (c, reports)
}

/// Waits until the DM has ingested `records` records into the table, or `limit` passes.
fn wait_for(env: &Env, db: &str, table: &str, records: usize, limit: Duration) -> usize {
    let start = Instant::now();
    loop {
        let n = env.server.records(db, table).len();
        if n >= records || start.elapsed() > limit {
            return n;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn records_appended_in_queued_mode_arrive_through_the_queue_once() {
    if !tools::azurite_or_skip() {
        return;
    }
    let env = env(None);
    let (c, reports) = client(&env, &[]);
    let d = c.add_destination("db", "T", "multijson", None).unwrap();
    let n = 3000;
    for i in 0..n {
        let rec = format!("{{\"seq\":{i},\"payload\":\"{}\"}}", "x".repeat(40));
        loop {
            match c.append(d, rec.as_bytes()) {
                Err(e) if e.kind == kusto_edge_core::ErrorKind::QueueFull => {
                    c.poll().unwrap();
                }
                r => break r.unwrap(),
            }
        }
    }
    c.flush().unwrap();
    assert_eq!(wait_for(&env, "db", "T", n, Duration::from_secs(30)), n);
    let violations = env.server.dm_violations();
    assert!(violations.is_empty(), "DM violations: {violations:#?}");
    let dm = env.server.dm_stats();
    assert_eq!(dm.resources_requests, 1, "resources fetched once: {dm:?}");
    assert_eq!(
        dm.identity_token_requests, 1,
        "identity fetched once: {dm:?}"
    );
    assert_eq!(dm.duplicates_ingested, 0, "{dm:?}");
    let st = env.server.stats();
    assert_eq!(st.ingested_requests, 0, "nothing streamed");
    // Every record once.
    let mut seqs: Vec<u64> = env
        .server
        .records("db", "T")
        .iter()
        .map(|r| {
            let s = String::from_utf8_lossy(r);
            let at = s.find("\"seq\":").unwrap() + 6;
            s[at..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect::<String>()
                .parse()
                .unwrap()
        })
        .collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (0..n as u64).collect::<Vec<_>>());
    // Every chunk reported queued, none final yet (failures-only reports), and the DM saw our ids.
    let r = reports.lock().unwrap();
    assert!(!r.is_empty());
    assert!(r.iter().all(|x| x.1 == Outcome::Queued && !x.2), "{r:?}");
    let ids: std::collections::HashSet<String> = env
        .server
        .dm_ingestions()
        .into_iter()
        .map(|i| i.id)
        .collect();
    for x in r.iter() {
        assert!(ids.contains(&x.0), "chunk {} not seen by the DM", x.0);
    }
}

#[test]
fn with_reports_on_a_missing_table_is_a_final_rejection_and_a_good_one_is_ingested() {
    reports_on_a_missing_table_and_a_good_one("queue");
}

/// The status-table method: the client inserts each chunk's `Pending` row before it posts the message (the DM
/// counts a message naming a row that is not there as a violation) and reads the rows back.
#[test]
fn with_table_reports_a_missing_table_is_a_final_rejection_and_a_good_one_is_ingested() {
    reports_on_a_missing_table_and_a_good_one("table");
}

fn reports_on_a_missing_table_and_a_good_one(method: &str) {
    if !tools::azurite_or_skip() {
        return;
    }
    let env = env(Some(vec![("db", "T")]));
    let (c, reports) = client(
        &env,
        &[("queued.report", "all"), ("queued.report_method", method)],
    );
    let good = c.add_destination("db", "T", "csv", None).unwrap();
    let missing = c.add_destination("db", "Missing", "csv", None).unwrap();
    c.append(good, b"1,a").unwrap();
    c.append(missing, b"2,b").unwrap();
    c.flush().unwrap();
    let start = Instant::now();
    loop {
        let finals = reports.lock().unwrap().iter().filter(|x| x.2).count();
        if finals == 2 || start.elapsed() > Duration::from_secs(40) {
            break;
        }
        let wait = c.poll().unwrap().clamp(10, 500);
        std::thread::sleep(Duration::from_millis(wait as u64));
    }
    let r = reports.lock().unwrap().clone();
    let finals: Vec<_> = r.iter().filter(|x| x.2).collect();
    assert_eq!(finals.len(), 2, "{r:#?}");
    let ingested = finals.iter().filter(|x| x.1 == Outcome::Ingested).count();
    let rejected: Vec<_> = finals.iter().filter(|x| x.1 == Outcome::Rejected).collect();
    assert_eq!(ingested, 1, "{r:#?}");
    assert_eq!(rejected.len(), 1, "{r:#?}");
    assert!(
        rejected[0].3.contains("Missing") && rejected[0].3.contains("BadRequest_Table"),
        "the DM's error code in the report: {}",
        rejected[0].3
    );
    let violations = env.server.dm_violations();
    assert!(violations.is_empty(), "DM violations: {violations:#?}");
    assert_eq!(env.server.records("db", "T").len(), 1);
    let dm = env.server.dm_stats();
    if method == "table" {
        assert_eq!(dm.status_rows_updated, 2, "{dm:?}");
        assert_eq!(
            dm.success_notifications + dm.failure_notifications,
            0,
            "{dm:?}"
        );
    } else {
        assert_eq!(dm.status_rows_updated, 0, "{dm:?}");
        assert_eq!(dm.success_notifications, 1, "{dm:?}");
    }
    let ingestions = env.server.dm_ingestions();
    assert_eq!(
        ingestions
            .iter()
            .filter(|i| i.message.contains("IngestionStatusInTable"))
            .count(),
        if method == "table" { 2 } else { 0 },
        "{ingestions:#?}"
    );
}

#[test]
fn managed_mode_streams_where_it_can_and_queues_a_table_without_streaming_after_one_refusal() {
    if !tools::azurite_or_skip() {
        return;
    }
    let env = env(None);
    let (c, reports) = client(&env, &[("ingest.mode", "managed")]);
    let d = c.add_destination("db", "T", "csv", None).unwrap();
    // Streaming on: everything streamed, the DM never asked.
    for i in 0..3 {
        c.append(d, format!("{i},streamed").as_bytes()).unwrap();
        c.flush().unwrap();
    }
    assert_eq!(env.server.stats().ingested_requests, 3);
    assert_eq!(env.server.dm_stats().resources_requests, 0);
    // Streaming off for the table (every streaming request refused from now on).
    env.server.set_faults(kusto_devserver::Faults {
        seed: 1,
        random: vec![(kusto_devserver::Fault::StreamingDisabled, 1.0)],
    });
    let before = env.server.stats().requests;
    for i in 3..8 {
        c.append(d, format!("{i},queued").as_bytes()).unwrap();
        c.flush().unwrap();
    }
    let streaming_tries = env.server.stats().requests - before;
    assert!(
        streaming_tries <= 2,
        "at most two refused streaming requests, saw {streaming_tries} requests"
    );
    assert_eq!(wait_for(&env, "db", "T", 8, Duration::from_secs(30)), 8);
    let violations = env.server.dm_violations();
    assert!(violations.is_empty(), "DM violations: {violations:#?}");
    let r = reports.lock().unwrap();
    let outcomes: Vec<Outcome> = r.iter().map(|x| x.1).collect();
    assert_eq!(outcomes[..3], [Outcome::Acknowledged; 3]);
    assert_eq!(outcomes[3..], [Outcome::Queued; 5]);
}

#[test]
fn an_expired_sas_keeps_the_chunk_on_flash_without_its_sas_and_fresh_resources_deliver_it() {
    if !tools::azurite_or_skip() {
        return;
    }
    let env = env(None);
    let dir = std::env::temp_dir().join(format!("kedge-queued-e2e-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let dir_s = dir.to_str().unwrap().to_owned();
    env.server.set_dm_faults(kusto_devserver::DmFaults {
        sas_expired: true,
        ..Default::default()
    });
    let (c, reports) = client(&env, &[("spool.dir", &dir_s), ("retry.max_attempts", "1")]);
    let d = c.add_destination("db", "T", "csv", None).unwrap();
    c.append(d, b"1,a").unwrap();
    let e = c.flush().unwrap_err();
    assert_eq!(e.kind, kusto_edge_core::ErrorKind::Spooled, "{}", e.message);
    assert!(e.message.contains("403"), "{}", e.message);
    assert!(!e.message.contains("sig="), "{}", e.message);
    assert_eq!(c.stats().spool_chunks, 1);
    let files = walk(&dir);
    assert!(!files.is_empty());
    for f in files {
        let bytes = std::fs::read(&f).unwrap();
        assert!(!String::from_utf8_lossy(&bytes).contains("sig="), "{f:?}");
    }
    // The DM hands out good SAS again: the replay takes fresh resources and the chunk arrives.
    env.server.set_dm_faults(Default::default());
    let start = Instant::now();
    while env.server.records("db", "T").is_empty() && start.elapsed() < Duration::from_secs(40) {
        let wait = c.poll().map_or(200, |w| w.clamp(10, 500));
        std::thread::sleep(Duration::from_millis(wait as u64));
    }
    assert_eq!(wait_for(&env, "db", "T", 1, Duration::from_secs(20)), 1);
    assert_eq!(c.stats().spool_chunks, 0);
    let r = reports.lock().unwrap();
    assert_eq!(r.last().unwrap().1, Outcome::Queued, "{r:?}");
    drop(r);
    drop(c);
    let _ = std::fs::remove_dir_all(&dir);
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn queued_over_https_to_the_dm_and_azurite_with_one_test_ca() {
    if !tools::azurite_or_skip() {
        return;
    }
    let ca = kusto_devserver::tls::TestCa::generate().unwrap();
    let az = Azurite::start_tls(&ca).expect("azurite over https");
    let mut dm = DmConfig::new(az.endpoints());
    dm.poll_interval = Duration::from_millis(50);
    let server = Server::start(ServerConfig {
        tls: true,
        tls_ca: Some(ca.clone()),
        dm: Some(dm),
        ..ServerConfig::default()
    })
    .unwrap();
    let env = Env { server, az };
    let mut cfg = Config::default();
    cfg.set("url", &env.server.url()).unwrap();
    cfg.set("ingest.mode", "queued").unwrap();
    cfg.set("ingest.dm_url", &env.server.dm_url().unwrap())
        .unwrap();
    cfg.set("tls.bundled_roots", "false").unwrap();
    cfg.add_ca_pem(ca.ca_pem.as_bytes()).unwrap();
    let c = Client::new(&cfg, None, None).unwrap();
    let d = c.add_destination("db", "T", "json", None).unwrap();
    for i in 0..100 {
        c.append(d, format!("{{\"seq\":{i}}}").as_bytes()).unwrap();
    }
    c.flush().unwrap();
    assert_eq!(wait_for(&env, "db", "T", 100, Duration::from_secs(30)), 100);
    let violations = env.server.dm_violations();
    assert!(violations.is_empty(), "DM violations: {violations:#?}");
    assert_eq!(env.server.stats().ingested_requests, 0, "nothing streamed");
}

/// `queued.report=all` with a spool: a queued chunk stays on flash until the DM's word. Ingested: it leaves the
/// spool; refused for good: it goes to `rejected/`; an exhausted (transient) failure: it is sent again under the
/// same id and then ingested, once.
fn held_until_the_dms_word(method: &str) {
    if !tools::azurite_or_skip() {
        return;
    }
    let env = env(Some(vec![("db", "T")]));
    let dir =
        std::env::temp_dir().join(format!("kedge-queued-held-{method}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let dir_s = dir.to_str().unwrap().to_owned();
    env.server.set_dm_faults(kusto_devserver::DmFaults {
        exhaust_ingestions: 1,
        ..Default::default()
    });
    let (c, reports) = client(
        &env,
        &[
            ("spool.dir", &dir_s),
            ("queued.report", "all"),
            ("queued.report_method", method),
        ],
    );
    let good = c.add_destination("db", "T", "csv", None).unwrap();
    let missing = c.add_destination("db", "Missing", "csv", None).unwrap();
    for i in 0..3 {
        c.append(good, format!("{i},held").as_bytes()).unwrap();
        c.flush().unwrap();
    }
    c.append(missing, b"9,nowhere").unwrap();
    c.flush().unwrap();
    // Posted, and every one of them still on flash.
    assert_eq!(c.stats().chunks_queued, 4);
    assert_eq!(
        c.stats().spool_chunks,
        4,
        "held in the spool until the DM's word"
    );
    let start = Instant::now();
    loop {
        let finals = reports.lock().unwrap().iter().filter(|x| x.2).count();
        if finals == 4 || start.elapsed() > Duration::from_secs(60) {
            break;
        }
        let wait = c.poll().unwrap().clamp(10, 200);
        std::thread::sleep(Duration::from_millis(wait as u64));
    }
    let r = reports.lock().unwrap().clone();
    let finals: Vec<_> = r.iter().filter(|x| x.2).collect();
    assert_eq!(finals.len(), 4, "{r:#?}");
    assert_eq!(
        finals.iter().filter(|x| x.1 == Outcome::Ingested).count(),
        3,
        "{r:#?}"
    );
    let rejected: Vec<_> = finals.iter().filter(|x| x.1 == Outcome::Rejected).collect();
    assert_eq!(rejected.len(), 1, "{r:#?}");
    assert!(rejected[0].3.contains("rejected/"), "{}", rejected[0].3);
    // The exhausted one: a word that it goes again, then its ingestion, under one id.
    let again: Vec<_> = r
        .iter()
        .filter(|x| x.1 == Outcome::Spooled && !x.2 && x.3.contains("sent again"))
        .collect();
    assert_eq!(again.len(), 1, "{r:#?}");
    assert!(
        finals
            .iter()
            .any(|x| x.0 == again[0].0 && x.1 == Outcome::Ingested),
        "{r:#?}"
    );
    let ids: Vec<String> = env
        .server
        .dm_ingestions()
        .into_iter()
        .map(|i| i.id)
        .collect();
    assert_eq!(
        ids.iter().filter(|i| **i == again[0].0).count(),
        2,
        "{ids:?}"
    );
    // Each record once; the spool empty but for the refused chunk, which waits in rejected/.
    let mut got: Vec<String> = env
        .server
        .records("db", "T")
        .iter()
        .map(|r| String::from_utf8_lossy(r).into_owned())
        .collect();
    got.sort();
    assert_eq!(got, ["0,held", "1,held", "2,held"]);
    let st = c.stats();
    assert_eq!(st.spool_chunks, 0, "{st:?}");
    assert_eq!(st.quarantine_chunks, 1, "{st:?}");
    assert_eq!(st.chunks_ingested, 3, "{st:?}");
    let violations = env.server.dm_violations();
    assert!(violations.is_empty(), "DM violations: {violations:#?}");
    drop(c);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn with_every_report_a_queued_chunk_stays_on_flash_until_the_dm_confirms_and_is_resent_after_an_exhausted_failure(
) {
    held_until_the_dms_word("queue");
}

#[test]
fn with_every_report_in_the_status_table_a_queued_chunk_stays_on_flash_until_confirmed() {
    held_until_the_dms_word("table");
}

/// After an outage, the spooled chunks of a destination go up together: `queued.merge_chunks` of them as the
/// blocks (each a complete gzip member) of one blob with one message, and each chunk still gets its own reports.
#[test]
fn spooled_chunks_are_replayed_as_the_blocks_of_merged_blobs_and_each_is_reported() {
    if !tools::azurite_or_skip() {
        return;
    }
    let env = env(Some(vec![("db", "T")]));
    let dir = std::env::temp_dir().join(format!("kedge-queued-merge-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let dir_s = dir.to_str().unwrap().to_owned();
    env.server.set_dm_faults(kusto_devserver::DmFaults {
        sas_expired: true,
        ..Default::default()
    });
    let (c, reports) = client(
        &env,
        &[
            ("spool.dir", &dir_s),
            ("retry.max_attempts", "1"),
            ("queued.report", "all"),
            ("queued.merge_chunks", "4"),
        ],
    );
    let d = c.add_destination("db", "T", "csv", None).unwrap();
    const N: usize = 10;
    for i in 0..N {
        c.append(d, format!("{i},merged").as_bytes()).unwrap();
        // Each flush makes a chunk; storage refuses it (403), so it goes to the spool.
        let _ = c.flush();
    }
    assert_eq!(c.stats().spool_chunks, N as u64);
    let spooled: Vec<String> = reports
        .lock()
        .unwrap()
        .iter()
        .filter(|x| x.1 == Outcome::Spooled)
        .map(|x| x.0.clone())
        .collect();
    assert_eq!(spooled.len(), N);
    env.server.set_dm_faults(Default::default());
    let start = Instant::now();
    loop {
        let finals = reports.lock().unwrap().iter().filter(|x| x.2).count();
        if finals >= N || start.elapsed() > Duration::from_secs(60) {
            break;
        }
        let wait = c.poll().map_or(200, |w| w.clamp(10, 200));
        std::thread::sleep(Duration::from_millis(wait as u64));
    }
    let r = reports.lock().unwrap().clone();
    // Every chunk: queued, then ingested, under its own id.
    for id in &spooled {
        assert!(
            r.iter().any(|x| x.0 == *id && x.1 == Outcome::Queued),
            "{id}: {r:#?}"
        );
        assert!(
            r.iter()
                .any(|x| x.0 == *id && x.1 == Outcome::Ingested && x.2),
            "{id}: {r:#?}"
        );
    }
    // 10 chunks, 4 to a blob: three blobs, three messages, none of them named after a chunk.
    let ingestions = env.server.dm_ingestions();
    assert_eq!(ingestions.len(), 3, "{ingestions:#?}");
    assert!(ingestions.iter().all(|i| !spooled.contains(&i.id)));
    let mut sizes: Vec<usize> = ingestions.iter().map(|i| i.records).collect();
    sizes.sort_unstable();
    assert_eq!(sizes, [2, 4, 4]);
    let mut got: Vec<String> = env
        .server
        .records("db", "T")
        .iter()
        .map(|r| String::from_utf8_lossy(r).into_owned())
        .collect();
    got.sort();
    let mut want: Vec<String> = (0..N).map(|i| format!("{i},merged")).collect();
    want.sort();
    assert_eq!(got, want);
    assert_eq!(c.stats().spool_chunks, 0);
    let violations = env.server.dm_violations();
    assert!(violations.is_empty(), "DM violations: {violations:#?}");
    drop(c);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The failure queue is shared by every producer of the cluster: with 40 others' notifications in front of ours
/// (more than one page), ours is still found, and every one of the others' is left where it was.
#[test]
fn our_failure_notification_is_found_behind_a_crowd_of_others_and_theirs_are_left_alone() {
    if !tools::azurite_or_skip() {
        return;
    }
    use kusto_devserver::storage;
    let env = env(Some(vec![("db", "T")]));
    let names = env.server.dm_resource_names().unwrap();
    let account = storage::Account::new(env.az.endpoints());
    let failed = account.url_with_account_sas(&env.az.endpoints().queue, &names.failed);
    for i in 0..40 {
        let json = format!(
            r#"{{"OperationId":"op{i}","Database":"db","Table":"Other","FailedOn":"2026-12-01T19:40:00Z","IngestionSourceId":"00000000-0000-4000-8000-{i:012}","IngestionSourcePath":"https://elsewhere/b{i}","Details":"not ours","ErrorCode":"BadRequest_EmptyBlob","FailureStatus":"Permanent","RootActivityId":"r","OriginatesFromUpdatePolicy":false,"ShouldRetry":false}}"#
        );
        storage::put_message(
            &failed,
            &kusto_devserver::b64::encode(json.as_bytes()),
            None,
        )
        .unwrap();
    }
    let (c, reports) = client(&env, &[]);
    let d = c.add_destination("db", "Missing", "csv", None).unwrap();
    c.append(d, b"1,lost?").unwrap();
    c.flush().unwrap();
    let start = Instant::now();
    while !reports.lock().unwrap().iter().any(|x| x.2) && start.elapsed() < Duration::from_secs(60)
    {
        let wait = c.poll().map_or(200, |w| w.clamp(10, 200));
        std::thread::sleep(Duration::from_millis(wait as u64));
    }
    let r = reports.lock().unwrap().clone();
    let finals: Vec<_> = r.iter().filter(|x| x.2).collect();
    assert_eq!(finals.len(), 1, "{r:#?}");
    assert_eq!(finals[0].1, Outcome::Rejected);
    assert!(finals[0].3.contains("BadRequest_Table"), "{}", finals[0].3);
    // Once the pages we looked through are visible again, all 40 of theirs are still there, and ours is gone.
    std::thread::sleep(Duration::from_secs(6));
    let mut left = Vec::new();
    for _ in 0..3 {
        left.extend(
            storage::get_messages(&failed, 32, Some(Duration::from_secs(60)), None).unwrap(),
        );
    }
    assert_eq!(left.len(), 40, "others' notifications must stay");
    let texts: Vec<String> = left
        .iter()
        .map(|m| String::from_utf8(kusto_devserver::b64::decode(&m.text).unwrap()).unwrap())
        .collect();
    assert!(texts.iter().all(|t| t.contains("not ours")), "{texts:?}");
}
