//! Behaviour of the spool: durability across power cuts, corruption handling, capacity, ordering.

use super::*;
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;

const KEY: [u8; 32] = [0x42; 32];
const OTHER_KEY: [u8; 32] = [0x24; 32];

fn cfg(key: Option<[u8; 32]>) -> SpoolConfig {
    SpoolConfig {
        max_bytes: 64 << 20,
        max_chunks: 1000,
        policy: FullPolicy::DropOldest,
        key,
        trim_on_open: false,
        max_payload_len_queued: MAX_PAYLOAD_LEN,
        quarantine_max_bytes: 8 << 20,
        quarantine_max_chunks: 256,
    }
}

fn dest(table: &str) -> DestKey {
    DestKey {
        database: "telemetry".into(),
        table: table.into(),
        format: "multijson".into(),
        mapping: if table == "B" {
            Some("b_mapping".into())
        } else {
            None
        },
    }
}

/// Deterministic pseudo-random bytes, different per `seed`.
fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn chunk(id: u32, table: &str, len: usize) -> (ChunkHeader, Vec<u8>) {
    let mut chunk_id = [0u8; 16];
    chunk_id[..4].copy_from_slice(&id.to_le_bytes());
    chunk_id[4..].copy_from_slice(&bytes(id as u64 + 1000, 12));
    let h = ChunkHeader {
        chunk_id,
        dest: dest(table),
        created_unix_ms: 1_700_000_000_000 + id as u64,
        raw_len: (len * 3) as u32,
        records: id + 1,
        gzip: table != "B",
        sink: SinkId::Streaming,
    };
    (h, bytes(id as u64, len))
}

fn last_seq<S: Storage>(sp: &Spool<S>) -> u64 {
    sp.pending()
        .map(|(s, _)| s)
        .last()
        .expect("something pending")
}

/// Every pending chunk, read back, oldest first.
fn read_all<S: Storage>(sp: &mut Spool<S>) -> Vec<(u64, ChunkHeader, Vec<u8>)> {
    let seqs: Vec<u64> = sp.pending().map(|(s, _)| s).collect();
    let mut buf = vec![0u8; 512 * 1024];
    seqs.into_iter()
        .map(|s| {
            let (h, n) = sp
                .read(s, &mut buf)
                .unwrap_or_else(|e| panic!("read {s}: {e}"));
            (s, h, buf[..n].to_vec())
        })
        .collect()
}

/// A unique directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let p = std::env::temp_dir().join(format!(
            "kusto-edge-spool-{tag}-{}-{}-{nanos}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        TempDir(p.join("spool"))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if let Some(parent) = self.0.parent() {
            let _ = std::fs::remove_dir_all(parent);
        }
    }
}

// ---------------------------------------------------------------- round trips

fn round_trip_on<S: Storage>(storage: S, key: Option<[u8; 32]>) {
    let (mut sp, report) = Spool::open(storage, cfg(key)).unwrap();
    assert_eq!(report, RecoveryReport::default());
    let chunks = [
        chunk(1, "A", 0),
        chunk(2, "B", 1000),
        chunk(3, "A", 300 * 1024),
    ];
    for (h, p) in &chunks {
        sp.push(h, p).unwrap();
    }
    let got = read_all(&mut sp);
    assert_eq!(got.len(), 3);
    for ((_, h, p), (eh, ep)) in got.iter().zip(&chunks) {
        assert_eq!(h, eh);
        assert_eq!(p, ep);
    }
    let info = sp.pending().nth(2).unwrap().1.clone();
    assert_eq!(info.payload_len as usize, 300 * 1024);
    assert_eq!(info.records, 4);
    assert_eq!(*info.dest, dest("A"));

    // And again after a reopen, which verifies the 300 KiB chunk in 64 KiB pieces.
    let storage = sp.into_storage();
    let (mut sp, report) = Spool::open(storage, cfg(key)).unwrap();
    assert_eq!(
        (report.chunks, report.corrupt, report.removed_partial),
        (3, 0, 0)
    );
    let again: Vec<_> = read_all(&mut sp)
        .into_iter()
        .map(|(_, h, p)| (h, p))
        .collect();
    assert_eq!(again, chunks.to_vec());
}

#[test]
fn chunk_round_trips_without_key() {
    round_trip_on(MemStorage::new(), None);
    let dir = TempDir::new("rt");
    round_trip_on(FsStorage::new(&dir.0).unwrap(), None);
}

#[test]
fn chunk_round_trips_sealed_and_payload_is_not_stored_in_clear() {
    let mem = MemStorage::new();
    round_trip_on(mem.clone(), Some(KEY));
    let (_, plain) = chunk(2, "B", 1000);
    for name in mem.names(Area::Pending) {
        let data = mem.contents(Area::Pending, &name).unwrap();
        assert!(
            !data.windows(64).any(|w| w == &plain[..64]),
            "payload found in clear in {name}"
        );
        assert!(!data.windows(32).any(|w| w == KEY), "key written to flash");
    }
    let dir = TempDir::new("rt-key");
    round_trip_on(FsStorage::new(&dir.0).unwrap(), Some(KEY));
}

#[test]
fn largest_allowed_chunk_round_trips_and_one_byte_more_is_too_large() {
    let mem = MemStorage::new();
    let (mut sp, _) = Spool::open(mem, cfg(Some(KEY))).unwrap();
    let (mut h, _) = chunk(1, "A", 0);
    h.raw_len = MAX_RAW_LEN;
    let p = bytes(9, MAX_PAYLOAD_LEN);
    sp.push(&h, &p).unwrap();
    assert!(sp.info(0).unwrap().file_len <= MAX_CHUNK_FILE_LEN);
    let mut out = vec![0u8; Spool::<MemStorage>::max_payload_len()];
    let (got, n) = sp.read(0, &mut out).unwrap();
    assert_eq!((got, &out[..n]), (h.clone(), &p[..]));

    let big = vec![0u8; MAX_PAYLOAD_LEN + 1];
    assert!(matches!(
        sp.push(&h, &big),
        Err(SpoolError::TooLarge { .. })
    ));
    h.raw_len = MAX_RAW_LEN + 1;
    assert!(matches!(
        sp.push(&h, b"x"),
        Err(SpoolError::TooLarge { .. })
    ));
    assert_eq!(sp.len(), 1);
}

// ---------------------------------------------------------------- keys and tampering

#[test]
fn chunks_sealed_under_another_key_stay_locked_until_the_right_key_opens_them() {
    let mem = MemStorage::new();
    let (mut sp, _) = Spool::open(mem.clone(), cfg(Some(KEY))).unwrap();
    let mut all = Vec::new();
    for i in 0..3 {
        let (h, p) = chunk(i, "A", 100);
        sp.push(&h, &p).unwrap();
        all.push((h, p));
    }
    let file_bytes = sp.stats().bytes;
    drop(sp);
    for key in [Some(OTHER_KEY), None] {
        let (mut sp, report) = Spool::open(mem.clone(), cfg(key)).unwrap();
        assert_eq!(
            (
                report.chunks,
                report.corrupt,
                report.locked,
                report.locked_bytes
            ),
            (0, 0, 3, file_bytes),
            "key {:?}",
            key.map(|k| k[0])
        );
        assert!(sp.is_empty());
        assert_eq!(
            sp.stats().bytes,
            0,
            "locked chunks do not count against the limits"
        );
        assert_eq!(
            (sp.stats().locked_chunks, sp.stats().corrupt_chunks),
            (3, 0)
        );
        assert!(mem.names(Area::Corrupt).is_empty());
        assert_eq!(mem.names(Area::Pending).len(), 3, "files left untouched");
        // Numbering skips the locked chunks' numbers.
        if key.is_some() {
            let (h, p) = chunk(9, "A", 10);
            sp.push(&h, &p).unwrap();
            assert_eq!(sp.oldest(None), Some(3));
            sp.remove(3).unwrap();
        }
    }
    let (mut sp, report) = Spool::open(mem.clone(), cfg(Some(KEY))).unwrap();
    assert_eq!((report.chunks, report.locked, report.corrupt), (3, 0, 0));
    let got: Vec<_> = read_all(&mut sp)
        .into_iter()
        .map(|(_, h, p)| (h, p))
        .collect();
    assert_eq!(got, all);
}

#[test]
fn clear_chunks_opened_with_a_key_stay_locked_and_are_readable_without_one() {
    let mem = MemStorage::new();
    let (mut sp, _) = Spool::open(mem.clone(), cfg(None)).unwrap();
    let (h, p) = chunk(1, "A", 100);
    sp.push(&h, &p).unwrap();
    drop(sp);
    let (sp, report) = Spool::open(mem.clone(), cfg(Some(KEY))).unwrap();
    assert_eq!((report.chunks, report.corrupt, report.locked), (0, 0, 1));
    assert!(sp.is_empty());
    drop(sp);
    let (mut sp, report) = Spool::open(mem.clone(), cfg(None)).unwrap();
    assert_eq!((report.chunks, report.locked), (1, 0));
    assert_eq!(read_all(&mut sp), vec![(0, h, p)]);
}

/// Rewrites a chunk file through `edit` and fixes up both CRCs, as a deliberate attacker would.
fn tamper(mem: &MemStorage, name: &str, edit: impl FnOnce(&mut Vec<u8>)) {
    let mut data = mem.contents(Area::Pending, name).unwrap();
    edit(&mut data);
    let hlen = u16::from_le_bytes([data[6], data[7]]) as usize;
    let hcrc = crate::crc32::crc32(&data[..hlen]).to_le_bytes();
    data[hlen..hlen + 4].copy_from_slice(&hcrc);
    let n = data.len();
    let crc = crate::crc32::crc32(&data[..n - 4]).to_le_bytes();
    data[n - 4..].copy_from_slice(&crc);
    let mut m = mem.clone();
    m.write_file(Area::Pending, name, &[&data]).unwrap();
}

#[test]
fn tampered_sealed_chunk_with_valid_crc_fails_authentication_on_read() {
    let mem = MemStorage::new();
    let (mut sp, _) = Spool::open(mem.clone(), cfg(Some(KEY))).unwrap();
    for i in 0..3 {
        let (h, p) = chunk(i, "A", 200);
        sp.push(&h, &p).unwrap();
    }
    drop(sp);
    let names = mem.names(Area::Pending);
    // Payload byte changed.
    tamper(&mem, &names[0], |d| {
        let n = d.len();
        d[n - 30] ^= 1;
    });
    // Destination changed (table "A" -> "X"): the header is the AAD.
    tamper(&mem, &names[1], |d| {
        let at = d.windows(9).position(|w| w == b"telemetry").unwrap() + 9;
        d[at] = b'X';
    });
    let (mut sp, report) = Spool::open(mem.clone(), cfg(Some(KEY))).unwrap();
    assert_eq!(
        (report.chunks, report.corrupt),
        (3, 0),
        "CRCs are valid, so open cannot tell"
    );
    let mut buf = vec![0u8; 4096];
    for seq in [0, 1] {
        match sp.read(seq, &mut buf) {
            Err(SpoolError::Corrupt(m)) => assert!(m.contains("authentication"), "{m}"),
            other => panic!("tampered chunk returned: {other:?}"),
        }
        assert!(
            buf.iter().all(|&b| b == 0),
            "no plaintext of a forged chunk is left in the buffer"
        );
    }
    let (h, n) = sp.read(2, &mut buf).unwrap();
    assert_eq!((h, buf[..n].to_vec()), chunk(2, "A", 200));
    assert_eq!(sp.stats().corrupt_chunks, 2);
    assert_eq!(sp.oldest(None), Some(2));
    assert_eq!(mem.names(Area::Corrupt), names[..2].to_vec());
}

#[test]
fn bit_rot_after_open_is_caught_on_read_and_the_chunk_moved_aside() {
    let mem = MemStorage::new();
    let (mut sp, _) = Spool::open(mem.clone(), cfg(None)).unwrap();
    for i in 0..2 {
        let (h, p) = chunk(i, "A", 500);
        sp.push(&h, &p).unwrap();
    }
    let first = mem.names(Area::Pending)[0].clone();
    assert!(mem.flip_bit(Area::Pending, &first, 8 * 300 + 3));
    let mut buf = vec![0u8; 1024];
    assert!(matches!(sp.read(0, &mut buf), Err(SpoolError::Corrupt(_))));
    assert!(matches!(sp.read(0, &mut buf), Err(SpoolError::NotFound(0))));
    assert_eq!(sp.oldest(None), Some(1));
    assert!(sp.read(1, &mut buf).is_ok());
    assert_eq!(mem.names(Area::Corrupt), vec![first]);
    let s = sp.stats();
    assert_eq!((s.chunks, s.corrupt_chunks), (1, 1));
}

#[test]
fn read_into_too_small_buffer_consumes_nothing() {
    let (mut sp, _) = Spool::open(MemStorage::new(), cfg(Some(KEY))).unwrap();
    let (h, p) = chunk(1, "A", 100);
    sp.push(&h, &p).unwrap();
    let mut small = [0u8; 99];
    assert!(matches!(
        sp.read(0, &mut small),
        Err(SpoolError::BufferTooSmall { needed: 100 })
    ));
    let mut exact = [0u8; 100];
    assert_eq!(sp.read(0, &mut exact).unwrap().1, 100);
    assert_eq!(&exact[..], &p[..]);
}

// ---------------------------------------------------------------- power-loss sweep

/// What the workload did, as the caller saw it.
#[derive(Default)]
struct Model {
    /// Every chunk ever handed to push, by id.
    attempted: HashMap<[u8; 16], (ChunkHeader, Vec<u8>)>,
    /// Chunks whose push returned Ok, in push order, and not handed to remove/reject since.
    durable: Vec<[u8; 16]>,
    /// Chunks whose remove or reject returned Ok.
    gone: HashSet<[u8; 16]>,
    /// Chunks whose reject returned Ok.
    rejected: Vec<[u8; 16]>,
}

/// Open, push `first` chunks for two destinations, remove two, reject one, push two more.
/// Stops at the first error (after a power cut every operation fails).
fn workload(mem: &MemStorage, key: Option<[u8; 32]>, first: u32, model: &mut Model) -> Option<()> {
    let (mut sp, _) = Spool::open(mem.clone(), cfg(key)).ok()?;
    let mut seq_of = HashMap::new();
    fn push(
        sp: &mut Spool<MemStorage>,
        i: u32,
        model: &mut Model,
        seq_of: &mut HashMap<u32, (u64, [u8; 16])>,
    ) -> Option<()> {
        let (h, p) = chunk(
            i,
            if i & 1 == 0 { "A" } else { "B" },
            50 + (i as usize * 397) % 1500,
        );
        model.attempted.insert(h.chunk_id, (h.clone(), p.clone()));
        sp.push(&h, &p).ok()?;
        model.durable.push(h.chunk_id);
        seq_of.insert(i, (last_seq(sp), h.chunk_id));
        Some(())
    }
    for i in 0..first {
        push(&mut sp, i, model, &mut seq_of)?;
    }
    // From the call on, a power cut may or may not have let the removal happen.
    for i in [0, 3] {
        let (seq, id) = seq_of[&i];
        model.durable.retain(|d| *d != id);
        sp.remove(seq).ok()?;
        model.gone.insert(id);
    }
    let (seq, id) = seq_of[&1];
    model.durable.retain(|d| *d != id);
    sp.reject(
        seq,
        "BadRequest_InvalidMapping: mapping 'b_mapping' not found",
    )
    .ok()?;
    model.gone.insert(id);
    model.rejected.push(id);
    for i in first..first + 2 {
        push(&mut sp, i, model, &mut seq_of)?;
    }
    Some(())
}

/// The invariants after a reboot.
fn check_after_reboot(mem: &MemStorage, key: Option<[u8; 32]>, model: &Model, what: &str) {
    let (mut sp, report) = Spool::open(mem.clone(), cfg(key))
        .unwrap_or_else(|e| panic!("{what}: open after power cut: {e}"));
    assert_eq!(
        report.corrupt, 0,
        "{what}: a power cut must never corrupt a chunk"
    );
    let got = read_all(&mut sp);
    let mut found = Vec::new();
    for (_, h, p) in &got {
        let (eh, ep) = model
            .attempted
            .get(&h.chunk_id)
            .unwrap_or_else(|| panic!("{what}: never pushed"));
        assert_eq!((h, p), (eh, ep), "{what}: content differs");
        assert!(
            !model.gone.contains(&h.chunk_id),
            "{what}: removed/rejected chunk came back"
        );
        found.push(h.chunk_id);
    }
    for id in &model.durable {
        assert!(
            found.contains(id),
            "{what}: durable chunk {:?} lost",
            &id[..4]
        );
    }
    let order: Vec<u32> = found
        .iter()
        .map(|id| u32::from_le_bytes([id[0], id[1], id[2], id[3]]))
        .collect();
    assert!(
        order.windows(2).all(|w| w[0] < w[1]),
        "{what}: order {order:?} is not push order"
    );
    assert!(
        mem.names(Area::Pending)
            .iter()
            .all(|n| n.ends_with(".chunk")),
        "{what}: leftovers"
    );
    // A chunk is in exactly one place: pending, or rejected/ once reject was called.
    let rejected = mem.names(Area::Rejected);
    for (id, (h, _)) in &model.attempted {
        let name = format!("{:016x}.chunk", h.records - 1); // chunk i got sequence number i here
        let pending = found.contains(id);
        assert!(
            !(pending && rejected.contains(&name)),
            "{what}: chunk both pending and rejected"
        );
        if model.rejected.contains(id) {
            assert!(rejected.contains(&name), "{what}: rejected chunk missing");
        }
    }
    // The spool keeps working, and numbers never go backwards past what is stored.
    let before = sp.pending().map(|(s, _)| s).max();
    let (h, p) = chunk(999, "A", 10);
    sp.push(&h, &p)
        .unwrap_or_else(|e| panic!("{what}: push after recovery: {e}"));
    assert!(before.is_none_or(|b| last_seq(&sp) > b));
}

fn power_loss_sweep(first: u32, seeds: u64, keys: &[Option<[u8; 32]>]) -> usize {
    let mut runs = 0;
    for &key in keys {
        let total = {
            let mem = MemStorage::new();
            let mut model = Model::default();
            workload(&mem, key, first, &mut model).expect("workload without faults");
            assert_eq!(
                model.durable.len() as u32,
                first - 1,
                "3 of first settled, 2 more pushed"
            );
            mem.op_count()
        };
        for n in 0..=total {
            for mode in [CutMode::LoseUnsynced, CutMode::Torn] {
                for seed in 0..seeds {
                    let mem = MemStorage::with_seed(n * 7919 + seed * 104_729 + 1);
                    mem.cut_power_after(n, mode);
                    let mut model = Model::default();
                    let finished = workload(&mem, key, first, &mut model).is_some();
                    assert_eq!(
                        finished,
                        n == total,
                        "the cut at {n} must interrupt the workload"
                    );
                    mem.reboot();
                    check_after_reboot(
                        &mem,
                        key,
                        &model,
                        &format!(
                            "cut at op {n}/{total}, {mode:?}, seed {seed}, key {}",
                            key.is_some()
                        ),
                    );
                    runs += 1;
                }
            }
        }
    }
    runs
}

#[test]
fn spooled_chunks_survive_a_power_cut_at_every_operation() {
    let runs = power_loss_sweep(6, 1, &[None, Some(KEY)]);
    assert!(runs > 200, "{runs} runs");
}

#[test]
#[ignore = "exhaustive: run locally with --ignored --release"]
fn spooled_chunks_survive_power_cuts_exhaustive() {
    power_loss_sweep(24, 16, &[None, Some(KEY)]);
}

#[test]
#[ignore = "exhaustive: run locally with --ignored --release"]
fn recovery_itself_survives_a_second_power_cut() {
    // Cut during the workload, then again at every operation of the recovering open.
    for key in [None, Some(KEY)] {
        let total = {
            let mem = MemStorage::new();
            workload(&mem, key, 8, &mut Model::default());
            mem.op_count()
        };
        for n in 0..=total {
            for m in 0..12 {
                let mem = MemStorage::with_seed(n * 31 + m + 5);
                mem.cut_power_after(n, CutMode::Torn);
                let mut model = Model::default();
                workload(&mem, key, 8, &mut model);
                mem.reboot();
                // Leave a corrupt chunk too, so recovery has moves to do.
                if let Some(name) = mem.names(Area::Pending).first() {
                    let id = model
                        .attempted
                        .values()
                        .find(|(h, _)| format!("{:016x}.chunk", h.records - 1) == *name);
                    if let Some((h, _)) = id {
                        let cid = h.chunk_id;
                        model.durable.retain(|d| *d != cid);
                        model.gone.insert(cid);
                        mem.flip_bit(Area::Pending, name, 77);
                    }
                }
                mem.cut_power_after(m, CutMode::Torn);
                let _ = Spool::open(mem.clone(), cfg(key));
                mem.reboot();
                let (sp, _) = Spool::open(mem.clone(), cfg(key)).unwrap();
                drop(sp);
                let mem2 = mem.clone();
                // The flipped chunk is in corrupt/ now; everything else holds.
                let (mut sp, _) = Spool::open(mem2, cfg(key)).unwrap();
                for (_, h, p) in read_all(&mut sp) {
                    assert_eq!(model.attempted[&h.chunk_id].1, p);
                    assert!(!model.gone.contains(&h.chunk_id));
                }
                let ids: HashSet<_> = sp.pending().map(|(_, i)| i.chunk_id).collect();
                assert!(
                    model.durable.iter().all(|d| ids.contains(d)),
                    "cut {n}, then {m} into recovery"
                );
            }
        }
    }
}

// ---------------------------------------------------------------- damaged files on a real directory

#[test]
fn truncated_and_bit_flipped_files_go_to_corrupt_and_intact_ones_are_still_returned() {
    use std::fs;
    for round in 0..4u64 {
        let dir = TempDir::new("damage");
        let key = if round % 2 == 0 { None } else { Some(KEY) };
        let (mut sp, _) = Spool::open(FsStorage::new(&dir.0).unwrap(), cfg(key)).unwrap();
        let mut all = Vec::new();
        for i in 0..12u32 {
            let len = [0, 1, 100, 5000, 70_000][i as usize % 5] + i as usize;
            let c = chunk(i, if i % 3 == 0 { "B" } else { "A" }, len);
            sp.push(&c.0, &c.1).unwrap();
            all.push(c);
        }
        let storage = sp.into_storage();
        let paths: Vec<_> = (0..12u32)
            .map(|i| storage.path(Area::Pending, &format!("{:016x}.chunk", i)))
            .collect();
        drop(storage); // releases the directory lock for the reopen below
        let mut rnd = bytes(round + 77, 4096).into_iter().map(u64::from).cycle();
        let mut damaged = HashSet::new();
        for i in 0..12u32 {
            let path = &paths[i as usize];
            let mut data = fs::read(path).unwrap();
            let r = rnd.next().unwrap() % 3;
            if r == 0 {
                continue; // intact
            }
            if r == 1 {
                let cut = (rnd.next().unwrap() * 7919 + rnd.next().unwrap()) as usize % data.len();
                data.truncate(cut);
            } else {
                for _ in 0..1 + rnd.next().unwrap() % 4 {
                    let at = (rnd.next().unwrap() * 65_537 + rnd.next().unwrap() * 257) as usize
                        % data.len();
                    data[at] ^= 1 + (rnd.next().unwrap() % 255) as u8;
                }
            }
            fs::write(path, &data).unwrap();
            damaged.insert(i);
        }
        // Files that are not ours, and garbage under our naming scheme.
        fs::write(dir.0.join("README"), b"not a chunk").unwrap();
        fs::write(dir.0.join("00000000000000ff.chunk"), b"").unwrap();
        fs::write(dir.0.join("0000000000000100.chunk"), bytes(5, 300)).unwrap();
        fs::write(dir.0.join("0000000000000101.tmp"), bytes(6, 30)).unwrap();

        let (mut sp, report) = Spool::open(FsStorage::new(&dir.0).unwrap(), cfg(key)).unwrap();
        assert_eq!(report.corrupt as usize, damaged.len() + 2, "round {round}");
        assert_eq!(report.removed_partial, 1);
        assert_eq!(sp.stats().corrupt_chunks as usize, damaged.len() + 2);
        let got = read_all(&mut sp);
        let expect: Vec<_> = (0..12u32)
            .filter(|i| !damaged.contains(i))
            .map(|i| all[i as usize].clone())
            .collect();
        assert_eq!(
            got.into_iter().map(|(_, h, p)| (h, p)).collect::<Vec<_>>(),
            expect
        );
        let corrupt = fs::read_dir(dir.0.join("corrupt")).unwrap().count();
        assert_eq!(corrupt, damaged.len() + 2);
        assert!(
            dir.0.join("README").exists(),
            "foreign files are left alone"
        );
        // New chunks continue after the largest name ever seen (including corrupt/ ones).
        let (h, p) = chunk(50, "A", 10);
        sp.push(&h, &p).unwrap();
        assert_eq!(last_seq(&sp), 0x102);

        // Damage while open: detected by read, not returned.
        let victim = sp.oldest(None).unwrap();
        let path = sp
            .storage()
            .path(Area::Pending, &format!("{victim:016x}.chunk"));
        let mut data = fs::read(&path).unwrap();
        let last = data.len() - 5;
        data[last] ^= 0x10;
        fs::write(&path, &data).unwrap();
        let mut buf = vec![0u8; 128 * 1024];
        assert!(matches!(
            sp.read(victim, &mut buf),
            Err(SpoolError::Corrupt(_))
        ));
        assert!(!path.exists());
        assert_eq!(sp.stats().corrupt_chunks as usize, damaged.len() + 3);
    }
}

// ---------------------------------------------------------------- failing disks

#[test]
fn enospc_mid_write_stores_nothing_and_keeps_earlier_chunks() {
    for key in [None, Some(KEY)] {
        let mem = MemStorage::new();
        let (mut sp, _) = Spool::open(mem.clone(), cfg(key)).unwrap();
        let early: Vec<_> = (0..3).map(|i| chunk(i, "A", 800)).collect();
        for (h, p) in &early {
            sp.push(h, p).unwrap();
        }
        mem.set_space_limit(Some(mem.used_bytes() + 500));
        let (h, p) = chunk(3, "B", 2000);
        let e = sp.push(&h, &p).unwrap_err();
        assert!(matches!(e, SpoolError::NoSpace), "{e:?}");
        assert!(e.to_string().contains("free space"), "{e}");
        assert_eq!(
            mem.names(Area::Pending).len(),
            3,
            "the partial temp file is gone"
        );
        assert_eq!(sp.stats().chunks, 3);
        let got: Vec<_> = read_all(&mut sp)
            .into_iter()
            .map(|(_, h, p)| (h, p))
            .collect();
        assert_eq!(got, early);
        // Acknowledging frees room; pushing works again.
        sp.remove(0).unwrap();
        mem.set_space_limit(Some(mem.used_bytes() + 5000));
        sp.push(&h, &p).unwrap();
        drop(sp);
        mem.reboot();
        let (mut sp, report) = Spool::open(mem.clone(), cfg(key)).unwrap();
        assert_eq!((report.chunks, report.corrupt), (3, 0));
        assert_eq!(read_all(&mut sp).last().unwrap().2, p);
    }
}

#[test]
fn eio_at_any_step_of_a_push_leaves_the_spool_consistent() {
    let per_push = {
        let mem = MemStorage::new();
        let (mut sp, _) = Spool::open(mem.clone(), cfg(None)).unwrap();
        let before = mem.op_count();
        let (h, p) = chunk(0, "A", 10);
        sp.push(&h, &p).unwrap();
        mem.op_count() - before
    };
    for k in 0..per_push {
        let mem = MemStorage::new();
        let (mut sp, _) = Spool::open(mem.clone(), cfg(Some(KEY))).unwrap();
        let (h0, p0) = chunk(0, "A", 300);
        sp.push(&h0, &p0).unwrap();
        mem.fail_op(k, io::ErrorKind::Other);
        let (h1, p1) = chunk(1, "A", 300);
        let e = sp.push(&h1, &p1).unwrap_err();
        assert!(matches!(e, SpoolError::Io(_)), "op {k}: {e:?}");
        assert_eq!(sp.len(), 1, "op {k}");
        assert!(
            mem.names(Area::Pending)
                .iter()
                .all(|n| n.ends_with(".chunk")),
            "op {k}: leftovers"
        );
        sp.push(&h1, &p1).unwrap();
        let got: Vec<_> = read_all(&mut sp)
            .into_iter()
            .map(|(_, h, p)| (h, p))
            .collect();
        assert_eq!(
            got,
            vec![(h0.clone(), p0.clone()), (h1.clone(), p1.clone())],
            "op {k}"
        );
        drop(sp);
        mem.reboot();
        let (sp, report) = Spool::open(mem, cfg(Some(KEY))).unwrap();
        assert_eq!((report.chunks, report.corrupt), (2, 0), "op {k}");
        drop(sp);
    }
}

#[test]
fn eio_on_reads_keeps_the_chunk_pending_and_eio_on_remove_forgets_it() {
    let mem = MemStorage::new();
    let (mut sp, _) = Spool::open(mem.clone(), cfg(None)).unwrap();
    let (h, p) = chunk(0, "A", 100);
    sp.push(&h, &p).unwrap();

    mem.set_fail_reads(true);
    let mut buf = [0u8; 100];
    assert!(
        matches!(sp.read(0, &mut buf), Err(SpoolError::Io(_))),
        "EIO is not corruption"
    );
    assert_eq!(sp.stats().corrupt_chunks, 0);
    assert_eq!(sp.oldest(None), Some(0));
    mem.set_fail_reads(false);

    // The chunk was delivered: a failed unlink must not make the caller resend it forever.
    mem.fail_op(0, io::ErrorKind::Other);
    assert!(matches!(sp.remove(0), Err(SpoolError::Io(_))));
    assert_eq!(sp.oldest(None), None);
    assert_eq!(sp.stats().io_errors, 1);
    mem.set_fail_reads(true);
    drop(sp);
    let e = Spool::open(mem.clone(), cfg(None))
        .err()
        .expect("open cannot verify chunks");
    assert!(matches!(e, SpoolError::Io(_)));
    mem.set_fail_reads(false);
    // The file survived the failed unlink, so it comes back once (at most one duplicate).
    let (mut sp, report) = Spool::open(mem.clone(), cfg(None)).unwrap();
    assert_eq!((report.chunks, report.corrupt), (1, 0));
    assert_eq!(sp.read(0, &mut buf).unwrap().1, 100);
    assert!(mem.names(Area::Corrupt).is_empty());
}

#[test]
fn read_only_filesystem_refuses_changes_but_still_serves_chunks() {
    let mem = MemStorage::new();
    let (mut sp, _) = Spool::open(mem.clone(), cfg(None)).unwrap();
    let (h, p) = chunk(0, "A", 100);
    sp.push(&h, &p).unwrap();
    mem.set_read_only(true);
    let e = sp.push(&chunk(1, "A", 10).0, b"x").unwrap_err();
    assert!(matches!(e, SpoolError::ReadOnly));
    assert!(e.to_string().contains("read-only"));
    let mut buf = [0u8; 100];
    assert_eq!(sp.read(0, &mut buf).unwrap(), (h, 100));
    // Reject and remove report the failure but forget the chunk (it must not be resent as is).
    assert!(matches!(sp.reject(0, "no"), Err(SpoolError::ReadOnly)));
    assert!(sp.is_empty());
    assert!(matches!(sp.remove(0), Err(SpoolError::NotFound(0))));
    drop(sp);
    mem.set_read_only(false);

    // Reopening read-only with repairs due (a leftover temp file, a corrupt chunk): the intact
    // chunk is still served, the damaged one is not, and the repairs happen once writable.
    let mut m = mem.clone();
    m.write_file(Area::Pending, "00000000000000aa.tmp", &[b"partial"])
        .unwrap();
    let (mut sp, _) = Spool::open(mem.clone(), cfg(None)).unwrap(); // numbers resume after 0xaa
    let (h2, p2) = chunk(2, "B", 10);
    sp.push(&h2, &p2).unwrap();
    drop(sp);
    m.write_file(Area::Pending, "00000000000000ac.tmp", &[b"partial"])
        .unwrap();
    assert!(mem.flip_bit(Area::Pending, "00000000000000ab.chunk", 100));
    mem.set_read_only(true);
    let (mut sp, report) = Spool::open(mem.clone(), cfg(None)).unwrap();
    assert_eq!(
        (report.chunks, report.corrupt, report.removed_partial),
        (1, 1, 0)
    );
    assert_eq!(read_all(&mut sp).len(), 1);
    drop(sp);
    mem.set_read_only(false);
    let (_, report) = Spool::open(mem.clone(), cfg(None)).unwrap();
    assert_eq!(
        (report.chunks, report.corrupt, report.removed_partial),
        (1, 1, 1)
    );
    assert_eq!(
        mem.names(Area::Corrupt),
        vec!["00000000000000ab.chunk".to_string()]
    );
}

#[test]
fn os_errors_are_classified_by_errno() {
    // Linux numbers: ENOSPC 28, EDQUOT 122, EROFS 30, EIO 5.
    assert!(matches!(
        SpoolError::from(io::Error::from_raw_os_error(28)),
        SpoolError::NoSpace
    ));
    assert!(matches!(
        SpoolError::from(io::Error::from_raw_os_error(122)),
        SpoolError::NoSpace
    ));
    assert!(matches!(
        SpoolError::from(io::Error::from_raw_os_error(30)),
        SpoolError::ReadOnly
    ));
    assert!(matches!(
        SpoolError::from(io::Error::from_raw_os_error(5)),
        SpoolError::Io(_)
    ));
}

// ---------------------------------------------------------------- capacity

#[test]
fn drop_oldest_makes_room_and_counts_what_it_dropped() {
    let mem = MemStorage::new();
    let c = SpoolConfig {
        max_chunks: 3,
        ..cfg(None)
    };
    let (mut sp, _) = Spool::open(mem.clone(), c.clone()).unwrap();
    let chunks: Vec<_> = (0..5)
        .map(|i| chunk(i, if i == 1 { "B" } else { "A" }, 100))
        .collect();
    let mut sizes = Vec::new();
    for (i, (h, p)) in chunks.iter().enumerate() {
        let d = sp.push(h, p).unwrap();
        sizes.push(sp.info(i as u64).unwrap().file_len);
        if i < 3 {
            assert_eq!(d, Dropped::default());
        } else {
            let old = i - 3;
            assert_eq!(
                d,
                Dropped {
                    chunks: 1,
                    records: chunks[old].0.records as u64,
                    bytes: sizes[old]
                }
            );
        }
    }
    let s = sp.stats();
    assert_eq!(
        (s.chunks, s.dropped_chunks, s.dropped_records),
        (3, 2, 1 + 2)
    );
    assert_eq!(s.dropped_bytes, sizes[0] + sizes[1]);
    assert_eq!(
        sp.oldest(Some(&dest("B"))),
        None,
        "B's only chunk was the oldest but one"
    );
    assert_eq!(mem.names(Area::Pending).len(), 3);

    // By bytes: a chunk needing the room of two old ones drops two.
    let budget = sp.stats().bytes + 50;
    drop(sp);
    let (mut sp, _) = Spool::open(
        mem.clone(),
        SpoolConfig {
            max_bytes: budget,
            ..c
        },
    )
    .unwrap();
    let (h, p) = chunk(9, "A", 250);
    let d = sp.push(&h, &p).unwrap();
    assert_eq!(d.chunks, 2);
    assert!(sp.stats().bytes <= budget);
    assert_eq!(
        sp.pending().map(|(_, i)| i.records).collect::<Vec<_>>(),
        vec![5, 10]
    );
}

#[test]
fn reject_new_refuses_when_full_and_touches_nothing() {
    let mem = MemStorage::new();
    let c = SpoolConfig {
        max_chunks: 2,
        policy: FullPolicy::RejectNew,
        ..cfg(None)
    };
    let (mut sp, _) = Spool::open(mem.clone(), c).unwrap();
    for i in 0..2 {
        let (h, p) = chunk(i, "A", 100);
        sp.push(&h, &p).unwrap();
    }
    let ops = mem.op_count();
    let snapshot: Vec<_> = mem
        .names(Area::Pending)
        .into_iter()
        .map(|n| (mem.contents(Area::Pending, &n), n))
        .collect();
    let (h, p) = chunk(2, "A", 100);
    let e = sp.push(&h, &p).unwrap_err();
    assert!(matches!(e, SpoolError::Full));
    assert!(e.to_string().contains("DropOldest"));
    assert_eq!(mem.op_count(), ops, "not a single write");
    let now: Vec<_> = mem
        .names(Area::Pending)
        .into_iter()
        .map(|n| (mem.contents(Area::Pending, &n), n))
        .collect();
    assert_eq!(now, snapshot);
    let s = sp.stats();
    assert_eq!(
        (
            s.chunks,
            s.rejected_chunks,
            s.rejected_records,
            s.dropped_chunks
        ),
        (2, 1, 3, 0)
    );
    // Draining makes room again.
    sp.remove(0).unwrap();
    sp.push(&h, &p).unwrap();
}

#[test]
fn chunk_larger_than_the_whole_spool_is_too_large() {
    let c = SpoolConfig {
        max_bytes: 1000,
        ..cfg(None)
    };
    let (mut sp, _) = Spool::open(MemStorage::new(), c).unwrap();
    let (h, p) = chunk(0, "A", 1000);
    assert!(matches!(
        sp.push(&h, &p),
        Err(SpoolError::TooLarge { max: 1000, .. })
    ));
    assert!(sp.is_empty());
    assert!(Spool::open(
        MemStorage::new(),
        SpoolConfig {
            max_chunks: 0,
            ..cfg(None)
        }
    )
    .is_err());
}

#[test]
fn lowered_limits_apply_on_open_according_to_the_policy() {
    let mem = MemStorage::new();
    let (mut sp, _) = Spool::open(mem.clone(), cfg(None)).unwrap();
    for i in 0..5 {
        let (h, p) = chunk(i, "A", 100);
        sp.push(&h, &p).unwrap();
    }
    drop(sp);
    let keep = SpoolConfig {
        max_chunks: 3,
        policy: FullPolicy::RejectNew,
        ..cfg(None)
    };
    let (mut sp, report) = Spool::open(mem.clone(), keep).unwrap();
    assert_eq!(
        (report.chunks, report.dropped.chunks),
        (5, 0),
        "RejectNew never drops"
    );
    assert!(matches!(
        sp.push(&chunk(7, "A", 1).0, b"x"),
        Err(SpoolError::Full)
    ));
    drop(sp);
    let trim = SpoolConfig {
        max_chunks: 3,
        trim_on_open: true,
        ..cfg(None)
    };
    let (sp, report) = Spool::open(mem.clone(), trim).unwrap();
    assert_eq!(report.chunks, 3);
    assert_eq!(
        report.dropped,
        Dropped {
            chunks: 2,
            records: 1 + 2,
            bytes: report.dropped.bytes
        }
    );
    assert_eq!(sp.oldest(None), Some(2));
    assert_eq!(sp.stats().dropped_chunks, 2);
}

#[test]
fn spool_files_are_private_to_the_owner() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new("modes");
    let (mut sp, _) = Spool::open(FsStorage::new(&dir.0).unwrap(), cfg(None)).unwrap();
    for i in 0..3 {
        let (h, p) = chunk(i, "A", 10);
        sp.push(&h, &p).unwrap();
    }
    sp.reject(1, "bad data").unwrap();
    let mode = |p: PathBuf| std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
    for d in ["", "corrupt", "rejected"] {
        assert_eq!(mode(dir.0.join(d)), 0o700, "dir {d:?}");
    }
    assert_eq!(mode(dir.0.join("0000000000000000.chunk")), 0o600);
    assert_eq!(mode(dir.0.join("rejected/0000000000000001.chunk")), 0o600);
    assert_eq!(mode(dir.0.join("rejected/0000000000000001.msg")), 0o600);
}

// ---------------------------------------------------------------- ordering, reject, remove

#[test]
fn oldest_per_destination_follows_push_order_and_sequence_resumes_after_reopen() {
    let mem = MemStorage::new();
    let (mut sp, _) = Spool::open(mem.clone(), cfg(None)).unwrap();
    let tables = ["A", "B", "A", "A", "B"];
    for (i, t) in tables.iter().enumerate() {
        let (h, p) = chunk(i as u32, t, 20);
        sp.push(&h, &p).unwrap();
    }
    let (a, b) = (dest("A"), dest("B"));
    assert_eq!(
        (sp.oldest(None), sp.oldest(Some(&a)), sp.oldest(Some(&b))),
        (Some(0), Some(0), Some(1))
    );
    sp.remove(0).unwrap();
    assert_eq!(
        (sp.oldest(None), sp.oldest(Some(&a)), sp.oldest(Some(&b))),
        (Some(1), Some(2), Some(1))
    );
    sp.remove(1).unwrap();
    assert_eq!(sp.oldest(Some(&b)), Some(4));
    assert_eq!(sp.oldest(Some(&dest("C"))), None);
    assert!(matches!(sp.remove(1), Err(SpoolError::NotFound(1))));
    drop(sp);

    mem.reboot(); // removals were durable
    let (mut sp, report) = Spool::open(mem.clone(), cfg(None)).unwrap();
    assert_eq!(report.chunks, 3);
    assert_eq!(
        sp.pending().map(|(s, _)| s).collect::<Vec<_>>(),
        vec![2, 3, 4]
    );
    let (h, p) = chunk(5, "B", 20);
    sp.push(&h, &p).unwrap();
    assert_eq!(last_seq(&sp), 5);
    assert_eq!(sp.oldest(Some(&b)), Some(4));
    assert!(
        Arc::ptr_eq(&sp.info(4).unwrap().dest, &sp.info(5).unwrap().dest),
        "destinations are shared"
    );
}

#[test]
fn rejected_chunk_moves_aside_with_the_service_message_and_never_comes_back() {
    let mem = MemStorage::new();
    let (mut sp, _) = Spool::open(mem.clone(), cfg(None)).unwrap();
    for i in 0..3 {
        let (h, p) = chunk(i, "A", 20);
        sp.push(&h, &p).unwrap();
    }
    let long = "é".repeat(MAX_REJECT_MESSAGE_LEN); // 2 bytes each: must be cut on a char boundary
    sp.reject(0, "BadRequest_BadFormat: not JSON").unwrap();
    sp.reject(2, &long).unwrap();
    assert_eq!(sp.pending().map(|(s, _)| s).collect::<Vec<_>>(), vec![1]);
    assert!(matches!(
        sp.reject(0, "again"),
        Err(SpoolError::NotFound(0))
    ));
    let s = sp.stats();
    assert_eq!(
        (s.service_rejected_chunks, s.service_rejected_records),
        (2, 1 + 3)
    );
    let msg = mem
        .contents(Area::Rejected, "0000000000000000.msg")
        .unwrap();
    assert_eq!(msg, b"BadRequest_BadFormat: not JSON");
    let msg = mem
        .contents(Area::Rejected, "0000000000000002.msg")
        .unwrap();
    assert_eq!(msg.len(), MAX_REJECT_MESSAGE_LEN);
    assert!(std::str::from_utf8(&msg).is_ok());
    drop(sp);
    mem.reboot();
    let (sp, report) = Spool::open(mem.clone(), cfg(None)).unwrap();
    assert_eq!((report.chunks, sp.oldest(None)), (1, Some(1)));
    assert_eq!(mem.names(Area::Rejected).len(), 4);
}

#[test]
fn rejecting_on_a_full_disk_still_moves_the_chunk() {
    let mem = MemStorage::new();
    let (mut sp, _) = Spool::open(mem.clone(), cfg(None)).unwrap();
    let (h, p) = chunk(0, "A", 20);
    sp.push(&h, &p).unwrap();
    mem.set_space_limit(Some(mem.used_bytes()));
    sp.reject(0, "bad").unwrap();
    assert!(sp.is_empty());
    assert_eq!(
        mem.names(Area::Rejected),
        vec!["0000000000000000.chunk".to_string()]
    );
}

#[test]
fn config_debug_never_shows_the_key() {
    let s = format!("{:?}", cfg(Some(KEY)));
    assert!(s.contains("redacted") && !s.contains("66"), "{s}");
}

#[test]
fn spool_can_move_to_the_thread_that_owns_the_client() {
    fn send<T: Send>() {}
    send::<Spool<FsStorage>>();
    send::<Spool<MemStorage>>();
}

#[test]
fn power_cut_while_dropping_oldest_loses_only_the_chunk_being_dropped() {
    let c = SpoolConfig {
        max_chunks: 3,
        ..cfg(None)
    };
    // Ok-pushed chunk ids in push order; the in-flight one is recorded before the call.
    let run = |mem: &MemStorage, ok: &mut Vec<u32>, in_flight: &mut Option<u32>| {
        let Ok((mut sp, _)) = Spool::open(mem.clone(), c.clone()) else {
            return;
        };
        for i in 0..7u32 {
            let (h, p) = chunk(i, "A", 100 + i as usize * 50);
            *in_flight = Some(i);
            if sp.push(&h, &p).is_err() {
                return;
            }
            *in_flight = None;
            ok.push(i);
        }
    };
    let total = {
        let mem = MemStorage::new();
        run(&mem, &mut Vec::new(), &mut None);
        mem.op_count()
    };
    for n in 0..=total {
        for mode in [CutMode::LoseUnsynced, CutMode::Torn] {
            let mem = MemStorage::with_seed(n + 11);
            mem.cut_power_after(n, mode);
            let (mut ok, mut in_flight) = (Vec::new(), None);
            run(&mem, &mut ok, &mut in_flight);
            mem.reboot();
            let (mut sp, report) = Spool::open(mem.clone(), c.clone()).unwrap();
            assert_eq!(report.corrupt, 0);
            let got: Vec<u32> = read_all(&mut sp)
                .into_iter()
                .map(|(_, h, p)| {
                    let i = h.records - 1;
                    assert_eq!(
                        (h, p),
                        chunk(i, "A", 100 + i as usize * 50),
                        "cut {n} {mode:?}"
                    );
                    i
                })
                .collect();
            assert!(got.len() <= 3, "cut {n} {mode:?}: {got:?}");
            // The newest two acknowledged chunks could not be victims of the interrupted push.
            let must: Vec<u32> = ok.iter().rev().take(2).copied().collect();
            for i in &must {
                assert!(
                    got.contains(i),
                    "cut {n} {mode:?}: chunk {i} lost, have {got:?}, ok {ok:?}"
                );
            }
            let allowed: Vec<u32> = ok.iter().rev().take(3).copied().chain(in_flight).collect();
            assert!(
                got.iter().all(|i| allowed.contains(i)),
                "cut {n} {mode:?}: {got:?} vs {allowed:?}"
            );
        }
    }
}

// ---------------------------------------------------------------- faults that used to lose or repeat data

#[test]
fn failed_unlink_or_sync_on_remove_still_forgets_the_delivered_chunk() {
    for (op, kind) in [
        (0, io::ErrorKind::ReadOnlyFilesystem),
        (0, io::ErrorKind::PermissionDenied),
        (0, io::ErrorKind::Other),
        (1, io::ErrorKind::Other), // the directory fsync after a successful unlink
    ] {
        let mem = MemStorage::new();
        let (mut sp, _) = Spool::open(mem.clone(), cfg(None)).unwrap();
        for i in 0..2 {
            let (h, p) = chunk(i, "A", 50);
            sp.push(&h, &p).unwrap();
        }
        mem.fail_op(op, kind);
        assert!(
            sp.remove(0).is_err(),
            "{op} {kind:?}: the error is reported"
        );
        assert_eq!(sp.oldest(None), Some(1), "{op} {kind:?}: chunk 0 forgotten");
        let s = sp.stats();
        assert_eq!((s.chunks, s.io_errors, s.removed_chunks), (1, 1, 1));
        assert!(matches!(sp.remove(0), Err(SpoolError::NotFound(0))));
        sp.remove(1).unwrap();
        assert_eq!(sp.stats().io_errors, 1);
    }
}

#[test]
fn failed_move_to_rejected_still_forgets_the_chunk() {
    let mem = MemStorage::new();
    let (mut sp, _) = Spool::open(mem.clone(), cfg(None)).unwrap();
    let (h, p) = chunk(0, "A", 50);
    sp.push(&h, &p).unwrap();
    // EACCES on every operation: the .msg (best effort) and the rename both fail.
    for k in 0..8 {
        mem.fail_op(k, io::ErrorKind::PermissionDenied);
    }
    let e = sp.reject(0, "bad mapping").unwrap_err();
    assert!(matches!(e, SpoolError::Io(_)), "{e}");
    assert!(sp.is_empty(), "a rejected chunk is never resent as is");
    let s = sp.stats();
    assert_eq!(s.service_rejected_chunks, 1);
    assert!(s.io_errors >= 2, "the .msg and the rename: {}", s.io_errors);
    assert_eq!(
        mem.names(Area::Pending).len(),
        1,
        "the file itself stays where it was"
    );
}

#[test]
fn push_io_failures_are_counted() {
    let mem = MemStorage::new();
    let (mut sp, _) = Spool::open(mem.clone(), cfg(None)).unwrap();
    mem.fail_op(0, io::ErrorKind::Other);
    let (h, p) = chunk(0, "A", 50);
    assert!(sp.push(&h, &p).is_err());
    assert_eq!(sp.stats().io_errors, 1);
}

#[test]
fn over_limit_backlog_is_kept_on_open_and_push_waits_for_it_to_drain() {
    let mem = MemStorage::new();
    let (mut sp, _) = Spool::open(mem.clone(), cfg(None)).unwrap();
    for i in 0..6 {
        let (h, p) = chunk(i, "A", 100);
        sp.push(&h, &p).unwrap();
    }
    drop(sp);
    let small = SpoolConfig {
        max_chunks: 2,
        policy: FullPolicy::DropOldest,
        ..cfg(None)
    };
    let (mut sp, report) = Spool::open(mem.clone(), small.clone()).unwrap();
    assert_eq!((report.chunks, report.dropped.chunks), (6, 0));
    assert!(report.over_limit);
    let (h, p) = chunk(10, "A", 10);
    assert!(matches!(sp.push(&h, &p), Err(SpoolError::Full)));
    assert_eq!(sp.len(), 6, "DropOldest must not eat the recovered backlog");
    for seq in 0..5 {
        sp.remove(seq).unwrap();
        if seq < 3 {
            // Still more than max_chunks pending after this removal.
            assert!(matches!(sp.push(&h, &p), Err(SpoolError::Full)), "{seq}");
        }
    }
    // Under the limits again: the normal policy applies.
    assert_eq!(sp.push(&h, &p).unwrap(), Dropped::default());
    let d = sp.push(&h, &p).unwrap();
    assert_eq!(d.chunks, 1, "DropOldest works normally again");
    drop(sp);

    let (sp, report) = Spool::open(mem.clone(), small).unwrap();
    assert!(!report.over_limit);
    drop(sp);
    for i in 0..4 {
        let (mut sp, _) = Spool::open(mem.clone(), cfg(None)).unwrap();
        let (h, p) = chunk(20 + i, "A", 100);
        sp.push(&h, &p).unwrap();
    }
    let trim = SpoolConfig {
        max_chunks: 2,
        trim_on_open: true,
        ..cfg(None)
    };
    let (sp, report) = Spool::open(mem.clone(), trim).unwrap();
    assert_eq!(
        (report.chunks, report.dropped.chunks, report.over_limit),
        (2, 4, false)
    );
    assert_eq!(sp.stats().dropped_chunks, 4);
}

#[test]
fn a_second_client_on_the_same_directory_is_refused_with_the_holders_pid() {
    let dir = TempDir::new("lock");
    let first = FsStorage::new(&dir.0).unwrap();
    let e = FsStorage::new(&dir.0).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
    let msg = e.to_string();
    assert!(
        msg.contains(&format!("pid {}", std::process::id()))
            && msg.contains("one client per spool"),
        "{msg}"
    );
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.0.join(".lock"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    drop(first);
    let third = FsStorage::new(&dir.0).unwrap();
    let (sp, report) = Spool::open(third, cfg(None)).unwrap();
    assert_eq!(
        report,
        RecoveryReport::default(),
        "the lock file is not a chunk"
    );
    drop(sp);
}

#[test]
fn concurrent_first_opens_fail_only_on_the_lock() {
    for round in 0..5 {
        let dir = TempDir::new("race");
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(8));
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let (root, barrier) = (dir.0.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    // Hold a success until every thread has tried, so the others meet the lock.
                    let r = FsStorage::new(&root);
                    std::thread::sleep(std::time::Duration::from_millis(50));
                    r.map(drop)
                })
            })
            .collect();
        let mut ok = 0;
        for h in handles {
            match h.join().unwrap() {
                Ok(()) => ok += 1,
                Err(e) => assert_eq!(e.kind(), io::ErrorKind::WouldBlock, "round {round}: {e}"),
            }
        }
        assert!(ok >= 1, "round {round}");
    }
}

#[test]
fn symlinked_subdirectories_and_lock_file_are_refused() {
    use std::os::unix::fs::symlink;
    for what in ["corrupt", "rejected", ".lock"] {
        let dir = TempDir::new("symlink");
        std::fs::create_dir_all(&dir.0).unwrap();
        let elsewhere = dir.0.parent().unwrap().join("elsewhere");
        std::fs::create_dir_all(&elsewhere).unwrap();
        symlink(&elsewhere, dir.0.join(what)).unwrap();
        let e = FsStorage::new(&dir.0).unwrap_err();
        assert!(
            e.to_string()
                .contains("is a symlink: refusing to follow it"),
            "{what}: {e}"
        );
    }
}

// ---------------------------------------------------------------- format versions and sinks

/// A chunk file exactly as firmware with format version 1 wrote it, built byte by byte from the
/// version 1 table (no sink byte: the names follow the 72-byte fixed part).
pub(super) fn v1_file(h: &ChunkHeader, payload: &[u8], key: Option<&[u8; 32]>) -> Vec<u8> {
    let d = &h.dest;
    let mapping = d.mapping.as_deref().unwrap_or("");
    let names = [&d.database[..], &d.table[..], &d.format[..], mapping];
    let hlen = 72 + names.iter().map(|n| n.len()).sum::<usize>();
    let sealer = key.map(seal::Sealer::new);
    let mut f = Vec::new();
    f.extend_from_slice(b"KESC");
    f.push(1);
    let mut flags = 0u8;
    if h.gzip {
        flags |= 0x01;
    }
    if key.is_some() {
        flags |= 0x02;
    }
    if d.mapping.is_some() {
        flags |= 0x04;
    }
    f.push(flags);
    f.extend_from_slice(&(hlen as u16).to_le_bytes());
    f.extend_from_slice(&h.chunk_id);
    f.extend_from_slice(&h.created_unix_ms.to_le_bytes());
    f.extend_from_slice(&h.raw_len.to_le_bytes());
    f.extend_from_slice(&h.records.to_le_bytes());
    let stored = payload.len() + if key.is_some() { 16 } else { 0 };
    f.extend_from_slice(&(stored as u32).to_le_bytes());
    let sealing = sealer.as_ref().map(|s| format::Sealing {
        nonce: [5; 12],
        key_id: s.key_id(),
    });
    match &sealing {
        Some(s) => {
            f.extend_from_slice(&s.nonce);
            f.extend_from_slice(&s.key_id);
        }
        None => f.extend_from_slice(&[0; 20]),
    }
    for n in names {
        f.extend_from_slice(&(n.len() as u16).to_le_bytes());
    }
    assert_eq!(f.len(), 72);
    for n in names {
        f.extend_from_slice(n.as_bytes());
    }
    assert_eq!(f.len(), hlen);
    let hcrc = crate::crc32::crc32(&f);
    f.extend_from_slice(&hcrc.to_le_bytes());
    match (&sealer, &sealing) {
        (Some(sealer), Some(s)) => {
            let mut body = payload.to_vec();
            let tag = sealer.seal(s, &f[..hlen], &mut body).unwrap();
            f.extend_from_slice(&body);
            f.extend_from_slice(&tag);
        }
        _ => f.extend_from_slice(payload),
    }
    let crc = crate::crc32::crc32(&f);
    f.extend_from_slice(&crc.to_le_bytes());
    f
}

fn put(mem: &MemStorage, area: Area, name: &str, data: &[u8]) {
    let mut m = mem.clone();
    m.write_file(area, name, &[data]).unwrap();
    m.sync_area(area).unwrap();
}

#[test]
fn version_1_chunks_are_read_as_streaming_chunks_beside_version_2_ones() {
    for key in [None, Some(KEY)] {
        let mem = MemStorage::new();
        let v1: Vec<_> = (0..3)
            .map(|i| chunk(i, if i == 1 { "B" } else { "A" }, 100 * i as usize))
            .collect();
        for (i, (h, p)) in v1.iter().enumerate() {
            let name = format!("{i:016x}.chunk");
            put(&mem, Area::Pending, &name, &v1_file(h, p, key.as_ref()));
        }
        let (mut sp, report) = Spool::open(mem.clone(), cfg(key)).unwrap();
        assert_eq!(
            (report.chunks, report.corrupt, report.locked, report.newer),
            (3, 0, 0, 0)
        );
        assert!(sp.pending().all(|(_, i)| i.sink == SinkId::Streaming));
        let (mut h, p) = chunk(3, "A", 50);
        h.sink = SinkId::Queued;
        sp.push(&h, &p).unwrap();
        assert_eq!(
            mem.contents(Area::Pending, "0000000000000003.chunk")
                .unwrap()[4],
            2
        );
        drop(sp);
        let (mut sp, report) = Spool::open(mem.clone(), cfg(key)).unwrap();
        assert_eq!((report.chunks, report.corrupt), (4, 0));
        let got: Vec<_> = read_all(&mut sp)
            .into_iter()
            .map(|(_, h, p)| (h, p))
            .collect();
        let mut expect = v1.clone();
        expect.push((h, p));
        assert_eq!(got, expect, "key {}", key.is_some());
        // A v1 chunk altered behind the spool's back (valid CRCs) still fails authentication.
        if key.is_some() {
            sp.remove(0).unwrap();
            drop(sp);
            tamper(&mem, "0000000000000001.chunk", |d| {
                let n = d.len();
                d[n - 25] ^= 4;
            });
            let (mut sp, _) = Spool::open(mem.clone(), cfg(key)).unwrap();
            let mut buf = vec![0u8; 4096];
            assert!(matches!(sp.read(1, &mut buf), Err(SpoolError::Corrupt(_))));
        }
    }
}

#[test]
fn the_sink_round_trips_and_each_sink_has_its_own_size_bound() {
    let c = SpoolConfig {
        max_payload_len_queued: MAX_PAYLOAD_LEN + 4096,
        ..cfg(None)
    };
    let (mut sp, _) = Spool::open(MemStorage::new(), c.clone()).unwrap();
    let (mut q, _) = chunk(1, "A", 0);
    q.sink = SinkId::Queued;
    q.raw_len = 3 * MAX_RAW_LEN; // no raw bound for queued chunks
    let big = bytes(3, MAX_PAYLOAD_LEN + 4096);
    sp.push(&q, &big).unwrap();
    assert_eq!(sp.info(0).unwrap().sink, SinkId::Queued);
    assert_eq!(
        sp.max_payload_len_for(SinkId::Queued),
        MAX_PAYLOAD_LEN + 4096
    );
    assert!(matches!(
        sp.push(&q, &bytes(3, MAX_PAYLOAD_LEN + 4097)),
        Err(SpoolError::TooLarge { max, .. }) if max == (MAX_PAYLOAD_LEN + 4096) as u64
    ));
    // The streaming bounds are fixed.
    let (mut s, _) = chunk(2, "A", 0);
    assert!(matches!(
        sp.push(&s, &big),
        Err(SpoolError::TooLarge { max, .. }) if max == MAX_PAYLOAD_LEN as u64
    ));
    s.raw_len = MAX_RAW_LEN + 1;
    assert!(matches!(
        sp.push(&s, b"x"),
        Err(SpoolError::TooLarge { .. })
    ));
    // A streaming-sized buffer is too small for the big queued chunk; nothing is consumed.
    let mut out = vec![0u8; Spool::<MemStorage>::max_payload_len()];
    assert!(matches!(
        sp.read(0, &mut out),
        Err(SpoolError::BufferTooSmall { needed }) if needed == MAX_PAYLOAD_LEN + 4096
    ));
    out.resize(MAX_PAYLOAD_LEN + 4096, 0);
    let (h, n) = sp.read(0, &mut out).unwrap();
    assert_eq!((h, &out[..n]), (q.clone(), &big[..]));

    // A lowered queued bound refuses new big chunks but still serves the one on flash.
    let small = SpoolConfig {
        max_payload_len_queued: 100,
        ..cfg(None)
    };
    let (mut sp, report) = Spool::open(sp.into_storage(), small).unwrap();
    assert_eq!(report.chunks, 1);
    let (mut q2, p2) = chunk(3, "A", 101);
    q2.sink = SinkId::Queued;
    assert!(matches!(
        sp.push(&q2, &p2),
        Err(SpoolError::TooLarge { max: 100, .. })
    ));
    q2.sink = SinkId::Streaming;
    sp.push(&q2, &p2).unwrap();
    assert_eq!(sp.read(0, &mut out).unwrap().1, big.len());

    if usize::BITS > 32 {
        let e = Spool::open(
            MemStorage::new(),
            SpoolConfig {
                max_payload_len_queued: MAX_STORED_PAYLOAD_LEN + 1,
                ..cfg(None)
            },
        )
        .err()
        .unwrap();
        assert!(matches!(e, SpoolError::InvalidConfig(_)), "{e}");
    }
}

#[test]
fn chunks_of_newer_firmware_stay_in_place_untouched_and_counted() {
    let mem = MemStorage::new();
    let (mut sp, _) = Spool::open(mem.clone(), cfg(None)).unwrap();
    for i in 0..3 {
        let (h, p) = chunk(i, "A", 100);
        sp.push(&h, &p).unwrap();
    }
    drop(sp);
    // A format version 3 file (its layout unknown here: just the magic and version), and a
    // version 2 file naming a sink this firmware does not know, with valid checksums.
    let mut v3 = mem
        .contents(Area::Pending, "0000000000000000.chunk")
        .unwrap();
    v3[4] = 3;
    v3.extend_from_slice(b"fields of a future layout");
    put(&mem, Area::Pending, "0000000000000000.chunk", &v3);
    tamper(&mem, "0000000000000001.chunk", |d| d[72] = 9);
    let sink9 = mem
        .contents(Area::Pending, "0000000000000001.chunk")
        .unwrap();
    let newer_bytes = (v3.len() + sink9.len()) as u64;
    // Version 0 is no version at all: damage.
    let mut v0 = v3.clone();
    v0[4] = 0;
    put(&mem, Area::Pending, "0000000000000010.chunk", &v0);

    for _ in 0..2 {
        let (mut sp, report) = Spool::open(mem.clone(), cfg(None)).unwrap();
        assert_eq!(
            (report.chunks, report.newer, report.newer_bytes),
            (1, 2, newer_bytes)
        );
        let s = sp.stats();
        assert_eq!(
            (s.newer_chunks, s.newer_bytes, s.chunks),
            (2, newer_bytes, 1)
        );
        assert_eq!(
            mem.contents(Area::Pending, "0000000000000000.chunk")
                .unwrap(),
            v3,
            "left untouched"
        );
        assert_eq!(
            mem.contents(Area::Pending, "0000000000000001.chunk")
                .unwrap(),
            sink9
        );
        assert_eq!(read_all(&mut sp).len(), 1);
        // Their numbers stay reserved.
        let (h, p) = chunk(7, "A", 10);
        sp.push(&h, &p).unwrap();
        let seq = last_seq(&sp);
        assert!(seq > 0x10);
        sp.remove(seq).unwrap();
    }
    assert_eq!(
        mem.names(Area::Corrupt),
        vec!["0000000000000010.chunk".to_string()],
        "only the damaged one was moved"
    );
}

mod admin;
mod bounded;
