//! The few file operations the spool needs, as a trait so the same recovery code runs on a real
//! directory ([`super::FsStorage`]) and on an emulated flash that can lose power at any operation
//! ([`super::MemStorage`]).
//!
//! The trait is deliberately POSIX-shaped (whole-file write + fsync, rename, directory fsync) rather
//! than "store a chunk": the crash-safety argument lives in the spool, once, and every backend only
//! has to keep the usual filesystem promises:
//! - after `write_file` returns `Ok`, the file's *contents* are durable, but its *name* is only
//!   durable once the directory holding it has been synced with `sync_area`;
//! - `rename` is atomic: after a crash the entry is under the old name or the new one, never both,
//!   never neither, and never a mix of two files' contents;
//! - `remove` and `rename` become durable with `sync_area` of the area(s) they touch.

use std::io;

/// A directory of the spool. Chunks move between areas by rename, never by copy, so a chunk
/// exists exactly once on flash whatever the power does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Area {
    /// Chunks waiting to be sent (the spool directory itself), plus `*.tmp` files being written.
    Pending,
    /// Chunks that failed their checksum or could not be decrypted: kept for a human to inspect,
    /// never read or sent again. Bounded together with `Rejected` (oldest deleted first).
    Corrupt,
    /// Chunks the service refused permanently, each with a `.msg` file holding the service's
    /// reason; [`super::Spool::requeue_rejected`] moves them back. Bounded together with `Corrupt`.
    Rejected,
}

impl Area {
    /// All areas, in the order they are created and scanned.
    pub const ALL: [Area; 3] = [Area::Pending, Area::Corrupt, Area::Rejected];

    /// The subdirectory name of the area below the spool directory (`""` for the spool itself).
    pub const fn dir_name(self) -> &'static str {
        match self {
            Area::Pending => "",
            Area::Corrupt => "corrupt",
            Area::Rejected => "rejected",
        }
    }

    #[cfg(any(test, feature = "testing"))]
    pub(crate) const fn index(self) -> usize {
        match self {
            Area::Pending => 0,
            Area::Corrupt => 1,
            Area::Rejected => 2,
        }
    }
}

/// Flat file storage with the durability promises listed in the module docs.
///
/// Errors are plain `std::io::Error`s: the spool classifies them by kind
/// (`StorageFull`/`QuotaExceeded` → no space, `ReadOnlyFilesystem` → read-only, `NotFound`, the rest → I/O),
/// so a backend only has to report what the OS reported.
/// Names are plain file names (no `/`), chosen by the spool.
pub trait Storage {
    /// Appends the names of the regular files of `area` to `out` (any order).
    fn list(&mut self, area: Area, out: &mut Vec<String>) -> io::Result<()>;

    /// Creates (or truncates) `name`, writes `parts` one after another, and makes the contents
    /// durable (fsync) before returning. The parts let the spool write header, payload and checksum
    /// without first gluing them into one payload-sized buffer.
    fn write_file(&mut self, area: Area, name: &str, parts: &[&[u8]]) -> io::Result<()>;

    /// Atomically renames `from` to `to` (replacing `to` if it exists). Durable after `sync_area`
    /// of both areas.
    fn rename(&mut self, from: (Area, &str), to: (Area, &str)) -> io::Result<()>;

    /// Removes `name`. Durable after `sync_area(area)`.
    fn remove(&mut self, area: Area, name: &str) -> io::Result<()>;

    /// Makes every earlier create, rename and remove in `area` durable (fsync of the directory).
    fn sync_area(&mut self, area: Area) -> io::Result<()>;

    /// The current size of `name` in bytes.
    fn file_len(&mut self, area: Area, name: &str) -> io::Result<u64>;

    /// Reads from `offset` until `buf` is full or the file ends; returns the number of bytes read.
    /// Reading in pieces keeps verification of a 4 MiB chunk within a small scratch buffer.
    fn read_at(&mut self, area: Area, name: &str, offset: u64, buf: &mut [u8])
        -> io::Result<usize>;
}

/// Forwards every operation through a pointer type, so a spool can own its storage by value, borrow it, or hold
/// it boxed behind `dyn Storage` (as the client does, to take a real directory or a fault-injecting test device).
macro_rules! forward_storage {
    ($($ptr:ty),*) => {$(
        impl<S: Storage + ?Sized> Storage for $ptr {
            fn list(&mut self, area: Area, out: &mut Vec<String>) -> io::Result<()> {
                (**self).list(area, out)
            }
            fn write_file(&mut self, area: Area, name: &str, parts: &[&[u8]]) -> io::Result<()> {
                (**self).write_file(area, name, parts)
            }
            fn rename(&mut self, from: (Area, &str), to: (Area, &str)) -> io::Result<()> {
                (**self).rename(from, to)
            }
            fn remove(&mut self, area: Area, name: &str) -> io::Result<()> {
                (**self).remove(area, name)
            }
            fn sync_area(&mut self, area: Area) -> io::Result<()> {
                (**self).sync_area(area)
            }
            fn file_len(&mut self, area: Area, name: &str) -> io::Result<u64> {
                (**self).file_len(area, name)
            }
            fn read_at(&mut self, area: Area, name: &str, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
                (**self).read_at(area, name, offset, buf)
            }
        }
    )*};
}

forward_storage!(&mut S, Box<S>);
