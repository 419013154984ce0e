//! Writes the starting corpus of every target into `fuzz/seeds/<target>/`: real answers of the service and of
//! Entra ID, connection strings, and spool chunks made by `Spool::push` (in clear and sealed under the key of the
//! `spool_open` target), which the fuzzer could never forge past their checksums and tags on its own.
//!
//! Run from `fuzz/`: `cargo run --example seeds`.

use std::fs;
use std::path::Path;

use kusto_edge_core::spool::{
    Area, ChunkHeader, DestKey, FullPolicy, MemStorage, Spool, SpoolConfig,
};

const KEY: [u8; 32] = *b"kusto-edge fuzz spool key 32 B!!";

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new("seeds").join(target);
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join(name), bytes).unwrap();
}

fn classify(name: &str, status: u16, retry_after: Option<&str>, body: &str) {
    let mut v = status.to_le_bytes().to_vec();
    match retry_after {
        Some(r) => {
            v.push(r.len() as u8);
            v.extend_from_slice(r.as_bytes());
        }
        None => v.push(255),
    }
    v.extend_from_slice(body.as_bytes());
    write("classify_response", name, &v);
}

fn chunks() {
    for (i, (key, mapping, gzip)) in [
        (None, None, true),
        (Some(KEY), Some("map"), false),
        (Some(KEY), None, true),
    ]
    .into_iter()
    .enumerate()
    {
        let storage = MemStorage::new();
        let cfg = SpoolConfig {
            max_bytes: 1 << 20,
            max_chunks: 4,
            policy: FullPolicy::DropOldest,
            key,
            trim_on_open: false,
            max_payload_len_queued: kusto_edge_core::spool::MAX_PAYLOAD_LEN,
            quarantine_max_bytes: 1 << 18,
            quarantine_max_chunks: 4,
        };
        let (mut spool, _) = Spool::open(storage.clone(), cfg).unwrap();
        let header = ChunkHeader {
            chunk_id: *b"0123456789abcdef",
            dest: DestKey {
                database: "db".into(),
                table: "Telemetry".into(),
                format: "multijson".into(),
                mapping: mapping.map(Into::into),
            },
            created_unix_ms: 1_700_000_000_000,
            raw_len: 25,
            records: 2,
            gzip,
            sink: kusto_edge_core::spool::SinkId::Streaming,
        };
        spool
            .push(&header, b"{\"a\":1}\n{\"a\":2,\"b\":\"x\"}\n")
            .unwrap();
        let name = storage.names(Area::Pending).into_iter().next().unwrap();
        let file = storage.contents(Area::Pending, &name).unwrap();
        let mode = if key.is_some() { 0x02 } else { 0x00 };
        let mut v = vec![mode];
        v.extend_from_slice(&file);
        write("spool_open", &format!("chunk{i}"), &v);
        v[0] |= 0x01;
        write("spool_open", &format!("chunk{i}-repair"), &v);
    }
}

fn main() {
    let data_set = r#"{"Tables":[{"TableName":"Table_0","Columns":[{"ColumnName":"ConsumedRecordsCount","DataType":"Int64","ColumnType":"long"},{"ColumnName":"Other","DataType":"String"}],"Rows":[[2,"x"]]}]}"#;
    classify("ok", 200, None, data_set);
    classify(
        "ok-empty",
        200,
        None,
        r#"{"Tables":[{"Columns":[],"Rows":[]}]}"#,
    );
    classify(
        "throttled",
        429,
        Some("Sun, 06 Nov 2033 08:49:37 GMT"),
        r#"{"error":{"code":"TooManyRequests","message":"slow down","@message":"slow \"down\" \u00e9","@permanent":false}}"#,
    );
    classify("retry-secs", 503, Some("120"), "Service Unavailable");
    classify(
        "not-found",
        400,
        None,
        r#"{"error":{"code":"BadRequest_EntityNotFound","message":"Table 'T' not found","@permanent":true}}"#,
    );

    for (name, s) in [
        ("secret", "Data Source=https://c.westeurope.kusto.windows.net;Initial Catalog=db;AAD Federated Security=True;Application Client Id=00000000-0000-0000-0000-000000000001;Application Key='k;e''y-secret-value';Authority Id=contoso.com"),
        ("path", "https://help.kusto.windows.net/Samples;Fed=true;AppToken=abc.def.ghi"),
        ("cert", "Server=https://c.kusto.windows.net;AppClientId=app;Application Certificate Thumbprint=00:11:22:33:44:55:66:77:88:99:aa:bb:cc:dd:ee:ff:00:11:22:33;SendX5c=true;Trace App Name=gw"),
        ("bad", "Data Source=http://u:p@h;User ID=me;AppKey=\"verysecretvalue\""),
    ] {
        write("connection_string", name, s.as_bytes());
    }

    for (name, flag, body) in [
        (
            "entra",
            0u8,
            r#"{"token_type":"Bearer","expires_in":3599,"ext_expires_in":3599,"access_token":"eyJ0eXAi.eyJhdWQi.sig"}"#,
        ),
        (
            "imds",
            1,
            r#"{"access_token":"eyJ0eXAi","refresh_token":"","expires_in":"86399","expires_on":"1900000000","not_before":"1","resource":"https://kusto.kusto.windows.net","token_type":"Bearer","refresh_in":43199}"#,
        ),
    ] {
        let mut v = vec![flag];
        v.extend_from_slice(body.as_bytes());
        write("token_response", name, &v);
    }

    // Selector bytes index the key table of the target (config KEYS then AUTH_KEYS, file keys left out).
    write("config_set", "url", b"\x00https://c.westeurope.kusto.windows.net\xff\x08262144\xffxproxy.url\xfehttp://u:p@proxy:3128");
    write("config_set", "connstr", b"\xf0connection_string\xfeData Source=https://c.kusto.windows.net;Fed=true;AppClientId=a;AppKey=k");

    write(
        "gzip_roundtrip",
        "text",
        b"\x06{\"a\":1}\n{\"a\":2}\n{\"a\":3}\n{\"a\":3}\n",
    );
    write("gzip_roundtrip", "stored", b"\x00\x01\x02\x03\xff\xfe");

    // ffi_append: format byte (index into the target's FORMATS), batch.bytes byte, batch.sealed byte, then
    // records as u16 LE length + bytes (top bit: a destination that does not exist; 0x7FFF: usize::MAX).
    let records = |format: u8, batch: u8, list: &[&[u8]]| {
        let mut v = vec![format, batch, 0];
        for r in list {
            v.extend_from_slice(&(r.len() as u16).to_le_bytes());
            v.extend_from_slice(r);
        }
        v
    };
    let json: &[&[u8]] = &[
        b"{\"device\":\"gw-1\",\"temp\":21.5}",
        b"{\"seq\":1}\n",
        b"[1,2",
        b"",
        b"{\"a\":\"\xff\"}",
    ];
    write("ffi_append", "json", &records(0, 4, json));
    write(
        "ffi_append",
        "multijson",
        &records(1, 0, &[b"{\n  \"a\": 1\n}", b"{\"b\":[true,null]}"]),
    );
    write(
        "ffi_append",
        "csv",
        &records(3, 0, &[b"gw-1,21.5,2026-01-01T00:00:00Z", b"a,\"b,c\"\n"]),
    );
    let mut odd = records(0, 0, &[b"{\"x\":1}"]);
    odd.extend_from_slice(&0x7FFFu16.to_le_bytes()); // claims usize::MAX bytes
    odd.extend_from_slice(&0x8005u16.to_le_bytes()); // a destination that does not exist
    odd.extend_from_slice(b"{\"y\"}");
    write("ffi_append", "lengths", &odd);

    // json_check: mode byte (bit 0: multijson), then the record.
    write(
        "json_check",
        "telemetry",
        b"\x00{\"seq\":12,\"device\":\"gw-1\",\"ts\":\"2026-11-22T01:02:03Z\",\"temp\":21.5}",
    );
    write(
        "json_check",
        "escapes",
        "\x00[\"a\\u00e9\\n\\\"b\\\\\",\"ünï cödé €\",-0.5e+3,true,null,{}]".as_bytes(),
    );
    write(
        "json_check",
        "multijson",
        b"\x01{\"a\":1}\n{\"b\":[1,2]}\n\"s\"",
    );
    write(
        "json_check",
        "control",
        b"\x00{\"long key past one word\":\"tab\there\"}",
    );

    chunks();
}
