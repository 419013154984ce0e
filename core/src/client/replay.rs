//! Replaying the spool: chunks leave it oldest first, one attempt per chunk and call (the backoff between
//! attempts is the poll schedule), skipping destinations that back off.

use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use crate::config::LogLevel;
use crate::error::{Error, ErrorKind};
use crate::response::{Failure, FailureClass};
use crate::sink::{Attempt, BlockInfo, Blocks, SendIo};
use crate::spool::{ChunkInfo, SpoolError};

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
            if let Some(members) = self.merge_group(sh, target, seq, &info, now) {
                done += members.len() as u32 - 1;
                if !self.replay_merged(sh, target, &members, deadline, errs) {
                    break;
                }
                continue;
            }
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
                Err(e) => {
                    if self.read_failed(sh, target, seq, &info, e, errs) {
                        continue;
                    }
                    break;
                }
            };
            let chunk = Chunk {
                id: header.chunk_id,
                records: header.records as u64,
                raw_len: header.raw_len as u64,
                gzip: header.gzip,
                seq: Some(seq),
                wire_len: None,
            };
            let attempt = self.replay_attempt;
            self.replay_attempt = self.replay_attempt.wrapping_add(1);
            let (sent, _) = self.deliver(sh, target, &chunk, attempt, 1, deadline);
            let (result, failure) = SendResult::of(sent);
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

    /// Handles a spooled chunk that could not be read: corrupt (its final report), too large for this client
    /// (set aside in `rejected/`), or a failing flash (backs off). Whether the replay goes on.
    fn read_failed(
        &mut self,
        sh: &Shared,
        target: usize,
        seq: u64,
        info: &ChunkInfo,
        e: SpoolError,
        errs: &mut FirstError,
    ) -> bool {
        match e {
            SpoolError::Corrupt(why) => {
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
                true
            }
            SpoolError::BufferTooSmall { needed } => {
                // Only this chunk is stuck, not its destination: set it aside in rejected/, from where an
                // operator requeues it for a client with a larger batch.bytes.
                let why = format!("{}: spooled chunk needs {needed} bytes, more than this client's buffer: moved to rejected/; raise batch.bytes to what the earlier run used and requeue it", self.targets[target].sink.label);
                if let Some(sp) = self.spool.as_mut() {
                    let _ = sp.reject(seq, &why);
                }
                sh.log(LogLevel::Error, &why);
                errs.note(Error::new(ErrorKind::SpoolIo, why));
                self.sync_spool_stats(sh);
                true
            }
            e => {
                let e = spool_error(e);
                let e = Error::new(e.kind, format!("spool read failed: {}", e.message));
                sh.log(LogLevel::Error, &e.message);
                self.spool_failed(sh, &e);
                errs.note(e);
                false
            }
        }
    }

    /// The spooled chunks that go up with `first` as the blocks of one blob: the oldest pending gzip chunks of
    /// its destination (not held), at most `queued.merge_chunks`; `None` when the sink does not merge for this
    /// destination now or there is only one.
    fn merge_group(
        &self,
        sh: &Shared,
        target: usize,
        first: u64,
        info: &ChunkInfo,
        now: Instant,
    ) -> Option<Vec<Member>> {
        let max = sh.cfg.queued_merge_chunks;
        let t = &self.targets[target];
        if max < 2
            || !info.gzip
            || t.merge_off_until.is_some_and(|u| u > now)
            || !sh.sink.merges(&t.sink, now)
        {
            return None;
        }
        let sp = self.spool.as_ref()?;
        let members: Vec<Member> = sp
            .pending()
            .filter(|(s, i)| {
                *s >= first && *i.dest == *info.dest && i.gzip && !self.is_held(&i.chunk_id)
            })
            .take(max)
            .map(|(seq, i)| Member {
                seq,
                id: i.chunk_id,
                text: crate::wire::uuid_text(&i.chunk_id),
                records: i.records as u64,
                raw_len: i.raw_len as u64,
                payload_len: i.payload_len as u64,
                info: i.clone(),
            })
            .collect();
        (members.len() >= 2 && members[0].seq == first).then_some(members)
    }

    /// One attempt at a merged blob; then each member is settled as a replayed chunk would be. Whether the
    /// replay goes on.
    fn replay_merged(
        &mut self,
        sh: &Shared,
        target: usize,
        members: &[Member],
        deadline: Instant,
        errs: &mut FirstError,
    ) -> bool {
        let group = group_id(members);
        let group_text = crate::wire::uuid_text(&group);
        let attempt = self.replay_attempt;
        self.replay_attempt = self.replay_attempt.wrapping_add(members.len() as u32);
        let (sent, unreadable) = {
            let Engine {
                spool,
                wire,
                body,
                scratch,
                targets,
                hard_deadline,
                ..
            } = &mut *self;
            let Some(sp) = spool.as_mut() else {
                return false;
            };
            let mut blocks = SpoolBlocks {
                spool: sp,
                wire,
                members,
                unreadable: None,
            };
            let warn = |m: &str| sh.log(LogLevel::Warn, m);
            let mut io = SendIo {
                body,
                scratch,
                clock: &*sh.clock,
                deadline,
                hard_deadline: *hard_deadline,
                warn: &warn,
            };
            let st = &sh.stats;
            st.requests.fetch_add(1, Relaxed);
            st.retries.fetch_add(1, Relaxed);
            let sent = sh.sink.send_merged(
                &targets[target].sink,
                &group_text,
                attempt,
                &mut blocks,
                &mut io,
            );
            st.requests
                .fetch_add(sent.requests.max(1) as u64 - 1, Relaxed);
            for m in members {
                st.records_sent.fetch_add(m.records, Relaxed);
                st.bytes_sent_raw.fetch_add(m.raw_len, Relaxed);
                st.bytes_sent_wire.fetch_add(m.payload_len, Relaxed);
            }
            (sent.attempt, blocks.unreadable)
        };
        if let Some((i, e)) = unreadable {
            // A block could not be read from flash: that chunk is dealt with as a replay would; the others
            // wait for the next round.
            let m = &members[i];
            return self.read_failed(sh, target, m.seq, &m.info, e, errs);
        }
        match sent {
            Attempt::Queued { status } => {
                sh.stats.last_http_status.store(status as u64, Relaxed);
                sh.log(
                    LogLevel::Info,
                    &format!(
                        "{}: {} spooled chunks queued as one blob (message {group_text})",
                        self.targets[target].sink.label,
                        members.len()
                    ),
                );
                for m in members {
                    self.settle(
                        sh,
                        target,
                        m.chunk(),
                        Place::Spool,
                        SendResult::Queued,
                        None,
                        None,
                        errs,
                    );
                }
            }
            Attempt::Acknowledged { .. } => {
                // No sink acknowledges a merged blob: treat it as not taken.
                self.targets[target].merge_off_until = Some(sh.clock.now() + MERGE_OFF_FOR);
            }
            Attempt::Failed(f) => {
                sh.stats.last_http_status.store(f.status as u64, Relaxed);
                sh.stats.failures.fetch_add(1, Relaxed);
                if f.class == FailureClass::Rejected {
                    // Which chunk is at fault cannot be told from one answer for all: they go one by one for
                    // a while, each with its own verdict.
                    sh.log(
                        LogLevel::Warn,
                        &format!("{}: a merged blob of {} spooled chunks was refused ({}); sending them one by one", self.targets[target].sink.label, members.len(), f.message),
                    );
                    self.targets[target].merge_off_until = Some(sh.clock.now() + MERGE_OFF_FOR);
                    return true;
                }
                // The first settles for all (one backoff step, one report); the others stay as they were.
                self.settle(
                    sh,
                    target,
                    members[0].chunk(),
                    Place::Spool,
                    SendResult::Kept(f.class),
                    Some(&f),
                    None,
                    errs,
                );
            }
        }
        true
    }
}

/// How long a destination's spooled chunks go one by one after a merged blob was refused.
const MERGE_OFF_FOR: Duration = Duration::from_secs(600);

/// A spooled chunk going up as one block of a merged blob.
pub struct Member {
    seq: u64,
    id: [u8; 16],
    text: heapless::String<36>,
    records: u64,
    raw_len: u64,
    payload_len: u64,
    /// What the index said (a corrupt chunk is forgotten as it is found: its report needs this).
    info: ChunkInfo,
}

impl Member {
    /// The member as a chunk to settle: in the spool, its body not in the wire buffer.
    fn chunk(&self) -> Chunk {
        Chunk {
            id: self.id,
            records: self.records,
            raw_len: self.raw_len,
            gzip: true,
            seq: Some(self.seq),
            wire_len: Some(self.payload_len),
        }
    }
}

/// The merged blob's id (its name and its message's `Id`): derived from its members, so the same chunks always
/// make the same blob (a resend overwrites it) and never the name of one chunk alone or of another set (which
/// the DM would take for a duplicate and drop). UUID-shaped: version 8 (custom), RFC 4122 variant.
fn group_id(members: &[Member]) -> [u8; 16] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(b"kusto-edge merged blob v1");
    for m in members {
        ctx.update(&m.id);
    }
    let d = ctx.finish();
    let mut id = [0u8; 16];
    id.copy_from_slice(&d.as_ref()[..16]);
    id[6] = (id[6] & 0x0f) | 0x80;
    id[8] = (id[8] & 0x3f) | 0x80;
    id
}

/// The members' payloads, read from the spool one at a time into the engine's wire buffer.
struct SpoolBlocks<'a> {
    spool: &'a mut crate::spool::Spool<super::report::SpoolStorage>,
    wire: &'a mut Vec<u8>,
    members: &'a [Member],
    /// The first member that could not be read, and why.
    unreadable: Option<(usize, SpoolError)>,
}

impl Blocks for SpoolBlocks<'_> {
    fn count(&self) -> usize {
        self.members.len()
    }

    fn info(&self, i: usize) -> BlockInfo<'_> {
        let m = &self.members[i];
        BlockInfo {
            id: &m.text,
            records: m.records,
            raw_len: m.raw_len,
        }
    }

    #[allow(clippy::result_large_err)]
    fn read(&mut self, i: usize) -> Result<&[u8], Failure> {
        let cap = self.wire.capacity();
        self.wire.clear();
        self.wire.resize(cap, 0);
        match self
            .spool
            .read(self.members[i].seq, self.wire.as_mut_slice())
        {
            Ok((_, n)) => {
                self.wire.truncate(n);
                Ok(self.wire.as_slice())
            }
            Err(e) => {
                self.wire.clear();
                let f = Failure::network(&format!(
                    "spooled chunk {} could not be read: {e}",
                    self.members[i].text
                ));
                self.unreadable = Some((i, e));
                Err(f)
            }
        }
    }
}
