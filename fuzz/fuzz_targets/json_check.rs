//! The JSON syntax check `append` runs on `json` and `multijson` records: the word-at-a-time `check` against the
//! byte-at-a-time `check_bytewise` (the reference), which must give the same result, offset and message for any
//! bytes; a refusal's offset is within the record and it has a message. For one value (`json`) in valid UTF-8,
//! it must also accept exactly what serde_json, an independent parser, accepts, within our nesting limit
//! (`MAX_DEPTH`; serde_json skips an ignored value without one).
//!
//! Input: one byte whose low bit picks `multijson` (`many`), then the record (any bytes: `append` checks UTF-8
//! first, but the syntax check itself must not depend on it).
#![no_main]

use kusto_edge_core::json_check::{check, check_bytewise, MAX_DEPTH};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, record)) = data.split_first() else {
        return;
    };
    let many = mode & 1 == 1;
    let fast = check(record, many);
    assert_eq!(fast, check_bytewise(record, many), "many={many}");
    if !many
        && record.iter().filter(|&&b| b == b'[' || b == b'{').count() <= MAX_DEPTH
        && std::str::from_utf8(record).is_ok()
    {
        let theirs = serde_json::from_slice::<serde::de::IgnoredAny>(record);
        assert_eq!(
            fast.is_ok(),
            theirs.is_ok(),
            "ours {fast:?}, serde_json {theirs:?}"
        );
    }
    if let Err(e) = fast {
        assert!(e.at <= record.len(), "offset {} past the end", e.at);
        assert!(!e.what.is_empty());
    }
});
