//! The lanes contract over real loopback sockets: `append` never waits for a send, the sender works in
//! `poll`/`flush` one thread at a time, and time (batch age, backoff) passes on an injected clock, not by sleeping.

use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kusto_devserver::{Server, ServerConfig};
use kusto_edge_core::clock::ManualClock;
use kusto_edge_core::{Client, ClientOptions, Config, DeliveryReport, ErrorKind, Outcome};

mod common;

/// A server that accepts connections and never answers (nor closes them) until dropped.
struct Silent {
    url: String,
    stop: Arc<Mutex<bool>>,
    _thread: std::thread::JoinHandle<()>,
}

impl Silent {
    fn start() -> Silent {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        let stop = Arc::new(Mutex::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut held = Vec::new();
            while !*s.lock().unwrap() {
                if let Ok((c, _)) = l.accept() {
                    held.push(c);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        Silent {
            url,
            stop,
            _thread: thread,
        }
    }
}

impl Drop for Silent {
    fn drop(&mut self) {
        *self.stop.lock().unwrap() = true;
    }
}

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

#[test]
fn appends_to_another_destination_never_wait_for_a_flush_stuck_on_a_silent_server() {
    let silent = Silent::start();
    let cfg = plain_config(
        &silent.url,
        &[
            ("timeout.connect_ms", "3000"),
            ("timeout.send_ms", "3000"),
            ("timeout.recv_ms", "3000"),
            ("retry.max_attempts", "1"),
            ("retry.max_total_ms", "3000"),
            ("batch.bytes", "65536"),
        ],
    );
    let client = Arc::new(Client::new(&cfg, None, None).unwrap());
    let stuck = client.add_destination("db", "stuck", "csv", None).unwrap();
    let other = client.add_destination("db", "other", "csv", None).unwrap();
    client.append(stuck, b"1,a").unwrap();
    let c = client.clone();
    let flusher = std::thread::spawn(move || {
        let t = Instant::now();
        let r = c.flush();
        (t.elapsed(), r)
    });
    // Wait until the flush is really inside its request.
    let t0 = Instant::now();
    while client.stats().requests == 0 {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "the flush never sent"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    let mut slowest = Duration::ZERO;
    for i in 0..1000 {
        let rec = format!("{i},reading,{}", i * 7);
        let t = Instant::now();
        client.append(other, rec.as_bytes()).unwrap();
        slowest = slowest.max(t.elapsed());
    }
    // The same records again as one buffer of lines: one call, and no wait either.
    let lines: String = (0..1000)
        .map(|i| format!("{i},reading,{}\n", i * 7))
        .collect();
    let t = Instant::now();
    let (taken, r) = client.append_lines(other, lines.as_bytes(), u64::MAX);
    let lines_took = t.elapsed();
    r.unwrap();
    assert_eq!((taken.records, taken.consumed), (1000, lines.len()));
    // And the rest of the non-sending API answers at once too.
    let t = Instant::now();
    let (next, r) = client.poll_next();
    let poll_took = t.elapsed();
    let _ = client.stats();
    let added = client.add_destination("db", "third", "csv", None);
    let still_stuck = !flusher.is_finished();
    let (flush_took, flushed) = flusher.join().unwrap();
    println!("slowest of 1000 appends during a stuck flush: {slowest:?}; 1000 as lines in one call {lines_took:?}; poll {poll_took:?}");
    assert!(still_stuck, "the flush was still waiting while we appended");
    assert!(
        slowest < Duration::from_millis(5),
        "slowest append {slowest:?}"
    );
    assert!(
        lines_took < Duration::from_millis(50),
        "append_lines of 1000 records {lines_took:?}"
    );
    assert!(
        r.is_ok() && next > 0,
        "poll while another thread sends: {r:?} {next}"
    );
    assert!(poll_took < Duration::from_millis(50), "{poll_took:?}");
    assert!(added.is_ok());
    assert_eq!(client.stats().records_appended, 2001);
    assert!(flushed.is_err());
    assert!(flush_took < Duration::from_secs(10), "{flush_took:?}");
}

#[test]
fn flush_timeout_bounds_the_wait_for_another_threads_send() {
    let silent = Silent::start();
    let cfg = plain_config(
        &silent.url,
        &[
            ("timeout.recv_ms", "3000"),
            ("retry.max_attempts", "1"),
            ("retry.max_total_ms", "3000"),
        ],
    );
    let client = Arc::new(Client::new(&cfg, None, None).unwrap());
    let d = client.add_destination("db", "t", "csv", None).unwrap();
    client.append(d, b"1,a").unwrap();
    let c = client.clone();
    let flusher = std::thread::spawn(move || c.flush());
    while client.stats().requests == 0 {
        std::thread::sleep(Duration::from_millis(1));
    }
    let t = Instant::now();
    let e = client
        .flush_timeout(Duration::from_millis(200))
        .unwrap_err();
    let took = t.elapsed();
    assert_eq!(e.kind, ErrorKind::TransientFailure, "{}", e.message);
    assert!(e.message.contains("another thread"), "{}", e.message);
    assert!(
        took >= Duration::from_millis(200) && took < Duration::from_millis(1500),
        "{took:?}"
    );
    let _ = flusher.join().unwrap();
}

/// A report as seen: outcome, is_final, wire bytes, HTTP status, chunk id.
type Report = (Outcome, bool, u64, u16, String);

struct Seen(Mutex<Vec<Report>>);

fn clocked(server: &Server, extra: &[(&str, &str)]) -> (Client, Arc<ManualClock>, Arc<Seen>) {
    let clock = ManualClock::new();
    let seen = Arc::new(Seen(Mutex::new(Vec::new())));
    let s = seen.clone();
    let cfg = plain_config(&server.url(), extra);
    let client = Client::with_options(
        &cfg,
        ClientOptions {
            clock: Some(clock.clone()),
            delivery: Some(Arc::new(move |r: &DeliveryReport<'_>| {
                s.0.lock().unwrap().push((
                    r.outcome,
                    r.is_final,
                    r.wire_bytes,
                    r.http_status,
                    r.chunk_id.to_owned(),
                ))
            })),
            ..ClientOptions::default()
        },
    )
    .unwrap();
    (client, clock, seen)
}

#[test]
fn batch_age_and_backoff_run_on_the_injected_clock() {
    let server = Server::start(ServerConfig::default()).unwrap();
    let (client, clock, seen) = clocked(&server, &[("batch.max_age_ms", "5000")]);
    let d = client.add_destination("db", "t", "csv", None).unwrap();
    client.append(d, b"1,a").unwrap();
    assert_eq!(
        client.poll().unwrap(),
        5000,
        "due when the batch is 5 s old"
    );
    assert!(server.requests().is_empty());
    clock.advance(Duration::from_millis(4999));
    assert_eq!(client.poll().unwrap(), 1);
    assert!(server.requests().is_empty());
    clock.advance(Duration::from_millis(1));
    client.poll().unwrap();
    assert_eq!(server.records("db", "t"), vec![b"1,a".to_vec()]);

    // A 503: the destination backs off; the in-call retries slept on the clock (no real time passed).
    for _ in 0..4 {
        server.push_fault(kusto_devserver::Fault::Unavailable { retry_after: None });
    }
    let real = Instant::now();
    client.append(d, b"2,b").unwrap();
    let e = client.flush().unwrap_err();
    assert_eq!(e.kind, ErrorKind::TransientFailure, "{}", e.message);
    assert!(
        real.elapsed() < Duration::from_secs(2),
        "{:?}",
        real.elapsed()
    );
    let tried = server.requests().len();
    let (wait, r) = client.poll_next();
    assert!(r.is_ok(), "{r:?}");
    assert!(wait > 0, "backing off");
    assert_eq!(
        server.requests().len(),
        tried,
        "no request while backing off"
    );
    clock.advance(Duration::from_millis(wait as u64 - 1));
    let _ = client.poll_next();
    assert_eq!(server.requests().len(), tried, "not a millisecond early");
    clock.advance(Duration::from_millis(1));
    client.poll().unwrap();
    assert_eq!(server.records("db", "t").len(), 2);
    // Reports: one final per chunk, wire bytes and status filled in.
    let seen = seen.0.lock().unwrap();
    let finals: Vec<_> = seen.iter().filter(|s| s.1).collect();
    assert_eq!(finals.len(), 2, "{seen:?}");
    assert!(finals
        .iter()
        .all(|s| s.0 == Outcome::Acknowledged && s.3 == 200 && s.2 > 0));
    let failed: Vec<_> = seen.iter().filter(|s| s.0 == Outcome::Failed).collect();
    assert!(!failed.is_empty());
    assert!(
        failed.iter().all(|s| !s.1 && s.3 == 503 && s.2 > 0),
        "{failed:?}"
    );
    assert_eq!(
        failed[0].4, finals[1].4,
        "the same chunk id until it is acknowledged"
    );
}

#[test]
fn a_full_lane_refuses_the_record_until_poll_sends_and_memory_stays_within_the_lane() {
    let server = Server::start(ServerConfig::default()).unwrap();
    let (client, _clock, _) = clocked(&server, &[("batch.bytes", "1024"), ("batch.sealed", "2")]);
    let d = client.add_destination("db", "t", "csv", None).unwrap();
    let row = [b'x'; 500];
    // Two 500-byte rows per 1 KiB batch; the filling batch and two sealed ones hold six.
    for _ in 0..6 {
        client.append(d, &row).unwrap();
    }
    let e = client.append(d, &row).unwrap_err();
    assert_eq!(e.kind, ErrorKind::QueueFull);
    assert!(e.message.contains("kedge_poll"), "{}", e.message);
    assert!(server.requests().is_empty(), "append never sends");
    assert_eq!(client.batch_buffers(), 3, "1 + batch.sealed buffers");
    client.poll().unwrap();
    assert_eq!(
        server.requests().len(),
        3,
        "poll sends the sealed chunks and the full batch the refused record found"
    );
    for _ in 0..1000 {
        common::append(&client, d, &row).unwrap();
    }
    client.flush().unwrap();
    assert_eq!(server.records("db", "t").len(), 1006);
    assert_eq!(client.batch_buffers(), 3, "buffers are reused, never more");
}

#[test]
fn a_failing_flash_is_not_retried_on_every_poll() {
    let server = Server::start(ServerConfig::default()).unwrap();
    server.set_down(Duration::from_secs(3600));
    let mem = kusto_edge_core::spool::MemStorage::new();
    let clock = ManualClock::new();
    let cfg = plain_config(
        &server.url(),
        &[
            ("retry.max_attempts", "1"),
            ("spool.dir", "/unused-with-mem"),
        ],
    );
    let client = Client::with_options(
        &cfg,
        ClientOptions {
            storage: Some(Box::new(mem.clone())),
            clock: Some(clock.clone()),
            ..ClientOptions::default()
        },
    )
    .unwrap();
    let d = client.add_destination("db", "t", "csv", None).unwrap();
    client.append(d, b"1,a").unwrap();
    mem.set_read_only(true);
    clock.advance(Duration::from_secs(5));
    let (_, r) = client.poll_next();
    assert_eq!(r.unwrap_err().kind, ErrorKind::SpoolIo);
    let failed_writes = client.stats().spool_io_errors;
    assert!(failed_writes >= 1);
    // The next polls keep the chunk in RAM without touching the flash, while the spool's writes back off.
    for _ in 0..20 {
        clock.advance(Duration::from_millis(10));
        let _ = client.poll_next();
    }
    assert_eq!(
        client.stats().spool_io_errors,
        failed_writes,
        "no write while backing off"
    );
    assert_eq!(
        client.stats().records_buffered,
        1,
        "the record is kept in RAM"
    );
    // Later the spool is tried again; once the flash works, the chunk is on it.
    mem.set_read_only(false);
    clock.advance(Duration::from_secs(400));
    let (_, r) = client.poll_next();
    assert_eq!(r.unwrap_err().kind, ErrorKind::Spooled);
    let s = client.stats();
    assert_eq!((s.spool_chunks, s.records_buffered), (1, 0), "{s:?}");
}

#[test]
fn flush_timeout_cuts_a_request_that_would_outlast_it() {
    let silent = Silent::start();
    let cfg = plain_config(
        &silent.url,
        &[("timeout.recv_ms", "10000"), ("retry.max_attempts", "1")],
    );
    let client = Client::new(&cfg, None, None).unwrap();
    let d = client.add_destination("db", "t", "csv", None).unwrap();
    client.append(d, b"1,a").unwrap();
    let t = Instant::now();
    let e = client
        .flush_timeout(Duration::from_millis(300))
        .unwrap_err();
    let took = t.elapsed();
    assert_eq!(e.kind, ErrorKind::TransientFailure, "{}", e.message);
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(3),
        "bounded by the flush's 300 ms, not the 10 s receive timeout: {took:?}"
    );
    assert_eq!(client.stats().records_buffered, 1, "the chunk is kept");
}

/// Threads handing lines to one destination at once: each record arrives once and whole, never interleaved with
/// another thread's, however the groups of `append_lines` and the full lane fall between them.
#[test]
fn append_lines_from_several_threads_to_one_destination_delivers_each_record_once_and_whole() {
    let server = Server::start(ServerConfig::default()).unwrap();
    let cfg = plain_config(
        &server.url(),
        &[("batch.bytes", "16384"), ("batch.sealed", "1")],
    );
    let client = Arc::new(Client::new(&cfg, None, None).unwrap());
    let d = client.add_destination("db", "t", "json", None).unwrap();
    const THREADS: usize = 4;
    const LINES: usize = 5000;
    let workers: Vec<_> = (0..THREADS)
        .map(|t| {
            let client = client.clone();
            std::thread::spawn(move || {
                // Lengths vary so that groups and batch ends fall at different places in each thread.
                let buf: String = (0..LINES)
                    .map(|i| {
                        format!(
                            "{{\"t\":{t},\"i\":{i},\"pad\":\"{}\"}}\n",
                            "x".repeat(i % 37)
                        )
                    })
                    .collect();
                let buf = buf.as_bytes();
                let mut at = 0;
                let mut full = 0u32;
                while at < buf.len() {
                    // Reads of a few KiB, cut anywhere, as a reader would hand them over.
                    let end = (at + 3000 + 517 * t).min(buf.len());
                    let (taken, r) = client.append_lines(d, &buf[at..end], u64::MAX);
                    at += taken.consumed;
                    match r {
                        Ok(()) => {}
                        Err(e) => {
                            assert_eq!(e.kind, ErrorKind::QueueFull, "{}", e.message);
                            full += 1;
                            // Another thread may be sending this lane (poll then returns at once): wait a
                            // little rather than spin against the sender for the 2 cores.
                            let _ = client.poll();
                            std::thread::sleep(Duration::from_millis(1));
                        }
                    }
                }
                full
            })
        })
        .collect();
    let full: u32 = workers.into_iter().map(|w| w.join().unwrap()).sum();
    client.flush().unwrap();
    let mut seen = vec![vec![0u8; LINES]; THREADS];
    let records = server.records("db", "t");
    for r in &records {
        let v: serde_json::Value = serde_json::from_slice(r)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(r)));
        let (t, i) = (
            v["t"].as_u64().unwrap() as usize,
            v["i"].as_u64().unwrap() as usize,
        );
        assert_eq!(v["pad"].as_str().unwrap().len(), i % 37, "whole record");
        seen[t][i] += 1;
    }
    assert_eq!(records.len(), THREADS * LINES);
    assert!(seen.iter().flatten().all(|&n| n == 1), "each record once");
    println!(
        "{} records from {THREADS} threads, {full} full-lane refusals, {} requests",
        records.len(),
        server.requests().len()
    );
    assert!(
        full > 0,
        "the lane was full at times: the test crossed that path"
    );
}
