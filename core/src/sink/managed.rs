//! The managed client (`ingest.mode=managed`): streaming first, queued for what streaming cannot take, as the
//! SDKs' managed client does, plus a memory per table so that a table without streaming costs one refused
//! request, not one per chunk.
//!
//! | streaming answered | then |
//! |---|---|
//! | `StreamingIngestionPolicyNotEnabled`, `StreamingIngestionDisabledForCluster` | queued; the table goes queued for `managed.queued_for_ms` (default 15 minutes) |
//! | `..DatabaseUnderMaintenance` | queued; the table goes queued for a minute |
//! | 429 | queued; the table goes queued for 10 seconds |
//! | 413, `InputStreamTooLarge` | queued, this chunk only |
//! | a transient failure on the third streaming request of a chunk or later | queued; the table goes queued for 10 seconds |
//! | anything else (bad format, wrong mapping, auth, a missing table) | as streaming said: queueing fixes none of them |
//!
//! A body over 4 MiB never tries streaming. The chunk id stays the source id in both: the queued message's `Id`
//! and blob name are the streaming request's chunk id.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::error::Error;
use crate::response::{Failure, FailureClass};
use crate::spool::DestKey;

use super::queued::QueuedSink;
use super::streaming::StreamingSink;
use super::{Attempt, Blocks, ChunkRef, SendIo, Sent, Sink, SinkId, SinkTarget, StatusReport};

/// Bodies over this go queued without a streaming try: the service refuses a streaming request over 4 MiB.
pub const STREAMING_MAX_BODY: usize = 4 * 1024 * 1024;
/// How long a table goes queued after a 429 or exhausted transient failures.
pub const AFTER_THROTTLING: Duration = Duration::from_secs(10);
/// How long a table goes queued while its database is under maintenance.
pub const AFTER_MAINTENANCE: Duration = Duration::from_secs(60);
/// Tables remembered at most (one per destination is the most there can be).
const MAX_REMEMBERED: usize = crate::config::MAX_DESTINATIONS;
/// Streaming requests of one chunk after which a transient failure falls back.
const STREAMING_TRIES: u32 = 3;

/// Whether a streaming failure goes queued, and for how long the table then stays queued (zero: this chunk
/// only). `streaming_requests`: the chunk's requests so far, the failed one included. `policy_off_for`: the
/// hold after "streaming is not enabled".
pub fn fallback(
    f: &Failure,
    streaming_requests: u32,
    policy_off_for: Duration,
) -> Option<Duration> {
    let code = f.code.as_str();
    let has = |s: &str| {
        code.as_bytes()
            .windows(s.len())
            .any(|w| w.eq_ignore_ascii_case(s.as_bytes()))
    };
    if has("StreamingIngestionPolicyNotEnabled") || has("StreamingIngestionDisabledForCluster") {
        return Some(policy_off_for);
    }
    if has("UnderMaintenance") {
        return Some(AFTER_MAINTENANCE);
    }
    if f.status == 413 || has("InputStreamTooLarge") || has("PayloadTooLarge") {
        return Some(Duration::ZERO);
    }
    if f.status == 429 {
        return Some(AFTER_THROTTLING);
    }
    if f.class == FailureClass::Transient && streaming_requests >= STREAMING_TRIES {
        return Some(AFTER_THROTTLING);
    }
    None
}

/// Streaming first, queued when streaming cannot take the chunk.
pub struct ManagedSink {
    streaming: StreamingSink,
    queued: QueuedSink,
    policy_off_for: Duration,
    /// `database.table` labels that go queued until the instant.
    queued_until: Mutex<Vec<(String, Instant)>>,
}

impl ManagedSink {
    /// Both sinks, and the hold after "streaming is not enabled" (`managed.queued_for_ms`).
    pub fn new(
        streaming: StreamingSink,
        queued: QueuedSink,
        policy_off_for: Duration,
    ) -> ManagedSink {
        ManagedSink {
            streaming: streaming.managed(),
            queued,
            policy_off_for,
            queued_until: Mutex::new(Vec::with_capacity(8)),
        }
    }

    fn held(&self, label: &str, now: Instant) -> bool {
        let mut h = self.queued_until.lock().unwrap_or_else(|p| p.into_inner());
        h.retain(|(_, until)| *until > now);
        h.iter().any(|(l, _)| l == label)
    }

    fn hold(&self, label: &str, until: Instant) {
        let mut h = self.queued_until.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = h.iter_mut().find(|(l, _)| l == label) {
            e.1 = e.1.max(until);
        } else if h.len() < MAX_REMEMBERED {
            h.push((label.to_owned(), until));
        }
    }
}

impl Sink for ManagedSink {
    fn id(&self) -> SinkId {
        // Spooled chunks are replayed through this same sink, streaming first.
        SinkId::Streaming
    }

    fn max_raw_len(&self) -> usize {
        self.streaming.max_raw_len()
    }

    fn target(&self, key: &DestKey) -> Result<SinkTarget, Error> {
        // The streaming target; the queued sink reads only its destination and format.
        self.streaming.target(key)
    }

    fn send(&self, target: &SinkTarget, chunk: &ChunkRef<'_>, io: &mut SendIo<'_>) -> Sent {
        let now = io.clock.now();
        if chunk.payload.len() > STREAMING_MAX_BODY || self.held(&target.label, now) {
            return self.queued.send(target, chunk, io);
        }
        let sent = self.streaming.send(target, chunk, io);
        let Attempt::Failed(f) = &sent.attempt else {
            return sent;
        };
        let Some(hold) = fallback(
            f,
            chunk.attempt.saturating_add(sent.requests),
            self.policy_off_for,
        ) else {
            return sent;
        };
        if !hold.is_zero() {
            self.hold(&target.label, now + hold);
        }
        (io.warn)(&format!(
            "{}: streaming refused ({}); this chunk goes queued{}",
            target.label,
            if f.code.is_empty() {
                f.message.as_str()
            } else {
                f.code.as_str()
            },
            if hold.is_zero() {
                String::new()
            } else {
                format!(", and the table's next {} s too", hold.as_secs())
            }
        ));
        let q = self.queued.send(target, chunk, io);
        Sent {
            attempt: q.attempt,
            requests: sent.requests.saturating_add(q.requests),
        }
    }

    /// A merged spool blob is for the queue only: merged when the table goes to the queue anyway (its streaming
    /// is off, or throttled, for a while).
    fn merges(&self, target: &SinkTarget, now: Instant) -> bool {
        self.held(&target.label, now)
    }

    fn send_merged(
        &self,
        target: &SinkTarget,
        group_id: &str,
        attempt: u32,
        blocks: &mut dyn Blocks,
        io: &mut SendIo<'_>,
    ) -> Sent {
        self.queued
            .send_merged(target, group_id, attempt, blocks, io)
    }

    fn holds_until_reported(&self) -> bool {
        self.queued.holds_until_reported()
    }

    fn awaiting(&self) -> usize {
        self.queued.awaiting()
    }

    fn poll_status(&self, io: &mut SendIo<'_>, report: &mut dyn FnMut(&StatusReport<'_>)) -> u32 {
        self.queued.poll_status(io, report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(status: u16, code: &str, class: FailureClass) -> Failure {
        let mut f = Failure::network("x");
        f.status = status;
        f.class = class;
        let _ = f.code.push_str(code);
        f
    }

    #[test]
    fn what_falls_back_to_queued_and_for_how_long() {
        use FailureClass::*;
        let off = Duration::from_secs(900);
        // (status, code, class, streaming requests so far) -> hold
        let table: &[(u16, &str, FailureClass, u32, Option<Duration>)] = &[
            (
                400,
                "BadRequest_StreamingIngestionPolicyNotEnabled",
                TargetNotReady,
                1,
                Some(off),
            ),
            (
                400,
                "StreamingIngestionDisabledForCluster",
                TargetNotReady,
                1,
                Some(off),
            ),
            (
                503,
                "ServiceUnavailable_StreamingIngestionDatabaseUnderMaintenance",
                Transient,
                1,
                Some(AFTER_MAINTENANCE),
            ),
            (413, "", Rejected, 1, Some(Duration::ZERO)),
            (
                400,
                "Stream_InputStreamTooLarge",
                Rejected,
                1,
                Some(Duration::ZERO),
            ),
            (429, "", Transient, 1, Some(AFTER_THROTTLING)),
            (503, "", Transient, 1, None),
            (503, "", Transient, 2, None),
            (503, "", Transient, 3, Some(AFTER_THROTTLING)),
            (0, "", Transient, 3, Some(AFTER_THROTTLING)),
            // Permanent data errors are not fixed by queueing.
            (400, "BadRequest_InvalidFormat", Rejected, 1, None),
            (
                400,
                "BadRequest_MappingReferenceWasNotFound",
                TargetNotReady,
                5,
                None,
            ),
            (404, "BadRequest_TableNotFound", TargetNotReady, 1, None),
            (401, "", Auth, 4, None),
        ];
        for &(status, code, class, n, want) in table {
            assert_eq!(
                fallback(&f(status, code, class), n, off),
                want,
                "{status} {code} {n}"
            );
        }
    }
}
