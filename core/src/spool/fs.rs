//! [`Storage`] on a real directory with `std::fs`.

use super::storage::{Area, Storage};
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// The spool on a directory of the gateway's flash.
///
/// Directories are created with mode 0700 and files with 0600: spooled telemetry may be sensitive,
/// and only the process that writes it should read it. OS errors are passed through unchanged;
/// std already maps ENOSPC/EDQUOT to `StorageFull`/`QuotaExceeded` and EROFS to
/// `ReadOnlyFilesystem`, which the spool turns into `NoSpace` and `ReadOnly`.
///
/// It holds an exclusive advisory lock on `<root>/.lock` for as long as it lives, so only one
/// client at a time uses a spool directory.
#[derive(Debug)]
pub struct FsStorage {
    root: PathBuf,
    /// Open for the lock's sake: the `flock` lives as long as this file description.
    /// `None` only on a read-only filesystem without a lock file: nobody can write there anyway.
    _lock: Option<File>,
}

/// Name of the lock file in the spool directory (not a chunk name, so recovery ignores it).
const LOCK_NAME: &str = ".lock";

/// Fails if `path` exists and is a symlink: the spool must not be redirected to another place.
fn refuse_symlink(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => Err(io::Error::other(format!(
            "spool subdirectory '{}' is a symlink: refusing to follow it",
            path.display()
        ))),
        _ => Ok(()),
    }
}

/// The exclusive advisory lock (`flock(2)` with `LOCK_EX | LOCK_NB` on Linux), through std: `WouldBlock` when
/// another holder has it.
fn try_lock_exclusive(f: &File) -> io::Result<()> {
    match f.try_lock() {
        Ok(()) => Ok(()),
        Err(fs::TryLockError::WouldBlock) => Err(io::Error::from(io::ErrorKind::WouldBlock)),
        Err(fs::TryLockError::Error(e)) => Err(e),
    }
}

/// Opens `<root>/.lock`, takes the exclusive lock and records our pid in it; if another holder
/// has it, names that holder's pid in the error.
fn lock_root(root: &Path) -> io::Result<Option<File>> {
    let path = root.join(LOCK_NAME);
    refuse_symlink(&path)?;
    // No truncate on open: the file may hold the current holder's pid, which we need to report. O_NOFOLLOW
    // closes the gap between the symlink check and the open.
    const O_NOFOLLOW: i32 = libc::O_NOFOLLOW;
    let opened = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(O_NOFOLLOW)
        .open(&path);
    let (mut f, writable) = match opened {
        Ok(f) => (f, true),
        // Flash the kernel remounted read-only still serves its chunks: lock through a read-only descriptor
        // (flock does not need write access), or go on without a lock where none can be created.
        Err(e) if e.kind() == io::ErrorKind::ReadOnlyFilesystem => {
            match OpenOptions::new()
                .read(true)
                .custom_flags(O_NOFOLLOW)
                .open(&path)
            {
                Ok(f) => (f, false),
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(e),
            }
        }
        Err(e) => return Err(e),
    };
    if let Err(e) = try_lock_exclusive(&f) {
        if e.kind() != io::ErrorKind::WouldBlock {
            return Err(e);
        }
        let mut pid = String::new();
        let _ = f.read_to_string(&mut pid);
        let pid = pid.trim();
        let pid = if pid.is_empty() { "unknown" } else { pid };
        return Err(io::Error::new(
            io::ErrorKind::WouldBlock,
            format!(
                "spool directory '{}' is in use by another client (pid {pid}): one client per spool directory",
                root.display()
            ),
        ));
    }
    if writable {
        f.set_len(0)?;
        f.write_all_at(std::process::id().to_string().as_bytes(), 0)?;
    }
    Ok(Some(f))
}

impl FsStorage {
    /// Uses (and creates, with any missing parents) the spool directory `root` and its
    /// `corrupt/` and `rejected/` subdirectories. Existing directories keep their permissions.
    ///
    /// Takes an exclusive lock on `<root>/.lock` (mode 0600, holding our pid) for the life of
    /// the storage; if another client holds it, fails with [`io::ErrorKind::WouldBlock`] and a
    /// message naming its pid. Subdirectories or a lock file that are symlinks are refused.
    pub fn new(root: impl AsRef<Path>) -> io::Result<Self> {
        let root = root.as_ref().to_path_buf();
        let existed = root.is_dir();
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&root)?;
        if !existed {
            // The new directory's own entry must survive a power cut too.
            if let Some(parent) = root.parent().filter(|p| !p.as_os_str().is_empty()) {
                sync_dir(parent)?;
            }
        }
        let mut created = false;
        for area in [Area::Corrupt, Area::Rejected] {
            let dir = root.join(area.dir_name());
            refuse_symlink(&dir)?;
            if !dir.is_dir() {
                match DirBuilder::new().mode(0o700).create(&dir) {
                    Ok(()) => {}
                    // Another opener created it in between: fine if it is a real directory.
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                        refuse_symlink(&dir)?;
                        if !dir.is_dir() {
                            return Err(e);
                        }
                    }
                    Err(e) => return Err(e),
                }
                created = true;
            }
        }
        if created {
            sync_dir(&root)?;
        }
        let lock = lock_root(&root)?;
        Ok(FsStorage { root, _lock: lock })
    }

    /// The spool directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Path of `name` in `area`, for tools and tests that inspect the spool.
    pub fn path(&self, area: Area, name: &str) -> PathBuf {
        self.root.join(area.dir_name()).join(name)
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

impl Storage for FsStorage {
    fn list(&mut self, area: Area, out: &mut Vec<String>) -> io::Result<()> {
        for entry in fs::read_dir(self.root.join(area.dir_name()))? {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                // Names that are not UTF-8 were not written by the spool; leave them alone.
                if let Ok(name) = entry.file_name().into_string() {
                    out.push(name);
                }
            }
        }
        Ok(())
    }

    fn write_file(&mut self, area: Area, name: &str, parts: &[&[u8]]) -> io::Result<()> {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(self.path(area, name))?;
        for p in parts {
            f.write_all(p)?;
        }
        f.sync_all()
    }

    fn rename(&mut self, from: (Area, &str), to: (Area, &str)) -> io::Result<()> {
        fs::rename(self.path(from.0, from.1), self.path(to.0, to.1))
    }

    fn remove(&mut self, area: Area, name: &str) -> io::Result<()> {
        fs::remove_file(self.path(area, name))
    }

    fn sync_area(&mut self, area: Area) -> io::Result<()> {
        sync_dir(&self.root.join(area.dir_name()))
    }

    fn file_len(&mut self, area: Area, name: &str) -> io::Result<u64> {
        Ok(fs::metadata(self.path(area, name))?.len())
    }

    fn read_at(
        &mut self,
        area: Area,
        name: &str,
        offset: u64,
        buf: &mut [u8],
    ) -> io::Result<usize> {
        let f = File::open(self.path(area, name))?;
        let mut done = 0;
        while done < buf.len() {
            match f.read_at(&mut buf[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(done)
    }
}
