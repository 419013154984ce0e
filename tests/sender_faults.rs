//! The sender under faults found by review: a panic mid-send, a spool write or read that fails half way through a
//! call, a refused chunk that already had reports or was written ahead, a chunk found corrupt on replay. Each
//! test pins the behaviour that keeps the contract (nothing lost, one final report per chunk, no hot loop).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kusto_devserver::{Fault, Server, ServerConfig};
use kusto_edge_core::clock::ManualClock;
use kusto_edge_core::spool::MemStorage;
use kusto_edge_core::{Client, ClientOptions, Config, DeliveryReport, ErrorKind, Outcome};

mod common;

fn plain_config(url: &str, extra: &[(&str, &str)]) -> Config {
    let mut c = Config::default();
    c.set("url", url).unwrap();
    c.set("http.allow_plain", "true").unwrap();
    c.set("retry.base_ms", "10").unwrap();
    c.set("retry.max_delay_ms", "100").unwrap();
    for (k, v) in extra {
        c.set(k, v).unwrap();
    }
    c
}

#[derive(Debug, Clone)]
struct Rep {
    id: String,
    outcome: Outcome,
    is_final: bool,
    records: u64,
}

type Reps = Arc<Mutex<Vec<Rep>>>;

fn client(
    cfg: &Config,
    storage: Option<MemStorage>,
    log: Option<kusto_edge_core::client::LogFn>,
) -> (Client, Arc<ManualClock>, Reps) {
    let clock = ManualClock::new();
    let reps: Reps = Arc::new(Mutex::new(Vec::new()));
    let r = reps.clone();
    let c = Client::with_options(
        cfg,
        ClientOptions {
            storage: storage.map(|m| Box::new(m) as kusto_edge_core::client::SpoolStorage),
            clock: Some(clock.clone()),
            log,
            delivery: Some(Arc::new(move |d: &DeliveryReport<'_>| {
                r.lock().unwrap().push(Rep {
                    id: d.chunk_id.to_owned(),
                    outcome: d.outcome,
                    is_final: d.is_final,
                    records: d.records,
                })
            })),
        },
    )
    .unwrap();
    (c, clock, reps)
}

fn record(seq: u64) -> String {
    format!(r#"{{"seq":{seq},"device":"gw-7","ok":true}}"#)
}

/// A log callback that panics on the first in-call retry warning: a bug inside the sender, mid-send.
fn panics_once_on_retry() -> kusto_edge_core::client::LogFn {
    let armed = AtomicBool::new(true);
    Arc::new(move |_, msg: &str| {
        if msg.contains("retrying in") && armed.swap(false, Ordering::SeqCst) {
            panic!("injected panic inside the sender");
        }
    })
}

/// A panic while the sender holds a batch taken out of a lane (here raised by the log callback on the retry
/// warning, standing for any bug in seal/deliver/sink/spool code) puts the batch back at the head of its lane:
/// its records are delivered by the next flush and the lane is not wedged.
#[test]
fn a_panic_mid_send_keeps_the_batch_and_the_lane_usable() {
    let server = Server::start(ServerConfig::default()).unwrap();
    server.push_fault(Fault::InternalError);
    let cfg = plain_config(&server.url(), &[("retry.max_attempts", "2")]);
    let log = panics_once_on_retry();
    let (client, _clock, reps) = client(&cfg, None, Some(log));
    let d = client.add_destination("db", "t", "csv", None).unwrap();
    client.append(d, b"1,a").unwrap();
    let r = catch_unwind(AssertUnwindSafe(|| client.flush()));
    assert!(r.is_err(), "the injected panic unwound through flush");
    // The client "stays usable": the record must still be delivered.
    client.append(d, b"2,b").unwrap();
    let flushed = client.flush();
    let got = server.records("db", "t");
    let s = client.stats();
    assert!(
        got.contains(&b"1,a".to_vec()),
        "record taken before the panic was lost without a report: server has {:?}, flush said {flushed:?}, \
         records_buffered={}, reports={:?}",
        got.iter().map(|r| String::from_utf8_lossy(r).into_owned()).collect::<Vec<_>>(),
        s.records_buffered,
        reps.lock().unwrap()
    );
    assert!(
        got.contains(&b"2,b".to_vec()),
        "lane wedged after the panic: flush said {flushed:?}, server has {got:?}"
    );
}

/// flush_to_spool is OK only when nothing is left in RAM: a later chunk the spool refuses (spool full under
/// reject-new, or a flash error) is not hidden behind an earlier one that was spooled.
#[test]
fn flush_to_spool_is_ok_only_when_nothing_stays_in_ram() {
    let server = Server::start(ServerConfig::default()).unwrap();
    let mem = MemStorage::new();
    let cfg = plain_config(
        &server.url(),
        &[
            ("batch.bytes", "1024"),
            ("spool.dir", "/unused-with-mem"),
            ("spool.policy", "reject-new"),
            ("spool.max_chunks", "1"),
        ],
    );
    let (client, _clock, _reps) = client(&cfg, Some(mem), None);
    let d = client.add_destination("db", "t", "csv", None).unwrap();
    let row = "x".repeat(600);
    client.append(d, row.as_bytes()).unwrap();
    client.append(d, row.as_bytes()).unwrap(); // seals the first batch
    let r = client.flush_to_spool();
    let s = client.stats();
    assert!(
        r.is_err() || s.records_buffered == 0,
        "flush_to_spool returned {r:?} but {} records are still only in RAM (spool_chunks={})",
        s.records_buffered,
        s.spool_chunks
    );
}

/// Likewise flush: `Spooled` ("everything not delivered is durable") never hides a later chunk that could not be
/// spooled and is only in RAM.
#[test]
fn flush_says_spooled_only_when_everything_is_on_flash() {
    let server = Server::start(ServerConfig::default()).unwrap();
    server.set_down(Duration::from_secs(3600));
    let mem = MemStorage::new();
    let cfg = plain_config(
        &server.url(),
        &[
            ("batch.bytes", "1024"),
            ("retry.max_attempts", "1"),
            ("spool.dir", "/unused-with-mem"),
            ("spool.policy", "reject-new"),
            ("spool.max_chunks", "1"),
        ],
    );
    let (client, _clock, _reps) = client(&cfg, Some(mem), None);
    let d = client.add_destination("db", "t", "csv", None).unwrap();
    let row = "x".repeat(600);
    client.append(d, row.as_bytes()).unwrap();
    client.append(d, row.as_bytes()).unwrap();
    let e = client.flush().unwrap_err();
    let s = client.stats();
    assert!(
        !(e.kind == ErrorKind::Spooled && s.records_buffered > 0),
        "flush returned Spooled but {} records are only in RAM: {}",
        s.records_buffered,
        e.message
    );
}

/// A chunk that got an intermediate report (Failed, kept in RAM) and is later refused as bad data is split
/// into pieces; its id goes on to a piece, so it still gets its one final report.
#[test]
fn a_chunk_split_after_an_intermediate_report_still_gets_its_final_report() {
    let server = Server::start(ServerConfig::default()).unwrap();
    server.push_fault(Fault::InternalError);
    let cfg = plain_config(&server.url(), &[("retry.max_attempts", "1")]);
    let (client, clock, reps) = client(&cfg, None, None);
    let d = client.add_destination("db", "t", "json", None).unwrap();
    for seq in 0..8 {
        if seq == 3 {
            client.append(d, b"[3]").unwrap(); // refused by the endpoint
        } else {
            client.append(d, record(seq).as_bytes()).unwrap();
        }
    }
    let e = client.flush().unwrap_err();
    assert_eq!(e.kind, ErrorKind::TransientFailure, "{}", e.message);
    clock.advance(Duration::from_secs(600));
    let _ = client.flush();
    let reps = reps.lock().unwrap().clone();
    let first = reps[0].clone();
    assert_eq!(first.outcome, Outcome::Failed);
    assert_eq!(client.stats().records_buffered, 0, "{reps:?}");
    let finals = reps
        .iter()
        .filter(|r| r.id == first.id && r.is_final)
        .count();
    assert_eq!(
        finals, 1,
        "chunk {} (reported Failed, {} records) has {finals} final reports: {reps:?}",
        first.id, first.records
    );
}

/// A spooled chunk whose read fails with EIO stays pending, and the spool backs off: poll says SpoolIo with a
/// next_ms that is not 0, no hot loop on a failing flash.
#[test]
fn a_failing_spool_read_backs_off_instead_of_spinning() {
    let server = Server::start(ServerConfig::default()).unwrap();
    let mem = MemStorage::new();
    let cfg = plain_config(&server.url(), &[("spool.dir", "/unused-with-mem")]);
    let (client, clock, _reps) = client(&cfg, Some(mem.clone()), None);
    let d = client.add_destination("db", "t", "csv", None).unwrap();
    client.append(d, b"1,a").unwrap();
    client.flush_to_spool().unwrap();
    assert_eq!(client.stats().spool_chunks, 1);
    mem.set_fail_reads(true);
    let mut zeros = 0;
    for _ in 0..20 {
        let (next, r) = client.poll_next();
        assert_eq!(r.unwrap_err().kind, ErrorKind::SpoolIo);
        if next == 0 {
            zeros += 1;
        }
        clock.advance(Duration::from_millis(next as u64));
    }
    assert!(
        zeros < 2,
        "{zeros} of 20 polls on a failing flash said next_ms=0 (no backoff on read errors)"
    );
}

/// With spool.write_ahead=true a refused chunk is still split from its RAM copy, as without write-ahead: its good
/// records are delivered (README: "a batch of several records is first sent in halves").
#[test]
fn with_write_ahead_a_refused_chunk_is_still_split_and_its_good_records_delivered() {
    let server = Server::start(ServerConfig::default()).unwrap();
    let mem = MemStorage::new();
    let cfg = plain_config(
        &server.url(),
        &[
            ("spool.dir", "/unused-with-mem"),
            ("spool.write_ahead", "true"),
        ],
    );
    let (client, _clock, _reps) = client(&cfg, Some(mem), None);
    let d = client.add_destination("db", "t", "json", None).unwrap();
    for seq in 0..8 {
        if seq == 3 {
            client.append(d, b"[3]").unwrap();
        } else {
            client.append(d, record(seq).as_bytes()).unwrap();
        }
    }
    let _ = client.flush();
    let got = common::seqs(&server, "db", "t");
    assert_eq!(
        got.len(),
        7,
        "good records delivered: {got:?}; stats {:?}",
        client.stats()
    );
}

/// After a panic mid-send, poll does not spin at next_ms=0: the batch is back in its lane and is sent.
#[test]
fn after_a_panic_mid_send_poll_does_not_spin() {
    let server = Server::start(ServerConfig::default()).unwrap();
    server.push_fault(Fault::InternalError);
    let cfg = plain_config(&server.url(), &[("retry.max_attempts", "2")]);
    let log = panics_once_on_retry();
    let (client, clock, _reps) = client(&cfg, None, Some(log));
    let d = client.add_destination("db", "t", "csv", None).unwrap();
    client.append(d, b"1,a").unwrap();
    assert!(catch_unwind(AssertUnwindSafe(|| client.flush())).is_err());
    client.append(d, b"2,b").unwrap();
    clock.advance(Duration::from_secs(60));
    let mut zeros = 0;
    for _ in 0..10 {
        let (next, r) = client.poll_next();
        r.unwrap();
        if next == 0 {
            zeros += 1;
        }
    }
    assert_eq!(
        zeros,
        0,
        "poll said next_ms=0 {zeros} times and sent nothing ({} requests)",
        server.requests().len()
    );
}

/// A chunk spooled in this run (intermediate Spooled report) that is found corrupt when replayed is moved to
/// corrupt/ and gets its final report, Dropped: the delivery callback says its records are gone.
#[test]
fn a_spooled_chunk_found_corrupt_on_replay_gets_a_final_dropped_report() {
    let server = Server::start(ServerConfig::default()).unwrap();
    let mem = MemStorage::new();
    let cfg = plain_config(&server.url(), &[("spool.dir", "/unused-with-mem")]);
    let (client, _clock, reps) = client(&cfg, Some(mem.clone()), None);
    let d = client.add_destination("db", "t", "csv", None).unwrap();
    client.append(d, b"1,a").unwrap();
    client.flush_to_spool().unwrap();
    let id = reps.lock().unwrap()[0].id.clone();
    let name = mem
        .names(kusto_edge_core::spool::Area::Pending)
        .into_iter()
        .find(|n| n.ends_with(".chunk"))
        .unwrap();
    let len = mem
        .contents(kusto_edge_core::spool::Area::Pending, &name)
        .unwrap()
        .len() as u64;
    assert!(mem.flip_bit(kusto_edge_core::spool::Area::Pending, &name, (len - 8) * 8));
    let _ = client.poll_next();
    assert_eq!(client.stats().chunks_corrupt, 1);
    let reps = reps.lock().unwrap().clone();
    assert!(
        reps.iter().any(|r| r.id == id && r.is_final),
        "chunk {id} was spooled, then quarantined as corrupt, with no final report: {reps:?}"
    );
}
