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
            let next = {
                let Some(sp) = self.spool.as_ref() else {
                    return;
                };
                let targets = &self.targets;
                sp.pending()
                    .find(|(_, info)| {
                        !targets
                            .iter()
                            .any(|t| *t.key == *info.dest && t.backing_off(now))
                    })
                    .map(|(seq, info)| (seq, info.dest.clone()))
            };
            let Some((seq, key)) = next else { break };
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
                    sh.log(LogLevel::Error, &format!("spooled chunk {seq:016x} is corrupt and was quarantined in corrupt/: {why}"));
                    self.sync_spool_stats(sh);
                    continue;
                }
                Err(SpoolError::BufferTooSmall { needed }) => {
                    let t = &mut self.targets[target];
                    t.not_before = Some(now + sh.cfg.backoff_max);
                    let e = Error::new(
                        ErrorKind::SpoolIo,
                        format!("{}: spooled chunk needs {needed} bytes, more than this client's buffer: raise batch.bytes to what the earlier run used", t.sink.label),
                    );
                    sh.log(LogLevel::Error, &e.message);
                    errs.note(e);
                    continue;
                }
                Err(e) => {
                    let e = spool_error(e);
                    sh.log(
                        LogLevel::Error,
                        &format!("spool read failed: {}", e.message),
                    );
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
