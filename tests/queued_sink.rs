//! The queued sink against a scripted loopback DM and storage: what goes on the wire, byte for byte, and how it
//! reacts to storage answers. (The full end-to-end run over Azurite is `queued_e2e.rs`.) The fake answers every
//! request from one thread, records it, and can be told to answer some with a storage error.

use std::collections::VecDeque;
use std::io::BufReader;
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kusto_devserver::http::{framing, read_body, read_head, write_response, Request, Response};
use kusto_edge_core::client::{DeliveryReport, Outcome};
use kusto_edge_core::{Client, ClientOptions, Config};

#[derive(Default)]
struct Script {
    /// Every request, in order.
    log: Vec<Request>,
    /// Answers (status, storage error code) for the next storage requests, before the normal 201.
    storage_errors: VecDeque<(u16, &'static str)>,
    /// The signature handed out in SAS URLs: bumped by every resources fetch.
    generation: u32,
    /// The failure notification queue: (message id, base64 text). Another producer's message is in it too.
    failed: Vec<(String, String)>,
    /// Delete requests that named a message (its id).
    deleted: Vec<String>,
}

struct Fake {
    addr: SocketAddr,
    script: Arc<Mutex<Script>>,
}

impl Fake {
    fn start() -> Fake {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let script = Arc::new(Mutex::new(Script::default()));
        let s = script.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                let s = s.clone();
                std::thread::spawn(move || serve(conn, addr, s));
            }
        });
        Fake { addr, script }
    }

    fn requests(&self) -> Vec<Request> {
        self.script.lock().unwrap().log.clone()
    }
}

fn serve(conn: std::net::TcpStream, addr: SocketAddr, s: Arc<Mutex<Script>>) {
    conn.set_read_timeout(Some(Duration::from_secs(10))).ok();
    let mut w = conn.try_clone().unwrap();
    let mut r = BufReader::new(conn);
    while let Ok(Some(mut req)) = read_head(&mut r) {
        let Ok(f) = framing(&req, 64 << 20) else {
            return;
        };
        req.body = read_body(&mut r, f, 64 << 20).unwrap_or_default();
        let resp = answer(&req, addr, &mut s.lock().unwrap());
        if write_response(&mut w, &resp, false).is_err() {
            return;
        }
    }
}

fn v1(columns: &[&str], rows: &[Vec<String>]) -> String {
    let cols: Vec<String> = columns
        .iter()
        .map(|c| format!("{{\"ColumnName\":\"{c}\",\"DataType\":\"String\"}}"))
        .collect();
    let rows: Vec<String> = rows
        .iter()
        .map(|r| {
            let cells: Vec<String> = r.iter().map(|c| format!("\"{c}\"")).collect();
            format!("[{}]", cells.join(","))
        })
        .collect();
    format!(
        "{{\"Tables\":[{{\"TableName\":\"Table_0\",\"Columns\":[{}],\"Rows\":[{}]}}]}}",
        cols.join(","),
        rows.join(",")
    )
}

fn answer(req: &Request, addr: SocketAddr, s: &mut Script) -> Response {
    s.log.push(req.clone());
    let body = String::from_utf8_lossy(&req.body).to_string();
    if let Some(rest) = req.path.strip_prefix("/v1/rest/ingest/") {
        // The engine's streaming endpoint (managed mode): table NoStream has no streaming policy.
        if rest.ends_with("/NoStream") {
            return Response::json(400, r#"{"error":{"code":"BadRequest_StreamingIngestionPolicyNotEnabled","message":"Streaming ingestion policy is not enabled for the table","@permanent":true}}"#.into());
        }
        return Response::json(200, v1(&["ConsumedRecordsCount"], &[]));
    }
    if req.path == "/v1/rest/mgmt" {
        if body.contains(".get ingestion resources") {
            s.generation += 1;
            let g = s.generation;
            // .NET writes & as \u0026: the client must unescape.
            let rows = vec![
                vec![
                    "SecuredReadyForAggregationQueue".into(),
                    format!("http://{addr}/acct1/readyforaggregation-secured?sv=2024-11-04\\u0026sig=gen{g}"),
                ],
                vec![
                    "TempStorage".into(),
                    format!("http://{addr}/acct1/20261201-ingestdata-0?sv=2024-11-04\\u0026sig=gen{g}"),
                ],
                vec![
                    "FailedIngestionsQueue".into(),
                    format!("http://{addr}/acct1/failedingestions?sig=gen{g}"),
                ],
                vec!["SomethingNew".into(), "whatever".into()],
            ];
            return Response::json(200, v1(&["ResourceTypeName", "StorageRoot"], &rows));
        }
        if body.contains(".get kusto identity token") {
            return Response::json(
                200,
                v1(&["AuthorizationContext"], &[vec!["opaque-identity".into()]]),
            );
        }
        return Response::json(400, "{}".into());
    }
    if req.path == "/acct1/failedingestions/messages" && req.method == "GET" {
        let dequeue = !req.query.contains("peekonly=true");
        let mut xml = String::from("<?xml version=\"1.0\" encoding=\"utf-8\"?><QueueMessagesList>");
        for (id, text) in &s.failed {
            let pop = if dequeue {
                format!("<PopReceipt>pop+{id}</PopReceipt>")
            } else {
                String::new()
            };
            xml.push_str(&format!("<QueueMessage><MessageId>{id}</MessageId><InsertionTime>Mon, 01 Dec 2026 19:40:00 GMT</InsertionTime>{pop}<DequeueCount>1</DequeueCount><MessageText>{text}</MessageText></QueueMessage>"));
        }
        xml.push_str("</QueueMessagesList>");
        return Response::new(200).body(xml.into_bytes());
    }
    if let Some(id) = req.path.strip_prefix("/acct1/failedingestions/messages/") {
        if req.method == "DELETE" && req.query.contains(&format!("popreceipt=pop%2B{id}")) {
            s.deleted.push(id.to_owned());
            s.failed.retain(|(m, _)| m != id);
            return Response::new(204);
        }
        return Response::new(404);
    }
    if req.path == "/acct1/readyforaggregation-secured/messages" {
        // The DM: a message for table Missing fails permanently.
        let xml = String::from_utf8_lossy(&req.body).to_string();
        if let Some(b64) = xml
            .strip_prefix("<QueueMessage><MessageText>")
            .and_then(|x| x.strip_suffix("</MessageText></QueueMessage>"))
        {
            let json = String::from_utf8(kusto_devserver::b64::decode(b64).unwrap()).unwrap();
            if json.contains("\"TableName\":\"Missing\"") {
                let id = &json[7..43];
                let note = format!("{{\"OperationId\":\"op\",\"Database\":\"db\",\"Table\":\"Missing\",\"IngestionSourceId\":\"{id}\",\"Details\":\"Table 'Missing' was not found\",\"ErrorCode\":\"BadRequest_TableNotFound\",\"FailureStatus\":\"Permanent\",\"ShouldRetry\":false}}");
                let n = s.failed.len();
                s.failed.push((
                    format!("note{n}"),
                    kusto_devserver::b64::encode(note.as_bytes()),
                ));
            }
        }
    }
    if let Some((status, code)) = s.storage_errors.pop_front() {
        let xml = format!("<?xml version=\"1.0\" encoding=\"utf-8\"?><Error><Code>{code}</Code><Message>refused\nRequestId:x</Message></Error>");
        return Response::new(status)
            .header("Content-Type", "application/xml")
            .body(xml.into_bytes());
    }
    if !req.query.contains(&format!("sig=gen{}", s.generation)) {
        return Response::new(403)
            .body(b"<Error><Code>AuthenticationFailed</Code></Error>".to_vec());
    }
    Response::new(201)
}

type Reports = Arc<Mutex<Vec<(String, Outcome, bool, u64)>>>;

type Clock = Arc<kusto_edge_core::clock::ManualClock>;

fn client(fake: &Fake, extra: &[(&str, &str)]) -> (Client, Reports, Clock) {
    let mut cfg = Config::default();
    // The engine is the fake too (managed mode streams there; queued mode must never).
    cfg.set("url", &format!("http://{}", fake.addr)).unwrap();
    cfg.set("http.allow_plain", "true").unwrap();
    cfg.set("ingest.mode", "queued").unwrap();
    cfg.set("ingest.dm_url", &format!("http://{}", fake.addr))
        .unwrap();
    cfg.set("client.app", "queued-test").unwrap();
    cfg.set("retry.base_ms", "1").unwrap();
    cfg.set("retry.max_delay_ms", "2").unwrap();
    for (k, v) in extra {
        cfg.set(k, v).unwrap();
    }
    let reports: Reports = Arc::default();
    let r = reports.clone();
    cfg.set("log.level", "debug").unwrap();
    let clock = kusto_edge_core::clock::ManualClock::new();
    let c = Client::with_options(
        &cfg,
        ClientOptions {
            clock: Some(clock.clone()),
            // SAS signatures and the identity token are secrets: no log line may carry one.
            log: Some(Arc::new(|_, line: &str| {
                assert!(
                    !line.contains("sig=") && !line.contains("opaque-identity"),
                    "secret in a log line: {line}"
                );
            })),
            delivery: Some(Arc::new(move |d: &DeliveryReport<'_>| {
                r.lock()
                    .unwrap()
                    .push((d.chunk_id.to_owned(), d.outcome, d.is_final, d.raw_bytes))
            })),
            ..Default::default()
        },
    )
    .unwrap();
    (c, reports, clock)
}

fn message_json(req: &Request) -> String {
    let xml = String::from_utf8(req.body.clone()).unwrap();
    let b64 = xml
        .strip_prefix("<QueueMessage><MessageText>")
        .and_then(|s| s.strip_suffix("</MessageText></QueueMessage>"))
        .expect("queue message XML");
    String::from_utf8(kusto_devserver::b64::decode(b64).expect("standard base64")).unwrap()
}

#[test]
fn a_chunk_goes_up_as_a_blob_and_its_message_reaches_the_queue() {
    let fake = Fake::start();
    let (c, reports, _clock) = client(&fake, &[]);
    let d = c
        .add_destination("db", "T", "multijson", Some("map1"))
        .unwrap();
    let records = ["{\"a\":1}", "{\"a\":2}", "{\"a\":3}"];
    for r in records {
        c.append(d, r.as_bytes()).unwrap();
    }
    c.flush().unwrap();
    let reqs = fake.requests();
    let kinds: Vec<String> = reqs
        .iter()
        .map(|r| format!("{} {}", r.method, r.path))
        .collect();
    assert_eq!(
        kinds,
        [
            "POST /v1/rest/mgmt",
            "POST /v1/rest/mgmt",
            &("PUT /acct1/20261201-ingestdata-0/db__T__".to_owned()
                + &reports.lock().unwrap()[0].0
                + ".multijson.gz"),
            "POST /acct1/readyforaggregation-secured/messages",
        ]
    );
    // The management commands, as the doc has them.
    let m = &reqs[0];
    assert_eq!(
        String::from_utf8_lossy(&m.body),
        r#"{"db":"NetDefaultDB","csl":".get ingestion resources"}"#
    );
    assert_eq!(
        m.header("content-type"),
        Some("application/json; charset=utf-8")
    );
    assert_eq!(m.header("x-ms-version"), Some("2024-12-12"));
    assert!(m
        .header("x-ms-client-request-id")
        .unwrap()
        .starts_with("KEC.execute;"));
    assert_eq!(
        String::from_utf8_lossy(&reqs[1].body),
        r#"{"db":"NetDefaultDB","csl":".get kusto identity token"}"#
    );
    // The blob: exact length, block blob, the SAS unescaped.
    let put = &reqs[2];
    assert_eq!(put.header("x-ms-blob-type"), Some("BlockBlob"));
    assert_eq!(
        put.header("content-length"),
        Some(put.body.len().to_string().as_str())
    );
    assert!(put.header("x-ms-version").unwrap() >= "2019-12-12");
    assert_eq!(put.query, "sv=2024-11-04&sig=gen1");
    let raw = kusto_devserver::gzip::gunzip(&put.body, 1 << 20).unwrap();
    assert_eq!(raw, b"{\"a\":1}\n{\"a\":2}\n{\"a\":3}\n");
    // The message.
    let post = &reqs[3];
    assert_eq!(post.header("content-type"), Some("application/xml"));
    let json = message_json(post);
    let (id, outcome, is_final, raw_bytes) = reports.lock().unwrap()[0].clone();
    assert_eq!((outcome, is_final), (Outcome::Queued, false));
    assert_eq!(raw_bytes, raw.len() as u64);
    let blob = format!(
        "http://{}/acct1/20261201-ingestdata-0/db__T__{id}.multijson.gz?sv=2024-11-04&sig=gen1",
        fake.addr
    );
    let want_head = format!(
        "{{\"Id\":\"{id}\",\"BlobPath\":\"{blob}\",\"RawDataSize\":{},\"DatabaseName\":\"db\",\"TableName\":\"T\",\"RetainBlobOnSuccess\":true,\"FlushImmediately\":false,\"IgnoreSizeLimit\":false,\"ReportLevel\":0,\"ReportMethod\":0,\"SourceMessageCreationTime\":\"",
        raw.len()
    );
    assert!(json.starts_with(&want_head), "{json}");
    assert!(
        json.ends_with(",\"AdditionalProperties\":{\"authorizationContext\":\"opaque-identity\",\"format\":\"multijson\",\"ingestionMappingReference\":\"map1\",\"ingestionMappingType\":\"Json\"}}"),
        "{json}"
    );
    assert!(json.contains("\"ApplicationForTracing\":\"queued-test\""));
    assert_eq!(id, id.to_ascii_lowercase());
    // Nothing streamed.
    assert!(reqs.iter().all(|r| !r.path.starts_with("/v1/rest/ingest")));
    assert_eq!(c.stats().chunks_acknowledged, 1);
}

#[test]
fn resources_are_fetched_once_for_many_chunks() {
    let fake = Fake::start();
    let (c, reports, _clock) = client(&fake, &[("queued.report", "none")]);
    let d = c.add_destination("db", "T", "csv", None).unwrap();
    for i in 0..5 {
        c.append(d, format!("{i},x").as_bytes()).unwrap();
        c.flush().unwrap();
    }
    let reqs = fake.requests();
    let mgmt = reqs.iter().filter(|r| r.path == "/v1/rest/mgmt").count();
    assert_eq!(mgmt, 2, "one resources and one identity fetch");
    let posts: Vec<String> = reqs
        .iter()
        .filter(|r| r.path.ends_with("/messages"))
        .map(message_json)
        .collect();
    assert_eq!(posts.len(), 5);
    assert!(posts.iter().all(|j| j.contains("\"ReportLevel\":1")));
    let r = reports.lock().unwrap();
    assert_eq!(r.len(), 5);
    assert!(r.iter().all(|x| x.1 == Outcome::Queued));
    // Every chunk its own blob, named after its id, ending .csv.gz.
    let puts: Vec<&str> = reqs
        .iter()
        .filter(|r| r.method == "PUT")
        .map(|r| r.path.as_str())
        .collect();
    for (p, rep) in puts.iter().zip(r.iter()) {
        assert!(p.ends_with(&format!("__{}.csv.gz", rep.0)), "{p}");
    }
}

#[test]
fn a_storage_403_refreshes_the_resources_and_retries_with_the_new_sas() {
    let fake = Fake::start();
    let (c, reports, clock) = client(&fake, &[]);
    let d = c.add_destination("db", "T", "csv", None).unwrap();
    c.append(d, b"1,x").unwrap();
    c.flush().unwrap();
    // The SAS of generation 1 stops working: the next fetch hands out generation 2. The refresh is not
    // debounced away because the first resources are old enough by then.
    clock.advance(Duration::from_secs(11));
    fake.script.lock().unwrap().generation += 1;
    c.append(d, b"2,x").unwrap();
    c.flush().unwrap();
    let reqs = fake.requests();
    let kinds: Vec<String> = reqs[4..]
        .iter()
        .map(|r| format!("{} {}", r.method, &r.path[..r.path.len().min(10)]))
        .collect();
    assert_eq!(
        kinds,
        [
            "PUT /acct1/202",
            "POST /v1/rest/m",
            "POST /v1/rest/m",
            "PUT /acct1/202",
            "POST /acct1/rea"
        ]
    );
    assert!(reqs[7].query.ends_with("sig=gen3"));
    let r = reports.lock().unwrap();
    assert_eq!(r.len(), 2);
    assert!(r.iter().all(|x| x.1 == Outcome::Queued));
}

#[test]
fn storage_trouble_keeps_the_chunk_and_a_rejection_drops_it() {
    let fake = Fake::start();
    let (c, reports, clock) = client(&fake, &[("retry.max_attempts", "2")]);
    let d = c.add_destination("db", "T", "csv", None).unwrap();
    // Two busy answers: both attempts of one send fail (one container, one try each), the chunk stays in RAM.
    fake.script
        .lock()
        .unwrap()
        .storage_errors
        .extend([(503, "ServerBusy"), (503, "ServerBusy")]);
    c.append(d, b"1,x").unwrap();
    let e = c.flush().unwrap_err();
    assert_eq!(
        e.kind,
        kusto_edge_core::ErrorKind::TransientFailure,
        "{}",
        e.message
    );
    assert!(e.message.contains("ServerBusy"), "{}", e.message);
    assert!(!e.message.contains("sig="), "{}", e.message);
    assert_eq!(reports.lock().unwrap()[0].1, Outcome::Failed);
    // Storage is back: the same chunk (same id, same blob name) goes up.
    clock.advance(Duration::from_secs(600));
    c.flush().unwrap();
    let r = reports.lock().unwrap().clone();
    assert_eq!(r.last().unwrap().1, Outcome::Queued);
    assert_eq!(r.first().unwrap().0, r.last().unwrap().0);
    let puts: Vec<String> = fake
        .requests()
        .iter()
        .filter(|r| r.method == "PUT")
        .map(|r| r.path.clone())
        .collect();
    assert_eq!(puts.len(), 3);
    assert!(
        puts.iter().all(|p| p == &puts[0]),
        "one blob name: {puts:?}"
    );
    // A message the queue refuses as too large is refused data: reported, not retried.
    fake.script
        .lock()
        .unwrap()
        .storage_errors
        .extend([(413, "RequestBodyTooLarge")]);
    c.append(d, b"2,x").unwrap();
    let e = c.flush().unwrap_err();
    assert_eq!(
        e.kind,
        kusto_edge_core::ErrorKind::DataRejected,
        "{}",
        e.message
    );
    assert_eq!(reports.lock().unwrap().last().unwrap().1, Outcome::Rejected);
}

#[test]
fn a_spooled_queued_chunk_carries_no_sas_and_leaves_the_spool_once_queued() {
    let dir = std::env::temp_dir().join(format!("kedge-queued-spool-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let fake = Fake::start();
    let dir_s = dir.to_str().unwrap().to_owned();
    let (c, reports, clock) = client(&fake, &[("spool.dir", &dir_s), ("retry.max_attempts", "1")]);
    let d = c.add_destination("db", "T", "csv", None).unwrap();
    // Resources first, so that the SAS is in memory when the chunk goes to flash.
    c.append(d, b"0,x").unwrap();
    c.flush().unwrap();
    fake.script
        .lock()
        .unwrap()
        .storage_errors
        .extend([(500, "InternalError")]);
    c.append(d, b"1,x").unwrap();
    let e = c.flush().unwrap_err();
    assert_eq!(e.kind, kusto_edge_core::ErrorKind::Spooled, "{}", e.message);
    assert_eq!(c.stats().spool_chunks, 1);
    let mut files = 0;
    for entry in walk(&dir) {
        let bytes = std::fs::read(&entry).unwrap();
        files += 1;
        let hay = String::from_utf8_lossy(&bytes);
        assert!(
            !hay.contains("sig=") && !hay.contains("opaque-identity"),
            "{entry:?}"
        );
    }
    assert!(files > 0);
    clock.advance(Duration::from_secs(600));
    c.flush().unwrap();
    assert_eq!(c.stats().spool_chunks, 0);
    let r = reports.lock().unwrap();
    assert_eq!(
        r.iter().map(|x| x.1).collect::<Vec<_>>(),
        [Outcome::Queued, Outcome::Spooled, Outcome::Queued]
    );
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
fn managed_mode_streams_to_a_streaming_table_and_queues_for_one_without_after_one_refusal() {
    let fake = Fake::start();
    let (c, reports, _clock) = client(&fake, &[("ingest.mode", "managed")]);
    let on = c.add_destination("db", "T", "csv", None).unwrap();
    let off = c.add_destination("db", "NoStream", "csv", None).unwrap();
    for i in 0..3 {
        c.append(on, format!("{i},on").as_bytes()).unwrap();
        c.flush().unwrap();
    }
    let reqs = fake.requests();
    assert_eq!(reqs.len(), 3, "streamed, and nothing asked of the DM");
    assert!(reqs.iter().all(|r| r.path == "/v1/rest/ingest/db/T"));
    assert!(reqs[0]
        .header("x-ms-client-request-id")
        .unwrap()
        .starts_with("KEC.executeManagedStreamingIngest;"));
    for i in 0..3 {
        c.append(off, format!("{i},off").as_bytes()).unwrap();
        c.flush().unwrap();
    }
    let reqs = fake.requests();
    let refused = reqs
        .iter()
        .filter(|r| r.path == "/v1/rest/ingest/db/NoStream")
        .count();
    assert_eq!(refused, 1, "one refused streaming request, then queued");
    let posts: Vec<String> = reqs
        .iter()
        .filter(|r| r.path.ends_with("/messages"))
        .map(message_json)
        .collect();
    assert_eq!(posts.len(), 3);
    let r = reports.lock().unwrap();
    let outcomes: Vec<Outcome> = r.iter().map(|x| x.1).collect();
    assert_eq!(
        outcomes,
        [
            Outcome::Acknowledged,
            Outcome::Acknowledged,
            Outcome::Acknowledged,
            Outcome::Queued,
            Outcome::Queued,
            Outcome::Queued
        ]
    );
    // The refused chunk kept its id as the source id of its queued message.
    assert!(
        posts[0].starts_with(&format!("{{\"Id\":\"{}\"", r[3].0)),
        "{}",
        posts[0]
    );
}

#[test]
fn a_dm_failure_report_is_a_final_rejection_and_only_our_notifications_are_deleted() {
    let fake = Fake::start();
    // Another producer's failure report waits in the shared queue.
    let other = r#"{"IngestionSourceId":"11111111-2222-3333-4444-555555555555","ErrorCode":"BadRequest_EmptyBlob","FailureStatus":"Permanent"}"#;
    fake.script.lock().unwrap().failed.push((
        "theirs".into(),
        kusto_devserver::b64::encode(other.as_bytes()),
    ));
    let (c, reports, clock) = client(&fake, &[]);
    let good = c.add_destination("db", "T", "csv", None).unwrap();
    let missing = c.add_destination("db", "Missing", "csv", None).unwrap();
    c.append(good, b"1,x").unwrap();
    c.append(missing, b"2,x").unwrap();
    c.flush().unwrap();
    assert_eq!(reports.lock().unwrap().len(), 2);
    // The next poll reads the failure queue.
    clock.advance(Duration::from_secs(6));
    c.poll().unwrap();
    let r = reports.lock().unwrap().clone();
    assert_eq!(r.len(), 3, "{r:?}");
    let missing_id = &r
        .iter()
        .find(|x| x.1 == Outcome::Queued && r.iter().filter(|y| y.0 == x.0).count() == 2)
        .unwrap()
        .0;
    let last = r.last().unwrap();
    assert_eq!(
        (&last.0, last.1, last.2),
        (missing_id, Outcome::Rejected, true)
    );
    let s = fake.script.lock().unwrap();
    assert_eq!(s.deleted, ["note1"], "only our notification is deleted");
    assert_eq!(s.failed.len(), 1);
    assert_eq!(s.failed[0].0, "theirs");
    drop(s);
    assert_eq!(c.stats().chunks_rejected, 1);
    // Nothing awaits a report about the missing table any more; the good chunk is still tracked (silence is
    // success with failures-only reports) and the queue is read again only after a while.
    let before = fake.requests().len();
    c.poll().unwrap();
    assert_eq!(fake.requests().len(), before, "not read again at once");
}
