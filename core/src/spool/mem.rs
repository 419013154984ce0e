//! [`Storage`] in memory, emulating a flash filesystem that can lose power after any operation,
//! fail with EIO or ENOSPC, and rot bits: the harness the spool's crash-safety tests run on
//! (the littlefs approach: cut power at operation N for every N, remount, check invariants).
//!
//! The model keeps, per file, the bytes written and how many of them were fsynced, and per
//! directory the entries made durable by a directory sync plus a log of operations not yet synced.
//! A power cut then keeps:
//! - [`CutMode::LoseUnsynced`]: exactly what was synced;
//! - [`CutMode::Torn`]: what was synced, plus an in-order prefix of the unsynced directory
//!   operations and, per file, a random prefix of the unsynced bytes (sometimes garbled, as a
//!   half-programmed flash page would be). The operation the power cut interrupts is torn too.
//!
//! Renames are atomic (one logged operation, even across directories), as on ext4, UBIFS, F2FS and
//! littlefs; the spool relies on that and on nothing weaker.

use super::storage::{Area, Storage};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

/// What survives of unsynced data when the power is cut.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CutMode {
    /// Nothing that was not synced survives.
    LoseUnsynced,
    /// A random part of what was not synced survives (see the module docs).
    Torn,
}

/// In-memory storage with fault injection. Clones share the same emulated device, so a test can
/// keep one handle, give a clone to a [`super::Spool`], drop the spool after a power cut, call
/// [`MemStorage::reboot`] and open a new spool on what survived.
#[derive(Clone)]
pub struct MemStorage {
    inner: Arc<Mutex<MemState>>,
}

impl std::fmt::Debug for MemStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemStorage")
            .field("ops", &self.op_count())
            .finish_non_exhaustive()
    }
}

impl Default for MemStorage {
    fn default() -> Self {
        Self::new()
    }
}

#[derive(Clone)]
struct Inode {
    data: Vec<u8>,
    synced: usize,
}

#[derive(Clone, Debug)]
enum DirOp {
    Link {
        area: Area,
        name: String,
        ino: u64,
    },
    Unlink {
        area: Area,
        name: String,
    },
    Rename {
        from: (Area, String),
        to: (Area, String),
        ino: u64,
    },
}

impl DirOp {
    fn touches(&self, a: Area) -> bool {
        match self {
            DirOp::Link { area, .. } | DirOp::Unlink { area, .. } => *area == a,
            DirOp::Rename { from, to, .. } => from.0 == a || to.0 == a,
        }
    }

    /// Applies the operation; tolerant of a missing source, because a durable view may contain a
    /// rename whose earlier create (in another, unsynced directory) was lost: the inode is then
    /// reachable only through the new name, as on a real filesystem.
    fn apply(&self, dirs: &mut [BTreeMap<String, u64>; 3]) {
        match self {
            DirOp::Link { area, name, ino } => {
                dirs[area.index()].insert(name.clone(), *ino);
            }
            DirOp::Unlink { area, name } => {
                dirs[area.index()].remove(name);
            }
            DirOp::Rename { from, to, ino } => {
                dirs[from.0.index()].remove(&from.1);
                dirs[to.0.index()].insert(to.1.clone(), *ino);
            }
        }
    }
}

#[derive(Clone)]
struct MemState {
    inodes: HashMap<u64, Inode>,
    next_ino: u64,
    live: [BTreeMap<String, u64>; 3],
    durable: [BTreeMap<String, u64>; 3],
    unsynced_ops: Vec<DirOp>,
    ops: u64,
    cut: Option<(u64, CutMode)>,
    powered_off: bool,
    fail_at: Vec<(u64, io::ErrorKind)>,
    space_limit: Option<u64>,
    read_only: bool,
    fail_reads: bool,
    rng: u64,
}

/// Why an operation did not run.
struct Refused {
    err: io::Error,
    /// This very operation was hit by the power cut (so, in torn mode, part of it may land).
    cut_now: Option<CutMode>,
}

fn power_lost() -> io::Error {
    io::Error::other("emulated power loss: reboot the MemStorage")
}

impl MemState {
    fn rand(&mut self) -> u64 {
        // xorshift64*: deterministic per seed, good enough to pick cut shapes.
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn rand_upto(&mut self, n: usize) -> usize {
        (self.rand() % (n as u64 + 1)) as usize
    }

    /// Every mutating operation passes here: counts it, and applies armed faults.
    fn gate(&mut self) -> Result<(), Refused> {
        if self.powered_off {
            return Err(Refused {
                err: power_lost(),
                cut_now: None,
            });
        }
        let n = self.ops;
        self.ops += 1;
        if let Some((at, mode)) = self.cut {
            if n >= at {
                self.powered_off = true;
                return Err(Refused {
                    err: power_lost(),
                    cut_now: Some(mode),
                });
            }
        }
        if let Some(i) = self.fail_at.iter().position(|f| f.0 == n) {
            let kind = self.fail_at.remove(i).1;
            return Err(Refused {
                err: io::Error::new(kind, "injected fault"),
                cut_now: None,
            });
        }
        if self.read_only {
            return Err(Refused {
                err: io::Error::new(
                    io::ErrorKind::ReadOnlyFilesystem,
                    "emulated read-only filesystem",
                ),
                cut_now: None,
            });
        }
        Ok(())
    }

    fn read_gate(&self) -> io::Result<()> {
        if self.powered_off {
            return Err(power_lost());
        }
        if self.fail_reads {
            return Err(io::Error::other("injected read error (EIO)"));
        }
        Ok(())
    }

    fn used_bytes(&self) -> u64 {
        let live: HashSet<u64> = self.live.iter().flat_map(|d| d.values().copied()).collect();
        live.iter().map(|i| self.inodes[i].data.len() as u64).sum()
    }

    fn lookup(&self, area: Area, name: &str) -> io::Result<u64> {
        self.live[area.index()]
            .get(name)
            .copied()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("{name}: no such file")))
    }

    fn log(&mut self, op: DirOp) {
        op.apply(&mut self.live);
        self.unsynced_ops.push(op);
    }

    fn crash(&mut self, mode: CutMode) {
        let keep_ops = match mode {
            CutMode::LoseUnsynced => 0,
            CutMode::Torn => {
                let n = self.unsynced_ops.len();
                self.rand_upto(n)
            }
        };
        for op in std::mem::take(&mut self.unsynced_ops)
            .into_iter()
            .take(keep_ops)
        {
            op.apply(&mut self.durable);
        }
        self.live = self.durable.clone();
        let reachable: HashSet<u64> = self
            .durable
            .iter()
            .flat_map(|d| d.values().copied())
            .collect();
        self.inodes.retain(|i, _| reachable.contains(i));
        let mut inos: Vec<u64> = self.inodes.keys().copied().collect();
        inos.sort_unstable(); // determinism per seed
        for i in inos {
            let (synced, len) = {
                let n = &self.inodes[&i];
                (n.synced, n.data.len())
            };
            let keep = match mode {
                CutMode::LoseUnsynced => synced,
                CutMode::Torn => synced + self.rand_upto(len - synced),
            };
            let garble = mode == CutMode::Torn && self.rand() & 1 == 0;
            let mut noise = Vec::new();
            if garble {
                for _ in synced..keep {
                    noise.push(self.rand() as u8);
                }
            }
            let node = self.inodes.get_mut(&i).expect("inode listed above");
            node.data.truncate(keep);
            if garble {
                node.data[synced..keep].copy_from_slice(&noise);
            }
            node.synced = keep;
        }
        self.powered_off = false;
        self.cut = None;
        self.fail_at.clear();
    }
}

impl MemStorage {
    /// An empty device; the seed makes torn power cuts reproducible.
    pub fn new() -> Self {
        Self::with_seed(0x9E37_79B9_7F4A_7C15)
    }

    /// An empty device whose random choices (torn cuts) follow `seed`.
    pub fn with_seed(seed: u64) -> Self {
        let empty: [BTreeMap<String, u64>; 3] = Default::default();
        MemStorage {
            inner: Arc::new(Mutex::new(MemState {
                inodes: HashMap::new(),
                next_ino: 1,
                live: empty.clone(),
                durable: empty,
                unsynced_ops: Vec::new(),
                ops: 0,
                cut: None,
                powered_off: false,
                fail_at: Vec::new(),
                space_limit: None,
                read_only: false,
                fail_reads: false,
                rng: seed | 1,
            })),
        }
    }

    fn state(&self) -> MutexGuard<'_, MemState> {
        // A test that panicked while holding the lock leaves a consistent-enough model behind.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// An independent device holding what this one holds now (files, what is synced, armed
    /// faults): one setup, many power-cut runs.
    #[cfg(test)]
    pub(crate) fn fork(&self) -> MemStorage {
        MemStorage {
            inner: Arc::new(Mutex::new(self.state().clone())),
        }
    }

    /// Mutating operations performed so far (each create, each written part, each fsync, rename,
    /// remove and directory sync counts one; reads do not count, since cutting power before a
    /// read is the same as cutting it before the next write).
    pub fn op_count(&self) -> u64 {
        self.state().ops
    }

    /// Cuts the power when `n` more mutating operations have completed: that operation and every
    /// later one fail until [`MemStorage::reboot`]. `n = 0` cuts before the next operation.
    pub fn cut_power_after(&self, n: u64, mode: CutMode) {
        let mut s = self.state();
        s.cut = Some((s.ops + n, mode));
    }

    /// Whether an armed power cut has happened.
    pub fn is_powered_off(&self) -> bool {
        self.state().powered_off
    }

    /// Simulates power loss now (with the armed cut's mode, else [`CutMode::LoseUnsynced`]) and
    /// powers back on: what a device holds after an unexpected reboot. Clears armed faults.
    pub fn reboot(&self) {
        let mut s = self.state();
        let mode = s.cut.map_or(CutMode::LoseUnsynced, |c| c.1);
        s.crash(mode);
    }

    /// Like [`MemStorage::reboot`] with an explicit mode.
    pub fn reboot_with(&self, mode: CutMode) {
        self.state().crash(mode);
    }

    /// Makes the mutating operation `n` operations from now fail once with `kind` (e.g. EIO as
    /// `ErrorKind::Other`), without effect.
    pub fn fail_op(&self, n: u64, kind: io::ErrorKind) {
        let mut s = self.state();
        let at = s.ops + n;
        s.fail_at.push((at, kind));
    }

    /// Makes writes fail with ENOSPC (`StorageFull`) once the files hold `limit` bytes; a write
    /// that crosses the limit lands partially, as on a real filesystem.
    pub fn set_space_limit(&self, limit: Option<u64>) {
        self.state().space_limit = limit;
    }

    /// Makes every mutating operation fail with EROFS, as after the kernel remounts a failing
    /// flash read-only.
    pub fn set_read_only(&self, on: bool) {
        self.state().read_only = on;
    }

    /// Makes every read fail with EIO.
    pub fn set_fail_reads(&self, on: bool) {
        self.state().fail_reads = on;
    }

    /// Bytes currently held by files.
    pub fn used_bytes(&self) -> u64 {
        self.state().used_bytes()
    }

    /// The files of `area`, sorted.
    pub fn names(&self, area: Area) -> Vec<String> {
        self.state().live[area.index()].keys().cloned().collect()
    }

    /// A copy of a file's current contents.
    pub fn contents(&self, area: Area, name: &str) -> Option<Vec<u8>> {
        let s = self.state();
        let ino = s.live[area.index()].get(name)?;
        Some(s.inodes[ino].data.clone())
    }

    /// Silently flips one bit of a stored file (bit rot); false when the file or bit does not exist.
    pub fn flip_bit(&self, area: Area, name: &str, bit: u64) -> bool {
        let mut s = self.state();
        let Some(&ino) = s.live[area.index()].get(name) else {
            return false;
        };
        let node = s.inodes.get_mut(&ino).expect("linked inode exists");
        let byte = (bit / 8) as usize;
        if byte >= node.data.len() {
            return false;
        }
        node.data[byte] ^= 1 << (bit % 8);
        true
    }

    /// Shortens a stored file, durably (a damaged file rather than a torn write).
    pub fn truncate(&self, area: Area, name: &str, len: usize) -> bool {
        let mut s = self.state();
        let Some(&ino) = s.live[area.index()].get(name) else {
            return false;
        };
        let node = s.inodes.get_mut(&ino).expect("linked inode exists");
        node.data.truncate(len);
        node.synced = node.synced.min(len);
        true
    }
}

impl Storage for MemStorage {
    fn list(&mut self, area: Area, out: &mut Vec<String>) -> io::Result<()> {
        let s = self.state();
        s.read_gate()?;
        out.extend(s.live[area.index()].keys().cloned());
        Ok(())
    }

    fn write_file(&mut self, area: Area, name: &str, parts: &[&[u8]]) -> io::Result<()> {
        let mut s = self.state();
        s.gate().map_err(|r| r.err)?;
        let ino = s.next_ino;
        s.next_ino += 1;
        s.inodes.insert(
            ino,
            Inode {
                data: Vec::new(),
                synced: 0,
            },
        );
        s.log(DirOp::Link {
            area,
            name: name.to_owned(),
            ino,
        });
        for part in parts {
            if let Err(r) = s.gate() {
                if r.cut_now == Some(CutMode::Torn) {
                    let n = s.rand_upto(part.len());
                    s.inodes
                        .get_mut(&ino)
                        .expect("just created")
                        .data
                        .extend_from_slice(&part[..n]);
                }
                return Err(r.err);
            }
            let mut take = part.len();
            if let Some(limit) = s.space_limit {
                let free = limit.saturating_sub(s.used_bytes());
                if (take as u64) > free {
                    take = free as usize;
                }
            }
            s.inodes
                .get_mut(&ino)
                .expect("just created")
                .data
                .extend_from_slice(&part[..take]);
            if take < part.len() {
                return Err(io::Error::new(
                    io::ErrorKind::StorageFull,
                    "emulated ENOSPC",
                ));
            }
        }
        s.gate().map_err(|r| r.err)?;
        let node = s.inodes.get_mut(&ino).expect("just created");
        node.synced = node.data.len();
        Ok(())
    }

    fn rename(&mut self, from: (Area, &str), to: (Area, &str)) -> io::Result<()> {
        let mut s = self.state();
        s.gate().map_err(|r| r.err)?;
        let ino = s.lookup(from.0, from.1)?;
        s.log(DirOp::Rename {
            from: (from.0, from.1.to_owned()),
            to: (to.0, to.1.to_owned()),
            ino,
        });
        Ok(())
    }

    fn remove(&mut self, area: Area, name: &str) -> io::Result<()> {
        let mut s = self.state();
        s.gate().map_err(|r| r.err)?;
        s.lookup(area, name)?;
        s.log(DirOp::Unlink {
            area,
            name: name.to_owned(),
        });
        Ok(())
    }

    fn sync_area(&mut self, area: Area) -> io::Result<()> {
        let mut s = self.state();
        s.gate().map_err(|r| r.err)?;
        let (now, later): (Vec<DirOp>, Vec<DirOp>) = std::mem::take(&mut s.unsynced_ops)
            .into_iter()
            .partition(|op| op.touches(area));
        for op in now {
            op.apply(&mut s.durable);
        }
        s.unsynced_ops = later;
        Ok(())
    }

    fn file_len(&mut self, area: Area, name: &str) -> io::Result<u64> {
        let s = self.state();
        s.read_gate()?;
        let ino = s.lookup(area, name)?;
        Ok(s.inodes[&ino].data.len() as u64)
    }

    fn read_at(
        &mut self,
        area: Area,
        name: &str,
        offset: u64,
        buf: &mut [u8],
    ) -> io::Result<usize> {
        let s = self.state();
        s.read_gate()?;
        let ino = s.lookup(area, name)?;
        let data = &s.inodes[&ino].data;
        let start = (offset.min(data.len() as u64)) as usize;
        let n = buf.len().min(data.len() - start);
        buf[..n].copy_from_slice(&data[start..start + n]);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsynced_rename_is_lost_but_synced_one_survives() {
        let mut m = MemStorage::new();
        m.write_file(Area::Pending, "a.tmp", &[b"hello"]).unwrap();
        m.rename((Area::Pending, "a.tmp"), (Area::Pending, "a"))
            .unwrap();
        m.reboot_with(CutMode::LoseUnsynced);
        assert!(
            m.names(Area::Pending).is_empty(),
            "nothing was directory-synced"
        );

        m.write_file(Area::Pending, "a.tmp", &[b"hello"]).unwrap();
        m.rename((Area::Pending, "a.tmp"), (Area::Pending, "a"))
            .unwrap();
        m.sync_area(Area::Pending).unwrap();
        m.reboot_with(CutMode::LoseUnsynced);
        assert_eq!(m.contents(Area::Pending, "a").unwrap(), b"hello");
    }

    #[test]
    fn power_cut_stops_every_later_operation() {
        let mut m = MemStorage::new();
        m.cut_power_after(1, CutMode::LoseUnsynced);
        assert!(m.write_file(Area::Pending, "x", &[b"1", b"2"]).is_err());
        assert!(m.is_powered_off());
        assert!(m.sync_area(Area::Pending).is_err());
        m.reboot();
        assert!(m.names(Area::Pending).is_empty());
        m.write_file(Area::Pending, "x", &[b"1"]).unwrap();
    }

    #[test]
    fn space_limit_lands_partial_write_and_reports_storage_full() {
        let mut m = MemStorage::new();
        m.set_space_limit(Some(3));
        let e = m.write_file(Area::Pending, "x", &[b"12345"]).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::StorageFull);
        assert_eq!(m.contents(Area::Pending, "x").unwrap(), b"123");
        m.remove(Area::Pending, "x").unwrap();
        assert_eq!(m.used_bytes(), 0);
    }
}
