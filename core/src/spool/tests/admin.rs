//! Status, purge and requeue, including power cuts in the middle of them.

use super::*;

fn name(seq: u64) -> String {
    format!("{seq:016x}.chunk")
}

fn msg_name(seq: u64) -> String {
    format!("{seq:016x}.msg")
}

fn seqs_in(mem: &MemStorage, area: Area) -> Vec<u64> {
    mem.names(area)
        .iter()
        .filter_map(|n| n.strip_suffix(".chunk"))
        .map(|h| u64::from_str_radix(h, 16).unwrap())
        .collect()
}

/// Chunk i of the tests below: the record count is i + 1, so it names the chunk anywhere.
fn which(file: &[u8]) -> u32 {
    let hlen = u16::from_le_bytes([file[6], file[7]]) as usize;
    let d = format::decode_header(&file[..hlen + 4]).unwrap();
    d.header.records - 1
}

fn table_a_csv() -> DestKey {
    DestKey {
        format: "csv".into(),
        mapping: Some("a_csv".into()),
        ..dest("A")
    }
}

const TABLE_A: DestFilter<'static> = DestFilter::Table {
    database: "telemetry",
    table: "A",
};

#[test]
fn status_sums_pending_chunks_per_destination_and_sink_and_counts_the_quarantine() {
    let mem = MemStorage::new();
    let (mut sp, _) = Spool::open(mem.clone(), cfg(None)).unwrap();
    assert_eq!(sp.status(), SpoolStatus::default());
    for i in 0..7u32 {
        let (mut h, p) = chunk(i, if i % 3 == 1 { "B" } else { "A" }, 100);
        if i == 5 {
            h.sink = SinkId::Queued;
        }
        if i == 6 {
            h.created_unix_ms = 5; // older than everything, though pushed last
        }
        sp.push(&h, &p).unwrap();
    }
    sp.reject(2, "bad").unwrap();
    let size = |sp: &Spool<MemStorage>, s| sp.info(s).unwrap().file_len;
    let st = sp.status();
    assert_eq!(
        st.dests
            .iter()
            .map(|d| (
                d.dest.table.as_str(),
                d.sink,
                d.chunks,
                d.records,
                d.oldest_seq
            ))
            .collect::<Vec<_>>(),
        vec![
            ("A", SinkId::Streaming, 3, 1 + 4 + 7, 0),
            ("B", SinkId::Streaming, 2, 2 + 5, 1),
            ("A", SinkId::Queued, 1, 6, 5),
        ]
    );
    assert_eq!(st.dests[0].oldest_created_unix_ms, 5);
    assert_eq!(st.dests[1].oldest_created_unix_ms, 1_700_000_000_001);
    assert_eq!(
        st.dests[0].bytes,
        size(&sp, 0) + size(&sp, 3) + size(&sp, 6)
    );
    assert_eq!(
        st.pending,
        AreaCount {
            chunks: 6,
            bytes: sp.stats().bytes
        }
    );
    assert_eq!(st.rejected.chunks, 1);
    assert_eq!(st.rejected.bytes, sp.stats().quarantine_bytes);
    assert_eq!(st.corrupt, AreaCount::default());
    drop(sp);

    // Damaged, locked and newer chunks show too.
    assert!(mem.flip_bit(Area::Pending, &name(0), 8 * 100));
    let mut v9 = mem.contents(Area::Pending, &name(1)).unwrap();
    v9[4] = 9;
    put(&mem, Area::Pending, &name(1), &v9);
    let (h, p) = chunk(9, "A", 10);
    let sealed = {
        let m = MemStorage::new();
        let (mut s, _) = Spool::open(m.clone(), cfg(Some(KEY))).unwrap();
        s.push(&h, &p).unwrap();
        m.contents(Area::Pending, &name(0)).unwrap()
    };
    put(&mem, Area::Pending, &name(0x20), &sealed);
    let (sp, _) = Spool::open(mem.clone(), cfg(None)).unwrap();
    let st = sp.status();
    assert_eq!(st.pending.chunks, 4);
    assert_eq!(st.corrupt.chunks, 1);
    assert_eq!(
        st.newer,
        AreaCount {
            chunks: 1,
            bytes: v9.len() as u64
        }
    );
    assert_eq!(
        st.locked,
        AreaCount {
            chunks: 1,
            bytes: sealed.len() as u64
        }
    );
}

#[test]
fn purge_deletes_one_tables_chunks_of_every_format_or_all_and_optionally_the_quarantine() {
    let mem = MemStorage::new();
    let (mut sp, _) = Spool::open(mem.clone(), cfg(None)).unwrap();
    for i in 0..8u32 {
        let (mut h, p) = chunk(i, if i % 2 == 0 { "A" } else { "B" }, 100);
        if i % 4 == 2 {
            h.dest = table_a_csv();
        }
        sp.push(&h, &p).unwrap();
    }
    sp.reject(0, "a").unwrap();
    sp.reject(1, "b").unwrap();
    sp.reject(2, "a csv").unwrap();
    assert!(mem.flip_bit(Area::Pending, &name(3), 8 * 100));
    let mut buf = vec![0u8; 1024];
    assert!(sp.read(3, &mut buf).is_err()); // 3 (table B) to corrupt/
    let bytes_of = |sp: &Spool<MemStorage>, seqs: &[u64]| -> u64 {
        seqs.iter().map(|&s| sp.info(s).unwrap().file_len).sum()
    };
    let a_bytes = bytes_of(&sp, &[4, 6]);

    // Pending only: chunks 4 and 6 (table A, both formats); quarantine untouched.
    let p = sp.purge(TABLE_A, &[Area::Pending]).unwrap();
    assert_eq!(
        p,
        Purged {
            pending: Dropped {
                chunks: 2,
                records: 5 + 7,
                bytes: a_bytes
            },
            ..Purged::default()
        }
    );
    assert_eq!(sp.pending().map(|(s, _)| s).collect::<Vec<_>>(), vec![5, 7]);
    assert_eq!(seqs_in(&mem, Area::Rejected), vec![0, 1, 2]);
    let s = sp.stats();
    assert_eq!((s.purged_chunks, s.purged_records), (2, 12));

    // Table A's rejected chunks (both formats) and messages; the corrupt B chunk stays.
    let p = sp.purge(TABLE_A, &[Area::Rejected, Area::Corrupt]).unwrap();
    assert_eq!(
        (p.pending.chunks, p.rejected.chunks, p.corrupt.chunks),
        (0, 2, 0)
    );
    assert_eq!(mem.names(Area::Rejected), vec![name(1), msg_name(1)]);
    assert_eq!(seqs_in(&mem, Area::Corrupt), vec![3]);
    assert_eq!(sp.status().rejected.chunks, 1);

    // A damaged header is only selected by All.
    mem.truncate(Area::Corrupt, &name(3), 30);
    let p = sp
        .purge(
            DestFilter::Table {
                database: "telemetry",
                table: "B",
            },
            &Area::ALL,
        )
        .unwrap();
    assert_eq!(
        (p.pending.chunks, p.rejected.chunks, p.corrupt.chunks),
        (2, 1, 0)
    );
    let p = sp.purge(DestFilter::All, &Area::ALL).unwrap();
    assert_eq!(p.corrupt.chunks, 1);
    assert!(sp.is_empty());
    assert_eq!(sp.stats().quarantine_chunks, 0);
    drop(sp);
    mem.reboot();
    let (_, report) = Spool::open(mem.clone(), cfg(None)).unwrap();
    assert_eq!((report.chunks, report.quarantine_chunks), (0, 0), "durable");
    assert!(mem.names(Area::Pending).is_empty());
}

#[test]
fn requeue_moves_rejected_chunks_back_after_the_pending_ones_within_the_limits() {
    let mem = MemStorage::new();
    let c = SpoolConfig {
        max_chunks: 5,
        ..cfg(None)
    };
    let (mut sp, _) = Spool::open(mem.clone(), cfg(None)).unwrap();
    let mut all = Vec::new();
    for i in 0..7u32 {
        let (h, p) = chunk(i, if i % 2 == 0 { "A" } else { "B" }, 100 + i as usize);
        sp.push(&h, &p).unwrap();
        all.push((h, p));
    }
    sp.remove(6).unwrap();
    for s in 0..5 {
        sp.reject(s, &format!("m{s}")).unwrap();
    }
    drop(sp);
    let (mut sp, _) = Spool::open(mem.clone(), c.clone()).unwrap();
    // Table A only: 0, 2, 4; their messages go, B's stay.
    let r = sp.requeue_rejected(TABLE_A).unwrap();
    assert_eq!(
        (r.chunks, r.records, r.left, r.skipped),
        (3, 1 + 3 + 5, 0, 0)
    );
    assert_eq!(
        sp.pending().map(|(s, _)| s).collect::<Vec<_>>(),
        vec![5, 6, 7, 8],
        "new numbers after every one on flash, in their order"
    );
    assert_eq!(
        mem.names(Area::Rejected),
        vec![name(1), msg_name(1), name(3), msg_name(3)]
    );
    assert_eq!(
        r.bytes,
        (6..9).map(|s| sp.info(s).unwrap().file_len).sum::<u64>()
    );
    let got: Vec<_> = read_all(&mut sp)
        .into_iter()
        .map(|(_, h, p)| (h, p))
        .collect();
    let want: Vec<_> = [5, 0, 2, 4].iter().map(|&i| all[i].clone()).collect();
    assert_eq!(got, want, "same chunks, same ids");
    let s = sp.stats();
    assert_eq!(
        (s.requeued_chunks, s.quarantine_chunks, s.chunks),
        (3, 2, 4)
    );

    // All: only one fits under max_chunks 5; the other is left for later.
    let r = sp.requeue_rejected(DestFilter::All).unwrap();
    assert_eq!((r.chunks, r.left), (1, 1));
    assert_eq!(seqs_in(&mem, Area::Rejected), vec![3]);
    assert_eq!(last_seq(&sp), 9);
    sp.remove(5).unwrap();
    let r = sp.requeue_rejected(DestFilter::All).unwrap();
    assert_eq!((r.chunks, r.left), (1, 0));
    assert!(mem.names(Area::Rejected).is_empty());
    drop(sp);
    mem.reboot();
    let (mut sp, report) = Spool::open(mem.clone(), c).unwrap();
    assert_eq!((report.chunks, report.quarantine_chunks), (5, 0));
    let order: Vec<u32> = read_all(&mut sp)
        .iter()
        .map(|(_, h, _)| h.records - 1)
        .collect();
    assert_eq!(order, vec![0, 2, 4, 1, 3]);
}

#[test]
fn requeue_skips_damaged_locked_and_newer_chunks_and_waits_for_a_backlog_to_drain() {
    let mem = MemStorage::new();
    let (mut sp, _) = Spool::open(mem.clone(), cfg(Some(KEY))).unwrap();
    for i in 0..4 {
        let (h, p) = chunk(i, "A", 100);
        sp.push(&h, &p).unwrap();
        sp.reject(i as u64, "x").unwrap();
    }
    drop(sp);
    assert!(mem.flip_bit(Area::Rejected, &name(0), 8 * 150)); // payload bit rot
    let mut v3 = mem.contents(Area::Rejected, &name(1)).unwrap();
    v3[4] = 3;
    put(&mem, Area::Rejected, &name(1), &v3);
    // Opened with another key, nothing can go back.
    let (mut sp, _) = Spool::open(mem.clone(), cfg(Some(OTHER_KEY))).unwrap();
    let r = sp.requeue_rejected(DestFilter::All).unwrap();
    assert_eq!((r.chunks, r.skipped), (0, 4));
    drop(sp);
    let (mut sp, _) = Spool::open(mem.clone(), cfg(Some(KEY))).unwrap();
    let r = sp.requeue_rejected(DestFilter::All).unwrap();
    assert_eq!((r.chunks, r.skipped, r.left), (2, 2, 0));
    assert_eq!(seqs_in(&mem, Area::Rejected), vec![0, 1]);
    assert_eq!(read_all(&mut sp).len(), 2);
    drop(sp);

    // A recovered backlog over lowered limits takes nothing back until it drained.
    let small = SpoolConfig {
        max_chunks: 1,
        ..cfg(Some(KEY))
    };
    let (mut sp, report) = Spool::open(mem.clone(), small).unwrap();
    assert!(report.over_limit);
    sp.reject(4, "again").unwrap(); // chunk 2, requeued as 4
                                    // Chunk 0's payload damage would only show when it is verified, right before its move.
    let r = sp.requeue_rejected(DestFilter::All).unwrap();
    assert_eq!((r.chunks, r.left, r.skipped), (0, 2, 1));
}

/// Setup of the power-cut sweeps: six chunks of tables A and B; 0..4 rejected with messages.
fn rejected_setup(seed: u64) -> MemStorage {
    let mem = MemStorage::with_seed(seed);
    let (mut sp, _) = Spool::open(mem.clone(), cfg(None)).unwrap();
    for i in 0..6u32 {
        let (h, p) = chunk(i, if i % 2 == 0 { "A" } else { "B" }, 60 + 30 * i as usize);
        sp.push(&h, &p).unwrap();
    }
    for s in 0..4 {
        sp.reject(s, &format!("m{s}")).unwrap();
    }
    mem
}

/// Which chunks (by `which`) are where, and the invariants every state must keep: each of the
/// six chunks in exactly one place, intact, rejected ones with their message, no leftovers.
fn places(mem: &MemStorage, c: &SpoolConfig, what: &str) -> (Vec<u32>, Vec<u32>) {
    let (mut sp, report) = Spool::open(mem.clone(), c.clone()).unwrap();
    assert_eq!(report.corrupt, 0, "{what}");
    let pending: Vec<u32> = read_all(&mut sp)
        .into_iter()
        .map(|(_, h, p)| {
            let i = h.records - 1;
            let (eh, ep) = chunk(i, if i % 2 == 0 { "A" } else { "B" }, 60 + 30 * i as usize);
            assert_eq!((h, p), (eh, ep), "{what}");
            i
        })
        .collect();
    let mut rejected = Vec::new();
    for s in seqs_in(mem, Area::Rejected) {
        let i = which(&mem.contents(Area::Rejected, &name(s)).unwrap());
        assert_eq!(s, i as u64, "{what}: rejected chunks keep their number");
        assert_eq!(
            mem.contents(Area::Rejected, &msg_name(s)),
            Some(format!("m{s}").into_bytes()),
            "{what}"
        );
        rejected.push(i);
    }
    assert_eq!(
        mem.names(Area::Rejected).len(),
        2 * rejected.len(),
        "{what}: leftovers"
    );
    let mut every: Vec<u32> = pending.iter().chain(&rejected).copied().collect();
    every.sort_unstable();
    assert_eq!(
        every,
        (0..6).collect::<Vec<_>>(),
        "{what}: pending {pending:?}, rejected {rejected:?}"
    );
    assert!(pending.len() <= c.max_chunks as usize, "{what}");
    (pending, rejected)
}

#[test]
fn a_power_cut_at_any_step_of_a_requeue_leaves_each_chunk_in_exactly_one_place() {
    let c = SpoolConfig {
        max_chunks: 4,
        ..cfg(None)
    };
    let workload = |mem: &MemStorage, result: &mut Option<Requeued>| -> Option<()> {
        let (mut sp, _) = Spool::open(mem.clone(), c.clone()).ok()?;
        *result = Some(sp.requeue_rejected(DestFilter::All).ok()?);
        Some(())
    };
    let total = {
        let mem = rejected_setup(1);
        let before = mem.op_count();
        let mut r = None;
        workload(&mem, &mut r).unwrap();
        assert_eq!(r.map(|r| (r.chunks, r.left)), Some((2, 2)));
        mem.op_count() - before
    };
    for n in 0..=total {
        for mode in [CutMode::LoseUnsynced, CutMode::Torn] {
            for seed in 0..4 {
                let what = format!("cut at {n}/{total} {mode:?} seed {seed}");
                let mem = rejected_setup(n * 17 + seed);
                mem.cut_power_after(n, mode);
                let mut result = None;
                workload(&mem, &mut result);
                mem.reboot();
                let (pending, rejected) = places(&mem, &c, &what);
                // Requeued ones come after what was pending, oldest first.
                assert_eq!(&pending[..2], &[4, 5], "{what}");
                assert!(pending[2..].windows(2).all(|w| w[0] < w[1]), "{what}");
                if result.is_some() {
                    assert_eq!(rejected, vec![2, 3], "{what}: an Ok requeue is durable");
                }
            }
        }
    }
}

#[test]
fn a_power_cut_at_any_step_of_a_purge_deletes_only_selected_chunks() {
    let c = cfg(None);
    let workload = |mem: &MemStorage, ok: &mut bool| -> Option<()> {
        let (mut sp, _) = Spool::open(mem.clone(), c.clone()).ok()?;
        let p = sp.purge(TABLE_A, &Area::ALL).ok()?;
        assert_eq!((p.pending.chunks, p.rejected.chunks), (1, 2));
        *ok = true;
        Some(())
    };
    let total = {
        let mem = rejected_setup(1);
        let before = mem.op_count();
        workload(&mem, &mut false).unwrap();
        mem.op_count() - before
    };
    for n in 0..=total {
        for mode in [CutMode::LoseUnsynced, CutMode::Torn] {
            let what = format!("cut at {n}/{total} {mode:?}");
            let mem = rejected_setup(n + 3);
            mem.cut_power_after(n, mode);
            let mut ok = false;
            workload(&mem, &mut ok);
            mem.reboot();
            let (mut sp, report) = Spool::open(mem.clone(), c.clone()).unwrap();
            assert_eq!(report.corrupt, 0, "{what}");
            let pending: Vec<u32> = read_all(&mut sp)
                .iter()
                .map(|(_, h, _)| h.records - 1)
                .collect();
            let rejected = seqs_in(&mem, Area::Rejected);
            assert!(pending.contains(&5), "{what}: B untouched");
            assert!(rejected.contains(&1) && rejected.contains(&3), "{what}");
            assert_eq!(
                mem.names(Area::Rejected).len(),
                2 * rejected.len(),
                "{what}"
            );
            if ok {
                assert_eq!(
                    (pending, rejected),
                    (vec![5], vec![1, 3]),
                    "{what}: durable"
                );
            }
        }
    }
}

#[test]
fn a_requeue_whose_move_cannot_be_made_durable_is_undone_or_kept_pending_never_both() {
    // Operations of one chunk's requeue: rename, pending sync, message unlink, rejected sync.
    for (fail, back) in [(1, false), (1, true), (0, false)] {
        let what = format!("fail op {fail}, rename back fails too: {back}");
        let mem = rejected_setup(5);
        let (mut sp, _) = Spool::open(mem.clone(), cfg(None)).unwrap();
        mem.fail_op(fail, io::ErrorKind::Other);
        if back {
            mem.fail_op(fail + 1, io::ErrorKind::Other);
        }
        assert!(sp.requeue_rejected(DestFilter::All).is_err(), "{what}");
        let pending: Vec<u32> = sp.pending().map(|(_, i)| i.records - 1).collect();
        let rejected = seqs_in(&mem, Area::Rejected);
        if back {
            assert_eq!(pending, vec![4, 5, 0], "{what}: it is pending, so indexed");
            assert_eq!(rejected, vec![1, 2, 3], "{what}");
        } else {
            assert_eq!(pending, vec![4, 5], "{what}");
            assert_eq!(rejected, vec![0, 1, 2, 3], "{what}");
        }
        assert_eq!(
            sp.stats().quarantine_chunks as usize,
            rejected.len(),
            "{what}"
        );
        assert!(sp.stats().io_errors >= 1);
        drop(sp);
        mem.reboot();
        places(&mem, &cfg(None), &what);
    }
}
