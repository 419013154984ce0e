//! The client against the Kusto-compatible test endpoint over real loopback sockets (HTTPS with a test CA where
//! TLS matters): what arrives, how failures are classified and retried, what the wire looks like.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kusto_devserver::{Fault, Faults, Server, ServerConfig};
use kusto_edge_core::{Client, Config, ErrorKind, Outcome};

mod common;
use common::seqs;

struct Reports(Mutex<Vec<(Outcome, u64, String)>>);

fn tls_server() -> Server {
    Server::start(ServerConfig {
        tls: true,
        ..Default::default()
    })
    .expect("devserver")
}

fn config_for(server: &Server, extra: &[(&str, &str)]) -> Config {
    let mut c = Config::default();
    c.set("url", &server.url()).unwrap();
    if let Some(pem) = server.ca_pem() {
        c.add_ca_pem(pem.as_bytes()).unwrap();
        c.set("tls.bundled_roots", "false").unwrap();
    } else {
        c.set("http.allow_plain", "true").unwrap();
    }
    c.set("retry.base_ms", "10").unwrap();
    c.set("retry.max_delay_ms", "200").unwrap();
    for (k, v) in extra {
        c.set(k, v).unwrap();
    }
    c
}

fn client_with_reports(cfg: &Config) -> (Client, Arc<Reports>) {
    let reports = Arc::new(Reports(Mutex::new(Vec::new())));
    let r = reports.clone();
    let client = Client::new(
        cfg,
        None,
        Some(Arc::new(
            move |rep: &kusto_edge_core::DeliveryReport<'_>| {
                r.0.lock()
                    .unwrap()
                    .push((rep.outcome, rep.records, rep.message.to_owned()));
            },
        )),
    )
    .expect("client");
    (client, reports)
}

fn record(seq: u64) -> String {
    format!(
        r#"{{"seq":{seq},"device":"gw-7","temp":{}.{},"ok":true}}"#,
        20 + seq % 7,
        seq % 10
    )
}

#[test]
fn records_arrive_once_over_https_with_unique_request_ids_and_valid_gzip() {
    let server = tls_server();
    let cfg = config_for(
        &server,
        &[
            ("batch.bytes", "65536"),
            ("client.app", "e2e-test"),
            ("client.app_version", "9.9"),
        ],
    );
    let (client, reports) = client_with_reports(&cfg);
    let d = client
        .add_destination("telemetry db", "Readings/1", "json", None)
        .unwrap();
    for seq in 0..5000 {
        common::append(&client, d, record(seq).as_bytes()).unwrap();
    }
    client.flush().unwrap();

    let got = seqs(&server, "telemetry db", "Readings/1");
    assert_eq!(
        got,
        (0..5000).collect::<Vec<_>>(),
        "every record once, in order"
    );
    let reqs = server.requests();
    assert!(
        reqs.len() >= 4,
        "batches of 64 KiB make several requests: {}",
        reqs.len()
    );
    let ids: HashSet<_> = reqs.iter().map(|r| r.client_request_id.clone()).collect();
    assert_eq!(ids.len(), reqs.len(), "request ids are unique");
    for r in &reqs {
        assert!(r.gzip_ok, "gzip body");
        assert!(r.raw_bytes <= 65536);
        assert_eq!(r.format, "json");
        assert!(
            r.client_request_id
                .starts_with("KEC.executeStreamingIngest;"),
            "{}",
            r.client_request_id
        );
        let h = |name: &str| {
            r.headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.clone())
        };
        assert_eq!(h("x-ms-version").as_deref(), Some("2024-12-12"));
        assert_eq!(h("x-ms-app").as_deref(), Some("e2e-test"));
        assert_eq!(h("content-encoding").as_deref(), Some("gzip"));
        assert_eq!(h("accept").as_deref(), Some("application/json"));
        assert!(h("x-ms-client-version")
            .unwrap()
            .ends_with("|App.{e2e-test}:{9.9}"));
        assert!(
            h("authorization").is_none(),
            "no token configured, none sent"
        );
    }
    let s = client.stats();
    assert_eq!(s.records_acknowledged, 5000);
    assert_eq!(s.records_buffered, 0);
    assert!(
        s.bytes_sent_wire * 3 < s.bytes_sent_raw,
        "gzip shrinks telemetry: {} vs {}",
        s.bytes_sent_wire,
        s.bytes_sent_raw
    );
    let acked: u64 = reports
        .0
        .lock()
        .unwrap()
        .iter()
        .filter(|r| r.0 == Outcome::Acknowledged)
        .map(|r| r.1)
        .sum();
    assert_eq!(acked, 5000);
}

#[test]
fn tls_verification_is_on_without_the_test_ca() {
    let server = tls_server();
    let mut cfg = Config::default();
    cfg.set("url", &server.url()).unwrap();
    cfg.set("retry.max_attempts", "1").unwrap();
    let client = Client::new(&cfg, None, None).unwrap();
    let d = client.add_destination("db", "t", "csv", None).unwrap();
    common::append(&client, d, b"a,1").unwrap();
    let e = client.flush().unwrap_err();
    assert_eq!(e.kind, ErrorKind::TargetNotReady, "{}", e.message);
    assert!(e.message.contains("tls.ca_file"), "{}", e.message);
    assert!(server.records("db", "t").is_empty());
}

#[test]
fn token_is_sent_as_bearer_and_a_wrong_one_is_auth_refused_with_data_kept() {
    let server = Server::start(ServerConfig {
        tls: true,
        token: Some("right-token".into()),
        ..Default::default()
    })
    .unwrap();
    let cfg = config_for(&server, &[("auth.token", "wrong-token")]);
    let client = Client::new(&cfg, None, None).unwrap();
    let d = client.add_destination("db", "t", "csv", None).unwrap();
    common::append(&client, d, b"x,1").unwrap();
    let e = client.flush().unwrap_err();
    assert_eq!(e.kind, ErrorKind::AuthRefused);
    assert!(
        !e.message.contains("wrong-token"),
        "the token never appears in messages"
    );
    assert_eq!(client.stats().records_buffered, 1, "data kept");
    assert_eq!(
        server.requests().len(),
        1,
        "auth failures are not retried inside the call"
    );

    let cfg = config_for(&server, &[("auth.token", "right-token")]);
    let client = Client::new(&cfg, None, None).unwrap();
    let d = client.add_destination("db", "t", "csv", None).unwrap();
    common::append(&client, d, b"y,2").unwrap();
    client.flush().unwrap();
    assert_eq!(server.records("db", "t"), vec![b"y,2".to_vec()]);
}

#[test]
fn random_throttling_unavailability_and_resets_lose_nothing() {
    let server = tls_server();
    server.set_faults(Faults {
        seed: 42,
        random: vec![
            (Fault::Throttle { retry_after: None }, 0.15),
            (Fault::Unavailable { retry_after: None }, 0.1),
            (Fault::Reset, 0.1),
            (Fault::InternalError, 0.05),
        ],
    });
    let cfg = config_for(
        &server,
        &[
            ("batch.bytes", "8192"),
            ("retry.max_attempts", "20"),
            ("retry.max_total_ms", "20000"),
        ],
    );
    let client = Client::new(&cfg, None, None).unwrap();
    let d = client
        .add_destination("db", "faulty", "multijson", None)
        .unwrap();
    for seq in 0..3000 {
        // A failing append leaves the record with us: try again after poll, as firmware would.
        let rec = record(seq);
        let mut tries = 0;
        while let Err(e) = common::append(&client, d, rec.as_bytes()) {
            assert!(e.kind.keeps_data(), "{e}");
            tries += 1;
            assert!(tries < 50, "stuck: {e}");
            std::thread::sleep(Duration::from_millis(20));
            let _ = client.poll();
        }
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while client.flush().is_err() {
        assert!(Instant::now() < deadline, "flush never succeeded");
    }
    let mut got = seqs(&server, "db", "faulty");
    got.sort_unstable();
    assert_eq!(
        got,
        (0..3000).collect::<Vec<_>>(),
        "every record exactly once (faults strike before ingestion)"
    );
    let s = client.stats();
    assert!(
        s.retries > 0 && s.failures > 0,
        "faults were exercised: {s:?}"
    );
}

#[test]
fn retry_after_is_honoured_between_attempts() {
    let server = tls_server();
    server.push_fault(Fault::Throttle {
        retry_after: Some("1".into()),
    });
    let cfg = config_for(&server, &[]);
    let client = Client::new(&cfg, None, None).unwrap();
    let d = client.add_destination("db", "t", "csv", None).unwrap();
    common::append(&client, d, b"a,1").unwrap();
    client.flush().unwrap();
    let reqs = server.requests();
    assert_eq!(reqs.len(), 2);
    assert_eq!(reqs[0].status, 429);
    let gap = reqs[1].at.duration_since(reqs[0].at);
    assert!(
        gap >= Duration::from_millis(950),
        "waited only {gap:?} after Retry-After: 1"
    );
    // Same chunk, next attempt.
    let chunk = |id: &str| id.split(';').nth(1).unwrap().to_owned();
    assert_eq!(
        chunk(&reqs[0].client_request_id),
        chunk(&reqs[1].client_request_id)
    );
    assert!(reqs[0].client_request_id.ends_with(";0") && reqs[1].client_request_id.ends_with(";1"));
}

#[test]
fn rejected_data_is_dropped_reported_and_the_next_batch_goes_through() {
    let server = tls_server();
    server.push_fault(Fault::RejectData);
    let cfg = config_for(&server, &[]);
    let (client, reports) = client_with_reports(&cfg);
    let d = client.add_destination("db", "t", "csv", None).unwrap();
    common::append(&client, d, b"bad,row").unwrap();
    let e = client.flush().unwrap_err();
    assert_eq!(e.kind, ErrorKind::DataRejected);
    assert!(
        e.message.contains("Stream_WrongNumberOfFields"),
        "{}",
        e.message
    );
    assert_eq!(
        server.requests().len(),
        1,
        "permanent refusals are never retried"
    );
    let s = client.stats();
    assert_eq!((s.records_rejected, s.records_buffered), (1, 0));
    assert_eq!(reports.0.lock().unwrap()[0].0, Outcome::Rejected);

    common::append(&client, d, b"good,row").unwrap();
    client.flush().unwrap();
    assert_eq!(server.records("db", "t"), vec![b"good,row".to_vec()]);
}

#[test]
fn missing_table_keeps_the_data_and_backs_off_until_it_exists() {
    let server = Server::start(ServerConfig {
        tls: true,
        tables: Some(vec![]),
        ..Default::default()
    })
    .unwrap();
    let cfg = config_for(
        &server,
        &[("batch.bytes", "1024"), ("batch.max_age_ms", "0")],
    );
    let client = Client::new(&cfg, None, None).unwrap();
    let d = client.add_destination("db", "Later", "csv", None).unwrap();
    common::append(&client, d, b"1,a").unwrap();
    let e = client.flush().unwrap_err();
    assert_eq!(e.kind, ErrorKind::TargetNotReady);
    assert!(e.message.contains("create the table"), "{}", e.message);
    assert_eq!(server.requests().len(), 1, "not retried inside the call");

    // While backing off, append answers at once: the kept chunk holds the lane's one sealed slot, a new batch
    // fills, and the next record finds the lane full. No request is made for any of it.
    let row = vec![b'x'; 1000];
    let t = Instant::now();
    client.append(d, &row).unwrap();
    let e = client.append(d, &row).unwrap_err();
    assert_eq!(e.kind, ErrorKind::QueueFull, "{}", e.message);
    assert!(t.elapsed() < Duration::from_millis(200));
    assert_eq!(server.requests().len(), 1, "no request while backing off");
    let (next, r) = client.poll_next();
    assert!(r.is_ok(), "{r:?}");
    assert!(next > 0, "poll says when the backoff ends");
    assert_eq!(client.stats().records_buffered, 2);
    assert_eq!(client.stats().appends_queue_full, 1);
    let t = Instant::now();
    let e = client.flush().unwrap_err();
    assert_eq!(e.kind, ErrorKind::BackingOff, "{}", e.message);
    assert!(e.message.contains("backing off"), "{}", e.message);
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    assert_eq!(client.stats().records_buffered, 2);
    assert_eq!(
        server.requests().len(),
        1,
        "flush does not hammer a target that backs off"
    );
}

#[test]
fn poll_sends_batches_older_than_max_age() {
    let server = tls_server();
    let cfg = config_for(&server, &[("batch.max_age_ms", "100")]);
    let (client, clock) = common::clocked(&cfg, None);
    let d = client.add_destination("db", "t", "csv", None).unwrap();
    common::append(&client, d, b"1").unwrap();
    let next = client.poll().unwrap();
    assert_eq!(next, 100, "next poll when the batch is 100 ms old");
    assert!(server.requests().is_empty(), "too young to send");
    clock.advance(Duration::from_millis(next as u64 - 1));
    assert_eq!(client.poll().unwrap(), 1);
    assert!(server.requests().is_empty(), "not a millisecond early");
    clock.advance(Duration::from_millis(1));
    client.poll().unwrap();
    assert_eq!(server.records("db", "t").len(), 1);
    assert_eq!(
        client.poll().unwrap(),
        3_600_000,
        "nothing buffered: nothing due"
    );
}

#[test]
fn a_lost_reply_is_resent_with_the_same_chunk_id_at_least_once() {
    let server = tls_server();
    server.push_fault(Fault::LoseReply);
    let cfg = config_for(&server, &[]);
    let client = Client::new(&cfg, None, None).unwrap();
    let d = client.add_destination("db", "t", "csv", None).unwrap();
    common::append(&client, d, b"r,1").unwrap();
    client.flush().unwrap();
    assert_eq!(
        server.records("db", "t").len(),
        2,
        "the lost reply makes a duplicate, never a loss"
    );
    let reqs = server.requests();
    let chunk = |id: &str| id.split(';').nth(1).unwrap().to_owned();
    assert_eq!(
        chunk(&reqs[0].client_request_id),
        chunk(&reqs[1].client_request_id)
    );
}

#[test]
fn a_server_that_lies_with_an_empty_200_gets_the_chunk_again() {
    let server = tls_server();
    server.push_fault(Fault::EmptyOk);
    server.push_fault(Fault::GarbageOk);
    let cfg = config_for(&server, &[]);
    let client = Client::new(&cfg, None, None).unwrap();
    let d = client.add_destination("db", "t", "csv", None).unwrap();
    common::append(&client, d, b"r,1").unwrap();
    client.flush().unwrap();
    assert_eq!(server.requests().len(), 3);
    assert_eq!(client.stats().records_acknowledged, 1);
}

#[test]
fn a_slow_server_is_cut_off_by_the_receive_timeout() {
    let server = tls_server();
    server.push_fault(Fault::Slow(Duration::from_secs(5)));
    let cfg = config_for(
        &server,
        &[("timeout.recv_ms", "300"), ("retry.max_attempts", "1")],
    );
    let client = Client::new(&cfg, None, None).unwrap();
    let d = client.add_destination("db", "t", "csv", None).unwrap();
    common::append(&client, d, b"r,1").unwrap();
    let t = Instant::now();
    let e = client.flush().unwrap_err();
    assert_eq!(e.kind, ErrorKind::TransientFailure);
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "bounded by the timeout: {:?}",
        t.elapsed()
    );
}

#[test]
fn sends_are_bounded_by_the_total_retry_time_when_nothing_listens() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut cfg = Config::default();
    cfg.set("url", &format!("http://127.0.0.1:{port}")).unwrap();
    cfg.set("http.allow_plain", "true").unwrap();
    cfg.set("retry.max_total_ms", "500").unwrap();
    cfg.set("retry.base_ms", "50").unwrap();
    cfg.set("retry.max_attempts", "100").unwrap();
    let client = Client::new(&cfg, None, None).unwrap();
    let d = client.add_destination("db", "t", "csv", None).unwrap();
    common::append(&client, d, b"r,1").unwrap();
    let t = Instant::now();
    assert_eq!(
        client.flush().unwrap_err().kind,
        ErrorKind::TransientFailure
    );
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    assert_eq!(client.stats().records_buffered, 1);
}

#[test]
fn a_callback_may_append_but_not_send_from_inside() {
    let server = tls_server();
    let cfg = config_for(&server, &[]);
    let slot: Arc<Mutex<Option<Arc<Client>>>> = Arc::new(Mutex::new(None));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (s2, seen2) = (slot.clone(), seen.clone());
    let client = Arc::new(
        Client::new(
            &cfg,
            None,
            Some(Arc::new(move |_r: &kusto_edge_core::DeliveryReport<'_>| {
                if let Some(c) = s2.lock().unwrap().as_ref() {
                    let mut seen = seen2.lock().unwrap();
                    seen.push(c.append(0, b"again,1").map_err(|e| e.kind));
                    seen.push(c.flush().map_err(|e| e.kind));
                    seen.push(c.poll().map(|_| ()).map_err(|e| e.kind));
                    seen.push(c.flush_to_spool().map_err(|e| e.kind));
                    let _ = c.stats();
                }
            })),
        )
        .unwrap(),
    );
    *slot.lock().unwrap() = Some(client.clone());
    let d = client.add_destination("db", "t", "csv", None).unwrap();
    client.append(d, b"r,1").unwrap();
    client.flush().unwrap();
    *slot.lock().unwrap() = None;
    assert_eq!(
        seen.lock().unwrap()[..4],
        [
            Ok(()),
            Err(ErrorKind::ReentrantCall),
            Err(ErrorKind::ReentrantCall),
            Err(ErrorKind::ReentrantCall)
        ]
    );
    // Records appended from the callback are sent (by the same flush or the next one).
    client.flush().unwrap();
    let s = client.stats();
    assert!(s.records_appended >= 2);
    assert_eq!(server.records("db", "t").len() as u64, s.records_appended);
}

#[test]
fn several_threads_share_one_client() {
    let server = tls_server();
    let cfg = config_for(&server, &[("batch.bytes", "4096")]);
    let client = Arc::new(Client::new(&cfg, None, None).unwrap());
    let d0 = client.add_destination("db", "a", "json", None).unwrap();
    let d1 = client.add_destination("db", "b", "json", None).unwrap();
    let handles: Vec<_> = (0..4u64)
        .map(|t| {
            let c = client.clone();
            std::thread::spawn(move || {
                for i in 0..500 {
                    common::append(
                        &c,
                        if t % 2 == 0 { d0 } else { d1 },
                        record(t * 1000 + i).as_bytes(),
                    )
                    .unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    client.flush().unwrap();
    assert_eq!(
        server.records("db", "a").len() + server.records("db", "b").len(),
        2000
    );
}

#[test]
fn a_callback_may_call_another_client() {
    let server = tls_server();
    let cfg = config_for(&server, &[]);
    let other = Arc::new(Client::new(&cfg, None, None).unwrap());
    let od = other.add_destination("db", "relay", "csv", None).unwrap();
    let o2 = other.clone();
    let client = Client::new(
        &cfg,
        None,
        Some(Arc::new(move |r: &kusto_edge_core::DeliveryReport<'_>| {
            o2.append(od, format!("delivered,{}", r.records).as_bytes())
                .expect("another client is not locked");
        })),
    )
    .unwrap();
    let d = client.add_destination("db", "t", "csv", None).unwrap();
    common::append(&client, d, b"r,1").unwrap();
    client.flush().unwrap();
    other.flush().unwrap();
    assert_eq!(server.records("db", "relay"), vec![b"delivered,1".to_vec()]);
}

#[test]
fn a_chunk_refused_for_a_few_bad_records_is_split_until_only_they_are_rejected() {
    let server = Server::start(ServerConfig::default()).unwrap();
    let cfg = config_for(&server, &[]);
    let (client, reports) = client_with_reports(&cfg);
    let d = client.add_destination("db", "t", "json", None).unwrap();
    // Valid JSON the append check lets through, but not an object: the endpoint refuses any chunk holding one.
    let bad = [37u64, 38, 200];
    for seq in 0..256 {
        if bad.contains(&seq) {
            common::append(&client, d, format!("[{seq}]").as_bytes()).unwrap();
        } else {
            common::append(&client, d, record(seq).as_bytes()).unwrap();
        }
    }
    let e = client.flush().unwrap_err();
    assert_eq!(e.kind, ErrorKind::DataRejected, "{}", e.message);
    let mut got = seqs(&server, "db", "t");
    got.sort_unstable();
    let want: Vec<u64> = (0..256).filter(|s| !bad.contains(s)).collect();
    assert_eq!(got, want, "every good record once, none of the bad ones");
    let s = client.stats();
    assert_eq!(
        s.records_rejected, 3,
        "only the bad records are rejected: {s:?}"
    );
    assert_eq!(s.records_acknowledged, 253);
    assert_eq!(s.records_buffered, 0);
    let rejected: u64 = reports
        .0
        .lock()
        .unwrap()
        .iter()
        .filter(|r| r.0 == Outcome::Rejected)
        .map(|r| r.1)
        .sum();
    assert_eq!(rejected, 3);
    // Bounded: a few requests per bad record, not one per record.
    assert!(s.requests < 60, "{} requests", s.requests);
}

#[test]
fn a_chunk_whose_every_record_is_refused_costs_a_bounded_number_of_requests() {
    let server = Server::start(ServerConfig::default()).unwrap();
    let cfg = config_for(&server, &[]);
    let (client, _reports) = client_with_reports(&cfg);
    let d = client.add_destination("db", "t", "json", None).unwrap();
    for seq in 0..2000 {
        common::append(&client, d, format!("[{seq}]").as_bytes()).unwrap();
    }
    let e = client.flush().unwrap_err();
    assert_eq!(e.kind, ErrorKind::DataRejected, "{}", e.message);
    let s = client.stats();
    assert_eq!(s.records_rejected, 2000, "{s:?}");
    assert_eq!(s.records_buffered, 0);
    assert!(s.requests <= 1 + 64 + 21, "{} requests", s.requests);
}

#[test]
fn a_refused_batch_whose_records_do_not_match_the_format_boundaries_is_rejected_whole_not_miscounted(
) {
    let server = Server::start(ServerConfig::default()).unwrap();
    let cfg = config_for(&server, &[]);
    let (client, _reports) = client_with_reports(&cfg);
    let d = client
        .add_destination("db", "t", "multijson", None)
        .unwrap();
    // One record holding two values on two lines, then a refused one: the pieces cannot be counted exactly.
    common::append(&client, d, b"{\"a\":1}\n{\"a\":2}").unwrap();
    common::append(&client, d, b"[3]").unwrap();
    let e = client.flush().unwrap_err();
    assert_eq!(e.kind, ErrorKind::DataRejected, "{}", e.message);
    let s = client.stats();
    assert_eq!((s.records_rejected, s.records_buffered), (2, 0), "{s:?}");
    assert_eq!(s.requests, 1);
}
