//! What the caller hears about each chunk: delivery reports and log lines, through the callbacks it gave.

use std::sync::Arc;

use crate::config::LogLevel;
use crate::error::ErrorKind;
use crate::spool::Storage;

/// What happened to one chunk, as passed to the delivery callback. Every chunk gets exactly one final report
/// (`Acknowledged`, `Rejected`, `Dropped` or `Ingested`; see [`Outcome::is_final`]) and any number of intermediate ones
/// (`Failed`, `Spooled`, `Queued`) before it; in queued mode `Queued` may be the last report a chunk gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Outcome {
    /// The service answered 200.
    Acknowledged = 0,
    /// The service refused the data permanently: dropped, or moved to the spool's `rejected/`.
    Rejected = 1,
    /// Sending failed for now; the chunk is kept in RAM and retried.
    Failed = 2,
    /// Sending failed or was not tried (backing off); the chunk is durable in the spool and will be replayed.
    Spooled = 3,
    /// The spool was full and dropped this chunk (policy drop-oldest).
    Dropped = 4,
    /// Queued ingestion: the blob is uploaded and the DM's queue has the message; the DM ingests it later.
    /// Intermediate: a later `Rejected` (the DM's failure report) may follow once status tracking reads the
    /// reports. With `queued.report` = `none` nothing follows: it is the chunk's last report. The chunk has left
    /// RAM and the spool.
    Queued = 5,
    /// Queued ingestion with `queued.report` = `all`: the DM reports the chunk ingested (final).
    Ingested = 6,
}

impl Outcome {
    /// Whether this is the chunk's last report.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            Outcome::Acknowledged | Outcome::Rejected | Outcome::Dropped | Outcome::Ingested
        )
    }
}

/// One delivery report: what happened to a chunk.
#[derive(Debug)]
pub struct DeliveryReport<'a> {
    /// Destination id; `u32::MAX` for a spooled chunk of a destination not added in this run.
    pub destination: u32,
    /// The chunk's stable id (UUID text).
    pub chunk_id: &'a str,
    /// Records in the chunk.
    pub records: u64,
    /// Raw bytes.
    pub raw_bytes: u64,
    /// Bytes on the wire.
    pub wire_bytes: u64,
    /// What happened.
    pub outcome: Outcome,
    /// The chunk's last report (`outcome.is_final()`).
    pub is_final: bool,
    /// The error class for outcomes other than `Acknowledged`.
    pub error: Option<ErrorKind>,
    /// HTTP status of the last answer for this chunk, 0 when there was none (network failure, not tried).
    pub http_status: u16,
    /// The service's or our message.
    pub message: &'a str,
    /// The report is the DM's word on a chunk queued earlier (its notification or status row), not the answer to
    /// a send.
    pub from_dm: bool,
}

/// Log sink: level and a line of text that never contains a secret.
pub type LogFn = Arc<dyn Fn(LogLevel, &str) + Send + Sync>;
/// Delivery report sink.
pub type DeliveryFn = Arc<dyn Fn(&DeliveryReport<'_>) + Send + Sync>;
/// Where the spool keeps its files: a directory by default, anything that keeps POSIX promises in tests.
pub type SpoolStorage = Box<dyn Storage + Send>;
