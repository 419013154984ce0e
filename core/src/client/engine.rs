//! The sender's state and the effects of outcomes: destinations' backoff (targets), the compressor and the
//! request buffers, the spool. Only the thread holding the gate touches it, so nothing in here waits for a lock.
//! Sending fresh chunks is in `send.rs`, replaying the spool in `replay.rs`; both end in [`Engine::settle`],
//! which carries out what [`super::outcome::decide`] says.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::batch::Batch;
use crate::config::{LogLevel, RESPONSE_BODY_BYTES};
use crate::error::{Error, ErrorKind};
use crate::gzip::Gzip;
use crate::response::Failure;
use crate::retry::Backoff;
use crate::sink::{Attempt, ChunkRef, SendIo, SinkTarget};
use crate::spool::{ChunkHeader, DestKey, Spool, SpoolError};
use crate::wire;

use super::lane::{Lane, Lanes, Return, Taken};
use super::outcome::{self, BackoffOp, Place, RamOp, Report, SendResult, SpoolOp};
use super::report::{DeliveryReport, Outcome, SpoolStorage};
use super::Shared;

/// Where chunks go: one per distinct (database, table, format, mapping), shared by the lane added for it and by
/// spooled chunks for it, so that both back off together.
pub struct Target {
    pub key: Arc<DestKey>,
    pub sink: SinkTarget,
    /// Destination id added for this key, if any.
    pub destination: Option<u32>,
    /// Consecutive failed sends.
    pub failures: u32,
    /// No send before this instant (backing off).
    pub not_before: Option<Instant>,
    pub last_failure: Option<Failure>,
    /// Spooled chunks go one by one (not merged into one blob) until then: a merged blob was refused.
    pub merge_off_until: Option<Instant>,
}

impl Target {
    pub fn backing_off(&self, now: Instant) -> bool {
        self.not_before.is_some_and(|t| t > now)
    }
}

/// A chunk being sent or settled; its payload is in [`Engine::wire`].
#[derive(Clone, Copy, Debug)]
pub struct Chunk {
    pub id: [u8; 16],
    pub records: u64,
    pub raw_len: u64,
    pub gzip: bool,
    /// Its spool sequence number, when it is in the spool.
    pub seq: Option<u64>,
    /// Its body's length, when the body is not what `wire` holds (a member of a merged blob).
    pub wire_len: Option<u64>,
}

/// The error a call returns: the first of the gravest kind it met (later ones are logged and reported only).
/// `Spooled` (all safe on flash) never hides a later failure that left data only in RAM, and a refusal never
/// hides data that is still waiting: a caller that powers off on `Spooled` loses nothing.
#[derive(Default)]
pub struct FirstError(pub Option<Error>);

impl FirstError {
    pub fn note(&mut self, e: Error) {
        fn rank(k: ErrorKind) -> u8 {
            match k {
                ErrorKind::Spooled => 1,
                ErrorKind::DataRejected => 2,
                _ => 3,
            }
        }
        match &self.0 {
            Some(old) if rank(old.kind) >= rank(e.kind) => {}
            _ => self.0 = Some(e),
        }
    }
}

/// See the module docs.
pub struct Engine {
    pub targets: Vec<Target>,
    /// Target of each lane, by destination id (`usize::MAX`: not looked up yet).
    lane_targets: Vec<usize>,
    pub gzip: Gzip,
    pub wire: Vec<u8>,
    pub body: Box<[u8]>,
    pub scratch: Box<[u8]>,
    pub spool: Option<Spool<SpoolStorage>>,
    /// A spool failure that did not stop the call (an acknowledged chunk that could not be removed): the call
    /// still returns `SpoolIo` so the caller learns that its flash is failing.
    pub spool_fault: Option<String>,
    /// Consecutive failed spool writes, and no spool write before this instant: a failing flash is not
    /// hammered on every poll.
    spool_failures: u32,
    spool_not_before: Option<Instant>,
    /// Spool writes go on whatever the backoff: the caller asked for everything to go to flash.
    pub spool_forced: bool,
    /// The bound of the whole call, when the caller gave one (`flush_timeout`): requests are cut there.
    pub hard_deadline: Option<Instant>,
    /// Attempt numbers of replays (unique request ids across reboots: random start, far above fresh sends).
    pub replay_attempt: u32,
    /// Queued chunks kept in the spool until the DM's word (`queued.report=all`): not replayed meanwhile.
    pub held: Vec<Held>,
}

/// A queued chunk kept in the spool until the DM reports on it (at most [`MAX_HELD`], each for at most
/// [`HELD_FOR`]: then it is sent again, under the same id).
#[derive(Clone, Copy, Debug)]
pub struct Held {
    pub id: [u8; 16],
    pub until: Instant,
}

/// Chunks held at most: as many as the queued sink tracks.
pub const MAX_HELD: usize = crate::sink::queued::status::MAX_INFLIGHT;
/// How long a held chunk waits for the DM's word before it is sent again: as long as the sink tracks it.
pub const HELD_FOR: Duration = crate::sink::queued::status::TRACK_FOR;

/// A final word from the service, collected while the sink reads it and carried out afterwards.
struct Word {
    id: heapless::String<36>,
    dest: DestKey,
    records: u64,
    raw_len: u64,
    failure: Option<Failure>,
}

impl Engine {
    pub fn new(sh: &Shared, replay_base: u32) -> Engine {
        Engine {
            targets: Vec::with_capacity(sh.cfg.max_destinations),
            lane_targets: vec![usize::MAX; sh.cfg.max_destinations],
            gzip: Gzip::new(sh.cfg.gzip_level),
            wire: {
                // Written once here, so the client's memory is resident from its creation (the compressor grows its
                // output only as far as a chunk needs). Not `vec![0; n]`: calloc would leave the pages untouched.
                #[allow(clippy::slow_vector_initialization)]
                let mut w = Vec::with_capacity(sh.cfg.wire_capacity());
                w.resize(w.capacity(), 0);
                w.clear();
                w
            },
            body: vec![0u8; RESPONSE_BODY_BYTES].into_boxed_slice(),
            scratch: vec![0u8; RESPONSE_BODY_BYTES].into_boxed_slice(),
            spool: None,
            spool_fault: None,
            spool_failures: 0,
            spool_not_before: None,
            spool_forced: false,
            hard_deadline: None,
            replay_attempt: replay_base,
            held: Vec::with_capacity(if sh.sink.holds_until_reported() {
                MAX_HELD
            } else {
                0
            }),
        }
    }

    /// The target for a key, made on first use (lanes, or spooled chunks of an earlier run).
    pub fn target_for(
        &mut self,
        sh: &Shared,
        lanes: &Lanes,
        key: &DestKey,
    ) -> Result<usize, Error> {
        if let Some(i) = self.targets.iter().position(|t| *t.key == *key) {
            return Ok(i);
        }
        let sink = sh.sink.target(key)?;
        let lane = lanes.find(key);
        self.targets.push(Target {
            key: lane.map_or_else(|| Arc::new(key.clone()), |l| l.key.clone()),
            sink,
            destination: lane.map(|l| l.id),
            failures: 0,
            not_before: None,
            last_failure: None,
            merge_off_until: None,
        });
        Ok(self.targets.len() - 1)
    }

    /// The target of a lane.
    pub fn lane_target(&mut self, sh: &Shared, lanes: &Lanes, lane: &Lane) -> Result<usize, Error> {
        let i = lane.id as usize;
        if let Some(&t) = self.lane_targets.get(i).filter(|&&t| t != usize::MAX) {
            return Ok(t);
        }
        let t = self.target_for(sh, lanes, &lane.key)?;
        // A spooled chunk may have made the target before the lane was added.
        self.targets[t].destination = Some(lane.id);
        if let Some(slot) = self.lane_targets.get_mut(i) {
            *slot = t;
        }
        Ok(t)
    }

    /// Whether chunks may be written to the spool now: there is one, and it is not backing off after failed
    /// writes (or the caller asks to spool everything: a flush to the spool, closing the client).
    /// Whether the spool is backing off after a failed write or read.
    pub fn spool_backing_off(&self, now: Instant) -> bool {
        !self.spool_forced && self.spool_not_before.is_some_and(|t| t > now)
    }

    pub fn spool_writable(&self, now: Instant) -> bool {
        self.spool.is_some()
            && (self.spool_forced || self.spool_not_before.is_none_or(|t| t <= now))
    }

    /// Whether the spool takes the chunk in `wire` without dropping anything for it.
    fn spool_has_room(&self, sh: &Shared) -> bool {
        self.spool.as_ref().is_some_and(|sp| {
            let s = sp.stats();
            // Room for the payload and a generous header.
            s.chunks < sh.cfg.spool_max_chunks
                && s.bytes + self.wire.len() as u64 + 8192 <= sh.cfg.spool_max_bytes
        })
    }

    /// Gives a batch a chunk id (once: kept across resends) and puts its request body in `wire`.
    pub fn seal(&mut self, sh: &Shared, batch: &mut Batch, gzip: bool) -> Result<Chunk, Error> {
        let id = match batch.chunk_id {
            Some(id) => id,
            None => {
                let id = wire::new_uuid(&sh.rng)?;
                batch.chunk_id = Some(id);
                id
            }
        };
        if gzip {
            self.gzip.compress(batch.bytes(), &mut self.wire)?;
        } else {
            // Already compressed formats go as they are; the copy keeps one path for sending and spooling.
            self.wire.clear();
            self.wire.extend_from_slice(batch.bytes());
        }
        Ok(Chunk {
            id,
            records: batch.records(),
            raw_len: batch.bytes().len() as u64,
            gzip,
            seq: None,
            wire_len: None,
        })
    }

    pub fn sync_spool_stats(&self, sh: &Shared) {
        if let Some(sp) = &self.spool {
            let s = sp.stats();
            let st = &sh.stats;
            st.spool_chunks.store(s.chunks as u64, Relaxed);
            st.spool_bytes.store(s.bytes, Relaxed);
            st.chunks_corrupt.store(s.corrupt_chunks, Relaxed);
            st.chunks_dropped.store(s.dropped_chunks, Relaxed);
            st.records_dropped.store(s.dropped_records, Relaxed);
            st.bytes_dropped.store(s.dropped_bytes, Relaxed);
            st.spool_io_errors.store(s.io_errors, Relaxed);
            st.chunks_locked.store(s.locked_chunks, Relaxed);
            st.quarantine_chunks
                .store(s.quarantine_chunks as u64, Relaxed);
            st.quarantine_bytes.store(s.quarantine_bytes, Relaxed);
            st.quarantine_dropped_chunks
                .store(s.quarantine_dropped_chunks, Relaxed);
            st.chunks_newer.store(s.newer_chunks, Relaxed);
        }
    }

    /// A spool write failed (the flash, or a full spool that refuses new chunks): no spool write for a while
    /// (doubling, up to `backoff.max_ms`; a chunk leaving the spool ends it), so a failing flash is not retried on
    /// every poll. Chunks stay in RAM meanwhile, and the lanes fill up to `QueueFull`.
    pub fn spool_failed(&mut self, sh: &Shared, e: &Error) {
        if e.kind != ErrorKind::SpoolIo && e.kind != ErrorKind::SpoolFull {
            return;
        }
        self.spool_failures = self.spool_failures.saturating_add(1);
        let wait = Backoff {
            base: Duration::from_secs(1),
            max: sh.cfg.backoff_max,
            retry_after_cap: sh.cfg.backoff_max,
        }
        .delay(self.spool_failures, sh.random_u32(), None);
        self.spool_not_before = Some(sh.clock.now() + wait);
    }

    /// Pushes the chunk in `wire` to the spool, reporting what the capacity policy dropped. Returns its sequence
    /// number.
    pub fn push(&mut self, sh: &Shared, target: usize, chunk: &Chunk) -> Result<u64, Error> {
        if self.spool.is_none() {
            return Err(Error::new(ErrorKind::Internal, "no spool"));
        }
        let t = &self.targets[target];
        let header = ChunkHeader {
            chunk_id: chunk.id,
            dest: (*t.key).clone(),
            created_unix_ms: crate::clock::unix_ms(sh.clock.wall()),
            raw_len: chunk.raw_len as u32,
            records: chunk.records as u32,
            gzip: chunk.gzip,
            sink: sh.sink.id(),
        };
        let Engine {
            spool,
            wire,
            targets,
            ..
        } = self;
        let sp = spool.as_mut().expect("checked above");
        // Each chunk the full spool deletes to make room gets its own final report.
        let mut on_drop = |info: &crate::spool::ChunkInfo| {
            let destination = targets
                .iter()
                .find(|t| *t.key == *info.dest)
                .and_then(|t| t.destination)
                .unwrap_or(u32::MAX);
            let text = wire::uuid_text(&info.chunk_id);
            let msg = format!(
                "{}.{}: chunk {text} ({} records) dropped from the full spool to make room for a newer one (spool.policy=drop-oldest)",
                info.dest.database, info.dest.table, info.records
            );
            sh.log(LogLevel::Warn, &msg);
            sh.report(&DeliveryReport {
                destination,
                chunk_id: &text,
                records: info.records as u64,
                raw_bytes: info.raw_len as u64,
                wire_bytes: info.payload_len as u64,
                outcome: Outcome::Dropped,
                is_final: true,
                error: Some(ErrorKind::SpoolFull),
                http_status: 0,
                message: &msg,
                from_dm: false,
            });
        };
        match sp.push_with(&header, wire, &mut on_drop) {
            Ok(_) => {
                // Sequence numbers only grow: the chunk just pushed is the newest.
                let seq = sp.newest().unwrap_or(0);
                self.spool_failures = 0;
                self.spool_not_before = None;
                sh.stats.chunks_spooled.fetch_add(1, Relaxed);
                sh.stats.records_spooled.fetch_add(chunk.records, Relaxed);
                sh.stats
                    .bytes_spooled
                    .fetch_add(self.wire.len() as u64, Relaxed);
                self.sync_spool_stats(sh);
                Ok(seq)
            }
            Err(e) => {
                let e = spool_error(e);
                let label = &self.targets[target].sink.label;
                let e = Error::new(
                    e.kind,
                    format!(
                        "{label}: chunk of {} records could not be spooled: {}",
                        chunk.records, e.message
                    ),
                );
                sh.log(LogLevel::Error, &e.message);
                self.spool_failed(sh, &e);
                self.sync_spool_stats(sh);
                Err(e)
            }
        }
    }

    /// Sends the chunk in `wire`, retrying transient failures in this call up to `max_attempts` and the
    /// deadline. Returns the answer and the chunk's attempt count after it.
    pub fn deliver(
        &mut self,
        sh: &Shared,
        target: usize,
        chunk: &Chunk,
        mut attempt: u32,
        max_attempts: u32,
        deadline: Instant,
    ) -> (Attempt, u32) {
        let Engine {
            targets,
            wire: payload,
            body,
            scratch,
            hard_deadline,
            ..
        } = self;
        let t = &targets[target];
        let id = wire::uuid_text(&chunk.id);
        let warn = |m: &str| sh.log(LogLevel::Warn, m);
        let mut in_call = 0u32;
        loop {
            let cref = ChunkRef {
                id: &id,
                attempt,
                records: chunk.records,
                raw_len: chunk.raw_len,
                gzip: chunk.gzip,
                payload,
            };
            let mut io = SendIo {
                body,
                scratch,
                clock: &*sh.clock,
                deadline,
                hard_deadline: *hard_deadline,
                warn: &warn,
            };
            let st = &sh.stats;
            // Counted as the request starts, so that a request in flight shows.
            st.requests.fetch_add(1, Relaxed);
            if attempt > 0 {
                st.retries.fetch_add(1, Relaxed);
            }
            let sent = sh.sink.send(&t.sink, &cref, &mut io);
            let requests = sent.requests.max(1);
            st.requests.fetch_add(requests as u64 - 1, Relaxed);
            attempt = attempt.saturating_add(requests);
            in_call += 1;
            st.records_sent.fetch_add(chunk.records, Relaxed);
            st.bytes_sent_raw.fetch_add(chunk.raw_len, Relaxed);
            st.bytes_sent_wire.fetch_add(payload.len() as u64, Relaxed);
            let f = match sent.attempt {
                Attempt::Acknowledged { status, consumed } => {
                    st.last_http_status.store(status as u64, Relaxed);
                    if let Some(c) = consumed.filter(|&c| c != chunk.records) {
                        sh.log(
                            LogLevel::Warn,
                            &format!("{}: chunk {id} of {} records acknowledged with ConsumedRecordsCount={c}", t.sink.label, chunk.records),
                        );
                    }
                    return (sent.attempt, attempt);
                }
                Attempt::Queued { status } => {
                    st.last_http_status.store(status as u64, Relaxed);
                    return (sent.attempt, attempt);
                }
                Attempt::Failed(f) => f,
            };
            st.last_http_status.store(f.status as u64, Relaxed);
            st.failures.fetch_add(requests as u64, Relaxed);
            if f.class == crate::response::FailureClass::Transient && in_call < max_attempts {
                let delay = Backoff {
                    base: sh.cfg.retry_base,
                    max: sh.cfg.retry_max_delay,
                    retry_after_cap: sh.cfg.backoff_max,
                }
                .delay(in_call, sh.random_u32(), f.retry_after);
                if sh.clock.now() + delay < deadline {
                    sh.log(
                        LogLevel::Warn,
                        &format!(
                            "{}: attempt {in_call} failed ({}); retrying in {} ms",
                            t.sink.label,
                            describe(&f),
                            delay.as_millis()
                        ),
                    );
                    sh.clock.sleep(delay);
                    continue;
                }
            }
            return (Attempt::Failed(f), attempt);
        }
    }

    /// Carries out the effects of a send: the spool operation, the RAM buffer (given back to its lane), the
    /// target's backoff, stats, the log and the report. `batch`: the lane buffer the chunk came from, if it is
    /// still held (not for replays or written-ahead chunks). The payload of `chunk` is in `wire`.
    #[allow(clippy::too_many_arguments)]
    pub fn settle(
        &mut self,
        sh: &Shared,
        target: usize,
        mut chunk: Chunk,
        place: Place,
        result: SendResult,
        failure: Option<&Failure>,
        batch: Option<Taken<'_>>,
        errs: &mut FirstError,
    ) {
        let now = sh.clock.now();
        let spool_on = self.spool_writable(now);
        let mut eff = outcome::decide(result, place, spool_on, sh.cfg.spool_write_ahead);
        // Refused data is kept in rejected/ for an operator only where it displaces nothing that may still be
        // delivered; otherwise it is dropped (and reported) as without a spool.
        if eff.spool == SpoolOp::PushRejected && !self.spool_has_room(sh) {
            eff.spool = SpoolOp::None;
        }
        // Queued with every report asked for: the chunk stays on flash (written there now if it was only in RAM)
        // until the DM's word, so that a transient failure of the ingestion can be sent again.
        let hold = result == SendResult::Queued
            && sh.sink.holds_until_reported()
            && self.spool.is_some()
            && self.held.len() < MAX_HELD;
        if hold {
            eff.spool = match place {
                Place::Ram if spool_on => SpoolOp::Push,
                Place::Ram => SpoolOp::None,
                Place::SpoolNew | Place::Spool => SpoolOp::None,
            };
        }
        let text = wire::uuid_text(&chunk.id);
        let label = self.targets[target].sink.label.clone();
        let wire_len = chunk.wire_len.unwrap_or(self.wire.len() as u64);
        let status = match result {
            SendResult::Acknowledged => 200,
            SendResult::Queued => 201,
            _ => failure.map_or(0, |f| f.status),
        };
        // What to say about the chunk: the failure and what to do, or why it was not tried.
        let mut message = match (result, failure) {
            (SendResult::Acknowledged, _) => "acknowledged".to_owned(),
            (SendResult::Queued, _) => {
                "queued: the blob is up and the DM's queue has its message".to_owned()
            }
            (_, Some(f)) => format!("{label}: {}: {}", describe(f), f.advice()),
            (_, None) => {
                let t = &self.targets[target];
                let why = t
                    .last_failure
                    .as_ref()
                    .map_or(String::new(), |f| format!(" after: {}", f.message));
                match t.not_before.filter(|&n| n > now) {
                    Some(n) => format!(
                        "{label} is backing off for {} ms more{why}",
                        n.saturating_duration_since(now).as_millis()
                    ),
                    None => format!("{label}: the call's time ran out before this chunk was sent"),
                }
            }
        };
        let mut push_error: Option<Error> = None;
        // The spool operation first: its failure changes what follows.
        match eff.spool {
            SpoolOp::None => {}
            SpoolOp::Push | SpoolOp::PushRejected => match self.push(sh, target, &chunk) {
                Ok(seq) => {
                    chunk.seq = Some(seq);
                    if eff.spool == SpoolOp::PushRejected {
                        let reason = message.clone();
                        self.quarantine(sh, seq, &text, &reason, &mut message);
                    }
                }
                // The DM has the chunk already: without a copy on flash it is simply not held.
                Err(e) if hold => {
                    eff.spool = SpoolOp::None;
                    sh.log(
                        LogLevel::Warn,
                        &format!("queued chunk {text} could not be kept in the spool until the DM's report ({}); a transient ingestion failure will not be retried", e.message),
                    );
                }
                Err(e) => {
                    eff = outcome::push_failed(eff, e.kind);
                    // Logged by push already: only the caller's error and the report carry it on.
                    push_error = Some(e);
                }
            },
            SpoolOp::Remove => {
                if let (Some(seq), Some(sp)) = (chunk.seq, self.spool.as_mut()) {
                    // Room again, and the flash works: spool writes may go on at once.
                    self.spool_failures = 0;
                    self.spool_not_before = None;
                    if let Err(e) = sp.remove(seq) {
                        // Delivered already, and forgotten by the spool whatever the flash did, so it is not
                        // sent again in this run; the worst case is one duplicate after a restart.
                        let msg = format!("acknowledged chunk {text} could not be removed from the spool: {e}; it counts as delivered and may be sent once more after a restart");
                        sh.log(LogLevel::Error, &msg);
                        self.spool_fault.get_or_insert(msg);
                    }
                    self.sync_spool_stats(sh);
                }
            }
            SpoolOp::Quarantine => {
                if let Some(seq) = chunk.seq {
                    let reason = message.clone();
                    self.quarantine(sh, seq, &text, &reason, &mut message);
                }
            }
        }
        if hold && chunk.seq.is_some() {
            self.held.push(Held {
                id: chunk.id,
                until: now + HELD_FOR,
            });
            message.push_str("; kept in the spool until the DM reports");
        }
        // The RAM buffer.
        if let Some(b) = batch {
            let records = b.records();
            match eff.ram {
                RamOp::Free => {
                    sh.records_settled
                        .fetch_add(records, std::sync::atomic::Ordering::Release);
                    b.give_back(Return::Free);
                }
                RamOp::Keep => b.give_back(Return::Keep),
            }
        }
        // The destination's backoff: exponential per consecutive failure, longer for what an operator must fix,
        // never shorter than the server asked.
        let t = &mut self.targets[target];
        match eff.backoff {
            BackoffOp::Reset => {
                t.failures = 0;
                t.not_before = None;
                t.last_failure = None;
            }
            BackoffOp::Grow => {
                t.failures = t.failures.saturating_add(1);
                let base = match failure.map(|f| f.class) {
                    Some(crate::response::FailureClass::Transient) | None => {
                        sh.cfg.retry_base.max(Duration::from_millis(100))
                    }
                    _ => Duration::from_secs(5),
                };
                let wait = Backoff {
                    base: base * 2,
                    max: sh.cfg.backoff_max,
                    retry_after_cap: sh.cfg.backoff_max,
                }
                .delay(
                    t.failures,
                    sh.random_u32(),
                    failure.and_then(|f| f.retry_after),
                );
                t.not_before = Some(now + wait);
                t.last_failure = failure.cloned();
                let place = match (eff.spool, chunk.seq, eff.ram) {
                    (SpoolOp::Push, Some(_), _) => "spooled for replay",
                    (_, Some(_), _) => "kept in the spool",
                    (_, None, RamOp::Keep) if push_error.is_some() => {
                        "kept in RAM (the spool did not take it)"
                    }
                    (_, None, RamOp::Keep) => "kept in RAM",
                    _ => "kept",
                };
                sh.log(
                    LogLevel::Error,
                    &format!("chunk {text} ({} records) not delivered, {place}: {message}; next try in {} ms", chunk.records, wait.as_millis()),
                );
            }
            BackoffOp::Unchanged => {}
        }
        // Stats and the log.
        let st = &sh.stats;
        match result {
            // Queued counts with acknowledged: the service has the data (its later report is the DM's).
            SendResult::Acknowledged | SendResult::Queued => {
                st.records_acknowledged.fetch_add(chunk.records, Relaxed);
                st.chunks_acknowledged.fetch_add(1, Relaxed);
                if result == SendResult::Queued {
                    st.records_queued.fetch_add(chunk.records, Relaxed);
                    st.chunks_queued.fetch_add(1, Relaxed);
                }
                if place == Place::Spool {
                    st.chunks_replayed.fetch_add(1, Relaxed);
                    st.records_replayed.fetch_add(chunk.records, Relaxed);
                }
                sh.log(
                    LogLevel::Info,
                    &format!("{label}: chunk {text} {}: {} records, {} bytes raw, {wire_len} on the wire", if result == SendResult::Queued { "queued" } else { "acknowledged" }, chunk.records, chunk.raw_len),
                );
            }
            SendResult::Rejected => {
                st.records_rejected.fetch_add(chunk.records, Relaxed);
                st.chunks_rejected.fetch_add(1, Relaxed);
                let fate = if chunk.seq.is_some() && eff.spool != SpoolOp::None {
                    "moved to the spool's rejected/"
                } else {
                    "dropped"
                };
                sh.log(
                    LogLevel::Error,
                    &format!("chunk {text} ({} records) {fate}: {message}", chunk.records),
                );
            }
            _ => {}
        }
        // The caller's result and the report.
        let caller = eff.caller.map(|kind| {
            let msg = match (kind, eff.spool) {
                (ErrorKind::Spooled, SpoolOp::Push) => format!("{message}; spooled for replay"),
                (ErrorKind::Spooled, _) => format!("{message}; kept in the spool for replay"),
                (ErrorKind::BackingOff, _) => format!(
                    "{message}; its chunk of {} records is kept in RAM",
                    chunk.records
                ),
                _ => match &push_error {
                    Some(p) => format!("{message}; {}", p.message),
                    None => message.clone(),
                },
            };
            Error::new(kind, msg)
        });
        let outcome = match eff.report {
            Report::None => None,
            Report::Acknowledged => Some(Outcome::Acknowledged),
            Report::Rejected => Some(Outcome::Rejected),
            Report::Failed => Some(Outcome::Failed),
            Report::Spooled => Some(Outcome::Spooled),
            Report::Queued => Some(Outcome::Queued),
        };
        if let Some(outcome) = outcome {
            let t = &self.targets[target];
            let msg = caller.as_ref().map_or(message.as_str(), |e| &e.message);
            let error = match outcome {
                Outcome::Acknowledged | Outcome::Queued => None,
                Outcome::Spooled => Some(match result {
                    SendResult::Kept(c) => outcome::kind_of(c),
                    _ => ErrorKind::BackingOff,
                }),
                _ => caller.as_ref().map(|e| e.kind),
            };
            sh.report(&DeliveryReport {
                destination: t.destination.unwrap_or(u32::MAX),
                chunk_id: &text,
                records: chunk.records,
                raw_bytes: chunk.raw_len,
                wire_bytes: wire_len,
                outcome,
                is_final: outcome.is_final(),
                error,
                http_status: status,
                message: msg,
                from_dm: false,
            });
        }
        if let Some(e) = caller {
            errs.note(e);
        }
    }

    /// Moves spooled chunk `seq` to `rejected/`; on failure notes it (the chunk is not sent again in this run)
    /// and says so in `message`.
    fn quarantine(
        &mut self,
        sh: &Shared,
        seq: u64,
        text: &str,
        reason: &str,
        message: &mut String,
    ) {
        if let Some(sp) = self.spool.as_mut() {
            match sp.reject(seq, reason) {
                Ok(q) if q.incoming => {
                    let note = "it alone is larger than spool.quarantine_max_bytes, so it was deleted, not kept";
                    message.push_str("; ");
                    message.push_str(note);
                }
                Ok(q) if q.chunks > 0 => sh.log(
                    LogLevel::Warn,
                    &format!(
                        "quarantine full: deleted the {} oldest quarantined chunks ({} bytes) to keep refused chunk {text} (spool.quarantine_max_bytes, spool.quarantine_max_chunks)",
                        q.chunks, q.bytes
                    ),
                ),
                Ok(_) => {}
                Err(e) => {
                    let fate = format!(
                        "could not be moved to rejected/ ({e}); it is not sent again in this run"
                    );
                    self.spool_fault
                        .get_or_insert(format!("chunk {text} {fate}"));
                    message.push_str("; ");
                    message.push_str(&fate);
                }
            }
        }
        self.sync_spool_stats(sh);
    }

    /// Reads the service's final word on chunks a sink took for later ingestion (queued: the DM's
    /// notifications or status rows) and reports each: `Ingested`, or `Rejected` with the DM's error code. A
    /// chunk held in the spool leaves it when ingested, goes to `rejected/` when refused for good, and is sent
    /// again (same id) after a transient or exhausted failure.
    pub fn track_status(&mut self, sh: &Shared, deadline: Instant) {
        let now = sh.clock.now();
        // Held chunks whose word never came are sent again.
        self.held.retain(|h| h.until > now);
        if sh.sink.awaiting() == 0 {
            return;
        }
        let mut words: Vec<Word> = Vec::new();
        let requests = {
            let Engine {
                body,
                scratch,
                hard_deadline,
                ..
            } = self;
            let warn = |m: &str| sh.log(LogLevel::Warn, m);
            let mut io = SendIo {
                body,
                scratch,
                clock: &*sh.clock,
                deadline,
                hard_deadline: *hard_deadline,
                warn: &warn,
            };
            sh.sink.poll_status(&mut io, &mut |r| {
                words.push(Word {
                    id: heapless::String::try_from(r.chunk_id).unwrap_or_default(),
                    dest: r.dest.clone(),
                    records: r.records,
                    raw_len: r.raw_len,
                    failure: r.failure.clone(),
                })
            })
        };
        sh.stats.requests.fetch_add(requests as u64, Relaxed);
        for w in words {
            self.word(sh, w);
        }
    }

    /// Carries out one final word from the DM.
    fn word(&mut self, sh: &Shared, w: Word) {
        let destination = self
            .targets
            .iter()
            .find(|t| *t.key == w.dest)
            .and_then(|t| t.destination)
            .unwrap_or(u32::MAX);
        let held = self
            .held
            .iter()
            .position(|h| wire::uuid_text(&h.id).eq_ignore_ascii_case(&w.id));
        let held_id = held.map(|i| self.held.swap_remove(i).id);
        let seq = held_id.and_then(|id| {
            self.spool
                .as_ref()
                .and_then(|sp| sp.pending().find(|(_, info)| info.chunk_id == id))
                .map(|(seq, _)| seq)
        });
        let label = format!("{}.{}", w.dest.database, w.dest.table);
        let (outcome, is_final, error, message) = match &w.failure {
            None => {
                sh.stats.records_ingested.fetch_add(w.records, Relaxed);
                sh.stats.chunks_ingested.fetch_add(1, Relaxed);
                if let (Some(seq), Some(sp)) = (seq, self.spool.as_mut()) {
                    if let Err(e) = sp.remove(seq) {
                        let msg = format!("ingested chunk {} could not be removed from the spool: {e}; it may be sent once more after a restart", w.id);
                        sh.log(LogLevel::Error, &msg);
                        self.spool_fault.get_or_insert(msg);
                    }
                    self.sync_spool_stats(sh);
                }
                sh.log(LogLevel::Info, &format!("{label}: chunk {} ingested", w.id));
                (
                    Outcome::Ingested,
                    true,
                    None,
                    "ingested (the DM's report)".to_owned(),
                )
            }
            Some(f) if f.class != crate::response::FailureClass::Rejected && seq.is_some() => {
                // Ours still: sent again, under the same id, by the next replay.
                let msg = format!("{}; kept in the spool and sent again (same id)", f.message);
                sh.log(LogLevel::Warn, &msg);
                (
                    Outcome::Spooled,
                    false,
                    Some(ErrorKind::TransientFailure),
                    msg,
                )
            }
            Some(f) => {
                let mut msg = f.message.to_string();
                sh.stats.records_rejected.fetch_add(w.records, Relaxed);
                sh.stats.chunks_rejected.fetch_add(1, Relaxed);
                if let Some(seq) = seq {
                    let reason = msg.clone();
                    msg.push_str("; moved to the spool's rejected/");
                    self.quarantine(sh, seq, &w.id, &reason, &mut msg);
                }
                sh.log(LogLevel::Error, &msg);
                let kind = match f.class {
                    crate::response::FailureClass::Rejected => ErrorKind::DataRejected,
                    _ => ErrorKind::TransientFailure,
                };
                (Outcome::Rejected, true, Some(kind), msg)
            }
        };
        sh.report(&DeliveryReport {
            destination,
            chunk_id: &w.id,
            records: w.records,
            raw_bytes: w.raw_len,
            wire_bytes: 0,
            outcome,
            is_final,
            error,
            http_status: 0,
            message: &message,
            from_dm: true,
        });
    }

    /// Whether spooled chunk `id` is held until the DM's word (not to be replayed meanwhile).
    pub fn is_held(&self, id: &[u8; 16]) -> bool {
        self.held.iter().any(|h| h.id == *id)
    }

    /// Milliseconds until the sender has work: a sealed or aged batch, a backoff running out, a spooled chunk.
    pub fn next_due(&self, sh: &Shared, lanes: &Lanes) -> u32 {
        let now = sh.clock.now();
        let mut next = Duration::from_secs(3600);
        let spool_on = self.spool_writable(now);
        for lane in lanes.iter() {
            let Some(due) = lane.due_at(now, sh.cfg.batch_max_age) else {
                continue;
            };
            let backoff = self
                .lane_targets
                .get(lane.id as usize)
                .and_then(|&t| self.targets.get(t))
                .and_then(|t| t.not_before)
                .filter(|&t| t > now);
            // Backing off with a spool: a due batch goes to the spool at once. Without one, it waits.
            let at = match backoff {
                Some(b) if !spool_on => due.max(b),
                _ => due,
            };
            next = next.min(at.saturating_duration_since(now));
        }
        if let Some(sp) = &self.spool {
            // Replays wait for the spool's own backoff (a failing flash) as well as their destination's.
            let spool_at = self.spool_not_before.filter(|&t| t > now).unwrap_or(now);
            for (_, info) in sp
                .pending()
                .filter(|(_, info)| !self.is_held(&info.chunk_id))
            {
                let at = self
                    .targets
                    .iter()
                    .find(|t| *t.key == *info.dest)
                    .and_then(|t| t.not_before)
                    .filter(|&t| t > now)
                    .unwrap_or(now)
                    .max(spool_at);
                next = next.min(at.saturating_duration_since(now));
                if next.is_zero() {
                    break;
                }
            }
        }
        // Chunks awaiting the DM's word: the next poll reads its reports.
        if sh.sink.awaiting() > 0 {
            next = next.min(crate::sink::queued::status::POLL_EVERY);
        }
        // A held chunk whose word never came is sent again when its time is up.
        if let Some(until) = self.held.iter().map(|h| h.until).min() {
            next = next.min(until.saturating_duration_since(now));
        }
        // Rounded up: sleeping the milliseconds said is always enough.
        next.as_nanos().div_ceil(1_000_000).min(u32::MAX as u128) as u32
    }
}

pub fn spool_error(e: SpoolError) -> Error {
    let kind = match e {
        SpoolError::Full => ErrorKind::SpoolFull,
        _ => ErrorKind::SpoolIo,
    };
    Error::new(kind, e.to_string())
}

pub fn describe(f: &Failure) -> String {
    let mut s = String::new();
    if f.status != 0 {
        s.push_str(&format!("HTTP {}", f.status));
    }
    if !f.code.is_empty() {
        s.push_str(&format!(" {}", f.code));
    }
    if !f.message.is_empty() {
        if !s.is_empty() {
            s.push_str(": ");
        }
        s.push_str(&f.message);
    }
    s
}
