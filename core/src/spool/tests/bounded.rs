//! The quarantine (`rejected/` and `corrupt/`) is bounded too, across reboots and power cuts.

use super::*;

fn qcfg(chunks: u32, bytes: u64) -> SpoolConfig {
    SpoolConfig {
        quarantine_max_chunks: chunks,
        quarantine_max_bytes: bytes,
        ..cfg(None)
    }
}

/// Chunk files, and bytes of all files, in `rejected/` and `corrupt/`.
fn on_flash(mem: &MemStorage) -> (usize, u64) {
    let (mut n, mut b) = (0, 0);
    for a in [Area::Rejected, Area::Corrupt] {
        for name in mem.names(a) {
            n += usize::from(name.ends_with(".chunk"));
            b += mem.contents(a, &name).unwrap().len() as u64;
        }
    }
    (n, b)
}

fn name(seq: u64) -> String {
    format!("{seq:016x}.chunk")
}

fn msg_name(seq: u64) -> String {
    format!("{seq:016x}.msg")
}

/// Sequence numbers of the chunk files of `area`.
fn seqs_in(mem: &MemStorage, area: Area) -> Vec<u64> {
    mem.names(area)
        .iter()
        .filter_map(|n| n.strip_suffix(".chunk"))
        .map(|h| u64::from_str_radix(h, 16).unwrap())
        .collect()
}

#[test]
fn a_full_quarantine_deletes_its_oldest_chunks_first_and_says_so() {
    let mem = MemStorage::new();
    let (mut sp, _) = Spool::open(mem.clone(), qcfg(3, 1 << 20)).unwrap();
    for i in 0..6 {
        let (h, p) = chunk(i, "A", 100 + i as usize);
        sp.push(&h, &p).unwrap();
    }
    let size: Vec<u64> = (0..6).map(|s| sp.info(s).unwrap().file_len).collect();
    for s in 0..3 {
        assert_eq!(sp.reject(s, "bad").unwrap(), QuarantineDropped::default());
    }
    let s = sp.stats();
    assert_eq!(
        (s.quarantine_chunks, s.quarantine_bytes),
        (3, size[0] + size[1] + size[2] + 9)
    );
    assert_eq!(
        sp.reject(3, "bad").unwrap(),
        QuarantineDropped {
            chunks: 1,
            bytes: size[0] + 3,
            incoming: false
        }
    );
    assert_eq!(seqs_in(&mem, Area::Rejected), vec![1, 2, 3]);
    assert!(mem.contents(Area::Rejected, &msg_name(0)).is_none());

    // corrupt/ shares the bound: bit rot found on read evicts the oldest, a rejected chunk.
    assert!(mem.flip_bit(Area::Pending, &name(4), 8 * 120));
    let mut buf = vec![0u8; 4096];
    match sp.read(4, &mut buf) {
        Err(SpoolError::Corrupt(m)) => assert!(
            m.contains("moved to corrupt/") && m.contains("1 oldest quarantined chunks"),
            "{m}"
        ),
        other => panic!("{other:?}"),
    }
    assert_eq!(seqs_in(&mem, Area::Rejected), vec![2, 3]);
    assert_eq!(seqs_in(&mem, Area::Corrupt), vec![4]);
    let s = sp.stats();
    assert_eq!(
        (
            s.quarantine_chunks,
            s.quarantine_dropped_chunks,
            s.quarantine_dropped_bytes
        ),
        (3, 2, size[0] + size[1] + 6)
    );
    assert_eq!(s.quarantine_bytes, size[2] + size[3] + 6 + size[4]);
    drop(sp);

    // By bytes: room for two chunks and their messages only.
    let mem = MemStorage::new();
    let (mut sp, _) = Spool::open(mem.clone(), qcfg(100, 2 * (200 + 160))).unwrap();
    for i in 0..3 {
        let (h, p) = chunk(i, "A", 200);
        sp.push(&h, &p).unwrap();
    }
    assert_eq!(sp.reject(0, "m").unwrap().chunks, 0);
    assert_eq!(sp.reject(1, "m").unwrap().chunks, 0);
    assert_eq!(sp.reject(2, "m").unwrap().chunks, 1);
    assert_eq!(seqs_in(&mem, Area::Rejected), vec![1, 2]);
    assert!(on_flash(&mem).1 <= 2 * (200 + 160));
}

#[test]
fn a_chunk_bigger_than_the_whole_quarantine_is_deleted_instead_of_moved() {
    let mem = MemStorage::new();
    let (mut sp, _) = Spool::open(mem.clone(), qcfg(10, 500)).unwrap();
    let (h, p) = chunk(0, "A", 1000);
    sp.push(&h, &p).unwrap();
    let big = sp.info(0).unwrap().file_len;
    let (h, p) = chunk(1, "A", 10);
    sp.push(&h, &p).unwrap();
    assert_eq!(
        sp.reject(0, "too big to keep").unwrap(),
        QuarantineDropped {
            chunks: 1,
            bytes: big,
            incoming: true
        }
    );
    assert!(mem.names(Area::Rejected).is_empty());
    assert_eq!(mem.names(Area::Pending), vec![name(1)]);
    assert_eq!(sp.reject(1, "kept").unwrap(), QuarantineDropped::default());
    assert_eq!(seqs_in(&mem, Area::Rejected), vec![1]);
    assert_eq!(sp.stats().service_rejected_chunks, 2);
    drop(sp);

    // Nothing kept at all: rejected and corrupt chunks are deleted, counted, durably.
    let mem = MemStorage::new();
    let (mut sp, _) = Spool::open(mem.clone(), qcfg(0, 1 << 20)).unwrap();
    for i in 0..2 {
        let (h, p) = chunk(i, "A", 50);
        sp.push(&h, &p).unwrap();
    }
    assert!(sp.reject(0, "x").unwrap().incoming);
    assert!(mem.flip_bit(Area::Pending, &name(1), 8 * 100));
    let mut buf = [0u8; 100];
    match sp.read(1, &mut buf) {
        Err(SpoolError::Corrupt(m)) => assert!(m.contains("deleted instead"), "{m}"),
        other => panic!("{other:?}"),
    }
    let s = sp.stats();
    assert_eq!(
        (
            s.quarantine_chunks,
            s.quarantine_dropped_chunks,
            s.corrupt_chunks
        ),
        (0, 2, 1)
    );
    drop(sp);
    mem.reboot();
    assert!(mem.names(Area::Pending).is_empty());
    assert_eq!(on_flash(&mem), (0, 0));
}

#[test]
fn open_indexes_the_quarantine_so_its_bound_holds_across_reboots_and_lowered_limits() {
    let mem = MemStorage::new();
    let (mut sp, _) = Spool::open(mem.clone(), cfg(None)).unwrap();
    for i in 0..8 {
        let (h, p) = chunk(i, "A", 100);
        sp.push(&h, &p).unwrap();
    }
    for s in 0..5 {
        sp.reject(s, &format!("reason {s}")).unwrap();
    }
    drop(sp);
    assert!(mem.flip_bit(Area::Pending, &name(5), 8 * 90));
    // A message left without its chunk, and a file that is not the spool's.
    put(&mem, Area::Rejected, &msg_name(0x50), b"orphan");
    put(&mem, Area::Rejected, "notes.txt", b"operator's notes");

    let (mut sp, report) = Spool::open(mem.clone(), qcfg(4, 1 << 20)).unwrap();
    assert_eq!(
        (report.chunks, report.corrupt, report.removed_partial),
        (2, 1, 1)
    );
    // Five rejected chunks indexed, one dropped to fit four, then the corrupt one needs a second.
    assert_eq!(report.quarantine_dropped.chunks, 2);
    assert_eq!(report.quarantine_chunks, 4);
    assert_eq!(seqs_in(&mem, Area::Rejected), vec![2, 3, 4]);
    assert_eq!(seqs_in(&mem, Area::Corrupt), vec![5]);
    assert!(mem.contents(Area::Rejected, "notes.txt").is_some());
    assert!(mem.contents(Area::Rejected, &msg_name(0x50)).is_none());
    assert_eq!(report.quarantine_chunks, sp.stats().quarantine_chunks);
    // The sizes are the files' (messages included, foreign files not).
    let files: u64 = [Area::Rejected, Area::Corrupt]
        .into_iter()
        .flat_map(|a| mem.names(a).into_iter().map(move |n| (a, n)))
        .filter(|(_, n)| n != "notes.txt")
        .map(|(a, n)| mem.contents(a, &n).unwrap().len() as u64)
        .sum();
    assert_eq!(report.quarantine_bytes, files);
    // Numbering still resumes after the orphan's number.
    let (h, p) = chunk(9, "A", 10);
    sp.push(&h, &p).unwrap();
    assert_eq!(last_seq(&sp), 0x51);
    // The next reject evicts the oldest of the previous run.
    assert_eq!(sp.reject(6, "r").unwrap().chunks, 1);
    assert_eq!(seqs_in(&mem, Area::Rejected), vec![3, 4, 6]);
    drop(sp);

    let (_, report) = Spool::open(mem.clone(), qcfg(4, 1 << 20)).unwrap();
    assert_eq!(
        (report.quarantine_chunks, report.quarantine_dropped.chunks),
        (4, 0)
    );
    let (_, report) = Spool::open(mem.clone(), qcfg(4, files / 2)).unwrap();
    assert!(report.quarantine_dropped.chunks >= 1);
    assert!(report.quarantine_bytes <= files / 2);
    assert_eq!(
        on_flash(&mem).1 - b"operator's notes".len() as u64,
        report.quarantine_bytes
    );
}

/// Chunk id of a chunk file's contents.
fn id_of(file: &[u8]) -> Option<[u8; 16]> {
    file.get(8..24).map(|b| b.try_into().unwrap())
}

/// Ids of the chunk files of `area`, by sequence number.
fn ids_in(mem: &MemStorage, area: Area) -> Vec<(u64, [u8; 16])> {
    seqs_in(mem, area)
        .into_iter()
        .filter_map(|s| Some((s, id_of(&mem.contents(area, &name(s))?)?)))
        .collect()
}

#[test]
fn power_cuts_while_the_quarantine_is_trimmed_lose_only_its_oldest_chunks() {
    let c = qcfg(2, 1 << 20);
    // Six chunks; 0 and 1 rejected (the quarantine is full); 4 rots, found at the next open.
    let setup = |seed: u64| {
        let mem = MemStorage::with_seed(seed);
        let (mut sp, _) = Spool::open(mem.clone(), c.clone()).unwrap();
        let mut files = Vec::new();
        for i in 0..6 {
            let (h, p) = chunk(i, if i % 2 == 0 { "A" } else { "B" }, 80 + 40 * i as usize);
            sp.push(&h, &p).unwrap();
            files.push(mem.contents(Area::Pending, &name(i as u64)).unwrap());
        }
        sp.reject(0, "m0").unwrap();
        sp.reject(1, "m1").unwrap();
        drop(sp);
        assert!(mem.flip_bit(Area::Pending, &name(4), 8 * 100 + 1));
        (mem, files)
    };
    // Open (4 goes to corrupt/, evicting 0), reject 2 and 3 (each evicting the oldest).
    let workload = |mem: &MemStorage, ok: &mut Vec<u64>| -> Option<()> {
        let (mut sp, _) = Spool::open(mem.clone(), c.clone()).ok()?;
        for s in [2, 3] {
            sp.reject(s, &format!("m{s}")).ok()?;
            ok.push(s);
        }
        Some(())
    };
    let total = {
        let (mem, _) = setup(1);
        let before = mem.op_count();
        workload(&mem, &mut Vec::new()).unwrap();
        mem.op_count() - before
    };
    assert!(total > 10, "{total}");
    let mut runs = 0;
    for n in 0..=total {
        for mode in [CutMode::LoseUnsynced, CutMode::Torn] {
            for seed in 0..3 {
                let what = format!("cut at {n}/{total} {mode:?} seed {seed}");
                let (mem, files) = setup(n * 131 + seed);
                mem.cut_power_after(n, mode);
                let mut ok = Vec::new();
                workload(&mem, &mut ok);
                mem.reboot();
                // The bound holds on flash itself, before any open repairs anything.
                assert!(on_flash(&mem).0 <= 2, "{what}: {:?}", on_flash(&mem));

                let (mut sp, report) = Spool::open(mem.clone(), c.clone()).unwrap();
                assert!(report.corrupt <= 1, "{what}");
                assert!(on_flash(&mem).0 <= 2, "{what}");
                let pending: Vec<u64> = read_all(&mut sp)
                    .into_iter()
                    .map(|(_, h, _)| h.records as u64 - 1)
                    .collect();
                let rejected = ids_in(&mem, Area::Rejected);
                let corrupt = seqs_in(&mem, Area::Corrupt);
                // Every quarantined file is intact and where its chunk was; each chunk is in
                // one place at most; rejected ones carry their message; no leftovers.
                let mut places: Vec<u64> = pending.clone();
                for (s, id) in &rejected {
                    assert_eq!(
                        mem.contents(Area::Rejected, &name(*s)).unwrap(),
                        files[*s as usize],
                        "{what}"
                    );
                    assert_eq!(id_of(&files[*s as usize]), Some(*id));
                    assert_eq!(
                        mem.contents(Area::Rejected, &msg_name(*s)).unwrap(),
                        format!("m{s}").into_bytes(),
                        "{what}"
                    );
                    places.push(*s);
                }
                assert_eq!(
                    mem.names(Area::Rejected).len(),
                    2 * rejected.len(),
                    "{what}: leftovers {:?}",
                    mem.names(Area::Rejected)
                );
                assert!(corrupt.iter().all(|&s| s == 4), "{what}");
                places.extend(&corrupt);
                let mut sorted = places.clone();
                sorted.sort_unstable();
                sorted.dedup();
                assert_eq!(sorted.len(), places.len(), "{what}: a chunk in two places");
                // Nothing but quarantined chunks is ever deleted, and only the oldest ones.
                assert!(pending.contains(&5), "{what}");
                for s in &ok {
                    assert!(!pending.contains(s), "{what}: rejected chunk {s} came back");
                }
                let kept_q: Vec<u64> = rejected.iter().map(|r| r.0).chain(corrupt).collect();
                for s in 0..6u64 {
                    if !sorted.contains(&s) {
                        assert!(
                            kept_q.iter().all(|&k| k > s) || s == 4,
                            "{what}: chunk {s} deleted while older ones are kept: {kept_q:?}"
                        );
                    }
                }
                runs += 1;
            }
        }
    }
    assert!(runs > 60);
}

#[test]
fn power_cuts_while_open_trims_an_oversized_quarantine_delete_oldest_first() {
    let (mem0, originals) = {
        let mem = MemStorage::new();
        let (mut sp, _) = Spool::open(mem.clone(), cfg(None)).unwrap();
        for i in 0..8 {
            let (h, p) = chunk(i, "A", 60);
            sp.push(&h, &p).unwrap();
        }
        for s in 0..6 {
            sp.reject(s, "old").unwrap();
        }
        let files: Vec<_> = (0..6)
            .map(|s| mem.contents(Area::Rejected, &name(s)).unwrap())
            .collect();
        (mem, files)
    };
    let small = qcfg(2, 1 << 20);
    let total = {
        let mem = mem0.fork();
        let before = mem.op_count();
        let (_, report) = Spool::open(mem.clone(), small.clone()).unwrap();
        assert_eq!(report.quarantine_dropped.chunks, 4);
        mem.op_count() - before
    };
    for n in 0..=total {
        for mode in [CutMode::LoseUnsynced, CutMode::Torn] {
            let what = format!("cut at {n}/{total} {mode:?}");
            let mem = mem0.fork();
            mem.cut_power_after(n, mode);
            let _ = Spool::open(mem.clone(), small.clone());
            mem.reboot();
            let left = seqs_in(&mem, Area::Rejected);
            let first = 6 - left.len() as u64;
            assert_eq!(left, (first..6).collect::<Vec<_>>(), "{what}: oldest first");
            let (mut sp, report) = Spool::open(mem.clone(), small.clone()).unwrap();
            assert_eq!(seqs_in(&mem, Area::Rejected), vec![4, 5], "{what}");
            assert_eq!(mem.names(Area::Rejected).len(), 4, "{what}: leftovers");
            assert_eq!(report.quarantine_chunks, 2);
            for s in [4, 5] {
                assert_eq!(
                    mem.contents(Area::Rejected, &name(s)).unwrap(),
                    originals[s as usize]
                );
            }
            assert_eq!(read_all(&mut sp).len(), 2, "{what}: pending untouched");
        }
    }
}
