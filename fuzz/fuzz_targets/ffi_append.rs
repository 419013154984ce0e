//! The C API's record path as firmware drives it, through the `extern "C"` functions themselves: a config from
//! `kedge_config_set` calls, `kedge_client_new`, one destination of a fuzzed format, then `kedge_append` of
//! arbitrary bytes with arbitrary lengths, `kedge_client_stats`, `kedge_client_last_error` and
//! `kedge_client_free`. No request is ever made (no poll, no flush; the URL is a closed loopback port).
//!
//! Input: byte 0 picks the format (past the table: a made-up one, which must be refused), byte 1 `batch.bytes`
//! (1024 << (b % 7): 1 KiB .. 64 KiB), byte 2 `batch.sealed` (b % 4), then records, each a u16 LE length
//! followed by that many bytes (cut short at the end of the input); a length with its top bit set is appended to
//! a destination id that does not exist, and one with length 0x7FFF claims `usize::MAX` bytes (a failed read()),
//! which must be refused before a byte is read.
//!
//! Checks besides "never panics" (`KEDGE_PANIC` is a failure too): every result is one the header documents for
//! `kedge_append`; a length over `batch.bytes` is `KEDGE_RECORD_TOO_LARGE` (judged before the id), then a bad id
//! `KEDGE_INVALID_DESTINATION`, then an empty record, or one that is not UTF-8 for a text format,
//! `KEDGE_INVALID_RECORD`;
//! `records_appended`/`bytes_appended` count exactly the `KEDGE_OK` ones; every refusal leaves a last error
//! message; no request is made.
#![no_main]

use std::ffi::{c_char, CString};
use std::ptr;

use libfuzzer_sys::fuzz_target;

// The C library's crate is a staticlib only (no rlib to depend on), so its one source file is compiled into this
// target as a module: the very `extern "C"` functions firmware links, with libFuzzer's coverage on them.
#[path = "../../src/lib.rs"]
#[allow(dead_code)]
mod kedge;
use kedge::*;

const FORMATS: &[&str] = &[
    "json",
    "multijson",
    "singlejson",
    "csv",
    "tsv",
    "psv",
    "txt",
    "raw",
    "w3clogfile",
    "avro",
];

/// The formats of `FORMATS` whose records are bytes, not text.
const BINARY: &[&str] = &["avro"];

fn set(cfg: *mut kedge_config, key: &str, value: &str) {
    let (k, v) = (CString::new(key).unwrap(), CString::new(value).unwrap());
    let mut err = [0 as c_char; 256];
    // SAFETY: a live config, NUL-terminated strings, errbuf of its length.
    let r = unsafe { kedge_config_set(cfg, k.as_ptr(), v.as_ptr(), err.as_mut_ptr(), err.len()) };
    assert_eq!(r, kedge_result::KEDGE_OK, "{key}={value}");
}

fn stats(client: *mut kedge_client) -> kedge_stats {
    // SAFETY: all-zero is a valid kedge_stats (plain counters).
    let mut s: kedge_stats = unsafe { std::mem::zeroed() };
    // SAFETY: a live client and an out-pointer of the size passed.
    let r = unsafe { kedge_client_stats(client, &mut s, std::mem::size_of::<kedge_stats>()) };
    assert_eq!(r, kedge_result::KEDGE_OK);
    s
}

fuzz_target!(|data: &[u8]| {
    let [f, b, s, rest @ ..] = data else { return };
    let format = FORMATS.get(*f as usize).copied().unwrap_or("nosuchformat");
    let batch_bytes = 1024usize << (*b % 7);
    let mut cfg: *mut kedge_config = ptr::null_mut();
    // SAFETY: an out-pointer.
    assert_eq!(
        unsafe { kedge_config_new(&mut cfg) },
        kedge_result::KEDGE_OK
    );
    set(cfg, "url", "http://127.0.0.1:9");
    set(cfg, "http.allow_plain", "true");
    set(cfg, "batch.bytes", &batch_bytes.to_string());
    set(cfg, "batch.sealed", &(*s % 4).to_string());
    let mut client: *mut kedge_client = ptr::null_mut();
    let mut err = [0 as c_char; 256];
    // SAFETY: a live config, an out-pointer, errbuf of its length.
    let r = unsafe { kedge_client_new(cfg, &mut client, err.as_mut_ptr(), err.len()) };
    // SAFETY: the config is ours and freed once; the client copied it.
    unsafe { kedge_config_free(cfg) };
    assert_eq!(r, kedge_result::KEDGE_OK, "kedge_client_new");

    let (db, table) = (CString::new("db").unwrap(), CString::new("T").unwrap());
    let fmt = CString::new(format).unwrap();
    let mut dest = u32::MAX;
    // SAFETY: a live client, NUL-terminated strings, NULL mapping, an out-pointer.
    let r = unsafe {
        kedge_client_add_destination(
            client,
            db.as_ptr(),
            table.as_ptr(),
            fmt.as_ptr(),
            ptr::null(),
            &mut dest,
        )
    };
    if !FORMATS.contains(&format) {
        assert_ne!(
            r,
            kedge_result::KEDGE_OK,
            "made-up format {format} accepted"
        );
        // SAFETY: our client, freed once.
        unsafe { kedge_client_free(client) };
        return;
    }
    assert_eq!(r, kedge_result::KEDGE_OK, "add_destination({format})");

    let (mut ok_records, mut ok_bytes) = (0u64, 0u64);
    let mut input = rest;
    while let [lo, hi, tail @ ..] = input {
        let word = u16::from_le_bytes([*lo, *hi]);
        let wrong_id = word & 0x8000 != 0;
        let len = (word & 0x7FFF) as usize;
        let take = len.min(tail.len());
        let (record, next) = tail.split_at(take);
        input = next;
        let id = if wrong_id {
            dest.wrapping_add(1 + (len as u32 % 3))
        } else {
            dest
        };
        let claimed = if len == 0x7FFF {
            usize::MAX
        } else {
            record.len()
        };
        // SAFETY: a live client; the record is valid for `claimed` bytes except for usize::MAX, which the
        // contract says is refused from the length alone (this checks it: a read would crash under ASan).
        let r = unsafe { kedge_append(client, id, record.as_ptr(), claimed) };
        use kedge_result::*;
        assert!(
            matches!(
                r,
                KEDGE_OK
                    | KEDGE_QUEUE_FULL
                    | KEDGE_INVALID_RECORD
                    | KEDGE_RECORD_TOO_LARGE
                    | KEDGE_INVALID_DESTINATION
            ),
            "kedge_append returned {r:?}, not one it documents"
        );
        // The length is judged first (before the id), then the destination, then the record's bytes.
        if claimed > batch_bytes {
            assert_eq!(
                r, KEDGE_RECORD_TOO_LARGE,
                "{claimed} bytes > batch.bytes {batch_bytes}"
            );
            continue;
        }
        if wrong_id {
            assert_eq!(
                r, KEDGE_INVALID_DESTINATION,
                "destination {id} does not exist"
            );
            continue;
        }
        // Binary formats (avro, parquet, orc, sstream) take any bytes; text formats must be UTF-8.
        let text = !BINARY.contains(&format);
        if record.is_empty() || (text && std::str::from_utf8(record).is_err()) {
            // With its newline a record of exactly batch.bytes does not fit either.
            let too_large = r == KEDGE_RECORD_TOO_LARGE && record.len() + 1 > batch_bytes;
            assert!(
                r == KEDGE_INVALID_RECORD || too_large,
                "empty or not UTF-8 gave {r:?}: {record:?}"
            );
        }
        if r == KEDGE_OK {
            ok_records += 1;
            ok_bytes += record.len() as u64;
        } else {
            let mut msg = [0 as c_char; 512];
            let mut full = 0usize;
            // SAFETY: a live client, a buffer of its length, an out-pointer.
            let lr =
                unsafe { kedge_client_last_error(client, msg.as_mut_ptr(), msg.len(), &mut full) };
            assert_eq!(lr, KEDGE_OK);
            assert!(full > 0 && msg[0] != 0, "{r:?} left no last error");
        }
    }
    let st = stats(client);
    assert_eq!(st.records_appended, ok_records, "records_appended");
    assert_eq!(st.bytes_appended, ok_bytes, "bytes_appended");
    assert_eq!(st.requests, 0, "no request may be made");
    // SAFETY: our client, freed once (nothing is spooled: no spool.dir).
    unsafe { kedge_client_free(client) };
});
