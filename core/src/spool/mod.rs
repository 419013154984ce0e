//! The flash spool: chunks that could not be sent are kept on the gateway's flash so they survive
//! outages, power cuts and reboots, and are replayed later, oldest first.
//!
//! # Why it is safe to pull the plug at any moment
//!
//! One file per chunk, named by a zero-padded hex sequence number. A chunk is written as
//! `SEQ.tmp`, fsynced, renamed to `SEQ.chunk`, and the directory is fsynced; `push` returns only
//! after that last fsync. Rename is atomic, so a chunk is either absent or complete: a power cut
//! can only ever leave a `*.tmp` behind, which `open` deletes. Removals and moves to `corrupt/` or
//! `rejected/` are renames/unlinks followed by directory fsyncs too, so a chunk that `remove`
//! acknowledged does not come back after a reboot (a duplicate send is the worst case only when
//! `remove` itself reported an error).
//!
//! The checksums are the second line of defence (the littlefs/FCB rule: data counts only when the
//! checksum written after it is valid). They catch what the rename protocol cannot: bit rot, a
//! filesystem that reorders data behind a rename, files damaged by hand. `open` streams every chunk
//! through CRC-32 with a 64 KiB scratch buffer (bounded RAM whatever the chunk size), and `read`
//! checks it again on the way out; failures move the file to `corrupt/` and are counted. A file
//! in `corrupt/` is kept for a person to inspect and is never read, sent or moved back by the
//! spool again (only its name and size are indexed, for the quarantine bound).
//!
//! # Directory layout
//!
//! | path | what |
//! |---|---|
//! | `SEQ.chunk` | a pending chunk (`SEQ`: 16 hex digits), including locked and newer ones |
//! | `SEQ.tmp` | a chunk being written; a leftover is deleted by `open` |
//! | `.lock` | the lock file (pid of the holder) |
//! | `rejected/SEQ.chunk`, `rejected/SEQ.msg` | refused by the service, with its message |
//! | `corrupt/SEQ.chunk` | damaged, never read again |
//!
//! Other names are left alone and not counted.
//!
//! # The quarantine is bounded too
//!
//! `rejected/` and `corrupt/` together hold at most [`SpoolConfig::quarantine_max_chunks`] chunks
//! and [`SpoolConfig::quarantine_max_bytes`] bytes (messages included), on top of the pending
//! limits, so the spool's whole footprint on flash is bounded. When a chunk is rejected or found
//! corrupt and would not fit, the oldest quarantined chunks (smallest sequence number: created
//! first) are deleted, and that deletion is made durable *before* the newcomer is renamed in, so
//! the bound holds on flash at every instant, power cuts included; a chunk that alone exceeds the
//! byte limit is deleted instead of moved. Everything deleted is counted
//! ([`QuarantineDropped`], [`SpoolStats::quarantine_dropped_chunks`]). `open` indexes the
//! quarantine (names and sizes, nothing else read), trims it to the limits (lowered, or a
//! directory from firmware without them), and deletes messages left without their chunk.
//! (Locked and newer chunks are outside every limit: nothing adds to them while the spool runs.)
//!
//! # Administration
//!
//! [`Spool::status`] reports what is pending per destination and sink, and what is quarantined,
//! locked or newer, from the index. [`Spool::purge`] deletes the pending (and, on request,
//! quarantined) chunks of one table or of all. [`Spool::requeue_rejected`] moves refused chunks
//! back to pending after their cause was fixed: one atomic rename per chunk (the sequence number
//! lives only in the file name), durable before its message is deleted, so a power cut leaves
//! each chunk in exactly one of `rejected/` or pending, never duplicated, never lost; the pending
//! limits hold (it stops when pending is full and says how many it left).
//!
//! # File layout (little endian, format version 2)
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | magic `KESC` |
//! | 4 | 1 | format version (2) |
//! | 5 | 1 | flags: 0x01 gzip, 0x02 sealed (AES-256-GCM), 0x04 has mapping |
//! | 6 | 2 | H = header length (this table up to the end of the names, without the CRC) |
//! | 8 | 16 | chunk id (the request id on every resend, across reboots) |
//! | 24 | 8 | creation time, Unix ms |
//! | 32 | 4 | raw (uncompressed) length |
//! | 36 | 4 | record count |
//! | 40 | 4 | P = stored payload length (ciphertext + 16-byte tag when sealed) |
//! | 44 | 12 | AES-GCM nonce (zero when not sealed) |
//! | 56 | 8 | key identifier (HMAC-SHA256 of a label under the key; zero when not sealed) |
//! | 64 | 8 | lengths (u16) of database, table, format, mapping |
//! | 72 | 1 | sink ([`SinkId`]: 1 streaming, 2 queued) |
//! | 73 | .. | the four names, UTF-8, each at most [`MAX_NAME_LEN`] bytes |
//! | H | 4 | CRC-32 of bytes 0..H |
//! | H+4 | P | payload: exactly the request body that is sent (gzip for text formats) |
//! | H+4+P | 4 | CRC-32 of every byte before it |
//!
//! Version 1 (written by earlier firmware, still read) is the same without the sink byte: the
//! names start at 72, and the chunk is a streaming one. A file of a *newer* version (or a version
//! 2 file naming a sink this firmware does not know, its checksum intact) was written by newer
//! firmware: its layout cannot be checked here, so it is neither sent nor judged. It stays in the
//! spool directory untouched, unindexed and counted ([`RecoveryReport::newer`]), like a locked
//! chunk, so that a firmware downgrade keeps the data for the next upgrade. (A bit flip that
//! raises the version byte of a damaged file is indistinguishable from that, and is treated so.)
//!
//! Each sink has its own largest chunk: streaming chunks at most [`MAX_RAW_LEN`] raw and
//! [`MAX_PAYLOAD_LEN`] stored bytes (the service's limit), queued ones up to
//! [`SpoolConfig::max_payload_len_queued`] (the format allows up to [`MAX_STORED_PAYLOAD_LEN`]).
//! `push` enforces them; `read` of a chunk bigger than the caller's buffer is
//! [`SpoolError::BufferTooSmall`] and consumes nothing.
//!
//! The header has its own CRC so a reader can trust the lengths before it reads the payload into
//! the caller's buffer; the trailing CRC commits the whole file. A file whose size is not exactly
//! `H + 4 + P + 4` is torn and treated as corrupt.
//!
//! With a key, the payload is sealed with AES-256-GCM under a random per-chunk nonce, the header
//! (bytes 0..H) being the associated data: destination, lengths and id are authenticated too.
//! The tag follows the ciphertext, so `read` decrypts in place in the caller's buffer and needs no
//! buffer of its own; `push` needs one transient payload-sized copy to encrypt into, because the
//! caller's payload is borrowed read-only and AES-GCM in ring is one-shot. That copy is taken with
//! `try_reserve`, so a gateway short of RAM gets [`SpoolError::OutOfMemory`], not an abort.
//! A chunk sealed under another key is recognised on `open` by its key identifier (in the
//! CRC-checked header); a tampered one (with a recomputed CRC) fails authentication on `read` and
//! goes to `corrupt/`, never to the caller. With a key configured, unsealed chunks are refused as
//! well (whoever can write the flash could otherwise inject data); without a key, sealed chunks
//! cannot be read. Such key mismatches (other key, no key, clear chunk with a key) are a
//! configuration matter, not damage: the chunks stay in the spool directory untouched, are not
//! indexed (never read, sent, or counted against the limits) and are reported as `locked`; an
//! `open` with the matching configuration serves them again. Only real damage (bad checksum, torn
//! file, failed authentication) moves a chunk to `corrupt/`.
//!
//! Opening never discards data silently: a spool holding more than its (lowered) limits is kept
//! whole and refuses new chunks until it drains, unless `trim_on_open` asks to drop the oldest.
//!
//! # One process per spool directory
//!
//! [`FsStorage`] takes an exclusive `flock` on `<spool>/.lock` (and writes its pid there) for its
//! whole life; a second client on the same directory fails to open instead of numbering chunks
//! from the same sequence and overwriting the first one's files. The kernel drops the lock when the
//! process dies, so a crash never leaves the directory locked.
//!
//! Sequence numbers are `u64` and grow (`open` resumes after the largest number found in any
//! area, so a number on flash is never reused): at a million chunks per second they last 584,000
//! years, so wrap-around is not handled.
//!
//! # Memory
//!
//! The index holds one small [`ChunkInfo`] per pending chunk (destinations are shared), bounded by
//! `max_chunks`, and one entry (sequence number, area, size) per quarantined chunk, bounded by
//! `quarantine_max_chunks`. `open` lists the directories (a transient name per file) and uses a
//! 64 KiB scratch to verify chunks, as does `requeue_rejected`. No payload-sized buffer is ever
//! allocated except the sealing copy described above (for a queued chunk that is up to
//! `max_payload_len_queued`).

mod admin;
mod format;
mod fs;
#[cfg(any(test, feature = "testing"))]
mod mem;
mod quarantine;
mod seal;
mod storage;

#[cfg(test)]
mod tests;

pub use admin::{AreaCount, DestFilter, DestStatus, Purged, Requeued, SpoolStatus};
pub use format::MAX_NAME_LEN;
pub use fs::FsStorage;
#[cfg(any(test, feature = "testing"))]
pub use mem::{CutMode, MemStorage};
pub use storage::{Area, Storage};

use crate::crc32::Crc32;
use format::{BadHeader, Decoded, CRC_LEN, MAX_HEADER_LEN, TAG_LEN};
use quarantine::Quarantine;
use seal::Sealer;
use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::sync::Arc;

/// Largest raw (uncompressed) chunk the service accepts in one streaming request: 4 MiB.
pub const MAX_RAW_LEN: u32 = 4 << 20;

/// Largest payload `push` accepts and `read` returns: [`MAX_RAW_LEN`] plus the worst-case growth of
/// gzip on incompressible data (deflate stored blocks: 5 bytes per 64 KiB, plus the gzip header
/// and trailer), with margin. A read buffer of this size fits every chunk, sealed or not: the
/// AES-GCM tag is kept out of the caller's buffer.
pub const MAX_PAYLOAD_LEN: usize = MAX_RAW_LEN as usize + (MAX_RAW_LEN as usize / 1024) + 64;

/// Largest payload the file format can hold (its stored length is 32 bits and includes the
/// AES-GCM tag): the ceiling of [`SpoolConfig::max_payload_len_queued`].
pub const MAX_STORED_PAYLOAD_LEN: usize = u32::MAX as usize - TAG_LEN;

/// Largest file one streaming chunk can occupy on flash (payload, tag, header, checksums); `max_bytes` below
/// this may refuse legitimate chunks with [`SpoolError::TooLarge`].
pub const MAX_CHUNK_FILE_LEN: u64 =
    (MAX_HEADER_LEN + 2 * CRC_LEN + TAG_LEN + MAX_PAYLOAD_LEN) as u64;

/// Longest service message kept beside a rejected chunk; longer ones are cut (the start of a
/// Kusto error says what went wrong).
pub const MAX_REJECT_MESSAGE_LEN: usize = 4096;

/// Bytes of scratch used to stream a chunk through its checksum on `open`.
const VERIFY_SCRATCH_LEN: usize = 64 * 1024;

/// Which way a chunk is sent to the service, recorded in its header (format version 2; version 1
/// chunks are streaming ones). Each sink has its own largest chunk: see [`SpoolConfig`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum SinkId {
    /// Streaming ingestion: one request per chunk, at most [`MAX_RAW_LEN`] raw bytes.
    Streaming = 1,
    /// Queued ingestion (blob upload, then a queue message): bigger chunks, bounded by
    /// [`SpoolConfig::max_payload_len_queued`].
    Queued = 2,
}

/// Where a chunk goes: chunks are sent per destination, so the spool keeps it with each one.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct DestKey {
    /// Kusto database.
    pub database: String,
    /// Kusto table.
    pub table: String,
    /// Wire name of the data format (`multijson`, `csv`, `avro`, ...).
    pub format: String,
    /// Name of an ingestion mapping created on the table beforehand, if any.
    pub mapping: Option<String>,
}

/// Everything needed to send a chunk again, possibly after a reboot, exactly as it would have been
/// sent the first time.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct ChunkHeader {
    /// Stable id, reused as the request id on every resend so the service side can trace retries.
    pub chunk_id: [u8; 16],
    /// Where the chunk goes.
    pub dest: DestKey,
    /// When the batch was closed, for age-based reporting and dropping.
    pub created_unix_ms: u64,
    /// Uncompressed bytes (the service's 4 MiB limit applies to these).
    pub raw_len: u32,
    /// Records in the chunk, for delivery reports and drop accounting.
    pub records: u32,
    /// Payload is gzip (text formats, sent with `Content-Encoding: gzip`) or sent as is (binary formats).
    pub gzip: bool,
    /// The sink the chunk is for.
    pub sink: SinkId,
}

/// What `push` does when the spool is full.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FullPolicy {
    /// Delete the oldest chunks (of any destination) to make room: recent telemetry matters most.
    DropOldest,
    /// Refuse the new chunk with [`SpoolError::Full`]: history matters most; the caller decides.
    RejectNew,
}

/// Limits and options of a spool, fixed at `open`.
#[derive(Clone)]
pub struct SpoolConfig {
    /// Upper bound of the summed file sizes of pending chunks (set it below the free space of the
    /// flash partition so the spool never fills the disk).
    pub max_bytes: u64,
    /// Upper bound of pending chunks; also bounds the RAM of the index.
    pub max_chunks: u32,
    /// What to do when a new chunk does not fit.
    pub policy: FullPolicy,
    /// AES-256-GCM key for encryption at rest; `None` stores payloads in clear.
    /// Never written anywhere; the spool keeps only ring's key schedule.
    pub key: Option<[u8; 32]>,
    /// Whether `open` may delete the oldest chunks when the spool holds more than the (lowered)
    /// limits allow, whatever the policy. Off by default: opening never discards data silently;
    /// an over-limit spool is kept whole and `push` refuses new chunks until it drains.
    pub trim_on_open: bool,
    /// Largest payload `push` accepts for a [`SinkId::Queued`] chunk (no raw-length bound applies
    /// to those: the service's streaming limit does not). [`MAX_PAYLOAD_LEN`] is the usual value;
    /// at most [`MAX_STORED_PAYLOAD_LEN`]. Streaming chunks are always bounded by
    /// [`MAX_RAW_LEN`]/[`MAX_PAYLOAD_LEN`]. Chunks already on flash are served whatever this says
    /// (a lowered bound does not strand them); `read` needs a buffer that holds them.
    pub max_payload_len_queued: usize,
    /// Upper bound of the summed file sizes in `rejected/` and `corrupt/` (chunks and the
    /// service's messages), on top of `max_bytes`. When a chunk is rejected or found corrupt and
    /// would not fit, the oldest quarantined chunks are deleted first (counted); a chunk that
    /// alone exceeds it is deleted instead of moved. 0: nothing is kept in quarantine.
    pub quarantine_max_bytes: u64,
    /// Upper bound of chunks in `rejected/` and `corrupt/` together; also bounds the RAM of their
    /// index (names and sizes). 0: nothing is kept in quarantine.
    pub quarantine_max_chunks: u32,
}

/// The key's copy in the config is wiped when the config goes (after `open`, which keeps only ring's key
/// schedule, and in every clone).
impl Drop for SpoolConfig {
    fn drop(&mut self) {
        if let Some(k) = self.key.as_mut() {
            zeroize::Zeroize::zeroize(k);
        }
    }
}

impl fmt::Debug for SpoolConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SpoolConfig")
            .field("max_bytes", &self.max_bytes)
            .field("max_chunks", &self.max_chunks)
            .field("policy", &self.policy)
            .field("key", &self.key.map(|_| "<redacted>"))
            .field("trim_on_open", &self.trim_on_open)
            .field("max_payload_len_queued", &self.max_payload_len_queued)
            .field("quarantine_max_bytes", &self.quarantine_max_bytes)
            .field("quarantine_max_chunks", &self.quarantine_max_chunks)
            .finish()
    }
}

/// Why a spool operation failed. Each message says what to do about it.
#[derive(Debug)]
pub enum SpoolError {
    /// The spool is at `max_bytes`/`max_chunks` and the policy is [`FullPolicy::RejectNew`], or
    /// (whatever the policy) it holds a backlog over lowered limits that has not drained yet.
    Full,
    /// The filesystem is out of space (ENOSPC/EDQUOT); nothing was stored, earlier chunks are intact.
    NoSpace,
    /// The filesystem is read-only (EROFS), often because the kernel saw flash errors.
    ReadOnly,
    /// Any other I/O error, as reported by the OS.
    Io(io::Error),
    /// A chunk failed its checksum or authentication; it was moved to `corrupt/`.
    Corrupt(String),
    /// The chunk can never fit: for a streaming chunk raw data over 4 MiB or payload over
    /// [`MAX_PAYLOAD_LEN`], for a queued one payload over
    /// [`SpoolConfig::max_payload_len_queued`], or file over `max_bytes`.
    TooLarge {
        /// Size of the offending quantity in bytes.
        len: u64,
        /// The limit it exceeds.
        max: u64,
    },
    /// The caller's read buffer is smaller than the chunk's payload; nothing was consumed.
    BufferTooSmall {
        /// Bytes the buffer must hold.
        needed: usize,
    },
    /// No pending chunk has this sequence number (already removed, rejected, or moved to `corrupt/`).
    NotFound(u64),
    /// The header cannot be stored (a name longer than [`MAX_NAME_LEN`]).
    InvalidHeader(String),
    /// The configuration cannot work (zero limits).
    InvalidConfig(String),
    /// Memory for the sealing copy could not be allocated.
    OutOfMemory,
    /// The system random generator failed, so no safe nonce could be made.
    Crypto,
}

impl fmt::Display for SpoolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SpoolError::Full => write!(
                f,
                "spool full (max_bytes/max_chunks reached with policy RejectNew, or a backlog over lowered limits \
                 still draining): the chunk was not stored; wait for the connection to drain the spool, raise the limits, or use DropOldest"
            ),
            SpoolError::NoSpace => write!(
                f,
                "no space left on the spool's filesystem: the chunk was not stored (earlier chunks are intact); \
                 free space on the partition or lower max_bytes below its free space"
            ),
            SpoolError::ReadOnly => write!(
                f,
                "the spool's filesystem is read-only (often remounted read-only after flash errors): \
                 check dmesg and the flash, then remount read-write"
            ),
            SpoolError::Io(e) => write!(f, "spool I/O error: {e}; check the spool directory and the flash (dmesg)"),
            SpoolError::Corrupt(why) => write!(f, "spooled chunk is corrupt and will not be sent: {why}"),
            SpoolError::TooLarge { len, max } => write!(
                f,
                "chunk too large for the spool ({len} bytes, limit {max}): make batches smaller or raise max_bytes"
            ),
            SpoolError::BufferTooSmall { needed } => write!(
                f,
                "read buffer too small: the chunk needs {needed} bytes; size it with MAX_PAYLOAD_LEN"
            ),
            SpoolError::NotFound(seq) => write!(
                f,
                "no pending chunk {seq:016x}: it was already removed, rejected or found corrupt; take the next one from oldest()"
            ),
            SpoolError::InvalidHeader(why) => write!(f, "chunk header cannot be spooled: {why}"),
            SpoolError::InvalidConfig(why) => write!(f, "invalid spool configuration: {why}"),
            SpoolError::OutOfMemory => write!(
                f,
                "out of memory while encrypting a chunk for the spool: lower the batch size or free RAM"
            ),
            SpoolError::Crypto => write!(
                f,
                "the system random generator failed, so the chunk could not be encrypted: check /dev/urandom or getrandom()"
            ),
        }
    }
}

impl std::error::Error for SpoolError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SpoolError::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<io::Error> for SpoolError {
    /// The one place OS errors are classified: ENOSPC/EDQUOT and EROFS get their own variants
    /// because the caller reacts differently (stop spooling vs. report a sick flash).
    fn from(e: io::Error) -> Self {
        match e.kind() {
            io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => SpoolError::NoSpace,
            io::ErrorKind::ReadOnlyFilesystem => SpoolError::ReadOnly,
            _ => SpoolError::Io(e),
        }
    }
}

/// What `open` found and repaired.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Pending chunks after recovery.
    pub chunks: u32,
    /// Their total file size.
    pub bytes: u64,
    /// Leftovers of operations interrupted by a power cut, deleted: `*.tmp` files of writes, and
    /// messages in `rejected/` without their chunk.
    pub removed_partial: u32,
    /// Chunks that failed verification and were moved to `corrupt/` (or deleted instead, see
    /// `quarantine_dropped`).
    pub corrupt: u32,
    /// Chunks dropped because the spool held more than the (possibly lowered) limits allow
    /// (only with [`SpoolConfig::trim_on_open`]).
    pub dropped: Dropped,
    /// The pending chunks exceed `max_bytes`/`max_chunks` (limits lowered since the last run and
    /// no `trim_on_open`): all are kept, and `push` refuses new chunks with [`SpoolError::Full`]
    /// until the spool drains back under its limits.
    pub over_limit: bool,
    /// Intact chunks sealed under another key, sealed while no key is configured, or in clear
    /// while a key is configured. They stay in the spool directory untouched and are not indexed
    /// (never read, sent or counted against the limits); an open with the matching key (or
    /// without one, for clear chunks) serves them again.
    pub locked: u32,
    /// File bytes of the locked chunks (they still occupy the flash: worth a warning).
    pub locked_bytes: u64,
    /// Chunks written by newer firmware (a newer format version, or a sink this version does not
    /// know). Like locked chunks they stay in the spool directory untouched and unindexed, never
    /// moved or deleted, so a firmware downgrade keeps the data for the next upgrade.
    pub newer: u32,
    /// File bytes of those.
    pub newer_bytes: u64,
    /// Chunks in `rejected/` and `corrupt/` after recovery.
    pub quarantine_chunks: u32,
    /// Their bytes on flash (with the service's messages).
    pub quarantine_bytes: u64,
    /// Quarantined chunks deleted to bring the quarantine within its limits (lowered since the
    /// last run, or left over from firmware without them), and to make room for the chunks found
    /// corrupt; `incoming` says that at least one of those was deleted instead of moved.
    pub quarantine_dropped: QuarantineDropped,
}

/// Quarantined chunks deleted to keep `rejected/` and `corrupt/` within
/// [`SpoolConfig::quarantine_max_bytes`]/[`SpoolConfig::quarantine_max_chunks`], oldest (first
/// created) first: evidence an operator will not see, worth a log line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QuarantineDropped {
    /// Chunks deleted (each with its message, in `rejected/`).
    pub chunks: u32,
    /// Bytes freed on flash.
    pub bytes: u64,
    /// The chunk being quarantined was itself deleted instead of moved (it alone exceeds
    /// `quarantine_max_bytes`, or `quarantine_max_chunks` is 0); it is included in the counts.
    pub incoming: bool,
}

/// Chunks deleted to make room (policy [`FullPolicy::DropOldest`]): lost telemetry the caller
/// should report.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Dropped {
    /// Chunks deleted.
    pub chunks: u32,
    /// Records they held.
    pub records: u64,
    /// File bytes freed.
    pub bytes: u64,
}

/// Counters since `open`, plus the current fill level.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SpoolStats {
    /// Pending chunks.
    pub chunks: u32,
    /// Their total file size in bytes.
    pub bytes: u64,
    /// Chunks accepted by `push`.
    pub pushed_chunks: u64,
    /// Chunks removed after the service acknowledged them.
    pub removed_chunks: u64,
    /// Chunks moved to `corrupt/` (on open or read).
    pub corrupt_chunks: u64,
    /// Chunks deleted by [`FullPolicy::DropOldest`] (including on open).
    pub dropped_chunks: u64,
    /// Records in those.
    pub dropped_records: u64,
    /// File bytes of those.
    pub dropped_bytes: u64,
    /// Chunks refused with [`SpoolError::Full`] by [`FullPolicy::RejectNew`].
    pub rejected_chunks: u64,
    /// Records in those.
    pub rejected_records: u64,
    /// Chunks the service refused permanently, moved to `rejected/` by `reject`.
    pub service_rejected_chunks: u64,
    /// Records in those.
    pub service_rejected_records: u64,
    /// Failed storage writes, removes, renames and directory syncs (in `push`, `remove`,
    /// `reject`, quarantine and recovery): a sick flash shows here even when the chunk's fate
    /// was settled anyway.
    pub io_errors: u64,
    /// Chunks left untouched on `open` because they need another key (see
    /// [`RecoveryReport::locked`]).
    pub locked_chunks: u64,
    /// File bytes of those.
    pub locked_bytes: u64,
    /// Chunks left untouched on `open` because newer firmware wrote them (see
    /// [`RecoveryReport::newer`]).
    pub newer_chunks: u64,
    /// File bytes of those.
    pub newer_bytes: u64,
    /// Chunks now in `rejected/` and `corrupt/` (see [`Spool::status`] for each).
    pub quarantine_chunks: u32,
    /// Their bytes on flash, with the service's messages.
    pub quarantine_bytes: u64,
    /// Quarantined chunks deleted to keep the quarantine within its limits (on open too).
    pub quarantine_dropped_chunks: u64,
    /// Bytes of those.
    pub quarantine_dropped_bytes: u64,
    /// Pending chunks deleted by [`Spool::purge`] (never delivered).
    pub purged_chunks: u64,
    /// Records in those.
    pub purged_records: u64,
    /// Chunks moved back from `rejected/` to pending by [`Spool::requeue_rejected`].
    pub requeued_chunks: u64,
}

/// What the spool knows about a pending chunk without reading its file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChunkInfo {
    /// The chunk's stable id.
    pub chunk_id: [u8; 16],
    /// Its destination (shared between chunks of the same destination to keep the index small).
    pub dest: Arc<DestKey>,
    /// Creation time, Unix ms.
    pub created_unix_ms: u64,
    /// Uncompressed bytes.
    pub raw_len: u32,
    /// Records.
    pub records: u32,
    /// Bytes `read` writes into the caller's buffer.
    pub payload_len: u32,
    /// Bytes the file occupies (what `max_bytes` counts).
    pub file_len: u64,
    /// Whether the payload is gzip.
    pub gzip: bool,
    /// The sink the chunk is for.
    pub sink: SinkId,
}

/// A spool of chunks on a [`Storage`]. Not thread-safe by itself (`&mut self` for every change):
/// the client owns it from one thread.
pub struct Spool<S: Storage> {
    storage: S,
    max_bytes: u64,
    max_chunks: u32,
    policy: FullPolicy,
    trim_on_open: bool,
    max_payload_len_queued: usize,
    sealer: Option<Sealer>,
    index: BTreeMap<u64, ChunkInfo>,
    bytes: u64,
    quarantine: Quarantine,
    next_seq: u64,
    stats: SpoolStats,
    dests: Vec<Arc<DestKey>>,
    /// Reused header buffer: encoding and reading a header never allocates after `open`.
    hdr: Vec<u8>,
}

/// A file name built on the stack (`{seq:016x}.chunk` is 22 bytes): hot paths do not allocate.
struct Name {
    buf: [u8; 22],
    len: usize,
}

impl Name {
    fn new(seq: u64, kind: Kind) -> Self {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut buf = [0u8; 22];
        for (i, b) in buf[..16].iter_mut().enumerate() {
            *b = HEX[((seq >> (60 - 4 * i)) & 0xF) as usize];
        }
        let ext = kind.ext().as_bytes();
        buf[16..16 + ext.len()].copy_from_slice(ext);
        Name {
            buf,
            len: 16 + ext.len(),
        }
    }

    fn as_str(&self) -> &str {
        // Only ASCII is ever written into `buf`.
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or("")
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Chunk,
    Tmp,
    Msg,
}

impl Kind {
    fn ext(self) -> &'static str {
        match self {
            Kind::Chunk => ".chunk",
            Kind::Tmp => ".tmp",
            Kind::Msg => ".msg",
        }
    }
}

/// Recognises the spool's own file names; anything else in the directory is left alone.
fn parse_name(name: &str) -> Option<(u64, Kind)> {
    let (hex, ext) = name.split_at_checked(16)?;
    let kind = [Kind::Chunk, Kind::Tmp, Kind::Msg]
        .into_iter()
        .find(|k| k.ext() == ext)?;
    if !hex
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return None;
    }
    Some((u64::from_str_radix(hex, 16).ok()?, kind))
}

/// Result of a repair step during recovery: `Ok(false)` when the filesystem is read-only, so
/// recovery skips repairs and the spool still serves its intact chunks (they may be the only copy
/// of the data on a gateway whose flash the kernel remounted read-only).
fn repaired(io_errors: &mut u64, r: io::Result<()>) -> Result<bool, SpoolError> {
    match r {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::ReadOnlyFilesystem => {
            *io_errors += 1;
            Ok(false)
        }
        Err(e) => {
            *io_errors += 1;
            Err(e.into())
        }
    }
}

/// Outcome of checking one chunk file.
enum Check {
    /// The file is damaged: quarantine it.
    Corrupt(String),
    /// The file could not be read: report, do not judge it.
    Io(io::Error),
    /// The file is intact (header checksum and size agree) but needs another key, or none, or
    /// a key where none was used: leave it alone for an open with the right configuration.
    /// Carries the file size.
    Locked(u64),
    /// Written by newer firmware: leave it alone. Carries the file size.
    Newer(u64),
}

impl From<io::Error> for Check {
    fn from(e: io::Error) -> Self {
        Check::Io(e)
    }
}

impl Check {
    fn bad_header(b: BadHeader, file_len: u64) -> Self {
        match b {
            BadHeader::Corrupt(why) => Check::Corrupt(why),
            BadHeader::Newer => Check::Newer(file_len),
        }
    }
}

impl<S: Storage> Spool<S> {
    /// Opens the spool on `storage` and recovers it: deletes leftovers of interrupted writes,
    /// verifies every chunk (streaming, 64 KiB scratch), moves failures to `corrupt/`, rebuilds the
    /// index, and resumes the sequence after the largest number found. Chunks beyond the limits
    /// (lowered since the last run) are kept, whatever the policy, and `push` says `Full` until
    /// the spool drains under them ([`RecoveryReport::over_limit`]); only with
    /// [`SpoolConfig::trim_on_open`] are they dropped, oldest first. Intact chunks that need
    /// another key are left in place, unindexed ([`RecoveryReport::locked`]).
    ///
    /// An I/O error while reading a chunk aborts `open` rather than quarantining a chunk that may be
    /// fine; the error names the cause.
    pub fn open(storage: S, cfg: SpoolConfig) -> Result<(Self, RecoveryReport), SpoolError> {
        if cfg.max_chunks == 0 || cfg.max_bytes == 0 {
            return Err(SpoolError::InvalidConfig(
                "max_chunks and max_bytes must be at least 1".into(),
            ));
        }
        if cfg.max_payload_len_queued > MAX_STORED_PAYLOAD_LEN {
            return Err(SpoolError::InvalidConfig(format!(
                "max_payload_len_queued is {}; the chunk format holds at most {MAX_STORED_PAYLOAD_LEN}",
                cfg.max_payload_len_queued
            )));
        }
        let sealer = cfg.key.as_ref().map(Sealer::new);
        let mut spool = Spool {
            storage,
            max_bytes: cfg.max_bytes,
            max_chunks: cfg.max_chunks,
            policy: cfg.policy,
            trim_on_open: cfg.trim_on_open,
            max_payload_len_queued: cfg.max_payload_len_queued,
            sealer,
            index: BTreeMap::new(),
            bytes: 0,
            quarantine: Quarantine::new(cfg.quarantine_max_bytes, cfg.quarantine_max_chunks),
            next_seq: 0,
            stats: SpoolStats::default(),
            dests: Vec::new(),
            hdr: Vec::with_capacity(MAX_HEADER_LEN + CRC_LEN),
        };
        let report = spool.recover()?;
        Ok((spool, report))
    }

    fn recover(&mut self) -> Result<RecoveryReport, SpoolError> {
        let mut report = RecoveryReport::default();
        let mut max_seq: Option<u64> = None;
        self.recover_quarantine(&mut report, &mut max_seq)?;

        let mut names = Vec::new();
        self.storage.list(Area::Pending, &mut names)?;
        let mut seqs = Vec::new();
        let mut dirty = false;
        for name in &names {
            let Some((seq, kind)) = parse_name(name) else {
                continue;
            };
            max_seq = max_seq.max(Some(seq));
            match kind {
                Kind::Chunk => seqs.push(seq),
                Kind::Tmp => {
                    if repaired(
                        &mut self.stats.io_errors,
                        self.storage.remove(Area::Pending, name),
                    )? {
                        report.removed_partial += 1;
                        dirty = true;
                    }
                }
                Kind::Msg => {}
            }
        }
        drop(names);
        seqs.sort_unstable();

        let mut scratch = vec![0u8; VERIFY_SCRATCH_LEN];
        for seq in seqs {
            match self.verify(seq, &mut scratch) {
                Ok(d) => self.insert(seq, &d),
                Err(Check::Corrupt(_why)) => {
                    // Not indexed either way; on a read-only filesystem it stays where it is.
                    let name = Name::new(seq, Kind::Chunk);
                    let len = self
                        .storage
                        .file_len(Area::Pending, name.as_str())
                        .unwrap_or(0);
                    let moved = self.move_to_quarantine(
                        seq,
                        len,
                        Area::Corrupt,
                        None,
                        &mut report.quarantine_dropped,
                    );
                    repaired(&mut self.stats.io_errors, moved)?;
                    report.corrupt += 1;
                    self.stats.corrupt_chunks += 1;
                }
                Err(Check::Locked(len)) => {
                    // Untouched and unindexed; its number stays reserved (max_seq above).
                    report.locked += 1;
                    report.locked_bytes += len;
                    self.stats.locked_chunks += 1;
                    self.stats.locked_bytes += len;
                }
                Err(Check::Newer(len)) => {
                    // Same: newer firmware may still send it after an upgrade.
                    report.newer += 1;
                    report.newer_bytes += len;
                    self.stats.newer_chunks += 1;
                    self.stats.newer_bytes += len;
                }
                Err(Check::Io(e)) => return Err(e.into()),
            }
        }
        drop(scratch);
        if dirty {
            repaired(
                &mut self.stats.io_errors,
                self.storage.sync_area(Area::Pending),
            )?;
        }

        if self.trim_on_open {
            let mut freed = false;
            while self.index.len() > self.max_chunks as usize || self.bytes > self.max_bytes {
                let seq = *self
                    .index
                    .keys()
                    .next()
                    .expect("over limit means non-empty");
                if !repaired(
                    &mut self.stats.io_errors,
                    self.storage
                        .remove(Area::Pending, Name::new(seq, Kind::Chunk).as_str()),
                )? {
                    break; // read-only: keep serving what is there
                }
                let info = self.forget(seq).expect("key from the index");
                self.count_drop(&mut report.dropped, &info);
                freed = true;
            }
            if freed {
                repaired(
                    &mut self.stats.io_errors,
                    self.storage.sync_area(Area::Pending),
                )?;
            }
        }

        self.next_seq = max_seq.map_or(0, |s| s + 1);
        report.over_limit = self.over_limit();
        report.chunks = self.index.len() as u32;
        report.bytes = self.bytes;
        report.quarantine_chunks = self.quarantine.chunks();
        report.quarantine_bytes = self.quarantine.bytes();
        Ok(report)
    }

    /// Reads the header of a pending chunk into `self.hdr` and checks it against the file size
    /// and the key.
    fn read_header(&mut self, seq: u64) -> Result<(Decoded, u64), Check> {
        let (d, len) = self.load_header(Area::Pending, seq)?;
        self.check_key(&d, len)?;
        Ok((d, len))
    }

    /// Whether the configured key (or its absence) opens a chunk.
    fn check_key(&self, d: &Decoded, len: u64) -> Result<(), Check> {
        match (&self.sealer, &d.seal) {
            (None, None) => Ok(()),
            (Some(s), Some(seal)) if s.key_id() == seal.key_id => Ok(()),
            // Sealed under another key, sealed without a key configured, or in clear with a key
            // configured: the header is authentic (its CRC held), so this is a configuration
            // mismatch, not damage.
            _ => Err(Check::Locked(len)),
        }
    }

    /// Reads the header of chunk `seq` of `area` into `self.hdr` and checks it against the file
    /// size (not against the key).
    fn load_header(&mut self, area: Area, seq: u64) -> Result<(Decoded, u64), Check> {
        let name = Name::new(seq, Kind::Chunk);
        let len = self.storage.file_len(area, name.as_str())?;
        let mut prefix = [0u8; 8];
        if self.storage.read_at(area, name.as_str(), 0, &mut prefix)? < prefix.len() {
            return Err(Check::Corrupt(format!("file is only {len} bytes")));
        }
        let hlen =
            format::header_len_from_prefix(&prefix).map_err(|b| Check::bad_header(b, len))?;
        self.hdr.clear();
        self.hdr.resize(hlen + CRC_LEN, 0);
        if self
            .storage
            .read_at(area, name.as_str(), 0, &mut self.hdr)?
            < self.hdr.len()
        {
            return Err(Check::Corrupt("truncated inside the header".into()));
        }
        let d = format::decode_header(&self.hdr).map_err(|b| Check::bad_header(b, len))?;
        if d.file_len() != len {
            return Err(Check::Corrupt(format!(
                "file is {len} bytes but its header describes {} (torn write)",
                d.file_len()
            )));
        }
        Ok((d, len))
    }

    /// Streams a whole pending chunk file through its checksum.
    fn verify(&mut self, seq: u64, scratch: &mut [u8]) -> Result<Decoded, Check> {
        let (d, len) = self.read_header(seq)?;
        self.verify_body(Area::Pending, seq, len, scratch)?;
        Ok(d)
    }

    /// Streams the rest of a chunk file whose header is in `self.hdr` through its checksum.
    fn verify_body(
        &mut self,
        area: Area,
        seq: u64,
        len: u64,
        scratch: &mut [u8],
    ) -> Result<(), Check> {
        let name = Name::new(seq, Kind::Chunk);
        let mut crc = Crc32::new();
        crc.update(&self.hdr);
        let mut at = self.hdr.len() as u64;
        let body_end = len - CRC_LEN as u64;
        while at < body_end {
            let want = scratch.len().min((body_end - at) as usize);
            let got = self
                .storage
                .read_at(area, name.as_str(), at, &mut scratch[..want])?;
            if got < want {
                return Err(Check::Corrupt("file shrank while being verified".into()));
            }
            crc.update(&scratch[..want]);
            at += want as u64;
        }
        let mut trailer = [0u8; CRC_LEN];
        if self
            .storage
            .read_at(area, name.as_str(), body_end, &mut trailer)?
            < CRC_LEN
        {
            return Err(Check::Corrupt("missing trailing checksum".into()));
        }
        if u32::from_le_bytes(trailer) != crc.finish() {
            return Err(Check::Corrupt("checksum mismatch".into()));
        }
        Ok(())
    }

    fn intern(&mut self, dest: &DestKey) -> Arc<DestKey> {
        if let Some(d) = self.dests.iter().find(|d| ***d == *dest) {
            return d.clone();
        }
        // Forget destinations no pending chunk uses any more, so the table stays bounded too.
        self.dests.retain(|d| Arc::strong_count(d) > 1);
        let d = Arc::new(dest.clone());
        self.dests.push(d.clone());
        d
    }

    fn insert(&mut self, seq: u64, d: &Decoded) {
        let dest = self.intern(&d.header.dest);
        let info = ChunkInfo {
            chunk_id: d.header.chunk_id,
            dest,
            created_unix_ms: d.header.created_unix_ms,
            raw_len: d.header.raw_len,
            records: d.header.records,
            payload_len: d.payload_len(),
            file_len: d.file_len(),
            gzip: d.header.gzip,
            sink: d.header.sink,
        };
        self.bytes += info.file_len;
        self.index.insert(seq, info);
    }

    fn forget(&mut self, seq: u64) -> Option<ChunkInfo> {
        let info = self.index.remove(&seq)?;
        self.bytes -= info.file_len;
        Some(info)
    }

    /// Whether the pending chunks exceed the limits (only possible after an open with lowered
    /// limits and no `trim_on_open`, or a trim stopped by a read-only filesystem).
    fn over_limit(&self) -> bool {
        self.index.len() > self.max_chunks as usize || self.bytes > self.max_bytes
    }

    fn count_drop(&mut self, dropped: &mut Dropped, info: &ChunkInfo) {
        dropped.chunks += 1;
        dropped.records += info.records as u64;
        dropped.bytes += info.file_len;
        self.stats.dropped_chunks += 1;
        self.stats.dropped_records += info.records as u64;
        self.stats.dropped_bytes += info.file_len;
    }

    /// Stores a chunk durably: returns `Ok` only after the file and its directory entry are
    /// fsynced, so the chunk survives any later power cut. Applies the capacity policy first:
    /// with [`FullPolicy::DropOldest`] the returned [`Dropped`] says what was deleted to make room;
    /// with [`FullPolicy::RejectNew`] a chunk that does not fit gets [`SpoolError::Full`] and nothing
    /// changes. While the spool is over its limits (a backlog recovered under lowered limits),
    /// every push gets [`SpoolError::Full`] whatever the policy: the backlog is never deleted to
    /// make room. On any error the new chunk is not stored and earlier chunks are intact (chunks
    /// already dropped to make room stay dropped and are counted in [`SpoolStats`]).
    pub fn push(&mut self, header: &ChunkHeader, payload: &[u8]) -> Result<Dropped, SpoolError> {
        self.push_with(header, payload, &mut |_| {})
    }

    /// [`Spool::push`], telling `on_drop` about each chunk deleted to make room (its destination, id and
    /// counts), as it goes, so that every lost chunk can be reported on its own.
    pub fn push_with(
        &mut self,
        header: &ChunkHeader,
        payload: &[u8],
        on_drop: &mut dyn FnMut(&ChunkInfo),
    ) -> Result<Dropped, SpoolError> {
        if let Some(e) = self.size_error(header, payload.len()) {
            return Err(e);
        }
        let seal = match &self.sealer {
            Some(s) => Some(s.new_sealing().map_err(|()| SpoolError::Crypto)?),
            None => None,
        };
        let stored_len = (payload.len() + if seal.is_some() { TAG_LEN } else { 0 }) as u32;
        format::encode_header(header, stored_len, seal.as_ref(), &mut self.hdr)?;
        let file_len = format::file_len(self.hdr.len() - CRC_LEN, stored_len);
        if file_len > self.max_bytes {
            return Err(SpoolError::TooLarge {
                len: file_len,
                max: self.max_bytes,
            });
        }

        if self.over_limit() {
            // A backlog recovered over lowered limits is kept whole: no policy may delete it to
            // make room, and nothing new is added until it drains under the limits.
            self.stats.rejected_chunks += 1;
            self.stats.rejected_records += header.records as u64;
            return Err(SpoolError::Full);
        }

        // How many of the oldest chunks must go for this one to fit.
        let mut victims = 0usize;
        let mut freed = 0u64;
        let mut count = self.index.len();
        let mut oldest = self.index.values();
        while count + 1 > self.max_chunks as usize || self.bytes - freed + file_len > self.max_bytes
        {
            let info = oldest
                .next()
                .expect("file_len <= max_bytes, so emptying the spool makes room");
            victims += 1;
            freed += info.file_len;
            count -= 1;
        }
        if victims > 0 && self.policy == FullPolicy::RejectNew {
            self.stats.rejected_chunks += 1;
            self.stats.rejected_records += header.records as u64;
            return Err(SpoolError::Full);
        }

        let mut sealed: Vec<u8> = Vec::new();
        let mut tag = [0u8; TAG_LEN];
        let body: &[u8] = match (&self.sealer, &seal) {
            (Some(sealer), Some(s)) => {
                sealed
                    .try_reserve_exact(payload.len())
                    .map_err(|_| SpoolError::OutOfMemory)?;
                sealed.extend_from_slice(payload);
                let aad_len = self.hdr.len() - CRC_LEN;
                tag = sealer
                    .seal(s, &self.hdr[..aad_len], &mut sealed)
                    .map_err(|()| SpoolError::Crypto)?;
                &sealed
            }
            _ => payload,
        };
        let tag: &[u8] = if seal.is_some() { &tag } else { &[] };
        let mut crc = Crc32::new();
        crc.update(&self.hdr);
        crc.update(body);
        crc.update(tag);
        let trailer = crc.finish().to_le_bytes();

        let seq = self.next_seq;
        self.next_seq += 1;
        let tmp = Name::new(seq, Kind::Tmp);
        let fin = Name::new(seq, Kind::Chunk);
        if let Err(e) = self.storage.write_file(
            Area::Pending,
            tmp.as_str(),
            &[&self.hdr, body, tag, &trailer],
        ) {
            self.stats.io_errors += 1;
            // Best effort: a leftover .tmp is also deleted by the next open.
            let _ = self.storage.remove(Area::Pending, tmp.as_str());
            return Err(e.into());
        }
        drop(sealed);

        let mut dropped = Dropped::default();
        for _ in 0..victims {
            let old = *self
                .index
                .keys()
                .next()
                .expect("victims counted from the index");
            if let Err(e) = self
                .storage
                .remove(Area::Pending, Name::new(old, Kind::Chunk).as_str())
            {
                if e.kind() != io::ErrorKind::NotFound {
                    self.stats.io_errors += 1;
                    let _ = self.storage.remove(Area::Pending, tmp.as_str());
                    return Err(e.into());
                }
            }
            let info = self.forget(old).expect("key from the index");
            self.count_drop(&mut dropped, &info);
            on_drop(&info);
        }

        if let Err(e) = self
            .storage
            .rename((Area::Pending, tmp.as_str()), (Area::Pending, fin.as_str()))
        {
            self.stats.io_errors += 1;
            let _ = self.storage.remove(Area::Pending, tmp.as_str());
            return Err(e.into());
        }
        let d = Decoded {
            header: header.clone(),
            stored_len,
            seal,
            header_len: self.hdr.len() - CRC_LEN,
        };
        if let Err(e) = self.storage.sync_area(Area::Pending) {
            self.stats.io_errors += 1;
            // Not durable: undo so the caller's view (not stored) matches the directory. If even
            // that fails the chunk exists, so it stays indexed and may be sent (at least once).
            if self.storage.remove(Area::Pending, fin.as_str()).is_err() {
                self.insert(seq, &d);
            }
            return Err(e.into());
        }
        self.insert(seq, &d);
        self.stats.pushed_chunks += 1;
        Ok(dropped)
    }

    /// The bounds of the chunk's sink that it exceeds, if any.
    fn size_error(&self, header: &ChunkHeader, payload_len: usize) -> Option<SpoolError> {
        if header.sink == SinkId::Streaming && header.raw_len > MAX_RAW_LEN {
            return Some(SpoolError::TooLarge {
                len: header.raw_len as u64,
                max: MAX_RAW_LEN as u64,
            });
        }
        let max = self.max_payload_len_for(header.sink);
        (payload_len > max).then_some(SpoolError::TooLarge {
            len: payload_len as u64,
            max: max as u64,
        })
    }

    /// Sequence number of the newest pending chunk (the one pushed last), in O(log n).
    pub fn newest(&self) -> Option<u64> {
        self.index.keys().next_back().copied()
    }

    /// Sequence number of the oldest pending chunk, of `dest` if given: the next one to send.
    pub fn oldest(&self, dest: Option<&DestKey>) -> Option<u64> {
        match dest {
            None => self.index.keys().next().copied(),
            Some(d) => self
                .index
                .iter()
                .find(|(_, i)| *i.dest == *d)
                .map(|(s, _)| *s),
        }
    }

    /// Pending chunks, oldest first.
    pub fn pending(&self) -> impl Iterator<Item = (u64, &ChunkInfo)> + '_ {
        self.index.iter().map(|(s, i)| (*s, i))
    }

    /// What the index knows about one pending chunk.
    pub fn info(&self, seq: u64) -> Option<&ChunkInfo> {
        self.index.get(&seq)
    }

    /// Number of pending chunks.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// Whether nothing is pending.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// The largest payload `read` can return for a streaming chunk: size the read buffer with it
    /// once.
    pub const fn max_payload_len() -> usize {
        MAX_PAYLOAD_LEN
    }

    /// The largest payload `push` accepts for `sink` (for queued chunks, as configured).
    pub fn max_payload_len_for(&self, sink: SinkId) -> usize {
        match sink {
            SinkId::Streaming => MAX_PAYLOAD_LEN,
            SinkId::Queued => self.max_payload_len_queued,
        }
    }

    /// Reads a chunk's payload into `out` (which must hold [`ChunkInfo::payload_len`] bytes;
    /// [`MAX_PAYLOAD_LEN`] always does) and returns its header and the payload length.
    /// The checksum (and, when sealed, the authentication tag) is verified; sealed payloads are
    /// decrypted in place in `out`, so no payload-sized buffer is allocated. A chunk that fails is
    /// moved to `corrupt/`, counted, forgotten, and reported as [`SpoolError::Corrupt`]; the
    /// caller then moves on to the next `oldest()`. I/O errors leave the chunk pending.
    pub fn read(&mut self, seq: u64, out: &mut [u8]) -> Result<(ChunkHeader, usize), SpoolError> {
        let Some(info) = self.index.get(&seq) else {
            return Err(SpoolError::NotFound(seq));
        };
        let plen = info.payload_len as usize;
        if out.len() < plen {
            return Err(SpoolError::BufferTooSmall { needed: plen });
        }
        match self.read_checked(seq, &mut out[..plen]) {
            Ok(h) => Ok((h, plen)),
            Err(Check::Corrupt(why)) => {
                out[..plen].fill(0);
                Err(self.quarantine_corrupt(seq, why))
            }
            Err(Check::Locked(_) | Check::Newer(_)) => {
                // It was indexed under this key and version, so it changed on flash: damage.
                out[..plen].fill(0);
                Err(self.quarantine_corrupt(seq, "key changed since it was indexed".into()))
            }
            Err(Check::Io(e)) if e.kind() == io::ErrorKind::NotFound => {
                // Deleted behind our back: nothing left to send.
                self.forget(seq);
                Err(SpoolError::NotFound(seq))
            }
            Err(Check::Io(e)) => Err(e.into()),
        }
    }

    fn read_checked(&mut self, seq: u64, out: &mut [u8]) -> Result<ChunkHeader, Check> {
        let (d, _) = self.read_header(seq)?;
        let expected_id = self.index.get(&seq).map(|i| i.chunk_id);
        if d.payload_len() as usize != out.len() || Some(d.header.chunk_id) != expected_id {
            return Err(Check::Corrupt("file changed since it was indexed".into()));
        }
        let name = Name::new(seq, Kind::Chunk);
        let at = d.payload_offset();
        if self
            .storage
            .read_at(Area::Pending, name.as_str(), at, out)?
            < out.len()
        {
            return Err(Check::Corrupt("truncated payload".into()));
        }
        let tag_len = if d.seal.is_some() { TAG_LEN } else { 0 };
        let mut tail = [0u8; TAG_LEN + CRC_LEN];
        let tail = &mut tail[..tag_len + CRC_LEN];
        if self
            .storage
            .read_at(Area::Pending, name.as_str(), at + out.len() as u64, tail)?
            < tail.len()
        {
            return Err(Check::Corrupt("truncated trailer".into()));
        }
        let (tag, trailer) = tail.split_at(tag_len);
        let mut crc = Crc32::new();
        crc.update(&self.hdr);
        crc.update(out);
        crc.update(tag);
        if u32::from_le_bytes([trailer[0], trailer[1], trailer[2], trailer[3]]) != crc.finish() {
            return Err(Check::Corrupt("checksum mismatch".into()));
        }
        if let (Some(sealer), Some(s)) = (&self.sealer, &d.seal) {
            let mut t = [0u8; TAG_LEN];
            t.copy_from_slice(tag);
            sealer
                .open(s, &self.hdr[..d.header_len], t, out)
                .map_err(|()| {
                    Check::Corrupt("authentication failed: tampered or wrong key".into())
                })?;
        }
        Ok(d.header)
    }

    /// Moves a failed chunk to `corrupt/` (within the quarantine limits) and forgets it. Even if
    /// the move fails the chunk is forgotten (it must not be sent); the next `open` verifies it
    /// again and moves it then.
    fn quarantine_corrupt(&mut self, seq: u64, why: String) -> SpoolError {
        let name = Name::new(seq, Kind::Chunk);
        let len = match self.storage.file_len(Area::Pending, name.as_str()) {
            Ok(n) => n,
            Err(_) => self.index.get(&seq).map_or(0, |i| i.file_len),
        };
        let mut dropped = QuarantineDropped::default();
        let moved = self.move_to_quarantine(seq, len, Area::Corrupt, None, &mut dropped);
        self.forget(seq);
        self.stats.corrupt_chunks += 1;
        if moved.is_err() {
            self.stats.io_errors += 1;
        }
        let trim = if dropped.incoming {
            "; it alone exceeds the quarantine limit, so it was deleted instead".to_owned()
        } else if dropped.chunks > 0 {
            format!(
                "; the {} oldest quarantined chunks ({} bytes) were deleted to stay within the quarantine limit",
                dropped.chunks, dropped.bytes
            )
        } else {
            String::new()
        };
        match moved {
            Ok(()) if dropped.incoming => {
                SpoolError::Corrupt(format!("chunk {}: {why}{trim}", name.as_str()))
            }
            Ok(()) => SpoolError::Corrupt(format!(
                "chunk {}: {why}; moved to corrupt/{trim}",
                name.as_str()
            )),
            Err(e) => SpoolError::Corrupt(format!(
                "chunk {}: {why}; moving it to corrupt/ failed ({e}), it will be moved on the next open{trim}",
                name.as_str()
            )),
        }
    }

    /// Deletes a chunk the service acknowledged. Durable on `Ok` (the directory is fsynced, so the
    /// chunk is not sent again after a reboot).
    ///
    /// The chunk is forgotten from the index on every outcome, errors included: it was delivered,
    /// and keeping it would make the caller resend it in a loop on a flash that refuses unlinks
    /// (read-only, EACCES, EIO). If the unlink or the directory fsync failed, the error is still
    /// returned (and counted in [`SpoolStats::io_errors`]) so the caller can report it; the file
    /// may then come back after a restart and be sent once more (at most one duplicate).
    pub fn remove(&mut self, seq: u64) -> Result<(), SpoolError> {
        if !self.index.contains_key(&seq) {
            return Err(SpoolError::NotFound(seq));
        }
        let name = Name::new(seq, Kind::Chunk);
        let result = match self.storage.remove(Area::Pending, name.as_str()) {
            Ok(()) => self.storage.sync_area(Area::Pending),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        };
        self.forget(seq);
        self.stats.removed_chunks += 1;
        result.map_err(|e| {
            self.stats.io_errors += 1;
            e.into()
        })
    }

    /// Moves a chunk the service refused permanently (bad data, wrong mapping) to `rejected/`,
    /// with `message` (the service's error, cut to [`MAX_REJECT_MESSAGE_LEN`] bytes) in a `.msg`
    /// file beside it, so an operator can fix the cause and replay it
    /// ([`Spool::requeue_rejected`]). It is never returned by `oldest`/`pending` again. The
    /// message is best effort: if it cannot be written (no space), the chunk is still moved.
    ///
    /// The quarantine is bounded: the returned [`QuarantineDropped`] says which of the oldest
    /// quarantined chunks were deleted to make room, or that this one was deleted instead (it
    /// alone exceeds [`SpoolConfig::quarantine_max_bytes`]).
    ///
    /// The chunk is forgotten on every outcome: if the move itself (or a directory fsync) fails,
    /// the error is returned and counted in [`SpoolStats::io_errors`], but the chunk is not sent
    /// again as is in this run (after a restart it may be pending again and be retried once).
    pub fn reject(&mut self, seq: u64, message: &str) -> Result<QuarantineDropped, SpoolError> {
        let Some((records, len)) = self.index.get(&seq).map(|i| (i.records, i.file_len)) else {
            return Err(SpoolError::NotFound(seq));
        };
        let mut cut = message.len().min(MAX_REJECT_MESSAGE_LEN);
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        let mut dropped = QuarantineDropped::default();
        let result = self.move_to_quarantine(
            seq,
            len,
            Area::Rejected,
            Some(&message.as_bytes()[..cut]),
            &mut dropped,
        );
        self.forget(seq);
        self.stats.service_rejected_chunks += 1;
        self.stats.service_rejected_records += records as u64;
        match result {
            Ok(()) => Ok(dropped),
            Err(e) => {
                self.stats.io_errors += 1;
                Err(e.into())
            }
        }
    }

    /// Fill level and counters since `open`.
    pub fn stats(&self) -> SpoolStats {
        SpoolStats {
            chunks: self.index.len() as u32,
            bytes: self.bytes,
            quarantine_chunks: self.quarantine.chunks(),
            quarantine_bytes: self.quarantine.bytes(),
            ..self.stats
        }
    }

    /// The storage, for inspection.
    pub fn storage(&self) -> &S {
        &self.storage
    }

    /// Closes the spool and gives the storage back (everything is already durable; closing does
    /// no I/O).
    pub fn into_storage(self) -> S {
        self.storage
    }
}
