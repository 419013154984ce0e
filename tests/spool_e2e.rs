//! The client with a flash spool, against the test endpoint over loopback: outages, restarts, refusals, full and
//! failing disks, encryption at rest.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kusto_devserver::{Fault, Server, ServerConfig};
use kusto_edge_core::spool::{Area, MemStorage};
use kusto_edge_core::{Client, Config, ErrorKind, Outcome};

mod common;

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("kedge-spool-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn config(server: &Server, spool: &Path, extra: &[(&str, &str)]) -> Config {
    let mut c = Config::default();
    c.set("url", &server.url()).unwrap();
    if let Some(pem) = server.ca_pem() {
        c.add_ca_pem(pem.as_bytes()).unwrap();
    } else {
        c.set("http.allow_plain", "true").unwrap();
    }
    c.set("spool.dir", spool.to_str().unwrap()).unwrap();
    c.set("retry.base_ms", "10").unwrap();
    c.set("retry.max_delay_ms", "50").unwrap();
    c.set("retry.max_attempts", "2").unwrap();
    c.set("batch.max_age_ms", "0").unwrap();
    for (k, v) in extra {
        c.set(k, v).unwrap();
    }
    c
}

fn record(seq: u64) -> String {
    format!(
        r#"{{"seq":{seq},"device":"gw-3","temp":{}.{},"status":"ok"}}"#,
        15 + seq % 9,
        seq % 10
    )
}

fn seqs(server: &Server, db: &str, table: &str) -> Vec<u64> {
    let mut v = common::seqs(server, db, table);
    v.sort_unstable();
    v
}

fn chunk_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|it| {
            it.filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "chunk"))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Drains the spool by polling until it is empty (bounded). With a manual clock, the backoff between polls
/// passes on it instead of being slept.
fn drain(client: &Client, clock: Option<&kusto_edge_core::clock::ManualClock>) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let _ = client.flush();
        let s = client.stats();
        if s.spool_chunks == 0 && s.records_buffered == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "spool did not drain: {s:?}");
        let (next, _) = client.poll_next();
        match clock {
            Some(c) => c.advance(Duration::from_millis(next as u64)),
            None => std::thread::sleep(Duration::from_millis(next.min(200) as u64)),
        }
    }
}

#[test]
fn outage_is_spooled_to_flash_and_replayed_when_the_service_is_back() {
    let server = Server::start(ServerConfig {
        tls: true,
        ..Default::default()
    })
    .unwrap();
    let dir = temp_dir("outage");
    let cfg = config(&server, &dir, &[("batch.bytes", "65536")]);
    let (client, clock) = common::clocked(&cfg, None);
    let d = client.add_destination("db", "t", "json", None).unwrap();

    server.set_down(Duration::from_secs(3600));
    let mut raw = 0u64;
    for seq in 0..20_000 {
        let r = record(seq);
        raw += r.len() as u64 + 1;
        common::append(&client, d, r.as_bytes())
            .expect("appends succeed during an outage: batches go to flash");
    }
    assert_eq!(client.flush_to_spool(), Ok(()));
    let s = client.stats();
    assert_eq!(s.records_spooled, 20_000);
    assert!(s.records_acknowledged == 0);
    // Flash gets the compressed size, not the raw size.
    assert!(
        s.bytes_spooled * 4 < raw,
        "spooled {} bytes for {raw} raw",
        s.bytes_spooled
    );
    let on_flash: u64 = chunk_files(&dir)
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();
    assert_eq!(on_flash, s.spool_bytes);
    // Only a handful of requests: once the target backs off, batches go straight to the spool.
    assert!(s.requests < 20, "{} requests during the outage", s.requests);
    for f in chunk_files(&dir) {
        assert_eq!(
            std::fs::metadata(&f).unwrap().permissions().mode() & 0o777,
            0o600,
            "{f:?}"
        );
    }
    assert_eq!(
        std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
        0o700
    );

    server.set_down(Duration::ZERO);
    drain(&client, Some(&clock));
    assert_eq!(seqs(&server, "db", "t"), (0..20_000).collect::<Vec<_>>());
    assert!(
        chunk_files(&dir).is_empty(),
        "acknowledged chunks are deleted"
    );
    let s = client.stats();
    assert_eq!(s.records_replayed, 20_000);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn buffered_batches_survive_a_restart_and_are_sent_by_the_next_client() {
    let server = Server::start(ServerConfig::default()).unwrap();
    let dir = temp_dir("restart");
    let cfg = config(&server, &dir, &[]);
    {
        let (client, _clock) = common::clocked(&cfg, None);
        let d = client.add_destination("db", "t", "json", None).unwrap();
        for seq in 0..100 {
            common::append(&client, d, record(seq).as_bytes()).unwrap();
        }
        // Dropped without a flush: the client spools what it holds.
    }
    assert_eq!(chunk_files(&dir).len(), 1);
    assert!(server.requests().is_empty());

    let reports = Arc::new(Mutex::new(Vec::new()));
    let r2 = reports.clone();
    let client = Client::new(
        &cfg,
        None,
        Some(Arc::new(move |r: &kusto_edge_core::DeliveryReport<'_>| {
            r2.lock()
                .unwrap()
                .push((r.outcome, r.destination, r.records, r.chunk_id.to_owned()))
        })),
    )
    .unwrap();
    assert_eq!(client.stats().spool_chunks, 1);
    client.poll().unwrap();
    assert_eq!(seqs(&server, "db", "t"), (0..100).collect::<Vec<_>>());
    let reports = reports.lock().unwrap();
    assert_eq!(reports.len(), 1);
    assert_eq!(
        (reports[0].0, reports[0].1, reports[0].2),
        (Outcome::Acknowledged, u32::MAX, 100)
    );
    // The chunk id survives the restart and is the request id's stable part.
    assert!(server.requests()[0]
        .client_request_id
        .contains(&reports[0].3));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn data_refused_on_replay_is_quarantined_with_the_service_message_and_never_resent() {
    let server = Server::start(ServerConfig::default()).unwrap();
    let dir = temp_dir("rejected");
    let cfg = config(&server, &dir, &[]);
    let (client, _clock) = common::clocked(&cfg, None);
    let d = client.add_destination("db", "t", "json", None).unwrap();
    common::append(&client, d, record(1).as_bytes()).unwrap();
    client.flush_to_spool().unwrap();
    server.push_fault(Fault::RejectData);
    let e = client.poll().unwrap_err();
    assert_eq!(e.kind, ErrorKind::DataRejected);
    let rejected: Vec<_> = std::fs::read_dir(dir.join("rejected"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(
        rejected
            .iter()
            .filter(|p| p.extension().is_some_and(|x| x == "chunk"))
            .count(),
        1
    );
    let msg = rejected
        .iter()
        .find(|p| p.extension().is_some_and(|x| x == "msg"))
        .expect("message beside it");
    assert!(std::fs::read_to_string(msg)
        .unwrap()
        .contains("Stream_WrongNumberOfFields"));
    client.poll().unwrap();
    client.flush().unwrap();
    assert_eq!(server.requests().len(), 1, "never resent");
    let s = client.stats();
    assert_eq!((s.records_rejected, s.spool_chunks), (1, 0));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_missing_table_keeps_chunks_in_the_spool_until_an_operator_creates_it() {
    let server = Server::start(ServerConfig::default()).unwrap();
    let dir = temp_dir("notready");
    let cfg = config(&server, &dir, &[("backoff.max_ms", "1500")]);
    let (client, clock) = common::clocked(&cfg, None);
    let d = client.add_destination("db", "t", "json", None).unwrap();
    server.push_fault(Fault::TableMissing);
    common::append(&client, d, record(1).as_bytes()).unwrap();
    let e = client.flush().unwrap_err();
    assert_eq!(e.kind, ErrorKind::Spooled, "{}", e.message);
    assert!(e.message.contains("create the table"), "{}", e.message);
    assert_eq!(client.stats().spool_chunks, 1);
    // Backing off: neither poll nor flush contacts the service now; poll says when to come back.
    let requests = server.requests().len();
    let next = client.poll().unwrap();
    assert_eq!(
        client.flush().unwrap_err().kind,
        ErrorKind::Spooled,
        "flush does not contact a target that backs off, and says the chunk waits in the spool"
    );
    assert_eq!(server.requests().len(), requests);
    assert!(
        next >= 700,
        "a target that is not ready backs off long (capped here at 1.5 s): {next} ms"
    );
    // The operator created the table: the next replay after the backoff delivers.
    drain(&client, Some(&clock));
    assert_eq!(seqs(&server, "db", "t"), vec![1]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_full_spool_refuses_new_data_under_reject_new_and_the_caller_keeps_the_record() {
    let server = Server::start(ServerConfig::default()).unwrap();
    server.set_down(Duration::from_secs(3600));
    let dir = temp_dir("full");
    let cfg = config(
        &server,
        &dir,
        &[
            ("spool.max_chunks", "2"),
            ("spool.policy", "reject-new"),
            ("batch.bytes", "1024"),
        ],
    );
    let (client, clock) = common::clocked(&cfg, None);
    let d = client.add_destination("db", "t", "json", None).unwrap();
    let mut taken = 0;
    let err = loop {
        match common::append(&client, d, record(taken).as_bytes()) {
            Ok(()) => taken += 1,
            Err(e) => break e,
        }
        assert!(taken < 1000);
    };
    assert_eq!(err.kind, ErrorKind::SpoolFull, "{}", err.message);
    let s = client.stats();
    assert_eq!(s.spool_chunks, 2);
    assert_eq!(
        s.records_spooled + s.records_buffered,
        taken,
        "every taken record is on flash or in RAM"
    );
    server.set_down(Duration::ZERO);
    drain(&client, Some(&clock));
    assert_eq!(seqs(&server, "db", "t"), (0..taken).collect::<Vec<_>>());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_full_spool_drops_the_oldest_under_drop_oldest_and_counts_what_it_dropped() {
    let server = Server::start(ServerConfig::default()).unwrap();
    server.set_down(Duration::from_secs(3600));
    let dir = temp_dir("drop");
    let cfg = config(
        &server,
        &dir,
        &[("spool.max_chunks", "3"), ("batch.bytes", "1024")],
    );
    let (client, clock) = common::clocked(&cfg, None);
    let d = client.add_destination("db", "t", "json", None).unwrap();
    for seq in 0..200 {
        common::append(&client, d, record(seq).as_bytes()).unwrap();
    }
    client.flush_to_spool().unwrap();
    let s = client.stats();
    assert_eq!(s.spool_chunks, 3);
    assert!(s.chunks_dropped > 0);
    assert_eq!(
        (s.records_spooled, s.records_buffered),
        (200, 0),
        "every record went to flash"
    );
    server.set_down(Duration::ZERO);
    drain(&client, Some(&clock));
    let got = seqs(&server, "db", "t");
    assert_eq!(
        got.len() as u64 + client.stats().records_dropped,
        200,
        "arrived + dropped = appended"
    );
    assert_eq!(*got.last().unwrap(), 199, "the newest data is kept");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_disk_without_space_is_a_clear_error_and_loses_nothing() {
    let server = Server::start(ServerConfig::default()).unwrap();
    server.set_down(Duration::from_secs(3600));
    let mem = MemStorage::new();
    let mut cfg = config(&server, Path::new("/unused"), &[("batch.bytes", "1024")]);
    cfg.spool_dir = Some("/unused".into());
    let (client, clock) = common::clocked(&cfg, Some(Box::new(mem.clone())));
    let d = client.add_destination("db", "t", "json", None).unwrap();
    mem.set_space_limit(Some(3000));
    let mut taken = 0;
    let err = loop {
        match common::append(&client, d, record(taken).as_bytes()) {
            Ok(()) => taken += 1,
            Err(e) => break e,
        }
        assert!(taken < 10_000);
    };
    assert_eq!(err.kind, ErrorKind::SpoolIo, "{}", err.message);
    assert!(err.message.contains("no space"), "{}", err.message);
    let s = client.stats();
    assert_eq!(s.records_spooled + s.records_buffered, taken);
    // Space comes back (logs rotated), the service too: everything taken arrives.
    mem.set_space_limit(None);
    server.set_down(Duration::ZERO);
    drain(&client, Some(&clock));
    assert_eq!(seqs(&server, "db", "t"), (0..taken).collect::<Vec<_>>());
    assert!(mem
        .names(Area::Pending)
        .iter()
        .all(|n| !n.ends_with(".chunk")));
}

fn write_private(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

#[test]
fn encrypted_chunks_hide_the_data_and_a_wrong_or_missing_key_keeps_them_for_the_right_one() {
    let server = Server::start(ServerConfig::default()).unwrap();
    server.set_down(Duration::from_secs(3600));
    let dir = temp_dir("sealed");
    std::fs::create_dir_all(&dir).unwrap();
    let key = dir
        .join("..")
        .join(format!("kedge-key-{}", std::process::id()));
    let right = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\n";
    write_private(&key, right);
    let cfg = config(&server, &dir, &[("spool.key_file", key.to_str().unwrap())]);
    {
        let (client, _clock) = common::clocked(&cfg, None);
        let d = client
            .add_destination("db", "t", "multijson", None)
            .unwrap();
        client
            .append(d, br#"{"secret":"plaintext-marker"}"#)
            .unwrap();
        client.flush_to_spool().unwrap();
    }
    for f in chunk_files(&dir) {
        let bytes = std::fs::read(&f).unwrap();
        assert!(!contains_plaintext(&bytes), "plaintext on flash");
    }
    // Another key, then no key at all: the chunk is neither sent nor quarantined, and it is counted.
    write_private(
        &key,
        "ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
    );
    let wrong = config(&server, &dir, &[("spool.key_file", key.to_str().unwrap())]);
    let none = config(&server, &dir, &[]);
    for cfg in [&wrong, &none] {
        let client = Client::new(cfg, None, None).unwrap();
        let s = client.stats();
        assert_eq!(s.chunks_locked, 1, "found and counted");
        assert_eq!(s.chunks_corrupt, 0, "not quarantined");
        assert_eq!(s.spool_chunks, 0, "never sent");
        drop(client);
        assert_eq!(
            chunk_files(&dir).len(),
            1,
            "still where the right key finds it"
        );
    }
    // The right key later brings it back, and it is delivered.
    write_private(&key, right);
    server.set_down(Duration::ZERO);
    let (client, _clock) = common::clocked(&cfg, None);
    assert_eq!(client.stats().spool_chunks, 1);
    assert_eq!(client.stats().chunks_locked, 0);
    client.flush().unwrap();
    assert_eq!(client.stats().records_replayed, 1);
    drop(client);
    let _ = std::fs::remove_file(&key);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_spool_key_file_that_others_can_read_is_refused() {
    let key = std::env::temp_dir().join(format!("kedge-open-key-{}", std::process::id()));
    std::fs::write(
        &key,
        "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff",
    )
    .unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut c = Config::default();
    let e = c.set("spool.key_file", key.to_str().unwrap()).unwrap_err();
    assert_eq!(e.kind, ErrorKind::ConfigInvalidValue);
    assert!(e.message.contains("chmod 600"), "{}", e.message);
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert!(c.set("spool.key_file", key.to_str().unwrap()).is_ok());
    let _ = std::fs::remove_file(&key);
}

/// json.check=false relies on the streaming sender splitting a refused chunk from RAM; a spooled chunk refused on
/// replay (or a queued blob the DM fails) is not split, so the client refuses that combination at creation, and
/// takes it without a spool. The spool directory is not even created.
#[test]
fn json_check_off_is_refused_with_a_spool_or_queued_mode_and_taken_for_streaming_from_ram() {
    let server = Server::start(ServerConfig::default()).unwrap();
    let dir = temp_dir("json-check-off");
    let e = Client::new(
        &config(&server, &dir, &[("json.check", "false")]),
        None,
        None,
    )
    .err()
    .expect("refused with a spool");
    assert_eq!(e.kind, ErrorKind::ConfigInvalidValue);
    assert!(e.message.contains("json.check=false"), "{}", e.message);
    assert!(!dir.exists(), "refused before the spool was opened");
    let mut c = Config::default();
    c.set("url", &server.url()).unwrap();
    c.set("http.allow_plain", "true").unwrap();
    c.set("json.check", "false").unwrap();
    c.set("ingest.mode", "queued").unwrap();
    c.set("ingest.dm_url", &server.url()).unwrap();
    let e = Client::new(&c, None, None)
        .err()
        .expect("refused in queued mode");
    assert_eq!(e.kind, ErrorKind::ConfigInvalidValue, "{}", e.message);
    c.set("ingest.mode", "streaming").unwrap();
    let client = Client::new(&c, None, None).unwrap();
    let d = client.add_destination("db", "t", "json", None).unwrap();
    client.append(d, br#"{"seq":1,"cut":"#).unwrap();
    let e = client.append(d, b"   ").unwrap_err();
    assert_eq!(
        e.kind,
        ErrorKind::InvalidRecord,
        "a blank record is still refused"
    );
}

/// The payload is gzip, so look for the marker in the inflated bytes of every possible gzip member.
fn contains_plaintext(bytes: &[u8]) -> bool {
    (0..bytes.len().saturating_sub(2)).any(|i| {
        bytes[i] == 0x1f
            && bytes[i + 1] == 0x8b
            && kusto_edge_core::gzip::decompress(&bytes[i..bytes.len() - 4], 1 << 20)
                .map(|raw| raw.windows(16).any(|w| w == b"plaintext-marker"))
                .unwrap_or(false)
    }) || bytes.windows(16).any(|w| w == b"plaintext-marker")
}

#[test]
fn write_ahead_mode_puts_every_chunk_on_flash_before_sending_and_removes_it_after() {
    let server = Server::start(ServerConfig::default()).unwrap();
    let dir = temp_dir("wal");
    let cfg = config(&server, &dir, &[("spool.write_ahead", "true")]);
    let (client, clock) = common::clocked(&cfg, None);
    let d = client.add_destination("db", "t", "json", None).unwrap();
    common::append(&client, d, record(7).as_bytes()).unwrap();
    server.push_fault(Fault::Unavailable { retry_after: None });
    server.push_fault(Fault::Unavailable { retry_after: None });
    let e = client.flush().unwrap_err();
    assert_eq!(e.kind, ErrorKind::Spooled);
    assert_eq!(chunk_files(&dir).len(), 1);
    drain(&client, Some(&clock));
    assert_eq!(seqs(&server, "db", "t"), vec![7]);
    let s = client.stats();
    assert_eq!(
        s.chunks_spooled, 1,
        "written once, not again after the failure"
    );
    assert!(chunk_files(&dir).is_empty());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn torn_and_corrupted_spool_files_are_quarantined_never_sent_and_the_rest_is_delivered() {
    let server = Server::start(ServerConfig::default()).unwrap();
    server.set_down(Duration::from_secs(3600));
    let dir = temp_dir("torn");
    let cfg = config(&server, &dir, &[("batch.bytes", "1024")]);
    {
        let (client, _clock) = common::clocked(&cfg, None);
        let d = client.add_destination("db", "t", "json", None).unwrap();
        for seq in 0..200 {
            common::append(&client, d, record(seq).as_bytes()).unwrap();
        }
        client.flush_to_spool().unwrap();
    }
    let files = chunk_files(&dir);
    assert!(files.len() >= 6, "{} chunks", files.len());
    // A torn write (truncated), a flipped byte in the payload, a flipped byte in the header, and junk.
    let torn = std::fs::read(&files[0]).unwrap();
    std::fs::write(&files[0], &torn[..torn.len() / 2]).unwrap();
    for (f, at) in [(&files[1], 0.8), (&files[2], 0.1)] {
        let mut b = std::fs::read(f).unwrap();
        let i = (b.len() as f64 * at) as usize;
        b[i] ^= 0x40;
        std::fs::write(f, b).unwrap();
    }
    std::fs::write(dir.join("00000000000000ff.chunk"), b"not a chunk at all").unwrap();
    std::fs::write(dir.join("0000000000000100.tmp"), b"interrupted write").unwrap();
    let intact: Vec<PathBuf> = files[3..].to_vec();

    server.set_down(Duration::ZERO);
    let (client, clock) = common::clocked(&cfg, None);
    assert_eq!(
        client.stats().chunks_corrupt,
        4,
        "three damaged chunks and the junk file"
    );
    assert_eq!(client.stats().spool_chunks as usize, intact.len());
    assert!(
        !dir.join("0000000000000100.tmp").exists(),
        "leftovers of interrupted writes are removed"
    );
    assert_eq!(std::fs::read_dir(dir.join("corrupt")).unwrap().count(), 4);
    drain(&client, Some(&clock));
    let got = seqs(&server, "db", "t");
    assert!(!got.is_empty());
    let mut expected_records = 0;
    for r in server.requests().iter().filter(|r| r.status != 0) {
        assert!(
            r.gzip_ok && r.status == 200,
            "a corrupt chunk was sent: {r:?}"
        );
        expected_records += r.records;
    }
    assert_eq!(got.len(), expected_records);
    assert!(
        got.windows(2).all(|w| w[0] < w[1]),
        "no duplicates, no garbage: {got:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_delivered_chunk_that_cannot_be_removed_is_not_sent_again_and_the_failure_is_reported() {
    let server = Server::start(ServerConfig::default()).unwrap();
    server.set_down(Duration::from_secs(3600));
    let mem = MemStorage::new();
    let mut cfg = config(&server, Path::new("/unused"), &[]);
    cfg.spool_dir = Some("/unused".into());
    {
        let (client, _clock) = common::clocked(&cfg, Some(Box::new(mem.clone())));
        let d = client.add_destination("db", "t", "json", None).unwrap();
        for i in 0..3 {
            common::append(&client, d, record(i).as_bytes()).unwrap();
        }
        client.flush_to_spool().unwrap();
    }
    // The kernel remounted the flash read-only; the service is back.
    mem.set_read_only(true);
    server.set_down(Duration::ZERO);
    server.reset();
    let (client, _clock) = common::clocked(&cfg, Some(Box::new(mem.clone())));
    assert_eq!(client.stats().spool_chunks, 1);
    let mut spool_io = 0;
    for _ in 0..200 {
        match client.flush() {
            Err(e) if e.kind == ErrorKind::SpoolIo => spool_io += 1,
            _ => {}
        }
        let _ = client.poll();
    }
    let ingested = server.requests().iter().filter(|r| r.ingested).count();
    assert_eq!(ingested, 1, "sent once, not stormed");
    assert_eq!(seqs(&server, "db", "t"), vec![0, 1, 2]);
    assert_eq!(
        spool_io, 1,
        "the failed removal is reported once, by the call it happened in"
    );
    let s = client.stats();
    assert!(s.spool_io_errors >= 1, "{s:?}");
    assert_eq!(s.spool_chunks, 0, "counts as delivered in memory");
    drop(client);
    // After a restart on healthy flash the chunk is still there: one duplicate at most, then it is gone.
    mem.set_read_only(false);
    let (client, clock) = common::clocked(&cfg, Some(Box::new(mem.clone())));
    drain(&client, Some(&clock));
    drop(client);
    let sent = server.requests().iter().filter(|r| r.ingested).count();
    assert_eq!(sent, 2, "at most one duplicate, after the restart");
    assert!(mem
        .names(Area::Pending)
        .iter()
        .all(|n| !n.ends_with(".chunk")));
}

#[test]
fn a_second_client_on_the_same_spool_directory_is_refused_and_names_the_holder() {
    let server = Server::start(ServerConfig::default()).unwrap();
    let dir = temp_dir("owned");
    let cfg = config(&server, &dir, &[]);
    let first = Client::new(&cfg, None, None).unwrap();
    let e = match Client::new(&cfg, None, None) {
        Ok(_) => panic!("two clients own one spool"),
        Err(e) => e,
    };
    assert_eq!(e.kind, ErrorKind::SpoolIo);
    assert!(
        e.message.contains(&std::process::id().to_string()),
        "names the holder: {}",
        e.message
    );
    drop(first);
    let again = Client::new(&cfg, None, None).expect("the lock goes with the client");
    drop(again);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_lowered_limit_at_open_keeps_every_chunk_and_refuses_new_ones_until_it_drains() {
    let server = Server::start(ServerConfig::default()).unwrap();
    server.set_down(Duration::from_secs(3600));
    let dir = temp_dir("shrunk");
    let cfg = config(&server, &dir, &[]);
    {
        let (client, _clock) = common::clocked(&cfg, None);
        let d = client.add_destination("db", "t", "json", None).unwrap();
        for i in 0..6 {
            common::append(&client, d, record(i).as_bytes()).unwrap();
            client.flush_to_spool().unwrap();
        }
        assert_eq!(client.stats().spool_chunks, 6);
    }
    let logs = Arc::new(Mutex::new(Vec::<String>::new()));
    let sink = logs.clone();
    let small = config(&server, &dir, &[("spool.max_chunks", "2")]);
    let client = Client::new(
        &small,
        Some(Arc::new(move |_, m: &str| {
            sink.lock().unwrap().push(m.to_owned())
        })),
        None,
    )
    .unwrap();
    assert_eq!(client.stats().spool_chunks, 6, "nothing dropped at open");
    assert_eq!(client.stats().chunks_dropped, 0);
    assert!(
        logs.lock()
            .unwrap()
            .iter()
            .any(|m| m.contains("more than spool.max_chunks=2")),
        "{:?}",
        logs.lock().unwrap()
    );
    let d = client.add_destination("db", "t", "json", None).unwrap();
    common::append(&client, d, record(6).as_bytes()).unwrap();
    let e = client.flush_to_spool().unwrap_err();
    assert_eq!(e.kind, ErrorKind::SpoolFull, "{}", e.message);
    server.set_down(Duration::ZERO);
    drain(&client, None);
    assert_eq!(seqs(&server, "db", "t"), (0..7).collect::<Vec<_>>());
    drop(client);
    // Trimming is there for whoever asks for it.
    server.set_down(Duration::from_secs(3600));
    {
        let (client, _clock) = common::clocked(&cfg, None);
        let d = client.add_destination("db", "t", "json", None).unwrap();
        for i in 0..4 {
            common::append(&client, d, record(100 + i).as_bytes()).unwrap();
            client.flush_to_spool().unwrap();
        }
    }
    let trim = config(
        &server,
        &dir,
        &[("spool.max_chunks", "2"), ("spool.trim_on_open", "true")],
    );
    let client = Client::new(&trim, None, None).unwrap();
    assert_eq!(client.stats().spool_chunks, 2);
    assert_eq!(client.stats().chunks_dropped, 2);
    drop(client);
    let _ = std::fs::remove_dir_all(&dir);
}
