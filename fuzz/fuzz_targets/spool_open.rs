//! A chunk file of any content found in `pending/` at start-up: `Spool::open` verifies it, and `read` of every
//! chunk it kept hands back exactly the payload length it announced. Neither may panic, whatever the file holds;
//! a damaged chunk ends in `corrupt/`, and a second `open` of what is left agrees with the first.
//!
//! Input: one mode byte, then the file. Mode bits:
//! - 0x01: repair the file before storing it (stored length from the file size, both CRC-32s recomputed), so the
//!   fuzzer gets past the checksums to the header fields, the names and the AES-GCM tag;
//! - 0x02: open with a 32-byte key (encryption at rest), otherwise in clear;
//! - 0x04: policy RejectNew instead of DropOldest.
#![no_main]

use std::sync::Mutex;

use kusto_edge_core::crc32::crc32;
use kusto_edge_core::spool::{
    Area, FullPolicy, MemStorage, Spool, SpoolConfig, SpoolError, Storage,
};
use libfuzzer_sys::fuzz_target;

/// The key of the sealed variant; `fuzz/seeds/spool_open` holds chunks sealed under it.
pub const KEY: [u8; 32] = *b"kusto-edge fuzz spool key 32 B!!";

/// One read buffer for the whole run, as a client holds one (5 MiB covers `MAX_PAYLOAD_LEN`).
static BUF: Mutex<Vec<u8>> = Mutex::new(Vec::new());

fuzz_target!(|data: &[u8]| {
    let Some((&mode, file)) = data.split_first() else {
        return;
    };
    let mut file = file.to_vec();
    if mode & 0x01 != 0 {
        repair(&mut file);
    }
    let cfg = SpoolConfig {
        max_bytes: 1 << 20,
        max_chunks: 4,
        policy: if mode & 0x04 != 0 {
            FullPolicy::RejectNew
        } else {
            FullPolicy::DropOldest
        },
        key: (mode & 0x02 != 0).then_some(KEY),
        trim_on_open: mode & 0x08 != 0,
        max_payload_len_queued: kusto_edge_core::spool::MAX_PAYLOAD_LEN,
        quarantine_max_bytes: 1 << 18,
        quarantine_max_chunks: 4,
    };

    let mut storage = MemStorage::new();
    storage
        .write_file(Area::Pending, "0000000000000001.chunk", &[&file])
        .unwrap();
    storage.sync_area(Area::Pending).unwrap();

    let (mut spool, report) =
        Spool::open(storage.clone(), cfg.clone()).expect("open on a healthy device");
    assert_eq!(report.chunks as usize, spool.len());
    assert_eq!(
        report.chunks + report.corrupt + report.dropped.chunks,
        1,
        "{report:?}"
    );

    let mut buf = BUF.lock().unwrap_or_else(|e| e.into_inner());
    if buf.is_empty() {
        buf.resize(5 << 20, 0);
    }
    let seqs: Vec<(u64, u32)> = spool.pending().map(|(s, i)| (s, i.payload_len)).collect();
    let mut kept = 0;
    for (seq, announced) in seqs {
        match spool.read(seq, &mut buf) {
            Ok((header, n)) => {
                assert_eq!(n, announced as usize);
                assert_eq!(spool.info(seq).unwrap().chunk_id, header.chunk_id);
                kept += 1;
            }
            Err(SpoolError::Corrupt(_)) => assert!(spool.info(seq).is_none()),
            Err(e) => panic!("read of chunk {seq} on a healthy device: {e}"),
        }
    }
    drop(spool);

    let (again, report) = Spool::open(storage, cfg).expect("second open");
    assert_eq!(again.len(), kept, "{report:?}");
    assert_eq!(
        report.corrupt, 0,
        "a chunk that read back whole is corrupt on the next open"
    );
});

/// Makes the lengths and checksums consistent with the bytes, when the file is long enough to have them.
fn repair(f: &mut [u8]) {
    if f.len() < 72 {
        return;
    }
    let hlen = u16::from_le_bytes([f[6], f[7]]) as usize;
    if f.len() < hlen + 8 || hlen < 44 {
        return;
    }
    let stored = (f.len() - hlen - 8) as u32;
    f[40..44].copy_from_slice(&stored.to_le_bytes());
    let crc = crc32(&f[..hlen]);
    f[hlen..hlen + 4].copy_from_slice(&crc.to_le_bytes());
    let end = f.len() - 4;
    let crc = crc32(&f[..end]);
    f[end..].copy_from_slice(&crc.to_le_bytes());
}
