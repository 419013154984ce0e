//! `Config::set` with every real key (and made-up ones) and any value, several in a row on one config, then
//! `validate` and `memory_bound` on the result: nothing may panic, and a refusal always says why.
//!
//! Input: records separated by 0xFF (a byte UTF-8 never holds). A record is a selector byte and the value; a
//! selector past the key table makes a made-up key: the record's text up to the first 0xFE is the key and the rest
//! the value. Keys that name a file to read are skipped, so the fuzzer never touches the file system.
#![no_main]

use kusto_edge_core::auth::AUTH_KEYS;
use kusto_edge_core::config::KEYS;
use kusto_edge_core::Config;
use libfuzzer_sys::fuzz_target;

/// Keys whose value is a path that `set` reads at once.
const READS_FILES: &[&str] = &[
    "tls.ca_file",
    "spool.key_file",
    "auth.client_secret_file",
    "auth.cert_file",
    "auth.key_file",
    "auth.federated_token_file",
];

fuzz_target!(|data: &[u8]| {
    let keys: Vec<&str> = KEYS
        .iter()
        .map(|k| k.key)
        .chain(AUTH_KEYS.iter().map(|k| k.0))
        .filter(|k| !READS_FILES.contains(k))
        .collect();
    let mut config = Config::default();
    for record in data.split(|&b| b == 0xFF) {
        let Some((&selector, rest)) = record.split_first() else {
            continue;
        };
        let (key, value) = match keys.get(selector as usize) {
            Some(k) => (k.to_string(), String::from_utf8_lossy(rest).into_owned()),
            None => {
                let (k, v) = match rest.iter().position(|&b| b == 0xFE) {
                    Some(at) => (&rest[..at], &rest[at + 1..]),
                    None => (rest, &[][..]),
                };
                (
                    String::from_utf8_lossy(k).into_owned(),
                    String::from_utf8_lossy(v).into_owned(),
                )
            }
        };
        if READS_FILES.contains(&key.as_str()) {
            continue;
        }
        if let Err(e) = config.set(&key, &value) {
            assert!(!e.message.is_empty(), "{key} refused without a message");
        }
    }
    let _ = config.validate();
    let _ = config.memory_bound();
    let _ = config.wire_capacity();
});
