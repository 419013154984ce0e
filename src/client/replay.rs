//! Replaying the spool: chunks leave it oldest first, one attempt per chunk and call (the backoff between
//! attempts is the poll schedule), skipping destinations that back off.

use std::time::Instant;

use crate::config::LogLevel;
use crate::error::{Error, ErrorKind};
use crate::response::FailureClass;
use crate::sink::Attempt;
use crate::spool::SpoolError;

use super::engine::{spool_error, Chunk, Engine, FirstError};
use super::lane::Lanes;
use super::outcome::{Place, SendResult};
use super::report::{DeliveryReport, Outcome};
use super::Shared;

impl Engine {
    /// Replays up to `max` spooled chunks before the deadline.
    pub fn replay(
        &mut self,
        sh: &Shared,
        lanes: &Lanes,
        deadline: Instant,
        max: u32,
        errs: &mut FirstError,
    ) {
        let mut done = 0;
        while done < max && sh.clock.now() < deadline {
            let now = sh.clock.now();
            if self.spool_backing_off(now) {
                // A failing flash: no read until its backoff ends (next_ms says when).
                return;
            }
            let next = {
                let Some(sp) = self.spool.as_ref() else {
                    return;
                };
                let targets = &self.targets;
                let held = &self.held;
                sp.pending()
                    .find(|(_, info)| {
                        !held.iter().any(|h| h.id == info.chunk_id)
                            && !targets
                                .iter()
                                .any(|t| *t.key == *info.dest && t.backing_off(now))
                    })
                    .map(|(seq, info)| (seq, info.clone()))
            };
            let Some((seq, info)) = next else { break };
            let key = info.dest.clone();
            done += 1;
            let target = match self.target_for(sh, lanes, &key) {
                Ok(t) => t,
                Err(e) => {
                    // A format this version cannot name: the chunk can never be sent.
                    if let Some(sp) = self.spool.as_mut() {
                        let _ = sp.reject(seq, &e.message);
                    }
                    sh.log(
                        LogLevel::Error,
                        &format!("spooled chunk {seq:016x} moved to rejected/: {}", e.message),
                    );
                    self.sync_spool_stats(sh);
                    continue;
                }
            };
            let read = {
                let Engine { spool, wire, .. } = &mut *self;
                let sp = spool.as_mut().expect("checked above");
                let cap = wire.capacity();
                wire.clear();
                wire.resize(cap, 0);
                let r = sp.read(seq, wire.as_mut_slice());
                let n = r.as_ref().map_or(0, |(_, n)| *n);
                wire.truncate(n);
                r
            };
            let header = match read {
                Ok((h, _)) => h,
                Err(SpoolError::Corrupt(why)) => {
                    // Its data is gone: the chunk's final report says so.
                    let text = crate::wire::uuid_text(&info.chunk_id);
                    let msg = format!("{}: spooled chunk {text} ({} records) is corrupt and was quarantined in corrupt/, it will not be sent: {why}", self.targets[target].sink.label, info.records);
                    sh.log(LogLevel::Error, &msg);
                    sh.report(&DeliveryReport {
                        destination: self.targets[target].destination.unwrap_or(u32::MAX),
                        chunk_id: &text,
                        records: info.records as u64,
                        raw_bytes: info.raw_len as u64,
                        wire_bytes: info.payload_len as u64,
                        outcome: Outcome::Dropped,
                        is_final: true,
                        error: Some(ErrorKind::SpoolIo),
                        http_status: 0,
                        message: &msg,
                        from_dm: false,
                    });
                    self.sync_spool_stats(sh);
                    continue;
                }
                Err(SpoolError::BufferTooSmall { needed }) => {
                    // Only this chunk is stuck, not its destination: set it aside in rejected/, from where an
                    // operator requeues it for a client with a larger batch.bytes.
                    let why = format!("{}: spooled chunk needs {needed} bytes, more than this client's buffer: moved to rejected/; raise batch.bytes to what the earlier run used and requeue it", self.targets[target].sink.label);
                    if let Some(sp) = self.spool.as_mut() {
                        let _ = sp.reject(seq, &why);
                    }
                    sh.log(LogLevel::Error, &why);
                    errs.note(Error::new(ErrorKind::SpoolIo, why));
                    self.sync_spool_stats(sh);
                    continue;
                }
                Err(e) => {
                    let e = spool_error(e);
                    let e = Error::new(e.kind, format!("spool read failed: {}", e.message));
                    sh.log(LogLevel::Error, &e.message);
                    self.spool_failed(sh, &e);
                    errs.note(e);
                    break;
                }
            };
            let chunk = Chunk {
                id: header.chunk_id,
                records: header.records as u64,
                raw_len: header.raw_len as u64,
                gzip: header.gzip,
                seq: Some(seq),
            };
            let attempt = self.replay_attempt;
            self.replay_attempt = self.replay_attempt.wrapping_add(1);
            let (sent, _) = self.deliver(sh, target, &chunk, attempt, 1, deadline);
            let (result, failure) = match sent {
                Attempt::Acknowledged { .. } => (SendResult::Acknowledged, None),
                Attempt::Queued { .. } => (SendResult::Queued, None),
                Attempt::Failed(f) => {
                    let r = match f.class {
                        FailureClass::Rejected => SendResult::Rejected,
                        c => SendResult::Kept(c),
                    };
                    (r, Some(f))
                }
            };
            self.settle(
                sh,
                target,
                chunk,
                Place::Spool,
                result,
                failure.as_ref(),
                None,
                errs,
            );
        }
    }
}
