//! The server over real loopback sockets: what the service accepts, refuses, and how it misbehaves.

mod common;

use std::io::Read;
use std::time::{Duration, Instant};

use common::{connect, connect_tls, sdk_headers, tls_config};
use kusto_devserver::{gzip::gzip, Fault, Faults, Server, ServerConfig};

const SUCCESS_3: &str = r#"{"Tables":[{"TableName":"Table_0","Columns":[{"ColumnName":"ConsumedRecordsCount","DataType":"Int64"},{"ColumnName":"UpdatePolicyStatus","DataType":"String"},{"ColumnName":"UpdatePolicyFailureCode","DataType":"String"},{"ColumnName":"UpdatePolicyFailureReason","DataType":"String"}],"Rows":[[3,"Inactive","Unknown",null]]}]}"#;

fn start(cfg: ServerConfig) -> Server {
    Server::start(cfg).unwrap()
}

fn error_of(resp: &common::Resp) -> serde_json::Value {
    assert!(
        resp.header("content-type")
            .unwrap()
            .starts_with("application/json"),
        "{resp:?}"
    );
    resp.json()["error"].clone()
}

#[test]
fn gzip_csv_is_stored_and_answered_with_the_exact_v1_data_set() {
    let s = start(ServerConfig::default());
    let mut c = connect(s.addr());
    let r = c
        .ingest(
            "db",
            "Events",
            "csv",
            "KEC.executeStreamingIngest;abc",
            b"a,1\nb,2\r\nc,3\n",
        )
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-type"),
        Some("application/json; charset=utf-8")
    );
    assert!(r.header("x-ms-activity-id").is_some_and(|v| v.len() == 36));
    assert_eq!(r.text(), SUCCESS_3);
    assert_eq!(
        s.records("db", "Events"),
        vec![b"a,1".to_vec(), b"b,2".to_vec(), b"c,3".to_vec()]
    );
    let log = s.requests();
    assert_eq!(log.len(), 1);
    let l = &log[0];
    assert_eq!(
        (l.database.as_str(), l.table.as_str(), l.format.as_str()),
        ("db", "Events", "csv")
    );
    assert_eq!(l.client_request_id, "KEC.executeStreamingIngest;abc");
    assert!(l.gzip_ok && l.ingested);
    assert_eq!((l.status, l.records, l.raw_bytes), (200, 3, 13));
    assert!(l
        .headers
        .iter()
        .any(|(k, v)| k == "x-ms-version" && v == "2024-12-12"));
}

#[test]
fn keep_alive_serves_two_requests_on_one_connection() {
    let s = start(ServerConfig::default());
    let mut c = connect(s.addr());
    assert_eq!(
        c.ingest("db", "T", "json", "r1", b"{\"a\":1}\n")
            .unwrap()
            .status,
        200
    );
    assert_eq!(
        c.ingest("db", "T", "json", "r2", b"{\"a\":2}\n{\"a\":3}\n")
            .unwrap()
            .status,
        200
    );
    assert_eq!(s.records("db", "T").len(), 3);
    // Connection: close is honoured.
    let mut h = sdk_headers("r3");
    h.push(("Connection".into(), "close".into()));
    let r = c
        .request("POST", "/v1/rest/ingest/db/T?streamFormat=csv", &h, b"x\n")
        .unwrap();
    assert_eq!(r.header("connection"), Some("close"));
    let mut rest = Vec::new();
    assert_eq!(c.r.read_to_end(&mut rest).unwrap(), 0);
}

#[test]
fn chunked_body_and_percent_encoded_names_are_understood() {
    let s = start(ServerConfig::default());
    let mut c = connect(s.addr());
    let body = gzip(b"{\"x\":1}{\"x\":2}");
    let (a, b) = body.split_at(7);
    let mut req =
        b"POST /v1/rest/ingest/my%20db/T%2D1?streamFormat=multijson&mappingName=m%261 HTTP/1.1\r\n\
Host: x\r\nx-ms-client-request-id: c1\r\nx-ms-version: 2024-12-12\r\nContent-Encoding: gzip\r\n\
Transfer-Encoding: chunked\r\n\r\n"
            .to_vec();
    for part in [a, b] {
        req.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
        req.extend_from_slice(part);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    c.send_raw(&req).unwrap();
    let r = c.read_response().unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        s.records("my db", "T-1"),
        vec![b"{\"x\":1}".to_vec(), b"{\"x\":2}".to_vec()]
    );
    assert_eq!(s.requests()[0].mapping.as_deref(), Some("m&1"));
}

#[test]
fn expect_continue_gets_a_100_before_the_body() {
    let s = start(ServerConfig::default());
    let mut c = connect(s.addr());
    let mut h = sdk_headers("e1");
    h.push(("Expect".into(), "100-continue".into()));
    let r = c
        .request("POST", "/v1/rest/ingest/db/T?streamFormat=csv", &h, b"a\n")
        .unwrap();
    assert_eq!(r.status, 200);
}

#[test]
fn bad_gzip_is_refused_as_permanent_bad_data() {
    let s = start(ServerConfig::default());
    let good = gzip(b"a,1\nb,2\n");
    let n = good.len();
    let mut bad_crc = good.clone();
    bad_crc[n - 6] ^= 0xff;
    let mut bad_magic = good.clone();
    bad_magic[1] = 0;
    let truncated = good[..n - 5].to_vec();
    let mut c = connect(s.addr());
    for body in [bad_crc, bad_magic, truncated] {
        let mut h = sdk_headers("KEC.executeStreamingIngest;bad");
        h.push(("Content-Encoding".into(), "gzip".into()));
        let r = c
            .request("POST", "/v1/rest/ingest/db/T?streamFormat=csv", &h, &body)
            .unwrap();
        assert_eq!(r.status, 400);
        let e = error_of(&r);
        assert_eq!(e["code"], "BadRequest_InvalidArchive");
        assert_eq!(e["@permanent"], true);
        assert_eq!(e["@failureCode"], 400);
        assert_eq!(
            e["@context"]["clientRequestId"],
            "KEC.executeStreamingIngest;bad"
        );
        assert_eq!(
            e["@context"]["activityId"].as_str(),
            r.header("x-ms-activity-id")
        );
    }
    assert!(s.records("db", "T").is_empty());
    assert!(s.requests().iter().all(|l| !l.ingested && !l.gzip_ok));
}

/// One gzip member written by flate2 (not by the library under test) at level 9, with a file name
/// and, when `all_fields`, a comment, an extra field and a modification time in the header.
fn flate2_member(raw: &[u8], all_fields: bool) -> Vec<u8> {
    use std::io::Write;
    let mut b = flate2::GzBuilder::new().filename("chunk.csv");
    if all_fields {
        b = b
            .comment("spooled")
            .extra(vec![b'K', b'E', 1, 0, 9])
            .mtime(1_700_000_000);
    }
    let mut enc = b.write(Vec::new(), flate2::Compression::best());
    enc.write_all(raw).unwrap();
    enc.finish().unwrap()
}

/// The protocol doc: members one after another are one valid gzip stream (RFC 1952), and the header's
/// optional fields are the encoder's business. The limit is on the raw data of the whole body.
#[test]
fn gzip_from_another_encoder_multi_member_with_file_names_is_accepted() {
    let s = start(ServerConfig {
        max_raw_bytes: 64 * 1024,
        ..ServerConfig::default()
    });
    let mut c = connect(s.addr());
    let post = |c: &mut common::Conn, crid: &str, body: &[u8]| {
        let mut h = sdk_headers(crid);
        h.push(("Content-Encoding".into(), "gzip".into()));
        c.request("POST", "/v1/rest/ingest/db/T?streamFormat=csv", &h, body)
            .unwrap()
    };
    let mut body = flate2_member(b"a,1\nb,2\n", false);
    assert_eq!(body[3], 0x08, "FNAME set");
    body.extend_from_slice(&flate2_member(b"c,3\n", true));
    let r = post(&mut c, "KEC.executeStreamingIngest;f9", &body);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), SUCCESS_3);
    assert_eq!(
        s.records("db", "T"),
        vec![b"a,1".to_vec(), b"b,2".to_vec(), b"c,3".to_vec()]
    );
    let l = s.requests().pop().unwrap();
    assert!(l.gzip_ok && l.ingested);
    assert_eq!((l.records, l.raw_bytes), (3, 12));

    // Each member is under the limit, together they are over it: refused as too large, permanently.
    let half = b"x,1\n".repeat(9 * 1024);
    let mut over = flate2_member(&half, true);
    over.extend_from_slice(&flate2_member(&half, false));
    let r = post(&mut c, "KEC.executeStreamingIngest;big", &over);
    assert_eq!(r.status, 413);
    let e = error_of(&r);
    assert_eq!(e["code"], "Stream_InputStreamTooLarge");
    assert_eq!(e["@permanent"], true);

    // What follows the last member must be another member: anything else is a bad archive.
    let mut trailing = flate2_member(b"d,4\n", true);
    trailing.extend_from_slice(&[0, 0, 0, 0]);
    let r = post(&mut c, "KEC.executeStreamingIngest;tail", &trailing);
    assert_eq!(r.status, 400);
    assert_eq!(error_of(&r)["code"], "BadRequest_InvalidArchive");
    assert_eq!(s.records("db", "T").len(), 3);
}

#[test]
fn oversize_bodies_are_refused_without_reading_forever() {
    let s = start(ServerConfig {
        max_raw_bytes: 1000,
        ..ServerConfig::default()
    });
    let mut c = connect(s.addr());
    // Inflates past the raw limit.
    let r = c
        .ingest("db", "T", "csv", "big", &vec![b'a'; 5000])
        .unwrap();
    assert_eq!(r.status, 413);
    let e = error_of(&r);
    assert_eq!(e["code"], "Stream_InputStreamTooLarge");
    assert_eq!(e["@permanent"], true);
    // Uncompressed over the raw limit.
    let r = c
        .request(
            "POST",
            "/v1/rest/ingest/db/T?streamFormat=csv",
            &sdk_headers("big2"),
            &vec![b'a'; 1001],
        )
        .unwrap();
    assert_eq!(r.status, 413);
    // Declared over the wire limit: answered at once, body never read, connection closed.
    let mut c = connect(s.addr());
    let t0 = Instant::now();
    c.send_raw(
        b"POST /v1/rest/ingest/db/T?streamFormat=csv HTTP/1.1\r\nx-ms-client-request-id: huge\r\n\
x-ms-version: 1\r\nContent-Length: 999999999\r\n\r\nabc",
    )
    .unwrap();
    let r = c.read_response().unwrap();
    assert_eq!(r.status, 413);
    assert_eq!(r.header("connection"), Some("close"));
    assert!(t0.elapsed() < Duration::from_secs(5));
    assert!(s.records("db", "T").is_empty());
    let last = s.requests().pop().unwrap();
    assert_eq!((last.status, last.wire_bytes), (413, 999_999_999));
}

#[test]
fn bearer_token_is_required_when_configured() {
    let s = start(ServerConfig {
        token: Some("sekret".into()),
        ..ServerConfig::default()
    });
    let mut c = connect(s.addr());
    let target = "/v1/rest/ingest/db/T?streamFormat=csv";
    let r = c
        .request("POST", target, &sdk_headers("a1"), b"x\n")
        .unwrap();
    assert_eq!(r.status, 401);
    assert_eq!(error_of(&r)["@permanent"], true);
    let mut h = sdk_headers("a2");
    h.push(("Authorization".into(), "Bearer wrong".into()));
    let r = c.request("POST", target, &h, b"x\n").unwrap();
    assert_eq!(r.status, 401);
    assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    let mut h = sdk_headers("a3");
    h.push(("Authorization".into(), "Bearer sekret".into()));
    assert_eq!(c.request("POST", target, &h, b"x\n").unwrap().status, 200);
    assert_eq!(s.records("db", "T").len(), 1);
}

#[test]
fn unknown_tables_and_mappings_are_entity_errors() {
    let s = start(ServerConfig {
        tables: Some(vec![("db".into(), "T".into())]),
        mappings: Some(vec!["m1".into()]),
        ..ServerConfig::default()
    });
    let mut c = connect(s.addr());
    let r = c.ingest("db", "Nope", "csv", "t1", b"x\n").unwrap();
    assert_eq!(r.status, 400);
    let e = error_of(&r);
    assert_eq!(e["code"], "BadRequest_EntityNotFound");
    assert_eq!(
        e["@message"],
        "Entity ID 'Nope' of kind 'Table' was not found."
    );
    assert_eq!(e["@permanent"], true);
    let r = c.ingest("otherdb", "T", "csv", "t2", b"x\n").unwrap();
    assert_eq!(
        error_of(&r)["@message"],
        "Entity ID 'otherdb' of kind 'Database' was not found."
    );
    let h = sdk_headers("t3");
    let r = c
        .request(
            "POST",
            "/v1/rest/ingest/db/T?streamFormat=json&mappingName=m2",
            &h,
            b"{}\n",
        )
        .unwrap();
    assert_eq!(r.status, 400);
    assert_eq!(
        error_of(&r)["code"],
        "BadRequest_MappingReferenceWasNotFound"
    );
    let r = c
        .request(
            "POST",
            "/v1/rest/ingest/db/T?streamFormat=json&mappingName=m1",
            &h,
            b"{}\n",
        )
        .unwrap();
    assert_eq!(r.status, 200);
}

#[test]
fn malformed_requests_get_the_service_errors() {
    let s = start(ServerConfig::default());
    let mut c = connect(s.addr());
    let h = sdk_headers("m1");
    let r = c
        .request("POST", "/v1/rest/ingest/db/T?streamFormat=xml", &h, b"x\n")
        .unwrap();
    assert_eq!(
        (r.status, error_of(&r)["code"].as_str().unwrap()),
        (400, "BadRequest_FormatNotSupported")
    );
    let r = c
        .request("POST", "/v1/rest/ingest/db/T", &h, b"x\n")
        .unwrap();
    assert_eq!(
        (r.status, error_of(&r)["code"].as_str().unwrap()),
        (400, "General_BadRequest")
    );
    let r = c
        .request("POST", "/v1/rest/ingest/db/T?streamFormat=csv", &[], b"x\n")
        .unwrap();
    assert_eq!(r.status, 400);
    assert!(error_of(&r)["@message"]
        .as_str()
        .unwrap()
        .contains("x-ms-client-request-id"));
    let only_id = vec![("x-ms-client-request-id".to_string(), "m2".to_string())];
    let r = c
        .request(
            "POST",
            "/v1/rest/ingest/db/T?streamFormat=csv",
            &only_id,
            b"x\n",
        )
        .unwrap();
    assert!(error_of(&r)["@message"]
        .as_str()
        .unwrap()
        .contains("x-ms-version"));
    let r = c
        .request("POST", "/v1/rest/ingest/db?streamFormat=csv", &h, b"x\n")
        .unwrap();
    assert_eq!(r.status, 404);
    let r = c
        .request("GET", "/v1/rest/ingest/db/T?streamFormat=csv", &h, b"")
        .unwrap();
    assert_eq!(r.status, 405);
    let r = c
        .request("POST", "/v1/rest/ingest/db/T?streamFormat=csv", &h, b"")
        .unwrap();
    assert_eq!(
        (r.status, error_of(&r)["code"].as_str().unwrap()),
        (400, "Stream_NoDataToIngest")
    );
    // Uppercase format names (Go sends CamelCase) are fine, and uncompressed text too.
    let r = c
        .request("POST", "/v1/rest/ingest/db/T?streamFormat=CSV", &h, b"x\n")
        .unwrap();
    assert_eq!(r.status, 200);
    assert!(r.header("x-ms-activity-id").is_some());
}

#[test]
fn json_lines_are_validated_and_multijson_is_split_per_object() {
    let s = start(ServerConfig::default());
    let mut c = connect(s.addr());
    let r = c
        .ingest("db", "J", "json", "j1", b"{\"a\":1}\n{\"a\":2,\n")
        .unwrap();
    assert_eq!(r.status, 400);
    assert_eq!(error_of(&r)["@permanent"], true);
    assert!(s.records("db", "J").is_empty(), "all or nothing");
    let r = c
        .ingest("db", "J", "json", "j2", b"{\"a\":1}\r\n\n{\"a\":2}\n")
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["Tables"][0]["Rows"][0][0], 2);
    let r = c
        .ingest(
            "db",
            "M",
            "multijson",
            "j3",
            b"{\"a\":1}{\"b\":\n 2}\n  {\"c\":[{}]}",
        )
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(
        s.records("db", "M"),
        vec![
            b"{\"a\":1}".to_vec(),
            b"{\"b\":\n 2}".to_vec(),
            b"{\"c\":[{}]}".to_vec()
        ]
    );
    let r = c
        .ingest("db", "M", "multijson", "j4", b"{\"a\":1} nope")
        .unwrap();
    assert_eq!(r.status, 400);
    let r = c
        .request(
            "POST",
            "/v1/rest/ingest/db/P?streamFormat=parquet",
            &sdk_headers("p"),
            b"PAR1\n\0\nx",
        )
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(s.records("db", "P"), vec![b"PAR1\n\0\nx".to_vec()]);
}

fn ingest_one(s: &Server, crid: &str) -> std::io::Result<common::Resp> {
    connect(s.addr()).ingest("db", "F", "csv", crid, b"row\n")
}

#[test]
fn each_scripted_fault_behaves_as_described() {
    let s = start(ServerConfig::default());
    let cases: Vec<(Fault, u16, Option<&str>, bool)> = vec![
        (
            Fault::Throttle {
                retry_after: Some("1".into()),
            },
            429,
            Some("General_ThrottledIngestion"),
            false,
        ),
        (
            Fault::Throttle { retry_after: None },
            429,
            Some("General_ThrottledIngestion"),
            false,
        ),
        (
            Fault::Unavailable {
                retry_after: Some("2".into()),
            },
            503,
            None,
            false,
        ),
        (
            Fault::InternalError,
            500,
            Some("General_InternalServerError"),
            false,
        ),
        (
            Fault::TransientError,
            400,
            Some("General_InternalServerError"),
            false,
        ),
        (
            Fault::RejectData,
            400,
            Some("Stream_WrongNumberOfFields"),
            true,
        ),
        (
            Fault::TableMissing,
            400,
            Some("BadRequest_EntityNotFound"),
            true,
        ),
        (
            Fault::StreamingDisabled,
            400,
            Some("BadRequest_StreamingIngestionPolicyNotEnabled"),
            true,
        ),
        (Fault::Unauthorized, 401, Some("Unauthorized"), true),
        (Fault::Forbidden, 403, Some("Forbidden"), true),
    ];
    for (fault, status, code, permanent) in cases {
        s.push_fault(fault.clone());
        let r = ingest_one(&s, "f").unwrap();
        assert_eq!(r.status, status, "{fault:?}");
        assert!(r.header("x-ms-activity-id").is_some());
        if let Fault::Throttle {
            retry_after: Some(v),
        }
        | Fault::Unavailable {
            retry_after: Some(v),
        } = &fault
        {
            assert_eq!(r.header("retry-after"), Some(v.as_str()));
        }
        match code {
            Some(code) => {
                let e = error_of(&r);
                assert_eq!(e["code"], code, "{fault:?}");
                assert_eq!(e["@permanent"], permanent, "{fault:?}");
                assert_eq!(e["@failureCode"], status);
            }
            None => assert!(r.body.is_empty()),
        }
    }
    assert!(
        s.records("db", "F").is_empty(),
        "no failed request stores anything"
    );

    // Scripted faults are FIFO and consumed one per request.
    s.push_fault(Fault::EmptyOk);
    s.push_fault(Fault::GarbageOk);
    let r = ingest_one(&s, "e").unwrap();
    assert_eq!((r.status, r.body.len()), (200, 0));
    let r = ingest_one(&s, "g").unwrap();
    assert_eq!(r.status, 200);
    assert!(serde_json::from_slice::<serde_json::Value>(&r.body).is_err());
    assert_eq!(ingest_one(&s, "ok").unwrap().status, 200);
    assert_eq!(s.records("db", "F").len(), 1);

    // Reset: no answer, nothing stored.
    s.push_fault(Fault::Reset);
    assert!(ingest_one(&s, "reset").is_err());
    assert_eq!(s.records("db", "F").len(), 1);
    // LoseReply: no answer, but stored; the retry duplicates.
    s.push_fault(Fault::LoseReply);
    assert!(ingest_one(&s, "lost").is_err());
    assert_eq!(s.records("db", "F").len(), 2);
    assert_eq!(ingest_one(&s, "lost").unwrap().status, 200);
    assert_eq!(s.records("db", "F").len(), 3);
    assert_eq!(s.stats().duplicate_request_ids, 1);
    assert_eq!(s.stats().duplicate_chunks, 1);
    // Slow: answered normally, late.
    s.push_fault(Fault::Slow(Duration::from_millis(300)));
    let t0 = Instant::now();
    assert_eq!(ingest_one(&s, "slow").unwrap().status, 200);
    assert!(t0.elapsed() >= Duration::from_millis(300));

    let log = s.requests();
    let statuses: Vec<u16> = log.iter().rev().take(5).map(|l| l.status).collect();
    assert_eq!(statuses, vec![200, 200, 0, 0, 200]);
    assert!(
        log.iter().rev().nth(2).unwrap().ingested,
        "the lost reply was ingested"
    );
    assert!(
        !log.iter().rev().nth(3).unwrap().ingested,
        "the reset was not"
    );
}

#[test]
fn reset_is_a_real_rst() {
    let s = start(ServerConfig::default());
    s.push_fault(Fault::Reset);
    let e = ingest_one(&s, "r").unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}");
}

#[test]
fn random_faults_are_deterministic_per_seed() {
    let run = |seed: u64| {
        let s = start(ServerConfig::default());
        s.set_faults(Faults {
            seed,
            random: vec![
                (Fault::Throttle { retry_after: None }, 0.3),
                (Fault::Unavailable { retry_after: None }, 0.2),
                (Fault::InternalError, 0.1),
            ],
        });
        let mut c = connect(s.addr());
        (0..40)
            .map(|i| {
                c.ingest("db", "R", "csv", &format!("r{i}"), b"x\n")
                    .unwrap()
                    .status
            })
            .collect::<Vec<_>>()
    };
    let a = run(42);
    assert_eq!(a, run(42));
    assert_ne!(a, run(43));
    assert!(
        a.contains(&200) && a.contains(&429) && a.contains(&503),
        "{a:?}"
    );
}

#[test]
fn scripted_faults_go_before_random_ones_and_reset_clears_everything() {
    let s = start(ServerConfig::default());
    s.set_faults(Faults {
        seed: 1,
        random: vec![(Fault::InternalError, 1.0)],
    });
    s.push_fault(Fault::Forbidden);
    assert_eq!(ingest_one(&s, "1").unwrap().status, 403);
    assert_eq!(ingest_one(&s, "2").unwrap().status, 500);
    s.reset();
    assert!(s.requests().is_empty());
    assert_eq!(ingest_one(&s, "3").unwrap().status, 200);
    assert_eq!(s.records("db", "F").len(), 1);
}

#[test]
fn tls_works_with_the_test_ca_and_fails_without_it() {
    let s = start(ServerConfig {
        tls: true,
        ..ServerConfig::default()
    });
    assert!(s.url().starts_with("https://localhost:"));
    let ca = s.ca_pem().unwrap();
    assert!(ca.starts_with("-----BEGIN CERTIFICATE-----"));
    for host in ["localhost", "127.0.0.1"] {
        let mut c = connect_tls(s.addr(), tls_config(Some(&ca)), host);
        assert_eq!(
            c.ingest("db", "S", "csv", "tls1", b"a\n").unwrap().status,
            200
        );
        assert_eq!(
            c.ingest("db", "S", "csv", "tls2", b"b\n").unwrap().status,
            200
        );
    }
    assert_eq!(s.records("db", "S").len(), 4);
    let mut c = connect_tls(s.addr(), tls_config(None), "localhost");
    let e = c.ingest("db", "S", "csv", "tls3", b"c\n").unwrap_err();
    assert!(
        e.to_string().contains("UnknownIssuer") || e.to_string().contains("certificate"),
        "{e}"
    );
    assert_eq!(s.records("db", "S").len(), 4);
}

#[test]
fn resends_of_one_chunk_count_as_one_duplicate_chunk_and_their_records_as_duplicates() {
    let s = start(ServerConfig::default());
    let mut c = connect(s.addr());
    let chunk_a = "KEC.executeStreamingIngest;6f1c2a9e-0d4b-4c1e-8a57-3b9e2f0c7d41";
    let send = |c: &mut common::Conn, table: &str, crid: &str, raw: &[u8]| {
        c.ingest("db", table, "csv", crid, raw).unwrap().status
    };
    assert_eq!(
        send(
            &mut c,
            "D",
            &format!("{chunk_a};1"),
            b"a,1
b,2
"
        ),
        200
    );
    // The answer was lost, say: the client sends the same chunk again as attempt 2.
    assert_eq!(
        send(
            &mut c,
            "D",
            &format!("{chunk_a};2"),
            b"a,1
b,2
"
        ),
        200
    );
    let st = s.stats();
    assert_eq!(st.duplicate_chunks, 1);
    assert_eq!(st.duplicate_records, 2);
    assert_eq!(
        st.duplicate_request_ids, 0,
        "every attempt has its own request id"
    );
    let log = s.requests();
    assert_eq!(log[1].chunk_id, chunk_a);

    // Another chunk that repeats one record: a duplicate record, not a duplicate chunk.
    assert_eq!(
        send(
            &mut c,
            "D",
            "KEC.executeStreamingIngest;chunk-b;1",
            b"b,2
c,3
"
        ),
        200
    );
    // The same bytes in another table are that table's first.
    assert_eq!(
        send(
            &mut c,
            "E",
            "KEC.executeStreamingIngest;chunk-c;1",
            b"a,1
"
        ),
        200
    );
    // A resend the server refused stored nothing: no duplicate.
    s.push_fault(Fault::Throttle { retry_after: None });
    assert_eq!(
        send(
            &mut c,
            "D",
            &format!("{chunk_a};3"),
            b"a,1
b,2
"
        ),
        429
    );
    let st = s.stats();
    assert_eq!((st.duplicate_chunks, st.duplicate_records), (1, 3));

    // Over HTTP, next to the old counter.
    let j = c.request("GET", "/_dev/stats", &[], b"").unwrap().json();
    assert_eq!(j["duplicate_chunks"], 1);
    assert_eq!(j["duplicate_records"], 3);
    assert_eq!(j["duplicate_request_ids"], 0);
    let j = c.request("GET", "/_dev/requests", &[], b"").unwrap().json();
    assert_eq!(j[0]["chunk_id"], chunk_a);
    assert_eq!(j[0]["client_request_id"], format!("{chunk_a};1"));

    // Reset forgets what was seen.
    s.reset();
    assert_eq!(
        send(
            &mut c,
            "D",
            &format!("{chunk_a};4"),
            b"a,1
"
        ),
        200
    );
    let st = s.stats();
    assert_eq!((st.duplicate_chunks, st.duplicate_records), (0, 0));
}

#[test]
fn control_endpoints_steer_the_server() {
    let s = start(ServerConfig::default());
    let mut c = connect(s.addr());
    let r = c
        .request("POST", "/_dev/fault", &[], b"429 retry-after=1\nreject\n")
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        c.request("POST", "/_dev/fault", &[], b"bogus\n")
            .unwrap()
            .status,
        400
    );
    assert_eq!(ingest_one(&s, "c1").unwrap().status, 429);
    assert_eq!(ingest_one(&s, "c2").unwrap().status, 400);
    assert_eq!(ingest_one(&s, "c3").unwrap().status, 200);
    assert_eq!(ingest_one(&s, "c3").unwrap().status, 200);
    let r = c
        .request("GET", "/_dev/records?db=db&table=F", &[], b"")
        .unwrap();
    assert_eq!(r.text(), "row\nrow\n");
    let st = c.request("GET", "/_dev/stats", &[], b"").unwrap().json();
    assert_eq!(st["requests"], 4);
    assert_eq!(st["ingested_requests"], 2);
    assert_eq!(st["records"], 2);
    assert_eq!(st["duplicate_request_ids"], 1);
    assert_eq!(st["duplicate_chunks"], 1);
    assert_eq!(st["duplicate_records"], 1);
    assert_eq!(st["tables"]["db.F"], 2);
    // Random faults over HTTP.
    assert_eq!(
        c.request("POST", "/_dev/random-faults?seed=5", &[], b"403:1.0")
            .unwrap()
            .status,
        200
    );
    assert_eq!(ingest_one(&s, "c4").unwrap().status, 403);
    assert_eq!(
        c.request("POST", "/_dev/random-faults", &[], b"")
            .unwrap()
            .status,
        200
    );
    assert_eq!(ingest_one(&s, "c5").unwrap().status, 200);
    // An outage: every ingest is closed unanswered, then it heals.
    assert_eq!(
        c.request("POST", "/_dev/down?secs=0.5", &[], b"")
            .unwrap()
            .status,
        200
    );
    assert!(ingest_one(&s, "c6").is_err());
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(ingest_one(&s, "c7").unwrap().status, 200);
    assert_eq!(
        c.request("POST", "/_dev/reset", &[], b"").unwrap().status,
        200
    );
    assert_eq!(
        c.request("GET", "/_dev/stats", &[], b"").unwrap().json()["requests"],
        0
    );
    assert!(!s.shutdown_requested());
    assert_eq!(
        c.request("POST", "/_dev/shutdown", &[], b"")
            .unwrap()
            .status,
        200
    );
    assert!(s.shutdown_requested());
}

#[test]
fn stopping_closes_idle_connections_promptly() {
    let s = start(ServerConfig::default());
    let mut idle = connect(s.addr());
    assert_eq!(
        idle.ingest("db", "T", "csv", "i", b"x\n").unwrap().status,
        200
    );
    let t0 = Instant::now();
    s.stop();
    assert!(t0.elapsed() < Duration::from_secs(3));
    let mut buf = Vec::new();
    assert!(matches!(idle.r.read_to_end(&mut buf), Ok(0) | Err(_)));
}

#[test]
fn many_concurrent_clients_are_served() {
    let s = start(ServerConfig::default());
    let addr = s.addr();
    let threads: Vec<_> = (0..16)
        .map(|t| {
            std::thread::spawn(move || {
                let mut c = connect(addr);
                for i in 0..10 {
                    let r = c
                        .ingest(
                            "db",
                            "C",
                            "csv",
                            &format!("{t}-{i}"),
                            format!("{t},{i}\n").as_bytes(),
                        )
                        .unwrap();
                    assert_eq!(r.status, 200);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(s.records("db", "C").len(), 160);
}

#[test]
fn connections_over_the_limit_are_closed_and_the_limit_frees_up() {
    let s = start(ServerConfig::default());
    let mut held: Vec<_> = (0..kusto_devserver::MAX_CONNECTIONS)
        .map(|_| connect(s.addr()))
        .collect();
    // Make sure all of them were accepted and are being served.
    assert_eq!(
        held[kusto_devserver::MAX_CONNECTIONS - 1]
            .ingest("db", "L", "csv", "last", b"x\n")
            .unwrap()
            .status,
        200
    );
    let mut extra = connect(s.addr());
    let mut buf = Vec::new();
    assert!(
        matches!(extra.r.read_to_end(&mut buf), Ok(0) | Err(_)),
        "over the limit: closed unanswered"
    );
    held.truncate(10);
    let t0 = Instant::now();
    loop {
        let mut c = connect(s.addr());
        if let Ok(r) = c.ingest("db", "L", "csv", "again", b"y\n") {
            assert_eq!(r.status, 200);
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(5), "limit never freed");
        std::thread::sleep(Duration::from_millis(20));
    }
}
