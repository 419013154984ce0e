//! Administration of a spool: what it holds ([`Spool::status`]), deleting chunks an operator no
//! longer wants ([`Spool::purge`]), and sending refused chunks again once their cause is fixed
//! ([`Spool::requeue_rejected`]). Nothing here allocates beyond the index that already exists
//! (and the 64 KiB scratch `open` also uses, while requeueing).

use super::quarantine::Quarantine;
use super::storage::{Area, Storage};
use super::{Check, DestKey, Dropped, Kind, Name, SinkId, Spool, SpoolError, VERIFY_SCRATCH_LEN};
use std::io;
use std::sync::Arc;

/// Selects chunks by destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DestFilter<'a> {
    /// Every chunk.
    All,
    /// The chunks of one table, whatever their format and mapping.
    Table {
        /// Kusto database.
        database: &'a str,
        /// Kusto table.
        table: &'a str,
    },
}

impl DestFilter<'_> {
    /// Whether `dest` is selected.
    pub fn matches(&self, dest: &DestKey) -> bool {
        match self {
            DestFilter::All => true,
            DestFilter::Table { database, table } => {
                dest.database == *database && dest.table == *table
            }
        }
    }
}

/// The pending chunks of one destination and sink.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DestStatus {
    /// The destination (shared with the index).
    pub dest: Arc<DestKey>,
    /// The sink its chunks are for.
    pub sink: SinkId,
    /// Pending chunks.
    pub chunks: u32,
    /// Records in them.
    pub records: u64,
    /// Their file bytes.
    pub bytes: u64,
    /// Creation time of the oldest of them (Unix ms): how far behind the destination is.
    pub oldest_created_unix_ms: u64,
    /// Sequence number of the next one to send.
    pub oldest_seq: u64,
}

/// Chunks and the bytes they occupy on flash.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AreaCount {
    /// Chunks.
    pub chunks: u32,
    /// Bytes on flash (for `rejected/`, with the service's messages).
    pub bytes: u64,
}

/// What a spool holds, from its index (no I/O).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SpoolStatus {
    /// One entry per destination and sink with pending chunks, in the order of their oldest
    /// chunk; at most as many as the index has destinations.
    pub dests: Vec<DestStatus>,
    /// All pending chunks (what `max_bytes`/`max_chunks` count).
    pub pending: AreaCount,
    /// Chunks in `rejected/`, refused by the service (see [`Spool::requeue_rejected`]).
    pub rejected: AreaCount,
    /// Chunks in `corrupt/`, damaged, never read again.
    pub corrupt: AreaCount,
    /// Chunks left in the spool directory at `open` because they need another key.
    pub locked: AreaCount,
    /// Chunks left in the spool directory at `open` because newer firmware wrote them.
    pub newer: AreaCount,
}

/// What [`Spool::purge`] deleted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Purged {
    /// Pending chunks (never delivered: telemetry the caller should count as lost).
    pub pending: Dropped,
    /// Chunks (with their messages) deleted from `rejected/`.
    pub rejected: AreaCount,
    /// Chunks deleted from `corrupt/`.
    pub corrupt: AreaCount,
}

/// What [`Spool::requeue_rejected`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Requeued {
    /// Chunks moved back to pending, newest of all, in their original order.
    pub chunks: u32,
    /// Records in them.
    pub records: u64,
    /// Their file bytes (now counted against `max_bytes`).
    pub bytes: u64,
    /// Selected chunks left in `rejected/` because pending was full: call again once it drained.
    pub left: u32,
    /// Chunks left in `rejected/` because they cannot be pending here: damaged, sealed under
    /// another key (or none), written by newer firmware, or over their sink's size bound.
    /// Damaged ones are counted whatever the filter (their destination cannot be trusted).
    pub skipped: u32,
}

impl<S: Storage> Spool<S> {
    /// What the spool holds: per destination and sink, and per area. Computed from the index,
    /// without I/O.
    pub fn status(&self) -> SpoolStatus {
        let mut st = SpoolStatus::default();
        for (&seq, info) in &self.index {
            st.pending.chunks += 1;
            st.pending.bytes += info.file_len;
            let slot = st
                .dests
                .iter_mut()
                .find(|d| d.sink == info.sink && Arc::ptr_eq(&d.dest, &info.dest));
            match slot {
                Some(d) => {
                    d.chunks += 1;
                    d.records += info.records as u64;
                    d.bytes += info.file_len;
                    d.oldest_created_unix_ms = d.oldest_created_unix_ms.min(info.created_unix_ms);
                }
                None => st.dests.push(DestStatus {
                    dest: info.dest.clone(),
                    sink: info.sink,
                    chunks: 1,
                    records: info.records as u64,
                    bytes: info.file_len,
                    oldest_created_unix_ms: info.created_unix_ms,
                    oldest_seq: seq,
                }),
            }
        }
        let count = |q: &Quarantine, a| {
            let (chunks, bytes) = q.area(a);
            AreaCount { chunks, bytes }
        };
        st.rejected = count(&self.quarantine, Area::Rejected);
        st.corrupt = count(&self.quarantine, Area::Corrupt);
        st.locked = AreaCount {
            chunks: self.stats.locked_chunks as u32,
            bytes: self.stats.locked_bytes,
        };
        st.newer = AreaCount {
            chunks: self.stats.newer_chunks as u32,
            bytes: self.stats.newer_bytes,
        };
        st
    }

    /// Deletes the chunks `filter` selects in `areas`: pending chunks (never to be sent; counted
    /// in [`super::SpoolStats::purged_chunks`]), and with [`Area::Rejected`] or
    /// [`Area::Corrupt`] quarantined ones (with their messages). Quarantined chunks are matched by
    /// their header; one whose header cannot be read (damaged) is selected only by
    /// [`DestFilter::All`]. Locked and newer chunks are not touched.
    ///
    /// Durable on `Ok` (directories synced). A failure stops the purge and is returned: what was
    /// deleted before stays deleted (see [`Spool::status`]); a chunk whose unlink failed stays.
    pub fn purge(&mut self, filter: DestFilter<'_>, areas: &[Area]) -> Result<Purged, SpoolError> {
        let mut purged = Purged::default();
        let mut result = Ok(());
        if areas.contains(&Area::Pending) {
            result = self.purge_pending(filter, &mut purged.pending);
        }
        for (area, count) in [
            (Area::Rejected, &mut purged.rejected),
            (Area::Corrupt, &mut purged.corrupt),
        ] {
            if result.is_ok() && areas.contains(&area) {
                result = self.purge_quarantined(filter, area, count);
            }
        }
        result.map(|()| purged).map_err(|e| {
            self.stats.io_errors += 1;
            e.into()
        })
    }

    fn purge_pending(&mut self, filter: DestFilter<'_>, out: &mut Dropped) -> io::Result<()> {
        let mut from = 0;
        let mut result = Ok(());
        while let Some(seq) = self
            .index
            .range(from..)
            .find(|(_, i)| filter.matches(&i.dest))
            .map(|(s, _)| *s)
        {
            from = seq + 1;
            match self
                .storage
                .remove(Area::Pending, Name::new(seq, Kind::Chunk).as_str())
            {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
            let info = self.forget(seq).expect("key from the index");
            out.chunks += 1;
            out.records += info.records as u64;
            out.bytes += info.file_len;
            self.stats.purged_chunks += 1;
            self.stats.purged_records += info.records as u64;
        }
        if out.chunks > 0 {
            let synced = self.storage.sync_area(Area::Pending);
            if result.is_ok() {
                result = synced;
            }
        }
        result
    }

    fn purge_quarantined(
        &mut self,
        filter: DestFilter<'_>,
        area: Area,
        out: &mut AreaCount,
    ) -> io::Result<()> {
        let mut from = 0;
        let mut result = Ok(());
        while let Some((seq, bytes)) = self.quarantine.next_in(area, from) {
            from = seq + 1;
            if filter != DestFilter::All {
                match self.load_header(area, seq) {
                    Ok((d, _)) if filter.matches(&d.header.dest) => {}
                    _ => continue,
                }
            }
            if let Err(e) = self.delete_quarantined(seq, area) {
                result = Err(e);
                break;
            }
            self.quarantine.remove(seq, area);
            out.chunks += 1;
            out.bytes += bytes;
        }
        if out.chunks > 0 {
            let synced = self.storage.sync_area(area);
            if result.is_ok() {
                result = synced;
            }
        }
        result
    }

    /// Moves the chunks `filter` selects in `rejected/` back to pending, oldest first, for an
    /// operator who fixed what the service refused (a mapping, a table). Each gets a new
    /// sequence number after every existing one (it is sent after what is pending now; among
    /// themselves they keep their order) and keeps its chunk id; its `.msg` is deleted.
    ///
    /// Each chunk is verified first (checksum and key; damaged, locked or newer ones, and ones
    /// over their sink's size bound, stay where they are: [`Requeued::skipped`]). The pending
    /// limits hold: no chunk is dropped to make room, whatever the policy; once the next one
    /// does not fit, the rest stays in `rejected/` ([`Requeued::left`]) and a later call
    /// continues.
    ///
    /// Crash-safe: a chunk moves by one atomic rename (the header does not hold the sequence
    /// number, so nothing is rewritten), made durable before its message is deleted. A power cut
    /// at any point leaves each chunk in exactly one of `rejected/` or pending, never in both,
    /// never in neither; at worst a message without its chunk, which `open` deletes.
    ///
    /// An I/O error stops it and is returned; the chunks moved before stay moved (see
    /// [`Spool::status`]).
    pub fn requeue_rejected(&mut self, filter: DestFilter<'_>) -> Result<Requeued, SpoolError> {
        let mut done = Requeued::default();
        let mut scratch: Vec<u8> = Vec::new();
        let mut full = self.over_limit();
        let mut from = 0;
        while let Some((old, _)) = self.quarantine.next_in(Area::Rejected, from) {
            from = old + 1;
            let (d, len) = match self.load_header(Area::Rejected, old) {
                Ok(h) => h,
                Err(Check::Io(e)) if e.kind() == io::ErrorKind::NotFound => {
                    self.quarantine.remove(old, Area::Rejected);
                    continue;
                }
                Err(Check::Io(e)) => return Err(e.into()),
                Err(_) => {
                    done.skipped += 1;
                    continue;
                }
            };
            if !filter.matches(&d.header.dest) {
                continue;
            }
            if self.check_key(&d, len).is_err()
                || self
                    .size_error(&d.header, d.payload_len() as usize)
                    .is_some()
            {
                done.skipped += 1;
                continue;
            }
            full = full
                || self.index.len() >= self.max_chunks as usize
                || self.bytes + len > self.max_bytes;
            if full {
                done.left += 1;
                continue;
            }
            if scratch.is_empty() {
                scratch.resize(VERIFY_SCRATCH_LEN, 0);
            }
            match self.verify_body(Area::Rejected, old, len, &mut scratch) {
                Ok(()) => {}
                Err(Check::Io(e)) => return Err(e.into()),
                Err(_) => {
                    done.skipped += 1;
                    continue;
                }
            }
            self.requeue_one(old, &d).map_err(|e| {
                self.stats.io_errors += 1;
                SpoolError::from(e)
            })?;
            done.chunks += 1;
            done.records += d.header.records as u64;
            done.bytes += len;
        }
        Ok(done)
    }

    /// Renames `rejected/OLD.chunk` to the next pending number, makes that durable, then deletes
    /// the message. If the pending directory cannot be synced the move is undone (the chunk is
    /// in one place either way).
    fn requeue_one(&mut self, old: u64, d: &super::Decoded) -> io::Result<()> {
        let seq = self.next_seq;
        let from = Name::new(old, Kind::Chunk);
        let to = Name::new(seq, Kind::Chunk);
        self.storage.rename(
            (Area::Rejected, from.as_str()),
            (Area::Pending, to.as_str()),
        )?;
        self.next_seq += 1;
        if let Err(e) = self.storage.sync_area(Area::Pending) {
            if self
                .storage
                .rename(
                    (Area::Pending, to.as_str()),
                    (Area::Rejected, from.as_str()),
                )
                .is_err()
            {
                // It is pending now: index it so that it is sent (and counted) like the rest.
                self.quarantine.remove(old, Area::Rejected);
                self.insert(seq, d);
                self.stats.requeued_chunks += 1;
            }
            return Err(e);
        }
        self.quarantine.remove(old, Area::Rejected);
        self.insert(seq, d);
        self.stats.requeued_chunks += 1;
        // The chunk is safe in pending; a message left behind is deleted by the next open.
        let msg = Name::new(old, Kind::Msg);
        let cleaned = match self.storage.remove(Area::Rejected, msg.as_str()) {
            Ok(()) => self.storage.sync_area(Area::Rejected),
            Err(e) if e.kind() == io::ErrorKind::NotFound => self.storage.sync_area(Area::Rejected),
            Err(e) => Err(e),
        };
        if cleaned.is_err() {
            self.stats.io_errors += 1;
        }
        Ok(())
    }
}
