//! The quarantine (`rejected/` and `corrupt/`), bounded like the pending chunks: an index of
//! names and sizes (nothing read from the files), at most `quarantine_max_chunks` entries, and
//! the moves into it, which delete the oldest quarantined files first when the newcomer would not
//! fit.
//!
//! Crash safety: the oldest files are unlinked and their directory synced *before* the newcomer
//! is renamed in, so the quarantine on flash never exceeds its limits, whatever the power does; a
//! cut between the two leaves the chunk pending (it is rejected or found corrupt again). A
//! `.msg` whose chunk is gone (a cut between the two unlinks, or during a reject) is a leftover
//! that `open` deletes.

use super::storage::{Area, Storage};
use super::{
    parse_name, repaired, Kind, Name, QuarantineDropped, RecoveryReport, Spool, SpoolError,
};
use std::collections::BTreeMap;
use std::io;

/// What the spool knows of `rejected/` and `corrupt/`.
pub(super) struct Quarantine {
    /// (sequence number, area) -> bytes on flash (the chunk, plus its `.msg` in `rejected/`).
    /// Oldest (smallest sequence number, i.e. created first) first.
    entries: BTreeMap<(u64, Area), u64>,
    /// Chunks and bytes of `corrupt/` (0) and `rejected/` (1).
    chunks: [u32; 2],
    bytes: [u64; 2],
    pub max_bytes: u64,
    pub max_chunks: u32,
}

fn slot(area: Area) -> usize {
    usize::from(area == Area::Rejected)
}

/// The size of a file, 0 if it is gone.
fn len_or_0(r: io::Result<u64>) -> io::Result<u64> {
    match r {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
        r => r,
    }
}

/// `Ok` for a file that is already gone.
fn gone(r: io::Result<()>) -> io::Result<()> {
    match r {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        r => r,
    }
}

impl Quarantine {
    pub fn new(max_bytes: u64, max_chunks: u32) -> Self {
        Quarantine {
            entries: BTreeMap::new(),
            chunks: [0; 2],
            bytes: [0; 2],
            max_bytes,
            max_chunks,
        }
    }

    pub fn insert(&mut self, seq: u64, area: Area, bytes: u64) {
        let s = slot(area);
        match self.entries.insert((seq, area), bytes) {
            Some(old) => self.bytes[s] -= old,
            None => self.chunks[s] += 1,
        }
        self.bytes[s] += bytes;
    }

    pub fn remove(&mut self, seq: u64, area: Area) -> Option<u64> {
        let bytes = self.entries.remove(&(seq, area))?;
        let s = slot(area);
        self.chunks[s] -= 1;
        self.bytes[s] -= bytes;
        Some(bytes)
    }

    fn oldest(&self) -> Option<(u64, Area, u64)> {
        self.entries
            .first_key_value()
            .map(|(&(s, a), &b)| (s, a, b))
    }

    pub fn chunks(&self) -> u32 {
        self.chunks[0] + self.chunks[1]
    }

    pub fn bytes(&self) -> u64 {
        self.bytes[0] + self.bytes[1]
    }

    /// Chunks and bytes of one area.
    pub fn area(&self, area: Area) -> (u32, u64) {
        (self.chunks[slot(area)], self.bytes[slot(area)])
    }

    /// The oldest entry of `area` numbered `from` or more: (sequence number, bytes).
    pub fn next_in(&self, area: Area, from: u64) -> Option<(u64, u64)> {
        self.entries
            .range((from, Area::Pending)..)
            .find(|((_, a), _)| *a == area)
            .map(|(&(s, _), &b)| (s, b))
    }

    /// Whether an entry of `bytes` fits at all (when everything else is deleted).
    pub fn can_hold(&self, bytes: u64) -> bool {
        self.max_chunks > 0 && bytes <= self.max_bytes
    }

    fn over(&self, bytes: u64, chunks: u32) -> bool {
        self.chunks() as u64 + chunks as u64 > self.max_chunks as u64
            || self.bytes() + bytes > self.max_bytes
    }

    /// Forgets (without deleting) the oldest entries beyond `max_chunks`: only when deleting
    /// them failed, so that the index stays bounded. Their files stay until a later `open`.
    pub fn cap(&mut self) {
        while self.chunks() > self.max_chunks {
            let Some((seq, area, _)) = self.oldest() else {
                break;
            };
            self.remove(seq, area);
        }
    }
}

impl<S: Storage> Spool<S> {
    /// Part of `open`: indexes `rejected/` and `corrupt/` (names and sizes; a rejected chunk's
    /// size includes its message), deletes messages left without their chunk, raises `max_seq`
    /// past every number found, and deletes the oldest entries beyond the limits. Files of
    /// other names are left alone and not counted. A failed trim is counted, not fatal: the
    /// pending chunks must still be served.
    pub(super) fn recover_quarantine(
        &mut self,
        report: &mut RecoveryReport,
        max_seq: &mut Option<u64>,
    ) -> Result<(), SpoolError> {
        let mut names = Vec::new();
        let mut found: Vec<(u64, Kind)> = Vec::new();
        for area in [Area::Corrupt, Area::Rejected] {
            names.clear();
            match self.storage.list(area, &mut names) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e.into()),
            }
            found.clear();
            found.extend(names.iter().filter_map(|n| parse_name(n)));
            names.clear();
            found.sort_unstable();
            let has = |seq: u64, kind: Kind| found.binary_search(&(seq, kind)).is_ok();
            let mut cleaned = false;
            for &(seq, kind) in &found {
                *max_seq = (*max_seq).max(Some(seq));
                let file = Name::new(seq, kind);
                if kind == Kind::Chunk {
                    let mut bytes = len_or_0(self.storage.file_len(area, file.as_str()))?;
                    if area == Area::Rejected && has(seq, Kind::Msg) {
                        let msg = Name::new(seq, Kind::Msg);
                        bytes += len_or_0(self.storage.file_len(area, msg.as_str()))?;
                    }
                    self.quarantine.insert(seq, area, bytes);
                } else if kind == Kind::Msg
                    && area == Area::Rejected
                    && !has(seq, Kind::Chunk)
                    // A message without its chunk: left by a power cut in a reject, a requeue
                    // or a trim.
                    && repaired(
                        &mut self.stats.io_errors,
                        self.storage.remove(area, file.as_str()),
                    )?
                {
                    report.removed_partial += 1;
                    cleaned = true;
                }
            }
            if cleaned {
                repaired(&mut self.stats.io_errors, self.storage.sync_area(area))?;
            }
        }
        // Within the limits again (lowered, or a directory left by firmware without them).
        if self
            .trim_quarantine(0, 0, &mut report.quarantine_dropped)
            .is_err()
        {
            self.stats.io_errors += 1;
        }
        self.quarantine.cap();
        Ok(())
    }

    /// Unlinks the files of one quarantined chunk (the chunk first, then its `.msg`, so a cut in
    /// between leaves only a leftover message). Not synced.
    pub(super) fn delete_quarantined(&mut self, seq: u64, area: Area) -> io::Result<()> {
        gone(
            self.storage
                .remove(area, Name::new(seq, Kind::Chunk).as_str()),
        )?;
        if area == Area::Rejected {
            gone(
                self.storage
                    .remove(area, Name::new(seq, Kind::Msg).as_str()),
            )?;
        }
        Ok(())
    }

    /// Deletes the oldest quarantined chunks until `chunks` more entries holding `bytes` more fit
    /// (`0, 0`: until the quarantine is within its limits), adding them to `dropped` and the
    /// stats. Durable on `Ok` (the touched directories are synced). On an error it stops; the
    /// entry that failed stays indexed and is tried again by the next trim.
    pub(super) fn trim_quarantine(
        &mut self,
        bytes: u64,
        chunks: u32,
        dropped: &mut QuarantineDropped,
    ) -> io::Result<()> {
        let mut touched = [false; 2];
        let mut result = Ok(());
        while self.quarantine.over(bytes, chunks) {
            let Some((seq, area, len)) = self.quarantine.oldest() else {
                break;
            };
            touched[slot(area)] = true;
            if let Err(e) = self.delete_quarantined(seq, area) {
                result = Err(e);
                break;
            }
            self.quarantine.remove(seq, area);
            dropped.chunks += 1;
            dropped.bytes += len;
            self.stats.quarantine_dropped_chunks += 1;
            self.stats.quarantine_dropped_bytes += len;
        }
        for (area, t) in [Area::Corrupt, Area::Rejected].into_iter().zip(touched) {
            if t {
                let r = self.storage.sync_area(area);
                if result.is_ok() {
                    result = r;
                }
            }
        }
        result
    }

    /// Moves pending chunk `seq` (a file of `len` bytes, no longer to be sent) into `to`
    /// (`Corrupt` or `Rejected`, with `msg` written beside it as `SEQ.msg`) within the quarantine
    /// limits: the oldest quarantined chunks are deleted first (durably) when it would not fit;
    /// a chunk that alone exceeds `quarantine_max_bytes` (or with `quarantine_max_chunks` 0) is
    /// deleted instead ([`QuarantineDropped::incoming`]). The caller forgets it from the index.
    ///
    /// Returns the result of the move (or deletion) and its directory syncs. A failed trim is
    /// counted in `io_errors` and the move goes ahead (the chunk must leave pending; the next
    /// trim catches up). The message is best effort.
    pub(super) fn move_to_quarantine(
        &mut self,
        seq: u64,
        len: u64,
        to: Area,
        msg: Option<&[u8]>,
        dropped: &mut QuarantineDropped,
    ) -> io::Result<()> {
        let name = Name::new(seq, Kind::Chunk);
        let msg_len = msg.map_or(0, |m| m.len() as u64);
        if !self.quarantine.can_hold(len + msg_len) {
            gone(self.storage.remove(Area::Pending, name.as_str()))?;
            dropped.chunks += 1;
            dropped.bytes += len;
            dropped.incoming = true;
            self.stats.quarantine_dropped_chunks += 1;
            self.stats.quarantine_dropped_bytes += len;
            return self.storage.sync_area(Area::Pending);
        }
        if self.trim_quarantine(len + msg_len, 1, dropped).is_err() {
            self.stats.io_errors += 1;
        }
        let mname = Name::new(seq, Kind::Msg);
        let mut kept_msg = 0;
        if let Some(m) = msg {
            if self.storage.write_file(to, mname.as_str(), &[m]).is_ok() {
                kept_msg = msg_len;
            } else {
                self.stats.io_errors += 1;
                let _ = self.storage.remove(to, mname.as_str());
            }
        }
        if let Err(e) = self
            .storage
            .rename((Area::Pending, name.as_str()), (to, name.as_str()))
        {
            if kept_msg > 0 {
                let _ = self.storage.remove(to, mname.as_str());
            }
            return Err(e);
        }
        self.quarantine.insert(seq, to, len + kept_msg);
        self.storage
            .sync_area(to)
            .and_then(|()| self.storage.sync_area(Area::Pending))
    }
}
