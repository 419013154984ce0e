//! Sinks: one ingestion protocol each. The client core (lanes, chunks, the spool, outcomes, retries and backoff)
//! hands a sink a compressed chunk and gets back what the service said, classified; it never builds a request
//! itself. Streaming ingestion ([`streaming::StreamingSink`]) is the first sink. A queued sink (blob upload plus
//! queue message) plugs in the same way: it keeps its own resource cache and identity token inside, maps its own
//! answers onto [`Failure`] classes, and says `Queued` instead of `Acknowledged` when the service took the chunk
//! for later ingestion; nothing in lanes, the spool or the outcome table changes for it.

pub mod managed;
pub mod queued;
pub mod streaming;

use std::time::Instant;

use crate::clock::Clock;
use crate::error::Error;
use crate::response::Failure;
use crate::spool::DestKey;
use crate::wire::Format;

pub use crate::spool::SinkId;

/// What a sink keeps for one destination (database, table, format, mapping): built once, when the core first
/// sends there.
#[derive(Debug)]
pub struct SinkTarget {
    /// Where requests go (for streaming: the ingest URL with its query).
    pub url: String,
    /// `database.table`, for messages.
    pub label: String,
    /// The data format.
    pub format: Format,
    /// The destination itself (a queued message names database, table and mapping).
    pub dest: DestKey,
}

/// One chunk to send, as the core hands it over.
pub struct ChunkRef<'a> {
    /// The chunk's stable id as text (also its source id and request id stem).
    pub id: &'a str,
    /// Requests made for this chunk so far, across calls: makes each request id unique.
    pub attempt: u32,
    /// Records in the chunk.
    pub records: u64,
    /// Raw (uncompressed) bytes.
    pub raw_len: u64,
    /// The payload is gzip (else the format is binary and goes as it is).
    pub gzip: bool,
    /// The request body.
    pub payload: &'a [u8],
}

/// One block of a merged blob: a spooled chunk, as the core describes it.
pub struct BlockInfo<'a> {
    /// The chunk's id.
    pub id: &'a str,
    /// Records in it.
    pub records: u64,
    /// Raw bytes.
    pub raw_len: u64,
}

/// The chunks of one merged blob, read one at a time into the core's buffer (each payload a complete gzip
/// member: one after another they are one gzip stream).
pub trait Blocks {
    /// How many.
    fn count(&self) -> usize;
    /// Block `i`'s chunk.
    fn info(&self, i: usize) -> BlockInfo<'_>;
    /// Reads block `i`'s payload; valid until the next call.
    // A failure is a fixed-size value on purpose: handling one must not allocate.
    #[allow(clippy::result_large_err)]
    fn read(&mut self, i: usize) -> Result<&[u8], Failure>;
}

/// Buffers and bounds one send may use: nothing is allocated per request.
pub struct SendIo<'a> {
    /// Holds the answer's body (bounded).
    pub body: &'a mut [u8],
    /// Scratch for parsing the answer.
    pub scratch: &'a mut [u8],
    /// The client's clock (wall time for `Retry-After` dates).
    pub clock: &'a dyn Clock,
    /// The send must not start a request after this instant.
    pub deadline: Instant,
    /// When the caller bounded the whole call (`flush_timeout`): no request may run past this instant either.
    pub hard_deadline: Option<Instant>,
    /// Log sink of the client (warnings such as a token refresh after a 401).
    pub warn: &'a dyn Fn(&str),
}

/// What one send came to.
// A failure is a fixed-size value on purpose: handling one must not allocate.
#[allow(clippy::large_enum_variant)]
pub enum Attempt {
    /// The service took the chunk for good (streaming: HTTP 200).
    Acknowledged {
        /// HTTP status of the answer.
        status: u16,
        /// Records the service says it consumed, when it says.
        consumed: Option<u64>,
    },
    /// The service took the chunk for later ingestion (queued: the blob is up and the message posted). The data
    /// is safe with the service; whether it lands in the table is for the DM's report.
    Queued {
        /// HTTP status of the enqueue answer.
        status: u16,
    },
    /// Not taken, and why, classified.
    Failed(Failure),
}

/// The result of [`Sink::send`]: the attempt and the requests it took.
pub struct Sent {
    /// The answer.
    pub attempt: Attempt,
    /// HTTP requests made (a sink may retry once by itself, say with a fresh token after a 401).
    pub requests: u32,
}

/// The service's final word on a chunk a sink took earlier for later ingestion (queued ingestion's status
/// tracking).
pub struct StatusReport<'a> {
    /// The chunk's id.
    pub chunk_id: &'a str,
    /// Its destination.
    pub dest: &'a DestKey,
    /// Records in the chunk.
    pub records: u64,
    /// Raw bytes.
    pub raw_len: u64,
    /// `None`: ingested. Else why not: the DM's error code, details and failure status, classified (`Rejected`
    /// for a permanent failure, `Transient` for a transient or exhausted one).
    pub failure: Option<Failure>,
}

/// One ingestion protocol. Implementations are used from one thread at a time (the client's sender) but must be
/// `Send + Sync` because the client is.
pub trait Sink: Send + Sync {
    /// Which sink this is: recorded with every spooled chunk, so a replay goes back to the same protocol.
    fn id(&self) -> SinkId;
    /// The largest raw chunk this sink takes, in bytes.
    fn max_raw_len(&self) -> usize;
    /// Builds what the sink needs for one destination. Fails for a destination it can never serve.
    fn target(&self, key: &DestKey) -> Result<SinkTarget, Error>;
    /// One delivery attempt. Retries with backoff are the core's; a sink only repeats a request for a reason of
    /// its own protocol (a fresh token after a 401) and says how many it made.
    fn send(&self, target: &SinkTarget, chunk: &ChunkRef<'_>, io: &mut SendIo<'_>) -> Sent;
    /// Whether spooled chunks of `target` may go up together, as the blocks of one blob ([`Sink::send_merged`]).
    fn merges(&self, _target: &SinkTarget, _now: Instant) -> bool {
        false
    }
    /// One delivery attempt of several spooled chunks as one blob under `group_id` (the message's id); each
    /// chunk is reported on by its own id. Only called when [`Sink::merges`] says so.
    fn send_merged(
        &self,
        _target: &SinkTarget,
        _group_id: &str,
        _attempt: u32,
        _blocks: &mut dyn Blocks,
        _io: &mut SendIo<'_>,
    ) -> Sent {
        Sent {
            attempt: Attempt::Failed(Failure::network("this sink does not merge chunks")),
            requests: 0,
        }
    }
    /// Whether a chunk taken for later ingestion stays in the spool until its final word (queued ingestion with
    /// `queued.report=all`), so that a transient failure of the ingestion can be sent again.
    fn holds_until_reported(&self) -> bool {
        false
    }
    /// Chunks taken for later ingestion whose final word is awaited.
    fn awaiting(&self) -> usize {
        0
    }
    /// Asks the service about chunks taken earlier (at most as often as the sink sees fit) and passes each final
    /// word to `report`. Returns the requests it made.
    fn poll_status(&self, _io: &mut SendIo<'_>, _report: &mut dyn FnMut(&StatusReport<'_>)) -> u32 {
        0
    }
}
