//! `Gzip::compress` into a buffer of exactly `compressed_bound(len)` bytes always succeeds without growing it, and
//! `decompress` gives the input back. Compressors are reused across inputs, as a client reuses its one compressor
//! between chunks, so a state that `reset` forgets to clear shows up too.
//!
//! Input: one byte whose value modulo 10 is the level (0 stores), then the data.
#![no_main]

use std::sync::Mutex;

use kusto_edge_core::gzip::{compressed_bound, decompress, Gzip};
use libfuzzer_sys::fuzz_target;

static COMPRESSORS: Mutex<Vec<Gzip>> = Mutex::new(Vec::new());

fuzz_target!(|data: &[u8]| {
    let Some((&level, input)) = data.split_first() else {
        return;
    };
    let level = level % 10;
    let mut compressors = COMPRESSORS.lock().unwrap_or_else(|e| e.into_inner());
    if compressors.is_empty() {
        compressors.extend((0..10).map(Gzip::new));
    }
    let gz = &mut compressors[level as usize];

    let bound = compressed_bound(input.len());
    let mut out = Vec::with_capacity(bound);
    let cap = out.capacity();
    let n = gz
        .compress(input, &mut out)
        .unwrap_or_else(|e| panic!("level {level}, {} bytes: {}", input.len(), e.message));
    assert_eq!(n, out.len());
    assert!(n <= cap, "{n} bytes written into a buffer of {cap}");
    assert_eq!(out.capacity(), cap, "the output buffer grew");
    let back =
        decompress(&out, input.len()).unwrap_or_else(|e| panic!("level {level}: {}", e.message));
    assert!(back == input, "level {level}: round trip differs");
});
