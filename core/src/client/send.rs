//! Sending fresh chunks: the sender takes a lane's chunks (sealed ones, then the filling batch when it is due),
//! with no lane lock held while it compresses, sends or writes flash, and settles each one. A refused chunk of
//! several records is sent in halves until only its refused records are rejected.

use std::time::Instant;

use crate::batch::{records_and_middle, Batch};
use crate::config::LogLevel;
use crate::error::{Error, ErrorKind};
use crate::response::{Failure, FailureClass};
use crate::sink::Attempt;
use crate::wire::{self, Format};

use super::engine::{describe, Chunk, Engine, FirstError};
use super::lane::{Lane, Lanes, Return, Taken};
use super::outcome::{Place, SendResult};
use super::Shared;

/// How many times a refused chunk is halved, at most, to find the refused records (2^20 records: more than a
/// 4 MiB batch can hold, so in practice every bad record is found).
const MAX_SPLIT_DEPTH: u32 = 20;

/// Requests one refused chunk may cost while its refused records are looked for. Past it, refused pieces are
/// rejected whole: a chunk whose every record is refused (a wrong mapping, say) costs this many requests, not
/// two per record.
const MAX_ISOLATION_SENDS: u32 = 64;

/// What the sender does with a lane's chunks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Sealed chunks and batches older than `batch.max_age_ms` (poll).
    Due,
    /// Everything buffered (flush).
    All,
    /// Everything buffered, to the spool without sending (flush_to_spool, free).
    ToSpool,
}

impl Engine {
    /// Works through one lane's chunks as `mode` says, until none is due or the deadline passes. Chunks that
    /// are not tried (backing off, out of time) go to the spool when there is one, else stay in the lane.
    pub fn service_lane(
        &mut self,
        sh: &Shared,
        lanes: &Lanes,
        lane: &Lane,
        mode: Mode,
        deadline: Instant,
        errs: &mut FirstError,
    ) {
        let target = match self.lane_target(sh, lanes, lane) {
            Ok(t) => t,
            Err(e) => return errs.note(e),
        };
        let force = mode != Mode::Due;
        // Each chunk of the lane is looked at once per call: one kept in RAM goes back to the head of the lane.
        let mut budget = sh.cfg.batch_sealed + 1;
        while budget > 0 {
            budget -= 1;
            let now = sh.clock.now();
            let not_now =
                mode == Mode::ToSpool || self.targets[target].backing_off(now) || now >= deadline;
            if not_now && !self.spool_writable(now) {
                // For poll this is the normal state of a destination that backs off: next_ms says when.
                if mode != Mode::Due && lane.due_at(now, sh.cfg.batch_max_age).is_some() {
                    let e = if mode == Mode::ToSpool {
                        Error::new(
                            ErrorKind::SpoolIo,
                            format!(
                                "{}.{}: the spool is not writable now (after a failed write); the batch stays in RAM",
                                lane.key.database, lane.key.table
                            ),
                        )
                    } else {
                        not_tried_error(self, target, now, lane)
                    };
                    errs.note(e);
                }
                return;
            }
            let Some(mut batch) = lane.take(now, sh.cfg.batch_max_age, force) else {
                return;
            };
            let gzip = !lane.format.is_binary();
            let chunk = match self.seal(sh, &mut batch, gzip) {
                Ok(c) => c,
                Err(e) => {
                    batch.give_back(Return::Keep);
                    return errs.note(e);
                }
            };
            if not_now {
                self.settle(
                    sh,
                    target,
                    chunk,
                    Place::Ram,
                    SendResult::NotTried,
                    None,
                    Some(batch),
                    errs,
                );
                continue;
            }
            self.send_fresh(sh, lane, target, batch, chunk, deadline, errs);
        }
    }

    /// Sends one chunk taken from a lane (its payload in `wire`), writing it ahead to the spool first when
    /// configured, and settles it. A chunk written ahead keeps its RAM copy until the first answer, so that a
    /// refusal can still be split into its good and bad records.
    #[allow(clippy::too_many_arguments)]
    fn send_fresh(
        &mut self,
        sh: &Shared,
        lane: &Lane,
        target: usize,
        mut batch: Taken<'_>,
        mut chunk: Chunk,
        deadline: Instant,
        errs: &mut FirstError,
    ) {
        let mut place = Place::Ram;
        if sh.cfg.spool_write_ahead && self.spool_writable(sh.clock.now()) {
            match self.push(sh, target, &chunk) {
                Ok(seq) => {
                    chunk.seq = Some(seq);
                    place = Place::SpoolNew;
                }
                Err(e) => errs.note(e),
            }
        }
        let (sent, attempts) = self.deliver(
            sh,
            target,
            &chunk,
            batch.attempts,
            sh.cfg.retry_max_attempts,
            deadline,
        );
        batch.attempts = attempts;
        let (result, failure) = SendResult::of(sent);
        if let (SendResult::Rejected, Some(f)) = (result, failure.as_ref()) {
            if batch.records() > 1 && boundaries_match(lane.format, &batch) {
                // Split from RAM; the copy written ahead goes (its records are settled piece by piece).
                if let (Some(seq), Some(sp)) = (chunk.seq, self.spool.as_mut()) {
                    if let Err(e) = sp.remove(seq) {
                        let msg = format!("a refused chunk written ahead could not be removed from the spool: {e}; it may be sent once more after a restart");
                        sh.log(LogLevel::Error, &msg);
                        self.spool_fault.get_or_insert(msg);
                    }
                    self.sync_spool_stats(sh);
                }
                return self.isolate_rejected(sh, lane, target, batch, f, deadline, errs);
            }
        }
        let held = if place == Place::SpoolNew {
            // Durable already: the lane's buffer is free whatever the answer.
            sh.records_settled
                .fetch_add(batch.records(), std::sync::atomic::Ordering::Release);
            batch.give_back(Return::Free);
            None
        } else {
            Some(batch)
        };
        self.settle(
            sh,
            target,
            chunk,
            place,
            result,
            failure.as_ref(),
            held,
            errs,
        );
    }

    /// The service refused a batch of several records as bad data. Rather than drop every record for the few
    /// that are bad, send it in halves, and the refused halves in halves again (at most [`MAX_SPLIT_DEPTH`]
    /// levels and [`MAX_ISOLATION_SENDS`] requests), so that only the refused records are rejected and the rest
    /// is delivered. Each piece is a chunk of its own, with its own id and final report. If a piece fails for
    /// another reason (or the call's time runs out), what is not settled yet stays as one batch, whole records
    /// in their order, and takes the usual way of a kept chunk (backoff, the spool).
    #[allow(clippy::too_many_arguments)]
    fn isolate_rejected(
        &mut self,
        sh: &Shared,
        lane: &Lane,
        target: usize,
        mut batch: Taken<'_>,
        first: &Failure,
        deadline: Instant,
        errs: &mut FirstError,
    ) {
        let format = lane.format;
        let total = batch.records();
        let whole = batch.bytes().len();
        sh.log(
            LogLevel::Warn,
            &format!(
                "{}: the service refused a chunk of {total} records ({}): sending it in halves to find the refused records",
                self.targets[target].sink.label,
                describe(first)
            ),
        );
        // Ranges still to send, the next on top; a piece splits into two, so the depth bounds the stack.
        let mut todo: heapless::Vec<(usize, usize, u32), { MAX_SPLIT_DEPTH as usize + 2 }> =
            heapless::Vec::new();
        let _ = todo.push((0, whole, 0));
        let mut settled = 0u64;
        let mut sends = 0u32;
        // The id the refused chunk had (it may have had intermediate reports already): the first piece inherits
        // it, and a piece that is split again hands it on, so that it still gets its one final report.
        let mut orphan = batch.chunk_id;
        // Settled pieces leave the lane's count as they go; what is left is settled at the end.
        let mut kept: Option<((usize, usize), Option<Failure>)> = None;
        while let Some((a, b, depth)) = todo.pop() {
            let (records, mid) = records_and_middle(format, &batch.bytes()[a..b]);
            if depth == 0 {
                // The whole batch was refused already: start with its halves.
                if let Some(m) = mid {
                    let _ = todo.push((a + m, b, 1));
                    let _ = todo.push((a, a + m, 1));
                    continue;
                }
            }
            if sh.clock.now() >= deadline {
                kept = Some(((a, b), None));
                break;
            }
            let id = match orphan.take() {
                Some(id) => Ok(id),
                None => wire::new_uuid(&sh.rng),
            };
            let piece = match id.and_then(|id| {
                self.gzip.compress(&batch.bytes()[a..b], &mut self.wire)?;
                Ok(id)
            }) {
                Ok(id) => Chunk {
                    id,
                    records,
                    raw_len: (b - a) as u64,
                    gzip: true,
                    seq: None,
                    wire_len: None,
                },
                Err(e) => {
                    errs.note(e);
                    kept = Some(((a, b), None));
                    break;
                }
            };
            let piece_id = piece.id;
            sends += 1;
            let (sent, _) =
                self.deliver(sh, target, &piece, 0, sh.cfg.retry_max_attempts, deadline);
            match sent {
                Attempt::Acknowledged { .. } | Attempt::Queued { .. } => {
                    let r = match sent {
                        Attempt::Queued { .. } => SendResult::Queued,
                        _ => SendResult::Acknowledged,
                    };
                    self.settle(sh, target, piece, Place::Ram, r, None, None, errs);
                    settled += records;
                }
                Attempt::Failed(f) if f.class == FailureClass::Rejected => match mid {
                    Some(m) if depth < MAX_SPLIT_DEPTH && sends < MAX_ISOLATION_SENDS => {
                        let _ = todo.push((a + m, b, depth + 1));
                        let _ = todo.push((a, a + m, depth + 1));
                        // No final report for this piece: its id goes on to the next one.
                        orphan = Some(piece_id);
                    }
                    _ => {
                        self.settle(
                            sh,
                            target,
                            piece,
                            Place::Ram,
                            SendResult::Rejected,
                            Some(&f),
                            None,
                            errs,
                        );
                        settled += records;
                    }
                },
                Attempt::Failed(f) => {
                    // Not the data this time: keep what is left and let the usual path take it.
                    kept = Some(((a, b), Some(f)));
                    orphan = orphan.or(Some(piece_id));
                    break;
                }
            }
        }
        let before = batch.records();
        let left = total.saturating_sub(settled);
        let Some((current, failure)) = kept else {
            sh.records_settled
                .fetch_add(before, std::sync::atomic::Ordering::Release);
            batch.give_back(Return::Free);
            return;
        };
        let mut ranges: heapless::Vec<(usize, usize), { MAX_SPLIT_DEPTH as usize + 3 }> =
            heapless::Vec::new();
        let _ = ranges.push(current);
        for &(a, b, _) in todo.iter().rev() {
            let _ = ranges.push((a, b));
        }
        batch.retain_ranges(&ranges, left);
        // The rest carries the id still waiting for its final report, if any (else it gets a new one).
        batch.chunk_id = orphan;
        sh.records_settled.fetch_add(
            before.saturating_sub(left),
            std::sync::atomic::Ordering::Release,
        );
        // The rest is a chunk of its own (a new id): sealed again and kept, or spooled.
        let chunk = match self.seal(sh, &mut batch, true) {
            Ok(c) => c,
            Err(e) => {
                batch.give_back(Return::Keep);
                return errs.note(e);
            }
        };
        match failure {
            Some(f) => {
                let r = SendResult::Kept(f.class);
                self.settle(
                    sh,
                    target,
                    chunk,
                    Place::Ram,
                    r,
                    Some(&f),
                    Some(batch),
                    errs,
                )
            }
            None => {
                errs.note(Error::new(
                    ErrorKind::TransientFailure,
                    format!(
                        "{}: time ran out while finding the refused records of a chunk; the rest ({left} records) is kept and sent by the next poll",
                        self.targets[target].sink.label
                    ),
                ));
                self.settle(
                    sh,
                    target,
                    chunk,
                    Place::Ram,
                    SendResult::NotTried,
                    None,
                    Some(batch),
                    errs,
                )
            }
        }
    }
}

/// Whether the batch can be cut at the places its format's parser sees between records, and each place is where
/// one appended record ended: true unless a record holds what reads as several (a multijson record of values on
/// separate lines, a CSV record with a bare newline or an unbalanced quote). Isolating refused records relies on
/// it, so that the counts of every piece are exact.
fn boundaries_match(format: Format, b: &Batch) -> bool {
    !format.one_record_per_request() && records_and_middle(format, b.bytes()).0 == b.records()
}

/// Why a due chunk was not sent and could not be spooled either.
fn not_tried_error(e: &Engine, target: usize, now: Instant, lane: &Lane) -> Error {
    let t = &e.targets[target];
    let why = t
        .last_failure
        .as_ref()
        .map_or(String::new(), |f| format!(" after: {}", f.message));
    let records = lane.records();
    match t.not_before.filter(|&n| n > now) {
        Some(n) => Error::new(
            ErrorKind::BackingOff,
            format!(
                "{} is backing off for {} ms more{why}; its {records} records are kept in RAM",
                t.sink.label,
                n.saturating_duration_since(now).as_millis().max(1)
            ),
        ),
        None => Error::new(
            ErrorKind::TransientFailure,
            format!(
                "{}: the call's time ran out with {records} records still waiting; they are kept: call kedge_poll or flush again",
                t.sink.label
            ),
        ),
    }
}
