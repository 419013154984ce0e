//! [`Storage`] on a real directory with `std::fs`.

use super::storage::{Area, Storage};
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// The spool on a directory of the gateway's flash.
///
/// Directories are created with mode 0700 and files with 0600: spooled telemetry may be sensitive,
/// and only the process that writes it should read it. OS errors are passed through unchanged;
/// std already maps ENOSPC/EDQUOT to `StorageFull`/`QuotaExceeded` and EROFS to
/// `ReadOnlyFilesystem`, which the spool turns into `NoSpace` and `ReadOnly`.
#[derive(Debug, Clone)]
pub struct FsStorage {
    root: PathBuf,
}

impl FsStorage {
    /// Uses (and creates, with any missing parents) the spool directory `root` and its
    /// `corrupt/` and `rejected/` subdirectories. Existing directories keep their permissions.
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
            if !dir.is_dir() {
                DirBuilder::new().mode(0o700).create(&dir)?;
                created = true;
            }
        }
        if created {
            sync_dir(&root)?;
        }
        Ok(FsStorage { root })
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
